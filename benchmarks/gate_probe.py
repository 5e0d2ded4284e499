"""One side of the regression gate (``benchmarks/gate.py``): a long-lived process that times
the core benchmarks of the retwin it imports, on request.

The gate starts one probe per tree (the working tree's and the previous commit's, each with
its own Python) and talks to both over stdin/stdout in JSON lines, so the two trees run the
same measuring code, one after the other, round by round. Only public API and a few stable
internals are used; a benchmark the imported tree cannot run answers ``ok: false`` with the
reason, and the gate skips it for both trees.

Requests: ``{"op": "setup", "bench": name}``, ``{"op": "time", "bench": name, "n": k}``
(``k`` timed calls; the answer lists their seconds), ``{"op": "quit"}``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "baotou-2024"

#: The benchmarks of the gate, in the order they run in a round.
BENCHES = ("warm_run", "kernel", "results", "replications_100", "whatif_http", "cold_start")


_TICK = os.sysconf("SC_CLK_TCK")


def _live_descendants_cpu(pid: int) -> float:
    """CPU seconds of the running descendants of ``pid`` (the service's worker processes),
    from /proc; 0 where /proc is not there."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        return 0.0
    for k in kids:
        try:
            with open(f"/proc/{k}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
        total += _live_descendants_cpu(k)
    return total


def _children_cpu() -> float:
    """CPU seconds of the children this process waited for and of those still running."""
    t = os.times()
    return t.children_user + t.children_system + _live_descendants_cpu(os.getpid())


class _Probe:
    def __init__(self) -> None:
        self.calls: dict[str, Callable[[], object]] = {}
        self._compiled: Any = None
        self._keep: list[Any] = []  # context managers held open until the probe quits

    def compiled(self) -> Any:
        if self._compiled is None:
            import retwin

            try:  # the model's own chain kernel too, as `retwin warmup` compiles it
                retwin.warmup(MODEL)
            except TypeError:  # a tree from before chain kernels: the general kernels only
                retwin.warmup()
            self._compiled = retwin.prepare(retwin.load_scenario(MODEL))
        return self._compiled

    # --- one setup per benchmark: returns the call to time (untimed work done here) -------

    def setup_warm_run(self) -> Callable[[], object]:
        import retwin

        self.compiled()
        sc = retwin.load_scenario(MODEL)

        def call() -> object:  # prepare (compile the scenario) and run, as `retwin.run` does
            res = retwin.run(sc, seed=1)
            assert res.balance.closes
            return res
        return call

    def setup_kernel(self) -> Callable[[], object]:
        # the engine's own call (in either tree): the run's arrays, nothing packed or copied,
        # the kernel the run takes (a tree with chain kernels: the model's own)
        from retwin.engine.model import ChainModel, advance_packed

        c = self.compiled()

        def call() -> object:
            m = ChainModel(c, seed=0)
            m.env.run(until=1)  # day-0 events (quota year, prices, demand): not the kernel
            t0, c0 = time.perf_counter(), time.process_time()
            getattr(m, "_advance", advance_packed)(0, c.n_days, *m._packed)
            return time.perf_counter() - t0, time.process_time() - c0  # the kernel call only
        return call

    def setup_results(self) -> Callable[[], object]:
        """What a what-if asks of a finished run: KPIs, bottlenecks with the binding table,
        targets and the monthly series, on a fresh result each call."""
        import dataclasses

        import retwin

        res = retwin.run(self.compiled(), seed=1)

        def call() -> object:
            r = dataclasses.replace(res)  # a new result: nothing cached yet
            r.kpis  # noqa: B018
            r.bottlenecks  # noqa: B018
            r.target_table  # noqa: B018
            r.monthly_values()
            return r
        return call

    def setup_replications_100(self) -> Callable[[], object]:
        import retwin

        c = self.compiled()

        def call() -> object:
            rs = retwin.run_replications(c, 100, seed=3)
            assert len(rs.kpi_frames) == 100
            return rs
        return call

    def setup_whatif_http(self) -> Callable[[], object]:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fastapi.testclient import TestClient
        from retwin_service.main import create_app
        from retwin_service.settings import Settings

        self.compiled()  # kernels compiled in this process as well
        d = tempfile.TemporaryDirectory(prefix="retwin-gate-")
        self._keep.append(d)
        settings = Settings(data_dir=Path(d.name), workers=1, precompute=[MODEL])
        # a loopback peer and Host: the service answers those without an API token
        client = TestClient(create_app(settings), base_url="http://127.0.0.1",
                            client=("127.0.0.1", 50000))
        client.__enter__()
        self._keep.append(client)
        r = client.post("/api/v1/runs", json={"model": MODEL}, params={"wait": 300})
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
        counter = iter(range(10**9))

        def call() -> object:
            f = 0.9 - next(counter) * 1e-5  # a new what-if each call (else it is cached)
            body = {"model": MODEL, "replications": 1, "seed": 0,
                    "changes": [{"kind": "quota", "quota": "mining", "factor": f,
                                 "from": "2025-01-01"}]}
            r = client.post("/api/v1/runs", json=body, params={"wait": 60})
            run = r.json()
            assert r.status_code == 200 and run["status"] == "done", r.text
            return run
        # two what-ifs untimed: the worker's first run of a changed scenario
        call()
        call()
        return call

    def setup_cold_start(self) -> Callable[[], object]:
        cmd = [sys.executable, "-m", "retwin.cli", "run", MODEL]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}

        def call() -> object:
            return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env)
        call()  # the kernel cache written, the files in the page cache
        return call

    # --- requests -------------------------------------------------------------------------

    def setup(self, bench: str) -> dict[str, Any]:
        try:
            call = getattr(self, f"setup_{bench}")()
            call()  # one untimed warm-up call
        except Exception as exc:  # the tree at hand cannot run this benchmark
            traceback.print_exc(file=sys.stderr)
            return {"ok": False, "why": f"{type(exc).__name__}: {exc}"[:300]}
        self.calls[bench] = call
        return {"ok": True}

    def time(self, bench: str, n: int) -> dict[str, Any]:
        """``n`` calls: wall seconds, and CPU seconds of this process and of the children it
        waited for (what the scheduler gave the work, whatever else ran on the machine)."""
        call = self.calls[bench]
        wall, cpu = [], []
        for _ in range(n):
            gc.collect()
            t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
            inner = call()
            took = time.perf_counter() - t0
            used = time.process_time() - c0 + _children_cpu() - k0
            if isinstance(inner, tuple):  # the call timed its own part
                took, used = inner
            wall.append(took)
            cpu.append(used)
        return {"wall": wall, "cpu": cpu}

    def close(self) -> None:
        for k in reversed(self._keep):
            if hasattr(k, "__exit__"):
                k.__exit__(None, None, None)
            else:
                k.cleanup()


def main() -> None:
    # the protocol keeps the real stdout; anything the code under test prints goes to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    probe = _Probe()
    import retwin

    proto.write(json.dumps({"ready": True, "version": getattr(retwin, "__version__", "?"),
                            "path": str(Path(retwin.__file__).parent)}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        answer = probe.setup(req["bench"]) if req["op"] == "setup" else \
            probe.time(req["bench"], int(req["n"]))
        proto.write(json.dumps(answer) + "\n")
    probe.close()


if __name__ == "__main__":
    main()
