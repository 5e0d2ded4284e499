"""Stored results, read back: the run's summary, and its tables filtered and formatted.

Results are immutable once stored (a key names one computation), so what is read is cached.
Filters by stage, plant, material and element use the run's own scenario (``scenario.json``):
a row matches when the plant, pool, market or demand segment it is about has that stage, is
that plant, makes or holds that material, or holds that element.

Answers are bounded: JSON comes in pages (:data:`JSON_PAGE_DEFAULT` rows unless asked,
at most :data:`JSON_PAGE_MAX`), CSV and Parquet are streamed in chunks of
:data:`CHUNK_ROWS` rows, each made in a worker thread, so a large table never sits in memory
twice nor holds the event loop.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring  # json.dumps' own, with ensure_ascii=False
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from retwin import whatif
from retwin.storage import TableDeferred, read_table

__all__ = [
    "CHUNK_ROWS",
    "HEADLINE_KPIS",
    "JSON_PAGE_DEFAULT",
    "JSON_PAGE_MAX",
    "MEDIA",
    "Filters",
    "ResultMissing",
    "compare",
    "filter_table",
    "headline",
    "iter_csv",
    "iter_parquet",
    "manifest",
    "plant_output",
    "prime",
    "primed",
    "read",
    "render",
    "result_json",
    "result_of",
    "run_result",
    "stage_output",
]

Fmt = Literal["json", "csv", "parquet"]
MEDIA: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
KPI_KEYS = whatif.KPI_KEYS

#: Rows of a JSON page when no ``limit`` is given, and the most one page holds.
JSON_PAGE_DEFAULT = 1000
JSON_PAGE_MAX = 10_000
#: Rows per chunk of a streamed CSV or Parquet answer.
CHUNK_ROWS = 20_000


class ResultMissing(Exception):
    """A finished run whose stored result is gone (deleted by hand)."""


@dataclass(frozen=True)
class Filters:
    """What a table request selects; empty fields select everything."""

    stage: tuple[str, ...] = ()
    plant: tuple[str, ...] = ()
    material: tuple[str, ...] = ()
    element: tuple[str, ...] = ()
    kind: tuple[str, ...] = ()
    kpi: tuple[str, ...] = ()
    start: dt.date | None = None
    end: dt.date | None = None

    @property
    def by_entity(self) -> bool:
        return bool(self.stage or self.plant or self.material or self.element)


@dataclass
class _Entity:
    stage: set[str] = field(default_factory=set)
    plant: set[str] = field(default_factory=set)
    material: set[str] = field(default_factory=set)
    element: set[str] = field(default_factory=set)

    def matches(self, f: Filters) -> bool:
        return all(not want or bool(have & set(want)) for want, have in (
            (f.stage, self.stage), (f.plant, self.plant), (f.material, self.material),
            (f.element, self.element)))


@dataclass
class _Index:
    """Who is who in one run's scenario."""

    plants: dict[str, _Entity]
    pools: dict[str, _Entity]
    markets: dict[str, _Entity]
    segments: dict[str, _Entity]
    materials: dict[str, _Entity]
    stages: set[str]


def _index(scenario: dict[str, Any]) -> _Index:
    comp = {m["id"]: {el for el, v in (m.get("composition_t_reo_per_unit") or {}).items()
                      if v and v > 0}
            for m in scenario.get("materials", [])}

    def mat(*ids: str) -> _Entity:
        return _Entity(material=set(ids), element=set().union(*(comp.get(i, set()) for i in ids)))

    plants = {}
    for p in scenario.get("plants", []):
        e = mat(*p["recipe"]["outputs"])
        e.stage, e.plant = {p["stage"]}, {p["id"]}
        plants[p["id"]] = e
    pools = {f"{p.get('region', 'baotou')}/{p['material']}": mat(p["material"])
             for p in scenario.get("pools", [])}
    markets = {k["id"]: mat(k["material"]) for k in scenario.get("markets", [])}
    segments = {g["id"]: mat(g["material"]) for g in scenario.get("demand", [])}
    materials = {m: mat(m) for m in comp}
    return _Index(plants, pools, markets, segments, materials,
                  {p["stage"] for p in scenario.get("plants", [])})


