"""The what-if service: latency of a 1-replication what-if on baotou-2024, and the time to
the first answer after a cold start.

- ``server``: the service in this process (FastAPI's TestClient, no network); the time of
  ``POST /runs?wait=…`` until the finished run is back, plus the server's own
  accepted→finished time of each run.
- ``end_to_end``: a real ``retwin serve`` on 127.0.0.1 over HTTP.
- ``cold_start``: from starting ``retwin serve`` on an empty data folder to the first what-if
  answered (registry created, workers started, baseline and what-if computed).
- ``store``: the CPU time of storing a finished 1-replication what-if in this process, as the
  service stores it (the daily tables left for their first reader) and whole
  (``retwin run --out``), and of writing what was left when it is first read.

Every round submits a different what-if (else it would be answered from the stored result),
against the baseline the service computed at start. p50/p95 and the answer's size go to
``extra_info`` and are printed: ``pytest benchmarks/test_bench_service.py --benchmark-only
-s``. The machine may be shared: CPU times (``store``) move less than wall times.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from retwin_service.main import create_app
from retwin_service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 30
_factor = itertools.count()


def whatif() -> dict[str, Any]:
    """A new what-if each call: the mining quota cut by a slightly different factor."""
    f = 0.9 - next(_factor) * 1e-4
    return {"model": "baotou-2024", "replications": 1, "seed": 0,
            "changes": [{"kind": "quota", "quota": "mining", "factor": f,
                         "from": "2025-01-01"}]}


def _pcts(seconds: list[float]) -> dict[str, float]:
    a = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1)}


def _timings(benchmark: Any) -> list[float]:
    """The timed rounds (none under ``--benchmark-disable``, which runs each test once)."""
    return [] if benchmark.stats is None else list(benchmark.stats.stats.data)


def _report(benchmark: Any, name: str, seconds: list[float]) -> None:
    if not seconds:  # --benchmark-disable: nothing timed
        return
    p = _pcts(seconds)
    benchmark.extra_info[name] = p
    print(f"\n{name}: p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms (n={len(seconds)})")


def _report_size(benchmark: Any, name: str, sizes: list[int]) -> None:
    benchmark.extra_info[f"{name}_body_bytes"] = max(sizes)
    print(f"\n{name}: answer body {max(sizes)} bytes (largest of {len(sizes)}, "
          "uncompressed)")


def _server_seconds(run: dict[str, Any]) -> float:
    t0 = dt.datetime.fromisoformat(run["created_at"])
    t1 = dt.datetime.fromisoformat(run["finished_at"])
    return (t1 - t0).total_seconds()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with tempfile.TemporaryDirectory() as d:
        s = Settings(data_dir=Path(d), workers=2, precompute=["baotou-2024"])
        # a loopback peer and Host: the service answers those without an API token
        with TestClient(create_app(s), base_url="http://127.0.0.1",
                        client=("127.0.0.1", 50000)) as c:
            c.post("/api/v1/runs", json={"model": "baotou-2024"}, params={"wait": 120})
            yield c


@pytest.mark.benchmark(group="service")
def test_whatif_latency_server(benchmark: Any, client: TestClient) -> None:
    server: list[float] = []
    sizes: list[int] = []

    def one() -> dict[str, Any]:
        r = client.post("/api/v1/runs", json=whatif(), params={"wait": 60})
        run = r.json()
        assert r.status_code == 200 and run["status"] == "done", run
        server.append(_server_seconds(run))
        sizes.append(len(r.content))
        return run

    run = benchmark.pedantic(one, rounds=ROUNDS, warmup_rounds=2)
    assert run["result"]["mass_balance_closes"]
    assert run["result"]["difference"]
    _report(benchmark, "server_accepted_to_finished", server[2:])
    _report(benchmark, "in_process_request", _timings(benchmark))
    _report_size(benchmark, "in_process_request", sizes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    env.update({"RETWIN_DATA_DIR": str(data_dir), "RETWIN_WORKERS": "2",
                "RETWIN_LOG_LEVEL": "warning"})
    return subprocess.Popen([sys.executable, "-m", "retwin.cli", "serve", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _first_answer(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """POST ``body`` as soon as the server accepts connections; the finished run."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.post(f"{url}/api/v1/runs", json=body, params={"wait": 30}, timeout=60)
            run = r.json()
            while run["status"] not in ("done", "failed"):
                run = httpx.get(f"{url}/api/v1/runs/{run['id']}", params={"wait": 30},
                                timeout=60).json()
            return dict(run)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.mark.benchmark(group="service")
