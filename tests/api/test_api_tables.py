"""A run's tables are answered in bounded pieces: JSON in pages (a default size, a maximum,
a link to the next page), CSV and Parquet streamed in chunks; every row still arrives once."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from apiutil import TestClient, settings_for, whatif

from retwin_service import tables
from retwin_service.main import create_app

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path_factory.mktemp("tables")))) as c:
        yield c


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    r = client.post(f"{API}/runs", json=whatif(), params={"wait": 30})
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("table", ["series", "flows", "kpis"])
def test_json_comes_in_pages_that_link_the_next(client: TestClient, run: dict[str, Any],
                                                table: str) -> None:
    url = f"{API}/runs/{run['id']}/{table}"
    first = client.get(url, params={"limit": 700}).json()
    total = first["total"]
    assert total > 700 or table != "series"
    rows, page, pages = [], first, 0
    while True:
        assert len(page["rows"]) <= 700 and page["limit"] == 700
        rows += page["rows"]
        pages += 1
        if page["next"] is None:
            break
        page = client.get(page["next"]).json()
    assert len(rows) == total and pages == -(-total // 700)
    whole = pd.read_csv(io.BytesIO(client.get(url, params={"format": "csv"}).content))
    assert len(whole) == total


def test_json_without_a_limit_is_one_default_page(client: TestClient,
                                                  run: dict[str, Any]) -> None:
    t = client.get(f"{API}/runs/{run['id']}/series").json()
    assert t["total"] > tables.JSON_PAGE_DEFAULT
    assert len(t["rows"]) == t["limit"] == tables.JSON_PAGE_DEFAULT
    assert t["next"] == (f"{API}/runs/{run['id']}/series?offset={tables.JSON_PAGE_DEFAULT}"
                         f"&limit={tables.JSON_PAGE_DEFAULT}")


def test_a_json_page_is_never_larger_than_the_maximum(client: TestClient, run: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "JSON_PAGE_MAX", 2000)
    t = client.get(f"{API}/runs/{run['id']}/series",
                   params={"limit": 5_000_000, "kind": "activity", "offset": 3}).json()
    assert len(t["rows"]) == t["limit"] == 2000 and t["offset"] == 3
    assert "offset=2003" in t["next"] and "kind=activity" in t["next"]
    assert t["next"].count("offset=") == t["next"].count("limit=") == 1


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_are_streamed_whole(client: TestClient, run: dict[str, Any],
                                            fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks: list[int] = []
    real = tables.iter_csv if fmt == "csv" else tables.iter_parquet

    def counted(df: pd.DataFrame, chunk_rows: int = 0) -> Iterator[bytes]:
        for part in real(df, 1000):  # many chunks even for a small run
            chunks.append(len(part))
            yield part

    monkeypatch.setattr(tables, f"iter_{fmt}", counted)
    r = client.get(f"{API}/runs/{run['id']}/series", params={"format": fmt})
    assert r.status_code == 200
    assert "content-length" not in r.headers  # streamed, not built whole first
    total = int(r.headers["x-total-count"])
    assert len(chunks) > total // 1000
    df = pd.read_csv(io.BytesIO(r.content)) if fmt == "csv" else pd.read_parquet(
        io.BytesIO(r.content))
    assert len(df) == total and list(df.columns) == ["date", "kind", "id", "value"]
    j = client.get(f"{API}/runs/{run['id']}/series",
                   params={"limit": 10_000, "offset": 0}).json()["rows"]
    head = df.head(len(j))
    assert head["value"].tolist() == pytest.approx([x["value"] for x in j])
    assert [str(x)[:10] for x in head["date"]] == [x["date"] for x in j]


def test_a_streamed_table_honours_offset_and_limit(client: TestClient,
                                                   run: dict[str, Any]) -> None:
    r = client.get(f"{API}/runs/{run['id']}/flows",
                   params={"format": "csv", "offset": 5, "limit": 7})
    assert len(pd.read_csv(io.StringIO(r.text))) == 7


def test_an_empty_selection_is_a_valid_file(client: TestClient, run: dict[str, Any]) -> None:
    params = {"plant": "nowhere"}
    for fmt in ("csv", "parquet"):
        r = client.get(f"{API}/runs/{run['id']}/series", params={**params, "format": fmt})
        df = pd.read_csv(io.BytesIO(r.content)) if fmt == "csv" else pd.read_parquet(
            io.BytesIO(r.content))
        assert df.empty and list(df.columns) == ["date", "kind", "id", "value"]
    t = client.get(f"{API}/runs/{run['id']}/series", params=params).json()
    assert t["total"] == 0 and t["rows"] == [] and t["next"] is None


def _typed(x: Any) -> Any:
    """``x`` with every leaf's type beside it: 1 and 1.0, True and 1 differ."""
    if isinstance(x, dict):
        return {k: _typed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_typed(v) for v in x]
    return (type(x).__name__, x)