def _kpi_entity(ix: _Index, kpi: str, key: str) -> _Entity:
    kind = kpi.rsplit(".", 1)[-1]
    if kind == "stage":
        return _Entity(stage={key})
    if kind == "plant":
        return ix.plants.get(key, _Entity(plant={key}))
    if kind == "material":
        return ix.materials.get(key, _Entity(material={key}))
    if kind == "market":
        return ix.markets.get(key, _Entity())
    if kind == "segment":
        return ix.segments.get(key, _Entity())
    if kpi.startswith("element."):
        return _Entity(element=set(key.split("+")))
    return _Entity()


_SERIES_KIND = {"activity": "plants", "stock": "pools", "imports": "markets",
                "exports": "markets", "served": "segments", "unmet": "segments"}


# --- reading -------------------------------------------------------------------------------


def _dir(root: Path, key: str) -> Path:
    d = root / key
    if not (d / "manifest.json").is_file():
        raise ResultMissing(key)
    return d


@lru_cache(maxsize=256)
def manifest(root: Path, key: str) -> dict[str, Any]:
    return dict(json.loads((_dir(root, key) / "manifest.json").read_text(encoding="utf-8")))


@lru_cache(maxsize=64)
def _scenario_index(root: Path, key: str) -> _Index:
    return _index(json.loads((_dir(root, key) / "scenario.json").read_text(encoding="utf-8")))


@lru_cache(maxsize=32)
def read(root: Path, key: str, table: str) -> pd.DataFrame:
    """One stored table of a result (cached; treat as read-only)."""
    d = _dir(root, key)
    try:
        return read_table(d, table)
    except TableDeferred:
        raise  # not written yet: Jobs.complete writes it (a route's business, not a 410)
    except FileNotFoundError:
        raise ResultMissing(key) from None


DATE_COLUMNS = ("date", "month")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN and infinities become null, dates ``YYYY-MM-DD``."""
    dates = [c for c in DATE_COLUMNS if c in df.columns]
    if dates:
        df = df.assign(**{c: pd.to_datetime(df[c]).dt.strftime("%Y-%m-%d") for c in dates})
    out = json.loads(df.to_json(orient="records", double_precision=15))
    return list(out)


def _num(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


#: The KPIs of a run's compact answer (``detail=headline``), each with every key it has,
#: or only the keys named: region-wide figures a planner reads first. Every row stays in
#: the tables (``/kpis``, ``/kpis?view=difference``) and in ``detail=full``.
HEADLINE_KPIS: dict[str, tuple[str, ...]] = {
    "output.stage": (),
    "value.group": (),
    "local_conversion": (),
    "element.la_ce_surplus": (),
    "element.dy_tb_deficit": (),
    "price.material": ("prnd_oxide",),
}

Detail = Literal["headline", "full"]
_STAT_COLUMNS = [*KPI_KEYS, "mean", "p5", "p50", "p95", "n"]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a summary or difference table that :data:`HEADLINE_KPIS` names."""
    kpi = df["kpi"].to_numpy(dtype=object)
    keep = np.isin(kpi, [name for name, keys in HEADLINE_KPIS.items() if not keys])
    keyed = [(name, keys) for name, keys in HEADLINE_KPIS.items() if keys]
    if keyed:
        key = df["key"].to_numpy(dtype=object)
        for name, keys in keyed:
            keep |= (kpi == name) & np.isin(key, list(keys))
    return df.iloc[np.flatnonzero(keep)]


