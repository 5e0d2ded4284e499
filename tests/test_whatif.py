"""The what-if core (:mod:`retwin.whatif`): resolve, run with common random numbers, paired
difference, save. ``retwin run``, the service and batch studies all go through it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import retwin
from conftest import TINY_PATH
from retwin import whatif
from retwin.scenario.load import scenario_hash
from retwin.storage import read_table

QUOTA_CUT: dict[str, Any] = {"kind": "quota", "quota": "mining", "factor": 0.9,
                             "from": "2024-07-01"}


@pytest.fixture(scope="module")
def tiny() -> retwin.Scenario:
    return retwin.load_scenario("tiny")


def test_resolve_applies_the_changes_once_and_keeps_the_model_as_baseline(
        tiny: retwin.Scenario) -> None:
    w = whatif.resolve(tiny, [QUOTA_CUT])
    assert w.baseline is tiny and w.changes == (QUOTA_CUT,)
    assert len(w.scenario.changes) == len(tiny.changes) + 1
    assert w.scenario_hash != w.baseline_hash


def test_no_changes_is_a_plain_run(tiny: retwin.Scenario) -> None:
    w = whatif.resolve(tiny, [])
    assert w.scenario is tiny and w.baseline is None and w.baseline_hash is None


def test_a_whatif_file_is_compared_with_itself_without_its_changes(tmp_path: Path) -> None:
    f = tmp_path / "cut.yaml"
    f.write_text(yaml.safe_dump({"base": str(TINY_PATH), "changes": [QUOTA_CUT]}))
    w = whatif.resolve(f)
    assert w.baseline is not None and w.changes == ()
    assert w.baseline_hash == whatif.resolve(TINY_PATH).scenario_hash
    # with changes of its own, the file (its changes in) is the baseline
    w2 = whatif.resolve(f, [{"kind": "price", "material": "prnd_oxide", "factor": 1.2}])
    assert w2.baseline_hash == w.scenario_hash


def test_end_moves_both_and_a_bad_end_names_the_field(tiny: retwin.Scenario) -> None:
    end = tiny.start.replace(year=tiny.start.year + 1).isoformat()
    w = whatif.resolve(tiny, [QUOTA_CUT], end=end)
    assert w.scenario.end.isoformat() == end and w.baseline is not None
    assert w.baseline.end.isoformat() == end
    assert whatif.with_end(tiny, tiny.end) is tiny and whatif.with_end(tiny, None) is tiny
    with pytest.raises(retwin.ScenarioError) as exc:
        whatif.resolve(tiny, [QUOTA_CUT], end="1999-01-01")
    assert exc.value.problems and all(p == "end" for p, _ in exc.value.problems)


def test_a_bad_change_is_one_line_naming_it(tiny: retwin.Scenario) -> None:
    with pytest.raises(retwin.ScenarioError, match="unknown quota 'nope'"):
        whatif.resolve(tiny, [{"kind": "quota", "quota": "nope", "factor": 0.5}])


def test_run_is_the_paired_difference_of_two_replication_sets(tiny: retwin.Scenario) -> None:
    seen: list[tuple[str, int, int]] = []
    res = whatif.run(whatif.resolve(tiny, [QUOTA_CUT]), replications=3, seed=5,
                     progress=lambda *m: seen.append(m))
    base = retwin.run_replications(tiny, 3, seed=5)
    what = retwin.run_replications(retwin.apply_changes(tiny, [QUOTA_CUT]), 3, seed=5)
    assert res.baseline is not None and res.difference is not None
    pd.testing.assert_frame_equal(res.whatif.summary, what.summary)
    pd.testing.assert_frame_equal(res.difference, what.difference(base))
    assert [p for p, _, _ in seen] == ["baseline"] * 3 + ["whatif"] * 3
    assert seen[-1] == ("whatif", 3, 3)
    assert not (res.difference["mean"] == 0).all()  # the cut changes something


def test_a_given_baseline_is_not_run_again(tiny: retwin.Scenario) -> None:
    w = whatif.resolve(tiny, [QUOTA_CUT])
    full = whatif.run(w, replications=2, seed=1)
    assert full.baseline is not None
    frames = [f.copy() for f in full.baseline.kpi_frames]
    seen: list[str] = []
    again = whatif.run(w, replications=2, seed=1, baseline=frames,
                       progress=lambda part, *_: seen.append(part))
    assert again.baseline is None and set(seen) == {"whatif"}
    pd.testing.assert_frame_equal(again.difference, full.difference)
    with pytest.raises(ValueError, match="seeds"):
        whatif.run(w, replications=2, seed=2, baseline=full.baseline)
    with pytest.raises(ValueError, match="replications"):
        whatif.run(w, replications=2, seed=1, baseline=frames[:1])
    with pytest.raises(ValueError, match="without one"):
        whatif.run(whatif.resolve(tiny), baseline=frames)


def test_kpi_frames_round_trip_through_a_stored_result(tiny: retwin.Scenario,
                                                        tmp_path: Path) -> None:
    res = whatif.run(whatif.resolve(tiny), replications=3, seed=2)
    whatif.save(res, tmp_path / "r")
    frames = whatif.kpi_frames(read_table(tmp_path / "r", "kpis"))
    assert len(frames) == 3
    for a, b in zip(frames, res.whatif.kpi_frames, strict=True):
        pd.testing.assert_frame_equal(a, b.reset_index(drop=True), check_dtype=False)
    # a replication without rows (filtered away) is an empty frame, not a missing one
    kpis = read_table(tmp_path / "r", "kpis")
    some = whatif.kpi_frames(kpis[kpis["replication"] != 1], 3)
    assert [len(f) for f in some] == [len(frames[0]), 0, len(frames[2])]


def test_the_difference_counts_a_row_one_side_lacks_as_zero() -> None:
    a = pd.DataFrame({"kpi": ["k", "k"], "key": ["x", "y"], "year": [2024, 2024],
                      "value": [5.0, 2.0], "unit": ["t", "t"]})
    b = a.iloc[:1].assign(value=1.0)
    d = whatif.paired_difference([a], [b]).set_index("key")
    assert d.loc["x", "mean"] == 4.0 and d.loc["y", "mean"] == 2.0 and d.loc["x", "n"] == 1


def test_save_records_the_changes_and_the_baseline(tiny: retwin.Scenario,
                                                   tmp_path: Path) -> None:
    w = whatif.resolve(tiny, [QUOTA_CUT])
    res = whatif.run(w, seed=1)
    m = json.loads((whatif.save(res, tmp_path / "a") / "manifest.json").read_text())
    assert m["baseline_hash"] == w.baseline_hash and m["changes"] == [QUOTA_CUT]
    # the what-if's hash, not computed again: that of the scenario run and stored
    stored = json.loads((tmp_path / "a" / "scenario.json").read_text())
    assert m["scenario_hash"] == w.scenario_hash == scenario_hash(stored)
    assert w.scenario_hash == scenario_hash(res.whatif.first.compiled.scenario)
    assert "difference.parquet" in m["files"]
    m = json.loads((whatif.save(res, tmp_path / "b", baseline_ref="key-1") /
                    "manifest.json").read_text())
    assert m["baseline_hash"] == "key-1"
    base = res.baseline_only()
    assert base is not None
    m = json.loads((whatif.save(base, tmp_path / "c") / "manifest.json").read_text())
    assert m["baseline_hash"] is None and m["scenario_hash"] == w.baseline_hash
