"""Batch studies: 1,000 Baotou replications on 2 workers (in this process, and as the
``retwin sweep`` command with its workers' memory), 1 -> 2 worker scaling, the Dask path's
overhead per run against local processes, and the peak memory of a 10,000-run study.

Worker pools are started outside the timed region (a warm pool is what a long study sees);
the cold start is reported in ``extra_info``. Each benchmark asserts a correctness fact.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ceiling
import retwin
from retwin.batch import DaskExecutor, ProcessExecutor, run_batch

_round = itertools.count()
_figures: dict[str, float] = {}


def _out(tmp: Path) -> Path:
    return tmp / f"out{next(_round)}"


def _mc(replications: int, *, record: str = "annual", base: str = "baotou-2024",
        chunk: int = 50) -> dict[str, Any]:
    return {"name": f"mc-{replications}", "base": base, "replications": replications,
            "seed": 1, "record": record, "chunk_replications": chunk}


@pytest.fixture(scope="module")
def pool2() -> Iterator[ProcessExecutor]:
    ex = ProcessExecutor(2)
    # start and warm the workers on the same base model before anything is timed
    run_batch(_mc(4, chunk=1), Path(f"/tmp/retwin-bench-warm-{time.time_ns()}"), executor=ex)
    yield ex
    ex.close()


@pytest.mark.benchmark(group="batch-1000")
def test_baotou_1000_replications_2_workers(benchmark, tmp_path: Path,  # type: ignore[no-untyped-def]
                                            pool2: ProcessExecutor) -> None:
    """DESIGN §5: 1,000 replications of baotou-2024 in <= 5 s on 2 cores."""
    res = benchmark.pedantic(lambda: run_batch(_mc(1000), _out(tmp_path), executor=pool2),
                             rounds=3, warmup_rounds=0)
    assert res.complete and res.manifest["counts"]["runs_done"] == 1000
    total = res.to_pandas(filter={"kpi": "value.group", "key": "total", "year": 2026})
    assert total["replication"].nunique() == 1000 and total["value"].nunique() > 100
    first = retwin.run(retwin.load_scenario("baotou-2024"), seed=1).kpi("value.group",
                                                                         "total", 2026)
    assert total.loc[total.replication == 0, "value"].item() == first
    t0 = time.perf_counter()
    cold = run_batch(_mc(1000), _out(tmp_path), workers=2)  # a fresh pool: start-up included
    benchmark.extra_info["cold_start_total_s"] = round(time.perf_counter() - t0, 3)
    if benchmark.stats is not None:  # (None: --benchmark-disable, nothing timed)
        benchmark.extra_info["runs_per_s"] = round(1000 / benchmark.stats.stats.mean, 1)
    assert cold.complete
    monthly = time.perf_counter()
    run_batch(_mc(1000, record="monthly"), _out(tmp_path), executor=pool2)
    benchmark.extra_info["monthly_record_s"] = round(time.perf_counter() - monthly, 3)


#: Rounds of the 1 -> 2 worker comparison: each a 1-worker study, then a 2-worker one.
SCALING_ROUNDS = 5
#: Replications of each study of the comparison: the 1,000 of the benchmark above (DESIGN §5).
SCALING_RUNS = 1000


@pytest.mark.benchmark(group="batch-scaling")
def test_scaling_1_to_2_workers(benchmark, tmp_path: Path  # type: ignore[no-untyped-def]
                                ) -> None:
    """The 1,000 Baotou replications of ``retwin sweep``'s benchmark (20 tasks of 50) on a
    warm pool of 2 processes (timed), each round right after the same study run serially
    in this process (what ``workers=1`` does) and on a warm pool of 1 (their times in
    ``extra_info``; the pool of 1 is the stricter yardstick: its study's own process has
    the second core to itself): each speed-up is the median of the rounds' ratios, so a
    slow minute of a shared machine weighs on both sides of a ratio instead of on one side
    only. With the CPU time of the study's process per task (on 2 cores it competes with 2
    workers) and the share of the workers' time they sat idle (start, tail, waiting on the
    study)."""
    pools = {1: ProcessExecutor(1), 2: ProcessExecutor(2)}
    spin_pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    machine: list[float] = []
    cpu: list[float] = []
    idle: list[float] = []
    serial: list[float] = []
    in_process: list[float] = []
    results: list[Any] = []

    def study(workers: int) -> float:
        """The study on the warm pool of ``workers`` (0: in this process, serially)."""
        busy: list[float] = []
        c0, t0 = time.process_time(), time.perf_counter()
        res = run_batch(_mc(SCALING_RUNS), _out(tmp_path), executor=pools.get(workers),
                        progress=lambda p: busy.append(p.task_seconds))
        wall = time.perf_counter() - t0
        assert res.manifest["counts"]["runs_done"] == SCALING_RUNS
        results.append(res)
        if workers == 2:
            cpu.append(time.process_time() - c0)
            idle.append(1 - sum(busy) / (wall * workers))
        return wall

    def setup() -> None:  # not timed: the machine's own speed-up, then the 1-worker study
        machine.append(ceiling.speedup(spin_pool))
        in_process.append(study(0))
        serial.append(study(1))

    try:
        for workers, ex in pools.items():  # start, warm
            run_batch(_mc(2 * workers, chunk=1), _out(tmp_path), executor=ex)
        list(spin_pool.map(ceiling.spin, [1000, 1000]))
        benchmark.pedantic(lambda: study(2), setup=setup, rounds=SCALING_ROUNDS,
                           warmup_rounds=0)
    finally:
        spin_pool.shutdown()
        for ex in pools.values():
            ex.close()
    here, one, two = results[-3:]  # the same replications: serially, on 1 and 2 workers
    assert one.to_pandas().equals(two.to_pandas())
    assert here.to_pandas().equals(two.to_pandas())
    tasks = SCALING_RUNS // 50
    benchmark.extra_info["parent_cpu_ms_per_task"] = round(1000 * min(cpu) / tasks, 2)
    benchmark.extra_info["worker_idle_frac"] = round(min(idle), 4)
    if benchmark.stats is None:  # --benchmark-disable: nothing timed
        return
    parallel = list(benchmark.stats.stats.data)
    ratios = sorted(s / p for s, p in zip(serial, parallel, strict=True))
    speedup = ratios[len(ratios) // 2]
    vs_serial = sorted(s / p for s, p in zip(in_process, parallel, strict=True))
    own = sorted(machine)[len(machine) // 2]
    benchmark.extra_info.update(
        runs_per_s=round(SCALING_RUNS / benchmark.stats.stats.median, 1),
        one_worker_median_s=round(sorted(serial)[len(serial) // 2], 3),
        speedup_per_round=[round(r, 3) for r in ratios],
        speedup_vs_1_worker=round(speedup, 3),
        speedup_vs_serial_per_round=[round(r, 3) for r in vs_serial],
        speedup_vs_serial=round(vs_serial[len(vs_serial) // 2], 3),
        machine_speedup_per_round=[round(r, 3) for r in sorted(machine)],
        machine_speedup=round(own, 3))
    print(f"\n2 workers vs 1: {speedup:.2f}x (median of {len(ratios)} interleaved rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}); vs the study run serially in its own "
          f"process: {vs_serial[len(vs_serial) // 2]:.2f}x "
          f"({', '.join(f'{r:.2f}' for r in vs_serial)}); the machine's own, a plain loop on "
          f"2 processes vs 1: {own:.2f}x ({', '.join(f'{r:.2f}' for r in sorted(machine))})")


def _tiny_sweep(points: int) -> dict[str, Any]:
    return {"name": "tiny-sweep", "base": "tiny", "replications": 2, "seed": 3,
            "record": "annual", "chunk_replications": 2,
            "vary": [{"name": "u", "path": "plants.magnets.utilisation_max_frac",
                      "range": {"low": 0.4, "high": 1.0}, "n": points}]}


@pytest.mark.benchmark(group="batch-dask-overhead")
@pytest.mark.parametrize("where", ["local", "dask"])
def test_dask_overhead_per_run(benchmark, tmp_path: Path, where: str  # type: ignore[no-untyped-def]
                               ) -> None:
    """200 tasks of 2 tiny runs each, on 2 local processes or a 2-worker Dask LocalCluster
    (processes, one thread each): the difference per run is the Dask path's overhead."""
    distributed = pytest.importorskip("distributed")
    spec = _tiny_sweep(200)
    runs = 400
    cluster = None
    if where == "dask":
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=":0")
        client = distributed.Client(cluster)
        ex: Any = DaskExecutor(client)
    else:
        ex = ProcessExecutor(2)
    try:
        run_batch(_tiny_sweep(4), _out(tmp_path), executor=ex)  # start, warm
        res = benchmark.pedantic(lambda: run_batch(spec, _out(tmp_path), executor=ex),
                                 rounds=3, warmup_rounds=0)
    finally:
        ex.close()
        if cluster is not None:
            client.close()
            cluster.close()
    assert res.manifest["counts"]["runs_done"] == runs
    if benchmark.stats is None:  # --benchmark-disable: nothing timed
        return
    mean = benchmark.stats.stats.mean
    _figures[where] = mean
    _figures[f"{where}_path"] = str(res.path)  # type: ignore[assignment]
    benchmark.extra_info["ms_per_run"] = round(1000 * mean / runs, 3)
    assert res.manifest["counts"]["runs_done"] == runs
    if where == "dask" and "local" in _figures:
        benchmark.extra_info["dask_overhead_ms_per_run"] = round(
            1000 * (mean - _figures["local"]) / runs, 3)
        benchmark.extra_info["dask_overhead_ms_per_task"] = round(
            1000 * (mean - _figures["local"]) / 200, 3)
        keys = ["point", "replication", "kpi", "key", "year"]
        a, b = (pd.read_parquet(Path(str(_figures[f"{w}_path"])) / "kpis").astype(
            {"point": str}).sort_values(keys).reset_index(drop=True) for w in ("local", "dask"))
        pd.testing.assert_frame_equal(a, b, check_exact=True)  # same results either way


