"""A full data folder: writes refused for lack of space answer 507 "no space left in the
data folder", the health check says so, and the service recovers by itself when space
returns.

The end-to-end test puts the data folder on a real, small tmpfs (``mount -t tmpfs``, as
root; CI runs as root) and fills it; the in-process tests inject the errors SQLite and the
OS give (ENOSPC) where a write happens.
"""

from __future__ import annotations

import errno
import os
import pickle
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from apiutil import Server, TestClient, settings_for, whatif

from retwin_service.jobs import StoreFailed, public_error
from retwin_service.main import create_app
from retwin_service.space import Space, is_no_space

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"
MiB = 1 << 20


def _sqlite_full() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT INTO runs ...", {},
                                   sqlite3.OperationalError("database or disk is full"))


class _Orig(Exception):
    sqlstate = "53100"  # PostgreSQL's disk_full


@pytest.mark.parametrize(("exc", "full"), [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (pickle.loads(pickle.dumps(OSError(28, "Error writing bytes to file. Detail: [errno 28] "
                                           "No space left on device"))), True),
    (_sqlite_full(), True),
    (sa.exc.OperationalError("INSERT", {}, _Orig("could not extend file")), True),
    (RuntimeError("wrapped"), False),
    (PermissionError(errno.EACCES, "Permission denied"), False),
    # a result the data folder would not take, as the worker reports it
    (StoreFailed("storing 0123abcd: /srv/data/results/0123: cannot write it: Error writing "
                 "bytes to file. Detail: [errno 28] No space left on device"), True),
    (StoreFailed("storing 0123abcd: /srv/data/results/0123: cannot write it: read-only "
                 "file system"), False),
    (sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked")),
     False),
])
def test_a_full_disk_is_told_from_other_failures(exc: BaseException, full: bool) -> None:
    assert is_no_space(exc) is full
    try:  # as a cause, too
        raise RuntimeError("storing failed") from exc
    except RuntimeError as wrapped:
        assert is_no_space(wrapped) is full
    msg = public_error(exc)
    assert ("no space left in the data folder" in msg) is full
    assert full or "internal error" in msg
    assert "/srv" not in msg  # the server's paths stay in its log


class _Disk:
    """Free bytes of the data folder, as the test says."""

    def __init__(self, free: int) -> None:
        self.free = free

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(Space, "free_bytes", lambda _space: self.free)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, _Disk]]:
    d = _Disk(10 * 1024 * MiB)
    d.install(monkeypatch)
    with TestClient(create_app(settings_for(tmp_path, min_free_mb=1))) as c:
        yield c, d


def _health(c: TestClient) -> dict[str, Any]:
    r = c.get(f"{API}/health")
    assert r.status_code == 200
    return dict(r.json())


def test_a_nearly_full_folder_refuses_new_runs_until_space_returns(
        disk: tuple[TestClient, _Disk]) -> None:
    c, d = disk
    assert _health(c)["status"] == "ok"
    d.free = 1000
    r = c.post(f"{API}/runs", json=whatif())
    assert r.status_code == 507
    assert r.json()["detail"].startswith("no space left in the data folder (1000 bytes free")
    assert c.get(f"{API}/runs").json()["count"] == 0  # nothing stored
    h = _health(c)
    assert h["status"] == "degraded" and "no space left in the data folder" in h["reasons"][0]
    assert h["data_free_bytes"] == 1000
    d.free = 5 * 1024 * MiB  # space returns: no restart needed
    assert _health(c)["status"] == "ok"
    r = c.post(f"{API}/runs", json=whatif(), params={"wait": 30})
    assert r.status_code == 200 and r.json()["status"] == "done"


