"""The KPI declaration (retwin.kpis) and its uses: every KPI a run reports is declared, every
declared KPI is reported, and the frame's units, the command line's labels, the reports'
labels and the service's KPI metadata all come from the declaration."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import retwin
from conftest import make_scenario, mat, plant, quiet
from retwin import kpis
from retwin.cli import TABLE_KPIS, _kpi_label
from retwin.kpis import GROUPS, KPIS, NAMES, VALUE_GROUPS, Kpi, catalogue
from retwin.report.labels import _FIXED, Labels
from retwin.results import _COMPUTE
from retwin.scenario.schema import ELEMENTS, STAGE_GROUP, STAGES

REFERENCE = ["baotou-2024", "baotou-2022", "china-2024", "china-2020", "baotou-2024-paths"]
EXAMPLE_QUOTA = {"kind": "quota", "quota": "mining", "factor": 0.5, "from": "2024-06-01"}
EXAMPLE_PRICE = {"kind": "price", "material": "magnet", "factor": 1.5, "from": "2024-06-01"}


# --- the declaration itself ----------------------------------------------------------------


def test_names_and_labels_are_unique() -> None:
    assert len(set(NAMES)) == len(NAMES)
    for attr in ("label", "label_zh"):
        labels = [getattr(k, attr) for k in KPIS]
        assert len(set(labels)) == len(labels), attr
    assert all(k.label and k.label_zh and k.description and k.rows for k in KPIS)


def test_every_declared_kpi_has_one_computation() -> None:
    """The results compute exactly the declared KPIs, in the declaration's order."""
    assert list(_COMPUTE) == list(NAMES)


def test_value_groups_are_the_stage_groups_and_their_total() -> None:
    assert set(VALUE_GROUPS) == set(STAGE_GROUP.values()) | {"total"}
    assert VALUE_GROUPS[-1] == "total"
    assert set(STAGE_GROUP) == set(STAGES)


@pytest.mark.parametrize(("change", "message"), [
    ({"per": "country"}, "per='country' must be one of"),
    ({"group": "misc"}, "group='misc' must be one of"),
    ({"per": "none"}, "key=None must be given exactly when per is 'none'"),
    ({"key": "all"}, "key='all' must be given exactly when per is 'none'"),
    ({"unit": None, "per": "element"}, "unit=None (its material's) needs keys that have a "
                                       "material, not per='element'"),
])
def test_a_bad_declaration_is_refused_naming_field_and_rule(change: dict[str, Any],
                                                             message: str) -> None:
    good: dict[str, Any] = {
        "name": "x.stage", "per": "stage", "unit": "t", "kind": "amount",
        "group": "production", "label": "X", "label_zh": "X", "description": "x",
        "rows": "every stage", "fmt": ",.0f"}
    Kpi(**good)
    with pytest.raises(ValueError, match=r"^KPI x\.stage: ") as exc:
        Kpi(**{**good, **change})
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_get_names_the_known_kpis() -> None:
    assert kpis.get("value.group").unit == "亿元"
    with pytest.raises(KeyError, match=r"'value\.grup' is not declared \(known: output\.stage"):
        kpis.get("value.grup")


def test_catalogue_is_json_ready_and_complete() -> None:
    cat = catalogue()
    assert [c["name"] for c in cat] == list(NAMES)
    assert json.loads(json.dumps(cat, ensure_ascii=False)) == cat
    for c, k in zip(cat, KPIS, strict=True):
        assert c["label"] == k.label and c["label_zh"] == k.label_zh
        assert (c["group_label"], c["group_label_zh"]) == GROUPS[k.group]
        assert (c["unit"], c["unit_from"]) == ((None, "material") if k.unit is None
                                               else (k.unit, None))
        assert c["per"] in kpis.PER
    assert {c["name"]: c["unit"] for c in cat}["element.la_ce_surplus"] == "t REO"


# --- what a run reports -----------------------------------------------------------------------


