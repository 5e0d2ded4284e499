"""What a task computes: a point's replications, reduced to compact tidy tables.

A task never returns whole :class:`~retwin.results.RunResult` objects: each run is reduced to
its annual KPIs (always), monthly series (``record: monthly``) and daily series
(``record: daily``) as soon as it ends, and the run's arrays are dropped.

Tables (one row per value, tidy):

* ``kpis`` — ``kpi, key, year, value, unit, replication``: the annual KPIs of
  :attr:`retwin.results.RunResult.kpis`, exactly;
* ``monthly`` — ``month, kind, id, value, replication``: the rows of
  :meth:`retwin.results.RunResult.monthly_values` (kinds ``activity``, ``capacity`` per
  plant, ``utilisation`` per stage, ``stock`` per pool at the month's end, ``imports`` and
  ``exports`` per market, ``served`` and ``unmet`` per segment, ``price`` per material),
  then ``value``: output value per plant, CNY in the month;
* ``daily`` — ``date, kind, id, value, replication`` with the daily kinds ``activity``,
  ``stock``, ``imports``, ``exports``, ``served``, ``unmet`` (as
  :meth:`retwin.results.RunResult.series`).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retwin import whatif
from retwin._kept import Kept
from retwin._version import __version__
from retwin.batch.executors import warm_once
from retwin.batch.expand import Task
from retwin.batch.spec import KpiSelector
from retwin.engine.build import Compiled, compile_scenario
from retwin.engine.run import run
from retwin.errors import MassBalanceError, RetwinError, ScenarioError
from retwin.results import RunResult, kpi_labels
from retwin.scenario.load import scenario_hash, validate_tree
from retwin.scenario.schema import Scenario

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["KINDS", "SCHEMAS", "ChunkBuilder", "ChunkResult", "KpiRows", "PartTask",
           "PointRunner", "SelectedKpis", "kinds_for", "select_kpis"]

#: Result tables in the order they are written; ``kpis`` is written last.
KINDS: tuple[str, ...] = ("daily", "monthly", "kpis")

if TYPE_CHECKING:
    #: Columns of each result table (a dataset adds ``point`` from its partitions).
    SCHEMAS: dict[str, pa.Schema]


def _schemas() -> dict[str, pa.Schema]:
    import pyarrow as pa

    return {
        "kpis": pa.schema([("kpi", pa.string()), ("key", pa.string()), ("year", pa.int64()),
                           ("value", pa.float64()), ("unit", pa.string()),
                           ("replication", pa.int64())]),
        "monthly": pa.schema([("month", pa.date32()), ("kind", pa.string()),
                              ("id", pa.string()), ("value", pa.float64()),
                              ("replication", pa.int64())]),
        "daily": pa.schema([("date", pa.date32()), ("kind", pa.string()), ("id", pa.string()),
                            ("value", pa.float64()), ("replication", pa.int64())]),
    }


def __getattr__(name: str) -> Any:
    # pyarrow is loaded where tables are written (the study's process, or a worker that
    # writes its task's files: a PartTask), not in a worker that only reports KPIs (pyarrow
    # and its first string array cost a worker ~50-100 MB).
    if name == "SCHEMAS":
        schemas = globals()["SCHEMAS"] = _schemas()
        return schemas
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_RECORD_KINDS: dict[str, tuple[str, ...]] = {
    "annual": ("kpis",),
    "monthly": ("monthly", "kpis"),
    "daily": ("daily", "monthly", "kpis"),
}


def kinds_for(record: str) -> tuple[str, ...]:
    """The tables a study keeps: ``kpis``, plus ``monthly`` and ``daily`` as recorded."""
    try:
        return _RECORD_KINDS[record]
    except KeyError:
        raise ValueError(f"record(={record!r}) must be annual, monthly or daily") from None


def _daily_blocks(c: Compiled, res: RunResult) -> list[tuple[str, list[str], np.ndarray]]:
    """``(kind, ids, values (ids, days))`` of one run's daily series."""
    pools = [f"{r}/{m}" for r, m in c.pool_keys]
    blocks = [
        ("activity", c.plant_ids, res.activity),
        ("stock", pools, res.stock),
        ("imports", c.market_ids, res.imports),
        ("exports", c.market_ids, res.exports),
        ("served", c.segment_ids, res.served),
        ("unmet", c.segment_ids, res.unmet),
    ]
    return [(k, ids, v) for k, ids, v in blocks if ids]