def _arrow(root: Path, key: str, table: str, columns: Sequence[str] | None = None) -> Any:
    """One stored table as an Arrow table (no pandas on the way: the answer of a run reads
    four small tables, and pandas' conversion cost more than the reading)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = _dir(root, key)
    path = d / f"{table}.parquet"
    try:  # one small file: no dataset, no threads (they cost more than the reading)
        return pq.ParquetFile(path).read(columns=list(columns) if columns else None,
                                         use_threads=False)
    except FileNotFoundError:
        df = read(root, key, table)  # a result stored as CSV
        return pa.Table.from_pandas(df[list(columns)] if columns else df,
                                    preserve_index=False)


def _headline_rows(t: Any) -> Any:
    """:func:`headline` of an Arrow table."""
    import pyarrow.compute as pc

    keep = None
    for name, keys in HEADLINE_KPIS.items():
        rows = pc.equal(t["kpi"].cast("string"), name)
        if keys:
            rows = pc.and_(rows, pc.is_in(t["key"].cast("string"),
                                          value_set=pa_strings(keys)))
        keep = rows if keep is None else pc.or_(keep, rows)
    return t.filter(keep)


def pa_strings(values: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())


def _json_rows(t: Any) -> list[dict[str, Any]]:
    """An Arrow table's rows as :func:`records` makes them (the numbers of the tables'
    JSON exactly)."""
    return _records(t.to_pandas(ignore_metadata=True, use_threads=False))


def _has_table(m: dict[str, Any], table: str) -> bool:
    """Whether a result's manifest lists ``table``, written or deferred."""
    return (any(str(f).split(".", 1)[0] == table for f in m.get("files", []))
            or table in (m.get("deferred") or []))


def _result_body(m: dict[str, Any], detail: Detail, kpis: list[dict[str, Any]],
                 difference: list[dict[str, Any]] | None, targets: list[dict[str, Any]],
                 bottlenecks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scenario": m["scenario"], "scenario_hash": m["scenario_hash"], "start": m["start"],
        "end": m["end"], "seed": m["seed"], "replications": m["replications"],
        "mass_balance_closes": bool(m.get("mass_balance_closes", True)),
        "detail": detail,
        "kpis": kpis,
        "difference": difference,
        "targets": targets,
        "bottlenecks": bottlenecks,
        "notes": list(m.get("notes", [])),
    }


#: Results bodies made where a result was computed, before anyone read it back
#: (:func:`prime`): ``(root, key, detail)`` -> (the body, the body encoded; either may be
#: ``None``, not both), the most recent last.
_PRIMED: OrderedDict[tuple[Path, str, str], tuple[dict[str, Any] | None, bytes | None]] = \
    OrderedDict()
_PRIMED_KEPT = 64
_primed_lock = threading.Lock()


def prime(root: str | Path, key: str, detail: Detail, body: dict[str, Any] | None,
          encoded: bytes | None = None) -> None:
    """Remember the :func:`run_result` of stored result ``key`` as made from the result
    itself (:func:`result_of`) where it was computed: the answer of the request that
    waited for it reads no table back. ``encoded``: the body as JSON
    (:func:`retwin_service.render.dumps`), made meanwhile (:func:`primed_json`); given
    alone (``body`` ``None``), the body is read from it when first asked for."""
    if body is None and encoded is None:
        raise ValueError("prime needs the body, its JSON or both")
    k = (Path(root), key, detail)
    with _primed_lock:
        _PRIMED[k] = (body, encoded)
        _PRIMED.move_to_end(k)
        while len(_PRIMED) > _PRIMED_KEPT:
            _PRIMED.popitem(last=False)


def _primed(root: str | Path, key: str, detail: Detail
            ) -> tuple[dict[str, Any] | None, bytes | None] | None:
    with _primed_lock:
        return _PRIMED.get((Path(root), key, detail))


def primed_json(root: str | Path, key: str, detail: Detail) -> bytes | None:
    """The primed :func:`run_result` of ``key`` as JSON, when it was encoded already."""
    hit = _primed(root, key, detail)
    return None if hit is None else hit[1]


