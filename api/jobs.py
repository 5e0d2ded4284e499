"""Running what-ifs off the event loop: a pool of worker processes, or a Dask cluster.

The event loop only awaits futures. Each computation (a what-if with its replications, or a
baseline) is identified by its *key*, the hash of the request; runs waiting for the same key
share one computation, and a computation whose result is stored is never run again.

Workers (spawned processes whose kernels are compiled at start) compute the baseline of the
same model, seed and replications first, unless it is stored already, then the what-if, the
paired difference (common random numbers) and write the result with
:func:`retwin.storage.save_result` (atomic). They report progress through a queue the server
drains into the registry, and look for a cancel flag between replications.

With ``RETWIN_DASK_ADDRESS`` set, the same task runs on that Dask cluster instead: progress
comes back as worker events, cancellation is a Dask ``Event``, and the server stores the
result (the cluster need not share the server's disk).

What lives here: the task, its worker-side functions and the server-side :class:`Jobs`.
What does not: HTTP (``api.routes``) and the run rows (:mod:`retwin.registry`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

import retwin
from api.space import NO_SPACE, Space, is_no_space
from retwin.registry import Registry
from retwin.scenario import scenario_hash
from retwin.storage import read_table, save_result

__all__ = ["Cancelled", "Jobs", "Outcome", "Task", "compute", "public_error", "result_dir"]

log = logging.getLogger("retwin.api.jobs")

#: Seconds between two progress messages of one computation.
PROGRESS_EVERY_S = 0.25
#: How often a computation whose worker pool broke is tried again before it fails.
MAX_POOL_RETRIES = 2
#: Seconds between two tries to record the end of a computation while the data folder is full.
FINISH_RETRY_S = 2.0


class Cancelled(Exception):
    """Raised inside a worker to stop a computation between two replications."""


@dataclass(frozen=True)
class Task:
    """One computation: everything a worker needs, nothing it has to look up.

    ``changes`` are JSON mappings (by alias); ``baseline_key`` is the key of the same request
    without changes (``None`` when this task *is* a baseline). ``results_root`` is where the
    worker writes (``None``: return the result to the server, which writes it).
    """

    key: str
    model: str
    model_hash: str
    end: str | None
    changes: tuple[dict[str, Any], ...]
    seed: int
    replications: int
    baseline_key: str | None
    results_root: str | None
    baseline_kpis: pd.DataFrame | None = field(default=None, compare=False, repr=False)


@dataclass
class Outcome:
    """What a computation ended with: ``done``, ``cancelled`` or ``failed`` (``error``).

    In Dask mode a done outcome carries the result for the server to store.
    """

    status: str
    error: str | None = None
    cached: bool = False
    result: Any = None
    difference: pd.DataFrame | None = None
    baseline: Any = None


def result_dir(results_root: str | Path, key: str) -> Path:
    """Where the result of computation ``key`` is stored."""
    return Path(results_root) / key


def is_stored(results_root: str | Path, key: str) -> bool:
    """A result directory appears only when complete (``save_result`` renames it in)."""
    return (result_dir(results_root, key) / "manifest.json").is_file()


# --- worker side -------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def init_worker(progress_queue: Any, parent_pid: int) -> None:
    """Initializer of a pool process: ignore Ctrl-C and SIGTERM (sent to the process group,
    they are the server's to handle; the server stops the pool), compile the kernels, and
    remember how to report progress."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _WORKER.update(queue=progress_queue, parent=parent_pid)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="retwin-parent",
                     daemon=True).start()
    retwin.warmup()


