"""Market mechanisms (DESIGN §2.4) at their root, each on a small chain: what a producer under
a quota asks of its feed, which outputs pace a joint producer, and how an outside price that
follows another passes the formed price on.

Each test is a deterministic comparison on ``tiny-markets`` or a chain built from it."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

import retwin
from conftest import QUIET
from retwin.kernels.flow import BIND_DEMAND

YEAR2 = slice(366, 731)  # 2025, in days of the 2024-2025 horizon
MONTHS2 = slice(12, 24)


def _tiny(**edit: Any) -> retwin.Scenario:
    """tiny-markets, quiet, with top-level fields replaced or extended (lists are appended)."""
    sc = retwin.load_scenario("tiny-markets")
    sc = retwin.apply_changes(sc, [{"kind": "parameter", "path": f"settings.{k}", "value": v}
                                   for k, v in QUIET.items()])
    d = sc.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key, value in edit.items():
        if isinstance(value, list):
            d[key] = [*d.get(key, []), *value]
        else:
            d[key] = value
    return retwin.Scenario.model_validate(d)


def _act(res: Any, plant: str, days: slice = YEAR2) -> float:
    return float(res.activity[res.compiled.plant_ids.index(plant), days].sum())


def _price_ratio(res: Any, material: str) -> float:
    """Year 2's mean formed price over the replayed (outside) price."""
    i = res.compiled.material_ids.index(material)
    return float(res.price_month[i, MONTHS2].mean() / res.compiled.price_month[i, MONTHS2].mean())


# --- (a) a producer under a quota asks its feed for no more than its quota lets it run ------


def test_a_plant_held_by_its_quota_asks_its_feed_for_no_more_than_the_quota_allows() -> None:
    """The separation plant runs under a smelting quota of about half its capacity; the
    mine (its quota lifted) is paced on what the separation draws. Counted at the
    separation's capacity, the concentrate's working stock would be twice what the quota lets
    be drawn, stock would pile up towards it and the price collapse (to 0.44 of the outside
    price); counted at what the quota lets the separation run, the mine makes about what is
    drawn and the concentrate price stays near its outside price."""
    sc = _tiny(quotas=[{"id": "smelting", "name": "Smelting quota", "plants": ["separation"],
                        "annual_t_reo": {"2024": 8000, "2025": 8000},
                        "batches": [{"month": 1, "share_frac": 1.0}]}])
    sc = retwin.apply_changes(sc, [{"kind": "quota", "quota": "mining", "factor": 10.0}])
    res = retwin.run(sc, seed=1)
    drawn = 2.2 * _act(res, "separation")
    assert _act(res, "mine") < 1.15 * drawn
    assert _price_ratio(res, "concentrate") > 0.7



# --- (b) a joint producer is pulled by its main outputs that are short ---------------------


def test_a_joint_producer_whose_most_valuable_output_piles_up_still_makes_the_short_one() -> None:
    """The separation plant makes La/Ce, PrNd and Dy oxide; the magnets take less Dy than it
    makes, so the Dy pool is in surplus and its price falls (year 2: 0.62 of the outside
    price; 0.25 when prices moved three times as fast with a stock gap).
    With the Dy outside price raised to 6 M CNY/t, Dy carries 54 % of the plant's output
    value at the start's prices. Paced on that output alone, the plant ran as little as the
    Dy pool asked for while PrNd was short: year 2, separation 7,399 t (13,283 t at the
    shipped Dy price), magnets 4,344 t (4,670 t). Paced on the shortest of its main outputs
    (PrNd, 39 %, and Dy), it makes the PrNd the chain asks for, whatever Dy is worth."""
    sc = _tiny()
    dear = retwin.apply_changes(sc, [{"kind": "parameter", "value": 6e6,
                                      "path": "materials.dy_oxide.price.base_cny_per_unit"}])
    base, res = retwin.run(sc, seed=1), retwin.run(dear, seed=1)
    assert _price_ratio(res, "dy_oxide") < 0.7  # Dy piles up
    assert _act(res, "separation") >= 0.97 * _act(base, "separation")
    assert _act(res, "magnets") >= 0.99 * _act(base, "magnets")


# --- (c) a follower's price and its leader's formed price ---------------------------------


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the metal's formed price is pulled toward its oxide's passed on, not "
                   "held above it: month 3, oxide 1.12x and metal 0.91x their outside prices "
                   "(the metal makers' margin -0.36), then the metal overshoots to 1.33x")
def test_a_metal_maker_whose_oxide_is_short_does_not_sell_below_its_feeds_cost() -> None:
    """A mining-quota cut to 30 % leaves the oxide short: its formed price runs above its
    outside price. The metal ``follows`` the oxide (share 1): its formed price is pulled
    toward its outside price moved by the oxide's formed-price gap (the region's cost
    pass-through), ``reference_pull_per_month`` of the log distance a month, and moves with
    its own pool's stock gap too. So it can still sell below its feed's cost for a few
    months: the metal pool fills while the metal makers' customers slow, its price falls
    (month 3: 0.91x against the oxide's 1.12x), the makers cut and the metal then overshoots
    (1.33x in month 7). A floor (the metal never below its oxide passed on) would make this
    test pass; prices that jump together each month (the pass-through taken at once) made
    generated chains cycle more, not less (tests/test_properties_markets.py)."""
    res = retwin.run(_tiny(), seed=1,
                     changes=[{"kind": "quota", "quota": "mining", "factor": 0.3}])
    c = res.compiled
    o, m = c.material_ids.index("prnd_oxide"), c.material_ids.index("prnd_metal")
    oxide = res.price_month[o] / c.price_month[o]
    metal = res.price_month[m] / c.price_month[m]
    assert oxide.max() > 1.2  # the oxide is short
    assert (metal >= oxide * (1 - 1e-9)).all()


