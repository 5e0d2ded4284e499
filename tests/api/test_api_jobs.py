"""The worker side of a computation, run in this process: store, reuse, difference, cancel."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from api.jobs import Task, compute, is_stored, kpi_frames, paired_difference, result_dir
from apiutil import QUOTA_CUT

import retwin
from retwin.scenario import scenario_hash
from retwin.storage import read_table


def task(root: Path, key: str = "w", changes: tuple = (QUOTA_CUT,), n: int = 2,
         base: str | None = "b") -> Task:
    return Task(key=key, model="tiny", model_hash=scenario_hash(retwin.load_scenario("tiny")),
                end=None, changes=changes, seed=3, replications=n,
                baseline_key=base if changes else None, results_root=str(root))


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


def test_a_stored_baseline_is_reused(tmp_path: Path) -> None:
    compute(task(tmp_path, key="b", changes=()))
    before = (result_dir(tmp_path, "b") / "manifest.json").stat().st_mtime_ns
    compute(task(tmp_path, key="w2"))
    assert (result_dir(tmp_path, "b") / "manifest.json").stat().st_mtime_ns == before


def test_kpi_frames_round_trip(tmp_path: Path) -> None:
    compute(task(tmp_path, key="b", changes=(), n=3))
    frames = kpi_frames(read_table(result_dir(tmp_path, "b"), "kpis"))
    fresh = retwin.run_replications(retwin.load_scenario("tiny"), 3, seed=3)
    assert len(frames) == 3
    for a, b in zip(frames, fresh.kpi_frames, strict=True):
        pd.testing.assert_frame_equal(a, b.reset_index(drop=True), check_dtype=False)
    with pytest.raises(ValueError, match="replications"):
        paired_difference(fresh, frames[:2])


def test_a_cancel_flag_stops_it_between_replications(tmp_path: Path) -> None:
    (tmp_path / ".cancel").mkdir()
    (tmp_path / ".cancel" / "w").touch()
    out = compute(task(tmp_path))
    assert out.status == "cancelled"
    assert not is_stored(tmp_path, "w")


def test_a_bad_change_fails_with_its_message(tmp_path: Path) -> None:
    bad = ({"kind": "quota", "quota": "nope", "factor": 0.5},)
    out = compute(task(tmp_path, changes=bad))
    assert out.status == "failed" and "unknown quota 'nope'" in (out.error or "")


def test_a_changed_model_is_refused(tmp_path: Path) -> None:
    t = task(tmp_path)
    stale = Task(**{**t.__dict__, "model_hash": "0" * 64})
    out = compute(stale)
    assert out.status == "failed" and "changed since" in (out.error or "")
