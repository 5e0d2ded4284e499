"""Tables written to Parquet (:func:`retwin.storage._arrow_table`) are what
``pa.Table.from_pandas(df, preserve_index=False)`` makes, schema, pandas metadata and values
alike, however often a frame of one shape is written and whatever its columns hold."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import retwin
from retwin import storage, whatif

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py


def _same(df: pd.DataFrame) -> None:
    want = pa.Table.from_pandas(df, preserve_index=False, nthreads=1)
    for _ in range(2):  # the first converts as pandas does, the next reuse its schema
        got = storage._arrow_table(df)
        assert got.schema.equals(want.schema, check_metadata=True)
        assert got.equals(want, check_metadata=True)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    """Every table of a stored what-if result (and those it defers), two replications."""
    tiny = retwin.load_scenario("tiny")
    res = whatif.run(whatif.resolve(tiny, [{"kind": "quota", "quota": "mining",
                                            "factor": 0.8}]), replications=2, seed=1)
    s = res.whatif
    assert res.difference is not None
    return {"summary": s.summary, "kpis": s.kpi_frames[1].assign(replication=1),
            "targets": s.first.target_table, "bottlenecks": s.first.bottlenecks,
            "difference": res.difference, "series": s.first.series(),
            "flows": s.first.flows(), "monthly": s.monthly_bands, "stage_output": s.stage_output}


def test_every_table_of_a_result(tables: dict[str, pd.DataFrame]) -> None:
    storage._SCHEMAS.clear()
    for df in tables.values():
        _same(df)
        _same(df.iloc[::-1])  # another index: never stored (preserve_index=False)
        _same(df.iloc[:0])


def _base() -> pd.DataFrame:
    return pd.DataFrame({"name": pd.array(["a", "b", "c"], dtype="str"),
                         "value": [1.0, 2.0, 3.0], "n": np.array([1, 2, 3], np.int64),
                         "flag": [True, False, True],
                         "day": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
                         "kind": pd.Categorical(["x", "y", "x"]),
                         "obj": pd.Series(["p", "q", "r"], dtype=object)})


VARIANTS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "as is": lambda df: df,
    "missing values": lambda df: df.assign(value=[np.nan, 2.0, np.inf],
                                           name=pd.array(["a", None, "c"], dtype="str"),
                                           obj=pd.Series(["p", None, "r"], dtype=object)),
    "other categories": lambda df: df.assign(kind=pd.Categorical(["z", "z", "w"])),
    "more categories": lambda df: df.assign(kind=pd.Categorical(["z", "y", "w"])),
    "ordered categories": lambda df: df.assign(kind=pd.Categorical(["x", "y", "x"],
                                                                   ordered=True)),
    "objects, none": lambda df: df.assign(obj=pd.Series([None] * len(df), dtype=object)),
    "objects of another type": lambda df: df.assign(obj=pd.Series([1, 2, 3], dtype=object)),
    "mixed objects": lambda df: df.assign(obj=pd.Series(["p", 2, None], dtype=object)),
    "dates as objects": lambda df: df.assign(obj=pd.Series([dt.date(2024, 1, i)
                                                             for i in (1, 2, 3)],
                                                            dtype=object)),
    "no rows": lambda df: df.iloc[:0],
    "text, none": lambda df: df.assign(name=pd.array([None] * len(df), dtype="str")),
    "times in a zone": lambda df: df.assign(day=df["day"].dt.tz_localize("UTC")),
    "integers as floats": lambda df: df.assign(n=df["n"].astype(np.float64)),
}


@pytest.mark.parametrize("second", sorted(VARIANTS))
@pytest.mark.parametrize("first", sorted(VARIANTS))
def test_a_frame_of_a_shape_seen_before(first: str, second: str) -> None:
    storage._SCHEMAS.clear()
    for name in (first, second):
        df = VARIANTS[name](_base())
        try:
            want = pa.Table.from_pandas(df, preserve_index=False, nthreads=1)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            with pytest.raises(type(exc)):
                storage._arrow_table(df)
            continue
        got = storage._arrow_table(df)
        assert got.equals(want, check_metadata=True), (first, second)
    assert storage._arrow_table(_base()).equals(  # the usual case, reusing the schema
        pa.Table.from_pandas(_base(), preserve_index=False), check_metadata=True)


@pytest.mark.parametrize("rows", [storage.SMALL_TABLE_ROWS, storage.SMALL_TABLE_ROWS + 1])
def test_a_small_table_is_written_plain_a_large_one_with_dictionaries(tmp_path: Path,
                                                                      rows: int) -> None:
    """A small table is one row group in one file: no dictionary pages, no statistics
    (they would spare a reader nothing). A large one keeps both. Either reads back the
    same."""
    import pyarrow.parquet as pq

    df = pd.DataFrame({"kpi": pd.array(np.resize(["a", "b", "c"], rows), dtype="str"),
                       "value": np.arange(rows, dtype=np.float64)})
    path = tmp_path / "t.parquet"
    storage._parquet(df, path)
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    small = rows <= storage.SMALL_TABLE_ROWS
    assert col.has_dictionary_page is not small
    assert col.is_stats_set is not small
    pd.testing.assert_frame_equal(pd.read_parquet(path), df, check_exact=True)
