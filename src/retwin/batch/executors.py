"""Where tasks run: in this process, in a pool of local processes, or on a Dask cluster.

Two ways in, one set of workers:

* :meth:`Executor.map_unordered` calls ``fn`` on every item and yields the results as they
  finish (batch studies). At most a small window of tasks is in flight at once, so results
  never pile up in memory and an interrupt has little to cancel.
* :meth:`Executor.submit` runs one task and returns a :class:`~concurrent.futures.Future`
  (the service, which keeps track of its tasks itself).

A task talks back through :func:`task_hooks`: ``hooks.progress(key, done, total)`` reaches
the executor's ``on_progress`` in the submitting process (from a thread of its own), and
``hooks.cancelled(key)`` turns true once :meth:`Executor.cancel` was called with that key
(a task looks between two steps of its work and stops itself). Outside an executor, or
without ``on_progress``, the hooks do nothing.

Workers are started once per ``fn`` (:meth:`Executor.start` starts them at once): a local
process ignores Ctrl-C and SIGTERM (the parent handles them), ends itself when its parent is
gone (a parent killed with SIGKILL cannot stop it), limits BLAS and OpenMP thread pools to
one thread (helper threads spinning in one worker take the cores of the others), installs
``fn`` and warms it (``fn.prepare()``); a Dask worker receives ``fn`` once (scattered to
every worker), limits its thread pools and warms its kernels before the first task.

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
import hashlib
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.reduction import ForkingPickler
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
    "TaskHooks",
    "limit_thread_pools",
    "make_executor",
    "pid_alive",
    "settle_heap",
    "task_hooks",
    "warm_once",
]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("retwin.batch")

_installed: Callable[[Any], Any] | None = None

#: Seconds between two looks at the interrupt flag while waiting for results.
POLL_S = 0.1
#: Seconds to wait for a killed worker process to be reaped.
JOIN_S = 5.0
#: Seconds between two looks of a task on a Dask worker at its cancel flag.
DASK_CANCEL_CHECK_S = 0.5
#: Environment variables that size the thread pools of BLAS and OpenMP libraries loaded
#: after a worker started (those already loaded are limited with threadpoolctl).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_warm_lock = threading.Lock()
_warm = False
_thread_limits: Any = None


class WorkerDied(RetwinError):
    """A local worker process died under a task (out of memory, or killed)."""


def warm_once() -> None:
    """Compile (or load) the kernels once per process."""
    global _warm
    with _warm_lock:
        if not _warm:
            from retwin.engine.run import warmup

            warmup()
            _warm = True


def limit_thread_pools() -> None:
    """Limit the BLAS and OpenMP thread pools of this process to one thread: those already
    loaded (threadpoolctl) and those loaded later (their environment variables). A worker
    runs one task at a time; more threads only compete with the other workers."""
    global _thread_limits
    for name in THREAD_ENV:
        os.environ[name] = "1"
    from threadpoolctl import threadpool_limits

    _thread_limits = threadpool_limits(limits=1)


# --- what a task sees: progress out, cancellation in ------------------------------------------


class TaskHooks:
    """How a running task talks to whoever submitted it. This base does nothing: it is what
    a task sees outside an executor, or when nobody listens."""

    def progress(self, key: str, done: int, total: int) -> None:
        """Report that task ``key`` has done ``done`` of ``total`` steps."""

    def cancelled(self, key: str) -> bool:
        """Whether task ``key`` was cancelled (:meth:`Executor.cancel`)."""
        return False

    def message(self, key: str, payload: Any) -> None:
        """Hand ``payload`` (picklable) about task ``key`` to the executor's ``on_message``
        before the task ends; nothing happens where nobody listens."""


_NO_HOOKS = TaskHooks()
_local = threading.local()  # the hooks of the task running in this thread, if set per call
_process_hooks: TaskHooks = _NO_HOOKS  # the hooks of a local worker process


def task_hooks() -> TaskHooks:
    """The hooks of the task running in this thread (see the module)."""
    hooks = getattr(_local, "hooks", None)
    return hooks if hooks is not None else _process_hooks


@contextlib.contextmanager
def _hooked(hooks: TaskHooks) -> Iterator[None]:
    old = getattr(_local, "hooks", None)
    _local.hooks = hooks
    try:
        yield
    finally:
        _local.hooks = old


def _flag_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class _CallbackHooks(TaskHooks):
    """Hooks of a task run in this process: the handler is called directly."""

    def __init__(self, on_progress: Callable[[str, int, int], None] | None,
                 cancelled: set[str],
                 on_message: Callable[[str, Any], None] | None = None) -> None:
        self.on_progress = on_progress
        self.on_message = on_message
        self.keys = cancelled

    def progress(self, key: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(key, done, total)

    def message(self, key: str, payload: Any) -> None:
        if self.on_message is not None:
            self.on_message(key, payload)

    def cancelled(self, key: str) -> bool:
        return key in self.keys


class _Channel:
    """What a pool's workers report to the parent: a pipe that a worker writes each report
    into whole, in the thread that reports it, and that a thread of the parent reads.

    A ``multiprocessing.Queue`` writes from a thread of its own, which waits for the
    worker's interpreter lock while the task goes on computing: the parent heard of a
    report up to a thread switch interval (5 ms) late, the answer a worker hands over before
    it stores a result among them. The lock keeps the workers' reports whole; a pool's
    channel dies with it (a killed writer may hold the lock)."""

    def __init__(self, ctx: Any) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._lock = ctx.Lock()

    def put(self, item: Any) -> None:
        """Write ``item`` (in a worker); a parent gone is not the task's business."""
        data = bytes(ForkingPickler.dumps(item))
        with contextlib.suppress(OSError), self._lock:
            self._writer.send_bytes(data)

    def get(self, timeout: float) -> Any:
        """The next report (in the parent); ``queue.Empty`` after ``timeout`` seconds."""
        if not self._reader.poll(timeout):
            raise queue.Empty
        return ForkingPickler.loads(self._reader.recv_bytes())