def _monthly(c: Compiled, res: RunResult) -> tuple[pd.DataFrame, np.ndarray]:
    """The run's monthly series (:meth:`~retwin.results.RunResult.monthly_values`, the rows
    ``retwin run --out`` writes) followed by output ``value`` per plant (CNY per month)."""
    labels, values = res.monthly_values()
    return labels, np.concatenate([values, res.value_month.reshape(-1)])


class _SeriesLayout:
    """The ``time, kind, id`` columns of one run's series: built once, shared by every run."""

    def __init__(self, c: Compiled, res: RunResult, monthly: bool) -> None:
        import pyarrow as pa

        self.monthly = monthly
        if monthly:
            labels, _ = _monthly(c, res)
            months = [dt.date(y, m, 1) for y, m in c.months]
            self.time_name = "month"
            self.time = pa.concat_arrays([
                pa.array(labels["month"].to_numpy().astype("datetime64[D]"), pa.date32()),
                pa.array(np.tile(np.array(months, dtype="datetime64[D]"), len(c.plant_ids)),
                         pa.date32())])
            self.kind = pa.array(labels["kind"].tolist() + ["value"] * (
                len(c.plant_ids) * len(months)), pa.string())
            self.id = pa.array(labels["id"].tolist() + list(np.repeat(
                c.plant_ids, len(months))), pa.string())
            return
        days = pa.array(c.dates.astype("datetime64[D]"), pa.date32())
        kinds: list[str] = []
        ids: list[str] = []
        blocks = _daily_blocks(c, res)
        for kind, block_ids, _ in blocks:
            kinds += [kind] * (len(block_ids) * len(days))
            ids += list(np.repeat(block_ids, len(days)))
        n_series = sum(len(b) for _, b, _ in blocks)
        self.time_name = "date"
        self.time = pa.concat_arrays([days] * n_series) if n_series else days.slice(0, 0)
        self.kind = pa.array(kinds, pa.string())
        self.id = pa.array(ids, pa.string())

    def table(self, c: Compiled, res: RunResult, replication: int) -> pa.Table:
        import pyarrow as pa

        if self.monthly:
            values = _monthly(c, res)[1]
        else:
            blocks = _daily_blocks(c, res)
            values = np.concatenate([v.reshape(-1) for _, _, v in blocks]) if blocks else \
                np.zeros(0)
        if len(values) != len(self.id):
            raise RetwinError("a run's series do not match the point's layout")
        return pa.table({
            self.time_name: self.time, "kind": self.kind, "id": self.id,
            "value": pa.array(values, pa.float64()),
            "replication": pa.array(np.full(len(values), replication, np.int64)),
        })


@dataclass(frozen=True, eq=False)
class KpiRows:
    """A chunk's ``kpis`` table, compact: the row labels of its point once, each run's values
    under them. It travels from a worker as it is; :meth:`table` makes the table where it is
    written (rows run by run, each run's rows in the labels' order)."""

    kpi: list[str]
    key: list[str]
    year: np.ndarray
    unit: list[str]
    values: np.ndarray  # (runs, rows)
    replications: np.ndarray  # (runs,)

    @property
    def num_rows(self) -> int:
        return int(self.values.size)

    def table(self) -> pa.Table:
        import pyarrow as pa

        from retwin.batch import arrow

        n_runs, n_rows = self.values.shape
        return pa.table({
            "kpi": arrow.repeated_strings(self.kpi, n_runs),
            "key": arrow.repeated_strings(self.key, n_runs),
            "year": arrow.numbers(np.tile(np.asarray(self.year, np.int64), n_runs), pa.int64()),
            "value": arrow.numbers(self.values, pa.float64()),
            "unit": arrow.repeated_strings(self.unit, n_runs),
            "replication": arrow.numbers(np.repeat(self.replications.astype(np.int64), n_rows),
                                         pa.int64()),
        }, schema=_schemas()["kpis"])