def primed(root: str | Path, key: str, detail: Detail) -> bool:
    """Whether :func:`run_result` of ``key`` was primed (it reads nothing then)."""
    return _primed(root, key, detail) is not None


def run_result(root: Path, key: str, detail: Detail = "headline") -> dict[str, Any]:
    """The body of ``RunPublic.result`` for a stored result: with ``detail="headline"``
    the rows of :data:`HEADLINE_KPIS` in ``kpis`` and ``difference``, with ``"full"``
    every KPI row. Cached (results never change); primed by :func:`prime`."""
    hit = _primed(root, key, detail)
    if hit is None:
        return _stored_result(Path(root), key, detail)
    body, encoded = hit
    if body is None:  # primed with its JSON alone: read once
        assert encoded is not None
        body = json.loads(encoded)
        with _primed_lock:
            k = (Path(root), key, detail)
            if k in _PRIMED:
                _PRIMED[k] = (body, encoded)
    return body


@lru_cache(maxsize=64)
def _stored_result(root: Path, key: str, detail: Detail = "headline") -> dict[str, Any]:
    """:func:`run_result` read from the stored tables."""
    m = manifest(root, key)
    summary = _arrow(root, key, "summary", _STAT_COLUMNS)
    diff = (_arrow(root, key, "difference", _STAT_COLUMNS) if _has_table(m, "difference")
            else None)
    if detail == "headline":
        summary = _headline_rows(summary)
        diff = None if diff is None else _headline_rows(diff)
    return _result_body(m, detail, _json_rows(summary),
                        None if diff is None else _json_rows(diff),
                        _json_rows(_arrow(root, key, "targets")),
                        _json_rows(_arrow(root, key, "bottlenecks")))


def result_of(m: dict[str, Any], summary: pd.DataFrame, difference: pd.DataFrame | None,
              targets: pd.DataFrame, bottlenecks: pd.DataFrame,
              detail: Detail = "headline") -> dict[str, Any]:
    """:func:`run_result` of a result as it is stored, made from its tables in memory (and
    its manifest ``m``): the same body, without reading the tables back."""
    parts = _result_parts(summary, difference, targets, bottlenecks, detail)
    rows = _rows_of(parts)
    if rows is None:  # a column of a kind only pandas' encoder takes
        rows = [_records(df.iloc[pos] if pos is not None else df)
                for df, _, pos in _picked(parts)]
    kpis, *rest = rows
    diff = rest.pop(0) if difference is not None else None
    return _result_body(m, detail, kpis, diff, rest[0], rest[1])


def _result_parts(summary: pd.DataFrame, difference: pd.DataFrame | None,
                  targets: pd.DataFrame, bottlenecks: pd.DataFrame, detail: Detail
                  ) -> list[tuple[pd.DataFrame, Sequence[str], np.ndarray | None]]:
    parts: list[tuple[pd.DataFrame, Sequence[str], np.ndarray | None]] = [
        (df, _STAT_COLUMNS, _headline_positions(df) if detail == "headline" else None)
        for df in (summary, difference) if df is not None]
    return [*parts, (targets, columns(targets), None), (bottlenecks, columns(bottlenecks), None)]


#: The last frames' key columns (``kpi``, ``key``) and their headline positions: every
#: answer on one model has the same rows (only the numbers differ).
_HEADLINE_SEEN: list[tuple[Any, Any, np.ndarray]] = []
_HEADLINE_SEEN_KEPT = 4
_headline_lock = threading.Lock()