def _expected_unit(sc: retwin.Scenario, kpi: str, key: str) -> str:
    """A row's unit, worked out from the scenario's objects (slow and obvious)."""
    decl = kpis.get(kpi)
    if decl.unit is not None:
        return decl.unit
    unit = {m.id: m.unit for m in sc.materials}
    if decl.per == "stage":
        units = {unit[p.recipe.main_output] for p in sc.plants if p.stage == key}
        return units.pop() if len(units) == 1 else "mixed"
    if decl.per == "plant":
        return unit[sc.plant(key).recipe.main_output]
    if decl.per == "material":
        return unit[key]
    if decl.per == "market":
        return unit[next(k.material for k in sc.markets if k.id == key)]
    assert decl.per == "segment"
    return unit[next(g.material for g in sc.demand if g.id == key)]


def _axis(sc: retwin.Scenario, k: Kpi) -> list[str]:
    """Every key ``k`` may have in a run of ``sc``, in order."""
    return {
        "stage": lambda: [s for s in STAGES if any(p.stage == s for p in sc.plants)],
        "plant": lambda: [p.id for p in sc.plants],
        "material": lambda: [m.id for m in sc.materials],
        "market": lambda: [m.id for m in sc.markets],
        "segment": lambda: [g.id for g in sc.demand],
        "element": lambda: list(ELEMENTS),
        "group": lambda: list(VALUE_GROUPS),
        "none": lambda: [k.key],
    }[k.per]()


def _has_row(sc: retwin.Scenario, k: Kpi, key: str) -> bool:
    """Whether ``key`` gets a row of ``k``, per the declaration's ``rows``."""
    if k.name == "production.material":
        return any(key in p.recipe.outputs for p in sc.plants)
    if k.name == "price.material":
        m = next(m for m in sc.materials if m.id == key)
        return m.price.base_cny_per_unit > 0 or any(pt.price_cny_per_unit > 0
                                                    for pt in m.price.path)
    if k.name == "cover.material":
        return any(pool.material == key for pool in sc.pools)
    if k.name == "margin.stage":
        return sc.markets_on
    if k.name in ("imports.market", "exports.market"):
        m = next(m for m in sc.markets if m.id == key)
        side = m.import_ if k.name == "imports.market" else m.export
        return side is not None and side.cap_tpa > 0
    return True


def _expected_rows(sc: retwin.Scenario) -> list[tuple[str, str]]:
    """(kpi, key) of a run's rows: families in declaration order, consecutive families on
    one axis key by key."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(KPIS):
        j = i
        while j + 1 < len(KPIS) and KPIS[j + 1].per == KPIS[i].per:
            j += 1
        run = [(k, _axis(sc, k)) for k in KPIS[i:j + 1]]  # one axis ('none': a key each)
        for pos in range(len(run[0][1])):
            out += [(k.name, axis[pos]) for k, axis in run if _has_row(sc, k, axis[pos])]
        i = j + 1
    return out


def check_frame(res: Any) -> None:
    """Every row of the run's KPI frame is a declared KPI, in the declaration's unit and
    order; every declared KPI has the rows its declaration promises."""
    sc = res.compiled.scenario
    df = res.kpis
    assert list(df.columns) == ["kpi", "key", "year", "value", "unit"]
    assert set(df.kpi) <= set(NAMES), "undeclared KPIs"
    rows = df.drop_duplicates(["kpi", "key"])
    assert list(zip(rows.kpi, rows.key, strict=True)) == _expected_rows(sc)
    assert list(rows.unit) == [_expected_unit(sc, k, key) for k, key in
                               zip(rows.kpi, rows.key, strict=True)]
    # every (kpi, key) has one row per year, in order
    years = sorted({y for y, _ in res.compiled.months})
    assert list(df.year) == years * len(rows)


def test_tiny_reports_every_declared_kpi(tiny_run: Any) -> None:
    check_frame(tiny_run)
    assert set(tiny_run.kpis.kpi) == {k.name for k in KPIS if not k.optional}
    markets = retwin.run(quiet(retwin.load_scenario("tiny-markets")), seed=1)
    check_frame(markets)
    assert set(markets.kpis.kpi) == set(NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCE)
def test_reference_models_report_every_declared_kpi(name: str) -> None:
    res = retwin.run(retwin.load_scenario(name), seed=1)
    check_frame(res)
    missing = {k.name for k in KPIS if not k.optional} - set(res.kpis.kpi)
    assert missing == set()


def test_interleaving_follows_the_declaration(tiny_run: Any) -> None:
    """Consecutive families on one axis come key by key: a stage's output, utilisation and
    capacity together; a market's imports, then its exports."""
    pairs = list(dict.fromkeys(zip(tiny_run.kpis.kpi, tiny_run.kpis.key, strict=True)))
    stage_rows = [p for p in pairs if p[0] in ("output.stage", "utilisation.stage",
                                                "capacity.stage")]
    stages = list(dict.fromkeys(k for _, k in stage_rows))
    assert stage_rows == [(n, s) for s in stages
                          for n in ("output.stage", "utilisation.stage", "capacity.stage")]
    assert pairs[pairs.index(("output.plant", "mine")) + 1] == ("utilisation.plant", "mine")
    trade = [p for p in pairs if p[0] in ("imports.market", "exports.market")]
    assert trade == [("exports.market", "la_ce_out"), ("imports.market", "dy_in"),
                     ("exports.market", "magnet_out")]


