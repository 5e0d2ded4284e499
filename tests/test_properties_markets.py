"""Monotonicity with markets on (hypothesis): ``tiny-markets``, randomness off, its plants'
capacities and its mining quota scaled by generated factors (0.7–1.3).

The property (DESIGN §2.4): raising one plant's capacity, or the quota, never lowers the
chain's final output — the magnet stage's activity over the horizon — by more than
:data:`TOLERANCE`; and no pool ever holds more than its ``max_t``.

Why a tolerance, and why 1 %: producers decide monthly, from smoothed (three-month) use and
margin, so a raise changes *when* plants respond, and so what sits in stock between stages
when the horizon ends. The metal and magnet pools' working stocks (100 t of metal, about
330 t of magnets' worth, and 200 t of magnets) are about 6 % of the two years' magnet output
(~8,600 t); a what-if that ends with them a sixth fuller moves the total by about 1 % with
nothing lost. More than that is a real fall, not timing.

It used to fail often. Of 120 random cases drawn as the property draws them (numpy seed 0),
6.7 % fell by more than 1 %, the worst by 5.6 %: producers ran every plant at its ceiling in
month one, and a plant decided to run flat out followed a raised ceiling whatever its
customers asked. With those two fixed (``N_START_PASSES`` in
:mod:`retwin.processes.economy`; a flat-out plant follows a raised ceiling only up to the
rate it was asked for), 1.7 % still fell (3.0 % of 400 cases of seed 1, the worst by 6.4 %):
the prices and margins cycled from month to month (a cobweb), and a raise moved the cycle.
A raised metal plant flooded its pool, the metal price fell while the oxide price rose, the
metal makers' margin collapsed and they cut to their minimum; the metal shortage that
followed spiked the metal price, and the magnet makers, whose own price only drifted back
toward the outside price, cut on their margin. Three changes damped it: a formed price that
follows another formed price is pulled toward its outside price moved by its share of that
price's gap (the region's cost pass-through, :func:`retwin.kernels.market.month`); prices move
more slowly with a stock gap (``market.price_adjust_per_month`` 0.3 -> 0.1, what the
national back-cast fits); and output moves less with a month's margin
(``producer.margin_band_frac`` 0.1 -> 0.15; short-run supply is nearly inelastic). Measured with
``python tests/test_properties_markets.py 1000 SEED`` (cases drawn as the property draws
them) for seeds 0-5, 6,000 cases: none falls by more than 1 %, the worst by 0.72 %; the 120
cases of seed 0: worst -0.28 %.
The formerly failing cases (``FIXED``) are regression tests, and the pool ceilings hold and
are tested.

Output *value* is another matter: at the formed prices it can fall, and should. More supply
lowers the price, and with demand as inelastic as rare earths' (elasticity -0.2) the price
falls by more than the volume rises: of the same 6,000 cases, 1.3 % lower the magnets'
output value by more than 1 %, the worst by 6.6 % (metal capacity x 1.9: metal price -30 %,
magnet price -8 %, magnet output +0.2 %). :func:`test_a_glut_lowers_the_price_not_the_output`
holds that case to its economics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import retwin
from conftest import quiet
from retwin.results import RunResult

#: Largest fall of the magnet stage's output, as a share of the baseline's, that counts as
#: timing rather than a fall (see the module docstring).
TOLERANCE = 0.01

PLANTS = ("mine", "separation", "metal", "magnets", "recycler")
TARGETS = (*PLANTS, "quota")

_BASE = quiet(retwin.load_scenario("tiny-markets"))
_CAPACITY = {p.id: p.capacity_tpa for p in _BASE.plants}


def _scenario(factors: dict[str, float], quota: float) -> retwin.Scenario:
    """tiny-markets (randomness off) with each plant's capacity and the quota scaled."""
    return retwin.apply_changes(_BASE, [
        *({"kind": "parameter", "path": f"plants.{p}.capacity_tpa",
           "value": _CAPACITY[p] * f} for p, f in factors.items()),
        {"kind": "quota", "quota": "mining", "factor": quota}])


