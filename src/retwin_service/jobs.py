"""Running what-ifs off the event loop, on retwin's executors: the computations, the worker's
side of one, and the server's side of them all.

The event loop only awaits futures. Each computation (a what-if with its replications, or a
baseline) is a :class:`Task` identified by its *key*, the hash of the request, which names its
stored result (:func:`result_dir`); runs waiting for the same key share one computation, and a
computation whose result is stored is never run again. A task carries the what-if as the
service resolved and checked it (:class:`retwin.whatif.WhatIf`: the scenarios themselves, the
changes applied), so a worker never loads a model or applies a change again.

**Where.** :mod:`retwin.batch.executors`, the executors of batch studies: a
:class:`~retwin.batch.executors.ProcessExecutor` of ``RETWIN_WORKERS`` local processes (they
leave Ctrl-C and SIGTERM to the server, warm their kernels at start, use one BLAS thread each
and end themselves when the server is gone), or with ``RETWIN_DASK_ADDRESS`` a
:class:`~retwin.batch.executors.DaskExecutor` (then the server stores the result: the cluster
need not share its disk).

**The worker** (:func:`compute`) runs the baseline first, unless it is stored already (then
its KPIs stand in for it), and stores it under its own key; then the what-if and its paired
difference (:func:`retwin.whatif.run`), stored atomically (:func:`store`). The stored result
holds at once what the answer reads (the KPIs, their summary and difference, targets,
bottlenecks); the tables made from the daily records (:func:`deferred_for`) are left for
the first request that reads them: :meth:`Jobs.complete` has a worker run them again
(:class:`Completion`, :func:`complete`; results are deterministic) and write them whole
(:func:`retwin.storage.complete_result`). Nothing is lost when the service stops before:
the result reads as before, and is completed when asked.

Between two replications it reports progress and looks for a cancellation through
:func:`~retwin.batch.executors.task_hooks`; the executor brings the progress back to
:class:`Jobs`, which writes it to the registry, and :meth:`Jobs.cancel` raises the executor's
flag for the key.

**Answered before it is stored.** The worker makes the answer (and its JSON) and hands it
over before it stores the result (:func:`answer_made`); the requests waiting for that
answer (``POST /runs`` and ``GET /runs/{id}`` at ``detail=headline``) have it as done at
once (:class:`Answered`), while the worker stores. The registry records the runs done once
the result is stored, with the time of the answer. In between, every route of this process
reads them as done, and a route that reads the stored tables waits for the store first
(:meth:`Jobs.settle`). Results are deterministic (the seed is in the request), so nothing
given out is lost if the service stops in between: the runs are still unfinished in the
registry and run again at the next start, to the same numbers. If the store fails (the data
folder filled up meanwhile), the runs read as failed after.

What lives here: the tasks, the worker's :func:`compute` and the server's :class:`Jobs`.
What does not: HTTP (:mod:`retwin_service.routes`) and the run rows
(:mod:`retwin_service.registry`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import errno
import functools
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import retwin
from retwin import whatif
from retwin.batch.executors import (
    DaskExecutor,
    Executor,
    ProcessExecutor,
    TaskHooks,
    pid_alive,
    task_hooks,
    warm_once,
)
from retwin.scenario import available_models, scenario_hash
from retwin.storage import (
    complete_result,
    deferred_tables,
    read_table,
    rerun_replications,
)
from retwin_service.space import NO_SPACE, Space, is_no_space

if TYPE_CHECKING:  # a worker needs none of the registry's packages
    from retwin_service.registry import Finished, Registry, RunRecord

__all__ = ["Answered", "Cancelled", "Completion", "Compute", "Jobs", "Outcome", "Sent",
           "Source", "StoreFailed", "Task", "Warm", "answer_hashed", "answer_made",
           "answer_of", "answer_parts", "complete", "compute", "deferred_for", "is_stored",
           "public_error", "reference_model", "result_dir", "store", "stored_kpis"]

log = logging.getLogger("retwin.api.jobs")

#: Seconds between two progress messages of one computation.
PROGRESS_EVERY_S = 0.25


class Cancelled(Exception):
    """Raised inside a worker to stop a computation between two replications."""


class StoreFailed(Exception):
    """A result could not be stored: the fault is the service's data folder (full,
    read-only…), never the request. It reaches the server as an exception, which tells a
    full folder (and remembers it for the health check) from an internal error."""


def deferred_for(replications: int) -> tuple[str, ...]:
    """The tables a stored result leaves for its first reader (:meth:`Jobs.complete`):
    those one replication run again makes. ``series`` and ``flows`` always (they are the
    first replication's); ``monthly`` and ``stage_output`` when there is one replication
    (else their bands need every replication again, so they are written at once)."""
    if replications == 1:
        return ("series", "flows", "monthly", "stage_output")
    return ("series", "flows")


def store(result: whatif.WhatIfResult, results_root: str | Path, key: str,
          baseline_key: str | None = None) -> None:
    """Store ``result`` as computation ``key`` (atomically), the tables of
    :func:`deferred_for` left for later; :class:`StoreFailed` if the data folder refuses
    it."""
    try:
        whatif.save(result, result_dir(results_root, key), baseline_ref=baseline_key,
                    defer=deferred_for(len(result.whatif.seeds) or 1))
    except (retwin.RetwinError, OSError) as exc:
        raise StoreFailed(f"storing {key[:12]}: {exc}") from exc


@dataclass(frozen=True)
class Source:
    """Where a task's what-if comes from: a reference model (its name, and the hash of the
    model the service read), the end it runs to (``None``: the model's) and its changes
    (canonical JSON), as :func:`retwin.whatif.resolve` took them."""

    model: str
    model_hash: str
    end: str | None
    changes: tuple[Any, ...]


@dataclass(frozen=True)
class Task:
    """One computation: everything a worker needs, nothing it has to look up.

    ``baseline_key`` names the stored result of ``whatif.baseline_only()`` with the same
    seed and replications (``None`` when this task has no baseline: it *is* one).
    ``results_root`` is where the worker writes (``None``: the server writes, and
    ``baseline_kpis`` may carry a stored baseline's ``kpis`` table). ``source`` says where
    ``whatif`` comes from, when it is a reference model's (:meth:`sent`).
    """

    key: str
    whatif: whatif.WhatIf
    seed: int
    replications: int
    baseline_key: str | None
    results_root: str | None
    baseline_kpis: pd.DataFrame | None = None
    source: Source | None = None

    def sent(self) -> Task | Sent:
        """What goes to a local worker: with a ``source``, the task without its what-if
        (:class:`Sent`), which the worker resolves again from the reference model it keeps
        -- its two scenarios took ~50 KB to send, ~0.6 ms to pickle and ~0.8 ms to
        unpickle, where resolving takes ~0.03 ms; else the task itself."""
        if self.source is None or self.baseline_kpis is not None:
            return self
        return Sent(self.key, self.source, self.seed, self.replications, self.baseline_key,
                    self.results_root)


@dataclass(frozen=True)
class Sent:
    """A :class:`Task` of a reference model on its way to a local worker: its what-if given
    by where it comes from (:class:`Source`); :meth:`task` resolves it."""

    key: str
    source: Source
    seed: int
    replications: int
    baseline_key: str | None
    results_root: str | None

    def task(self) -> Task:
        """The task, its what-if resolved as the service resolved it: the same reference
        model (:func:`reference_model`), end and changes. Raises
        :class:`~retwin.ScenarioError` if the model on disk is no longer the one the
        service read."""
        src = self.source
        w = whatif.resolve(reference_model(src.model, src.model_hash), src.changes,
                           end=src.end)
        return Task(self.key, w, self.seed, self.replications, self.baseline_key,
                    self.results_root, source=src)


#: The reference models this process has read, by name, with their hashes.
_MODELS: dict[str, tuple[retwin.Scenario, str]] = {}


def _read_model(name: str) -> tuple[retwin.Scenario, str]:
    sc = retwin.load_scenario(name)
    kept = _MODELS[name] = (sc, scenario_hash(sc))
    return kept


def warm_models() -> None:
    """Read the reference models and their hashes (:func:`reference_model`) before the
    first task asks for one (~20 ms each)."""
    for name in available_models():
        with contextlib.suppress(retwin.RetwinError):  # not served: no task names it
            _read_model(name)


def reference_model(name: str, model_hash: str) -> retwin.Scenario:
    """Reference model ``name``, read once per process (again when its hash is not
    ``model_hash``); :class:`~retwin.ScenarioError` if it still is not (the model changed
    on disk since the service read it)."""
    kept = _MODELS.get(name)
    if kept is None or kept[1] != model_hash:
        kept = _read_model(name)
    if kept[1] != model_hash:
        raise retwin.ScenarioError([("model", f"the model {name!r} changed since this run "
                                              "was accepted; submit it again")])
    return kept[0]


@dataclass(frozen=True)
class Completion:
    """Writing the tables stored result ``key`` deferred: its scenario (``scenario.json``)
    run again with its seed, ``replications`` replications from the first. ``results_root``
    is where the worker writes (``None``: the runs go back to the server, which writes)."""

    key: str
    scenario: dict[str, Any]
    seed: int
    replications: int
    results_root: str | None


@dataclass(frozen=True)
class Warm:
    """Have a worker load stored baseline ``key``'s KPIs (:func:`stored_kpis`), so that
    its first what-if against that baseline reads nothing."""

    results_root: str
    key: str


@dataclass
class Outcome:
    """What a computation ended with: ``done``, ``cancelled`` or ``failed`` (``error``).

    Without a results folder a done outcome carries the result for the server to store
    (``runs``: those of a :class:`Completion`). ``handed_over``: its answer was handed to
    the server before the result was stored (:func:`answer_made`).
    """

    status: str
    error: str | None = None
    cached: bool = False
    result: whatif.WhatIfResult | None = None
    runs: retwin.ReplicationSet | None = None
    handed_over: bool = False


@dataclass(frozen=True)
class Answered:
    """The answer of a computation, made at ``at`` while its result is being stored: what
    a waiting request reads as the finish of its run (:meth:`Jobs.watch`), as
    :class:`~retwin_service.registry.Finished` does (the registry records the same times:
    ``started``, when a worker took the computation, if known)."""

    at: dt.datetime
    started: dt.datetime | None = None

    def apply(self, rec: RunRecord) -> RunRecord | None:
        """``rec`` as done at ``at`` (``None``: ``rec`` is finished already, or was recorded
        after the answer; it is finished with the stored result)."""
        if rec.finished or rec.created_at > self.at:
            return None
        return replace(rec, status="done", error=None, finished_at=self.at, progress=1.0,
                       started_at=rec.started_at or self.started or self.at)


def answer_parts(result: whatif.WhatIfResult) -> dict[str, Any]:
    """What the ``result`` of a run's answer is made of (:func:`answer_made`), as the
    result will be stored: its tables and its manifest's fields, but the scenario's
    hash."""
    runs = result.whatif
    first = runs.first
    sc = first.compiled.scenario
    return {"manifest": {"scenario": sc.name, "start": sc.start.isoformat(),
                         "end": sc.end.isoformat(), "seed": first.seed,
                         "replications": len(runs.kpi_frames),
                         "mass_balance_closes": bool(first.balance.closes),
                         "notes": list(result.notes)},
            "summary": runs.summary, "difference": result.difference,
            "targets": first.target_table, "bottlenecks": first.bottlenecks}


def answer_made(result: whatif.WhatIfResult) -> bytes:
    """The answer of ``result`` as JSON (:func:`retwin_service.tables.result_json` of its
    :func:`answer_parts`), its ``scenario_hash`` left ``null``: what a worker hands over
    before it stores the result, so that the server answers without making or encoding it.
    The server has the hash meanwhile (:func:`answer_hashed`): it holds the scenario."""
    from retwin_service import tables

    parts = answer_parts(result)
    return tables.result_json({**parts["manifest"], "scenario_hash": None}, parts["summary"],
                              parts["difference"], parts["targets"], parts["bottlenecks"])


def answer_hashed(encoded: bytes, scenario: str, digest: str) -> bytes | None:
    """:func:`answer_made`'s ``encoded`` answer of scenario ``scenario`` with the hash of
    the scenario (``digest``) written in; ``None`` if it does not begin as an answer does."""
    from retwin_service.encode import dumps

    head = dumps({"scenario": scenario, "scenario_hash": None})[:-len(b"null}")]
    if not encoded.startswith(head + b"null,"):
        return None
    return head + dumps(digest) + encoded[len(head) + len(b"null"):]


def answer_of(result: whatif.WhatIfResult, results_root: str | Path, key: str
              ) -> dict[str, Any] | None:
    """The ``result`` of a run's answer (``detail=headline``) for ``result``, just stored
    as ``key``: made from the tables in memory, as :func:`retwin_service.tables.run_result`
    would read them back. ``None`` if it cannot be made (the answer then reads the tables)."""
    import json

    from retwin_service import tables

    try:
        m = json.loads((result_dir(results_root, key) / "manifest.json").read_text(
            encoding="utf-8"))
        runs = result.whatif
        return tables.result_of(m, runs.summary, result.difference, runs.first.target_table,
                                runs.first.bottlenecks)
    except Exception:  # never worth failing a stored result: its answer reads it back
        log.exception("the answer of %s was not made in memory", key[:12])
        return None


def result_dir(results_root: str | Path, key: str) -> Path:
    """Where the result of computation ``key`` is stored."""
    return Path(results_root) / key


def is_stored(results_root: str | Path, key: str) -> bool:
    """A result directory appears only when complete (it is renamed into place)."""
    return (result_dir(results_root, key) / "manifest.json").is_file()


def stored_kpis(results_root: str | Path, key: str) -> list[pd.DataFrame] | None:
    """The per-replication KPI frames of stored result ``key``, or ``None``. A stored
    result never changes (its key names one computation), so this process keeps the last
    few it read: every what-if on one model reads the same baseline."""
    if not is_stored(results_root, key):
        return None
    return _kpis_of(str(results_root), key)


@functools.lru_cache(maxsize=4)
def _kpis_of(results_root: str, key: str) -> list[pd.DataFrame]:
    return whatif.kpi_frames(read_table(result_dir(results_root, key), "kpis"))


class _Reporter:
    """Progress over all the replications a task runs; raises :class:`Cancelled`."""

    def __init__(self, hooks: TaskHooks, key: str, total: int) -> None:
        self.hooks, self.key, self.total = hooks, key, max(total, 1)
        self.done = 0
        self._last = 0.0
        self.check()
        hooks.progress(key, 0, self.total)

    def check(self) -> None:
        if self.hooks.cancelled(self.key):
            raise Cancelled(self.key)

    def step(self, _part: str = "", _i: int = 0, _n: int = 0) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or self.done >= self.total:
            self._last = now
            self.hooks.progress(self.key, self.done, self.total)
        self.check()


@contextlib.contextmanager
def _locked(root: str | None, key: str) -> Iterator[None]:
    """One process at a time computes ``key`` (two tasks of one key, or a what-if and a
    baseline it needs, may meet after a restart). POSIX advisory lock; none elsewhere."""
    if root is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    d = Path(root) / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / key, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def compute(task: Task | Sent) -> Outcome:
    """Run one task (a sent one resolved first, unless its result is stored). A
    cancellation, a bad scenario or a leaking balance come back as an :class:`Outcome`; a
    result the data folder refuses raises :class:`StoreFailed` (the server's business, not
    the request's)."""
    root = task.results_root
    try:
        with _locked(root, task.key):
            if root is not None and is_stored(root, task.key):
                return Outcome("done", cached=True)
            return _compute(task.task() if isinstance(task, Sent) else task, task_hooks())
    except Cancelled:
        return Outcome("cancelled")
    except retwin.RetwinError as exc:
        return Outcome("failed", error=public_error(exc))


def _compute(task: Task, hooks: TaskHooks) -> Outcome:
    w, n, seed, root = task.whatif, task.replications, task.seed, task.results_root
    base: retwin.ReplicationSet | list[pd.DataFrame] | None = None
    if task.baseline_key is not None:
        if task.baseline_kpis is not None:
            base = whatif.kpi_frames(task.baseline_kpis)
        elif root is not None:
            base = stored_kpis(root, task.baseline_key)
    need_base = w.baseline is not None and base is None
    rep = _Reporter(hooks, task.key, n * (2 if need_base else 1))
    if need_base and root is not None and task.baseline_key is not None:
        with _locked(root, task.baseline_key):  # stored once, and reused by what comes next
            base = stored_kpis(root, task.baseline_key)
            if base is None:
                done = whatif.run(w.baseline_only(), replications=n, seed=seed,
                                  progress=rep.step)
                store(done, root, task.baseline_key)
                base = done.whatif
            else:
                rep.done += n
    res = whatif.run(w, replications=n, seed=seed, baseline=base, progress=rep.step)
    rep.check()
    if root is None:
        return Outcome("done", result=res)
    # the answer goes out now; the server answers with it while this stores the result
    hooks.message(task.key, ("answer", answer_made(res)))
    store(res, root, task.key, task.baseline_key)
    return Outcome("done", handed_over=True)


def complete(task: Completion) -> Outcome:
    """Run a :class:`Completion`: the stored scenario again (it must read back to the hash
    it was stored with), then its deferred tables written (or, without a results folder,
    the runs handed back to the server to write)."""
    root = task.results_root
    try:
        sc = retwin.Scenario.model_validate(task.scenario)
        with _locked(root, task.key):
            n = task.replications
            if root is not None:
                n = rerun_replications(result_dir(root, task.key))
                if n == 0:  # completed meanwhile
                    return Outcome("done", cached=True)
            runs = retwin.run_replications(sc, n, seed=task.seed)
            if root is None:
                return Outcome("done", runs=runs)
            try:
                complete_result(result_dir(root, task.key), runs)
            except (ValueError, OSError) as exc:
                if is_no_space(exc):  # said as such to the server (a cause is not pickled)
                    raise OSError(errno.ENOSPC, NO_SPACE) from exc
                raise StoreFailed(f"completing {task.key[:12]}: {exc}") from exc
    except retwin.RetwinError as exc:
        return Outcome("failed", error=public_error(exc))
    return Outcome("done")


def warm_io() -> None:
    """Load what storing and reading results and making answers first uses (pyarrow's
    Parquet, dataset, compute and pandas modules, some 30 ms of imports), so that a worker's
    first computation does not wait for them."""
    import io

    import pyarrow as pa
    import pyarrow.dataset  # what pandas reads Parquet with
    import pyarrow.parquet as pq

    from retwin_service import encode, tables

    buf = io.BytesIO()
    frame = pd.DataFrame({"kpi": pd.array(["x"], dtype="str"),
                          "key": pd.array(["y"], dtype="str"), "value": [1.0]})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    buf.seek(0)
    pd.read_parquet(buf)
    rows = tables._rows_of([(frame, list(frame.columns), tables._headline_positions(frame))])
    encode.dumps(rows)


class Compute:
    """:func:`compute` (and :func:`complete`) as an executor's task function: one for every
    task of the service (so the workers are started once), warming the kernels as a worker
    starts."""

    cache_key = "retwin_service.compute"

    def prepare(self) -> None:
        warm_once()
        warm_io()
        warm_models()

    def __call__(self, task: Task | Sent | Completion | Warm) -> Outcome:
        if isinstance(task, Completion):
            return complete(task)
        if isinstance(task, Warm):
            return Outcome("done", cached=stored_kpis(task.results_root, task.key) is not None)
        return compute(task)


def public_error(exc: BaseException) -> str:
    """A message fit for a client: a full data folder says so, and so do a bad scenario or
    a leaking balance; anything else (a result that could not be stored for another
    reason…) is an internal error whose details (paths…) stay in the server's log."""
    if is_no_space(exc):
        return (f"{NO_SPACE} to store this run's result; submit it again once there is "
                "room")
    if isinstance(exc, retwin.ScenarioError | retwin.MassBalanceError):
        return str(exc)
    return "internal error while computing this run; see the service log"


# --- the server's side ---------------------------------------------------------------------------


#: How often a computation whose worker pool broke is tried again before it fails.
MAX_POOL_RETRIES = 2
#: Seconds between two tries to record the end of a computation while the data folder is full.
FINISH_RETRY_S = 2.0
#: Seconds to reach a Dask scheduler at start-up.
DASK_CONNECT_S = 20.0
#: Seconds a claim on a computation lasts unless renewed (see :mod:`retwin_service.registry`).
CLAIM_LEASE_S = 30.0
#: Stored results remembered as complete (a look at the manifest spared each).
COMPLETE_KEPT = 4096
#: Seconds the end of a computation waits for the answer its worker handed over to be
#: made (it is, long before the result is stored); after that the answer reads the result.
ANSWER_WAIT_S = 0.25
#: Seconds a stopping service waits for the results of answers it gave to be stored.
ANSWERED_STOP_S = 10.0
#: Seconds a request that reads a stored result waits for it to be stored, when its answer
#: came out before (the store takes milliseconds; longer, the run is read as it is).
SETTLE_S = 30.0


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def instance_name() -> str:
    """A name for this service process, unique across machines and restarts:
    ``host:pid:random``."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def gone_here(holder: str, me: str) -> bool:
    """Whether ``holder`` was a service process of this machine that is gone: its host is
    ours and its pid is dead, or is ours while the name is not (an earlier life of this
    process, e.g. pid 1 of a restarted container). Holders of other machines are never
    judged here: their leases lapse."""
    host, _, rest = holder.rpartition(":")[0].rpartition(":")
    my_host = me.rpartition(":")[0].rpartition(":")[0]
    if holder == me or host != my_host or not rest.isdigit():
        return False
    pid = int(rest)
    return pid == os.getpid() or not pid_alive(pid)


class Jobs:
    """The server's side of execution: one tracked computation per key.

    Parameters
    ----------
    registry
        The run registry: progress and the end of every computation are written there.
    results_root
        Folder of stored results.
    workers
        Local worker processes (ignored with ``dask_address``).
    dask_address
        A Dask scheduler to send tasks to instead.
    lease_s
        How long a claim on a computation lasts unless renewed (:meth:`keep_leases`).
    on_computed
        Called for every task a worker ran, with its outcome (``done``, ``failed``,
        ``cancelled``, or ``stored`` when the worker found it stored already) and the
        seconds it took (metrics).

    Several service processes may share one registry (PostgreSQL) and one data folder: a
    computation is run by the process that claims its key; the others wait for its result,
    and take the computation over if the holder's lease expires (it died).
    """

    def __init__(self, registry: Registry, results_root: Path, *, workers: int,
                 dask_address: str | None = None, space: Space | None = None,
                 lease_s: float = CLAIM_LEASE_S,
                 on_computed: Callable[[str, float], None] | None = None) -> None:
        self.registry = registry
        self.root = results_root
        self.space = space
        self.workers = workers
        self.dask_address = dask_address
        self.executor: Executor | None = None
        self.instance = instance_name()
        self.lease_s = float(lease_s)
        self.on_computed = on_computed
        self._fn = Compute()
        self._tracks: dict[str, asyncio.Task[Outcome]] = {}
        self._tasks: dict[str, Task] = {}  # of the tracked keys (read by _message)
        # per tracked key: done once the answer a worker handed over is made (_message)
        self._answered: dict[str, asyncio.Future[None]] = {}
        # per tracked key whose answer is out before its result is stored: when it was made
        self._early: dict[str, Answered] = {}
        self._started: dict[str, dt.datetime] = {}  # per tracked key: when a worker took it
        # per tracked key a worker runs: its scenario's hash, made meanwhile (_progress)
        self._hashes: dict[str, str] = {}
        # per key: done at the next finish of its runs here (with what was written), or
        # when its tracking ends (None); and how many requests wait on it (see watch)
        self._events: dict[str, asyncio.Future[Finished | Answered | None]] = {}
        self._watchers: dict[str, int] = {}
        self._completing: dict[str, asyncio.Task[None]] = {}
        self._warming: set[asyncio.Task[None]] = set()
        self._complete: set[str] = set()  # stored results known to defer nothing

    @property
    def kind(self) -> str:
        return "dask" if self.dask_address else "local"

    def start(self) -> None:
        """Clean what a killed writer may have left, then start the workers (blocking; call
        in a thread)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_leases()
        self.clean()
        if self.dask_address:
            self.executor = DaskExecutor(self.dask_address, timeout_s=DASK_CONNECT_S,
                                         on_progress=self._progress)
        else:
            flags = self.root / ".cancel" / self.instance.replace(":", "-")
            self.executor = ProcessExecutor(self.workers, on_progress=self._progress,
                                            on_message=self._message, flags_dir=flags)
        self.executor.start(self._fn)

    def clean(self) -> int:
        """Remove half-written results and old cancel flags, unless another live service
        process shares the data folder (its writes are under way); only what predates this
        look is removed. Returns how many entries went."""
        t0 = time.time()
        if self.registry.others_alive(self.instance):
            return 0
        n = 0
        for p in self.root.glob(".*"):
            try:
                old = p.is_dir() and p.name != ".locks" and p.stat().st_mtime < t0
            except OSError:
                continue
            if old:  # a half-written result, old cancel flags
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n

    def keep_leases(self) -> None:
        """Renew this process's claims, and drop those of service processes of this machine
        that are gone (their computations are taken over without waiting for the lease);
        blocking, call every third of the lease."""
        self.registry.renew(self.instance, self.lease_s)
        for holder in self.registry.holders():
            if gone_here(holder, self.instance):
                n = self.registry.drop_claims(holder)
                if n:
                    log.warning("service process %s is gone; its %d computations are "
                                "free again", holder, n)

    def tracked(self, key: str) -> bool:
        return key in self._tracks

    async def finish_answered(self, timeout_s: float = ANSWERED_STOP_S) -> None:
        """At shutdown, before :meth:`abandon`: let the computations whose answers are out
        store their results and record their runs (for up to ``timeout_s`` seconds; they
        take milliseconds), so that a stop right after an answer runs nothing again."""
        pending = [t for k, t in self._tracks.items() if k in self._early]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def abandon(self) -> None:
        """Stop tracking (at shutdown): unfinished runs stay queued in the registry and run
        again at the next start. Call on the event loop, then :meth:`close`."""
        for t in list(self._tracks.values()):
            t.cancel()

    def close(self) -> None:
        """Stop the workers now (blocking; call in a thread): what they were running stays
        queued in the registry and runs again at the next start."""
        ex, self.executor = self.executor, None
        if ex is not None:
            ex.abort()
            ex.close()

    def _progress(self, key: str, done: int, total: int) -> None:
        """Called (in a thread of the executor) for every progress message."""
        try:
            if done == 0:
                at = dt.datetime.now(dt.UTC)
                task = self._tasks.get(key)
                if task is not None:  # what an answer given before the store says
                    self._started[key] = at
                self.registry.mark_running(key, at=at)
                if task is not None and self.kind == "local" and key not in self._hashes:
                    # what the answer the worker hands over leaves out, made while it runs
                    self._hashes[key] = scenario_hash(task.whatif.scenario)
            elif done < total:  # the last is written with the end (Registry.finish)
                self.registry.set_progress(key, done / max(total, 1))
        except Exception as exc:  # a progress update is never worth failing a computation
            if is_no_space(exc):
                log.warning("progress of %s not recorded: %s", key[:12], NO_SPACE)
            else:
                log.exception("progress update failed")

    def _message(self, key: str, payload: Any) -> None:
        """Called (in a thread of the executor) with what a worker handed over while
        running ``key``: its answer, made and encoded (:func:`answer_made`), with its
        scenario's hash written in (made while the worker ran, :meth:`_progress`), kept for the
        requests that read it (:func:`retwin_service.tables.prime`) and given to those
        waiting for it (:class:`Answered`) while the worker stores the result."""
        task, made = self._tasks.get(key), self._answered.get(key)
        kind, parts = payload
        if kind != "answer" or task is None:
            return
        from retwin_service import tables

        ok = False
        try:
            h = self._hashes.get(key) or scenario_hash(task.whatif.scenario)
            encoded = answer_hashed(parts, task.whatif.scenario.name, h)
            if encoded is not None:
                tables.prime(self.root, key, "headline", None, encoded)
                ok = True
        finally:  # else the answer reads the stored result
            if made is not None:
                made.get_loop().call_soon_threadsafe(self._made, key, made, ok)

    def _made(self, key: str, made: asyncio.Future[None], answered: bool) -> None:
        """On the event loop: the answer of ``key``'s computation (``made``) is made; when
        it was (``answered``), the requests waiting for it have it now (:class:`Answered`),
        before the result is stored."""
        _done(made)
        if answered and self._answered.get(key) is made and key not in self._early:
            self._early[key] = Answered(dt.datetime.now(dt.UTC), self._started.get(key))
            self.notify(key, self._early[key])

    def answered(self, rec: RunRecord) -> RunRecord:
        """``rec`` as this process has answered it: done when its computation's answer is
        out while its result is being stored (:class:`Answered`), else as read."""
        early = self._early.get(rec.request_hash)
        done = None if early is None else early.apply(rec)
        return rec if done is None else done

    async def settle(self, key: str, timeout_s: float = SETTLE_S) -> bool:
        """Wait until the computation of ``key``, answered before its result was stored,
        has stored it and recorded its runs (at once when it was not answered so; for at
        most ``timeout_s`` seconds: a store that failed on a full data folder records its
        runs only once there is room again). True when it waited: read the runs again."""
        t = self._tracks.get(key) if key in self._early else None
        if t is None:
            return False
        # never cancels the computation, nor raises its error
        await asyncio.wait({t}, timeout=timeout_s)
        return True

    def stored(self, key: str) -> bool:
        return is_stored(self.root, key)

    def watch(self, key: str) -> asyncio.Future[Finished | Answered | None]:
        """What a request waiting for runs of ``key`` awaits: done as soon as this process
        finishes them in the registry (with what it wrote:
        :class:`~retwin_service.registry.Finished`; :class:`Answered` when their answer is
        out before the result is stored), or with ``None`` when their runs may
        have changed otherwise (the computation's tracking ended, a run was cancelled).
        Call on the event loop, and :meth:`unwatch` after."""
        fut = self._events.get(key)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._events[key] = fut
        self._watchers[key] = self._watchers.get(key, 0) + 1
        return fut

    def unwatch(self, key: str, fut: asyncio.Future[Finished | Answered | None]) -> None:
        """A request stopped waiting on ``fut`` (from :meth:`watch`)."""
        n = self._watchers.get(key, 1) - 1
        if n > 0:
            self._watchers[key] = n
            return
        self._watchers.pop(key, None)
        if self._events.get(key) is fut:
            del self._events[key]
            fut.cancel()

    def notify(self, key: str, finished: Finished | Answered | None = None) -> None:
        """Wake the requests waiting for runs of ``key`` (:meth:`watch`)."""
        fut = self._events.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(finished)

    @property
    def in_flight(self) -> int:
        return len(self._tracks)

    def claim_ahead(self, task: Task) -> bool:
        """Claim ``task``'s computation for this process now (blocking: call it in the
        thread that recorded its run), so that :meth:`ensure` with ``claimed=True`` starts
        it at once: one trip to a thread and the database fewer before a worker has it.
        False, and nothing claimed, when it is tracked here already, another process holds
        it, or the database refused (:meth:`ensure` then claims as it always does)."""
        if task.key in self._tracks:
            return False
        try:
            return self.registry.claim(task.key, self.instance, self.lease_s)
        except Exception:  # ensure() claims it again, and says why if that fails too
            log.debug("claiming %s ahead failed", task.key[:12], exc_info=True)
            return False

    def ensure(self, task: Task, *, claimed: bool = False) -> asyncio.Task[Outcome]:
        """Start computing ``task`` unless a computation of its key is under way; must be
        called on the event loop. ``claimed``: :meth:`claim_ahead` claimed it."""
        t = self._tracks.get(task.key)
        if t is None:
            loop = asyncio.get_running_loop()
            self._tasks[task.key] = task
            self._answered[task.key] = loop.create_future()
            t = loop.create_task(self._track(task, claimed), name=f"retwin-{task.key[:12]}")
            self._tracks[task.key] = t
        return t

    async def cancel(self, key: str) -> None:
        """Stop computation ``key`` if no unfinished run waits for it any more."""
        if key not in self._tracks or self.executor is None:
            return
        if await asyncio.to_thread(self.registry.has_active, key):
            return
        await asyncio.to_thread(self.executor.cancel, key)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a thread; while the data folder is full, tried again until space
        returns (the runs it records stay unfinished meanwhile, never half-written)."""
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except Exception as exc:
                if not self._no_space(exc):
                    raise
            await asyncio.sleep(FINISH_RETRY_S)

    async def _claim(self, task: Task) -> Outcome | None:
        """Claim ``task``'s computation: ``None`` once it is this process's to run; an
        outcome when another process finished it (or nothing waits for it any more)."""
        key, reg = task.key, self.registry
        while not await asyncio.to_thread(reg.claim, key, self.instance, self.lease_s):
            # another service process runs it: wait for its end (or for its lease to lapse)
            await asyncio.sleep(min(1.0, self.lease_s / 10))
            if self.stored(key):
                return Outcome("done", cached=True)
            if not await asyncio.to_thread(reg.has_active, key):
                return Outcome("cancelled")  # finished or cancelled by the holder
        return None

    async def _track(self, task: Task, claimed_ahead: bool = False) -> Outcome:
        claimed = False
        try:
            outcome = None if claimed_ahead else await self._claim(task)
            if outcome is None:
                claimed = True
                outcome = await self._run(task)
            made = self._answered.get(task.key)
            if outcome.handed_over and made is not None:  # its answer is made by now
                await asyncio.wait({made}, timeout=ANSWER_WAIT_S)
            self.notify(task.key, await self._write(self._finish, task, outcome))
        finally:
            self.notify(task.key)
            self._tracks.pop(task.key, None)
            self._tasks.pop(task.key, None)
            self._early.pop(task.key, None)
            self._started.pop(task.key, None)
            self._hashes.pop(task.key, None)
            made = self._answered.pop(task.key, None)
            if made is not None:
                made.cancel()
            if claimed:
                with contextlib.suppress(Exception):  # else the lease simply lapses
                    await asyncio.to_thread(self.registry.release, task.key, self.instance)
        if self.executor is None:  # shutting down: unfinished runs stay queued
            return outcome
        if outcome.status == "done" and task.whatif.baseline is None and self.kind == "local":
            self._warm(task.key)
        # a run that joined while this computation ended is finished (or run) now
        if await asyncio.to_thread(self.registry.has_active, task.key):
            if outcome.status == "done" or self.stored(task.key):
                self.notify(task.key, await self._write(self.registry.finish_runs, task.key,
                                                        "done"))
            elif outcome.status == "cancelled":
                self.ensure(task)
            else:
                self.notify(task.key, await self._write(self.registry.finish_runs, task.key,
                                                        "failed", outcome.error))
        return outcome

    def _warm(self, key: str) -> None:
        """Have every worker load baseline ``key``'s KPIs (:class:`Warm`), in the
        background: the pool takes the tasks in turn, and a worker busy with one leaves the
        next to another."""
        ex = self.executor
        if ex is None:
            return

        def submit() -> None:
            with contextlib.suppress(Exception):  # it only spares a first read
                for _ in range(self.workers):
                    ex.submit(self._fn, Warm(str(self.root), key))

        t = asyncio.get_running_loop().create_task(asyncio.to_thread(submit),
                                                   name=f"retwin-warm-{key[:12]}")
        self._warming.add(t)
        t.add_done_callback(self._warming.discard)

    async def _run(self, task: Task) -> Outcome:
        if self.stored(task.key):
            return Outcome("done", cached=True)
        ex = self.executor
        if ex is None:
            return Outcome("cancelled")  # shutting down: the run stays queued
        if self.kind == "dask":  # the server stores; a stored baseline travels along
            kpis = None
            if task.baseline_key and self.stored(task.baseline_key):
                kpis = await asyncio.to_thread(read_table,
                                               result_dir(self.root, task.baseline_key), "kpis")
            task = replace(task, results_root=None, baseline_kpis=kpis)
        for attempt in range(MAX_POOL_RETRIES + 1):
            try:  # in a thread: replacing a broken pool waits for its processes to go
                t0 = time.perf_counter()
                fut = await asyncio.to_thread(ex.submit, self._fn,
                                              task.sent() if self.kind == "local" else task,
                                              key=task.key)
                outcome = await asyncio.wrap_future(fut)
                if self.on_computed is not None:  # a worker found it stored: "stored"
                    self.on_computed("stored" if outcome.cached else outcome.status,
                                     time.perf_counter() - t0)
                return outcome
            except concurrent.futures.CancelledError:
                return Outcome("cancelled")
            except BrokenProcessPool:
                log.warning("worker pool broke while computing %s (attempt %d); restarting",
                            task.key[:12], attempt + 1)
            except Exception as exc:
                if not self._no_space(exc):
                    log.exception("computation %s failed", task.key[:12])
                return Outcome("failed", error=public_error(exc))
        return Outcome("failed", error="the worker process stopped while running this "
                                       "computation (out of memory?)")

    # --- deferred tables ------------------------------------------------------------------

    async def complete(self, key: str) -> None:
        """Make sure stored result ``key`` has every table (a result stores some only when
        first read, :func:`deferred_for`): a worker runs what they are made of again and
        writes them (:func:`complete`). Requests for one result share one completion. A
        result that is not stored (gone) is left alone: reading it says so. Raises
        :class:`StoreFailed` (or the write's OSError) when the tables cannot be written."""
        if key in self._complete:
            return
        t = self._completing.get(key)
        if t is None:
            t = asyncio.get_running_loop().create_task(self._completion(key),
                                                       name=f"retwin-complete-{key[:12]}")
            self._completing[key] = t
            t.add_done_callback(lambda _t: self._completing.pop(key, None))
        await asyncio.shield(t)

    async def _completion(self, key: str) -> None:
        d = result_dir(self.root, key)
        todo = await asyncio.to_thread(self._todo, d)
        if todo is None:
            return
        ex = self.executor
        if ex is None:
            raise StoreFailed("the service is stopping; ask again once it runs")
        scenario, seed, n = todo
        task = Completion(key=key, scenario=scenario, seed=seed, replications=n,
                          results_root=None if self.kind == "dask" else str(self.root))
        outcome: Outcome | None = None
        for _ in range(MAX_POOL_RETRIES + 1):
            try:
                fut = await asyncio.to_thread(ex.submit, self._fn, task)
                outcome = await asyncio.wrap_future(fut)
                break
            except BrokenProcessPool:
                log.warning("worker pool broke while completing %s; restarting", key[:12])
        if outcome is None or outcome.status != "done":
            raise StoreFailed(f"completing {key[:12]}: "
                              f"{'the worker stopped' if outcome is None else outcome.error}")
        if outcome.runs is not None:  # from a cluster: written here
            runs = outcome.runs

            def write() -> None:
                with _locked(str(self.root), key):
                    if deferred_tables(d):
                        complete_result(d, runs)

            await asyncio.to_thread(write)
        from retwin_service import tables

        tables.manifest.cache_clear()  # the result's list of files has grown
        self._known_complete(key)

    def _known_complete(self, key: str) -> None:
        if len(self._complete) >= COMPLETE_KEPT:
            self._complete.clear()  # it only spares a look at the manifest
        self._complete.add(key)

    def _todo(self, d: Path) -> tuple[dict[str, Any], int, int] | None:
        """What completing result folder ``d`` needs: its scenario, seed and the
        replications to run again; ``None`` when it defers nothing (or is gone)."""
        import json

        try:
            n = rerun_replications(d)
        except FileNotFoundError:
            return None  # gone: reading it answers 410
        if n == 0:
            self._known_complete(d.name)
            return None
        m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        scenario = json.loads((d / "scenario.json").read_text(encoding="utf-8"))
        return scenario, int(m["seed"]), n

    def _no_space(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a write refused for lack of space (remembered for /health)."""
        if self.space is not None:
            return self.space.refused(exc)
        return is_no_space(exc)

    def _finish(self, task: Task, outcome: Outcome) -> Finished | None:
        """Store a result that came back from a cluster, then finish the waiting runs;
        what was written (``None``: nothing)."""
        res = outcome.result
        if outcome.status == "done" and res is not None:
            try:
                base = res.baseline_only()
                if base is not None and task.baseline_key is not None:
                    store(base, self.root, task.baseline_key)
                store(res, self.root, task.key, task.baseline_key)
            except Exception as exc:
                if not self._no_space(exc):
                    log.exception("storing computation %s failed", task.key[:12])
                outcome.status, outcome.error = "failed", public_error(exc)
            else:
                answer = answer_of(res, self.root, task.key)
                if answer is not None:
                    from retwin_service import tables

                    tables.prime(self.root, task.key, "headline", answer)
            outcome.result = None
        if outcome.status == "done":
            early = self._early.get(task.key)
            return self.registry.finish_runs(task.key, "done",
                                             at=None if early is None else early.at)
        if outcome.status == "failed":
            return self.registry.finish_runs(task.key, "failed", outcome.error)
        return None  # cancelled: the runs were marked by whoever cancelled them
