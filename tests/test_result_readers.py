"""Results any tool opens: every table of a result folder (``retwin run --out``) and of a
sweep dataset (``retwin sweep --out``) read with pandas, polars and DuckDB, without retwin.
The three agree on the columns, their types and the rows; KPI units are the catalogue's.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pytest

import retwin
from retwin import whatif
from retwin.kpis import catalogue

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

#: The logical type of every column of every table: str, int, float, date, time, bool.
RUN_TABLES: dict[str, dict[str, str]] = {
    "series": {"date": "time", "kind": "str", "id": "str", "value": "float"},
    "flows": {"month": "date", "plant": "str", "stage": "str", "material": "str",
              "direction": "str", "amount": "float"},
    "monthly": {"month": "time", "kind": "str", "id": "str", "mean": "float", "p5": "float",
                "p50": "float", "p95": "float"},
    "stage_output": {"month": "time", "stage": "str", "mean": "float", "p5": "float",
                     "p50": "float", "p95": "float"},
    "kpis": {"kpi": "str", "key": "str", "year": "int", "value": "float", "unit": "str",
             "replication": "int"},
    "summary": {"kpi": "str", "key": "str", "year": "int", "unit": "str", "mean": "float",
                "p5": "float", "p50": "float", "p95": "float", "n": "int"},
    "difference": {"kpi": "str", "key": "str", "year": "int", "unit": "str", "mean": "float",
                   "p5": "float", "p50": "float", "p95": "float", "n": "int"},
    "targets": {"target": "str", "name": "str", "year": "int", "goal": "float",
                "value": "float", "unit": "str", "attained": "bool"},
    "bottlenecks": {"year": "int", "stage": "str", "constraint": "str", "score": "float"},
}

SWEEP_TABLES: dict[str, dict[str, str]] = {
    "kpis": {"kpi": "str", "key": "str", "year": "int", "value": "float", "unit": "str",
             "replication": "int", "point": "str"},
    "monthly": {"month": "date", "kind": "str", "id": "str", "value": "float",
                "replication": "int", "point": "str"},
    "daily": {"date": "date", "kind": "str", "id": "str", "value": "float",
              "replication": "int", "point": "str"},
}

REPLICATIONS = 2


def pandas_kind(dtype: Any) -> str:
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        return "str"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "time"
    return f"? {dtype}"


def polars_kind(dtype: Any) -> str:
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Categorical | pl.Enum):
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "time"
    return f"? {dtype}"


def duckdb_kind(type_name: str) -> str:
    t = type_name.upper()
    if t in ("VARCHAR",) or t.startswith("ENUM"):
        return "str"
    if t == "BOOLEAN":
        return "bool"
    if t in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER"):
        return "int"
    if t in ("DOUBLE", "FLOAT"):
        return "float"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP"):
        return "time"
    return f"? {type_name}"


def read_three(source: str, hive: bool) -> tuple[pd.DataFrame, pl.DataFrame, Any]:
    """The table at ``source`` (a file, or a folder partitioned by point) by each reader."""
    if hive:
        pdf = pd.read_parquet(source)
        pldf = pl.scan_parquet(f"{source}/**/*.parquet", hive_partitioning=True).collect()
        rel = duckdb.sql(f"SELECT * FROM read_parquet('{source}/*/*.parquet', "
                         "hive_partitioning = true)")
    else:
        pdf = pd.read_parquet(source)
        pldf = pl.read_parquet(source)
        rel = duckdb.sql(f"SELECT * FROM read_parquet('{source}')")
    return pdf, pldf, rel


def check_table(source: str, columns: dict[str, str], *, hive: bool = False) -> int:
    """Every reader sees the same columns of the declared types and the same rows (their
    values compared through pandas); returns the row count."""
    pdf, pldf, rel = read_three(source, hive)
    date_cols = [c for c, k in columns.items() if k == "date"]
    assert sorted(pdf.columns) == sorted(columns), (source, list(pdf.columns))
    assert sorted(pldf.columns) == sorted(columns), (source, pldf.columns)
    assert sorted(rel.columns) == sorted(columns), (source, rel.columns)
    for col, kind in columns.items():
        if kind != "date":  # pandas has no date type: datetime.date objects
            assert pandas_kind(pdf[col].dtype) == kind, (source, col, pdf[col].dtype)
        else:
            assert all(isinstance(v, dt.date) for v in pdf[col].head(50)), (source, col)
        assert polars_kind(pldf.schema[col]) == kind, (source, col, pldf.schema[col])
        t = dict(zip(rel.columns, rel.types, strict=True))[col]
        assert duckdb_kind(str(t)) == kind, (source, col, t)
    n = len(pdf)
    assert n > 0 and pldf.height == n
    assert rel.aggregate("count(*)").fetchall()[0][0] == n  # type: ignore[index]
    # the same rows, whoever read them
    order = sorted(columns)
    a = pdf[order].astype({c: str for c, k in columns.items() if k in ("str", "date")})
    b = pldf.select(order).to_pandas().astype(
        {c: str for c, k in columns.items() if k in ("str", "date")})
    c = rel.df()[order].astype({c: str for c, k in columns.items() if k in ("str", "date")})
    for other in (b, c):
        for frame in (a, other):
            for col in date_cols:
                frame[col] = frame[col].str.slice(0, 10)
        pd.testing.assert_frame_equal(
            a.sort_values(order).reset_index(drop=True),
            other.sort_values(order).reset_index(drop=True),
            check_dtype=False, check_categorical=False)
    return n


def catalogue_units() -> dict[str, str | None]:
    return {k["name"]: k["unit"] for k in catalogue()}


def check_units(source: str, hive: bool = False) -> None:
    """Every KPI row has a unit: the catalogue's, or (a unit taken from a material) one
    unit per KPI and key."""
    units = catalogue_units()
    rel = duckdb.sql(f"SELECT kpi, key, list(DISTINCT unit) AS units FROM read_parquet("
                     f"'{source}'{', hive_partitioning = true' if hive else ''}) GROUP BY ALL")
    for kpi, key, found in rel.fetchall():
        assert len(found) == 1 and found[0], (kpi, key, found)
        assert kpi in units, kpi
        if units[kpi] is not None:
            assert found[0] == units[kpi], (kpi, key, found, units[kpi])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = whatif.resolve("tiny", [{"kind": "quota", "quota": "mining", "factor": 0.9,
                                 "from": "2025-01-01"}])
    out = tmp_path_factory.mktemp("run") / "result"
    whatif.save(whatif.run(w, replications=REPLICATIONS, seed=1), out)
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "dataset"
    spec = {"name": "readers", "base": "tiny",
            "vary": [{"name": "mining_quota",
                      "change": {"kind": "quota", "quota": "mining", "from": "2025-01-01"},
                      "field": "factor", "mode": "oat", "delta_frac": 0.2, "base": 1.0}],
            "replications": REPLICATIONS, "seed": 3, "record": "daily"}
    retwin.run_batch(spec, out, workers=1)
    return out


@pytest.mark.parametrize("name", sorted(RUN_TABLES))
def test_every_table_of_a_run_opens_alike_in_pandas_polars_and_duckdb(run_dir: Path,
                                                                      name: str) -> None:
    n = check_table(str(run_dir / f"{name}.parquet"), RUN_TABLES[name])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["replications"] == REPLICATIONS
    if name in ("kpis", "summary", "difference"):
        check_units(str(run_dir / f"{name}.parquet"))
    if name == "targets":  # a goal states its unit
        assert duckdb.sql(f"SELECT count(*) FROM '{run_dir}/targets.parquet' "
                          "WHERE unit IS NULL OR unit = ''").fetchall()[0][0] == 0
    if name == "kpis":
        per_rep = pd.read_parquet(run_dir / "kpis.parquet").groupby("replication").size()
        assert sorted(per_rep.index) == list(range(REPLICATIONS))
        assert per_rep.nunique() == 1 and n == per_rep.iloc[0] * REPLICATIONS
        summary = len(pd.read_parquet(run_dir / "summary.parquet"))
        assert summary == per_rep.iloc[0]  # one summary row per KPI, key and year


@pytest.mark.parametrize("name", sorted(SWEEP_TABLES))
def test_every_table_of_a_sweep_dataset_opens_alike(sweep_dir: Path, name: str) -> None:
    n = check_table(str(sweep_dir / name), SWEEP_TABLES[name], hive=True)
    points = pd.read_parquet(sweep_dir / "points.parquet")
    assert len(points) == 3  # one at a time: the base, then the parameter low and high
    per_point = pd.read_parquet(sweep_dir / name).groupby("point", observed=True).size()
    assert sorted(per_point.index.astype(str)) == sorted(points["point"].astype(str))
    assert per_point.nunique() == 1 and n == per_point.iloc[0] * len(points)
    if name == "kpis":
        check_units(f"{sweep_dir}/kpis/*/*.parquet", hive=True)


@pytest.mark.parametrize("name", ["points.parquet", "sensitivity.parquet"])
def test_the_sweep_side_tables_open_alike(sweep_dir: Path, name: str) -> None:
    path = str(sweep_dir / name)
    pdf, pldf, rel = read_three(path, hive=False)
    assert len(pdf) > 0 and pldf.height == len(pdf)
    assert rel.aggregate("count(*)").fetchall()[0][0] == len(pdf)  # type: ignore[index]
    assert sorted(pdf.columns) == sorted(pldf.columns) == sorted(rel.columns)


def test_the_readmes_duckdb_query_runs_on_a_sweep_dataset(sweep_dir: Path) -> None:
    """The DuckDB query the README shows, on a real dataset: one row per point and year."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("-- DuckDB")
    query = readme[start:readme.index("```", start)].replace("results/grid", str(sweep_dir))
    rows = duckdb.sql(query).fetchall()
    kpis = pd.read_parquet(sweep_dir / "kpis")
    want = kpis.query("kpi == 'value.group' and key == 'total'")
    assert len(rows) == want.groupby(["point", "year"], observed=True).ngroups > 0
    means = {(str(p), int(y)): v for p, y, v, _ in rows}
    for (p, y), g in want.groupby(["point", "year"], observed=True):
        assert means[(str(p), int(y))] == pytest.approx(g["value"].mean())
