"""Interrupts are flags read between results, so a Ctrl-C can never catch the worker pool
half-way through its own bookkeeping (the cause of a study that hung on Ctrl-C)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from retwin.batch.executors import Interrupts, ProcessExecutor, SerialExecutor


@pytest.fixture(autouse=True)
def python_default_handlers() -> Any:
    """Python's own dispositions, whatever the suite was started with (a background shell
    hands down SIGINT ignored)."""
    old = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.default_int_handler),
                                               (signal.SIGTERM, signal.SIG_DFL))}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def test_first_signal_sets_the_flag_and_the_second_raises() -> None:
    with Interrupts(signal.SIGINT, signal.SIGTERM) as flag:
        assert not flag
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag and flag.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_ignored_signal_stays_ignored() -> None:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Interrupts(signal.SIGINT) as flag:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not flag
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen: list[Any] = []

    def body() -> None:
        with Interrupts(signal.SIGINT):
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


def _gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _slow(x: int) -> int:
    time.sleep(0.2)
    return x


def test_serial_executor_stops_between_items() -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        return x

    flag = [False]
    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in SerialExecutor().map_unordered(fn, range(10), stop=lambda: flag[0]):
            got.append(r)
            flag[0] = r == 2
    assert got == [0, 1, 2] and calls == [0, 1, 2]


@pytest.mark.slow
def test_process_executor_stops_on_the_flag_and_ends_its_workers() -> None:
    ex = ProcessExecutor(2)
    got: list[int] = []
    flag = [False]
    try:
        with pytest.raises(KeyboardInterrupt):
            for r in ex.map_unordered(_slow, range(1000), stop=lambda: flag[0]):
                got.append(r)
                flag[0] = len(got) >= 3
        pool = ex._pool
        assert pool is not None
        workers = list(pool._processes.values())
        done = threading.Event()

        def abort() -> None:
            ex.abort()
            done.set()

        threading.Thread(target=abort, daemon=True).start()
        # a hang here is the defect; the bound is far above the terminate grace period
        assert done.wait(timeout=60), "abort() hung"
        # gone: not in the process table, or a zombie waiting for whichever of this
        # thread and the pool's own thread reaps it (is_alive() can read True while the
        # other thread reaps)
        assert ex._pool is None and all(_gone(w.pid) for w in workers)
        assert 3 <= len(got) < 1000
    finally:
        ex.close()