def test_rows_made_column_by_column_are_pandas_json_rows() -> None:
    """The answer's rows are made column by column (:func:`tables._rows_of`); each row, key
    order, value and type, is what pandas' JSON gives (:func:`tables.records`): floats of
    every size, NaN and infinities as null, missing strings, categories, booleans."""
    import numpy as np

    rng = np.random.default_rng(7)
    n = 400
    floats = rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)
    floats[[3, 50, 51]] = [np.nan, np.inf, -np.inf]
    df = pd.DataFrame({
        "kpi": pd.Series(rng.choice(["output.stage", "value.group", "price.material"], n),
                         dtype="str"),
        "key": pd.Series(np.where(rng.random(n) < 0.1, None, "prnd_oxide"), dtype="str"),
        "year": rng.integers(2020, 2035, n), "score": floats,
        "small": floats.astype(np.float32), "cat": pd.Categorical(rng.choice(["a", "b"], n)),
        "ok": rng.random(n) < 0.5,
    })
    pos = np.flatnonzero(rng.random(n) < 0.3)
    cols = ["kpi", "key", "year", "score", "small", "cat", "ok"]
    made = tables._rows_of([(df, cols, pos), (df, ["year", "score"], None)])
    assert made is not None
    assert _typed(made[0]) == _typed(tables.records(df[cols].iloc[pos]))
    assert _typed(made[1]) == _typed(tables.records(df[["year", "score"]]))
    # a kind only pandas' encoder takes: the caller falls back to it
    assert tables._rows_of([(df.assign(when=pd.Timestamp("2024-01-01")), ["when"], None)]) \
        is None
    assert tables._rows_of([(df.assign(date="2024-01-01"), ["date"], None)]) is None


def test_rows_written_as_text_are_the_json_of_the_rows() -> None:
    """An answer's rows are written as JSON text straight from the columns
    (:func:`tables._rows_json`): the same text as the JSON of the rows :func:`tables._rows_of`
    makes, escapes, missing values, numbers and booleans included, and a whole answer
    (:func:`tables.result_json`) the same bytes as its body encoded; text JSON cannot carry
    (a lone surrogate) takes the encoder's way, sanitised."""
    import numpy as np

    from retwin_service.encode import dumps

    rng = np.random.default_rng(11)
    n = 300
    floats = rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)
    floats[[3, 50, 51]] = [np.nan, np.inf, -np.inf]
    labels = ['plain', 'a "quoted" one', "back\\slash", "tab\tand\nnewline", "稀土 元素",
              "ctrl\x01", "50% off", ""]
    df = pd.DataFrame({
        "kpi": pd.Series(rng.choice(labels, n), dtype="str"),
        "key": pd.Series(np.where(rng.random(n) < 0.1, None, "prnd_oxide"), dtype="str"),
        "year": rng.integers(2020, 2035, n), "score": floats,
        "small": floats.astype(np.float32), "cat": pd.Categorical(rng.choice(["a", "b"], n)),
        "ok": rng.random(n) < 0.5, "n%s": np.arange(n),
    })
    pos = np.flatnonzero(rng.random(n) < 0.3)
    parts = [(df, list(df.columns), pos), (df, ["year", "score"], None), (df, [], pos[:3]),
             (df.iloc[:0], ["kpi", "score"], None)]
    rows, texts = tables._rows_of(parts), tables._rows_json(parts)
    assert rows is not None and texts is not None
    assert texts == [dumps(r).decode() for r in rows]

    m = {"scenario": 'a "name"', "scenario_hash": "h", "start": "2024-01-01",
         "end": "2024-12-31", "seed": 1, "replications": 1, "notes": ["note ✓"]}
    stats = df[["kpi", "key", "year"]].assign(unit="t", mean=floats, p5=floats, p50=floats,
                                              p95=floats, n=1)
    for detail in ("headline", "full"):
        for diff in (stats, None):
            want = dumps(tables.result_of(m, stats, diff, df[["kpi", "ok"]], df[["year"]],
                                          detail))
            assert tables.result_json(m, stats, diff, df[["kpi", "ok"]], df[["year"]],
                                      detail) == want
    lone = {**m, "notes": ["t\ud800"]}
    got = tables.result_json(lone, stats, None, df[["kpi"]], df[["year"]])
    assert got == dumps(tables.result_of(lone, stats, None, df[["kpi"]], df[["year"]]))
    assert json.loads(got)["notes"] == ["t\ufffd"]


def test_headline_rows_are_found_again_only_for_the_same_rows() -> None:
    """The headline rows' positions are kept for frames with the same KPI rows (every
    answer on one model); a frame with other rows, even as many, gets its own."""
    names = list(tables.HEADLINE_KPIS)
    keyed = next(n for n, keys in tables.HEADLINE_KPIS.items() if keys)
    a = pd.DataFrame({"kpi": pd.Series([names[0], "other", keyed, keyed, None], dtype="str"),
                      "key": pd.Series(["x", "y", tables.HEADLINE_KPIS[keyed][0], "no", None],
                                       dtype="str")})
    b = a.assign(kpi=pd.Series(["other", names[0], keyed, "other", names[0]], dtype="str"))
    c = a.assign(key=pd.Series(["x", "y", "no", tables.HEADLINE_KPIS[keyed][0], None],
                               dtype="str"))
    for df in (a, b, c, a.copy(), b, c):
        got = tables._headline_positions(df)
        assert df.iloc[got].equals(tables.headline(df)), df
