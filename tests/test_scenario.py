"""Scenarios: loading, ``base:`` overlays, formulas, every what-if change kind, bad input.

Each change kind is applied with ``apply_changes`` to the tiny model with randomness off; the
test checks that the base scenario is untouched and that the effect shows in a run.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import retwin
from conftest import TINY_PATH, quiet
from retwin import ScenarioError
from retwin.engine.build import compile_scenario
from retwin.kernels.flow import BIND_IDLE, BIND_OUTAGE
from retwin.scenario import load_parameters, parse_changes, scenario_hash
from retwin.scenario.schema import Scenario

# --- helpers --------------------------------------------------------------------------------


def day(sc: Scenario, date: str) -> int:
    return (dt.date.fromisoformat(date) - sc.start).days


def errors(exc: pytest.ExceptionInfo[ScenarioError]) -> str:
    return "\n".join(exc.value.lines())


def write(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base() -> Scenario:
    """The tiny model with randomness off (so effects are exact)."""
    return quiet(retwin.load_scenario("tiny"))


@pytest.fixture(scope="module")
def base_run(base: Scenario) -> Any:
    return retwin.run(base, seed=1)


def applied(base: Scenario, changes: list[dict[str, Any]]) -> Scenario:
    """apply_changes, asserting the base scenario is not modified."""
    before = base.model_dump(mode="json", by_alias=True)
    before_hash = scenario_hash(base)
    new = retwin.apply_changes(base, changes)
    assert base.model_dump(mode="json", by_alias=True) == before
    assert scenario_hash(base) == before_hash
    assert new is not base
    assert scenario_hash(new) != before_hash
    return new


def idx(res: Any, plant: str) -> int:
    return res.compiled.plant_ids.index(plant)


# --- loading --------------------------------------------------------------------------------


def test_load_by_name_path_and_mapping(tiny_tree: dict[str, Any]) -> None:
    by_name = retwin.load_scenario("tiny")
    by_path = retwin.load_scenario(TINY_PATH)
    by_str = retwin.load_scenario(str(TINY_PATH))
    by_map = retwin.load_scenario(tiny_tree)
    assert by_name == by_path == by_str == by_map
    assert by_name.name == "tiny"
    assert [p.id for p in by_name.plants] == ["mine", "separation", "metal", "magnets",
                                              "recycler"]
    assert by_name.horizon_days == 731


def test_missing_scenario_names_the_known_models() -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario("no-such-model")
    assert "'no-such-model' not found" in str(exc.value)
    assert "tiny" in str(exc.value)


def test_a_file_read_again_as_it_was_is_not_parsed_again_and_each_reader_has_its_own_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retwin.scenario import load

    parsed: list[str] = []
    real = yaml.load

    def counting(text: str, Loader: Any) -> Any:
        parsed.append(text)
        return real(text, Loader=Loader)

    monkeypatch.setattr(load.yaml, "load", counting)
    f = tmp_path / "m.yaml"
    f.write_text(f"name: m-{tmp_path.name}\nlist: [1, {{a: 2}}]\nday: 2024-01-01\n",
                 encoding="utf-8")
    first = load.read_yaml(f)
    first["list"][1]["a"] = 99  # a reader changes its copy
    second = load.read_yaml(f)
    assert second == {"name": f"m-{tmp_path.name}", "list": [1, {"a": 2}],
                      "day": dt.date(2024, 1, 1)}
    assert len(parsed) == 1
    f.write_text(f"name: m-{tmp_path.name}\nlist: [3]\n", encoding="utf-8")  # changed
    assert load.read_yaml(f)["list"] == [3] and len(parsed) == 2


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        retwin.load_scenario(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"list\.yaml: must be a mapping at the top level"):
        retwin.load_scenario(lst)


def test_unknown_field_is_rejected(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"][0]["capacity"] = 5
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    assert "plants[0](mine).capacity" in errors(exc)
    assert "Extra inputs are not permitted" in errors(exc)


# --- base: overlays -------------------------------------------------------------------------


@pytest.fixture
def base_file(tmp_path: Path, tiny_tree: dict[str, Any]) -> Path:
    tiny_tree["changes"] = [{"kind": "outage", "plant": "metal", "from": "2024-02-01",
                             "to": "2024-02-10"}]
    return write(tmp_path / "parent.yaml", tiny_tree)


def test_overlay_merges_by_id_and_concatenates_changes(tmp_path: Path, base_file: Path) -> None:
    overlay = {
        "base": "parent",
        "name": "child",
        "plants": [
            {"id": "mine", "capacity_tpa": 50000},  # merged into the base's mine
            {"id": "mine2", "name": "Second mine", "stage": "mining", "capacity_tpa": 1000,
             "extracts": True, "recipe": {"outputs": {"concentrate": 1}, "inputs": {"ore": 9}}},
        ],
        "materials": [{"id": "magnet", "price": {"base_cny_per_unit": 310000}}],
        "settings": {"outages": False},
        "changes": [{"kind": "outage", "plant": "magnets", "from": "2024-03-01",
                     "to": "2024-03-05"}],
    }
    sc = retwin.load_scenario(write(tmp_path / "child.yaml", overlay))
    parent = retwin.load_scenario(base_file)
    assert sc.name == "child"
    assert [p.id for p in sc.plants] == ["mine", "separation", "metal", "magnets", "recycler",
                                         "mine2"]
    mine = sc.plant("mine")
    assert mine.capacity_tpa == 50000
    assert mine.recipe == parent.plant("mine").recipe  # the rest of the item is the base's
    assert mine.availability == parent.plant("mine").availability
    assert sc.material("magnet").price.base_cny_per_unit == 310000
    assert sc.material("magnet").name == "NdFeB magnet"
    assert sc.settings.outages is False and sc.settings.price_noise is True
    assert [(c.kind, getattr(c, "plant", None)) for c in sc.changes] == [
        ("outage", "metal"), ("outage", "magnets")]
    # the baseline of the what-if file: without any file's changes
    assert retwin.load_scenario(tmp_path / "child.yaml", include_changes=False).changes == []


def test_overlay_of_a_reference_model_by_name(tmp_path: Path) -> None:
    over = write(tmp_path / "what.yaml", {"base": "tiny", "name": "tiny-what",
                                          "end": "2024-06-30"})
    sc = retwin.load_scenario(over)
    tiny = retwin.load_scenario("tiny")
    assert sc.name == "tiny-what" and sc.end == dt.date(2024, 6, 30)
    assert sc.plants == tiny.plants


def test_overlays_nest(tmp_path: Path, base_file: Path) -> None:
    write(tmp_path / "mid.yaml", {"base": "parent", "plants": [{"id": "metal",
                                                                  "capacity_tpa": 1}]})
    write(tmp_path / "top.yaml", {"base": "mid", "plants": [{"id": "mine",
                                                               "capacity_tpa": 2}]})
    sc = retwin.load_scenario(tmp_path / "top.yaml")
    assert sc.plant("metal").capacity_tpa == 1 and sc.plant("mine").capacity_tpa == 2


def test_overlay_cycle_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"base": "b", "name": "a"})
    write(tmp_path / "b.yaml", {"base": "a", "name": "b"})
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tmp_path / "a.yaml")
    assert exc.value.lines() == ["base: overlays form a cycle: a.yaml -> b.yaml -> a.yaml"]


def test_overlay_with_unknown_base(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="'nowhere' not found"):
        retwin.load_scenario(write(tmp_path / "x.yaml", {"base": "nowhere"}))


# --- formulas -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def some_key() -> tuple[str, float]:
    params = load_parameters()
    key = next(k for k, p in params.items() if p.value > 0)
    return key, params[key].value


def test_formula_resolved_from_data(tiny_tree: dict[str, Any], some_key: tuple[str, float]
                                    ) -> None:
    key, value = some_key
    tiny_tree["plants"][0]["capacity_tpa"] = f"= {{{key}}} * 2"
    tiny_tree["plants"][1]["capacity_tpa"] = f"= max({{{key}}}, 1) / 4 + round(2.6) - -1"
    sc = retwin.load_scenario(tiny_tree)
    assert sc.plant("mine").capacity_tpa == pytest.approx(value * 2)
    assert sc.plant("separation").capacity_tpa == pytest.approx(max(value, 1) / 4 + 3 + 1)


def test_a_formula_evaluated_again_follows_the_data_it_names(
        some_key: tuple[str, float], monkeypatch: pytest.MonkeyPatch) -> None:
    """Formula values are kept for the data they were evaluated against, not past it."""
    import dataclasses

    from retwin.scenario import data

    key, value = some_key
    tree = {"x": f"= {{{key}}} * 2", "y": [f"= {{{key}}} * 2"]}
    assert data.resolve_formulas_collect(tree)[0] == {"x": value * 2, "y": [value * 2]}
    params = data.load_parameters()
    changed = {**params, key: dataclasses.replace(params[key], value=value + 1)}
    monkeypatch.setattr(data, "load_parameters", lambda path=None: changed)
    assert data.resolve_formulas_collect(tree)[0]["x"] == (value + 1) * 2


@pytest.mark.parametrize(("formula", "message"), [
    ("= {no.such_key} * 2", "unknown data key {no.such_key} (not in data/parameters.csv)"),
    ("= 2 *", "is not a valid expression"),
    ("= 1 / (2 - 2)", "divides by zero"),
    ("= __import__('os')", "is not allowed"),
    ("= 'text'", "is not allowed"),
])
def test_bad_formula_names_the_path(tiny_tree: dict[str, Any], formula: str, message: str
                                    ) -> None:
    tiny_tree["plants"][2]["capacity_tpa"] = formula
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    assert exc.value.problems[0][0] == "plants[2].capacity_tpa"
    assert message in exc.value.problems[0][1]


def test_every_bad_formula_is_reported(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"][0]["capacity_tpa"] = "= {nope.a} + 1"
    tiny_tree["pools"][0]["initial_t"] = "= 1 / 0"
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    assert [p for p, _ in exc.value.problems] == ["plants[0].capacity_tpa", "pools[0].initial_t"]


def test_formula_in_a_change(base: Scenario, some_key: tuple[str, float]) -> None:
    key, value = some_key
    ch = parse_changes([{"kind": "capacity", "plant": "mine", "set_tpa": f"= {{{key}}}"}])
    assert ch[0].set_tpa == pytest.approx(value)
    with pytest.raises(ScenarioError) as exc:
        parse_changes([{"kind": "capacity", "plant": "mine", "set_tpa": "= 1/0"}])
    assert exc.value.problems[0][0] == "changes[0].set_tpa"


# --- change kinds: quota ----------------------------------------------------------------------


@pytest.mark.parametrize(("change", "totals"), [
    ({"factor": 0.8}, {2024: 12000, 2025: 12000}),
    ({"set_t_reo": 9000, "from": "2025-01-01"}, {2024: 15000, 2025: 9000}),
    ({"delta_t_reo": 1000, "to": "2024-12-31"}, {2024: 16000, 2025: 15000}),
    ({"factor": 0.0, "batch": 2}, {2024: 7500, 2025: 7500}),
])
def test_quota_change(base: Scenario, base_run: Any, change: dict[str, Any],
                      totals: dict[int, float]) -> None:
    sc = applied(base, [{"kind": "quota", "quota": "mining", **change}])
    c = compile_scenario(sc)
    assert {y: c.quota_year_total[(0, y)] for y in (2024, 2025)} == pytest.approx(totals)
    res = retwin.run(sc, seed=1)
    mine = idx(res, "mine")
    use = res.activity[mine] * c.kernel_static["qcoef"][mine]
    year = res._year_of_day
    for y, total in totals.items():
        assert use[year == y].sum() <= total * (1 + 1e-9)
        if total < 15000:  # a cut shows in the mining output
            assert res.activity[mine][year == y].sum() < base_run.activity[mine][year == y].sum()


def test_quota_change_for_a_batch_that_does_not_exist(base: Scenario) -> None:
    """The tiny quota has two batches; a change to batch 5 would silently do nothing."""
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [{"kind": "quota", "quota": "mining", "batch": 5,
                                     "factor": 0.0}])
    assert exc.value.problems[0][0] == "changes[0].batch"
    assert "5" in exc.value.problems[0][1]


def test_quota_batch_change_moves_only_that_batch(base: Scenario) -> None:
    sc = applied(base, [{"kind": "quota", "quota": "mining", "batch": 1, "factor": 0.5}])
    releases = compile_scenario(sc).releases
    assert [(d, round(a, 6)) for d, _, a in releases] == [
        (0, 3750.0), (182, 7500.0), (366, 3750.0), (547, 7500.0)]


# --- price ------------------------------------------------------------------------------------


def test_price_factor_over_a_window(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "price", "material": "prnd_oxide", "factor": 1.5,
                         "from": "2024-03-01", "to": "2024-12-31"}])
    res = retwin.run(sc, seed=1)
    m = res.compiled.material_ids.index("prnd_oxide")
    before, after = base_run.price_month[m], res.price_month[m]
    np.testing.assert_allclose(after[:2], before[:2])
    np.testing.assert_allclose(after[2:12], 1.5 * before[2:12])
    np.testing.assert_allclose(after[12:], before[12:])
    # the separator's output value follows
    sep = idx(res, "separation")
    assert res.value_month[sep, 5] > base_run.value_month[sep, 5]
    np.testing.assert_allclose(res.value_month[sep, 0], base_run.value_month[sep, 0])


def test_price_value_with_ramp(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "price", "material": "la_ce_oxide", "value_cny_per_unit": 11000,
                         "from": "2024-02-01", "ramp_days": 90}])
    res = retwin.run(sc, seed=1)
    m = res.compiled.material_ids.index("la_ce_oxide")
    p = res.price_month[m]
    assert p[0] == base_run.price_month[m, 0] == 5000
    # mid-Feb 15/90 of the way, mid-Mar 44/90, mid-Apr 75/90, then the value
    np.testing.assert_allclose(p[1:4], 5000 + 6000 * np.array([15, 44, 75]) / 90)
    np.testing.assert_allclose(p[4:], 11000)


# --- capacity ---------------------------------------------------------------------------------


def test_capacity_set_on_a_plant_over_a_window(base: Scenario) -> None:
    sc = applied(base, [{"kind": "capacity", "plant": "metal", "set_tpa": 0,
                         "from": "2024-03-01", "to": "2024-05-31"}])
    res = retwin.run(sc, seed=1)
    metal = idx(res, "metal")
    lo, hi = day(sc, "2024-03-01"), day(sc, "2024-05-31") + 1
    assert np.all(res.activity[metal, lo:hi] == 0.0)
    assert np.all(res.binding[metal, lo:hi] == BIND_IDLE)
    assert res.activity[metal, lo - 1] > 0 and res.activity[metal, hi:hi + 30].sum() > 0


def test_capacity_factor_on_a_stage(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "capacity", "stage": "magnet", "factor": 0.5,
                         "from": "2024-07-01"}])
    res = retwin.run(sc, seed=1)
    mag = idx(res, "magnets")
    lo = day(sc, "2024-07-01")
    cap = 8000 * 0.8 / 365
    np.testing.assert_allclose(res.activity[mag, :lo], base_run.activity[mag, :lo])
    assert np.all(res.activity[mag, lo:] <= 0.5 * cap * (1 + 1e-12))
    np.testing.assert_allclose(res.activity[mag, lo:lo + 30], 0.5 * cap)
    # the capacity KPIs follow the change
    assert res.kpi("capacity.stage", "magnet", 2024) == pytest.approx(4000)
    assert base_run.kpi("capacity.stage", "magnet", 2024) == pytest.approx(8000)
    assert res.kpi("utilisation.plant", "magnets", 2025) == pytest.approx(0.8)


def test_capacity_delta(base: Scenario) -> None:
    sc = applied(base, [{"kind": "capacity", "plant": "mine", "delta_tpa": -30000}])
    res = retwin.run(sc, seed=1)
    assert res.activity[idx(res, "mine")].max() <= 10000 / 365 * (1 + 1e-12)


def test_capacity_ramp_moves_in_steps(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "capacity", "plant": "magnets", "factor": 0.5,
                         "from": "2024-04-01", "ramp_days": 70}])
    res = retwin.run(sc, seed=1)
    mag = idx(res, "magnets")
    lo = day(sc, "2024-04-01")
    cap = 8000 * 0.8 / 365
    ramp = res.activity[mag, lo:lo + 84]
    assert np.all(np.diff(ramp) <= 1e-12)  # falls monotonically...
    assert ramp[0] < cap and ramp[0] > 0.5 * cap  # ...starting at once, not in one jump...
    np.testing.assert_allclose(ramp[70:], 0.5 * cap)  # ...and arrives after the ramp
    assert len(np.unique(np.round(ramp, 9))) >= 5


# --- plant add and retire -------------------------------------------------------------------


NEW_MINE = {"id": "mine2", "name": "Second mine", "stage": "mining", "capacity_tpa": 3650,
            "extracts": True, "recipe": {"outputs": {"concentrate": 1}, "inputs": {"ore": 9}}}


def test_plant_add(base: Scenario) -> None:
    sc = applied(base, [{"kind": "plant", "action": "add", "plant": NEW_MINE,
                         "from": "2024-06-01"}])
    assert sc.plant("mine2").commissioning == dt.date(2024, 6, 1)
    res = retwin.run(sc, seed=1)
    p = idx(res, "mine2")
    start = day(sc, "2024-06-01")
    assert np.all(res.activity[p, :start] == 0.0)
    np.testing.assert_allclose(res.activity[p, start:], 10.0)
    assert res.balance.closes


def test_plant_add_existing_id_is_refused(base: Scenario) -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [{"kind": "plant", "action": "add",
                                     "plant": {**NEW_MINE, "id": "mine"}}])
    assert "changes[0].plant.id: plant 'mine' already exists" in errors(exc)


def test_plant_retire(base: Scenario) -> None:
    sc = applied(base, [{"kind": "plant", "action": "retire", "plant_id": "recycler",
                         "from": "2024-09-01"}])
    assert sc.plant("recycler").retirement == dt.date(2024, 9, 1)
    res = retwin.run(sc, seed=1)
    p = idx(res, "recycler")
    cut = day(sc, "2024-09-01")
    assert res.activity[p, :cut].sum() > 0
    assert np.all(res.activity[p, cut:] == 0.0)


def test_changes_in_one_list_see_the_plants_added_before_them(base: Scenario) -> None:
    """Applying a list at once equals applying it change by change: an outage of a plant
    added earlier in the same what-if is valid."""
    add = {"kind": "plant", "action": "add", "plant": NEW_MINE, "from": "2024-06-01"}
    down = {"kind": "outage", "plant": "mine2", "from": "2024-07-01", "to": "2024-07-31"}
    stepwise = retwin.apply_changes(retwin.apply_changes(base, [add]), [down])
    at_once = retwin.apply_changes(base, [add, down])
    assert at_once == stepwise


# --- outage -------------------------------------------------------------------------------------


def test_outage_window(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "outage", "plant": "mine", "from": "2024-03-01",
                         "to": "2024-03-31"}])
    res = retwin.run(sc, seed=1)
    mine = idx(res, "mine")
    lo, hi = day(sc, "2024-03-01"), day(sc, "2024-03-31") + 1
    assert np.all(res.activity[mine, lo:hi] == 0.0)
    assert np.all(res.binding[mine, lo:hi] == BIND_OUTAGE)
    assert res.activity[mine, lo - 1] > 0 and res.activity[mine, hi] > 0
    assert base_run.activity[mine, lo:hi].min() > 0
    kinds = [(d, k) for d, k, _ in res.events if k.startswith("outage")]
    assert kinds == [(lo, "outage_change"), (hi, "outage_change_end")]


def test_outage_derates(base: Scenario) -> None:
    sc = applied(base, [{"kind": "outage", "plant": "magnets", "from": "2024-03-01",
                         "to": "2024-03-31", "capacity_frac": 0.25}])
    res = retwin.run(sc, seed=1)
    mag = idx(res, "magnets")
    lo, hi = day(sc, "2024-03-01"), day(sc, "2024-03-31") + 1
    np.testing.assert_allclose(res.activity[mag, lo:hi], 0.25 * 8000 * 0.8 / 365)


# --- demand ---------------------------------------------------------------------------------------


def test_demand_factor(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "demand", "segment": "motors", "factor": 2.0,
                         "from": "2024-07-01", "to": "2024-12-31"}])
    c0, c1 = base_run.compiled, compile_scenario(sc)
    np.testing.assert_allclose(c1.demand_month[0, :6], c0.demand_month[0, :6])
    np.testing.assert_allclose(c1.demand_month[0, 6:12], 2 * c0.demand_month[0, 6:12])
    np.testing.assert_allclose(c1.demand_month[0, 12:], c0.demand_month[0, 12:])
    res = retwin.run(sc, seed=1)
    jul = day(sc, "2024-07-01")
    total = res.served[0, jul:jul + 31] + res.unmet[0, jul:jul + 31]
    np.testing.assert_allclose(total, 2 * (base_run.served[0, jul:jul + 31]
                                           + base_run.unmet[0, jul:jul + 31]))


def test_demand_growth(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "demand", "segment": "motors", "growth_frac_per_year": 0.5,
                         "from": "2025-01-01"}])
    d0, d1 = base_run.compiled.demand_month[0], compile_scenario(sc).demand_month[0]
    np.testing.assert_allclose(d1[:12], d0[:12])
    ratio = d1[12:] / d0[12:]
    assert np.all(np.diff(ratio) > 0) and ratio[0] > 1
    # a year of 50 % instead of 10 % growth: by mid-Dec 2025, ~ (1.5/1.1)^(348/365)
    assert ratio[-1] == pytest.approx((1.5 / 1.1) ** (348 / 365), rel=1e-6)


def test_demand_growth_change_ends_on_its_to_date(base: Scenario, base_run: Any) -> None:
    """Growth changed "over [from, to]": after ``to`` the base growth applies again, so the
    ratio to the baseline stops moving (whether the level reached persists or not)."""
    sc = applied(base, [{"kind": "demand", "segment": "motors", "growth_frac_per_year": 0.5,
                         "from": "2024-01-01", "to": "2024-06-30"}])
    d0, d1 = base_run.compiled.demand_month[0], compile_scenario(sc).demand_month[0]
    ratio = d1 / d0
    assert ratio[5] > ratio[0] > 1  # grows faster inside the window
    np.testing.assert_allclose(ratio[7:], ratio[7], rtol=1e-9)


# --- trade --------------------------------------------------------------------------------------


def test_trade_cap_on_exports(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [{"kind": "trade", "market": "la_ce_out", "side": "export",
                         "cap_tpa": 365, "from": "2024-04-01", "to": "2024-06-30"}])
    res = retwin.run(sc, seed=1)
    lo, hi = day(sc, "2024-04-01"), day(sc, "2024-06-30") + 1
    assert base_run.exports[0, lo:hi].max() > 5.0
    assert res.exports[0, lo:hi].max() <= 1.0 + 1e-12
    assert res.exports[0, hi:].max() > 5.0  # lifted after the window
    assert res.stock[1, hi - 1] > base_run.stock[1, hi - 1]  # La/Ce piles up at home


def test_trade_factor_on_exports_and_cap_on_imports(base: Scenario, base_run: Any) -> None:
    sc = applied(base, [
        {"kind": "trade", "market": "la_ce_out", "side": "export", "factor": 0.25},
        {"kind": "trade", "market": "dy_in", "side": "import", "cap_tpa": 36.5},
    ])
    res = retwin.run(sc, seed=1)
    assert res.exports[0].max() <= 1000 / 365 * (1 + 1e-12)
    assert base_run.exports[0].max() > 1000 / 365
    assert res.imports[1].max() <= 0.1 * (1 + 1e-12)
    assert base_run.imports[1].max() > 0.1


def test_trade_factor_on_imports(base: Scenario) -> None:
    sc = applied(base, [{"kind": "trade", "market": "dy_in", "side": "import", "factor": 0.0}])
    res = retwin.run(sc, seed=1)
    assert res.imports.sum() == 0.0
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [{"kind": "trade", "market": "dy_in", "side": "export",
                                     "factor": 2.0}])
    assert "changes[0].side: market 'dy_in' has no export side" in errors(exc)


# --- reserve ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "reserve"), [({"reserve_t": 1500}, 1500.0),
                                                 ({"delta_t": 700}, 700.0)])
def test_reserve_is_never_drawn(base: Scenario, base_run: Any, change: dict[str, Any],
                                reserve: float) -> None:
    sc = applied(base, [{"kind": "reserve", "material": "concentrate", **change}])
    res = retwin.run(sc, seed=1)
    assert base_run.stock[0].min() < reserve  # without it the pool runs lower
    assert res.stock[0].min() >= reserve - 1e-9


def test_reserve_for_unknown_pool(base: Scenario) -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [{"kind": "reserve", "material": "ore", "reserve_t": 1}])
    assert "changes[0].material: no pool for 'ore' in region 'baotou'" in errors(exc)


# --- parameter ----------------------------------------------------------------------------------


def test_parameter_by_path(base: Scenario) -> None:
    sc = applied(base, [
        {"kind": "parameter", "path": "plants.metal.capacity_tpa", "value": 1000},
        {"kind": "parameter", "path": "pools.baotou/concentrate.initial_t", "value": 9000},
        {"kind": "parameter", "path": "materials.magnet.price.base_cny_per_unit",
         "value": 1.0},
        {"kind": "parameter", "path": "settings.outages", "value": True},
    ])
    assert sc.plant("metal").capacity_tpa == 1000
    assert sc.pools[0].initial_t == 9000
    assert sc.material("magnet").price.base_cny_per_unit == 1.0
    assert sc.settings.outages is True
    res = retwin.run(sc, seed=1)
    assert res.activity[idx(res, "metal")].max() <= 1000 / 365 * (1 + 1e-12)


@pytest.mark.parametrize(("path", "value", "get", "want"), [
    ("plants.metal.retirement", "2025-03-01", lambda sc: sc.plant("metal").retirement,
     dt.date(2025, 3, 1)),
    ("pools.baotou/concentrate.max_t", 5000, lambda sc: sc.pools[0].max_t, 5000.0),
], ids=["retirement", "max_t"])
def test_parameter_sets_a_field_that_is_unset(base: Scenario, path: str, value: Any, get: Any,
                                              want: Any) -> None:
    """``retirement``, ``max_t``... are scalar fields of the schema; while unset (None) they
    are still fields a parameter change may set."""
    sc = applied(base, [{"kind": "parameter", "path": path, "value": value}])
    assert get(sc) == want


@pytest.mark.parametrize(("path", "message"), [
    ("plants.nope.capacity_tpa", "no item 'nope' (known: mine, separation, metal"),
    ("plants.mine.capacity", "no field 'capacity' (known: id, name"),
    ("plants.mine", "a path must end at a field, not at a list item"),
    ("plants.mine.recipe", "'recipe' is not a scalar field"),
    ("plants.mine.capacity_tpa.x", "cannot descend into a scalar"),
])
def test_parameter_bad_path(base: Scenario, path: str, message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [{"kind": "parameter", "path": path, "value": 1}])
    assert exc.value.problems[0][0] == "changes[0].path"
    assert message in exc.value.problems[0][1]
    assert repr(path) in exc.value.problems[0][1]


def test_parameter_bad_value_fails_revalidation(base: Scenario) -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [{"kind": "parameter", "path": "plants.metal.capacity_tpa",
                                     "value": -3}])
    assert "plants[2](metal).capacity_tpa" in errors(exc)
    assert "-3" in errors(exc)


def test_parameter_change_takes_no_dates() -> None:
    with pytest.raises(ScenarioError, match="a parameter change applies to the whole run"):
        parse_changes([{"kind": "parameter", "path": "plants.mine.capacity_tpa", "value": 1,
                        "from": "2024-01-01"}])


def test_rewriting_changes_in_a_file_are_applied_by_load(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["changes"] = [
        {"kind": "plant", "action": "retire", "plant_id": "recycler", "from": "2025-01-01"},
        {"kind": "parameter", "path": "plants.metal.capacity_tpa", "value": 2000},
    ]
    sc = retwin.load_scenario(tiny_tree)
    assert sc.plant("recycler").retirement == dt.date(2025, 1, 1)
    assert sc.plant("metal").capacity_tpa == 2000
    assert sc.changes == []
    # listed in a scenario's own changes (not applied) they are refused
    dumped = sc.model_dump(mode="json", by_alias=True)
    dumped["changes"] = tiny_tree["changes"]
    with pytest.raises(Exception, match="rewrites the scenario"):
        Scenario.model_validate(dumped)


# --- change schema ------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "quota", "quota": "mining", "factor": 0.5, "set_t_reo": 1},
     "give exactly one of set_t_reo, factor, delta_t_reo (got 2)"),
    ({"kind": "capacity", "plant": "mine", "stage": "mining", "factor": 2},
     "give exactly one of plant, stage (got 2)"),
    ({"kind": "outage", "plant": "mine", "from": "2024-03-01"},
     "an outage needs both from and to"),
    ({"kind": "outage", "plant": "mine", "from": "2024-03-01", "to": "2024-02-01"},
     "to(=2024-02-01) must not be before from(=2024-03-01)"),
    ({"kind": "plant", "action": "retire"}, "action retire needs plant_id"),
    ({"kind": "teleport"}, "teleport"),
])
def test_change_schema_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_changes([change])
    assert message in errors(exc)
    assert exc.value.problems[0][0].startswith("changes[0]")


@pytest.mark.parametrize(("change", "where"), [
    ({"kind": "capacity", "plant": "mine", "factor": -2}, "changes[0].factor"),
    ({"kind": "outage", "plant": "Mine!", "from": "2024-03-01", "to": "2024-04-01"},
     "changes[0].plant"),
    ({"kind": "quota", "quota": "mining", "factor": 0.5, "set_t_reo": 1}, "changes[0]"),
    ({"kind": "outage", "plant": "mine", "from": "2024-03-01"}, "changes[0]"),
], ids=["field", "pattern", "exactly-one", "model"])
def test_change_errors_name_the_real_field_path(change: dict[str, Any], where: str) -> None:
    """The path names the field of the change, not the ``kind`` tag pydantic adds to its
    location (``changes[0].quota`` would read as the change's ``quota`` field)."""
    with pytest.raises(ScenarioError) as exc:
        parse_changes([change])
    assert exc.value.problems[0][0] == where


@pytest.mark.parametrize(("change", "where", "message"), [
    ({"kind": "outage", "plant": "nope", "from": "2024-02-01", "to": "2024-03-01"},
     "changes[0].plant", "unknown plant 'nope' (known: magnets, metal, mine, recycler"),
    ({"kind": "quota", "quota": "nope", "factor": 0.5},
     "changes[0].quota", "unknown quota 'nope' (known: mining)"),
    ({"kind": "trade", "market": "nope", "side": "export", "cap_tpa": 1},
     "changes[0].market", "unknown market 'nope' (known: dy_in, la_ce_out, magnet_out)"),
    ({"kind": "demand", "segment": "nope", "factor": 2},
     "changes[0].segment", "unknown demand segment 'nope' (known: motors)"),
    ({"kind": "price", "material": "nope", "factor": 2},
     "changes[0].material", "unknown material 'nope'"),
    ({"kind": "capacity", "stage": "motor", "factor": 2},
     "changes[0].stage", "no plant of stage 'motor' in the scenario"),
    ({"kind": "plant", "action": "retire", "plant_id": "nope"},
     "changes[0].plant_id", "unknown plant 'nope'"),
    ({"kind": "outage", "plant": "mine", "from": "2030-02-01", "to": "2030-03-01"},
     "changes[0].from", "from(=2030-02-01) must lie in the horizon 2024-01-01..2025-12-31"),
    ({"kind": "quota", "quota": "mining", "factor": 2, "from": "2023-06-01"},
     "changes[0].from", "must lie in the horizon"),
])
def test_change_naming_unknown_things(base: Scenario, change: dict[str, Any], where: str,
                                      message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [change])
    assert exc.value.problems[0][0] == where
    assert message in exc.value.problems[0][1]


def test_change_ending_before_the_horizon_never_crashes_a_run(base: Scenario,
                                                              base_run: Any) -> None:
    """A change whose ``to`` lies before the horizon is either refused as bad input or has no
    effect; it must not crash the run."""
    change = {"kind": "capacity", "plant": "mine", "factor": 0.5, "to": "2023-06-01"}
    try:
        sc = retwin.apply_changes(base, [change])
    except ScenarioError as exc:
        assert "changes[0].to" in "\n".join(exc.lines())
        return
    res = retwin.run(sc, seed=1)
    np.testing.assert_array_equal(res.activity, base_run.activity)


def test_all_bad_changes_are_reported_together(base: Scenario) -> None:
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [
            {"kind": "outage", "plant": "nope", "from": "2024-02-01", "to": "2024-03-01"},
            {"kind": "quota", "quota": "mining", "factor": 0.5},
            {"kind": "quota", "quota": "nope", "factor": 0.5},
        ])
    assert [p for p, _ in exc.value.problems] == ["changes[0].plant", "changes[2].quota"]