def _raise(target: str, up: float) -> dict[str, Any]:
    if target == "quota":
        return {"kind": "quota", "quota": "mining", "factor": up}
    return {"kind": "capacity", "plant": target, "factor": up}


def _magnets(r: RunResult) -> float:
    return float(r.activity[r.compiled.plant_ids.index("magnets")].sum())


def _runs(factors: dict[str, float], quota: float, target: str, up: float
          ) -> tuple[RunResult, RunResult]:
    sc = _scenario(factors, quota)
    return retwin.run(sc, seed=0), retwin.run(sc, seed=0, changes=[_raise(target, up)])


def _assert_pools_within_ceilings(r: RunResult) -> None:
    for s, pool in enumerate(r.compiled.scenario.pools):
        if pool.max_t is not None:
            assert r.stock[s].max() <= pool.max_t * (1 + 1e-9) + 1e-9, pool.material


factors_st = st.fixed_dictionaries({p: st.floats(0.7, 1.3) for p in PLANTS})


@settings(max_examples=6)
@given(factors_st, st.floats(0.7, 1.3), st.sampled_from(TARGETS), st.floats(1.05, 2.0))
def test_no_pool_exceeds_its_ceiling_when_a_capacity_or_the_quota_rises(
        factors: dict[str, float], quota: float, target: str, up: float) -> None:
    for r in _runs(factors, quota, target, up):
        _assert_pools_within_ceilings(r)


#: Cases that fell by more than the tolerance before the fixes (seed 0): target, base
#: factors, quota factor, raise, and the change of magnet output before -> now.
FIXED: list[tuple[str, dict[str, float], float, float, str]] = [
    ("recycler", {"mine": 1.25, "separation": 0.94, "metal": 1.19, "magnets": 1.24,
                  "recycler": 0.84}, 0.72, 1.23, "-7.8 % -> +0.2 %"),
    ("metal", {"mine": 1.24, "separation": 1.05, "metal": 0.72, "magnets": 1.13,
               "recycler": 1.04}, 1.2, 2.0, "-7.7 % -> +2.8 %"),
    ("magnets", {"mine": 1.24, "separation": 1.05, "metal": 0.72, "magnets": 1.13,
                 "recycler": 1.04}, 1.2, 1.38, "-3.9 % -> 0.0 %"),
    ("separation", {"mine": 0.71, "separation": 0.99, "metal": 0.81, "magnets": 1.28,
                    "recycler": 1.24}, 1.28, 1.54, "-2.7 % -> +0.7 %"),
    ("mine", {"mine": 1.02, "separation": 0.98, "metal": 0.83, "magnets": 1.15,
              "recycler": 0.77}, 0.85, 1.82, "-4.7 % -> 0.0 %"),
    ("quota", {"mine": 1.25, "separation": 0.94, "metal": 1.19, "magnets": 1.24,
               "recycler": 0.84}, 0.72, 1.78, "-1.6 % -> +1.3 %"),
    ("metal", {"mine": 1.0640155040443302, "separation": 0.8149535176759349,
               "metal": 0.7705849451573195, "magnets": 1.00358358043911,
               "recycler": 1.189306243995407}, 0.8302403086432757, 1.5734927460036394,
     "-2.8 % -> +1.2 % (the cobweb)"),
]


def _assert_no_fall(factors: dict[str, float], quota: float, target: str, up: float) -> None:
    base, more = _runs(factors, quota, target, up)
    for r in (base, more):
        _assert_pools_within_ceilings(r)
    before, after = _magnets(base), _magnets(more)
    assert after >= before * (1 - TOLERANCE), (
        f"raising {target} x{up:.3g} moved magnets {after / before - 1:+.2%}")


@settings(max_examples=6)
@example(factors=FIXED[-1][1], quota=FIXED[-1][2], target=FIXED[-1][0], up=FIXED[-1][3])
@given(factors=factors_st, quota=st.floats(0.7, 1.3), target=st.sampled_from(TARGETS),
       up=st.floats(1.05, 2.0))
def test_raising_a_capacity_or_the_quota_never_lowers_magnets(
        factors: dict[str, float], quota: float, target: str, up: float) -> None:
    _assert_no_fall(factors, quota, target, up)


