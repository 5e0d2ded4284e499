"""Batch studies across processes: serial = local processes = Dask, result for result; a
study killed mid-way and started again equals one never interrupted; the example studies run.

These start worker processes (and a Dask ``LocalCluster``), so they are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import retwin
from conftest import REPO, TINY_PATH
from retwin.batch import (
    BatchInterrupted,
    DaskExecutor,
    ProcessExecutor,
    run_batch,
)
from retwin.batch.executors import WorkerDied, stop_fork_server, task_hooks

pytestmark = pytest.mark.slow

QUOTA = {"kind": "quota", "quota": "mining", "from": "2024-07-01"}
STUDY: dict[str, Any] = {
    "name": "tiny-parallel", "base": str(TINY_PATH), "replications": 5, "seed": 9,
    "chunk_replications": 2,
    "vary": [{"name": "q", "change": QUOTA, "field": "factor", "values": [0.6, 0.8, 1.0]},
             {"name": "u", "path": "plants.magnets.utilisation_max_frac", "mode": "sample",
              "range": {"low": 0.5, "high": 1.0}, "n": 2}],
}


def tables(path: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table, keys in (("kpis", ["point", "replication", "kpi", "key", "year"]),
                        ("monthly", ["point", "replication", "kind", "id", "month"])):
        df = pd.read_parquet(path / table)
        df["point"] = df["point"].astype(str)
        out[table] = df.sort_values(keys).reset_index(drop=True)
    return out


def assert_same_results(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["points"] == mb["points"] and ma["spec_sha256"] == mb["spec_sha256"]


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    run_batch(STUDY, out)
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as c:
        yield c


def test_processes_equal_serial(serial: Path, tmp_path: Path) -> None:
    res = run_batch(STUDY, tmp_path / "p", workers=2)
    assert res.complete and res.manifest["counts"]["runs_done"] == 30
    assert_same_results(serial, tmp_path / "p")


def test_dask_equals_serial(serial: Path, tmp_path: Path, cluster: Any) -> None:
    events: list[Any] = []
    res = run_batch(STUDY, tmp_path / "d", dask=cluster.scheduler_address,
                    progress=events.append)
    assert res.complete and res.manifest["versions"]["distributed"] != "unknown"
    assert events[0].where.startswith(f"Dask at {cluster.scheduler_address} (2 workers")
    assert_same_results(serial, tmp_path / "d")


def test_dask_with_a_client_and_a_resume(serial: Path, tmp_path: Path, cluster: Any) -> None:
    from distributed import Client

    with Client(cluster) as client:
        ex = DaskExecutor(client)
        with pytest.raises(BatchInterrupted):
            run_batch(STUDY, tmp_path / "d", executor=ex,
                      progress=lambda p: _stop_at(p, 8))
        res = run_batch(STUDY, tmp_path / "d", executor=ex)
        assert res.complete
        assert not ex._futures  # nothing left running on the cluster
    assert_same_results(serial, tmp_path / "d")


def _stop_at(p: Any, runs: int) -> None:
    if p.runs_done >= runs:
        raise KeyboardInterrupt


def test_process_pool_is_reused_and_stops_cleanly(serial: Path, tmp_path: Path) -> None:
    ex = ProcessExecutor(2)
    try:
        run_batch({**STUDY, "record": "annual"}, tmp_path / "a", executor=ex)
        pool = ex._pool
        run_batch({**STUDY, "record": "annual", "seed": 10}, tmp_path / "b", executor=ex)
        assert ex._pool is pool  # same base model: the warm workers are kept
        workers = list(pool._processes.values())  # type: ignore[union-attr]
        assert len(workers) == 2
        with pytest.raises(BatchInterrupted):
            run_batch({**STUDY, "record": "annual"}, tmp_path / "c", executor=ex,
                      progress=lambda p: _stop_at(p, 2))
        assert ex._pool is None
        for w in workers:
            w.join(timeout=5)
            assert not w.is_alive()  # the workers are gone
        run_batch({**STUDY, "record": "annual"}, tmp_path / "c", executor=ex)
    finally:
        ex.close()
    pd.testing.assert_frame_equal(_sorted(serial), _sorted(tmp_path / "c"))


LONG: dict[str, Any] = {
    "name": "tiny-long", "base": "tiny", "replications": 30, "seed": 4,
    "chunk_replications": 10, "record": "annual",
    "vary": [{"name": "u", "path": "plants.magnets.utilisation_max_frac",
              "range": {"low": 0.5, "high": 1.0}, "n": 20}],
}


@pytest.fixture(scope="module")
def long_fresh(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("long") / "fresh"
    return _sorted(run_batch(LONG, out).path)


def _sorted(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path / "kpis").astype({"point": str})
    return df.sort_values(["point", "replication", "kpi", "key", "year"]).reset_index(
        drop=True)


def _start(spec: Path, out: Path, *extra: str,
           sigint: Any = signal.SIG_DFL) -> subprocess.Popen[str]:
    """The CLI in a session of its own, with SIGINT's disposition set explicitly in the child
    (a suite started from a background shell would otherwise hand down SIG_IGN)."""
    return subprocess.Popen([sys.executable, "-m", "retwin.cli", "sweep", str(spec), "--out",
                             str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def _chunks_written(out: Path) -> int:
    return len(list((out / "kpis").glob("point=*/part-*.parquet"))) \
        if (out / "kpis").is_dir() else 0


def _wait_for_chunks(out: Path, n: int, proc: subprocess.Popen[str]) -> int:
    """Wait until ``n`` chunks (of any points, in any order) are written; return how many."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = _chunks_written(out)
        if done >= n:
            return done
        time.sleep(0.05)
    raise AssertionError(f"the study did not get to {n} chunks (rc {proc.poll()})")


