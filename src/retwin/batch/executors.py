"""Where tasks run: in this process, in a pool of local processes, or on a Dask cluster.

One interface: :meth:`Executor.map_unordered` calls ``fn`` on every item and yields the
results as they finish. At most a small window of tasks is in flight at once, so results
never pile up in memory and an interrupt has little to cancel.

Workers are started once per study: a local process ignores Ctrl-C (the parent handles it),
warms the kernels and installs ``fn``; a Dask worker receives ``fn`` once (scattered to every
worker) and warms its kernels before the first task.

Interrupts are flags, not exceptions thrown at random points: inside :class:`Interrupts`,
Ctrl-C (and any other signal it is given, such as SIGTERM in the CLI) only sets a flag, and
``map_unordered`` checks it between results, at a point where no lock of the pool is held,
and raises ``KeyboardInterrupt`` there. An exception raised asynchronously inside the pool's
own code (``submit`` holds a lock that ``shutdown`` needs) could leave a study hanging; a flag
cannot. A second Ctrl-C raises at once. A signal the process was started ignoring (a
background job, ``nohup``) stays ignored.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, TypeVar

from retwin._version import __version__
from retwin.errors import RetwinError

__all__ = [
    "DaskExecutor",
    "Executor",
    "Interrupts",
    "ProcessExecutor",
    "SerialExecutor",
    "make_executor",
]

T = TypeVar("T")
R = TypeVar("R")

_installed: Callable[[Any], Any] | None = None

#: Seconds between two looks at the interrupt flag while waiting for results.
POLL_S = 0.1
#: Seconds to wait for a killed worker process to be reaped.
JOIN_S = 5.0


class Interrupts:
    """Signals as a flag for the duration of a ``with`` block (main thread only).

    ``Interrupts(signal.SIGINT, signal.SIGTERM)`` replaces the handlers of those signals by
    one that sets :attr:`requested`; a second signal raises ``KeyboardInterrupt`` at once. The
    previous handlers are restored on exit. A signal whose disposition is ``SIG_IGN`` is left
    alone, and outside the main thread (where Python cannot install handlers) nothing is
    installed: there the caller's own interrupt handling applies.
    """

    def __init__(self, *signals: int) -> None:
        self.signals = signals or (signal.SIGINT,)
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __bool__(self) -> bool:
        return self.requested is not None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                old = signal.getsignal(sig)
                if old is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def _never() -> bool:
    return False


class Executor(ABC):
    """Runs tasks; ``workers`` is how many run at once."""

    workers: int = 1

    @property
    @abstractmethod
    def description(self) -> str:
        """A short phrase for messages: ``2 local processes``."""

    @abstractmethod
    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      stop: Callable[[], bool] = _never) -> Iterator[R]:
        """``fn(item)`` for every item, yielded as each finishes (in any order).

        ``stop`` is looked at between results (at least every :data:`POLL_S` seconds while
        waiting); once it is true, ``KeyboardInterrupt`` is raised from the generator, and
        the caller should :meth:`abort`.
        """

    def abort(self) -> None:  # noqa: B027 - nothing to cancel in the simplest executors
        """Cancel what is queued and stop what is running (after an interrupt)."""

    def close(self) -> None:  # noqa: B027
        """Release workers and connections."""

    @property
    def window(self) -> int:
        """Tasks kept in flight: enough to keep every worker busy, few enough to stay small."""
        return 2 * self.workers + 2

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is not None:
            self.abort()
        self.close()


class SerialExecutor(Executor):
    """Every task in this process, one after another (the reference for the others)."""

    @property
    def description(self) -> str:
        return "this process"

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      stop: Callable[[], bool] = _never) -> Iterator[R]:
        for item in items:
            if stop():
                raise KeyboardInterrupt
            yield fn(item)


def _watch_parent(parent: int) -> None:
    """End this worker when the parent is gone (killed with SIGKILL, it cannot say so)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(fn: Callable[[Any], Any], parent: int) -> None:
    """Start-up of a local worker process: leave Ctrl-C and SIGTERM to the parent (sent to
    the whole process group, they would otherwise kill the workers under the parent's feet),
    follow the parent's life, install ``fn``, warm."""
    global _installed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="retwin-parent-watch").start()
    _installed = fn
    prepare = getattr(fn, "prepare", None)
    if prepare is not None:
        # a failure here is raised again by the first task, with its traceback
        with contextlib.suppress(Exception):
            prepare()


def _call_installed(item: Any) -> Any:
    assert _installed is not None, "worker started without a task function"
    return _installed(item)


