"""Run a study: validate it against its base model, run its tasks, write its datasets."""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from retwin import whatif
from retwin._version import __version__
from retwin.batch.executors import Executor, Interrupts, WorkerDied, make_executor
from retwin.batch.expand import Point, Task, expand_points, make_change, plan_tasks
from retwin.batch.spec import KpiSelector, StudySpec, load_spec, spec_hash
from retwin.batch.store import StudyDir
from retwin.batch.tables import (
    SCHEMAS,
    ChunkResult,
    KpiRows,
    PartTask,
    PointRunner,
    SelectedKpis,
    kinds_for,
    nanmean,
    select_kpis,
)
from retwin.engine.run import prepare
from retwin.errors import RetwinError, ScenarioError
from retwin.results import kpi_labels
from retwin.scenario.load import load_scenario, scenario_hash
from retwin.scenario.schema import Scenario

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

# pandas and pyarrow's dataset and compute layers are imported where results are read
# (:class:`BatchResult`), not to run a study: a sweep starts its workers sooner without them.

__all__ = [
    "FULL_CHECK_MAX_POINTS",
    "BatchInterrupted",
    "BatchProgress",
    "BatchResult",
    "Study",
    "prepare_study",
    "run_batch",
]

#: Studies with at most this many points have every point's changes checked up front;
#: larger ones have every parameter value checked alone (a point's changes are independent
#: what-ifs, so a value valid alone is valid in a point) and the rest checked as they run.
FULL_CHECK_MAX_POINTS = 100


@dataclass
class Study:
    """A validated study, ready to run: its spec, base model, points and tasks."""

    spec: StudySpec
    spec_sha256: str
    base: Scenario
    base_hash: str
    points: list[Point]
    tasks: list[Task]
    kinds: tuple[str, ...]

    @property
    def runs(self) -> int:
        return len(self.points) * self.spec.replications

    @property
    def names(self) -> list[str]:
        return [p.label for p in self.spec.vary]

    def runner(self) -> PointRunner:
        return PointRunner(self.base.model_dump(mode="json", by_alias=True), self.base_hash,
                           self.kinds, __version__)


def _load_base(spec: StudySpec, here: Path) -> Scenario:
    ref = spec.base
    for cand in (here / ref, here / f"{ref}.yaml"):
        if cand.is_file():
            ref = str(cand)
            break
    try:
        return load_scenario(ref)
    except ScenarioError as exc:
        raise ScenarioError([(f"base({spec.base})" + (f".{p}" if p else ""), m)
                             for p, m in exc.problems]) from None


def _rename_changes(problems: list[tuple[str, str]], names: Sequence[str]) -> list[
        tuple[str, str]]:
    """``changes[k].field`` of a point's change list -> ``names[k].field``."""
    out = []
    for path, msg in problems:
        if path.startswith("changes["):
            k, _, rest = path[len("changes["):].partition("]")
            if k.isdigit() and int(k) < len(names):
                path = names[int(k)] + rest
        out.append((path, msg))
    return out


