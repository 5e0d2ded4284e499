"""The worker side of a computation, run in this process: store, reuse, difference, cancel."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from apiutil import QUOTA_CUT

import retwin
from retwin import whatif
from retwin.batch.executors import ProcessExecutor, SerialExecutor, task_hooks
from retwin.scenario import scenario_hash
from retwin.storage import read_table
from retwin_service import tables
from retwin_service.encode import dumps
from retwin_service.jobs import (
    Compute,
    Jobs,
    Sent,
    Source,
    StoreFailed,
    Task,
    Warm,
    answer_hashed,
    answer_of,
    compute,
    is_stored,
    public_error,
    reference_model,
    result_dir,
    store,
)
from retwin_service.registry import Registry, sqlite_url


def task(root: Path, key: str = "w", changes: tuple[Any, ...] = (QUOTA_CUT,), n: int = 2,
         base: str | None = "b") -> Task:
    return Task(key=key, whatif=whatif.resolve(retwin.load_scenario("tiny"), changes), seed=3,
                replications=n, baseline_key=base if changes else None, results_root=str(root))


def test_a_whatif_stores_its_baseline_and_its_paired_difference(tmp_path: Path) -> None:
    out = compute(task(tmp_path))
    assert out.status == "done" and not out.cached
    assert is_stored(tmp_path, "w") and is_stored(tmp_path, "b")
    diff = read_table(result_dir(tmp_path, "w"), "difference")
    # the same difference as two fresh replication sets give
    tiny = retwin.load_scenario("tiny")
    fresh_w = retwin.run_replications(retwin.apply_changes(tiny, [QUOTA_CUT]), 2, seed=3)
    fresh_b = retwin.run_replications(tiny, 2, seed=3)
    want = fresh_w.difference(fresh_b)
    pd.testing.assert_frame_equal(diff.reset_index(drop=True), want.reset_index(drop=True),
                                  check_dtype=False)
    assert compute(task(tmp_path)).cached


@pytest.mark.parametrize(("changes", "n"), [((QUOTA_CUT,), 1), ((QUOTA_CUT,), 2), ((), 1)])
def test_the_answer_made_from_what_the_worker_hands_over_is_the_one_read_back(
        tmp_path: Path, changes: tuple[Any, ...], n: int) -> None:
    """A worker hands its answer over, made and encoded, before it stores the result; the
    answer is the stored tables read back (every row and number, every detail)."""
    got: list[tuple[str, Any]] = []
    ex = SerialExecutor(on_message=lambda key, payload: got.append((key, payload)))
    t = task(tmp_path, changes=changes, n=n)
    out = ex.submit(Compute(), t, key=t.key).result()
    assert out.status == "done" and [(k, p[0]) for k, p in got] == [("w", "answer")]
    encoded = pickle.loads(pickle.dumps(got[0][1][1]))  # it travels between processes
    stored = tables._stored_result(tmp_path, "w", "headline")
    assert json.loads(encoded) == {**stored, "scenario_hash": None}  # the server's to add
    assert answer_hashed(encoded, t.whatif.scenario.name, t.whatif.scenario_hash) == \
        dumps(stored)
    assert stored["scenario_hash"] == t.whatif.scenario_hash
    assert ex.submit(Compute(), t, key=t.key).result().cached and len(got) == 1
    res = whatif.run(t.whatif, replications=n, seed=3)
    store(res, tmp_path, "again", "b" if changes else None)
    assert answer_of(res, tmp_path, "again") == tables._stored_result(tmp_path, "again",
                                                                      "headline")
    m = tables.manifest(tmp_path, "again")
    for detail in ("headline", "full"):
        made = tables.result_of(m, res.whatif.summary, res.difference,
                                res.whatif.first.target_table, res.whatif.first.bottlenecks,
                                detail)
        assert made == tables._stored_result(tmp_path, "again", detail)
        assert tables.result_json(m, res.whatif.summary, res.difference,
                                  res.whatif.first.target_table, res.whatif.first.bottlenecks,
                                  detail) == dumps(made)
        assert (made["difference"] is None) == (not changes)


def _hand_over(key: str) -> str:
    hooks = task_hooks()
    hooks.progress(key, 0, 1)
    hooks.message(key, {"part": [1, 2]})
    hooks.progress(key, 1, 1)
    return key


def test_a_worker_process_hands_messages_over_in_order_with_its_progress() -> None:
    seen: list[tuple[Any, ...]] = []
    with ProcessExecutor(1, on_progress=lambda *a: seen.append(("progress", *a)),
                         on_message=lambda *a: seen.append(("message", *a))) as ex:
        assert ex.submit(_hand_over, "k", key="k").result(timeout=120) == "k"
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == [("progress", "k", 0, 1), ("message", "k", {"part": [1, 2]}),
                    ("progress", "k", 1, 1)]


def test_a_warmed_worker_imports_nothing_while_it_computes(tmp_path: Path) -> None:
    """What a worker's first what-if and its stored baseline need is loaded as the worker
    starts (Compute.prepare), not while a request waits."""
    code = (
        "import sys\n"
        "import retwin\n"
        "from retwin import whatif\n"
        "from retwin_service.jobs import Compute, Task, compute\n"
        "Compute().prepare()\n"
        "tiny = retwin.load_scenario('tiny')\n"
        "before = set(sys.modules)\n"
        f"root = {str(tmp_path)!r}\n"
        "compute(Task(key='b', whatif=whatif.resolve(tiny), seed=0, replications=1,\n"
        "             baseline_key=None, results_root=root))\n"
        "cut = [{'kind': 'quota', 'quota': 'mining', 'factor': 0.9}]\n"
        "out = compute(Task(key='w', whatif=whatif.resolve(tiny, cut), seed=0,\n"
        "                   replications=1, baseline_key='b', results_root=root))\n"
        "assert out.status == 'done', out\n"
        "print(sorted(set(sys.modules) - before))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_computed_baseline_is_loaded_by_every_worker(tmp_path: Path) -> None:
    """Once a baseline is computed (or found stored), each worker is given it to load
    (Warm), so that no request waits for a worker's first read of it."""
    seen: list[Any] = []

    class Recording(SerialExecutor):
        def submit(self, fn: Any, item: Any, *, key: str | None = None) -> Any:
            seen.append(item)
            return super().submit(fn, item, key=key)

    async def main() -> None:
        reg = Registry(sqlite_url(tmp_path / "reg.sqlite3"))
        jobs = Jobs(reg, tmp_path / "results", workers=3)
        jobs.executor = Recording()
        base = task(tmp_path / "results", key="b", changes=())
        for _ in range(2):  # computed, then found stored
            assert (await jobs.ensure(base)).status == "done"
            while jobs._warming:
                await asyncio.sleep(0.01)
        reg.close()

    asyncio.run(main())
    warm = [x for x in seen if isinstance(x, Warm)]
    assert warm == [Warm(str(tmp_path / "results"), "b")] * 6
    assert Compute()(warm[0]).cached  # its KPIs are stored: loaded
    assert not Compute()(Warm(str(tmp_path / "results"), "gone")).cached