#: Shared by the scripts below, which run in fresh processes.
_HWM = '''
def hwm_mb(pid="self"):
    # VmHWM: peak resident set of this address space (reset by exec, unlike ru_maxrss,
    # which a spawned process inherits from the one that forked it)
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
'''

_PEAK = """
import json, os, sys, time
from retwin.batch import run_batch
""" + _HWM + """
def children():
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as fh:
            return fh.read().split()
    except OSError:
        return []

workers = {}
def sample(p):
    for pid in children():
        workers[pid] = max(workers.get(pid, 0.0), hwm_mb(pid))

points, reps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
spec = {"name": "mem", "base": "tiny", "replications": reps, "seed": 1, "record": "monthly",
        "vary": [{"name": "u", "path": "plants.magnets.utilisation_max_frac",
                  "range": {"low": 0.4, "high": 1.0}, "n": points}]}
t0 = time.perf_counter()
res = run_batch(spec, out, workers=2, progress=sample)
print(json.dumps({"runs": res.manifest["counts"]["runs_done"], "self_mb": hwm_mb(),
                  "worker_mb": max(workers.values()), "seconds": time.perf_counter() - t0}))
"""


def _peak(points: int, reps: int, out: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _PEAK, str(points), str(reps), str(out)],
                          capture_output=True, text=True, check=True)
    data: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