def test_whatif_latency_end_to_end(benchmark: Any, tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, port)
    try:
        _first_answer(url, {"model": "baotou-2024"})  # the baseline, computed at start
        sizes: list[int] = []
        # as a client that takes gzip (httpx's default) would; the size is the uncompressed
        with httpx.Client(base_url=url, timeout=60) as c:
            def one() -> dict[str, Any]:
                r = c.post("/api/v1/runs", json=whatif(), params={"wait": 60})
                assert r.status_code == 200, r.text
                sizes.append(len(r.content))
                return dict(r.json())

            run = benchmark.pedantic(one, rounds=ROUNDS, warmup_rounds=2)
        assert run["status"] == "done" and run["result"]["mass_balance_closes"]
        _report(benchmark, "end_to_end", _timings(benchmark))
        _report_size(benchmark, "end_to_end", sizes)
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


@pytest.mark.benchmark(group="service")
def test_cold_start_to_first_answer(benchmark: Any, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "retwin.cli", "warmup"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    dirs = (tmp_path / f"cold{i}" for i in itertools.count())
    procs: list[subprocess.Popen[bytes]] = []

    def stop_previous() -> None:  # not timed: pedantic's setup
        while procs:
            p = procs.pop()
            p.send_signal(2)
            p.wait(timeout=30)

    def one() -> dict[str, Any]:
        port = _free_port()
        procs.append(_serve(next(dirs), port))
        return _first_answer(f"http://127.0.0.1:{port}", whatif())

    try:
        run = benchmark.pedantic(one, setup=stop_previous, rounds=3, warmup_rounds=0)
    finally:
        stop_previous()
    assert run["status"] == "done" and run["result"]["difference"]
    _report(benchmark, "cold_start_first_answer", _timings(benchmark))


@pytest.mark.benchmark(group="service")
def test_store_cpu(benchmark: Any, tmp_path: Path) -> None:
    """CPU time of storing one finished 1-replication what-if on baotou-2024: as the service
    stores it before answering (:func:`retwin_service.jobs.store`, the daily tables left for
    later), whole (every table at once, as ``retwin run --out``), and of writing what was
    left (:func:`retwin.storage.complete_result`, when a reader first asks)."""
    import retwin
    from retwin import whatif as wi
    from retwin.storage import complete_result, deferred_tables, save_result
    from retwin_service.jobs import store

    model = retwin.load_scenario("baotou-2024")
    base = wi.run(wi.resolve(model), replications=1)
    results = [wi.run(wi.resolve(model, [whatif()["changes"][0]]), replications=1,
                      baseline=base.whatif.kpi_frames) for _ in range(ROUNDS + 2)]
    cpu: dict[str, list[float]] = {"service_store": [], "whole_save": [], "completion": []}
    keys = itertools.count()

    def one() -> None:
        res = results[next(keys) % len(results)]
        key = f"r{len(cpu['service_store'])}"
        t = time.process_time()
        store(res, tmp_path, key, "base")
        cpu["service_store"].append(time.process_time() - t)
        t = time.process_time()
        save_result(res.whatif, tmp_path / f"{key}-whole", difference=res.difference)
        cpu["whole_save"].append(time.process_time() - t)
        t = time.process_time()
        complete_result(tmp_path / key, res.whatif)
        cpu["completion"].append(time.process_time() - t)
        assert deferred_tables(tmp_path / key) == []

    benchmark.pedantic(one, rounds=ROUNDS, warmup_rounds=2)
    for name, seconds in cpu.items():
        _report(benchmark, f"{name}_cpu", seconds[2:])