@pytest.mark.parametrize(("sig", "workers", "sigint"), [
    (signal.SIGKILL, "2", signal.SIG_DFL),
    (signal.SIGINT, "2", signal.SIG_DFL),
    (signal.SIGINT, "1", signal.SIG_DFL),
    # started as a background job is (SIGINT ignored): SIGTERM still stops it cleanly
    (signal.SIGTERM, "2", signal.SIG_IGN),
])
def test_killed_study_resumes_to_the_uninterrupted_result(tmp_path: Path, sig: int,
                                                          workers: str, sigint: Any,
                                                          long_fresh: pd.DataFrame) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump(LONG))
    out = tmp_path / "out"
    proc = _start(spec, out, "--workers", workers, sigint=sigint)
    written = _wait_for_chunks(out, 9, proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "interrupted: " in err and "run the same command again to resume" in err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
        assert manifest["counts"]["runs_done"] >= written * 10
        assert not any((out / ".tmp").glob("*"))  # no partial file stands
    # every file that stands is whole
    for f in (out / "kpis").rglob("*.parquet"):
        assert pd.read_parquet(f).shape[0] > 0
    starts: list[int] = []
    res = run_batch(spec, out, workers=2, progress=lambda p: starts.append(p.runs_at_start))
    assert starts[0] >= written * 10 and res.complete
    pd.testing.assert_frame_equal(_sorted(out), long_fresh, check_exact=True)
    time.sleep(1.5)  # orphaned workers notice their parent is gone within a second
    left = subprocess.run(["pgrep", "-f", f"multiprocessing.*{os.getpid()}"],
                          capture_output=True, text=True)
    assert left.stdout == ""


def test_a_study_whose_worker_dies_says_so_keeps_its_points_and_resumes(
        tmp_path: Path, long_fresh: pd.DataFrame) -> None:
    """A worker killed under a study (as the out-of-memory killer would): the study fails
    with one message saying what happened and that its finished points are kept, its
    manifest says failed, and the same study run again completes to the uninterrupted
    result."""
    out = tmp_path / "out"
    ex = ProcessExecutor(2)
    killed: list[int] = []

    def kill_a_worker(p: Any) -> None:
        if p.runs_done and not killed:
            pool = ex._pool
            assert pool is not None
            killed.append(next(iter(pool._processes)))
            os.kill(killed[0], signal.SIGKILL)

    try:
        with pytest.raises(WorkerDied) as info:
            run_batch(LONG, out, executor=ex, progress=kill_a_worker)
    finally:
        ex.close()
    assert str(info.value) == ("a worker process died (out of memory, or killed); finished "
                               "points are kept: run again to resume")
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    res = run_batch(LONG, out, workers=2)
    assert res.complete
    pd.testing.assert_frame_equal(_sorted(out), long_fresh, check_exact=True)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "models" / "studies").glob(
    "*.yaml")))