def _headline_positions(df: pd.DataFrame) -> np.ndarray:
    """The positions of :func:`headline`'s rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kpi = pa.array(df["kpi"], type=pa.string())
    key = pa.array(df["key"], type=pa.string())
    with _headline_lock:
        for k, y, pos in _HEADLINE_SEEN:
            if kpi.equals(k) and key.equals(y):
                return pos
    keep = pc.is_in(kpi, value_set=pa_strings(
        [name for name, keys in HEADLINE_KPIS.items() if not keys]))
    for name, keys in HEADLINE_KPIS.items():
        if keys:
            keep = pc.or_(keep, pc.and_(pc.equal(kpi, name),
                                        pc.is_in(key, value_set=pa_strings(keys))))
    pos = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    pos.flags.writeable = False
    with _headline_lock:
        _HEADLINE_SEEN.insert(0, (kpi, key, pos))
        del _HEADLINE_SEEN[_HEADLINE_SEEN_KEPT:]
    return pos


def _picked(parts: Sequence[tuple[pd.DataFrame, Sequence[str], np.ndarray | None]]
            ) -> list[tuple[pd.DataFrame, Sequence[str], np.ndarray | None]]:
    return [(df if list(df.columns) == list(cols) else df[list(cols)], cols, pos)
            for df, cols, pos in parts]


_Parts = Sequence[tuple[pd.DataFrame, Sequence[str], np.ndarray | None]]
#: Each frame's columns, each column's values (a float column: its slot in the floats), and
#: its rows; then every float of every frame, as pandas' JSON gives them.
_Columns = tuple[list[tuple[Sequence[str], list[Any], int]], list[Any]]


def _columns_of(parts: _Parts) -> _Columns | None:
    """The values of each frame's ``cols`` at positions ``pos`` (every row: ``None``),
    column by column: one encoding of every float of every frame (the numbers pandas' JSON
    gives, exactly), the other columns as Python values. ``None`` when a column is of
    another kind (dates, objects, nullable integers)."""
    import pyarrow as pa

    floats: list[np.ndarray] = []
    made: list[tuple[Sequence[str], list[Any], int]] = []  # each column's values or float slot
    for df, cols, pos in parts:
        values: list[Any] = []
        n = len(df) if pos is None else len(pos)
        for c in cols:
            if c in DATE_COLUMNS:
                return None
            col = df[c]
            kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else None
            if kind == "f":
                a = col.to_numpy()
                floats.append(a if pos is None else a[pos])
                values.append(len(floats) - 1)
            elif kind in ("i", "u", "b"):
                a = col.to_numpy()
                values.append((a if pos is None else a[pos]).tolist())
            elif isinstance(col.dtype, pd.StringDtype | pd.CategoricalDtype):
                a = pa.array(col)
                values.append((a if pos is None else a.take(pos)).to_pylist())
            else:
                return None
        made.append((cols, values, n))
    encoded: list[Any] = []
    if floats:
        flat = np.concatenate(floats).astype(np.float64, copy=False)
        encoded = json.loads(pd.Series(flat, copy=False).to_json(orient="records",
                                                                 double_precision=15))
    return made, encoded


def _rows_of(parts: _Parts) -> list[list[dict[str, Any]]] | None:
    """:func:`_records` of each frame's ``cols`` at positions ``pos`` (every row: ``None``),
    the same rows, made column by column (:func:`_columns_of`); ``None`` when a column is
    of a kind only :func:`_records` takes."""
    columns = _columns_of(parts)
    if columns is None:
        return None
    made, encoded = columns
    return [[dict(zip(cols, row, strict=True)) for row in zip(*(v for _, v in placed),
                                                               strict=True)]
            if placed else [{} for _ in range(n)]
            for cols, placed, n in _placed(made, encoded)]


def _placed(made: list[tuple[Sequence[str], list[Any], int]], flat: list[Any]
            ) -> Iterator[tuple[Sequence[str], list[tuple[bool, list[Any]]], int]]:
    """Each frame of :func:`_columns_of`'s ``made``, each column as (whether it is a float
    column, its values): a float column's slot replaced by its slice of ``flat`` (every
    float of every frame, or their text)."""
    at = 0
    for cols, values, n in made:
        placed = []
        for v in values:
            if isinstance(v, int):
                placed.append((True, flat[at:at + n]))
                at += n
            else:
                placed.append((False, v))
        yield cols, placed, n


def _json(x: Any) -> str:
    return json.dumps(x, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _items(values: list[Any]) -> list[str]:
    """Each of ``values`` (numbers, booleans, ``None``) as :func:`_json` writes it in a
    list: no such value's text holds a comma."""
    return _json(values)[1:-1].split(",") if values else []


