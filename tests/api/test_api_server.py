"""The service as users run it: ``retwin serve`` in its own process on 127.0.0.1, over HTTP.

The happy path and auth with a token made by ``retwin token create``; Ctrl-C; ``kill -9``
with runs queued and running, then a restart on the same data folder (every accepted run
finishes exactly once); and a bounded concurrent load (50 clients × 20 requests). The last
two run on a SQLite registry and on a live PostgreSQL server (:mod:`pgserver`); on
PostgreSQL two service processes share the database and the data folder: the second takes
over what the killed one was running, and under load no computation is run twice.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pgserver
import pytest
from apiutil import REPO, Server, whatif

pytestmark = pytest.mark.slow

API = "/api/v1"


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Make ``Server`` objects; kill whatever is left of them after the test."""
    servers: list[Server] = []

    def make(data_dir: Path | None = None, **env: str) -> Server:
        s = Server(data_dir or tmp_path, env=env)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The registry's settings: the default SQLite file, or a new database on the live
    PostgreSQL server (with a short claim lease, so a dead process's work is taken over
    quickly)."""
    if request.param == "sqlite":
        yield {}
        return
    pg = pgserver.server()
    url = pg.new_database()
    yield {"RETWIN_DATABASE_URL": url, "RETWIN_CLAIM_LEASE_SECONDS": "3"}
    pg.drop_database(url)


def dispatched(srv: Server) -> int:
    """Tasks the server's workers ran (all outcomes), from its /metrics."""
    text = httpx.get(f"{srv.url}/metrics", timeout=30).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("retwin_computation_seconds_count")))


def retwin_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    env["RETWIN_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "retwin.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_happy_path_with_a_token_and_ctrl_c(server_factory: Any, tmp_path: Path) -> None:
    made = retwin_cli(tmp_path, "token", "create", "ann")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    other = retwin_cli(tmp_path, "token", "create", "bob").stdout.strip().splitlines()[-1]
    srv: Server = server_factory(tmp_path)
    srv.start()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get(f"{API}/runs").status_code == 401
        assert c.get(f"{API}/runs", headers={"Authorization": "Bearer nope"}
                     ).status_code == 401
        r = c.post(f"{API}/runs", json=whatif(), headers=auth)
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        r = c.get(f"{API}/runs/{rid}", params={"wait": 30}, headers=auth)
        run = r.json()
        assert run["status"] == "done"
        assert run["result"]["difference"]
        r = c.get(f"{API}/runs/{rid}/series", params={"plant": "mine", "format": "csv"},
                  headers=auth)
        assert r.status_code == 200 and r.text.startswith("date,kind,id,value")
        assert c.get(f"{API}/runs/{rid}", headers={"Authorization": f"Bearer {other}"}
                     ).status_code == 404
        assert c.get("/docs").status_code == 200
    # the token revoked with the CLI while the server runs
    assert retwin_cli(tmp_path, "token", "revoke", "ann").returncode == 0
    assert httpx.get(f"{srv.url}{API}/runs", headers=auth).status_code == 401
    assert srv.proc is not None
    workers = children(srv.proc.pid)
    code = srv.stop()
    out = srv.output()
    assert code in (0, 130), out
    assert "Traceback" not in out
    assert "API docs at http://127.0.0.1" in out
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)], "worker processes outlived the server"


def test_serve_refuses_a_public_host_without_tokens(tmp_path: Path) -> None:
    r = retwin_cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2
    assert "refusing to serve on 0.0.0.0" in r.stderr