def _watch_parent(parent_pid: int) -> None:
    """A server killed with ``kill -9`` cannot stop its workers; they stop themselves (the
    restarted server runs what they were running again)."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def worker_ready() -> int:
    """A no-op task; submitting one per process makes the pool start them all at once."""
    return os.getpid()


class _Channel:
    """How a computation talks to the server: progress out, cancellation in."""

    def send(self, key: str, done: int, total: int) -> None:
        raise NotImplementedError

    def cancelled(self, key: str) -> bool:
        raise NotImplementedError


class _LocalChannel(_Channel):
    def __init__(self, results_root: str) -> None:
        self.flags = Path(results_root) / ".cancel"

    def send(self, key: str, done: int, total: int) -> None:
        q = _WORKER.get("queue")
        if q is not None:
            q.put((key, done, total))

    def cancelled(self, key: str) -> bool:
        parent = _WORKER.get("parent")
        if parent is not None and os.getppid() != parent:
            return True  # the server died: do not write what nobody waits for
        return (self.flags / key).exists()


class _DaskChannel(_Channel):
    def __init__(self) -> None:
        self._checked = 0.0
        self._cancel = False

    def send(self, key: str, done: int, total: int) -> None:
        from distributed import get_worker

        get_worker().log_event("retwin-progress", {"key": key, "done": done, "total": total})

    def cancelled(self, key: str) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._checked > 0.5:
            from distributed import Event

            self._checked = now
            self._cancel = Event(f"retwin-cancel-{key}").is_set()
        return self._cancel


class _Reporter:
    """Progress over all the replications a task runs; raises :class:`Cancelled`."""

    def __init__(self, channel: _Channel, key: str, total: int) -> None:
        self.channel, self.key, self.total = channel, key, max(total, 1)
        self.done = 0
        self._last = 0.0
        self.check()
        channel.send(key, 0, self.total)

    def check(self) -> None:
        if self.channel.cancelled(self.key):
            raise Cancelled(self.key)

    def step(self, _i: int = 0, _n: int = 0) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or self.done >= self.total:
            self._last = now
            self.channel.send(self.key, self.done, self.total)
        self.check()


@lru_cache(maxsize=16)
def _base(model: str, end: str | None) -> tuple[retwin.Scenario, str]:
    """A reference model (with its horizon moved to ``end``) and its hash, per process."""
    sc = retwin.load_scenario(model)
    digest = scenario_hash(sc)
    if end is not None:
        sc = retwin.apply_changes(sc, [{"kind": "parameter", "path": "end", "value": end}])
    return sc, digest


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


def kpi_frames(kpis: pd.DataFrame) -> list[pd.DataFrame]:
    """Split a stored ``kpis`` table (all replications) into one frame per replication."""
    cols = ["kpi", "key", "year", "value", "unit"]
    return [g[cols].reset_index(drop=True) for _, g in kpis.groupby("replication", sort=True)]


def paired_difference(whatif: retwin.ReplicationSet, base_frames: list[pd.DataFrame]
                      ) -> pd.DataFrame:
    """What-if − baseline, paired by replication (common random numbers).

    The baseline is usually read back from its stored ``kpis``, so only its per-replication
    KPI frames are at hand; :meth:`ReplicationSet.difference` uses nothing else of it.
    """
    if len(base_frames) != len(whatif.kpi_frames):
        raise ValueError("a difference needs the baseline's replications")
    base = retwin.ReplicationSet(first=whatif.first, kpi_frames=base_frames,
                                 seeds=list(whatif.seeds))
    return whatif.difference(base)


def compute(task: Task) -> Outcome:
    """Run one task in a worker process (or on a Dask worker); never raises for a
    cancellation or a bad scenario, which come back as an :class:`Outcome`."""
    channel: _Channel = (_LocalChannel(task.results_root) if task.results_root is not None
                         else _DaskChannel())
    try:
        with _locked(task.results_root, task.key):
            if task.results_root is not None and is_stored(task.results_root, task.key):
                return Outcome("done", cached=True)
            return _compute(task, channel)
    except Cancelled:
        return Outcome("cancelled")
    except retwin.RetwinError as exc:
        return Outcome("failed", error=public_error(exc))


def _compute(task: Task, channel: _Channel) -> Outcome:
    base, digest = _base(task.model, task.end)
    if digest != task.model_hash:
        raise retwin.ScenarioError([("model", f"model {task.model!r} changed since the "
                                              "service started; restart the service")])
    n, seed = task.replications, task.seed
    base_frames: list[pd.DataFrame] | None = None
    base_set = None
    if task.baseline_key is not None:
        if task.baseline_kpis is not None:
            base_frames = kpi_frames(task.baseline_kpis)
        elif task.results_root is not None and is_stored(task.results_root, task.baseline_key):
            base_frames = kpi_frames(read_table(result_dir(task.results_root,
                                                           task.baseline_key), "kpis"))
    need_base = task.baseline_key is not None and base_frames is None
    rep = _Reporter(channel, task.key, n * (2 if need_base else 1))
    if need_base:
        assert task.baseline_key is not None
        with _locked(task.results_root, task.baseline_key):
            root = task.results_root
            if root is not None and is_stored(root, task.baseline_key):
                base_frames = kpi_frames(read_table(result_dir(root, task.baseline_key),
                                                    "kpis"))
                rep.done += n
            else:
                base_set = retwin.run_replications(retwin.prepare(base), n, seed=seed,
                                                   progress=rep.step)
                base_frames = base_set.kpi_frames
                if root is not None:
                    save_result(base_set, result_dir(root, task.baseline_key))
                    base_set = None
    if task.baseline_key is None:
        res = retwin.run_replications(retwin.prepare(base), n, seed=seed, progress=rep.step)
        diff = None
    else:
        whatif = retwin.apply_changes(base, list(task.changes))
        res = retwin.run_replications(retwin.prepare(whatif), n, seed=seed, progress=rep.step)
        assert base_frames is not None
        diff = paired_difference(res, base_frames)
    rep.check()
    if task.results_root is None:
        return Outcome("done", result=res, difference=diff, baseline=base_set)
    store(task, Path(task.results_root), res, diff)
    return Outcome("done")


def store(task: Task, root: Path, res: Any, diff: pd.DataFrame | None) -> Path:
    """Write the result of ``task`` under ``root`` (atomically)."""
    return save_result(res, result_dir(root, task.key), difference=diff,
                       baseline_hash=task.baseline_key, changes=list(task.changes))


# --- server side -------------------------------------------------------------------------------


class _Backend:
    """Where tasks run."""

    kind = "none"

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, task: Task) -> concurrent.futures.Future[Outcome]:
        raise NotImplementedError

    def cancel(self, key: str) -> None:
        raise NotImplementedError

    def uncancel(self, key: str) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _LocalBackend(_Backend):
    """A pool of spawned worker processes, each with its kernels compiled."""

    kind = "local"

    def __init__(self, workers: int, results_root: Path,
                 on_progress: Callable[[str, int, int], None]) -> None:
        self.workers = workers
        self.root = results_root
        self.flags = results_root / ".cancel"
        self.on_progress = on_progress
        self.ctx = multiprocessing.get_context("spawn")
        self.queue: Any = self.ctx.Queue()
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._stop = threading.Event()
        self._restart_lock = threading.Lock()
        self._drain = threading.Thread(target=self._drain_queue, name="retwin-progress",
                                       daemon=True)

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self.ctx, initializer=init_worker,
            initargs=(self.queue, os.getpid()),
        )
        for _ in range(self.workers):  # start every process now, kernels warmed in each
            pool.submit(worker_ready)
        return pool

    def start(self) -> None:
        self.flags.mkdir(parents=True, exist_ok=True)
        self.pool = self._new_pool()
        self._drain.start()

    def _drain_queue(self) -> None:
        while not self._stop.is_set():
            try:
                key, done, total = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            try:
                self.on_progress(key, done, total)
            except Exception as exc:  # a progress update is never worth a dead drain thread
                if is_no_space(exc):
                    log.warning("progress of %s not recorded: %s", key[:12], NO_SPACE)
                else:
                    log.exception("progress update failed")

    def submit(self, task: Task) -> concurrent.futures.Future[Outcome]:
        assert self.pool is not None
        return self.pool.submit(compute, task)

    def cancel(self, key: str) -> None:
        (self.flags / key).touch()

    def uncancel(self, key: str) -> None:
        (self.flags / key).unlink(missing_ok=True)

    def restart(self) -> None:
        """Replace a broken pool (once, however many computations saw it break)."""
        with self._restart_lock:
            if self.pool is not None and not getattr(self.pool, "_broken", False):
                return
            old, self.pool = self.pool, self._new_pool()
        if old is not None:
            _stop_pool(old)

    def close(self) -> None:
        self._stop.set()
        if self.pool is not None:
            _stop_pool(self.pool)
            self.pool = None
        self._drain.join(timeout=2)
        self.queue.close()
        self.queue.join_thread()


def _stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool now: pending tasks dropped, running ones killed (their runs stay queued
    in the registry and run again at the next start)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout=5)


class _DaskBackend(_Backend):
    """Tasks on a Dask cluster; the result comes back to the server, which stores it."""

    kind = "dask"

    def __init__(self, address: str, on_progress: Callable[[str, int, int], None]) -> None:
        self.address = address
        self.on_progress = on_progress
        self.client: Any = None

    def start(self) -> None:
        from distributed import Client

        self.client = Client(self.address, timeout="20s")
        self.client.subscribe_topic("retwin-progress", self._event)
        # compile the kernels on every worker now, not inside the first run
        self.client.run(retwin.warmup)

    def _event(self, event: Any) -> None:
        _, msg = event
        self.on_progress(str(msg["key"]), int(msg["done"]), int(msg["total"]))

    def submit(self, task: Task) -> concurrent.futures.Future[Outcome]:
        remote = replace(task, results_root=None)
        fut = self.client.submit(compute, remote, pure=False,
                                 key=f"retwin-{task.key[:16]}-{time.time_ns()}")
        out: concurrent.futures.Future[Outcome] = concurrent.futures.Future()

        def _done(f: Any) -> None:
            try:
                out.set_result(f.result())
            except BaseException as exc:
                out.set_exception(exc)

        fut.add_done_callback(_done)
        return out

    def cancel(self, key: str) -> None:
        from distributed import Event

        Event(f"retwin-cancel-{key}", client=self.client).set()

    def uncancel(self, key: str) -> None:
        from distributed import Event

        Event(f"retwin-cancel-{key}", client=self.client).clear()

    def restart(self) -> None:
        pass

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
            self.client = None


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
    """

    def __init__(self, registry: Registry, results_root: Path, *, workers: int,
                 dask_address: str | None = None, space: Space | None = None) -> None:
        self.registry = registry
        self.root = results_root
        self.space = space
        self._tracks: dict[str, asyncio.Task[Outcome]] = {}
        self._progress_last: dict[str, float] = {}
        self.backend: _Backend = (
            _DaskBackend(dask_address, self._progress) if dask_address
            else _LocalBackend(workers, results_root, self._progress)
        )

    @property
    def kind(self) -> str:
        return self.backend.kind

    def start(self) -> None:
        """Clean what a killed writer may have left, then start the workers."""
        self.root.mkdir(parents=True, exist_ok=True)
        for p in self.root.glob(".*"):
            if p.is_dir() and p.name not in (".cancel", ".locks"):
                shutil.rmtree(p, ignore_errors=True)  # a half-written result directory
        shutil.rmtree(self.root / ".cancel", ignore_errors=True)
        self.backend.start()

    def abandon(self) -> None:
        """Stop tracking (at shutdown): unfinished runs stay queued in the registry and run
        again at the next start. Call on the event loop, then :meth:`close`."""
        for t in list(self._tracks.values()):
            t.cancel()

    def close(self) -> None:
        """Stop the workers (blocking; call in a thread)."""
        self.backend.close()

    def _progress(self, key: str, done: int, total: int) -> None:
        """Called from the drain thread (or Dask's) for every progress message."""
        if done == 0:
            self.registry.mark_running(key)
        else:
            self.registry.set_progress(key, done / max(total, 1))

    def stored(self, key: str) -> bool:
        return is_stored(self.root, key)

    def waiter(self, key: str) -> asyncio.Task[Outcome] | None:
        """The tracked computation of ``key``, if one is under way."""
        return self._tracks.get(key)

    @property
    def in_flight(self) -> int:
        return len(self._tracks)

    def ensure(self, task: Task) -> asyncio.Task[Outcome]:
        """Start computing ``task`` unless a computation of its key is under way; must be
        called on the event loop."""
        t = self._tracks.get(task.key)
        if t is None:
            t = asyncio.get_running_loop().create_task(self._track(task),
                                                       name=f"retwin-{task.key[:12]}")
            self._tracks[task.key] = t
        return t

    async def cancel(self, key: str) -> None:
        """Stop computation ``key`` if no unfinished run waits for it any more."""
        if key not in self._tracks:
            return
        if await asyncio.to_thread(self.registry.has_active, key):
            return
        await asyncio.to_thread(self.backend.cancel, key)

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

    async def _track(self, task: Task) -> Outcome:
        try:
            outcome = await self._run(task)
            await self._write(self._finish, task, outcome)
        finally:
            self._tracks.pop(task.key, None)
        # a run that joined while this computation ended is finished (or run) now
        if await asyncio.to_thread(self.registry.has_active, task.key):
            if outcome.status == "done" or self.stored(task.key):
                await self._write(self.registry.finish, task.key, "done")
            elif outcome.status == "cancelled":
                self.ensure(task)
            else:
                await self._write(self.registry.finish, task.key, "failed", outcome.error)
        return outcome

    async def _run(self, task: Task) -> Outcome:
        if self.stored(task.key):
            return Outcome("done", cached=True)
        await asyncio.to_thread(self.backend.uncancel, task.key)
        if self.kind == "dask" and task.baseline_key and self.stored(task.baseline_key):
            kpis = await asyncio.to_thread(read_table, result_dir(self.root, task.baseline_key),
                                           "kpis")
            task = replace(task, baseline_kpis=kpis)
        for attempt in range(MAX_POOL_RETRIES + 1):
            try:
                fut = self.backend.submit(task)
            except (BrokenProcessPool, RuntimeError):
                await asyncio.to_thread(self.backend.restart)
                continue
            try:
                return await asyncio.wrap_future(fut)
            except concurrent.futures.CancelledError:
                return Outcome("cancelled")
            except BrokenProcessPool:
                log.warning("worker pool broke while computing %s (attempt %d); restarting",
                            task.key[:12], attempt + 1)
                await asyncio.to_thread(self.backend.restart)
            except Exception as exc:
                if not self._no_space(exc):
                    log.exception("computation %s failed", task.key[:12])
                return Outcome("failed", error=public_error(exc))
        return Outcome("failed", error="the worker process stopped while running this "
                                       "computation (out of memory?)")

    def _no_space(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a write refused for lack of space (remembered for /health)."""
        if self.space is not None:
            return self.space.refused(exc)
        return is_no_space(exc)

    def _finish(self, task: Task, outcome: Outcome) -> None:
        """Store a result that came back from Dask, then finish the waiting runs."""
        if outcome.status == "done" and outcome.result is not None:
            try:
                if outcome.baseline is not None and task.baseline_key is not None:
                    save_result(outcome.baseline, result_dir(self.root, task.baseline_key))
                store(task, self.root, outcome.result, outcome.difference)
            except Exception as exc:
                if not self._no_space(exc):
                    log.exception("storing computation %s failed", task.key[:12])
                outcome.status, outcome.error = "failed", public_error(exc)
            outcome.result = outcome.baseline = None
        if outcome.status == "done":
            self.registry.finish(task.key, "done")
        elif outcome.status == "failed":
            self.registry.finish(task.key, "failed", outcome.error)
        # cancelled: the runs were marked by whoever cancelled them


def public_error(exc: BaseException) -> str:
    """A message fit for a client: a bad scenario or a leaking balance says what is wrong,
    and so does a full data folder; anything else is an internal error whose details
    (paths…) stay in the server's log."""
    if isinstance(exc, retwin.ScenarioError | retwin.MassBalanceError):
        return str(exc)
    if is_no_space(exc):
        return (f"{NO_SPACE} to store this run's result; submit it again once there is "
                "room")
    return "internal error while computing this run; see the service log"