def _texts(values: list[Any]) -> list[str]:
    """Each of ``values`` (text or ``None``) as :func:`_json` writes it; each distinct value
    encoded once (a column of labels repeats a few)."""
    memo: dict[Any, str] = {}
    out = []
    for v in values:
        t = memo.get(v)
        if t is None:
            t = memo[v] = "null" if v is None else encode_basestring(v)
        out.append(t)
    return out


def _rows_json(parts: _Parts) -> list[str] | None:
    """Each frame's rows as :func:`_rows_of` gives them, as the JSON :func:`_json` writes
    of them, made without a Python object per row; ``None`` when :func:`_rows_of` would
    not make them."""
    columns = _columns_of(parts)
    if columns is None:
        return None
    made, encoded = columns
    out = []
    for cols, placed, n in _placed(made, _items(encoded)):
        texts = [v if is_float else _texts(v)
                 if v and isinstance(next((x for x in v if x is not None), None), str)
                 else _items(v) for is_float, v in placed]
        row = "{" + ",".join(_json(str(c)).replace("%", "%%") + ":%s" for c in cols) + "}"
        out.append("[" + ",".join(row % r for r in zip(*texts, strict=True)) + "]"
                   if texts else "[" + ",".join(["{}"] * n) + "]")
    return out


def result_json(m: dict[str, Any], summary: pd.DataFrame, difference: pd.DataFrame | None,
                targets: pd.DataFrame, bottlenecks: pd.DataFrame,
                detail: Detail = "headline") -> bytes:
    """:func:`result_of` as JSON (:func:`retwin_service.encode.dumps` of it, the same
    bytes), its rows written as text straight from the tables' columns."""
    from retwin_service.encode import dumps

    parts = _result_parts(summary, difference, targets, bottlenecks, detail)
    try:
        rows = _rows_json(parts)
        if rows is not None:
            kpis, *rest = rows
            diff = rest.pop(0) if difference is not None else None
            body = _result_body(m, detail, [], None if diff is None else [], [], [])
            made = {"kpis": kpis, "targets": rest[0], "bottlenecks": rest[1]}
            if diff is not None:
                made["difference"] = diff
            return ("{" + ",".join(_json(k) + ":" + (made[k] if k in made else _json(v))
                                   for k, v in body.items()) + "}").encode("utf-8")
    except (ValueError, TypeError):  # what dumps sanitises (a lone surrogate, a NaN)
        pass
    return dumps(result_of(m, summary, difference, targets, bottlenecks, detail))


def stage_output(root: Path, key: str, plant_stage: dict[str, str]) -> pd.DataFrame:
    """Monthly output per stage of a stored result: ``stage, month, mean, p5, p95``, months
    in order within each stage.

    The band is the one stored in the result's ``stage_output`` table, taken across the
    replications' stage totals (:meth:`retwin.results.RunResult.stage_output`), not the
    sum of the plants' bands. A result stored before that table existed gives the sum of
    its plants' monthly means (``plant_stage`` names each plant's stage) and no band
    (``p5`` and ``p95`` NaN)."""
    if _has_table(manifest(root, key), "stage_output"):
        df = read(root, key, "stage_output")
        return df[["stage", "month", "mean", "p5", "p95"]].sort_values(
            ["stage", "month"], kind="stable").reset_index(drop=True)
    mon = read(root, key, "monthly")
    act = mon[mon["kind"] == "activity"]
    col = "mean" if "mean" in act.columns else "value"
    g = (act.assign(stage=act["id"].astype(str).map(plant_stage))
         .groupby(["stage", "month"], observed=True)[col].sum())
    out = g.rename("mean").reset_index()
    out["p5"] = out["p95"] = np.nan
    return out