def test_a_deeper_shortage_raises_the_price_more() -> None:
    """The price step grows with what buyers could not get: in full up to one working stock
    of it, by its logarithm beyond (an empty pool whose plants could not draw three working
    stocks moves its price more than one whose plants missed one). Before, the gap stopped at
    one working stock, so a national pool already short answered a quota cut with no price
    change at all."""
    from retwin.kernels import market as km

    par = np.zeros(len(km.PAR_NAMES))
    par[km.PAR_PRICE_ADJUST], par[km.PAR_MAX_STEP], par[km.PAR_COVER] = 0.1, 10.0, 30.0
    sf = np.zeros((2, 1))  # no fixed working stock: cover days of use
    offtake = np.array([10.0])  # per day: a working stock of 300
    steps = []
    for short in (0.0, 150.0, 300.0, 900.0, 2700.0):
        step = np.zeros(1)
        km.month_step(offtake, np.array([short]), np.zeros(1), np.ones(1, np.bool_),
                      np.zeros(1, np.int64), sf, par, np.array([0.0]), np.zeros(1),
                      np.zeros(1), np.zeros(1), step)
        steps.append(float(step[0]))
    # empty pool: gap 1 (step 0.1); short 150: 1.5 -> 1 + ln 1.5; 300: 2 -> 1 + ln 2 ...
    assert steps == pytest.approx([0.1 * g for g in (1.0, 1 + math.log(1.5), 1 + math.log(2),
                                                     1 + math.log(4), 1 + math.log(10))])
    assert all(b > a for a, b in itertools.pairwise(steps))


def test_a_planned_plant_runs_to_its_ceiling_whatever_the_demand() -> None:
    """A plant marked ``planned`` (state-planned output, such as China's quota holders) is not
    paced by the demand on its output: when the motor makers' demand falls to a tenth, the
    paced separator slows down, the planned one keeps separating (its store fills, so
    stocks build and its oxide's price falls instead)."""
    cut = {"kind": "demand", "segment": "motors", "factor": 0.1, "from": "2024-03-01"}

    def run(planned: bool) -> Any:
        sc = retwin.apply_changes(_tiny(), [
            {"kind": "parameter", "path": "plants.separation.planned", "value": planned}])
        return retwin.run(sc, seed=1), retwin.run(sc, seed=1, changes=[cut])

    paced, paced_cut = run(False)
    planned, planned_cut = run(True)
    assert _act(paced_cut, "separation") < 0.9 * _act(paced, "separation")
    assert _act(planned_cut, "separation") >= 0.99 * _act(planned, "separation")
    assert _price_ratio(planned_cut, "prnd_oxide") < _price_ratio(planned, "prnd_oxide")
    # a planned plant is never reported bound by the demand on its output
    c = planned_cut.compiled
    sep = c.plant_ids.index("separation")
    assert not (planned_cut.binding[sep] == BIND_DEMAND).any()


# --- outside demand that grows year by year -------------------------------------------------


def _magnet_exports(growth: float, changes: list[dict[str, Any]] | None = None
                    ) -> dict[int, float]:
    """tiny-markets' magnet exports per year, all under contract (they leave whatever the
    price), with outside demand growing by ``growth`` a year."""
    d = _tiny().model_dump(mode="json", by_alias=True, exclude_none=True)
    for m in d["markets"]:
        if m["id"] == "magnet_out":
            m["export"].update(contract_frac=1.0, growth_frac_per_year=growth)
    res = retwin.run(retwin.Scenario.model_validate(d), seed=0, changes=changes or [])
    kp = res.kpis
    rows = kp[(kp.kpi == "exports.market") & (kp.key == "magnet_out")]
    return {int(y): float(v) for y, v in zip(rows.year, rows.value, strict=True)}


def test_outside_demand_grows_each_year_and_a_control_scales_the_grown_cap() -> None:
    """base 2,500 t, cap 6,000 t: growing by 20 % a year, 2025's contracted exports are
    3,000 t (2,500 without growth); a control at 0.3 of the cap from 2025 caps them at
    0.3 x 6,000 x 1.2 = 2,160 t (the grown cap), a cap of 2,000 t replaces it."""
    flat, grown = _magnet_exports(0.0), _magnet_exports(0.2)
    assert flat[2025] == pytest.approx(2500.0, rel=1e-6)
    assert grown[2025] == pytest.approx(3000.0, rel=1e-6)
    assert grown[2024] == pytest.approx(flat[2024], rel=1e-9)  # the start's year is the base
    control = {"kind": "trade", "market": "magnet_out", "side": "export", "from": "2025-01-01"}
    assert _magnet_exports(0.2, [{**control, "factor": 0.3}])[2025] == pytest.approx(
        2160.0, rel=1e-6)
    assert _magnet_exports(0.2, [{**control, "cap_tpa": 2000}])[2025] == pytest.approx(
        2000.0, rel=1e-6)