def test_main_output_units_are_looked_up_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plant's unit is its recipe's first output's, whatever the order of the materials;
    a stage whose plants make different units says ``mixed``; and the KPIs never search the
    scenario's materials one plant at a time."""
    sc = make_scenario(
        [mat("ore", 0.02), mat("scrap", 0.3), mat("motor", 0, unit="unit"),
         mat("mw", 0, unit="MW"), mat("conc", 0.1)],
        [plant("mine", "mining", 1000, {"conc": 1}, {"ore": 10}, extracts=True),
         plant("motors", "motor", 100, {"motor": 1, "scrap": 0.1}, {"conc": 0.5}),
         plant("turbines", "motor", 10, {"mw": 1}, {"conc": 1})],
        days=400,
    )

    def no_search(self: Any, material_id: str) -> Any:
        raise AssertionError(f"Scenario.material({material_id!r}) searched")

    monkeypatch.setattr(retwin.Scenario, "material", no_search)
    res = retwin.run(sc, seed=1)
    df = res.kpis.drop_duplicates(["kpi", "key"]).set_index(["kpi", "key"]).unit
    assert df[("output.plant", "motors")] == "unit"
    assert df[("output.plant", "turbines")] == "MW"
    assert df[("output.stage", "motor")] == "mixed"
    assert df[("output.stage", "mining")] == "t"
    assert df[("production.material", "scrap")] == "t"
    assert df[("capacity.stage", "motor")] == "per year"
    monkeypatch.undo()
    check_frame(res)