@pytest.mark.benchmark(group="batch-memory")
def test_peak_memory_of_a_10000_run_study(benchmark, tmp_path: Path  # type: ignore[no-untyped-def]
                                          ) -> None:
    """10,000 runs of the tiny model (100 points x 100 replications, monthly series kept, 2
    workers) in a fresh process: peak RSS (VmHWM) of the parent and of the largest worker,
    against a 1,000-run study. Flat memory: ten times the runs may not cost 1.5 times the
    memory."""
    small = _peak(10, 100, tmp_path / "small")
    big = benchmark.pedantic(lambda: _peak(100, 100, _out(tmp_path)), rounds=1,
                             warmup_rounds=0)
    assert big["runs"] == 10_000 and small["runs"] == 1_000
    for key in ("self_mb", "worker_mb"):
        benchmark.extra_info[f"{key}_10000_runs"] = round(big[key], 1)
        benchmark.extra_info[f"{key}_1000_runs"] = round(small[key], 1)
        assert big[key] < 1.5 * small[key], (key, small, big)
    benchmark.extra_info["seconds_10000_runs"] = round(big["seconds"], 2)
    rows = sum(1 for _ in (tmp_path).rglob("monthly/point=*/part-*.parquet"))
    assert rows >= 100 * 2  # every point's monthly files of both studies are there


_SWEEP = """
import json, os, sys, threading, time
from retwin.cli import main
""" + _HWM + """
def kids(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return fh.read().split()
    except OSError:
        return []

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as cmd:
            return cmd.read()
    except OSError:
        return ""

def pool_workers():
    # spawned workers are children of this process; forked ones, of its fork server (not
    # the resource tracker, not the server itself)
    pids = []
    for pid in kids(os.getpid()):
        line = cmdline(pid)
        if "spawn_main" in line:
            pids.append(pid)
        elif "forkserver" in line:
            pids += kids(pid)
    return pids

workers = {}
done = threading.Event()
def watch():
    while not done.wait(0.1):
        for pid in pool_workers():
            workers[pid] = max(workers.get(pid, 0.0), hwm_mb(pid))

threading.Thread(target=watch, daemon=True).start()
code = main(["sweep", sys.argv[1], "--out", sys.argv[2], "--workers", "2"])
done.set()
print(json.dumps({"code": code, "worker_mb": max(workers.values(), default=0.0)}))
"""


@pytest.mark.benchmark(group="batch-1000-command")
def test_sweep_command_1000_baotou_replications(benchmark, tmp_path: Path  # type: ignore[no-untyped-def]
                                                ) -> None:
    """``retwin sweep`` of 1,000 baotou-2024 replications on 2 workers as a whole process
    (start-up, workers started and warmed, results written; target <= 4 s), and the peak
    resident memory of its workers (target <= 300 MB)."""
    spec = tmp_path / "mc-1000.yaml"
    spec.write_text(json.dumps(_mc(1000)), encoding="utf-8")
    found: dict[str, float] = {}

    def command() -> None:
        out = _out(tmp_path)
        done = subprocess.run([sys.executable, "-c", _SWEEP, str(spec), str(out)],
                              capture_output=True, text=True, check=True)
        found.update(json.loads(done.stdout.strip().splitlines()[-1]))
        assert found["code"] == 0

    benchmark.pedantic(command, rounds=2, warmup_rounds=0)
    benchmark.extra_info["worker_peak_mb"] = round(found["worker_mb"], 1)
    assert 0 < found["worker_mb"] <= 300, found
