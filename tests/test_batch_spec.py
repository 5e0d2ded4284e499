"""Batch studies, the pure part: spec validation, points, seeds, ids, samples and tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import retwin
from conftest import REPO, TINY_PATH
from retwin.batch import (
    StudySpec,
    expand_points,
    grid_values,
    latin_hypercube,
    load_spec,
    plan_tasks,
    point_id,
    point_seed,
    prepare_study,
)
from retwin.batch.expand import sample_matrix
from retwin.batch.spec import KpiSelector
from retwin.batch.study import _check_parameters
from retwin.engine.run import replication_seed

QUOTA = {"kind": "quota", "quota": "mining", "from": "2024-07-01"}
PRICE = {"kind": "price", "material": "prnd_oxide", "from": "2024-06-01"}


def spec(**kw: Any) -> StudySpec:
    tree: dict[str, Any] = {"name": "t", "base": str(TINY_PATH), "replications": 2, "seed": 3}
    tree.update(kw)
    return StudySpec.model_validate(tree)


def problems(tree: dict[str, Any]) -> list[str]:
    """The lines of the ScenarioError a spec mapping raises."""
    full = {"name": "t", "base": str(TINY_PATH), **tree}
    with pytest.raises(retwin.ScenarioError) as exc:
        prepare_study(full)
    return exc.value.lines()


# --- grid, sample, one at a time ------------------------------------------------------------


def test_grid_is_a_cartesian_product_first_parameter_slowest() -> None:
    s = spec(vary=[{"name": "q", "change": QUOTA, "field": "factor", "values": [0.8, 0.9, 1.0]},
                   {"name": "p", "change": PRICE, "field": "factor", "values": [1.0, 1.5]}])
    pts = expand_points(s)
    assert [(p.values["q"], p.values["p"]) for p in pts] == [
        (0.8, 1.0), (0.8, 1.5), (0.9, 1.0), (0.9, 1.5), (1.0, 1.0), (1.0, 1.5)]
    assert [p.index for p in pts] == list(range(6))
    assert len({p.id for p in pts}) == 6
    assert pts[3].changes == ({**QUOTA, "factor": 0.9}, {**PRICE, "factor": 1.5})
    assert {p.role for p in pts} == {"point"}


def test_grid_from_a_range_is_evenly_spaced_without_float_dust() -> None:
    s = spec(vary=[{"path": "plants.mine.utilisation_max_frac", "range": {"low": 0.6,
                                                                          "high": 1.0},
                    "n": 5}])
    assert grid_values(s.vary[0]) == [0.6, 0.7, 0.8, 0.9, 1.0]
    ints = spec(vary=[{"path": "plants.mine.lead_time_days", "range": {"low": 0.5, "high": 10},
                       "n": 4, "integer": True}])
    assert grid_values(ints.vary[0]) == [1, 4, 7, 10]


def test_no_vary_is_one_point_without_changes() -> None:
    (p,) = expand_points(spec())
    assert p.changes == () and p.values == {} and p.seed == 3


@given(n=st.integers(1, 60), d=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_latin_hypercube_puts_one_point_in_every_stratum(n: int, d: int, seed: int) -> None:
    u = latin_hypercube(n, d, np.random.default_rng(seed))
    assert u.shape == (n, d)
    assert ((u >= 0) & (u < 1)).all()
    for j in range(d):
        assert sorted(np.floor(u[:, j] * n).astype(int)) == list(range(n))


def test_sample_is_stratified_on_the_parameter_scale_and_seeded() -> None:
    vary = [{"name": "a", "path": "plants.mine.utilisation_max_frac", "mode": "sample",
             "range": {"low": 0.5, "high": 1.0}, "n": 10},
            {"name": "b", "change": QUOTA, "field": "factor", "mode": "sample",
             "range": {"low": 0.8, "high": 1.2}, "n": 10}]
    rows = sample_matrix(spec(vary=vary))
    a = np.array([r["a"] for r in rows])
    b = np.array([r["b"] for r in rows])
    assert sorted(np.floor((a - 0.5) / 0.05).astype(int)) == list(range(10))
    assert sorted(np.floor((b - 0.8) / 0.04).astype(int)) == list(range(10))
    assert rows == sample_matrix(spec(vary=vary))  # same seed, same sample
    assert rows != sample_matrix(spec(vary=vary, seed=4))
    rnd = sample_matrix(spec(vary=[{**v, "sample": "random"} for v in vary]))
    assert all(0.5 <= r["a"] <= 1.0 and 0.8 <= r["b"] <= 1.2 for r in rnd)


def test_integer_samples_stay_in_range() -> None:
    rows = sample_matrix(spec(vary=[{"name": "lt", "path": "plants.mine.lead_time_days",
                                     "mode": "sample", "range": {"low": 2, "high": 5},
                                     "n": 40, "integer": True}]))
    values = [r["lt"] for r in rows]
    assert set(values) == {2, 3, 4, 5} and all(isinstance(v, int) for v in values)
    pts = expand_points(spec(vary=[{"name": "lt", "path": "plants.mine.lead_time_days",
                                    "mode": "sample", "range": {"low": 2, "high": 5},
                                    "n": 40, "integer": True}]))
    assert len({p.id for p in pts}) == 40  # repeated values still get their own point


def test_grid_times_sample() -> None:
    s = spec(vary=[{"name": "q", "change": QUOTA, "field": "factor", "values": [0.9, 1.0]},
                   {"name": "u", "path": "plants.mine.utilisation_max_frac", "mode": "sample",
                    "range": {"low": 0.5, "high": 1.0}, "n": 3}])
    pts = expand_points(s)
    assert [p.values["q"] for p in pts] == [0.9] * 3 + [1.0] * 3
    assert [p.values["u"] for p in pts[:3]] == [p.values["u"] for p in pts[3:]]


def test_one_at_a_time_points(tiny: retwin.Scenario) -> None:
    s = spec(vary=[
        {"name": "q", "change": QUOTA, "field": "factor", "mode": "oat", "delta_frac": 0.1},
        {"name": "u", "path": "plants.magnets.utilisation_max_frac", "mode": "oat",
         "delta_frac": 0.25},
        {"name": "cap", "change": {"kind": "capacity", "plant": "metal"}, "field": "set_tpa",
         "mode": "oat", "base": 3000, "range": {"low": 2000, "high": 3500}},
    ])
    pts = expand_points(s, tiny)
    assert len(pts) == 1 + 2 * 3
    base = pts[0]
    assert base.role == "base" and base.parameter is None
    assert base.values == {"q": 1.0, "u": 0.8, "cap": 3000.0}  # tiny: magnets at 0.8
    moved = {(p.parameter, p.role): p.values for p in pts[1:]}
    assert moved[("q", "low")] == {**base.values, "q": 0.9}
    assert moved[("q", "high")] == {**base.values, "q": 1.1}
    assert moved[("u", "low")] == {**base.values, "u": 0.6}
    assert moved[("u", "high")] == {**base.values, "u": 1.0}
    assert moved[("cap", "low")]["cap"] == 2000 and moved[("cap", "high")]["cap"] == 3500
    assert [p.role for p in pts[1:]] == ["low", "high"] * 3


def test_one_at_a_time_needs_a_centre() -> None:
    s = spec(vary=[{"name": "cap", "change": {"kind": "capacity", "plant": "metal"},
                    "field": "set_tpa", "mode": "oat", "delta_frac": 0.1}])
    with pytest.raises(retwin.ScenarioError, match=r"vary\[0\]\(cap\): a one-at-a-time "
                       r"'set_tpa' needs base"):
        expand_points(s)
    zero = spec(vary=[{"name": "d", "change": {"kind": "capacity", "plant": "metal"},
                       "field": "delta_tpa", "mode": "oat", "base": 0, "delta_frac": 0.1}])
    with pytest.raises(retwin.ScenarioError, match="empty range around base"):
        expand_points(zero)


# --- ids and seeds --------------------------------------------------------------------------


def test_point_ids_hash_the_changes() -> None:
    a = [{"kind": "quota", "quota": "mining", "factor": 1}]
    assert point_id(a) == point_id([{"factor": 1.0, "quota": "mining", "kind": "quota"}])
    assert point_id(a) != point_id([{"kind": "quota", "quota": "mining", "factor": 0.9}])
    assert point_id(a) != point_id(a, occurrence=1)
    assert point_id(a)[0] == "p" and len(point_id(a)) == 13


def test_point_seeds() -> None:
    assert point_seed(7, 0, "common") == point_seed(7, 5, "common") == 7
    seeds = [point_seed(7, i, "independent") for i in range(50)]
    assert len(set(seeds)) == 50
    children = np.random.SeedSequence(7).spawn(50)
    assert seeds == [int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for c in children]
    # a replication of a point runs with the engine's replication seed of the point's seed
    assert replication_seed(seeds[3], 0) == seeds[3]


SPEC_FOR_SUBPROCESS = {
    "name": "ids", "base": "tiny", "seed": 11, "seeding": "independent",
    "vary": [{"name": "q", "change": QUOTA, "field": "factor", "values": [0.7, 0.8]},
             {"name": "u", "path": "plants.mine.utilisation_max_frac", "mode": "sample",
              "range": {"low": 0.5, "high": 1.0}, "n": 4}],
}


def test_same_spec_same_points_ids_and_seeds_in_another_process() -> None:
    here = [(p.id, p.seed, p.values) for p in expand_points(StudySpec.model_validate(
        SPEC_FOR_SUBPROCESS))]
    code = ("import json, sys; from retwin.batch import StudySpec, expand_points; "
            "s = StudySpec.model_validate(json.loads(sys.argv[1])); "
            "print(json.dumps([(p.id, p.seed, p.values) for p in expand_points(s)]))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(SPEC_FOR_SUBPROCESS)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    there = [tuple(x) for x in json.loads(done.stdout)]
    assert there == [tuple(x) for x in json.loads(json.dumps(here))]
    assert len({i for i, _, _ in here}) == 8


def test_tasks_cover_every_replication_once() -> None:
    pts = expand_points(spec(vary=[{"change": QUOTA, "field": "factor", "values": [1, 0.5]}]))
    tasks = plan_tasks(pts, 7, 3)
    assert [(t.point, t.chunk, t.first, t.stop) for t in tasks] == [
        (0, 0, 0, 3), (0, 1, 3, 6), (0, 2, 6, 7), (1, 0, 0, 3), (1, 1, 3, 6), (1, 2, 6, 7)]
    assert sum(t.runs for t in tasks) == 14
    assert plan_tasks(pts, 2, 50)[0].runs == 2


# --- validation: the spec alone -------------------------------------------------------------


def spec_lines(tree: dict[str, Any]) -> list[str]:
    with pytest.raises(retwin.ScenarioError) as exc:
        load_spec({"name": "t", "base": "tiny", **tree})
    return exc.value.lines()


def test_empty_range_is_one_clear_line() -> None:
    lines = spec_lines({"vary": [{"name": "q", "change": QUOTA, "field": "factor",
                                  "mode": "sample", "range": {"low": 1.2, "high": 0.8},
                                  "n": 5}]})
    assert lines == ["vary[0](q).range: empty range: low(=1.2) must be < high(=0.8)"]


@pytest.mark.parametrize(("vary", "expected"), [
    ({"name": "q", "change": QUOTA, "field": "factor", "values": []},
     "vary[0](q).values: values must not be empty"),
    ({"name": "q", "change": QUOTA, "field": "factor", "values": [1, 1.0]},
     "vary[0](q).values[1]: duplicate value 1.0 (as values[0])"),
    ({"name": "q", "change": QUOTA, "path": "plants.mine.capacity_tpa", "values": [1]},
     "vary[0](q): give exactly one of change (a change template with field) or path"),
    ({"name": "q", "change": {**QUOTA, "factor": 1}, "field": "factor", "values": [1]},
     "vary[0](q).field: the template already sets 'factor'"),
    ({"name": "q", "change": {"quota": "mining"}, "field": "factor", "values": [1]},
     "vary[0](q).change.kind: a change template needs a kind"),
    ({"name": "point", "change": QUOTA, "field": "factor", "values": [1]},
     "vary[0](point).name: name 'point' is reserved"),
    ({"name": "q", "change": QUOTA, "field": "factor", "mode": "grid", "range": {
        "low": 0, "high": 1}},
     "vary[0](q): mode grid needs values, or range and n"),
    ({"name": "q", "change": QUOTA, "field": "factor", "mode": "oat", "delta_frac": 0.1,
      "values": [1]},
     "vary[0](q).values: values does not apply to mode oat"),
    ({"name": "q", "change": QUOTA, "field": "factor", "values": [1], "colour": "red"},
     "vary[0](q).colour: Extra inputs are not permitted"),
    ({"name": "q", "change": QUOTA, "field": "factor", "mode": "sample",
      "range": {"low": 0, "high": 1}, "n": 0},
     "vary[0](q).n: Input should be greater than or equal to 1"),
])
def test_bad_parameter_is_one_line(vary: dict[str, Any], expected: str) -> None:
    lines = spec_lines({"vary": [vary]})
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines


def test_spec_level_rules() -> None:
    q = {"change": QUOTA, "field": "factor"}
    lines = spec_lines({"vary": [{**q, "values": [1]}, {**q, "values": [2]}]})
    assert lines == ["vary[1](quota.mining.factor).name: name 'quota.mining.factor' is already "
                     "used by vary[0]; give each parameter its own name"]
    lines = spec_lines({"vary": [{**q, "name": "a", "mode": "oat", "delta_frac": 0.1},
                                 {**q, "name": "b", "values": [1]}]})
    assert lines == ["vary: one-at-a-time (oat) parameters cannot be mixed with grid or sample "
                     "ones: a sensitivity study moves one parameter at a time"]
    lines = spec_lines({"vary": [
        {**q, "name": "a", "mode": "sample", "range": {"low": 0, "high": 1}, "n": 5},
        {**q, "name": "b", "mode": "sample", "range": {"low": 0, "high": 1}, "n": 6}]})
    assert lines == ["vary[1](b).n: sampled parameters are drawn together: n(=6) and "
                     "sample(=lhs) must equal those of vary[0] (n=5, sample=lhs)"]
    assert spec_lines({"kpis": ["value"]})[0].startswith("kpis[0]: KPI 'value' must read")
    assert spec_lines({"replications": 0})[0].startswith(
        "replications: Input should be greater than or equal to 1")
    assert spec_lines({"record": "hourly"})[0].startswith("record: Input should be 'annual'")


def test_too_many_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retwin.batch.spec.MAX_POINTS", 5)
    lines = spec_lines({"vary": [{"change": QUOTA, "field": "factor",
                                  "range": {"low": 0, "high": 1}, "n": 6}]})
    assert lines == ["vary: the study expands to 6 points; the limit is 5 (RETWIN_MAX_POINTS)"]


def test_kpi_selector() -> None:
    assert KpiSelector.parse("value.group.total") == KpiSelector(
        "value.group.total", "value.group", "total", None)
    assert KpiSelector.parse("element.la_ce_surplus.La+Ce@2025") == KpiSelector(
        "element.la_ce_surplus.La+Ce@2025", "element.la_ce_surplus", "La+Ce", 2025)


def test_spec_file_errors(tmp_path: Any) -> None:
    with pytest.raises(retwin.ScenarioError, match=r"study spec .nope\.yaml. not found"):
        load_spec("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(retwin.ScenarioError, match="must be a mapping at the top level"):
        load_spec(bad)


# --- validation against the base model ------------------------------------------------------


def test_unknown_parameter_path_names_it() -> None:
    lines = problems({"vary": [{"path": "plants.nope.capacity_tpa", "values": [1, 2]}]})
    assert lines == ["vary[0](plants.nope.capacity_tpa).path: 'plants.nope.capacity_tpa': no "
                     "item 'nope' (known: mine, separation, metal, magnets, recycler)"]


def test_change_that_does_not_apply_is_one_line() -> None:
    lines = problems({"vary": [{"change": {"kind": "quota", "quota": "nope"}, "field": "factor",
                                "values": [0.8, 0.9, 1.0]}]})
    assert lines == ["vary[0](quota.nope.factor).quota: unknown quota 'nope' (known: mining)"]


def test_a_bad_value_is_named() -> None:
    lines = problems({"vary": [{"name": "q", "change": QUOTA, "field": "factor",
                                "values": [-0.5, 1.0]}]})
    assert len(lines) == 1
    assert lines[0].startswith("vary[0](q).factor: Input should be greater than or equal to 0")
    assert lines[0].endswith("(at q = -0.5)")


def test_fixed_changes_base_and_kpis_are_checked() -> None:
    lines = problems({"changes": [{"kind": "quota", "quota": "nope", "factor": 0.5}]})
    assert lines == ["changes[0].quota: unknown quota 'nope' (known: mining)"]
    with pytest.raises(retwin.ScenarioError, match=r"base\(nope\): scenario 'nope' not found"):
        prepare_study({"name": "t", "base": "nope"})
    lines = problems({"kpis": ["value.grup.total", "value.group.everything",
                               "value.group.total@2031"]})
    assert lines[0].startswith("kpis[0]: unknown KPI 'value.grup' in 'value.grup.total' (known:")
    assert lines[1] == ("kpis[1]: value.group has no key 'everything' (known: raw_materials, "
                        "new_materials, applications, total)")
    assert lines[2] == "kpis[2]: year 2031 is outside the run (2024..2025)"


def test_every_point_is_checked_in_a_small_study(tiny: retwin.Scenario) -> None:
    # two changes valid alone that clash together: the plant added is added twice
    add = {"kind": "plant", "action": "add", "plant": {
        "id": "extra", "name": "x", "stage": "metal",
        "recipe": {"outputs": {"prnd_metal": 1}, "inputs": {"prnd_oxide": 1.3}}}}
    s = spec(vary=[{"name": "a", "change": add, "field": "plant.capacity_tpa",
                    "values": [100, 200]},
                   {"name": "b", "change": add, "field": "plant.capacity_tpa", "values": [300]}])
    lines = [f"{p}: {m}" for p, m in _check_parameters(s, tiny, expand_points(s, tiny))]
    assert len(lines) == 2
    assert lines[0] == ("point 0 (a=100, b=300): vary[1](b).plant.id: plant 'extra' already "
                        "exists")


def test_chunk_defaults_follow_the_record() -> None:
    assert spec().chunk == 50
    assert spec(record="daily").chunk == 5  # daily tables are about 30 times larger
    assert spec(record="daily", chunk_replications=7).chunk == 7