class ProcessExecutor(Executor):
    """A pool of ``workers`` local processes started with ``spawn`` (no state inherited by
    fork; safe with threads and on every platform). The pool is kept while ``fn`` is the
    same (``fn.cache_key``), so repeated studies on one base model reuse warm workers."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers(={workers}) must be >= 1")
        self.workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._key: Any = None
        self._pending: set[Future[Any]] = set()

    @property
    def description(self) -> str:
        return f"{self.workers} local process{'es' if self.workers > 1 else ''}"

    def _ensure_pool(self, fn: Callable[[Any], Any]) -> ProcessPoolExecutor:
        key = getattr(fn, "cache_key", None) or id(fn)
        if self._pool is not None and key != self._key:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(fn, os.getpid()))
            self._key = key
        return self._pool

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      stop: Callable[[], bool] = _never) -> Iterator[R]:
        pool = self._ensure_pool(fn)
        it = iter(items)
        pending = self._pending

        def fill() -> None:
            while len(pending) < self.window:
                try:
                    item = next(it)
                except StopIteration:
                    return
                pending.add(pool.submit(_call_installed, item))

        fill()
        while pending:
            if stop():
                raise KeyboardInterrupt
            done, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for f in done:
                pending.discard(f)
                try:
                    result = f.result()
                except BrokenProcessPool:
                    if stop():  # a signal to the process group reached a starting worker
                        raise KeyboardInterrupt from None
                    self._pool = None
                    raise RetwinError("a worker process died (out of memory, or killed); "
                                      "finished points are kept: run again to resume") from None
                yield result
            fill()

    def abort(self) -> None:
        """Cancel what is queued, kill the workers (they hold nothing worth saving: results
        are written by this process) and let the pool go without waiting on its threads."""
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=JOIN_S)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise RetwinError("running on Dask needs the dask[distributed] package: "
                          "pip install 'retwin[dist]'") from None
    return distributed


def _warm_worker() -> str:
    from retwin.batch.tables import warm_once

    warm_once()
    return __version__


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class DaskExecutor(Executor):
    """Tasks on a Dask distributed cluster: ``address`` (``tcp://host:8786``) or a
    ``distributed.Client``. Each worker gets ``fn`` once and warms its kernels; tasks are
    submitted in a window sized by the cluster's threads and gathered as they finish."""

    def __init__(self, address: str | Any, *, timeout_s: float | None = None) -> None:
        if timeout_s is None:
            timeout_s = float(os.environ.get("RETWIN_DASK_CONNECT_TIMEOUT_S", "10"))
        distributed = _import_distributed()
        self._own = isinstance(address, str)
        if self._own:
            try:
                self.client = distributed.Client(address, timeout=f"{timeout_s}s",
                                                 set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise RetwinError(f"cannot reach the Dask scheduler at {address}: {exc}") \
                    from None
        else:
            self.client = address
        self.address = str(self.client.scheduler.address)
        self.workers = max(1, sum(self.client.nthreads().values()))
        self._futures: set[Any] = set()

    @property
    def description(self) -> str:
        n = len(self.client.nthreads())
        return f"Dask at {self.address} ({n} worker{'s' if n != 1 else ''}, " \
               f"{self.workers} thread{'s' if self.workers != 1 else ''})"

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      stop: Callable[[], bool] = _never) -> Iterator[R]:
        distributed = _import_distributed()
        client = self.client
        try:
            versions = client.run(_warm_worker)
        except ImportError as exc:
            raise RetwinError(f"Dask workers cannot import retwin ({exc}); install it on "
                              "every worker") from None
        bad = {w: v for w, v in versions.items() if v != __version__}
        if bad:
            raise RetwinError(f"Dask workers run another retwin version ({bad}); the client "
                              f"runs {__version__}")
        self.workers = max(1, sum(client.nthreads().values()))
        fn_future = client.scatter(fn, broadcast=True, hash=False)
        it = iter(items)
        queue = distributed.as_completed(loop=client.loop)
        futures = self._futures

        def fill() -> None:
            while len(futures) < self.window:
                try:
                    item = next(it)
                except StopIteration:
                    return
                fut = client.submit(_apply, fn_future, item, pure=False)
                futures.add(fut)
                queue.add(fut)

        fill()
        try:
            while not queue.is_empty():
                if stop():
                    raise KeyboardInterrupt
                if not queue.has_ready():
                    time.sleep(POLL_S / 10)
                    continue
                for fut in queue.next_batch(block=False):
                    futures.discard(fut)
                    result = fut.result()
                    fut.release()
                    yield result
                fill()
        finally:
            client.cancel([fn_future])

    def abort(self) -> None:
        if self._futures:
            self.client.cancel(list(self._futures))
        self._futures.clear()

    def close(self) -> None:
        if self._own:
            self.client.close()


def make_executor(workers: int = 1, dask: str | Any | None = None) -> Executor:
    """``SerialExecutor`` for one worker, ``ProcessExecutor`` for more, ``DaskExecutor``
    when a scheduler address (or client) is given."""
    if dask is not None:
        return DaskExecutor(dask)
    if workers < 1:
        raise ValueError(f"workers(={workers}) must be >= 1")
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)