class _ProcessHooks(TaskHooks):
    """Hooks of a local worker process: progress into a channel the parent drains, cancel
    flags as files in a folder the parent writes."""

    def __init__(self, progress_queue: Any, flags: str | None, parent: int) -> None:
        self.queue = progress_queue
        self.flags = flags
        self.parent = parent

    def progress(self, key: str, done: int, total: int) -> None:
        if self.queue is not None:
            self.queue.put((key, done, total))

    def message(self, key: str, payload: Any) -> None:
        if self.queue is not None:
            self.queue.put((key, payload))

    def cancelled(self, key: str) -> bool:
        if os.getppid() != self.parent:
            return True  # the parent is gone: nobody waits for this result
        return self.flags is not None and os.path.exists(
            os.path.join(self.flags, _flag_name(key)))


class _DaskHooks(TaskHooks):
    """Hooks of a task on a Dask worker: progress as worker events, cancellation as a Dask
    ``Event`` (looked at no more than every :data:`DASK_CANCEL_CHECK_S`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._checked = 0.0
        self._cancel = False

    def progress(self, key: str, done: int, total: int) -> None:
        from distributed import get_worker

        get_worker().log_event(f"{self.name}-progress",
                               {"key": key, "done": done, "total": total})

    def cancelled(self, key: str) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._checked > DASK_CANCEL_CHECK_S:
            from distributed import Event

            self._checked = now
            self._cancel = bool(Event(f"{self.name}-cancel-{key}").is_set())
        return self._cancel


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
    """Runs tasks; ``workers`` is how many run at once.

    ``tasks_write`` says where a batch study's result files are best written: true where the
    tasks see this process's files and this process has no core of its own to write them on
    (each task then writes its own files), false where this process writes them (the tasks
    run on other machines, or a core is left for this process)."""

    workers: int = 1
    tasks_write: bool = False

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

    @abstractmethod
    def submit(self, fn: Callable[[T], R], item: T, *, key: str | None = None) -> Future[R]:
        """``fn(item)`` as one task; its future holds the result (or the exception). With a
        ``key`` (the one the task reports and looks up with :func:`task_hooks`), an earlier
        :meth:`cancel` of that key is withdrawn first."""

    def start(self, fn: Callable[[Any], Any]) -> None:  # noqa: B027 - nothing to start
        """Start (and warm) the workers for ``fn`` now rather than at the first task."""

    def cancel(self, key: str) -> None:  # noqa: B027 - overridden where tasks can look
        """Ask task ``key`` to stop: from now on its ``task_hooks().cancelled(key)`` is
        true."""

    def uncancel(self, key: str) -> None:  # noqa: B027
        """Withdraw :meth:`cancel` (``submit(…, key=key)`` does it)."""

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

    tasks_write = True  # the same process either way

    def __init__(self, *, on_progress: Callable[[str, int, int], None] | None = None,
                 on_message: Callable[[str, Any], None] | None = None) -> None:
        self._hooks = _CallbackHooks(on_progress, set(), on_message)

    @property
    def description(self) -> str:
        return "this process"

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      stop: Callable[[], bool] = _never) -> Iterator[R]:
        for item in items:
            if stop():
                raise KeyboardInterrupt
            with _hooked(self._hooks):
                result = fn(item)
            yield result

    def submit(self, fn: Callable[[T], R], item: T, *, key: str | None = None) -> Future[R]:
        if key is not None:
            self.uncancel(key)
        out: Future[R] = Future()
        try:
            with _hooked(self._hooks):
                out.set_result(fn(item))
        except Exception as exc:
            out.set_exception(exc)
        return out

    def cancel(self, key: str) -> None:
        self._hooks.keys.add(key)

    def uncancel(self, key: str) -> None:
        self._hooks.keys.discard(key)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _watch_parent(parent: int) -> None:
    """End this worker when the parent is gone (killed with SIGKILL, it cannot say so)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running on this machine (another user's counts; a zombie,
    ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc: running
        return True


def _init_worker(fn: Callable[[Any], Any], parent: int, progress_queue: Any = None,
                 flags: str | None = None) -> None:
    """Start-up of a local worker process: leave Ctrl-C and SIGTERM to the parent (sent to
    the whole process group, they would otherwise kill the workers under the parent's feet),
    follow the parent's life, one thread per BLAS/OpenMP pool, the task hooks, install
    ``fn``, warm.

    The process followed is the one this worker was started by: the submitting process
    (``parent``) when spawned, the fork server when forked from one (it ends when the
    submitting process does, and so do its workers)."""
    global _installed, _process_hooks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not pid_alive(parent):
        os._exit(1)  # gone before this worker started
    origin = os.getppid()
    threading.Thread(target=_watch_parent, args=(origin,), daemon=True,
                     name="retwin-parent-watch").start()
    limit_thread_pools()
    _process_hooks = _ProcessHooks(progress_queue, flags, origin)
    _installed = fn
    prepare = getattr(fn, "prepare", None)
    if prepare is not None:
        # a failure here is raised again by the first task, with its traceback
        with contextlib.suppress(Exception):
            prepare()
    settle_heap()


def settle_heap() -> None:
    """Freeze what this process has made so far out of the cyclic garbage collector's reach
    (:func:`gc.freeze`), after collecting what is garbage already: for a process that has
    loaded what it keeps (its libraries, compiled kernels, models) and now runs task after
    task.

    Every full collection scans every object the collector tracks. In a warmed-up worker
    of the service those are ~130 000, made by its imports and never garbage: each full
    collection took 10–45 ms, and one fell inside a task every few tasks (a what-if over
    HTTP that takes 40 ms then took 80). Frozen, they are not scanned again; what tasks
    make is collected as usual. Objects frozen here and later left in a reference cycle are
    not freed: call it only in a process whose long-lived objects are its own."""
    import gc

    if gc.isenabled():
        gc.collect()
        gc.freeze()


def _call_installed(item: Any) -> Any:
    assert _installed is not None, "worker started without a task function"
    return _installed(item)


def _ready() -> int:
    """A no-op task: one per worker makes the pool start them all at once."""
    return os.getpid()


#: The module a fork server imports before it forks any worker (``start_method="forkserver"``).
PRELOAD = "retwin.batch.preload"


def forkserver_available() -> bool:
    """Whether this platform starts processes from a fork server (POSIX)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def stop_fork_server() -> None:
    """End this interpreter's fork server, if one runs, and reap it: a command that used one
    leaves no process behind (the server would otherwise end only once this one has)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    pid = getattr(server, "_forkserver_pid", None)
    if stop is not None and pid is not None:
        # The server holds nothing to save or flush (its workers are gone by now): killed,
        # it ends at once, where asked to stop it would first tear down an interpreter that
        # has loaded numba and the kernels (~0.1 s the command would wait for).
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            stop()  # closes its pipe, reaps it, removes its socket file


class ProcessExecutor(Executor):
    """A pool of ``workers`` local processes started with ``spawn`` (no state inherited by
    fork; safe with threads and on every platform). The pool is kept while ``fn`` is the
    same (``fn.cache_key``), so repeated studies on one base model reuse warm workers; a pool
    broken by a worker's death is replaced at the next :meth:`submit`.

    ``start_method="forkserver"`` (POSIX) forks the workers from a fork server instead: a
    fresh, single-threaded process that has imported retwin and warmed the kernels once
    (:data:`PRELOAD`), so a worker starts with nothing left to import or load. The server is
    this interpreter's, started with its environment at the first such pool (or by
    :meth:`boot`) and kept until it exits: a short-lived command gains a worker's start-up
    per worker; a long-lived process that changes its environment or code keeps ``spawn``.

    ``on_progress(key, done, total)`` receives what tasks report (:func:`task_hooks`), in a
    thread of this process, and ``on_message(key, payload)`` what they hand over
    (:meth:`TaskHooks.message`), in the same thread and order. Cancel flags are files in
    ``flags_dir`` (default: a temporary folder); the folder is removed when the executor is
    closed (or, a temporary one, when it is collected or the interpreter exits).
    """

    def __init__(self, workers: int, *,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 on_message: Callable[[str, Any], None] | None = None,
                 flags_dir: str | os.PathLike[str] | None = None,
                 start_method: str = "spawn") -> None:
        if workers < 1:
            raise ValueError(f"workers(={workers}) must be >= 1")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method(={start_method!r}) must be spawn or forkserver")
        self.workers = int(workers)
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload([PRELOAD])
        self._pool: ProcessPoolExecutor | None = None
        self._key: Any = None
        self._pending: set[Future[Any]] = set()
        self._lock = threading.RLock()
        self._on_progress = on_progress
        self._on_message = on_message
        self._queue: _Channel | None = None  # one per pool (a killed writer may hold its lock)
        self._flags: str | None = None
        self._flags_dir = None if flags_dir is None else os.fspath(flags_dir)
        self._drain: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def description(self) -> str:
        return f"{self.workers} local process{'es' if self.workers > 1 else ''}"

    @property
    def tasks_write(self) -> bool:  # type: ignore[override]
        """True when the workers take every core this process may run on: writing a task's
        files here would take CPU from them, so each task writes its own. With a core to
        spare, this process writes them there, and the workers only run."""
        return self.workers >= usable_cores()

    def _flag_dir(self) -> str:
        """The folder of cancel flags, made on first use."""
        with self._lock:
            if self._flags is None and self._flags_dir is not None:
                os.makedirs(self._flags_dir, exist_ok=True)
                self._flags = self._flags_dir
            elif self._flags is None:
                self._flags = tempfile.mkdtemp(prefix="retwin-cancel-")
                weakref.finalize(self, shutil.rmtree, self._flags, ignore_errors=True)
            return self._flags

    def _hooks_args(self) -> tuple[Any, str]:
        """The progress queue and the cancel-flag folder of a new pool's workers."""
        flags = self._flag_dir()
        listens = self._on_progress is not None or self._on_message is not None
        self._queue = _Channel(self._ctx) if listens else None
        if self._queue is not None and self._drain is None:
            self._closing.clear()
            self._drain = threading.Thread(target=self._drain_progress, daemon=True,
                                           name="retwin-progress")
            self._drain.start()
        return self._queue, flags

    def _drain_progress(self) -> None:
        while not self._closing.is_set():
            q = self._queue
            if q is None:  # no pool yet
                time.sleep(POLL_S)
                continue
            try:
                item = q.get(timeout=POLL_S * 2)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                time.sleep(POLL_S)  # a channel being replaced, with its pool
                continue
            except Exception:  # a report that does not read back: never a dead drain thread
                log.exception("a worker's report could not be read")
                continue
            try:
                if len(item) == 2:  # a message (TaskHooks.message)
                    if self._on_message is not None:
                        self._on_message(*item)
                elif self._on_progress is not None:
                    self._on_progress(*item)
            except Exception:  # a report is never worth a dead drain thread
                log.exception("report of task %s not handled", str(item[0])[:12])

    def _ensure_pool(self, fn: Callable[[Any], Any]) -> ProcessPoolExecutor:
        key = getattr(fn, "cache_key", None) or id(fn)
        with self._lock:
            pool = self._pool
            if pool is not None and getattr(pool, "_broken", False):
                self._pool = None
                _kill(pool)  # a worker died: the others go too, the pool starts afresh
            elif pool is not None and key != self._key:
                self._pool = None
                pool.shutdown(wait=True)
            if self._pool is None:
                progress_queue, flags = self._hooks_args()
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=self._ctx, initializer=_init_worker,
                    initargs=(fn, os.getpid(), progress_queue, flags))
                self._key = key
            return self._pool

    def boot(self) -> None:
        """Start the fork server now (``start_method="forkserver"``), so that it loads retwin
        and the kernels while this process does other work; nothing for ``spawn``."""
        if self._ctx.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def start(self, fn: Callable[[Any], Any]) -> None:
        pool = self._ensure_pool(fn)
        for _ in range(self.workers):  # every process starts now, each warms while idle
            pool.submit(_ready)

    def submit(self, fn: Callable[[T], R], item: T, *, key: str | None = None) -> Future[R]:
        if key is not None:
            self.uncancel(key)
        return self._ensure_pool(fn).submit(_call_installed, item)

    def cancel(self, key: str) -> None:
        with open(os.path.join(self._flag_dir(), _flag_name(key)), "wb"):
            pass

    def uncancel(self, key: str) -> None:
        if self._flags is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._flags, _flag_name(key)))

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

        def died() -> BaseException:
            if stop():  # a signal to the process group reached a starting worker
                return KeyboardInterrupt()
            self._pool = None
            return WorkerDied("a worker process died (out of memory, or killed)")

        # The pool is found broken either by a task's future or, when the death is seen
        # between a task's end and the next submission, by ``submit`` itself.
        try:
            fill()
            while pending:
                if stop():
                    raise KeyboardInterrupt
                done, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for f in done:
                    pending.discard(f)
                    yield f.result()
                fill()
        except BrokenProcessPool:
            raise died() from None

    def abort(self) -> None:
        """Kill the workers (they hold nothing worth saving: a file a task writes is renamed
        into place only once whole), drop what is queued and let the pool go without waiting
        on its threads. What was queued is failed or cancelled by the pool's own thread; a
        future cancelled here first would meet that thread's failing it (Python 3.11's pool
        then raises ``InvalidStateError`` in the thread)."""
        self._pending.clear()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._closing.set()
        if self._drain is not None:
            self._drain.join(timeout=2)
            self._drain = None
        self._queue = None
        if self._flags is not None:
            shutil.rmtree(self._flags, ignore_errors=True)
            self._flags = None


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: queued tasks dropped, running ones killed, every process reaped."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(timeout=JOIN_S)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise RetwinError("running on Dask needs the dask[distributed] package: "
                          "pip install 'retwin[dist]'") from None
    return distributed


