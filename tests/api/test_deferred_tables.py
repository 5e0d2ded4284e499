"""Tables a stored result writes when first read (:func:`retwin.storage.save_result` with
``defer``, :func:`retwin.storage.complete_result`), and the service that stores its what-ifs
so: a result whose daily series, flows and monthly tables are not written yet is complete
whenever it is read, equal to one written at once, after a restart too, and after a
completion that was interrupted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from apiutil import TestClient, recorded, settings_for, whatif

import retwin
from retwin import whatif as wi
from retwin.storage import (
    DEFERRABLE,
    TableDeferred,
    complete_result,
    deferred_tables,
    is_result_dir,
    read_table,
    rerun_replications,
    save_result,
)
from retwin_service.jobs import deferred_for, result_dir
from retwin_service.main import create_app

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"
TABLES = ("series", "flows", "monthly", "stage_output", "kpis", "summary", "targets",
          "bottlenecks")


@pytest.fixture(scope="module")
def runs() -> retwin.ReplicationSet:
    return retwin.run_replications(retwin.load_scenario("tiny"), 2, seed=3)


def _same_tables(a: Path, b: Path, names: tuple[str, ...] = TABLES) -> None:
    for name in names:
        pd.testing.assert_frame_equal(read_table(a, name), read_table(b, name), obj=name)


# --- storage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("later", [("series", "flows"), DEFERRABLE])
def test_a_deferred_table_is_written_later_as_it_would_have_been_at_once(
        tmp_path: Path, runs: retwin.ReplicationSet, later: tuple[str, ...]) -> None:
    whole = save_result(runs, tmp_path / "whole")
    part = save_result(runs, tmp_path / "part", defer=later)
    assert deferred_tables(part) == sorted(later)
    assert rerun_replications(part) == (1 if set(later) <= {"series", "flows"} else 2)
    assert is_result_dir(part)
    for name in later:
        assert not (part / f"{name}.parquet").exists()
        with pytest.raises(TableDeferred, match=name):
            read_table(part, name)
    _same_tables(whole, part, tuple(t for t in TABLES if t not in later))
    # the same scenario and seed run again: the tables the first write would have made
    again = retwin.run_replications(retwin.load_scenario("tiny"), rerun_replications(part),
                                    seed=3)
    assert complete_result(part, again) == sorted(later)
    assert deferred_tables(part) == [] and rerun_replications(part) == 0
    assert "deferred" not in json.loads((part / "manifest.json").read_text())
    assert is_result_dir(part)
    _same_tables(whole, part)
    assert complete_result(part, again) == []  # nothing left to write


def test_a_completion_with_other_runs_writes_nothing(
        tmp_path: Path, runs: retwin.ReplicationSet) -> None:
    part = save_result(runs, tmp_path / "part", defer=DEFERRABLE)
    before = sorted(p.name for p in part.iterdir())
    other_seed = retwin.run_replications(retwin.load_scenario("tiny"), 2, seed=4)
    with pytest.raises(ValueError, match="another scenario or seed"):
        complete_result(part, other_seed)
    too_few = retwin.run_replications(retwin.load_scenario("tiny"), 1, seed=3)
    with pytest.raises(ValueError, match="need all 2 replications"):
        complete_result(part, too_few)
    assert sorted(p.name for p in part.iterdir()) == before


def test_an_interrupted_completion_reads_as_before_and_completes_again(
        tmp_path: Path, runs: retwin.ReplicationSet) -> None:
    whole = save_result(runs, tmp_path / "whole")
    part = save_result(runs, tmp_path / "part", defer=("series", "flows"))
    # stopped after one table was renamed into place, and while another was being written
    (part / "series.parquet").write_bytes((whole / "series.parquet").read_bytes())
    (part / ".flows.parquet.0123abcd.tmp").write_bytes(b"half a parq")
    assert deferred_tables(part) == ["flows"]
    assert is_result_dir(part) is False  # a temporary file is no part of a result
    _same_tables(whole, part, ("series", "kpis"))
    with pytest.raises(TableDeferred):
        read_table(part, "flows")
    complete_result(part, runs)
    assert is_result_dir(part) and deferred_tables(part) == []
    _same_tables(whole, part)


def test_only_deferrable_tables_may_be_deferred(tmp_path: Path,
                                                runs: retwin.ReplicationSet) -> None:
    with pytest.raises(ValueError, match="defer"):
        save_result(runs, tmp_path / "x", defer=("kpis",))
    assert not (tmp_path / "x").exists()


# --- the service ------------------------------------------------------------------------------


@pytest.mark.parametrize("replications", [1, 3])
def test_the_service_defers_what_one_replication_makes_again(replications: int) -> None:
    assert set(deferred_for(replications)) <= set(DEFERRABLE)
    assert {"series", "flows"} <= set(deferred_for(replications))
    # bands across many replications are written at once: remaking them costs every run
    assert ("monthly" in deferred_for(replications)) is (replications == 1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deferred")


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(data_dir))) as c:
        yield c


def _done(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    """The run of ``body``, answered, and its result stored."""
    r = client.post(f"{API}/runs", params={"wait": 30}, json=body)
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    assert recorded(client, r.json()["id"]).status == "done"
    return dict(r.json())


def _table(client: TestClient, run_id: str, table: str, **params: Any) -> pd.DataFrame:
    r = client.get(f"{API}/runs/{run_id}/{table}", params={"format": "csv", **params})
    assert r.status_code == 200, r.text
    import io

    return pd.read_csv(io.StringIO(r.text))


def _direct(body: dict[str, Any], table: str) -> pd.DataFrame:
    """``table`` of ``body``'s what-if computed here and written at once, as CSV reads it."""
    import io

    w = wi.resolve(retwin.load_scenario(body["model"]), body["changes"])
    res = wi.run(w, replications=body["replications"], seed=body["seed"]).whatif
    df = {"series": res.first.series, "flows": res.first.flows}[table]()
    return pd.read_csv(io.StringIO(df.to_csv(index=False)))