def test_production_and_local_conversion_match_a_plain_loop(tiny_run: Any) -> None:
    """The array computations against the obvious loops over the scenario's plants."""
    res = tiny_run
    sc, c = res.compiled.scenario, res.compiled
    df = res.kpis.set_index(["kpi", "key", "year"]).value
    reo = {m.id: m.reo_per_unit for m in sc.materials}
    years_of_day = c.dates.astype("datetime64[Y]").astype(int) + 1970
    for y in res.years:
        days = years_of_day == y
        act = {p.id: float(res.activity[i, days].sum()) for i, p in enumerate(sc.plants)}
        made: dict[str, float] = {}
        sep: dict[str, float] = {}
        for p in sc.plants:
            for m, a in p.recipe.outputs.items():
                made[m] = made.get(m, 0.0) + act[p.id] * a
                if p.stage in ("separation", "recycling"):
                    sep[m] = sep.get(m, 0.0) + act[p.id] * a * reo[m]
        for m, v in made.items():
            assert df[("production.material", m, y)] == pytest.approx(v, rel=1e-12)
        # each separated material's uses: plants' draws, demand, exports, stock build-up
        converted = 0.0
        for m, v in sep.items():
            drawn = sum(act[p.id] * a for p in sc.plants if not p.extracts
                        for mm, a in p.recipe.inputs.items() if mm == m)
            served = sum(float(res.served[g, days].sum())
                         for g, seg in enumerate(sc.demand) if seg.material == m)
            exported = sum(float(res.exports[k, days].sum())
                           for k, mk in enumerate(sc.markets) if mk.material == m)
            s = [i for i, (_, pm) in enumerate(c.pool_keys) if pm == m]
            last = np.flatnonzero(days)[-1]
            first = np.flatnonzero(days)[0]
            before = (res.stock[s, first - 1].sum() if first > 0
                      else sum(c.pool_initial[i] for i in s))
            build = max(float(res.stock[s, last].sum() - before), 0.0)
            uses = drawn + served + exported + build
            converted += v * drawn / uses if uses > 0 else 0.0
        want = converted / sum(sep.values())
        assert df[("local_conversion", "region", y)] == pytest.approx(want, rel=1e-9)


def _stockpile(consumer_tpa: float, export_tpa: float, days: int = 365) -> Any:
    """mine -> separation -> oxide, which a metal plant draws at ``consumer_tpa``, a market
    buys at ``export_tpa``, and the rest piles up in the oxide pool."""
    mats = [mat("ore", 0.05), mat("conc", 0.5, price=2000.0), mat("oxide", 1.0, price=1e5),
            mat("metal", 1.0, price=2e5)]
    plants = [plant("mine", "mining", 20000, {"conc": 1}, {"ore": 10}, extracts=True),
              plant("sep", "separation", 5000, {"oxide": 1}, {"conc": 2}),
              plant("met", "metal", consumer_tpa, {"metal": 1}, {"oxide": 1})]
    markets = [{"id": "out", "material": "oxide", "export": {"cap_tpa": export_tpa}}] \
        if export_tpa > 0 else []
    return retwin.run(make_scenario(mats, plants, days=days, markets=markets), seed=1)


@pytest.mark.parametrize(("consumer", "export", "share"), [
    (0.0, 0.0, 0.0),  # everything piles up: nothing is converted
    (2500.0, 0.0, 0.5),  # half is drawn, half piles up
    (2500.0, 2500.0, 0.5),  # half drawn, half exported
])
def test_local_conversion_counts_only_what_the_regions_plants_draw(
        consumer: float, export: float, share: float) -> None:
    """Stock build-up is not conversion (the old reading, ``1 - exported / made``, said 100 %
    for a region whose separated output only piled up)."""
    res = _stockpile(consumer, export)
    v = res.kpi("local_conversion", "region", 2024)
    assert v == pytest.approx(share, abs=0.01)


def test_unsold_stock_is_valued_apart_from_output_sold() -> None:
    """Output that piles up in stock is not sold: the value of all output splits into
    output value (sold) and unsold stock value, per stage and group."""
    res = _stockpile(2500.0, 0.0)
    c = res.compiled
    sep = c.plant_ids.index("sep")
    made = float(res.value_month[sep].sum()) / 1e8  # every t of oxide at its price
    sold = res.kpi("value.stage", "separation", 2024)
    unsold = res.kpi("unsold_value.stage", "separation", 2024)
    assert sold + unsold == pytest.approx(made, rel=1e-9)
    assert unsold == pytest.approx(0.5 * made, rel=0.01)
    all_sold = _stockpile(5000.0, 0.0)
    assert all_sold.kpi("unsold_value.stage", "separation", 2024) < 1e-3 * made
    for g in VALUE_GROUPS:
        total = sum(res.kpi(k, s, 2024) for k in ("value.stage", "unsold_value.stage")
                    for s in c.topology.stage_plants if g in ("total", STAGE_GROUP[s]))
        assert res.kpi("value.group", g, 2024) + res.kpi("unsold_value.group", g, 2024) \
            == pytest.approx(total, rel=1e-9)


