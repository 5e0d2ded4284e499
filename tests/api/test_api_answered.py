"""A what-if is answered as soon as its answer is made, while its worker stores the result:
the answer does not wait for the store. Until the result is stored, this service reads the
run as done, with the same times the registry then records; a route that reads the stored
tables waits for the store; a stop right after the answer still stores the result; a store
that fails after the answer leaves the run failed, never half-written."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiutil import TestClient, recorded, settings_for, whatif

from retwin.batch.executors import SerialExecutor
from retwin_service import jobs as jobs_module
from retwin_service.main import create_app
from retwin_service.registry import Registry

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"


class HeldStore:
    """``retwin_service.jobs.store`` of a what-if held until released (or failing then,
    with ``fail``); a baseline's is stored at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail: OSError | None = None
        self.real = jobs_module.store

    def __call__(self, *a: Any, **kw: Any) -> None:
        if (a[3] if len(a) > 3 else kw.get("baseline_key")) is None:  # a baseline
            self.real(*a, **kw)
            return
        self.entered.set()
        assert self.release.wait(60), "the test never released the store"
        if self.fail is not None:
            raise jobs_module.StoreFailed(str(self.fail)) from self.fail
        self.real(*a, **kw)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldStore]:
    h = HeldStore()
    monkeypatch.setattr(jobs_module, "store", h)
    yield h
    h.release.set()


def _in_process(client: TestClient) -> Any:
    """The client's service computing in this process (where the store is held): the
    worker process it started is closed, a serial executor takes its place."""
    jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
    jobs.close()
    jobs.executor = SerialExecutor(on_progress=jobs._progress, on_message=jobs._message)
    return jobs


def test_the_answer_comes_before_the_store_and_reads_the_same_after(
        tmp_path: Path, held: HeldStore) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        jobs = _in_process(c)
        r = c.post(f"{API}/runs", params={"wait": 30}, json=whatif(seed=41))
        answer = r.json()
        assert r.status_code == 200 and answer["status"] == "done", r.text
        assert answer["result"]["kpis"] and answer["result"]["difference"]
        reg = c.app.state.service.registry  # type: ignore[attr-defined]
        key = reg.get_run(answer["id"]).request_hash
        # answered while the result is still being stored (the answer may come out before
        # the worker starts the store: it does not wait for it)
        assert held.entered.wait(30) and not jobs.stored(key)
        assert not reg.get_run(answer["id"]).finished
        # this service reads the run as it answered it
        assert c.get(answer["links"]["self"]).json() == answer
        # a table is read from the stored result: its request waits for the store
        got: dict[str, httpx.Response] = {}
        reader = threading.Thread(target=lambda: got.setdefault(
            "kpis", c.get(answer["links"]["kpis"], params={"format": "csv"})))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and not got
        # a wait for the store is bounded: past it, the run is read as it is
        t0 = time.monotonic()
        assert c.portal.call(jobs.settle, key, 0.2)  # type: ignore[union-attr]
        assert time.monotonic() - t0 >= 0.2 and not jobs.stored(key)
        held.release.set()
        reader.join(60)
        assert got["kpis"].status_code == 200 and "kpi" in got["kpis"].text
        rec = recorded(c, answer["id"])
        assert rec.status == "done" and jobs.stored(key)
        # the registry records the times the answer gave
        assert rec.finished_at.isoformat() == answer["finished_at"]
        assert rec.started_at.isoformat() == answer["started_at"]
        assert c.get(answer["links"]["self"]).json() == answer
        # the same request again: from the stored result
        again = c.post(f"{API}/runs", params={"wait": 30}, json=whatif(seed=41)).json()
        assert again["status"] == "done" and again["result"] == answer["result"]


def test_a_stop_right_after_the_answer_still_stores_the_result(
        tmp_path: Path, held: HeldStore) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        _in_process(c)
        answer = c.post(f"{API}/runs", params={"wait": 30}, json=whatif(seed=42)).json()
        assert answer["status"] == "done" and held.entered.wait(30)
        reg = c.app.state.service.registry  # type: ignore[attr-defined]
        key = reg.get_run(answer["id"]).request_hash
        threading.Timer(0.2, held.release.set).start()  # stored while the service stops
    assert jobs_module.is_stored(tmp_path / "results", key)
    reg = Registry(settings_for(tmp_path).database_url)
    try:
        rec = reg.get_run(answer["id"])
    finally:
        reg.close()
    assert rec.status == "done" and rec.finished_at.isoformat() == answer["finished_at"]


def test_a_store_that_fails_after_the_answer_leaves_the_run_failed(
        tmp_path: Path, held: HeldStore) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        jobs = _in_process(c)
        answer = c.post(f"{API}/runs", params={"wait": 30}, json=whatif(seed=43)).json()
        assert answer["status"] == "done"
        reg = c.app.state.service.registry  # type: ignore[attr-defined]
        key = reg.get_run(answer["id"]).request_hash
        held.fail = OSError(errno.ENOSPC, "No space left on device")
        held.release.set()
        rec = recorded(c, answer["id"])
        assert rec.status == "failed" and "space" in (rec.error or "").lower()
        assert not jobs.stored(key)
        # read again, it says so; nothing half-written is left
        assert c.get(answer["links"]["self"]).json()["status"] == "failed"
        time.sleep(0.05)
        assert not [p for p in (tmp_path / "results").iterdir() if key in p.name]


def test_a_run_read_unfinished_just_before_it_is_recorded_is_read_again(
        tmp_path: Path, held: HeldStore) -> None:
    """A route reads a run, then looks whether its answer came out before its store. If the
    store ends and the run is recorded between the two, the look finds nothing to wait for:
    the run read first says running, though the answer said done. The run is read again,
    so the route sees it done (and does not answer 409)."""
    from retwin_service.routes.runs import _settled

    with TestClient(create_app(settings_for(tmp_path))) as c:
        jobs = _in_process(c)
        answer = c.post(f"{API}/runs", params={"wait": 30}, json=whatif(seed=44)).json()
        assert answer["status"] == "done" and held.entered.wait(30)
        reg = c.app.state.service.registry  # type: ignore[attr-defined]
        before = reg.get_run(answer["id"])  # read while the result is being stored
        assert not before.finished
        held.release.set()
        assert recorded(c, answer["id"]).status == "done"
        deadline = time.monotonic() + 30
        while jobs.tracked(before.request_hash) and time.monotonic() < deadline:
            time.sleep(0.01)  # the computation ends: nothing is answered early any more
        assert not jobs.tracked(before.request_hash)
        service = c.app.state.service  # type: ignore[attr-defined]
        after = c.portal.call(_settled, service, before)  # type: ignore[union-attr]
        assert after.status == "done"
        # the route that reads a run's stored tables sees it done
        assert c.get(answer["links"]["kpis"], params={"format": "csv"}).status_code == 200