def test_a_computation_claimed_ahead_is_not_claimed_again(tmp_path: Path) -> None:
    """A run's computation claimed as the run is recorded (claim_ahead) starts without a
    second claim, and its claim is released once it is done; one another process holds
    is not claimed ahead."""
    claims: list[str] = []

    async def main() -> None:
        reg = Registry(sqlite_url(tmp_path / "reg.sqlite3"))
        claim = reg.claim

        def counted(key: str, holder: str, lease_s: float) -> bool:
            claims.append(key)
            return claim(key, holder, lease_s)

        reg.claim = counted  # type: ignore[method-assign]
        jobs = Jobs(reg, tmp_path / "results", workers=1)
        jobs.executor = SerialExecutor()
        base = task(tmp_path / "results", key="b", changes=())
        assert jobs.claim_ahead(base) and claims == ["b"]
        assert (await jobs.ensure(base, claimed=True)).status == "done"
        assert claims == ["b"] and reg.holder_of("b") is None  # released once done
        other = task(tmp_path / "results", key="o", changes=())
        assert claim("o", "another-process", 60)
        assert not jobs.claim_ahead(other) and reg.holder_of("o") == "another-process"
        reg.close()

    asyncio.run(main())


def test_a_stored_baseline_is_reused(tmp_path: Path) -> None:
    compute(task(tmp_path, key="b", changes=()))
    before = (result_dir(tmp_path, "b") / "manifest.json").stat().st_mtime_ns
    compute(task(tmp_path, key="w2"))
    assert (result_dir(tmp_path, "b") / "manifest.json").stat().st_mtime_ns == before


def test_without_a_results_folder_the_result_comes_back_whole(tmp_path: Path) -> None:
    """As on a Dask cluster: nothing is written, the server gets what-if and baseline."""
    t = Task(**{**task(tmp_path).__dict__, "results_root": None})
    out = compute(pickle.loads(pickle.dumps(t)))  # it travels as it is
    assert out.status == "done" and out.result is not None
    assert out.result.baseline is not None and out.result.difference is not None
    assert not any(tmp_path.iterdir())


def test_a_cancelled_task_stops_between_replications(tmp_path: Path) -> None:
    ex = SerialExecutor()
    ex.cancel("w")
    out = ex.submit(Compute(), task(tmp_path)).result()
    assert out.status == "cancelled"
    assert not is_stored(tmp_path, "w")
    ex.uncancel("w")
    assert ex.submit(Compute(), task(tmp_path)).result().status == "done"