def nanmean(values: np.ndarray, axis: int) -> Any:
    """The mean along ``axis`` of the values that are not NaN (NaN where none is), as
    pandas takes a mean, without numpy's warning about an empty slice."""
    ok = ~np.isnan(values)
    n = ok.sum(axis=axis)
    total = np.where(ok, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


@dataclass(frozen=True, eq=False)
class SelectedKpis:
    """A chunk's values of a study's KPI selectors: per run (``replications``) and selector,
    the selected row (a year given) or the mean over the selected rows (no year); ``present``
    says which selectors the point reports at all."""

    replications: np.ndarray  # (runs,)
    values: np.ndarray  # (runs, selectors)
    present: tuple[bool, ...]


#: Row indices per selector, per layout of KPI rows and selectors (a process sees few).
_SELECTED_ROWS: Kept[list[np.ndarray]] = Kept(max_items=8)


def _selected_rows(kpis: KpiRows, sels: tuple[KpiSelector, ...]) -> list[np.ndarray]:
    """Per selector, the indices of the rows of ``kpis`` it selects."""
    index: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, (kpi, key, year) in enumerate(zip(kpis.kpi, kpis.key, np.asarray(kpis.year).tolist(),
                                              strict=True)):
        index.setdefault((kpi, key), []).append((int(year), i))
    return [np.array([i for year, i in index.get((sel.kpi, sel.key), [])
                      if sel.year is None or year == sel.year], np.int64)
            for sel in sels]


def select_kpis(kpis: KpiRows, selectors: Sequence[KpiSelector]) -> SelectedKpis:
    """The values of ``selectors`` in a chunk's KPI rows (see :class:`SelectedKpis`): what a
    study tallies of a chunk, the same numbers wherever it is taken (worker or study)."""
    sels = tuple(selectors)
    layout = (tuple(kpis.kpi), tuple(kpis.key), np.asarray(kpis.year).tobytes(), sels)
    rows = _SELECTED_ROWS.get_or_make(layout, lambda: _selected_rows(kpis, sels))
    per_run = np.full((len(kpis.replications), len(rows)), np.nan)
    for j, r in enumerate(rows):
        if len(r):
            per_run[:, j] = nanmean(kpis.values[:, r], axis=1)
    return SelectedKpis(np.asarray(kpis.replications, np.int64), per_run,
                        tuple(bool(len(r)) for r in rows))


class ChunkBuilder:
    """Collects the tables of a task's runs, one run at a time (the run is then dropped)."""

    def __init__(self, c: Compiled, kinds: tuple[str, ...]) -> None:
        self.c = c
        self.kinds = kinds
        self._parts: dict[str, list[pa.Table]] = {k: [] for k in kinds if k != "kpis"}
        self._kpi_values: list[np.ndarray] = []
        self._replications: list[int] = []
        self._layouts: dict[str, _SeriesLayout] = {}

    def add(self, res: RunResult, replication: int) -> None:
        for kind in self.kinds:
            if kind == "kpis":
                # Which KPI rows a run reports depends on the compiled scenario only (its
                # plants, markets, segments and years), never on the draws: the chunk (one
                # point) keeps their labels once, and each run's values.
                values = res.kpi_values
                if len(values) != len(kpi_labels(self.c)[0]):
                    raise RetwinError("a run's KPIs do not match the point's layout")
                self._kpi_values.append(values)
                self._replications.append(replication)
            else:
                layout = self._layouts.get(kind)
                if layout is None:
                    layout = self._layouts[kind] = _SeriesLayout(self.c, res, kind == "monthly")
                self._parts[kind].append(layout.table(self.c, res, replication))

    def tables(self) -> dict[str, pa.Table | KpiRows]:
        out: dict[str, pa.Table | KpiRows] = {}
        if self._parts:
            import pyarrow as pa

            out.update({k: pa.concat_tables(v).combine_chunks()
                        for k, v in self._parts.items() if v})
        if self._kpi_values:
            kpi, key, year, unit = kpi_labels(self.c)
            out["kpis"] = KpiRows(kpi, key, year, unit, np.stack(self._kpi_values),
                                  np.asarray(self._replications, np.int64))
        return out


@dataclass
class ChunkResult:
    """What a task sends back: its tables, how long it took, and where it ran.

    A task that wrote its own files (a :class:`PartTask`) sends back no tables: ``staged``
    names its files, ``(kind, temporary path)``, for the study to put in place, and
    ``selected`` holds the values of the study's KPI selectors, all the study keeps of the
    chunk besides its files."""

    task: Task
    tables: dict[str, pa.Table | KpiRows]
    seconds: float
    worker: str
    staged: tuple[tuple[str, str], ...] = ()
    selected: SelectedKpis | None = None

    def table(self, kind: str) -> pa.Table | None:
        """Table ``kind`` as written (``None`` if the task made none)."""
        t = self.tables.get(kind)
        return t.table() if isinstance(t, KpiRows) else t


@dataclass(frozen=True)
class PartTask:
    """A task whose worker writes its result files itself, as temporary files under
    ``out/.tmp`` of the study directory ``out`` (a path this worker shares with the study's
    process), and sends back their names and the values of the study's KPI ``selectors``
    (:class:`ChunkResult` ``staged``, ``selected``). The study's process puts the files in
    place (flushed, renamed) and records the chunk: the worker goes on to its next task
    without waiting on the disk, and no file stands before it is whole."""

    task: Task
    out: str
    spec_sha256: str
    selectors: tuple[KpiSelector, ...] = ()


@dataclass
class PointRunner:
    """The function every worker calls on a :class:`~retwin.batch.expand.Task`.

    It carries the base scenario as plain data (so it travels to any worker, local or on a
    cluster), validates it once per process and checks it hashes as the client's did, and
    keeps the last points' compiled scenarios for the next chunks of the same point.
    """

    base_tree: dict[str, Any]
    base_hash: str
    kinds: tuple[str, ...]
    version: str
    _base: Scenario | None = field(default=None, repr=False)
    _compiled: Kept[Compiled] = field(default_factory=lambda: Kept(max_items=2), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cache_key(self) -> str:
        return f"{self.base_hash}:{','.join(self.kinds)}"

    def __getstate__(self) -> dict[str, Any]:
        return {"base_tree": self.base_tree, "base_hash": self.base_hash, "kinds": self.kinds,
                "version": self.version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.base_tree = state["base_tree"]
        self.base_hash = state["base_hash"]
        self.kinds = tuple(state["kinds"])
        self.version = state["version"]
        self._base = None
        self._compiled = Kept(max_items=2)
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Warm the kernels and validate the base scenario (a worker's start-up)."""
        warm_once()
        self.base()

    def base(self) -> Scenario:
        with self._lock:
            if self._base is None:
                if __version__ != self.version:
                    raise RetwinError(f"worker {socket.gethostname()} runs retwin "
                                      f"{__version__}; the study needs {self.version}")
                sc = validate_tree(self.base_tree)
                if scenario_hash(sc) != self.base_hash:
                    raise RetwinError("the base scenario differs on worker "
                                      f"{socket.gethostname()} (hash mismatch)")
                self._base = sc
            return self._base

    def compiled(self, task: Task) -> Compiled:
        return self._compiled.get_or_make(task.point_id, lambda: self._compile(task))

    def _compile(self, task: Task) -> Compiled:
        base = self.base()
        try:
            sc = whatif.resolve(base, task.changes).scenario
        except ScenarioError as exc:
            raise ScenarioError([(f"point {task.point_id}", line) for line in exc.lines()]) \
                from None
        return compile_scenario(sc)

    def __call__(self, item: Task | PartTask) -> ChunkResult:
        t0 = time.perf_counter()
        task = item.task if isinstance(item, PartTask) else item
        warm_once()
        c = self.compiled(task)
        builder = ChunkBuilder(c, self.kinds)
        for r in range(task.first, task.stop):
            try:
                res = run(c, seed=task.seed, replication=r)
            except MassBalanceError as exc:
                raise MassBalanceError(f"point {task.point_id}, replication {r} (seed "
                                       f"{task.seed}): {exc}") from None
            builder.add(res, r)
            del res
        tables = builder.tables()
        worker = f"{socket.gethostname()}:{os.getpid()}"
        if not isinstance(item, PartTask):
            return ChunkResult(task, tables, time.perf_counter() - t0, worker)
        from pathlib import Path

        from retwin.batch.store import stage_parts

        kpis = tables.get("kpis")
        selected = select_kpis(kpis, item.selectors) if isinstance(kpis, KpiRows) else None
        staged = stage_parts(Path(item.out), item.spec_sha256,
                             ChunkResult(task, tables, 0.0, worker), self.kinds)
        return ChunkResult(task, {}, time.perf_counter() - t0, worker, staged=staged,
                           selected=selected)