@pytest.mark.parametrize("where", ["add_run", "cancel"])
def test_a_write_the_database_refuses_for_lack_of_space_is_a_507(
        disk: tuple[TestClient, _Disk], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    c, d = disk
    reg: Any = c.app.state.service.registry  # type: ignore[attr-defined]
    rid = None
    if where == "cancel":
        rid = c.post(f"{API}/runs", json=whatif(replications=900, seed=77)).json()["id"]

    def full(*_a: Any, **_k: Any) -> Any:
        raise _sqlite_full()

    monkeypatch.setattr(reg, where, full)
    r = c.post(f"{API}/runs", json=whatif(seed=78)) if rid is None else c.delete(
        f"{API}/runs/{rid}")
    assert r.status_code == 507, r.text
    assert r.json() == {"detail": "no space left in the data folder; free some space there "
                                  "(RETWIN_DATA_DIR) and try again"}
    h = _health(c)  # the folder still shows room, but a write was just refused
    assert h["status"] == "degraded" and "a write was refused" in h["reasons"][0]
    monkeypatch.undo()
    d.install(monkeypatch)
    d.free += 64 * MiB  # room made
    assert _health(c)["status"] == "ok"
    if rid is not None:
        assert c.delete(f"{API}/runs/{rid}").json()["status"] == "cancelled"


def test_any_other_os_error_stays_an_internal_error(disk: tuple[TestClient, _Disk],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    c, _ = disk
    service: Any = c.app.state.service  # type: ignore[attr-defined]

    def denied(*_a: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied: /secret/path")

    monkeypatch.setattr(service, "prepare", denied)
    r = TestClient(c.app, raise_server_exceptions=False).post(f"{API}/runs", json=whatif())
    assert r.status_code == 500 and "incident" in r.json()["detail"]
    assert "/secret" not in r.text
    assert _health(c)["status"] == "ok"


# --- a real full disk ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, mounted for the test and unmounted after it."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _fill(folder: Path, leave: int) -> Path:
    """Fill ``folder`` until at most ``leave`` bytes are free."""
    filler = folder / f"filler-{time.time_ns()}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while (room := _free(folder) - leave) > 0:
            try:
                os.write(fd, b"\0" * min(room, MiB))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    assert _free(folder) <= leave
    return filler


@pytest.mark.slow
def test_a_full_tmpfs_data_folder(small_disk: Path, tmp_path: Path) -> None:
    srv = Server(small_disk, log_dir=tmp_path, env={"RETWIN_WORKERS": "1",
                                                     "RETWIN_MIN_FREE_MB": "0"})
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get(f"{API}/health").json()["status"] == "ok"
            # room for the run's row, not for its result (what is stored before the answer:
            # with two replications the monthly tables too, some 200 KB for its baseline
            # alone): the run fails, saying why
            fillers = [_fill(small_disk, 160 * 1024)]
            long = whatif(end="2038-12-31", replications=2)
            r = c.post(f"{API}/runs", json=long)
            assert r.status_code == 202, r.text
            run = c.get(f"{API}/runs/{r.json()['id']}", params={"wait": 30}).json()
            assert run["status"] == "failed", run
            assert "no space left in the data folder" in run["error"]
            h = c.get(f"{API}/health").json()
            assert h["status"] == "degraded" and "no space left" in h["reasons"][0], h
            # no room at all: SQLite cannot store the next run
            fillers.append(_fill(small_disk, 0))
            r = c.post(f"{API}/runs", json=whatif(seed=2))
            assert r.status_code == 507, r.text
            assert r.json() == {"detail": "no space left in the data folder; free some space "
                                          "there (RETWIN_DATA_DIR) and try again"}
            assert c.get(f"{API}/runs").json()["count"] == 1  # reads still work
            assert c.get(f"{API}/health").json()["status"] == "degraded"
            # space returns: the service works again by itself
            for f in fillers:
                f.unlink()
            assert c.get(f"{API}/health").json()["status"] == "ok"
            r = c.post(f"{API}/runs", json=long, params={"wait": 30})
            assert r.status_code == 200 and r.json()["status"] == "done", r.text
            # answered as soon as made; every KPI is read from the stored result, once stored
            full = c.get(f"{API}/runs/{r.json()['id']}", params={"detail": "full"})
            assert full.json()["status"] == "done", full.text
            # its daily series is written when first read: with no room, that read is a
            # 507 and leaves the result as it was; with room again, it is written
            filler = _fill(small_disk, 0)
            s = c.get(f"{API}/runs/{r.json()['id']}/series", params={"format": "csv"})
            assert s.status_code == 507 and "no space left" in s.json()["detail"], s.text
            filler.unlink()
            s = c.get(f"{API}/runs/{r.json()['id']}/series", params={"format": "csv"})
            assert s.status_code == 200 and s.text.startswith("date,kind,id,value")
        assert "Traceback" not in srv.output(), srv.output()
    finally:
        srv.kill()