def _warm_worker() -> str:
    limit_thread_pools()
    warm_once()
    return __version__


def _apply(fn: Callable[[Any], Any], item: Any, name: str, version: str | None = None) -> Any:
    """A task on a Dask worker, with the hooks of executor ``name``; refused on a worker
    whose retwin is not ``version`` (one that joined after the check at start)."""
    if version is not None and version != __version__:
        raise RetwinError(f"a Dask worker runs retwin {__version__}, the client {version}; "
                          "install the same version on every worker")
    with _hooked(_DaskHooks(name)):
        return fn(item)


def _result(fut: Any) -> Any:
    """A Dask task's result; a worker that cannot load retwin is named as such."""
    try:
        return fut.result()
    except ImportError as exc:
        raise RetwinError(f"a Dask worker cannot import retwin ({exc}); install "
                          f"retwin[dist] {__version__} on every worker") from None


class DaskExecutor(Executor):
    """Tasks on a Dask distributed cluster: ``address`` (``tcp://host:8786``) or a
    ``distributed.Client``. Each worker gets ``fn`` once and warms its kernels; tasks are
    submitted in a window sized by the cluster's threads and gathered as they finish.

    ``on_progress(key, done, total)`` receives what tasks report (as worker events).
    """

    def __init__(self, address: str | Any, *, timeout_s: float | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None) -> None:
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
        self._submitted: set[Any] = set()
        self._lock = threading.Lock()
        self._fn: tuple[Any, Any] | None = None  # (cache key, scattered fn)
        self._name = f"retwin-{uuid.uuid4().hex[:12]}"
        if on_progress is not None:
            def _event(event: Any) -> None:
                _, msg = event
                on_progress(str(msg["key"]), int(msg["done"]), int(msg["total"]))

            self.client.subscribe_topic(f"{self._name}-progress", _event)

    @property
    def description(self) -> str:
        n = len(self.client.nthreads())
        return f"Dask at {self.address} ({n} worker{'s' if n != 1 else ''}, " \
               f"{self.workers} thread{'s' if self.workers != 1 else ''})"

    def _scattered(self, fn: Callable[[Any], Any]) -> Any:
        """``fn`` on every worker (warmed, versions checked), once per ``fn.cache_key``."""
        key = getattr(fn, "cache_key", None) or id(fn)
        with self._lock:
            if self._fn is not None and self._fn[0] == key:
                return self._fn[1]
            client = self.client
            try:
                versions = client.run(_warm_worker)
            except Exception as exc:  # the worker's error comes back as its text
                text = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                if isinstance(exc, ImportError) or "No module named" in text:
                    raise RetwinError(f"Dask workers cannot import retwin ({text}); install "
                                      f"retwin[dist] {__version__} on every worker") from None
                raise RetwinError(f"Dask workers could not be prepared: {text}") from None
            bad = {w: v for w, v in versions.items() if v != __version__}
            if bad:
                which = ", ".join(f"{w} has {v}" for w, v in sorted(bad.items()))
                raise RetwinError(f"Dask workers run another retwin version ({which}); the "
                                  f"client runs {__version__}: install the same version on "
                                  "every worker")
            self.workers = max(1, sum(client.nthreads().values()))
            if self._fn is not None:
                client.cancel([self._fn[1]])
            self._fn = (key, client.scatter(fn, broadcast=True, hash=False))
            return self._fn[1]

    def start(self, fn: Callable[[Any], Any]) -> None:
        self._scattered(fn)

    def submit(self, fn: Callable[[T], R], item: T, *, key: str | None = None) -> Future[R]:
        if key is not None:
            self.uncancel(key)
        fut = self.client.submit(_apply, self._scattered(fn), item, self._name, __version__,
                                 pure=False)
        self._submitted.add(fut)
        out: Future[R] = Future()

        def _done(f: Any) -> None:
            self._submitted.discard(f)
            try:
                out.set_result(_result(f))
            except BaseException as exc:
                out.set_exception(exc)
            finally:
                f.release()

        fut.add_done_callback(_done)
        return out

    def _event(self, key: str) -> Any:
        from distributed import Event

        return Event(f"{self._name}-cancel-{key}", client=self.client)

    def cancel(self, key: str) -> None:
        self._event(key).set()

    def uncancel(self, key: str) -> None:
        self._event(key).clear()

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      stop: Callable[[], bool] = _never) -> Iterator[R]:
        distributed = _import_distributed()
        client = self.client
        fn_future = self._scattered(fn)
        it = iter(items)
        done_queue = distributed.as_completed(loop=client.loop)
        futures = self._futures

        def fill() -> None:
            while len(futures) < self.window:
                try:
                    item = next(it)
                except StopIteration:
                    return
                fut = client.submit(_apply, fn_future, item, self._name, __version__,
                                    pure=False)
                futures.add(fut)
                done_queue.add(fut)

        fill()
        while not done_queue.is_empty():
            if stop():
                raise KeyboardInterrupt
            if not done_queue.has_ready():
                time.sleep(POLL_S / 10)
                continue
            for fut in done_queue.next_batch(block=False):
                futures.discard(fut)
                result = _result(fut)
                fut.release()
                yield result
            fill()

    def abort(self) -> None:
        running = [*self._futures, *self._submitted]
        if running:
            self.client.cancel(running)
        self._futures.clear()
        self._submitted.clear()

    def close(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            with contextlib.suppress(Exception):
                self.client.cancel([fn[1]])
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