def _check_parameters(spec: StudySpec, base: Scenario, points: list[Point]) -> list[
        tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for i, p in enumerate(spec.vary):
        where = spec.where(i)
        taken = list({json.dumps(pt.values[p.label], sort_keys=True): pt.values[p.label]
                      for pt in points}.values())
        if p.mode == "sample" and all(isinstance(v, int | float) for v in taken):
            taken = [min(taken), max(taken)]  # bounds are intervals: the extremes decide
        lines: dict[tuple[str, str], list[Any]] = {}
        for v in taken:
            try:
                whatif.resolve(base, [make_change(p, v)])
            except ScenarioError as exc:
                for prob in _rename_changes(exc.problems, [where]):
                    lines.setdefault(prob, []).append(v)
        for (path, msg), values in lines.items():
            if len(values) < len(taken):
                shown = ", ".join(repr(v) for v in values[:3]) + (
                    f" and {len(values) - 3} more" if len(values) > 3 else "")
                msg = f"{msg} (at {p.label} = {shown})"
            problems.append((path, msg))
    if problems or len(points) > FULL_CHECK_MAX_POINTS:
        return problems
    names = [spec.where(i) for i in range(len(spec.vary))]
    for pt in points:
        try:
            whatif.resolve(base, pt.changes)
        except ScenarioError as exc:
            label = ", ".join(f"{k}={v!r}" for k, v in pt.values.items())
            problems += [(f"point {pt.index} ({label}): {path}", msg)
                         for path, msg in _rename_changes(exc.problems, names)]
    return problems


def _check_kpis(spec: StudySpec, base: Scenario) -> list[tuple[str, str]]:
    """The KPIs to rank exist in a run of the base model: the rows of a run's KPI table
    depend on the compiled model only (its plants, markets, segments and years), never on
    the draws, so they are read from the compiled model without running it."""
    if not spec.kpis:
        return []
    kpi, key, year, _ = kpi_labels(prepare(base))
    problems: list[tuple[str, str]] = []
    keys_of: dict[str, dict[str, None]] = {}
    for family, row_key in zip(kpi, key, strict=True):
        keys_of.setdefault(family, {})[row_key] = None
    families = list(keys_of)
    years = sorted(set(year.tolist()))
    for k, sel in enumerate(spec.selectors):
        if sel.kpi not in keys_of:
            problems.append((f"kpis[{k}]", f"unknown KPI {sel.kpi!r} in {sel.label!r} "
                             f"(known: {', '.join(families)})"))
        elif sel.key not in keys_of[sel.kpi]:
            keys = ", ".join(keys_of[sel.kpi])
            problems.append((f"kpis[{k}]", f"{sel.kpi} has no key {sel.key!r} (known: {keys})"))
        elif sel.year is not None and sel.year not in years:
            problems.append((f"kpis[{k}]", f"year {sel.year} is outside the run "
                             f"({years[0]}..{years[-1]})"))
    return problems


def prepare_study(source: str | Path | Mapping[str, Any] | StudySpec, *,
                  record: str | None = None) -> Study:
    """Load a spec, its base model and fixed changes; expand and check every point.

    Every problem is reported at once, one line each, as
    :class:`~retwin.errors.ScenarioError`: the spec's fields, the base model, the fixed
    changes, each varied parameter's values against the base model, the points (all of them
    in studies of up to :data:`FULL_CHECK_MAX_POINTS`), and the KPIs to rank.
    """
    spec, here = load_spec(source)
    if record is not None and record != spec.record:
        spec = StudySpec.model_validate({**spec.model_dump(), "record": record})
    base = _load_base(spec, here)
    if spec.changes:
        base = whatif.resolve(base, spec.changes).scenario
    points = expand_points(spec, base)
    problems = _check_parameters(spec, base, points)
    if not problems:
        problems = _check_kpis(spec, base)
    if problems:
        raise ScenarioError(problems)
    return Study(spec=spec, spec_sha256=spec_hash(spec), base=base,
                 base_hash=scenario_hash(base), points=points,
                 tasks=plan_tasks(points, spec.replications, spec.chunk),
                 kinds=kinds_for(spec.record))


def _versions(extra: Sequence[str] = ()) -> dict[str, str]:
    return {pkg: _version(pkg) for pkg in ("retwin", "numpy", "numba", "simpy", "pandas",
                                           "pyarrow", "pydantic", *extra)}


@functools.cache
def _version(pkg: str) -> str:
    """The installed version of ``pkg``, read once a process (its modules, once loaded, are
    that version whatever is installed later); ~3 ms a study saved in a long-lived one."""
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class BatchProgress:
    """Where a study stands; passed to ``progress`` at the start and after every task."""

    study: str
    where: str
    points_done: int
    points_total: int
    runs_done: int
    runs_total: int
    runs_at_start: int
    elapsed_s: float
    point: Point | None = None  # the point that just completed, if one did
    task_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Runs per second in this session."""
        done = self.runs_done - self.runs_at_start
        return done / self.elapsed_s if self.elapsed_s > 0 and done > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return (self.runs_total - self.runs_done) / rate if rate > 0 else None


#: The last tasks of a study, one per worker, are each run as this many pieces: the workers
#: then finish within a piece of one another, not within a whole task (tasks are equal in
#: size, the cores' speeds are not, on a shared machine or a cluster).
TAIL_PARTS = 4


def split_tail(tasks: Sequence[Task], workers: int, parts: int = TAIL_PARTS) -> list[Task]:
    """``tasks`` to hand out, with each of the last ``workers`` of them (when there is more
    than one worker) split into up to ``parts`` pieces of consecutive replications. Each
    piece is written as files of its own (:func:`~retwin.batch.store.piece_name`); the
    chunk counts as done once its pieces are all written."""
    if workers < 2 or parts < 2:
        return list(tasks)
    head = list(tasks[:-workers])
    for task in tasks[-workers:]:
        n = min(parts, task.runs)
        bounds = [task.first + (task.runs * k) // n for k in range(n + 1)]
        head += [replace(task, first=a, stop=b) for a, b in itertools.pairwise(bounds)]
    return head


class KpiTally:
    """The spec's KPIs (its ``kpis`` selectors), per point and replication, taken from the
    results as they arrive: what :meth:`BatchResult.point_means` shows after a study, without
    reading back the dataset it has just written.

    A selector with a year takes that year's row; one without takes the mean over the years
    of each replication (as :func:`~retwin.batch.sensitivity.kpi_means`). A point counts once
    every replication of it was seen. A result whose worker wrote its own files brings these
    values along (:func:`~retwin.batch.tables.select_kpis`, taken there); the others are
    taken here, the same way.
    """

    def __init__(self, selectors: Sequence[KpiSelector], replications: int) -> None:
        self.selectors = list(selectors)
        self.replications = replications
        self._present: dict[str, tuple[bool, ...]] = {}  # point -> selectors it reports
        # point -> its chunks' (replications, values (runs, selectors)); 8 bytes a KPI a run
        self._chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, result: ChunkResult) -> None:
        selected: SelectedKpis | None = result.selected
        if selected is None:
            kpis = result.tables.get("kpis")
            if not isinstance(kpis, KpiRows):
                return
            selected = select_kpis(kpis, self.selectors)
        point = result.task.point_id
        self._present[point] = selected.present
        self._chunks.setdefault(point, []).append((selected.replications, selected.values))

    def means(self, points: Sequence[str]) -> dict[str, dict[str, float]] | None:
        """Per point and selector label, the mean over the replications; ``None`` unless
        every replication of every point in ``points`` was seen (a resumed study's earlier
        points are on disk only)."""
        out: dict[str, dict[str, float]] = {}
        for point in points:
            chunks = self._chunks.get(point, [])
            reps = np.concatenate([r for r, _ in chunks]) if chunks else np.zeros(0, np.int64)
            if len(np.unique(reps)) != self.replications:
                return None
            order = np.argsort(reps, kind="stable")  # the same sum whatever the arrival order
            values = np.concatenate([v for _, v in chunks])[order]
            out[point] = {sel.label: float(nanmean(values[:, j], axis=0))
                          for j, sel in enumerate(self.selectors)
                          if self._present[point][j]}
        return out


class BatchInterrupted(KeyboardInterrupt):
    """A study stopped by Ctrl-C (or SIGTERM in the CLI); finished points are kept."""

    def __init__(self, out: Path, points_done: int, points_total: int, runs_done: int,
                 runs_total: int) -> None:
        super().__init__(f"{points_done} of {points_total} points done in {out}")
        self.out = out
        self.points_done = points_done
        self.points_total = points_total
        self.runs_done = runs_done
        self.runs_total = runs_total


def run_batch(
    spec: str | Path | Mapping[str, Any] | StudySpec,
    out: str | Path,
    *,
    workers: int = 1,
    dask: str | Any | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    record: str | None = None,
    executor: Executor | None = None,
    interrupt_signals: Sequence[int] = (signal.SIGINT,),
) -> BatchResult:
    """Run a batch study and return a lazy handle on its results.

    Parameters
    ----------
    spec
        A study spec: a YAML file, a mapping, or a :class:`StudySpec`.
    out
        The output directory. Run the same spec into it again to resume: finished chunks are
        kept and skipped. Another spec (or a changed base model) is refused.
    workers
        1 runs in this process; more run in a pool of local processes.
    dask
        A Dask scheduler address (``tcp://host:8786``) or a ``distributed.Client``: run on
        the cluster instead. Results equal a local run's for the same seeds.
    progress
        Called with a :class:`BatchProgress` at the start and after every finished task.
    record
        Overrides the spec's ``record`` (``annual``, ``monthly``, ``daily``).
    executor
        An executor to use (and keep open) instead of one made from ``workers``/``dask``.
    interrupt_signals
        Signals that stop the study cleanly (the CLI adds SIGTERM). While the study runs in
        the main thread, the first one only asks the running tasks to stop: no new task is
        started, finished ones are written, the workers are ended; a second one stops at
        once. A signal the process ignores stays ignored.

    Raises
    ------
    ScenarioError
        The spec is invalid (one line per problem), or ``out`` holds another study.
    BatchInterrupted
        On Ctrl-C (or another of ``interrupt_signals``): no task is submitted after it, no
        partial file stands; finished points are kept for the next run.
    """
    study = prepare_study(spec, record=record)
    sp = study.spec
    base_info = {"name": study.base.name, "source": sp.base, "scenario_sha256": study.base_hash,
                 "start": study.base.start.isoformat(), "end": study.base.end.isoformat()}
    versions = _versions(("dask", "distributed") if dask is not None else ())
    store = StudyDir(out, spec=sp.model_dump(mode="json"), spec_sha256=study.spec_sha256,
                     base=base_info, versions=versions, points=study.points,
                     tasks=study.tasks, kinds=study.kinds, names=study.names)
    runner = study.runner()
    ex = executor or make_executor(workers, dask)  # reach a cluster before writing anything
    try:
        ex.start(runner)  # the workers start and warm up while the output folder is opened
        store.open()
    except BaseException:
        if executor is None:
            ex.abort()  # the workers hold nothing yet
            ex.close()
        raise
    with store:
        todo = store.todo()
        t0 = time.perf_counter()
        runs_at_start = store.runs_done
        by_id = {p.id: p for p in study.points}
        tally = KpiTally(sp.selectors, sp.replications)
        units: list[Task | PartTask] = list(split_tail(todo, ex.workers))
        if ex.tasks_write:
            # a worker that sees this folder, on a machine with no core to spare for this
            # process, writes the files of its task (or piece of one) itself: this process
            # only puts them in place
            out_dir = os.path.abspath(store.out)
            selectors = tuple(sp.selectors)
            units = [PartTask(u, out_dir, study.spec_sha256, selectors)
                     if isinstance(u, Task) else u for u in units]

        def report(point: Point | None = None, seconds: float = 0.0) -> None:
            if progress is not None:
                progress(BatchProgress(sp.name, ex.description, store.points_done,
                                       len(study.points), store.runs_done, study.runs,
                                       runs_at_start, time.perf_counter() - t0, point,
                                       seconds))

        try:
            with Interrupts(*interrupt_signals) as interrupts:
                report()
                for res in ex.map_unordered(runner, units, stop=interrupts.__bool__):
                    complete = store.commit(res.task, res.staged) if res.staged else \
                        store.write_chunk(res)
                    tally.add(res)
                    report(by_id[res.task.point_id] if complete else None, res.seconds)
        except KeyboardInterrupt:
            ex.abort()
            store.finish("interrupted")
            raise BatchInterrupted(store.out, store.points_done, len(study.points),
                                   store.runs_done, study.runs) from None
        except BaseException as exc:
            ex.abort()
            store.finish("failed")
            if isinstance(exc, WorkerDied):
                raise WorkerDied(f"{exc}; finished points are kept: run again to resume"
                                 ) from None
            raise
        finally:
            if executor is None:
                ex.close()
        result = BatchResult(store.out)
        if sp.is_oat:
            store.write_table("sensitivity", pa.Table.from_pandas(result.sensitivity(),
                                                                  preserve_index=False))
        store.finish("complete")
    return BatchResult(store.out, means=tally.means([p.id for p in study.points]))


def _point_partition() -> ds.Partitioning:
    import pyarrow.dataset as ds

    return ds.partitioning(pa.schema([("point", pa.string())]), flavor="hive")


class BatchResult:
    """A lazy handle on a study's results: nothing is read until asked for.

    ``dataset`` is the ``kpis`` table as a :class:`pyarrow.dataset.Dataset` (partitioned by
    ``point``); :meth:`table_dataset` opens ``monthly`` or ``daily``; :meth:`to_pandas` reads
    a selection; :attr:`points` has each point's parameter values and seed.
    """

    def __init__(self, out: str | Path, *,
                 means: dict[str, dict[str, float]] | None = None) -> None:
        self.path = Path(out)
        if not (self.path / "manifest.json").is_file():
            raise RetwinError(f"{self.path} holds no study (no manifest.json)")
        self._means = means

    @classmethod
    def open(cls, out: str | Path) -> BatchResult:
        """Open the results of a study run earlier."""
        return cls(out)

    def __repr__(self) -> str:
        c = self.manifest["counts"]
        return (f"BatchResult({str(self.path)!r}: {self.manifest['study']!r}, "
                f"{c['points_done']}/{c['points']} points, {c['runs_done']}/{c['runs']} runs, "
                f"{self.manifest['status']})")

    @cached_property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "manifest.json").read_text("utf-8"))
        return data

    @property
    def complete(self) -> bool:
        return bool(self.manifest["status"] == "complete")

    @cached_property
    def spec(self) -> StudySpec:
        return StudySpec.model_validate(self.manifest["spec"])

    @property
    def tables(self) -> list[str]:
        return list(self.manifest["tables"])

    @cached_property
    def points(self) -> pd.DataFrame:
        """One row per point: ``point, index, role, parameter, seed``, the parameters'
        values, and ``changes`` (JSON)."""
        import pandas as pd

        return pd.read_parquet(self.path / "points.parquet")

    def table_dataset(self, table: str = "kpis") -> ds.Dataset:
        """``kpis``, ``monthly`` or ``daily`` as a pyarrow dataset (with a ``point`` column)."""
        import pyarrow.dataset as ds

        if table not in self.tables:
            raise RetwinError(f"the study has no {table!r} table (it has: "
                              f"{', '.join(self.tables)}; record: daily keeps all three)")
        root = self.path / table
        if not root.is_dir():  # no point finished yet
            return ds.dataset([], schema=SCHEMAS[table].append(pa.field("point", pa.string())))
        return ds.dataset(root, format="parquet", partitioning=_point_partition())

    @property
    def dataset(self) -> ds.Dataset:
        """The ``kpis`` table: ``point, kpi, key, year, value, unit, replication``."""
        return self.table_dataset("kpis")

    def to_pandas(self, columns: Sequence[str] | None = None,
                  filter: pc.Expression | Mapping[str, Any] | None = None,
                  table: str = "kpis") -> pd.DataFrame:
        """Read a selection into pandas. ``filter`` is a pyarrow expression or a mapping
        ``{column: value or list of values}``, e.g. ``{"kpi": "value.group", "key": "total"}``.
        """
        expr = _expression(filter) if isinstance(filter, Mapping) else filter
        t = self.table_dataset(table).to_table(columns=list(columns) if columns else None,
                                              filter=expr)
        return t.to_pandas()

    def summary(self, filter: pc.Expression | Mapping[str, Any] | None = None
                ) -> pd.DataFrame:
        """Mean, p5, p50, p95 over replications per point and KPI (of the ``kpis`` rows
        selected by ``filter``), with the points' parameter values."""
        df = self.to_pandas(filter=filter)
        keys = ["point", "kpi", "key", "year", "unit"]
        g = df.groupby(keys, observed=True, sort=False)["value"]
        out = g.mean().rename("mean").to_frame()
        for q in (5, 50, 95):
            out[f"p{q}"] = g.quantile(q / 100)
        out["n"] = g.size()
        out = out.reset_index()
        pts = self.points.drop(columns=["changes"])
        return out.merge(pts, on="point", how="left")

    def kpi_means(self, kpis: Sequence[str] | None = None) -> pd.DataFrame:
        """Per point, the mean over replications of each KPI selector (the spec's ``kpis``
        by default): ``point, kpi, value``."""
        from retwin.batch.sensitivity import kpi_means

        selectors = [KpiSelector.parse(k) for k in (kpis or self.spec.kpis)]
        families = sorted({s.kpi for s in selectors})
        df = self.to_pandas(columns=["point", "kpi", "key", "year", "value", "replication"],
                            filter={"kpi": families})
        return kpi_means(df, selectors)

    def point_means(self) -> dict[str, dict[str, float]]:
        """Per point id, the mean over replications of each of the spec's ``kpis`` (by
        label; a KPI the point's runs do not report is left out): what :meth:`kpi_means`
        gives, as plain numbers. After :func:`run_batch` ran every point of the study, they
        come from the results as they arrived; otherwise they are read from the dataset."""
        if self._means is not None:
            return self._means
        df = self.kpi_means()
        out: dict[str, dict[str, float]] = {}
        for point, kpi, value in zip(df["point"].astype(str), df["kpi"].astype(str),
                                     df["value"].to_numpy(np.float64).tolist(), strict=True):
            out.setdefault(point, {})[kpi] = value
        return out

    def sensitivity(self, kpis: Sequence[str] | None = None) -> pd.DataFrame:
        """The ranked one-at-a-time table: per KPI, each parameter's low/base/high value, the
        KPI there (mean over replications), the swing and its rank."""
        if not self.spec.is_oat:
            raise RetwinError("sensitivity needs a one-at-a-time study (mode: oat)")
        import pandas as pd

        from retwin.batch.sensitivity import sensitivity_table

        if kpis is None and (self.path / "sensitivity.parquet").is_file():
            return pd.read_parquet(self.path / "sensitivity.parquet")
        return sensitivity_table(self.points, self.kpi_means(kpis))


def _expression(filter: Mapping[str, Any]) -> pc.Expression | None:
    import pyarrow.compute as pc

    expr: pc.Expression | None = None
    for col, want in filter.items():
        if isinstance(want, list | tuple | set | frozenset):
            term = pc.field(col).isin(list(want))
        else:
            term = pc.field(col) == want
        expr = term if expr is None else expr & term
    return expr