def test_example_studies_run(name: str, tmp_path: Path) -> None:
    """Each example study, shrunk to 2 replications and at most 3 sampled points, runs."""
    tree = yaml.safe_load((REPO / "models" / "studies" / name).read_text())
    tree["replications"] = 2
    for v in tree.get("vary", []):
        if v.get("mode") == "sample":
            v["n"] = 3
    res = run_batch(tree, tmp_path / "o")
    assert res.complete and not res.to_pandas(filter={"kpi": "value.group"}).empty
    if res.spec.is_oat:
        sens = res.sensitivity()
        assert set(sens["kpi"]) == set(res.spec.kpis)
    assert isinstance(retwin.load_scenario(res.spec.base), retwin.Scenario)


# --- one task at a time: progress and cancel hooks, thread pools, a dead worker ---------------


def _hooked(item: tuple[str, str]) -> Any:
    """A task that reports progress, waits for its cancel flag, or tells about its process."""
    mode, key = item
    hooks = task_hooks()
    if mode == "report":
        for i in range(3):
            hooks.progress(key, i + 1, 3)
        return key
    if mode == "wait":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if hooks.cancelled(key):
                return True
            time.sleep(0.02)
        return False
    if mode == "peek":
        return hooks.cancelled(key)
    if mode == "blas":
        from threadpoolctl import threadpool_info

        return max((i["num_threads"] for i in threadpool_info()), default=1)
    if mode == "frozen":  # objects out of the cyclic collector's reach (gc.freeze)
        import gc

        return gc.get_freeze_count()
    if mode == "tell-and-die":  # hand something over, then die at once
        hooks.message(key, {"told": key})
        hooks.progress(key, 1, 1)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "warm":  # whether the kernels were loaded before this task (no prepare())
        from retwin.batch import executors

        return executors._warm
    return os.getpid()


def _wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _check_hooks(ex: Any, seen: list[Any]) -> None:
    assert ex.submit(_hooked, ("report", "a")).result(timeout=120) == "a"
    _wait_for(lambda: len(seen) >= 3)
    assert seen == [("a", 1, 3), ("a", 2, 3), ("a", 3, 3)]
    b = ex.submit(_hooked, ("wait", "b"))
    c = ex.submit(_hooked, ("wait", "c"))
    time.sleep(0.5)
    ex.cancel("b")
    assert b.result(timeout=60) is True
    assert not c.done()  # a flag stops its own task only
    ex.cancel("c")
    assert c.result(timeout=60) is True
    ex.uncancel("b")
    assert ex.submit(_hooked, ("peek", "b")).result(timeout=60) is False


@pytest.mark.parametrize("own_folder", [False, True])
def test_process_tasks_report_progress_and_are_cancelled_by_key(tmp_path: Path,
                                                                own_folder: bool) -> None:
    seen: list[Any] = []
    flags = tmp_path / "flags" if own_folder else None
    ex = ProcessExecutor(2, on_progress=lambda *m: seen.append(m), flags_dir=flags)
    try:
        _check_hooks(ex, seen)
        used = Path(ex._flag_dir())
        assert used == flags if own_folder else used.is_dir()
    finally:
        ex.abort()
        ex.close()
    assert not used.exists()  # no flag folder is left behind


