"""Helpers of the service tests: request bodies, settings on a temporary data folder, and
real ``retwin serve`` processes on a free 127.0.0.1 port.

(Not a ``conftest.py``: the suite's own ``tests/conftest.py`` is imported by name.) The tiny
model keeps every computation short. An in-process app starts one worker process, so test
modules share their clients.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from retwin_service.settings import Settings

with warnings.catch_warnings():  # Starlette's TestClient would rather have httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient as _TestClient


class TestClient(_TestClient):
    """Starlette's test client as a caller on this machine: peer 127.0.0.1 and
    ``Host: 127.0.0.1`` (a service with no token answers nobody else)."""

    __test__ = False

    def __init__(self, app: Any, **kw: Any) -> None:
        kw.setdefault("base_url", "http://127.0.0.1")
        kw.setdefault("client", ("127.0.0.1", 50000))
        super().__init__(app, **kw)

__all__ = ["QUOTA_CUT", "REPO", "Server", "TestClient", "free_port", "recorded",
           "settings_for", "whatif"]

REPO = Path(__file__).resolve().parents[2]

#: A small what-if on the tiny model (its mining quota cut 10 % from 2025).
QUOTA_CUT: dict[str, Any] = {"kind": "quota", "quota": "mining", "factor": 0.9,
                             "from": "2025-01-01"}


def whatif(**kw: Any) -> dict[str, Any]:
    """A request body on the tiny model; keyword arguments replace its fields."""
    body: dict[str, Any] = {"model": "tiny", "changes": [QUOTA_CUT], "replications": 2,
                            "seed": 1}
    body.update(kw)
    return body


def recorded(client: Any, run_id: str, timeout: float = 60) -> Any:
    """Run ``run_id`` as the in-process service's registry records it, once finished there:
    an answer may come out before its result is stored, and the registry records the run
    (and the result is on disk) with the store."""
    reg = client.app.state.service.registry
    deadline = time.monotonic() + timeout
    while not (rec := reg.get_run(run_id)).finished and time.monotonic() < deadline:
        time.sleep(0.005)
    return rec


def settings_for(data_dir: Path, **kw: Any) -> Settings:
    """Test settings: one worker, no baseline precomputed, nothing from the environment's
    ``RETWIN_*`` variables that the test does not set."""
    base: dict[str, Any] = {"data_dir": data_dir, "workers": 1, "precompute": [],
                            "host": "127.0.0.1", "database_url": ""}
    base.update(kw)
    return Settings(**base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A ``retwin serve`` subprocess on 127.0.0.1 (or, with ``factory``, the documented
    ``uvicorn --factory retwin_service.main:create_app``)."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    factory: bool = False
    host: str = "127.0.0.1"
    log_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start the server; return the seconds until its health check answered."""
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
        env.update({"RETWIN_DATA_DIR": str(self.data_dir), "RETWIN_PRECOMPUTE": "[]",
                    "RETWIN_WORKERS": "2", "RETWIN_LOG_LEVEL": "warning",
                    "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        self.log = (self.log_dir or self.data_dir) / f"server-{time.time_ns()}.log"
        t0 = time.perf_counter()
        if self.factory:
            cmd = [sys.executable, "-m", "uvicorn", "--factory", "retwin_service.main:create_app",
                   "--host", self.host, "--port", str(self.port), "--log-level", "warning"]
        else:
            cmd = [sys.executable, "-m", "retwin.cli", "serve", "--host", self.host,
                   "--port", str(self.port)]
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not answer in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def kill(self) -> None:
        """``kill -9`` the server (its worker processes notice and stop)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        """Ctrl-C: SIGINT, then wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise
        return int(self.proc.returncode)