@pytest.mark.parametrize("replications", [1, 2])
def test_a_run_answered_before_its_series_is_written_is_complete_when_read(
        client: TestClient, data_dir: Path, replications: int) -> None:
    body = whatif(replications=replications, seed=11)
    run = _done(client, body)
    d = result_dir(data_dir / "results", _key(client, run["id"]))
    assert set(deferred_tables(d)) == set(deferred_for(replications))
    assert not (d / "series.parquet").exists()
    for table in ("series", "flows"):
        pd.testing.assert_frame_equal(_table(client, run["id"], table), _direct(body, table))
    assert deferred_tables(d) == []
    assert is_result_dir(d)
    # the charts and panels read the monthly tables: written when first asked for too
    r = client.get(f"{API}/runs/{run['id']}/panels/stages")
    assert r.status_code == 200 and r.json()["whatif"], r.text
    base = json.loads((d / "manifest.json").read_text())["baseline_hash"]
    assert deferred_tables(d.parent / base) == []


def _key(client: TestClient, run_id: str) -> str:
    app: Any = client.app
    return str(app.state.service.registry.get_run(run_id).request_hash)


def test_deferred_tables_are_written_after_a_restart(tmp_path: Path) -> None:
    """Nothing the first service held in memory is needed: a result stored by a service
    that stopped right after answering is completed by the next."""
    body = whatif(replications=1, seed=12)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        run = _done(c, body)
        key = _key(c, run["id"])
    d = result_dir(tmp_path / "results", key)
    assert "series" in deferred_tables(d)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        pd.testing.assert_frame_equal(_table(c, run["id"], "series", kind="activity"),
                                      _direct_kind(body, "activity"))
        r = c.get(f"{API}/runs/{run['id']}/charts/sankey")
        assert r.status_code == 200, r.text
    assert deferred_tables(d) == []


def _direct_kind(body: dict[str, Any], kind: str) -> pd.DataFrame:
    df = _direct(body, "series")
    return df[df["kind"] == kind].reset_index(drop=True)


def test_requests_for_one_result_share_one_completion(client: TestClient,
                                                      data_dir: Path) -> None:
    import asyncio

    run = _done(client, whatif(replications=1, seed=13))
    key = _key(client, run["id"])
    app: Any = client.app
    jobs = app.state.service.jobs
    submitted: list[Any] = []
    submit = jobs.executor.submit

    def counting(fn: Any, item: Any, **kw: Any) -> Any:
        submitted.append(item)
        return submit(fn, item, **kw)

    jobs.executor.submit = counting
    try:
        async def both() -> None:
            await asyncio.gather(jobs.complete(key), jobs.complete(key), jobs.complete(key))

        client.portal.call(both)  # type: ignore[union-attr]
    finally:
        jobs.executor.submit = submit
    assert len(submitted) == 1
    assert deferred_tables(result_dir(data_dir / "results", key)) == []


def test_a_completion_on_a_cluster_hands_the_runs_back_and_a_full_disk_says_so(
        tmp_path: Path, runs: retwin.ReplicationSet, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import pickle

    from retwin_service import jobs

    part = save_result(runs, tmp_path / "k", defer=DEFERRABLE)
    scenario = json.loads((part / "scenario.json").read_text())
    # without a results folder (a Dask worker): the runs come back for the server to write
    out = jobs.complete(jobs.Completion("k", scenario, 3, 2, None))
    assert out.status == "done" and out.runs is not None
    assert complete_result(part, out.runs) == sorted(DEFERRABLE)
    # a write refused for lack of space comes back as such (a 507), whatever was pickled
    part = save_result(runs, tmp_path / "full", defer=("series",))

    def full(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs, "complete_result", full)
    with pytest.raises(OSError) as exc:
        jobs.complete(jobs.Completion("full", scenario, 3, 1, str(tmp_path)))
    back = pickle.loads(pickle.dumps(exc.value))
    assert back.errno == errno.ENOSPC and "no space left" in str(back)
    assert deferred_tables(part) == ["series"]


def test_a_forked_child_writes_a_result_after_its_parent_did(
        tmp_path: Path, runs: retwin.ReplicationSet) -> None:
    """Result files are flushed to disk side by side by a pool of threads; a child forked
    after the parent used it has none of those threads, and makes a pool of its own."""
    import os

    save_result(runs, tmp_path / "parent")  # more files than the child's: every thread
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            save_result(runs, tmp_path / "child", defer=DEFERRABLE)
        finally:
            os._exit(0 if is_result_dir(tmp_path / "child") else 1)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung flushing its result")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