def test_dask_tasks_report_progress_and_are_cancelled_by_key(cluster: Any) -> None:
    seen: list[Any] = []
    ex = DaskExecutor(cluster.scheduler_address, on_progress=lambda *m: seen.append(m))
    try:
        _check_hooks(ex, seen)
    finally:
        ex.abort()
        ex.close()


def test_workers_use_one_blas_thread(monkeypatch: pytest.MonkeyPatch, cluster: Any) -> None:
    """Helper threads of BLAS spinning in one worker take the cores of the others: every
    worker keeps to one, whatever it inherited."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    with ProcessExecutor(2) as ex:
        assert ex.submit(_hooked, ("blas", "")).result(timeout=120) == 1
        assert list(ex.map_unordered(_hooked, [("blas", "")] * 4)) == [1] * 4
    with DaskExecutor(cluster.scheduler_address) as dx:
        assert list(dx.map_unordered(_hooked, [("blas", "")] * 2)) == [1, 1]


def test_workers_freeze_what_they_loaded_before_the_first_task() -> None:
    """A worker's libraries are never garbage: frozen once started, so that no full
    collection during a task scans them again. What tasks make stays collectable."""
    import gc

    mine = gc.get_freeze_count()
    with ProcessExecutor(1) as ex:
        frozen = ex.submit(_hooked, ("frozen", "")).result(timeout=120)
        assert frozen > 50_000  # numpy, pydantic, retwin…
        assert ex.submit(_hooked, ("frozen", "")).result(timeout=120) == frozen
    assert gc.get_freeze_count() == mine  # the caller's heap is its own business


def test_a_pool_whose_worker_died_is_replaced_at_the_next_task() -> None:
    ex = ProcessExecutor(1)
    try:
        pid = ex.submit(_hooked, ("pid", "")).result(timeout=120)
        pool = ex._pool
        assert pool is not None
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: getattr(pool, "_broken", False))
        again = ex.submit(_hooked, ("pid", "")).result(timeout=120)
        assert again != pid and ex._pool is not pool
        _wait_for(lambda: not any(p.is_alive() for p in pool._processes.values())
                  if pool._processes else True)
    finally:
        ex.close()


def test_a_worker_death_seen_between_tasks_is_told_as_a_worker_death() -> None:
    """The pool may be found broken by the next submission rather than by a task's result
    (the death falls between one task's end and the next task's start): the map says the
    same thing either way, and the next task gets a fresh pool."""
    ex = ProcessExecutor(1)
    try:
        results = ex.map_unordered(_hooked, [("pid", "")] * 20)
        pid = next(results)
        pool = ex._pool
        assert pool is not None
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: getattr(pool, "_broken", False))
        with pytest.raises(WorkerDied) as info:
            for _ in results:
                pass
        assert str(info.value) == "a worker process died (out of memory, or killed)"
        assert ex.submit(_hooked, ("pid", "")).result(timeout=120) != pid
    finally:
        ex.close()


def test_what_a_worker_hands_over_is_sent_before_the_call_returns() -> None:
    """A worker's message and progress are written to the parent in the call that makes
    them (not later, by a thread of the worker that waits for the interpreter lock while
    the task computes on): they reach the parent even when the worker dies right after."""
    told: list[Any] = []
    progress: list[Any] = []
    ex = ProcessExecutor(1, on_message=lambda *m: told.append(m),
                         on_progress=lambda *m: progress.append(m))
    try:
        fut = ex.submit(_hooked, ("tell-and-die", "k"))
        with pytest.raises(BrokenProcessPool):
            fut.result(timeout=120)
        _wait_for(lambda: told and progress)
        assert told == [("k", {"told": "k"})] and progress == [("k", 1, 1)]
        assert ex.submit(_hooked, ("report", "a")).result(timeout=120) == "a"  # a new pool
        _wait_for(lambda: len(progress) == 4)
        assert progress[1:] == [("a", 1, 3), ("a", 2, 3), ("a", 3, 3)]
    finally:
        ex.close()


def test_an_aborted_pool_leaves_no_error_in_its_threads(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Aborting with tasks queued (an interrupt) kills the workers; the pool's own thread
    then fails what was queued as broken. Nothing may have been cancelled under it first:
    a future cancelled by the caller and then failed by that thread raised
    ``InvalidStateError`` in the thread (Python 3.11's pool does not check)."""
    import threading

    from retwin.batch import executors

    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: errors.append(a.exc_value))
    kill = executors._kill

    def kill_seen_first(pool: Any) -> None:
        """The killing as it races: the pool's thread sees the dead worker before it is
        told to shut down (usually it is the other way round)."""
        for proc in list(pool._processes.values()):
            proc.kill()
        _wait_for(lambda: bool(getattr(pool, "_broken", False)))
        kill(pool)

    monkeypatch.setattr(executors, "_kill", kill_seen_first)
    for _ in range(3):
        ex = ProcessExecutor(1)
        try:
            ex.submit(_hooked, ("pid", "")).result(timeout=120)  # the worker is up
            pool = ex._pool
            assert pool is not None
            # the interrupt comes once the window is queued (one task running, the rest not)
            runs = ex.map_unordered(_hooked, [("wait", f"k{i}") for i in range(8)],
                                    stop=lambda: True)
            with pytest.raises(KeyboardInterrupt):
                next(runs)
            manager = pool._executor_manager_thread  # (the pool forgets it as it stops)
            assert manager is not None
            ex.abort()
            manager.join(timeout=30)
            assert not manager.is_alive()
        finally:
            ex.close()
    assert errors == []


