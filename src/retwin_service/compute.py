"""One computation of the service, as a worker runs it (a local process or a Dask worker).

A :class:`Task` carries the what-if as the service resolved and checked it
(:class:`retwin.whatif.WhatIf`: the scenarios themselves, with the changes applied), so a
worker never loads a model or applies a change again. It is identified by its *key*, the
hash of the request, which names its stored result (:func:`result_dir`).

:func:`compute` runs the baseline first, unless it is stored already (then its KPIs stand in
for it), stores it under its own key, then runs the what-if and its paired difference
(:func:`retwin.whatif.run`) and stores the result (:func:`retwin.whatif.save`, atomic).
Between two replications it reports progress and looks for a cancellation
(:func:`retwin.batch.executors.task_hooks`). Without a results folder (a Dask cluster need
not share the server's disk) it returns the result for the server to store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import retwin
from retwin import whatif
from retwin.batch.executors import TaskHooks, task_hooks, warm_once
from retwin.storage import read_table
from retwin_service.space import NO_SPACE, is_no_space

__all__ = ["Cancelled", "Compute", "Outcome", "Task", "compute", "is_stored", "public_error",
           "result_dir", "stored_kpis"]

#: Seconds between two progress messages of one computation.
PROGRESS_EVERY_S = 0.25


class Cancelled(Exception):
    """Raised inside a worker to stop a computation between two replications."""


@dataclass(frozen=True)
class Task:
    """One computation: everything a worker needs, nothing it has to look up.

    ``baseline_key`` names the stored result of ``whatif.baseline_only()`` with the same
    seed and replications (``None`` when this task has no baseline: it *is* one).
    ``results_root`` is where the worker writes (``None``: the server writes, and
    ``baseline_kpis`` may carry a stored baseline's ``kpis`` table).
    """

    key: str
    whatif: whatif.WhatIf
    seed: int
    replications: int
    baseline_key: str | None
    results_root: str | None
    baseline_kpis: pd.DataFrame | None = None


@dataclass
class Outcome:
    """What a computation ended with: ``done``, ``cancelled`` or ``failed`` (``error``).

    Without a results folder a done outcome carries the result for the server to store.
    """

    status: str
    error: str | None = None
    cached: bool = False
    result: whatif.WhatIfResult | None = None


def result_dir(results_root: str | Path, key: str) -> Path:
    """Where the result of computation ``key`` is stored."""
    return Path(results_root) / key


def is_stored(results_root: str | Path, key: str) -> bool:
    """A result directory appears only when complete (it is renamed into place)."""
    return (result_dir(results_root, key) / "manifest.json").is_file()


def stored_kpis(results_root: str | Path, key: str) -> list[pd.DataFrame] | None:
    """The per-replication KPI frames of stored result ``key``, or ``None``."""
    if not is_stored(results_root, key):
        return None
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


def compute(task: Task) -> Outcome:
    """Run one task; a cancellation or a bad scenario come back as an :class:`Outcome`,
    never as an exception."""
    root = task.results_root
    try:
        with _locked(root, task.key):
            if root is not None and is_stored(root, task.key):
                return Outcome("done", cached=True)
            return _compute(task, task_hooks())
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
                whatif.save(done, result_dir(root, task.baseline_key))
                base = done.whatif
            else:
                rep.done += n
    res = whatif.run(w, replications=n, seed=seed, baseline=base, progress=rep.step)
    rep.check()
    if root is None:
        return Outcome("done", result=res)
    whatif.save(res, result_dir(root, task.key), baseline_ref=task.baseline_key)
    return Outcome("done")


class Compute:
    """:func:`compute` as an executor's task function: one for every task of the service
    (so the workers are started once), warming the kernels as a worker starts."""

    cache_key = "retwin_service.compute"

    def prepare(self) -> None:
        warm_once()

    def __call__(self, task: Task) -> Outcome:
        return compute(task)


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