def test_kill_9_and_restart_loses_and_duplicates_nothing(server_factory: Any, tmp_path: Path,
                                                         database: dict[str, str]) -> None:
    """SQLite: kill -9, then a restart finishes everything. PostgreSQL: a second service
    process on the same database is up when the first is killed, and takes its work over."""
    shared = bool(database)
    srv: Server = server_factory(tmp_path, RETWIN_WORKERS="1", **database)
    srv.start()
    if shared:  # the peer, up before the kill
        srv2: Server = server_factory(tmp_path, RETWIN_WORKERS="2", **database)
        srv2.start()
    assert srv.proc is not None
    bodies = [whatif(seed=s, replications=40) for s in range(6)]
    ids = []
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for b in bodies:
            r = c.post(f"{API}/runs", json=b)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill it while one runs and others queue
            states = [c.get(f"{API}/runs/{i}").json()["status"] for i in ids]
            if "running" in states:
                break
            time.sleep(0.05)
    workers = children(srv.proc.pid)
    srv.kill()
    assert "queued" in states, states
    # the killed server's workers stop by themselves
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)]

    if not shared:
        srv2 = server_factory(tmp_path, RETWIN_WORKERS="2")
        srv2.start()
    with httpx.Client(base_url=srv2.url, timeout=60) as c:
        finals = [c.get(f"{API}/runs/{i}", params={"wait": 30}).json() for i in ids]
        listing = c.get(f"{API}/runs", params={"limit": 500}).json()
    assert [f["status"] for f in finals] == ["done"] * len(ids), finals
    assert sorted(x["id"] for x in listing["data"]) == sorted(ids)  # none lost, none added
    assert [f["result"]["seed"] for f in finals] == list(range(6))
    assert all(f["result"]["replications"] == 40 for f in finals)
    results = tmp_path / "results"

    def stored() -> list[str]:
        return sorted(p.name for p in results.iterdir() if not p.name.startswith("."))

    # the last answer may come out while its result is being stored
    deadline = time.monotonic() + 30
    while len(stored()) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(stored()) == 12  # six what-ifs and their six baselines, each once
    assert not [p for p in results.iterdir() if re.match(r"\.[0-9a-f]{64}\.", p.name)]


