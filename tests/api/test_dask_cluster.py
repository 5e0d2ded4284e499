"""Dask as deployed: ``dask scheduler`` and two ``dask worker`` processes started from the
command line on 127.0.0.1 (as a user starts them on a cluster), a sweep run with
``retwin sweep --dask`` and service what-ifs with ``RETWIN_DASK_ADDRESS``; one worker is
killed mid-sweep and the results still equal the local run's. A worker that lacks retwin,
or runs another version of it, is refused with a clear error.

The cluster is started once for the module; every process is reaped, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from apiutil import REPO, Server, TestClient, settings_for, whatif

import retwin
from retwin_service.main import create_app

pytestmark = pytest.mark.slow

API = "/api/v1"

#: A worker whose ``import retwin`` fails, and one that says it is another version.
NO_RETWIN = ("import sys; sys.modules['retwin'] = None; "
             "from distributed.cli.dask_worker import main; main()")
OTHER_VERSION = ("import retwin._version as v, retwin.batch.executors as e; "
                 "v.__version__ = e.__version__ = '0.0.0+other'; "
                 "from distributed.cli.dask_worker import main; main()")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETWIN_", "DASK_"))}
    env.update({"PYTHONUNBUFFERED": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"})
    return env


@dataclass
class Cluster:
    """A scheduler and its workers, each a process of its own started like a user would."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""

    @property
    def scheduler_file(self) -> Path:
        return self.root / "scheduler.json"

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            p = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def start_scheduler(self, timeout: float = 60) -> None:
        self._spawn([sys.executable, "-m", "distributed.cli.dask_scheduler",
                     "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(self.scheduler_file)], "scheduler")
        deadline = time.monotonic() + timeout
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError(f"the Dask scheduler did not start:\n{self.logs()}")
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give it a moment
        import json

        self.address = json.loads(self.scheduler_file.read_text())["address"]

    def start_worker(self, code: str | None = None) -> subprocess.Popen[bytes]:
        """``dask worker`` (no nanny: killing the process kills the worker), or the same
        command run through ``python -c code`` (a broken worker)."""
        args = ["--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
                "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"]
        if code is None:
            cmd = [sys.executable, "-m", "distributed.cli.dask_worker", *args]
        else:
            cmd = [sys.executable, "-c", code, *args]
        p = self._spawn(cmd, f"worker-{len(self.workers)}")
        self.workers.append(p)
        return p

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        import distributed

        with distributed.Client(self.address, timeout="30s", set_as_default=False) as c:
            try:
                c.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                raise RuntimeError(f"{n} Dask workers did not join:\n{self.logs()}") from None

    def kill_worker(self, p: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)

    def stop(self) -> None:
        """Kill every process of the cluster (throw-away state) and reap it."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=30)


@contextlib.contextmanager
def cluster_of(root: Path, n: int, code: str | None = None) -> Iterator[Cluster]:
    c = Cluster(root)
    try:
        c.start_scheduler()
        for _ in range(n):
            c.start_worker(code)
        if code is None and n:
            c.wait_for_workers(n)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(tmp_path_factory.mktemp("dask"), 2) as c:
        yield c


def study(tmp_path: Path, replications: int = 16) -> Path:
    spec = {"name": "dask-check", "base": "tiny",
            "vary": [{"name": "mining_quota",
                      "change": {"kind": "quota", "quota": "mining", "from": "2025-01-01"},
                      "field": "factor", "values": [0.8, 0.9, 1.0, 1.1]}],
            "replications": replications, "seed": 11, "chunk_replications": 2,
            "record": "monthly"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retwin.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def table(out: Path, name: str) -> pd.DataFrame:
    df = pd.read_parquet(out / name)
    df["point"] = df["point"].astype(str)
    cols = [c for c in df.columns if c != "value"]
    return df.sort_values(cols).reset_index(drop=True)


def test_service_whatifs_run_on_the_cluster_and_equal_local_ones(cluster: Cluster,
                                                                  tmp_path: Path) -> None:
    srv = Server(tmp_path / "served", env={"RETWIN_DASK_ADDRESS": cluster.address})
    (tmp_path / "served").mkdir()
    try:
        srv.start()
        assert httpx.get(f"{srv.url}{API}/health").json()["executor"] == "dask"
        body = whatif(replications=3, seed=4)
        r = httpx.post(f"{srv.url}{API}/runs", json=body, params={"wait": 60}, timeout=90)
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
        on_dask = r.json()["result"]
    finally:
        srv.kill()
    with TestClient(create_app(settings_for(tmp_path / "local"))) as c:
        r = c.post(f"{API}/runs", json=body, params={"wait": 60})
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
        local = r.json()["result"]
    assert on_dask["kpis"] == local["kpis"]
    assert on_dask["difference"] == local["difference"]


def test_a_sweep_survives_a_killed_worker_and_equals_the_local_run(cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    spec = study(tmp_path)
    out = tmp_path / "on-dask"
    with open(tmp_path / "sweep.log", "wb") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "retwin.cli", "sweep", str(spec),
                                  "--out", str(out), "--dask", cluster.address],
                                 cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "kpis").glob("*/*.parquet")):  # some chunks are done
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.monotonic() < deadline, "no chunk finished in 120 s"
            time.sleep(0.05)
        assert sweep.poll() is None, "the sweep ended before a worker could be killed"
        cluster.kill_worker(cluster.workers[0])
        code = sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=30)
    assert code == 0, (tmp_path / "sweep.log").read_text() + cluster.logs()
    retwin.run_batch(spec, tmp_path / "local", workers=1)
    for name in ("kpis", "monthly"):
        pd.testing.assert_frame_equal(table(out, name), table(tmp_path / "local", name))


@pytest.mark.parametrize(("code", "message"), [
    (NO_RETWIN, "cannot import retwin"),
    (OTHER_VERSION, "another retwin version"),
])
def test_a_worker_without_retwin_or_with_another_version_is_a_clear_error(
        tmp_path: Path, code: str, message: str) -> None:
    with cluster_of(tmp_path, 0) as c:
        c.start_worker(code)
        c.wait_for_workers(1)
        r = cli("sweep", str(study(tmp_path, replications=2)), "--out", str(tmp_path / "o"),
                "--dask", c.address)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert not list((tmp_path / "o").glob("kpis/*/*.parquet"))  # no result of any kind


def test_a_task_sent_to_a_worker_of_another_version_is_refused(cluster: Cluster) -> None:
    """A worker that joins after the check at start still cannot return results: every task
    carries the client's version."""
    import distributed

    from retwin.batch.executors import _apply

    with distributed.Client(cluster.address, set_as_default=False) as client:
        fut = client.submit(_apply, len, [1, 2], "x", "0.0.0+other", pure=False)
        with pytest.raises(retwin.RetwinError, match=r"runs retwin .* the client 0\.0\.0"):
            fut.result(timeout=60)
        assert client.submit(_apply, len, [1, 2], "x", retwin.__version__,
                             pure=False).result(timeout=60) == 2