def test_one_layout_per_compiled_scenario(tiny: retwin.Scenario) -> None:
    """Runs of one compiled scenario share their rows' labels, made once; a frame handed
    out is the caller's to change."""
    c = retwin.prepare(tiny)
    a, b = retwin.run(c, seed=1), retwin.run(c, seed=2)
    fa, fb = a.kpis, b.kpis
    layout = c.labels["kpis"][0]
    pd.testing.assert_frame_equal(fa.drop(columns="value"), fb.drop(columns="value"))
    assert not np.array_equal(fa.value.to_numpy(), fb.value.to_numpy())
    fa.loc[0, ["unit", "key"]] = ["changed", "changed"]
    fresh = retwin.run(c, seed=1).kpis
    assert c.labels["kpis"][0] is layout
    assert fresh.loc[0, "unit"] != "changed" and fresh.loc[0, "key"] != "changed"
    pd.testing.assert_frame_equal(fresh, retwin.run(retwin.prepare(tiny), seed=1).kpis)


def test_runs_that_keep_their_capacity_share_it_and_a_change_has_its_own(
        tiny: retwin.Scenario) -> None:
    """The nameplate activity of runs whose capacity did not change depends on the compiled
    scenario alone: made once (per day, month and year), read-only, shared, and the numbers
    a run would make alone. A run whose capacity changed makes its own."""
    c = retwin.prepare(tiny)
    a, b = retwin.run(c, seed=1), retwin.run(c, seed=2)
    assert not a.capacity_log and a.capacity_days is b.capacity_days
    assert a.capacity_month is b.capacity_month
    plain = c.ramp * c.nameplate_tpa[:, None] / 365.0
    assert np.array_equal(a.capacity_days, plain)
    assert np.array_equal(a.capacity_month, np.add.reduceat(plain, c.month_start_day, axis=1))
    with pytest.raises(ValueError, match="read-only"):
        a.capacity_days[0, 0] = 1.0
    cut = retwin.run(c, seed=1, changes=[{"kind": "capacity", "plant": "metal",
                                           "factor": 0.5, "from": "2024-06-01"}])
    assert cut.capacity_log and cut.capacity_days is not a.capacity_days
    p = cut.compiled.plant_ids.index("metal")
    day = (np.datetime64("2024-06-01") - np.datetime64(tiny.start)).astype(int)
    assert np.array_equal(cut.capacity_days[p, day:], plain[p, day:] * 0.5)
    assert np.array_equal(cut.capacity_days[p, :day], plain[p, :day])
    assert cut.capacity_days.flags.writeable
    assert np.array_equal(cut.kpi_values, retwin.run(c, seed=1, changes=[
        {"kind": "capacity", "plant": "metal", "factor": 0.5, "from": "2024-06-01"}]).kpi_values)