def test_concurrent_load_loses_nothing_and_never_fails(server_factory: Any, tmp_path: Path,
                                                       database: dict[str, str]) -> None:
    """On PostgreSQL the clients alternate between two service processes sharing the
    database and the data folder: each of the 25 computations is run once, by one of them."""
    env = {"RETWIN_QUEUE_MAX": "1000", "RETWIN_PER_TOKEN_CONCURRENT": "1000", **database}
    servers: list[Server] = [server_factory(tmp_path, **env)
                             for _ in range(2 if database else 1)]
    for s in servers:
        s.start()
    srv = servers[0]
    clients, per_client = 50, 20
    statuses: list[int] = []
    accepted: list[str] = []

    async def one(i: int, c: httpx.AsyncClient) -> None:
        mine: list[str] = []
        for j in range(per_client):
            if j % 4 == 0:  # a what-if; 25 distinct ones, so many are answered from store
                r = await c.post(f"{API}/runs", json=whatif(seed=(i * per_client + j) % 25,
                                                            replications=1))
                if r.status_code in (200, 202):
                    mine.append(r.json()["id"])
            elif j % 4 == 1 and mine:
                r = await c.get(f"{API}/runs/{mine[-1]}")
            elif j % 4 == 2:
                r = await c.get(f"{API}/runs", params={"limit": 5})
            else:
                r = await c.get(f"{API}/models")
            statuses.append(r.status_code)
        accepted.extend(mine)

    async def main() -> float:
        # idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them: a
        # request sent on a connection the server is closing at that moment fails (ReadError)
        limits = httpx.Limits(max_connections=clients, keepalive_expiry=2)
        cs = [httpx.AsyncClient(base_url=s.url, timeout=60, limits=limits) for s in servers]
        try:
            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(
                *(one(i, cs[i % len(cs)]) for i in range(clients))), timeout=120)
            return time.perf_counter() - t0
        finally:
            for c in cs:
                await c.aclose()

    seconds = asyncio.run(main())
    assert len(statuses) == clients * per_client
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 202}
    print(f"\nload: {len(statuses)} requests in {seconds:.1f} s = "
          f"{len(statuses) / seconds:.0f} requests/s")
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        finals = [c.get(f"{API}/runs/{i}", params={"wait": 30}).json()["status"]
                  for i in accepted]
        count = c.get(f"{API}/runs", params={"limit": 1}).json()["count"]
    assert len(accepted) == clients * per_client // 4
    assert finals == ["done"] * len(accepted)
    assert count == len(accepted)
    # 25 what-ifs (each with its baseline), each run once by one process
    assert sum(dispatched(s) for s in servers) == 25
    stored = [p for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")]
    assert len(stored) == 50
    if len(servers) > 1:  # one longer computation asked of both at once: run by one only
        body = whatif(seed=100, replications=200)

        async def both() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(timeout=60) as c:
                rs = await asyncio.gather(*(c.post(f"{s.url}{API}/runs", json=body)
                                            for s in servers))
                assert [r.status_code for r in rs] == [202, 202], [r.text for r in rs]
                return [(await c.get(f"{s.url}{API}/runs/{r.json()['id']}",
                                     params={"wait": 30})).json()
                        for s, r in zip(servers, rs, strict=True)]

        assert [r["status"] for r in asyncio.run(both())] == ["done", "done"]
        for s in servers:  # until neither tracks anything more (a duplicate would be counted)
            deadline = time.monotonic() + 30
            while httpx.get(f"{s.url}{API}/health").json()["in_flight"]:
                assert time.monotonic() < deadline, "a computation outlived its runs"
                time.sleep(0.1)
        assert sum(dispatched(s) for s in servers) == 26
    for s in servers:
        assert s.stop() in (0, 130)


def test_sigterm_stops_it_too(server_factory: Any, tmp_path: Path) -> None:
    srv: Server = server_factory(tmp_path)
    srv.start()
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down in order, then ends by the signal it received
    assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.output()


def test_health_answers_while_large_tables_are_read(server_factory: Any,
                                                    tmp_path: Path) -> None:
    """Eight clients read a 15-year run's daily series at once (the whole table as CSV, and
    JSON without a limit); meanwhile the health check keeps answering, each time within a
    generous bound (before JSON was paged and CSV streamed, it stalled for seconds), and
    several times before the last large read is done."""
    srv: Server = server_factory(tmp_path, RETWIN_WORKERS="1")
    srv.start()
    r = httpx.post(f"{srv.url}{API}/runs", params={"wait": 30}, timeout=60,
                   json={"model": "baotou-2024", "end": "2038-12-31"})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    url = f"{API}/runs/{r.json()['id']}/series"
    bound_s = 3.0

    async def main() -> tuple[list[tuple[int, int, float]], list[float]]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as c:
            loop = asyncio.get_running_loop()

            async def read(params: dict[str, str]) -> tuple[int, int, float]:
                resp = await c.get(url, params=params)
                assert resp.status_code == 200
                return len(resp.content), int(resp.headers["x-total-count"]), loop.time()

            reads = [asyncio.create_task(read(p)) for p in [{"format": "csv"}] * 4 + [{}] * 4]
            answered: list[float] = []
            while not all(t.done() for t in reads):
                h = await c.get(f"{API}/health", timeout=bound_s)  # a stall raises here
                assert h.status_code == 200 and h.json()["status"] == "ok"
                answered.append(loop.time())
                await asyncio.sleep(0.05)
            return await asyncio.gather(*reads), answered

    results, answered = asyncio.run(main())
    total = results[0][1]
    assert total > 500_000  # a large table: every kind of series, daily, for 15 years
    assert all(size > 20_000_000 for size, _, _ in results[:4])  # the whole table as CSV
    assert all(size < 1_000_000 for size, _, _ in results[4:])  # one JSON page
    last_read = max(done for _, _, done in results)
    assert sum(t < last_read for t in answered) >= 3, (answered, last_read)


def test_uvicorn_factory_on_every_address_still_answers_only_this_machine(
        server_factory: Any, tmp_path: Path) -> None:
    """``uvicorn --factory retwin_service.main:create_app --host 0.0.0.0`` with no token: the
    settings say loopback, the socket does not; each request's peer and Host decide. (The peer from
    elsewhere is the one a proxy on this machine reports, all traffic staying on 127.0.0.1.)"""
    srv: Server = server_factory(tmp_path, FORWARDED_ALLOW_IPS="127.0.0.1")
    srv.factory, srv.host = True, "0.0.0.0"
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get(f"{API}/runs").status_code == 200
        for path in (f"{API}/health", f"{API}/runs", "/docs", "/"):
            r = c.get(path, headers={"X-Forwarded-For": "198.51.100.7"})
            assert r.status_code == 403, (path, r.text)
            assert "198.51.100.7" in r.json()["detail"]
        r = c.post(f"{API}/runs", json=whatif(), headers={"Host": "rebound.example:8000"})
        assert r.status_code == 403 and "loopback names" in r.json()["detail"]
        assert c.get(f"{API}/runs").json()["count"] == 0
    made = retwin_cli(tmp_path, "token", "create", "ann")
    token = made.stdout.strip().splitlines()[-1]
    time.sleep(1.1)  # the "no token exists" answer is reused for up to a second
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get(f"{API}/runs", headers={"X-Forwarded-For": "198.51.100.7",
                                          "Authorization": f"Bearer {token}"})
        assert r.status_code == 200  # with tokens, the token decides
