"""Every change kind is handled at every step it reaches (``retwin.scenario.kinds``).

The table of kinds is complete (it lists every member of the ``Change`` union, and nothing
else), each kind has the handler its way of reaching a run needs, and — so that a handler that
exists but does nothing is caught too — one change of each kind is parsed, checked against the
scenario (a wrong reference is refused, naming the field), applied, compiled and run, and
changes the run.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

import numpy as np
import pytest

import retwin
from retwin.engine.build import PATH_BUILDERS
from retwin.engine.model import TIMED_HANDLERS, ChainModel
from retwin.errors import ScenarioError
from retwin.scenario.kinds import KINDS
from retwin.scenario.schema import Change

#: One change of each kind on ``tiny`` that must change a run with randomness off, and the
#: field that, set to an unknown id, the check against the scenario must name.
EXAMPLES: dict[str, tuple[dict[str, Any], str | None]] = {
    "quota": ({"kind": "quota", "quota": "mining", "factor": 0.5, "from": "2024-06-01"}, "quota"),
    "price": ({"kind": "price", "material": "magnet", "factor": 1.5, "from": "2024-06-01"},
              "material"),
    "capacity": ({"kind": "capacity", "plant": "metal", "factor": 0.5, "from": "2024-06-01"},
                 "plant"),
    "plant": ({"kind": "plant", "action": "retire", "plant_id": "magnets",
               "from": "2024-06-01"}, "plant_id"),
    "outage": ({"kind": "outage", "plant": "separation", "from": "2024-06-01",
                "to": "2024-09-30"}, "plant"),
    "demand": ({"kind": "demand", "segment": "motors", "factor": 2.0, "from": "2024-06-01"},
               "segment"),
    "trade": ({"kind": "trade", "market": "la_ce_out", "side": "export", "cap_tpa": 0,
               "from": "2024-06-01"}, "market"),
    "reserve": ({"kind": "reserve", "material": "prnd_oxide", "reserve_t": 400,
                 "from": "2024-06-01"}, "material"),
    "parameter": ({"kind": "parameter", "path": "plants.magnets.utilisation_max_frac",
                   "value": 0.4}, None),
}


def test_the_table_lists_every_kind_of_the_change_union() -> None:
    union = {cls.model_fields["kind"].default for cls in get_args(get_args(Change)[0])}
    assert set(KINDS) == union
    assert set(EXAMPLES) == union, "add an example of the new kind to this test"
    for k in KINDS.values():
        assert k.reaches in ("data", "path", "timed"), k.kind


def test_every_kind_has_the_handler_its_way_of_reaching_a_run_needs() -> None:
    by_way = {way: {k.kind for k in KINDS.values() if k.reaches == way}
              for way in ("data", "path", "timed")}
    assert {k.kind for k in KINDS.values() if k.rewrite is not None} == by_way["data"]
    assert set(PATH_BUILDERS) == by_way["path"]
    assert set(TIMED_HANDLERS) == by_way["timed"]
    for method in TIMED_HANDLERS.values():
        assert callable(getattr(ChainModel, method))


@pytest.fixture(scope="module")
def tiny() -> retwin.Scenario:
    return retwin.apply_changes(retwin.load_scenario("tiny"), [
        {"kind": "parameter", "path": f"settings.{name}", "value": False}
        for name in ("outages", "price_noise", "demand_noise")])


def _kpis(res: retwin.RunResult) -> dict[tuple[Any, ...], float]:
    k = res.kpis
    return {(a, b, c): float(v) for a, b, c, v in zip(k["kpi"], k["key"], k["year"], k["value"],
                                                       strict=True)}


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_each_kind_changes_a_run(tiny: retwin.Scenario, kind: str) -> None:
    change, _ = EXAMPLES[kind]
    base = retwin.run(tiny, seed=1)
    what_if = retwin.run(tiny, seed=1, changes=[change])
    a, b = _kpis(base), _kpis(what_if)
    moved = [key for key in a.keys() | b.keys()
             if key not in a or key not in b or not np.isclose(a[key], b[key], rtol=1e-9)]
    assert moved, f"a {kind} change left every KPI of the run as it was"


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_applying_a_change_of_each_kind_leaves_the_scenario_as_it_was(tiny: retwin.Scenario,
                                                                      kind: str) -> None:
    """apply_changes works on its own tree of the scenario: the one it was given (shared by
    every what-if of a model) is the same afterwards, to the last field."""
    before = tiny.model_dump(by_alias=True, mode="json")
    changed = retwin.apply_changes(tiny, [EXAMPLES[kind][0]])
    assert changed.model_dump(by_alias=True, mode="json") != before
    assert tiny.model_dump(by_alias=True, mode="json") == before


@pytest.mark.parametrize("kind", sorted(k for k, (_, f) in EXAMPLES.items() if f))
def test_each_kind_checks_its_reference_against_the_scenario(tiny: retwin.Scenario,
                                                             kind: str) -> None:
    change, field = EXAMPLES[kind]
    bad = copy.deepcopy(change)
    bad[field] = "nowhere"
    with pytest.raises(ScenarioError) as err:
        retwin.apply_changes(tiny, [bad])
    assert any(where == f"changes[0].{field}" and "'nowhere'" in msg
               for where, msg in err.value.problems), err.value.problems


def test_a_parameter_change_names_a_path_that_does_not_exist(tiny: retwin.Scenario) -> None:
    with pytest.raises(ScenarioError) as err:
        retwin.apply_changes(tiny, [{"kind": "parameter", "path": "plants.nowhere.capacity_tpa",
                                     "value": 1}])
    assert err.value.problems[0][0] == "changes[0].path"
    assert "nowhere" in err.value.problems[0][1]


def _validated_whole(sc: retwin.Scenario, changes: list[dict[str, Any]]) -> retwin.Scenario:
    """``changes`` applied as a tree: the scenario's data with each change's record appended
    (a rewriting change applied first, in order), the whole validated again."""
    from retwin.scenario.load import CHANGE_ADAPTER, validate_tree

    tree = sc.model_dump(by_alias=True, mode="json")
    for ch in changes:
        if KINDS[ch["kind"]].reaches == "data":
            tree = retwin.apply_changes(validate_tree(tree), [ch]).model_dump(
                by_alias=True, mode="json")
        else:
            tree["changes"].append(CHANGE_ADAPTER.validate_python(ch).model_dump(
                by_alias=True, mode="json"))
    return validate_tree(tree)


@pytest.mark.parametrize("kinds", [
    *[(k,) for k in sorted(EXAMPLES) if KINDS[k].reaches != "data"],
    tuple(sorted(k for k in EXAMPLES if KINDS[k].reaches != "data")),
    ("quota", "parameter", "demand"),
    ("plant", "trade"),
])
def test_changes_the_engine_plays_give_the_scenario_validating_it_whole_gives(
        tiny: retwin.Scenario, kinds: tuple[str, ...]) -> None:
    """A what-if of changes the engine plays only keeps the scenario's data as it was
    (shared, not validated again): the scenario is the one validating the whole tree with the
    changes appended gives, field for field and hash for hash; with a change that rewrites
    the data among them, the whole tree is validated."""
    from retwin.scenario.load import scenario_hash

    base = retwin.apply_changes(tiny, [EXAMPLES["capacity"][0]])  # changes of its own
    changes = [EXAMPLES[k][0] for k in kinds]
    fast = retwin.apply_changes(base, changes)
    whole = _validated_whole(base, changes)
    assert fast == whole
    assert fast.model_dump(by_alias=True, mode="json") == whole.model_dump(by_alias=True,
                                                                           mode="json")
    assert scenario_hash(fast) == scenario_hash(whole)
    assert len(fast.changes) == len(base.changes) + sum(
        KINDS[k].reaches != "data" for k in kinds)
    if all(KINDS[k].reaches != "data" for k in kinds):
        assert fast.plants is base.plants  # the data shared, not validated again
    assert len(base.changes) == 1  # the scenario given is as it was


def _same_compiled(a: Any, b: Any, where: str = "compiled") -> None:
    """``a`` and ``b`` (compiled scenarios, or parts of them) hold the same values."""
    import dataclasses

    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            if f.init and f.name != "scenario":
                _same_compiled(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_compiled(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_compiled(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("kinds", [
    (),
    *[(k,) for k in sorted(EXAMPLES)],
    tuple(sorted(k for k in EXAMPLES if KINDS[k].reaches != "data")),
    ("quota", "parameter", "demand"),
])
def test_a_whatif_compiled_from_its_baselines_data_is_the_one_compiled_whole(
        kinds: tuple[str, ...]) -> None:
    """What follows from the data alone is compiled once per baseline and shared by its
    what-ifs: each gets the arrays compiling it whole gives, every field of them, and the
    market arrays too; a change that rewrites the data compiles that data anew."""
    from retwin.engine import build

    tiny = retwin.load_scenario("tiny-markets")  # tiny's chain, with markets
    base = retwin.apply_changes(tiny, [EXAMPLES["outage"][0]])  # changes of its own
    changed = retwin.apply_changes(base, [EXAMPLES[k][0] for k in kinds])
    got = build.compile_scenario(changed)
    assert got.scenario is changed
    _same_compiled(got, build._compile(changed))
    data = build._compiled_data(changed)
    shares = all(KINDS[k].reaches != "data" for k in kinds)
    assert (data is build._compiled_data(base)) == shares
    assert not data.scenario.changes and data.scenario.plants is changed.plants
    # and so are the market arrays, shared where no price change moves them
    from retwin.engine.markets import compile_markets, market_arrays

    assert changed.economics is not None
    _same_compiled(market_arrays(got), compile_markets(build._compile(changed)))
    if shares:
        assert (market_arrays(got) is market_arrays(data)) == ("price" not in kinds)
    # and a run of it is the run of the whole compile, to the last KPI (the KPIs' plan
    # made once, for the data)
    import pandas as pd

    from retwin.results import _plan

    run, whole = retwin.run(got, seed=1), retwin.run(build._compile(changed), seed=1)
    pd.testing.assert_frame_equal(run.kpis, whole.kpis, check_exact=True)
    assert (_plan(got) is _plan(data)) and whole.compiled.data is None
    from retwin.engine.model import _outage_inputs, _structure_key
    from retwin.kernels.specialised import structure_key

    np.testing.assert_array_equal(got.ramp, whole.compiled.ramp)
    assert _structure_key(got) == structure_key(got.kernel_static, got.kernel_sizes)
    assert _outage_inputs(got) == _outage_inputs(whole.compiled)
    # the shared data is left as it was: the baseline compiles as before
    _same_compiled(build.compile_scenario(base), build._compile(base))
    _same_compiled(market_arrays(build.compile_scenario(base)),
                   compile_markets(build._compile(base)))


@pytest.mark.parametrize("kinds", [
    (),
    *[(k,) for k in sorted(EXAMPLES)],
    tuple(sorted(k for k in EXAMPLES if KINDS[k].reaches != "data")),
])
def test_a_whatifs_hash_and_tree_written_from_its_fields_are_those_of_its_whole_tree(
        kinds: tuple[str, ...]) -> None:
    """The hash and the compact JSON of a scenario, written from each field's text (the
    data's made once, for every what-if that shares it), are the bytes writing its whole
    tree gives."""
    import hashlib
    import json

    from retwin.scenario.load import _DATA_TEXTS, scenario_hash, scenario_texts

    tiny = retwin.load_scenario("tiny-markets")
    base = retwin.apply_changes(tiny, [EXAMPLES["outage"][0]])
    changed = retwin.apply_changes(base, [EXAMPLES[k][0] for k in kinds])
    tree = changed.model_dump(mode="json", by_alias=True)
    digest, text = scenario_texts(changed)
    assert digest == hashlib.sha256(
        json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert digest == scenario_hash(changed) == scenario_hash(tree)
    assert text == json.dumps(tree, ensure_ascii=False, separators=(",", ":"))
    shares = all(KINDS[k].reaches != "data" for k in kinds)
    scenario_texts(base)  # each scenario's data texts, made or found (nothing made below)
    kept = [_DATA_TEXTS.get_or_make(s, lambda: None) for s in (changed, base)]
    assert kept[0] is not None and (kept[0] is kept[1]) == shares


def test_a_scenarios_text_keeps_its_non_ascii_labels_and_hashes_them_escaped() -> None:
    import hashlib
    import json

    from retwin.scenario.load import scenario_texts

    sc = retwin.load_scenario("baotou-2024")
    cut = retwin.apply_changes(sc, [{"kind": "quota", "quota": "mining", "factor": 0.9,
                                     "from": "2025-01-01"}])
    for s in (sc, cut):
        tree = s.model_dump(mode="json", by_alias=True)
        digest, text = scenario_texts(s)
        assert not text.isascii() and text == json.dumps(tree, ensure_ascii=False,
                                                         separators=(",", ":"))
        assert digest == hashlib.sha256(json.dumps(
            tree, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