def plant_output(root: Path, key: str, plants: Sequence[str]) -> pd.DataFrame:
    """Monthly output of some plants of a stored result: ``id, month, mean, p5, p95``
    (each plant's own band across the replications), months in order within each plant;
    a plant the result does not have has no rows."""
    mon = read(root, key, "monthly")
    act = mon[(mon["kind"] == "activity") & mon["id"].astype(str).isin(list(plants))]
    if "mean" not in act.columns:  # one run: its values, a band of width 0
        act = act.assign(mean=act["value"], p5=act["value"], p95=act["value"])
    out = act[["id", "month", "mean", "p5", "p95"]].assign(id=act["id"].astype(str))
    return out.sort_values(["id", "month"], kind="stable").reset_index(drop=True)


# --- filtering -----------------------------------------------------------------------------


def _period(col: pd.Series, f: Filters, *, years: bool = False) -> pd.Series:
    keep = pd.Series(True, index=col.index)
    if years:
        if f.start is not None:
            keep &= col >= f.start.year
        if f.end is not None:
            keep &= col <= f.end.year
        return keep
    values = pd.to_datetime(col)
    if f.start is not None:
        keep &= values >= pd.Timestamp(f.start)
    if f.end is not None:
        keep &= values <= pd.Timestamp(f.end)
    return keep


def filter_table(root: Path, key: str, table: str, f: Filters) -> pd.DataFrame:
    """Rows of ``table`` (``series``, ``flows``, ``kpis``, ``summary``, ``difference``)
    that match ``f``."""
    df = read(root, key, table)
    keep = pd.Series(True, index=df.index)
    if table == "series":
        if f.kind:
            keep &= df["kind"].isin(f.kind)
        if f.by_entity:
            ix = _scenario_index(root, key)
            pairs = df.loc[keep, ["kind", "id"]].drop_duplicates()
            ok = {(k, i) for k, i in pairs.itertuples(index=False)
                  if getattr(ix, _SERIES_KIND.get(k, "plants")).get(i, _Entity()).matches(f)}
            keep &= pd.Series([(k, i) in ok for k, i in zip(df["kind"], df["id"], strict=True)],
                              index=df.index)
        keep &= _period(df["date"], f)
    elif table == "flows":
        if f.stage:
            keep &= df["stage"].isin(f.stage)
        if f.plant:
            keep &= df["plant"].isin(f.plant)
        if f.material:
            keep &= df["material"].isin(f.material)
        if f.element:
            ix = _scenario_index(root, key)
            mats = [m for m, e in ix.materials.items() if e.element & set(f.element)]
            keep &= df["material"].isin(mats)
        if f.kind:
            keep &= df["direction"].isin(f.kind)
        keep &= _period(df["month"], f)
    else:
        if f.kpi:
            keep &= np.logical_or.reduce(
                [(df["kpi"] == k) | df["kpi"].str.startswith(k + ".") for k in f.kpi])
        if f.by_entity:
            ix = _scenario_index(root, key)
            pairs = df.loc[keep, ["kpi", "key"]].drop_duplicates()
            ok = {(k, i) for k, i in pairs.itertuples(index=False)
                  if _kpi_entity(ix, k, i).matches(f)}
            keep &= pd.Series([(k, i) in ok for k, i in zip(df["kpi"], df["key"], strict=True)],
                              index=df.index)
        keep &= _period(df["year"], f, years=True)
    return df[keep]


# --- comparing -----------------------------------------------------------------------------