# --- workers forked from a fork server ---------------------------------------------------------


def test_forked_workers_start_warm_report_and_equal_serial(serial: Path, tmp_path: Path
                                                          ) -> None:
    """Workers forked from the fork server have retwin and the kernels loaded before their
    first task (a spawned worker of a function without ``prepare`` has not), follow their
    submitting process, report progress, see their cancel flags, and give serial's
    results."""
    seen: list[Any] = []
    try:
        with ProcessExecutor(1) as spawned:
            assert spawned.submit(_hooked, ("warm", "")).result(timeout=120) is False
        forked = ProcessExecutor(2, start_method="forkserver",
                                 on_progress=lambda *m: seen.append(m))
        try:
            assert forked.submit(_hooked, ("warm", "")).result(timeout=300) is True
            _check_hooks(forked, seen)
        finally:
            forked.abort()
            forked.close()
        with ProcessExecutor(2, start_method="forkserver") as ex:
            res = run_batch(STUDY, tmp_path / "f", executor=ex)
        assert res.complete
        assert_same_results(serial, tmp_path / "f")
    finally:
        stop_fork_server()
    from multiprocessing import forkserver

    assert forkserver._forkserver._forkserver_pid is None  # type: ignore[attr-defined]


def test_sweep_command_forks_its_workers_and_leaves_no_process(
        serial: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``retwin sweep --workers 2`` forks its workers from a fork server started before the
    study is read, and ends the server (and so every worker) before it returns."""
    from multiprocessing import forkserver

    from retwin.batch import executors
    from retwin.cli import main

    booted: list[str] = []
    boot = executors.ProcessExecutor.boot

    def spy(self: Any) -> None:
        booted.append(self._ctx.get_start_method())
        boot(self)

    monkeypatch.setattr(executors.ProcessExecutor, "boot", spy)
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(STUDY))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--workers", "2"]) == 0
    assert booted == ["forkserver"]
    assert forkserver._forkserver._forkserver_pid is None  # type: ignore[attr-defined]
    assert_same_results(serial, tmp_path / "o")
    assert "6 points, 30 runs in" in capsys.readouterr().out


def test_pid_alive_sees_running_ended_and_zombie_processes() -> None:
    """A worker's watch on its parent and the service's check of a claim's holder read the
    same rule: running counts; a process that ended, reaped or not yet (a zombie), does not."""
    from retwin.batch.executors import pid_alive

    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ended but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