def test_what_ifs_that_change_no_plant_share_the_calendar_and_the_nameplate_activity(
        tiny: retwin.Scenario) -> None:
    """Compiled what-ifs of one model whose plants and calendar are the model's share its
    calendar and its runs' nameplate activity (made once, by content); a what-if that
    changes a plant's capacity in the data, or the horizon, has its own. Each is what a
    run of that scenario alone makes."""
    from retwin.results import _calendar

    quota = retwin.prepare(retwin.apply_changes(tiny, [EXAMPLE_QUOTA]))
    price = retwin.prepare(retwin.apply_changes(tiny, [EXAMPLE_PRICE]))
    bigger = retwin.prepare(retwin.apply_changes(tiny, [
        {"kind": "parameter", "path": "plants.metal.capacity_tpa", "value": 9999.0}]))
    shorter = retwin.prepare(retwin.apply_changes(tiny, [
        {"kind": "parameter", "path": "end", "value": "2024-09-30"}]))
    a, b = retwin.run(quota, seed=1), retwin.run(price, seed=1)
    assert _calendar(quota) is _calendar(price)
    assert a.capacity_days is b.capacity_days and a.capacity_month is b.capacity_month
    for c in (bigger, shorter):
        r = retwin.run(c, seed=1)
        assert r.capacity_days is not a.capacity_days
        assert np.array_equal(r.capacity_days, c.ramp * c.nameplate_tpa[:, None] / 365.0)
        assert np.array_equal(r.capacity_month,
                              np.add.reduceat(r.capacity_days, c.month_start_day, axis=1))
    assert _calendar(shorter) is not _calendar(quota)
    assert np.array_equal(a.capacity_days, quota.ramp * quota.nameplate_tpa[:, None] / 365.0)


# --- the command line, the reports, the service -------------------------------------------


def test_cli_table_labels_come_from_the_declaration() -> None:
    assert set(TABLE_KPIS) <= set(NAMES)
    label = {n: (lambda key, n=n: _kpi_label(kpis.get(n), key)) for n in NAMES}
    assert label["output.stage"]("mining") == "Output · mining"
    assert label["utilisation.stage"]("magnet") == "Utilisation · magnet"
    assert label["element.la_ce_surplus"]("La+Ce") == "La+Ce surplus (t REO)"
    assert label["local_conversion"]("region") == "Local conversion rate"
    assert label["fill_rate.segment"]("motors") == "Fill rate · motors"
    assert label["value.group"]("total") == "Output value · total (亿元)"


def test_report_labels_come_from_the_declaration() -> None:
    assert not set(_FIXED) & set(NAMES)
    en, zh = Labels("en"), Labels("zh")
    for k in KPIS:
        assert en(k.name) == k.label
        assert zh(k.name) == k.label_zh
    assert zh("value.group") == "产值"


def test_service_lists_the_declared_kpis(tmp_path: Any) -> None:
    with warnings.catch_warnings():  # Starlette's TestClient would rather have httpx2
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from retwin_service.main import create_app
    from retwin_service.settings import Settings

    s = Settings(data_dir=tmp_path, workers=1, precompute=[], host="127.0.0.1",
                 database_url="")
    with TestClient(create_app(s), base_url="http://127.0.0.1",
                    client=("127.0.0.1", 50000)) as client:
        r = client.get("/api/v1/kpis")
    assert r.status_code == 200, r.text
    assert r.json() == catalogue()


def test_compiled_scenarios_with_the_same_rows_share_one_layout_and_no_other() -> None:
    """What-ifs that change numbers keep the KPI rows: their compiled scenarios share the
    layout (and the frame and index made from it) of the first. One whose keys or units
    differ gets its own, the same as one made with nothing remembered."""
    from retwin import results
    from retwin.engine.run import prepare

    def sc(capacity: float, unit: str = "t", mine: str = "mine") -> retwin.Scenario:
        return make_scenario(
            [mat("ore", 0.02), mat("conc", 0.1, unit=unit)],
            [plant(mine, "mining", capacity, {"conc": 1}, {"ore": 10}, extracts=True)],
            days=400)

    first, second = prepare(sc(1000)), prepare(sc(500))
    shared = results._kpi_layout(first)
    assert results._kpi_layout(second) is shared
    assert results._kpi_index(second) is results._kpi_index(first)
    for other in (sc(1000, unit="unit"), sc(1000, mine="pit")):
        c = prepare(other)
        got = retwin.run(c, seed=1).kpis
        assert results._kpi_layout(c) is not shared
        results._LAYOUTS.clear()
        fresh = retwin.run(prepare(other), seed=1).kpis
        pd.testing.assert_frame_equal(got, fresh, check_exact=True)
        assert not got.equals(retwin.run(first, seed=1).kpis)