def compare(root: Path, key_a: str, key_b: str, f: Filters) -> tuple[pd.DataFrame, bool]:
    """KPI differences a − b; paired by replication (:func:`retwin.whatif.paired_difference`,
    as a what-if's difference to its baseline) when seeds and replications agree."""
    ma, mb = manifest(root, key_a), manifest(root, key_b)
    paired = (ma["seed"], ma["replications"]) == (mb["seed"], mb["replications"])
    sa = filter_table(root, key_a, "summary", f)[[*KPI_KEYS, "mean"]]
    sb = filter_table(root, key_b, "summary", f)[[*KPI_KEYS, "mean"]]
    means = sa.merge(sb, on=KPI_KEYS, how="outer", suffixes=("_a", "_b"))
    means = means.rename(columns={"mean_a": "a_mean", "mean_b": "b_mean"})
    if paired:
        n = int(ma["replications"])
        stats = whatif.paired_difference(
            whatif.kpi_frames(filter_table(root, key_a, "kpis", f), n),
            whatif.kpi_frames(filter_table(root, key_b, "kpis", f), n))
        out = means.merge(stats, on=KPI_KEYS, how="outer")
    else:
        out = means.copy()
        out["mean"] = out["a_mean"].fillna(0.0) - out["b_mean"].fillna(0.0)
        for c in ("p5", "p50", "p95"):
            out[c] = np.nan
        out["n"] = 0
    out["n"] = out["n"].fillna(0).astype(int)
    out = out.sort_values(["kpi", "key", "year"], kind="stable").reset_index(drop=True)
    return out[[*KPI_KEYS, "a_mean", "b_mean", "mean", "p5", "p50", "p95", "n"]], paired


# --- formats -------------------------------------------------------------------------------


def pick_format(fmt: str | None, accept: str | None) -> Fmt:
    """``format=`` wins; else the first of CSV or Parquet the ``Accept`` header names;
    else JSON."""
    if fmt:
        return fmt  # type: ignore[return-value]
    a = (accept or "").lower()
    if "text/csv" in a:
        return "csv"
    if "parquet" in a:
        return "parquet"
    return "json"


def page(df: pd.DataFrame, offset: int, limit: int | None) -> pd.DataFrame:
    end = None if limit is None else offset + limit
    return df.iloc[offset:end]


def render(df: pd.DataFrame, fmt: Fmt) -> bytes:
    """CSV or Parquet bytes of a table (all at once; :func:`iter_csv` and
    :func:`iter_parquet` stream them)."""
    return b"".join(iter_csv(df) if fmt == "csv" else iter_parquet(df))


def iter_csv(df: pd.DataFrame, chunk_rows: int = CHUNK_ROWS) -> Iterator[bytes]:
    """A table as CSV, the header then chunks of ``chunk_rows`` rows."""
    yield df.iloc[:0].to_csv(index=False).encode("utf-8")
    for start in range(0, len(df), chunk_rows):
        part = df.iloc[start:start + chunk_rows]
        yield part.to_csv(index=False, header=False).encode("utf-8")


class _Sink(io.RawIOBase):
    """A write-only file that hands over what was written so far."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.parts.append(data)
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def iter_parquet(df: pd.DataFrame, chunk_rows: int = CHUNK_ROWS) -> Iterator[bytes]:
    """A table as one Parquet file, a row group of ``chunk_rows`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = df.reset_index(drop=True)
    schema = pa.Schema.from_pandas(df, preserve_index=False)
    sink = _Sink()
    with pq.ParquetWriter(sink, schema) as writer:
        for start in range(0, len(df), chunk_rows):
            part = df.iloc[start:start + chunk_rows]
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
            data = sink.take()
            if data:
                yield data
    yield sink.take()


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return _records(df)


def columns(df: pd.DataFrame) -> Sequence[str]:
    return [str(c) for c in df.columns]


def number(v: Any) -> float | None:
    return _num(v)