def test_progress_counts_both_runs_and_ends_at_the_total(tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    ex = SerialExecutor(on_progress=lambda *m: seen.append(m))
    assert ex.submit(Compute(), task(tmp_path, n=3)).result().status == "done"
    assert seen[0] == ("w", 0, 6) and seen[-1] == ("w", 6, 6)  # baseline and what-if


def sourced(root: Path, end: str | None = None, model_hash: str | None = None) -> Task:
    """:func:`task` as the service makes it: with where its what-if comes from."""
    tiny = retwin.load_scenario("tiny")
    w = whatif.resolve(tiny, (QUOTA_CUT,), end=end)
    return Task(key="w", whatif=w, seed=3, replications=1, baseline_key="b",
                results_root=str(root),
                source=Source("tiny", model_hash or scenario_hash(tiny), end, w.changes))


@pytest.mark.parametrize("end", [None, "2025-06-30"])
def test_a_reference_models_task_goes_to_a_worker_as_its_model_and_changes(
        tmp_path: Path, end: str | None) -> None:
    """What a local worker receives names the model, end and changes; it resolves them
    into the same what-if (the same scenarios, by hash), in a small part of the bytes."""
    t = sourced(tmp_path, end)
    sent = t.sent()
    assert isinstance(sent, Sent)
    blob = pickle.dumps(sent)
    assert len(blob) * 10 < len(pickle.dumps(t))
    back = pickle.loads(blob).task()
    assert back.whatif.scenario_hash == t.whatif.scenario_hash
    assert back.whatif.baseline_hash == t.whatif.baseline_hash
    assert back.whatif.changes == t.whatif.changes
    assert back.whatif.scenario.end == t.whatif.scenario.end
    assert (back.key, back.seed, back.replications, back.baseline_key, back.results_root,
            back.source) == (t.key, t.seed, t.replications, t.baseline_key, t.results_root,
                             t.source)
    # without a source, or with a baseline's KPIs to carry (to a cluster), it goes whole
    assert Task("w", t.whatif, 3, 1, "b", str(tmp_path)).sent().whatif is t.whatif
    kpis = pd.DataFrame({"kpi": ["x"]})
    with_kpis = Task("w", t.whatif, 3, 1, "b", None, kpis, t.source)
    assert with_kpis.sent() is with_kpis
    # computed, it is the what-if the whole task gives
    assert compute(sent).status == "done"
    assert read_table(result_dir(tmp_path, "w"), "kpis").equals(
        compute_whole(t, tmp_path / "whole"))


def compute_whole(t: Task, root: Path) -> pd.DataFrame:
    out = compute(Task(t.key, t.whatif, t.seed, t.replications, t.baseline_key, str(root)))
    assert out.status == "done"
    return read_table(result_dir(root, t.key), "kpis")


def test_a_task_whose_model_changed_since_it_was_accepted_fails_saying_so(
        tmp_path: Path) -> None:
    stale = sourced(tmp_path, model_hash="0" * 64).sent()
    assert isinstance(stale, Sent)
    out = compute(stale)
    assert out.status == "failed"
    assert "the model 'tiny' changed since this run was accepted" in (out.error or "")
    assert not is_stored(tmp_path, "w") and not is_stored(tmp_path, "b")
    tiny = retwin.load_scenario("tiny")
    assert reference_model("tiny", scenario_hash(tiny)).name == tiny.name


def test_a_failure_in_the_worker_comes_back_as_an_outcome(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def leaks(*_a: Any, **_k: Any) -> Any:
        raise retwin.MassBalanceError("element Nd leaks 3 t REO")

    monkeypatch.setattr(whatif, "run", leaks)
    out = compute(task(tmp_path))
    assert out.status == "failed" and "Nd leaks" in (out.error or "")
    assert not is_stored(tmp_path, "w")


def test_a_worker_needs_none_of_the_services_web_or_database_packages() -> None:
    """A Dask worker with ``retwin[dist]`` only can run the service's tasks."""
    blocked = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic_settings")
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "import retwin_service.jobs as j\nimport retwin_service.tables\n"
            + "print(j.Compute.cache_key)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("reason", "told"), [
    ("cannot write it: [errno 28] No space left on device", "no space left in the data folder"),
    ("cannot write it: read-only file system", "internal error"),
])
def test_a_result_that_cannot_be_stored_is_the_services_fault(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str, told: str) -> None:
    """Not the request's: it reaches the server as an exception (which tells a full data
    folder, for the health check, from an internal error), and no path goes to the client."""
    def refused(_res: Any, out: Any, **_k: Any) -> Any:
        raise retwin.ScenarioError([(str(out), reason)])  # as retwin.storage reports it

    monkeypatch.setattr(whatif, "save", refused)
    with pytest.raises(StoreFailed) as exc:
        compute(task(tmp_path))
    msg = public_error(pickle.loads(pickle.dumps(exc.value)))  # as it comes back
    assert told in msg and str(tmp_path) not in msg