# --- bad scenarios: the message names the path, the value and the rule -------------------------


def _problems(tree: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tree)
    return exc.value.lines()


def test_negative_capacity(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"][0]["capacity_tpa"] = -5
    lines = _problems(tiny_tree)
    assert len(lines) == 1
    assert lines[0].startswith("plants[0](mine).capacity_tpa: ")
    assert "-5" in lines[0] and "greater than or equal to 0" in lines[0]


def test_two_bad_fields_two_lines(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"][0]["capacity_tpa"] = -5
    tiny_tree["plants"][3]["utilisation_max_frac"] = 1.5
    lines = _problems(tiny_tree)
    assert len(lines) == 2
    assert lines[1].startswith("plants[3](magnets).utilisation_max_frac: ") and "1.5" in lines[1]


def test_unknown_material_in_a_recipe(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"][1]["recipe"]["inputs"]["unobtainium"] = 1
    lines = _problems(tiny_tree)
    assert lines == ["plants[1].recipe.inputs.unobtainium: unknown material 'unobtainium' "
                     "(plant 'separation')"]


def test_recipe_that_creates_an_element(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"][2]["recipe"]["inputs"]["prnd_oxide"] = 0.1
    lines = _problems(tiny_tree)
    assert any(ln.startswith("plants[2].recipe: plant 'metal' creates Nd") for ln in lines)
    assert all("must not create rare-earth elements" in ln for ln in lines)


def test_duplicate_ids(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["plants"].append(copy.deepcopy(tiny_tree["plants"][0]))
    tiny_tree["markets"].append(copy.deepcopy(tiny_tree["markets"][0]))
    lines = _problems(tiny_tree)
    assert "plants[5].id: duplicate id 'mine'" in lines
    assert "markets[3].id: duplicate id 'la_ce_out'" in lines


def test_duplicate_pool(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["pools"].append({"material": "swarf"})
    assert "pools[7].id: duplicate id 'baotou/swarf'" in _problems(tiny_tree)


def test_quota_over_unknown_plant(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["quotas"][0]["plants"].append("nope")
    assert _problems(tiny_tree) == ["quotas[0].plants[1]: unknown plant 'nope'"]


def test_plant_under_two_quotas(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["quotas"].append({"id": "again", "plants": ["mine"], "annual_t_reo": {2024: 1}})
    lines = _problems(tiny_tree)
    assert lines == ["quotas[1].plants[0]: plant 'mine' is already under quota 'mining'; "
                     "a plant may be under one quota only"]


def test_batch_shares_must_sum_to_one(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["quotas"][0]["batches"][0]["share_frac"] = 0.3
    assert _problems(tiny_tree) == [
        "quotas[0](mining): batches share_frac sums to 0.8; must sum to 1"]


def test_seasonality_needs_twelve_values(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["demand"][0]["seasonality"] = [1.0] * 11
    assert _problems(tiny_tree) == [
        "demand[0](motors).seasonality: seasonality has 11 values; must have 12 (one per month)"]


def test_missing_pool_for_an_output(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["pools"] = [p for p in tiny_tree["pools"] if p["material"] != "swarf"]
    assert _problems(tiny_tree) == [
        "plants[3].recipe.outputs.swarf: no pool for material 'swarf' in region 'baotou'",
        "plants[4].recipe.inputs.swarf: no pool for material 'swarf' in region 'baotou'"]


def test_end_before_start(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["end"] = "2023-12-31"
    assert _problems(tiny_tree) == ["end(=2023-12-31) must not be before start(=2024-01-01)"]


def test_initial_stock_above_ceiling(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["pools"][0]["max_t"] = 100
    assert _problems(tiny_tree) == ["pools[0].initial_t(=2000.0) must be <= max_t(=100.0)"]


def test_scenario_error_lines_are_path_and_message() -> None:
    e = ScenarioError([("a.b", "bad"), ("", "global")])
    assert e.lines() == ["a.b: bad", "global"]
    assert str(e) == "a.b: bad; global"
    assert ScenarioError("plain").problems == [("", "plain")]


def test_price_follows_cycle_is_refused(tiny_tree: dict[str, Any]) -> None:
    mats = {m["id"]: m for m in tiny_tree["materials"]}
    mats["prnd_metal"]["price"]["follows"] = {"material": "magnet", "share_frac": 0.8}
    mats["magnet"]["price"]["follows"] = {"material": "prnd_metal", "share_frac": 0.5}
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    lines = exc.value.lines()
    assert len(lines) == 2 and all("through a cycle of follows links" in x for x in lines)
    assert any(x.startswith("materials[") and "'magnet' follows itself" in x for x in lines)