@pytest.mark.parametrize("target,factors,quota,up", [
    pytest.param(t, f, q, u, id=f"{t}-{i}") for i, (t, f, q, u, _) in enumerate(FIXED)])
def test_cases_that_fell_before_the_fixes(target: str, factors: dict[str, float],
                                          quota: float, up: float) -> None:
    _assert_no_fall(factors, quota, target, up)


#: The case of the 6,000 whose magnet output value fell most (numpy seed 4): metal x 1.9.
GLUT = ("metal", {"mine": 1.1875237779869077, "separation": 1.1929620320567944,
                  "metal": 1.078689917833366, "magnets": 0.7049282922018665,
                  "recycler": 0.8716798323253665}, 1.0010796416135619, 1.9035320126902158)


def test_a_glut_lowers_the_price_not_the_output() -> None:
    """More metal capacity: the metal price falls far, the magnet price with it (the magnet
    follows its metal by the RE share of its cost), the magnets' output does not fall; so
    their output value, at the formed prices, falls (measured: metal price -30 %, magnet
    price -8 %, output +0.2 %, value -6.5 %)."""
    target, factors, quota, up = GLUT
    base, more = _runs(factors, quota, target, up)
    c = base.compiled

    def price(r: RunResult, material: str) -> float:
        return float(r.price_month[c.material_ids.index(material)].mean())

    j = c.plant_ids.index("magnets")
    assert price(more, "prnd_metal") < 0.8 * price(base, "prnd_metal")
    assert price(more, "magnet") < 0.95 * price(base, "magnet")
    assert _magnets(more) >= _magnets(base) * (1 - TOLERANCE)
    assert more.value_month[j].sum() < base.value_month[j].sum()


@pytest.mark.parametrize("target,up", [("mine", 2.0), ("magnets", 2.0), ("quota", 2.0)])
def test_raises_on_the_shipped_chain_lower_nothing(target: str, up: float) -> None:
    """Where the property holds: the shipped factors, a doubled mine, magnet plant or quota
    (measured: 0.0 %, +7.3 %, 0.0 %)."""
    _assert_no_fall({}, 1.0, target, up)


def _cases(n: int, seed: int) -> Iterator[tuple[dict[str, float], float, str, float]]:
    """``n`` cases drawn as the property draws them (uniformly), with numpy seed ``seed``:
    plant factors, quota factor, the target raised and the raise."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        factors = {p: float(rng.uniform(0.7, 1.3)) for p in PLANTS}
        quota = float(rng.uniform(0.7, 1.3))
        target = TARGETS[int(rng.integers(len(TARGETS)))]
        yield factors, quota, target, float(rng.uniform(1.05, 2.0))


@pytest.mark.slow
def test_no_case_of_a_larger_sample_falls() -> None:
    """300 cases beyond the few hypothesis draws of a run (numpy seed 7; measured: the
    worst falls by 0.62 %)."""
    for factors, quota, target, up in _cases(300, 7):
        _assert_no_fall(factors, quota, target, up)


def _sample(n: int, seed: int) -> None:
    """Print how ``n`` cases drawn with numpy seed ``seed`` move magnet output and value."""
    volume, value, worst = [], [], None
    for factors, quota, target, up in _cases(n, seed):
        base, more = _runs(factors, quota, target, up)
        j = base.compiled.plant_ids.index("magnets")
        volume.append(_magnets(more) / _magnets(base) - 1)
        value.append(more.value_month[j].sum() / base.value_month[j].sum() - 1)
        if worst is None or volume[-1] < worst[0]:
            worst = (volume[-1], target, up, quota, factors)
    for name, x in (("output", np.array(volume)), ("output value", np.array(value))):
        print(f"{name}: {np.mean(x < -TOLERANCE):.1%} of {n} cases fall by more than "
              f"{TOLERANCE:.0%}, the worst by {-x.min():.2%}")
    print("the case whose output falls most:", worst)


if __name__ == "__main__":
    import sys

    _sample(int(sys.argv[1]), int(sys.argv[2]))
