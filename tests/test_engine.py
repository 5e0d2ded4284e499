"""The engine: events happen, quotas hold, plants start and stop, noise is seeded,
replications and differences, and the mass-balance check."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import math
import zlib
from typing import Any

import numpy as np
import pandas as pd
import pytest
import simpy

import retwin
from conftest import assert_same_run
from retwin import MassBalanceError, ScenarioError
from retwin.engine import model as engine_model
from retwin.engine.model import ChainModel
from retwin.kernels import flow as flow_kernel
from retwin.kernels import outages as outage_kernels
from retwin.kernels import streams
from retwin.kernels import tables as table_kernels
from retwin.kernels import trade as trade_kernel
from retwin.kernels.flow import BIND_OUTAGE
from retwin.processes import base as outage_drawing
from retwin.processes import economy as economy_process
from retwin.scenario.schema import STAGES, Scenario

NEW_MINE = {"id": "mine2", "name": "Second mine", "stage": "mining", "capacity_tpa": 3650,
            "extracts": True, "recipe": {"outputs": {"concentrate": 1}, "inputs": {"ore": 9}}}


def idx(res: Any, plant_id: str) -> int:
    return res.compiled.plant_ids.index(plant_id)


# --- events ---------------------------------------------------------------------------------

def test_months_that_skip_the_event_queue_run_as_if_they_waited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The market process goes straight on to a month whose first day nothing else is
    scheduled on or before (no trip through the event queue); a change dated on a month's
    first day still comes first (here a capacity change, which the month's decisions read).
    Sending every month through the queue gives the same run, bit for bit."""
    sc = retwin.load_scenario("tiny-markets")  # (investment off: with it, every month waits)
    changes = [{"kind": "parameter", "path": "settings.investment", "value": False},
               {"kind": "capacity", "plant": "separation", "factor": 0.5,
                "from": "2024-07-01"},
               {"kind": "quota", "quota": "mining", "factor": 0.4, "from": "2024-10-01"},
               {"kind": "trade", "market": "magnet_out", "side": "export", "factor": 0.5,
                "from": "2024-09-15", "to": "2025-03-01"}]
    timeouts: list[float] = []
    timeout = simpy.Environment.timeout
    monkeypatch.setattr(simpy.Environment, "timeout",
                        lambda self, delay=0, value=None: (timeouts.append(delay),
                                                           timeout(self, delay, value))[1])
    fast = retwin.run(sc, seed=3, changes=changes)
    n_fast, timeouts[:] = len(timeouts), []
    monkeypatch.setattr(simpy.Environment, "peek", lambda self: -math.inf)  # always waits
    slow = retwin.run(sc, seed=3, changes=changes)
    assert_same_run(fast, slow)
    assert fast.kernel_calls == slow.kernel_calls
    # most months went straight on (those after a change's day waited for it)
    assert len(timeouts) - n_fast >= len(fast.compiled.month_start_day) // 2


def test_random_outages_happen_when_on(tiny_run: Any) -> None:
    kinds = {(k, s) for _, k, s in tiny_run.events}
    # the mine and the separator have an MTBF; the others do not
    assert {("failure", "mine"), ("repair", "mine"), ("failure", "separation")} <= kinds
    assert not {s for k, s in kinds if k == "failure"} - {"mine", "separation"}


def test_no_random_outages_when_off(tiny_quiet_run: Any) -> None:
    assert not [e for e in tiny_quiet_run.events if e[1] in ("failure", "repair")]
    assert not (tiny_quiet_run.binding == BIND_OUTAGE).any()


def test_a_failed_plant_does_nothing_until_repaired(tiny_run: Any) -> None:
    down: dict[str, int] = {}
    checked = 0
    for d, kind, pid in tiny_run.events:
        if kind == "failure":
            down[pid] = d
        elif kind == "repair":
            p = idx(tiny_run, pid)
            start = down.pop(pid)
            assert d > start
            assert np.all(tiny_run.activity[p, start:d] == 0.0)
            assert np.all(tiny_run.binding[p, start:d] == BIND_OUTAGE)
            checked += 1
    assert checked >= 3


def test_failures_alternate_with_repairs(tiny_run: Any) -> None:
    for pid in ("mine", "separation"):
        seq = [k for _, k, s in tiny_run.events if s == pid and k in ("failure", "repair")]
        assert seq[0] == "failure"
        assert all(a != b for a, b in itertools.pairwise(seq))


def test_planned_outage_happens_with_randomness_off(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["settings"] = {"outages": False, "price_noise": False, "demand_noise": False}
    tiny_tree["plants"][2]["availability"] = {
        "planned_outages": [{"from": "2024-05-01", "to": "2024-05-10"}]}
    sc = retwin.load_scenario(tiny_tree)
    res = retwin.run(sc, seed=1)
    lo = (dt.date(2024, 5, 1) - sc.start).days
    assert (lo, "planned_outage", "metal") in res.events
    assert (lo + 10, "planned_outage_end", "metal") in res.events
    assert np.all(res.activity[2, lo:lo + 10] == 0.0)
    assert res.activity[2, lo - 1] > 0 and res.activity[2, lo + 10] > 0


@pytest.mark.parametrize("window", [("2023-01-01", "2023-01-10"), ("2023-06-01", "2023-12-31")])
def test_planned_outage_before_the_horizon_never_crashes_a_run(
        tiny_tree: dict[str, Any], tiny_quiet_run: Any, window: tuple[str, str]) -> None:
    """An outage that ended before the horizon starts is either refused as bad input or has
    no effect (a model's history of outages, run from a later start)."""
    tiny_tree["settings"] = {"outages": False, "price_noise": False, "demand_noise": False}
    tiny_tree["plants"][2]["availability"] = {
        "planned_outages": [{"from": window[0], "to": window[1]}]}
    try:
        sc = retwin.load_scenario(tiny_tree)
    except ScenarioError as exc:
        assert "planned_outages" in "\n".join(exc.lines())
        return
    res = retwin.run(sc, seed=1)
    np.testing.assert_array_equal(res.activity, tiny_quiet_run.activity)


def test_adding_a_plant_does_not_shift_another_plants_outages(tiny: Scenario) -> None:
    more = retwin.apply_changes(tiny, [{"kind": "plant", "action": "add", "plant": {
        **NEW_MINE, "availability": {"mtbf_days": 30, "mttr_days": 2}}}])
    a, b = retwin.run(tiny, seed=5), retwin.run(more, seed=5)
    for pid in ("mine", "separation"):
        ea = [e for e in a.events if e[2] == pid and e[1] in ("failure", "repair")]
        eb = [e for e in b.events if e[2] == pid and e[1] in ("failure", "repair")]
        assert ea == eb and ea
    assert any(e[2] == "mine2" and e[1] == "failure" for e in b.events)


def test_kernel_calls_are_bounded_by_event_days(tiny_run: Any) -> None:
    """The flow advances once per event day (and once at the end), not once per day."""
    event_days = {d for d, _, _ in tiny_run.events} | set(
        tiny_run.compiled.month_start_day.tolist())
    assert 1 <= tiny_run.kernel_calls <= len(event_days) + 1
    assert tiny_run.kernel_calls < tiny_run.compiled.n_days / 5


# --- outages drawn when a run starts ----------------------------------------------------------


def _one_at_a_time(model: ChainModel, pid: str, mtbf: float, mttr: float
                   ) -> list[tuple[int, str, str]]:
    """A plant's failures and repairs as they were drawn when each was an event of its own:
    one exponential at a time from the plant's stream, up, down, up…, until the horizon."""
    rng = model.rng(f"outage/{pid}")
    t, out = 0, []
    while True:
        for kind, mean in (("failure", mtbf), ("repair", mttr)):
            t += max(1, math.ceil(rng.standard_exponential() * mean))
            if t >= model.n_days:
                return out
            out.append((t, kind, pid))


def _up(model: ChainModel, p: int) -> np.ndarray:
    """(D,) the share of capacity the drawn outages leave plant ``p`` on each day."""
    cal = model.outages
    lo, hi = int(cal.ptr[p]), int(cal.ptr[p + 1])
    up = np.ones(model.n_days)
    for k in range(lo, hi):
        up[cal.day[k]:] = cal.up[k]
    return up


@pytest.mark.parametrize("block", [None, 2])
@pytest.mark.parametrize("seed", [0, 1, 7, 123456])
def test_drawn_outages_are_the_draws_of_one_event_at_a_time(
        tiny: Scenario, seed: int, block: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawing a plant's outages up front takes the same numbers from the same stream as
    drawing each when the last happened: the same outages, so a baseline and its what-if
    still share them (common random numbers) and results stay reproducible. Also when the
    numbers come in blocks too short for the horizon (``block=2``: block after block)."""
    if block is not None:
        monkeypatch.setattr(outage_drawing, "_block", lambda *_: block)
    engine_model.KEPT_OUTAGES.clear()  # drawn here, not taken from an earlier run
    c = retwin.prepare(tiny)
    m = ChainModel(c, seed)
    for p, pid in enumerate(c.plant_ids):
        drawn = [e for e in m.outages.events if e[2] == pid]
        if np.isnan(c.mtbf[p]):
            assert not drawn
            continue
        assert drawn == _one_at_a_time(m, pid, float(c.mtbf[p]), float(c.mttr[p]))
        assert drawn
        up = _up(m, p)
        for d, kind, _ in drawn:
            assert up[d] == (0.0 if kind == "failure" else 1.0)
            assert up[d - 1] == (1.0 if kind == "failure" else 0.0)


def test_runs_with_one_seed_share_its_drawn_outages(tiny: Scenario) -> None:
    """The outage calendar of a seed asked for again is kept for the next runs that draw the
    same (a what-if after its baseline, a sweep's next point): the same calendar, read-only,
    equal to one drawn anew. A seed asked for once keeps nothing; another seed, or another
    MTBF, draws its own."""
    kept = engine_model.KEPT_OUTAGES
    kept.clear()
    c = retwin.prepare(tiny)
    once = ChainModel(c, 5)  # asked for once: drawn, not kept
    assert len(kept) == 0
    twice = ChainModel(c, 5)  # asked for again: drawn, kept
    again = ChainModel(retwin.prepare(tiny), 5)  # another compilation of the same scenario
    assert twice.outages is not once.outages and again.outages is twice.outages
    assert (kept.hits, kept.misses, len(kept)) == (1, 2, 1)
    drawn = outage_drawing.draw_outages(c.plant_ids, c.mtbf, c.mttr, c.planned,
                                        c.scenario.settings.outages, c.n_days, once.rng)
    for name in ("ptr", "day", "up", "ev_day", "ev_kind", "ev_plant"):
        shared = getattr(again.outages, name)
        assert not shared.flags.writeable
        np.testing.assert_array_equal(shared, getattr(drawn, name))
        np.testing.assert_array_equal(getattr(once.outages, name), getattr(drawn, name))
    assert again.outages.events == drawn.events and drawn.events
    assert ChainModel(c, 6).outages is not again.outages
    rarer = retwin.prepare(retwin.apply_changes(tiny, [
        {"kind": "parameter", "path": "plants.mine.availability.mtbf_days", "value": 30}]))
    for _ in range(2):
        mine = [e for e in ChainModel(rarer, 5).outages.events if e[2] == "mine"]
        assert mine != [e for e in again.outages.events if e[2] == "mine"]
    # a run on a calendar drawn anew and one on the kept calendar: the same run
    kept.clear()
    anew = retwin.run(tiny, seed=5)
    retwin.run(tiny, seed=5)
    assert_same_run(anew, retwin.run(tiny, seed=5))
    assert kept.hits == 1


@pytest.mark.parametrize("name", ["tiny", "tiny-markets"])
def test_runs_with_one_seed_share_its_drawn_price_and_demand_paths(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outside price and demand paths of a seed asked for again are kept, as outage
    calendars are: markets off (replayed by the kernel) and on (the economy's reference
    prices, with their pass-through). Kept read-only, each run reads its own copy (markets
    off: its price record and the kernel's arrays; on: what the economy is started with),
    equal to those drawn anew; a seed asked for once keeps nothing; another price curve
    draws its own; a run on kept paths is the run on paths drawn anew."""
    started: list[tuple[np.ndarray, np.ndarray]] = []
    start = economy_process.EconomyProcess.start
    monkeypatch.setattr(economy_process.EconomyProcess, "start",
                        lambda self, env, chain, paths: (started.append(paths),
                                                         start(self, env, chain, paths)))
    kept = engine_model.KEPT_PATHS
    kept.clear()
    sc = retwin.load_scenario(name)
    assert sc.markets_on == (name == "tiny-markets")
    assert sc.settings.price_noise and sc.settings.demand_noise
    c = retwin.prepare(sc)
    m = ChainModel(c, 5)  # asked for once: drawn, not kept
    assert (kept.hits, kept.misses, len(kept)) == (0, 1, 0)
    ChainModel(retwin.prepare(sc), 5)  # asked for again: drawn, kept
    assert (kept.hits, kept.misses, len(kept)) == (0, 2, 1)
    if m.economy is not None:
        expected = m.economy.paths(m)
    else:
        expected = (economy_process.reference_paths(
            m, c.material_ids, c.price_month, c.volatility, c.reversion),
            economy_process.demand_paths(m, c.segment_ids, c.demand_month, c.demand_cv))
    third = ChainModel(c, 5)  # asked for a third time: kept, not drawn
    mine = started[-1] if sc.markets_on else (third.price_rec, third.arrays["dem_path"])
    assert len(started) == (3 if sc.markets_on else 0)
    held = kept.get(next(iter(kept._values)))
    assert held is not None and kept.hits == 2
    for x, h, e in zip(mine, held, expected, strict=True):
        assert not h.flags.writeable and x.flags.writeable
        assert not np.shares_memory(x, h)
        np.testing.assert_array_equal(x, e)
        np.testing.assert_array_equal(h, e)
        assert np.ptp(e, axis=1).max() > 0  # noise was drawn
    material = c.material_ids[int(np.argmax(c.price_month[:, 0]))]
    dearer = retwin.prepare(retwin.apply_changes(sc, [
        {"kind": "price", "material": material, "factor": 1.5, "from": str(sc.start)}]))
    for _ in range(2):
        ChainModel(dearer, 5)
    assert len(kept) == 2  # another price curve: its own paths
    # a run on paths drawn anew and one on the kept paths: the same run
    kept.clear()
    anew = retwin.run(sc, seed=5)
    retwin.run(sc, seed=5)
    assert_same_run(anew, retwin.run(sc, seed=5))
    assert kept.hits == 1


def test_warmup_compiles_the_outage_and_stream_kernels_a_run_calls() -> None:
    """Warm-up compiles (or loads) the kernels that build the outage calendar, seed the
    random streams, set the monthly trade caps and relabel the days plants held back, and
    those of the result tables (the binding shares, for a run whose capacity held -- its
    nameplate activity shared and read-only -- and for one whose capacity changed; the
    mass balance); compiled, runs with markets and random outages after it, and their
    bottlenecks, add no signature to them."""
    retwin.warmup()
    entries = (outage_kernels._calendar, outage_kernels._reached, streams._generate64,
               flow_kernel._relabel, trade_kernel._hand_over, table_kernels._binding_weights,
               table_kernels._mass_balance)
    kernels = {f.__name__: f for f in entries if hasattr(f, "signatures")}  # (none: no JIT)
    before = {n: len(f.signatures) for n, f in kernels.items()}
    assert all(before.values())
    sc = retwin.load_scenario("tiny-markets")
    res = retwin.run(sc, seed=4)
    assert any(e[1] == "failure" for e in res.events)
    assert not res.capacity_log and not res.capacity_days.flags.writeable
    cut = retwin.run(sc, seed=4, changes=[{"kind": "capacity", "plant": "metal",
                                           "factor": 0.5, "from": "2024-03-01"}])
    assert cut.capacity_log and cut.capacity_days.flags.writeable
    assert len(res.bottlenecks) and len(cut.bottlenecks)
    assert {n: len(f.signatures) for n, f in kernels.items()} == before


def test_mean_availability_is_the_renewal_value(tiny_tree: dict[str, Any]) -> None:
    """Over many replications each plant is up the share of days renewal theory gives for
    whole-day times to failure and to repair (at least one day each): a mean time up of
    1 / (1 - exp(-1/MTBF)) days and down of 1 / (1 - exp(-1/MTTR))."""
    tiny_tree["start"], tiny_tree["end"] = "2024-01-01", "2033-12-31"
    tiny_tree["plants"][0]["availability"] = {"mtbf_days": 20, "mttr_days": 5}
    c = retwin.prepare(retwin.load_scenario(tiny_tree))
    warm = 200  # days to forget the start (every plant starts up)
    for p in (0, 1):
        mtbf, mttr = float(c.mtbf[p]), float(c.mttr[p])
        t_up, t_down = 1 / (1 - math.exp(-1 / mtbf)), 1 / (1 - math.exp(-1 / mttr))
        share = [_up(ChainModel(c, seed), p)[warm:].mean() for seed in range(60)]
        mean, se = float(np.mean(share)), float(np.std(share) / math.sqrt(len(share)))
        assert abs(mean - t_up / (t_up + t_down)) < 4 * se + 1e-3, (p, mean, se)


def test_outages_cost_no_kernel_call(tiny: Scenario) -> None:
    """Outages are drawn when the run starts and read by the kernel day by day: a run with
    them makes exactly the kernel calls of the same run without them."""
    quiet_outages = retwin.apply_changes(tiny, [
        {"kind": "parameter", "path": "settings.outages", "value": False}])
    on, off = retwin.run(tiny, seed=3), retwin.run(quiet_outages, seed=3)
    assert any(k == "failure" for _, k, _ in on.events)
    assert on.kernel_calls == off.kernel_calls
    assert (on.binding == BIND_OUTAGE).any() and not (off.binding == BIND_OUTAGE).any()


def test_planned_and_random_outages_overlap(tiny_tree: dict[str, Any]) -> None:
    """A plant is down while it is failed or in any planned outage, overlapping ones too."""
    tiny_tree["plants"][1]["availability"] = {
        "mtbf_days": 10, "mttr_days": 4, "planned_outages": [
            {"from": "2024-03-01", "to": "2024-03-20"}, {"from": "2024-03-10", "to": "2024-04-05"}]}
    sc = retwin.load_scenario(tiny_tree)
    res = retwin.run(sc, seed=2)
    m = ChainModel(res.compiled, res.metadata["engine_seed"])
    lo = (dt.date(2024, 3, 1) - sc.start).days
    hi = (dt.date(2024, 4, 5) - sc.start).days + 1
    down = np.zeros(m.n_days, bool)
    down[lo:hi] = True
    failed = np.zeros(m.n_days, bool)
    at = None
    for d, kind, pid in m.outages.events:
        if pid != "separation":
            continue
        if kind == "failure":
            at = d
        elif kind == "repair":
            assert at is not None
            failed[at:d] = True
            at = None
    if at is not None:
        failed[at:] = True
    np.testing.assert_array_equal(_up(m, 1), np.where(down | failed, 0.0, 1.0))
    assert np.all(res.activity[1, down | failed] == 0.0)
    assert np.all(res.binding[1, down | failed] == BIND_OUTAGE)


def test_a_what_if_outage_acts_with_the_drawn_outages(tiny: Scenario) -> None:
    """An outage change derates a plant on top of its drawn outages: down on the days they
    say, at most its derated capacity on the others, and the economy's view of the plant
    (``avail``) says the same on the day it looks."""
    change = {"kind": "outage", "plant": "separation", "from": "2024-06-01",
              "to": "2024-09-30", "capacity_frac": 0.5}
    base = retwin.run(tiny, seed=4)
    res = retwin.run(tiny, changes=[change], seed=4)
    p = idx(res, "separation")
    m = ChainModel(res.compiled, res.metadata["engine_seed"])
    up = _up(m, p)
    lo = (dt.date(2024, 6, 1) - tiny.start).days
    hi = (dt.date(2024, 9, 30) - tiny.start).days + 1
    window = np.zeros(m.n_days, bool)
    window[lo:hi] = True
    assert (window & (up == 0.0)).any() and (window & (up == 1.0)).any()
    assert [e for e in res.events if e[1] in ("failure", "repair")] == \
        [e for e in base.events if e[1] in ("failure", "repair")]  # the same outages
    assert np.all(res.activity[p, up == 0.0] == 0.0)
    ceiling = float(m.cap_max_day[p])
    assert np.all(res.activity[p, window & (up == 1.0)] <= 0.5 * ceiling * (1 + 1e-12))
    assert np.all(res.binding[p, window] != 0)
    # the state a process sees on a day: what-if derate x the drawn outages of that day
    m.env.run(until=lo + 1)
    for d in range(lo + 1, hi):
        m.advance_to(d)
        assert m.avail[p] == 0.5 * up[d], d


def test_ramp_computes_only_plants_that_change(tiny_tree: dict[str, Any]) -> None:
    """``Compiled.ramp`` skips plants at full capacity all along, and is the kernel's rule
    for every plant: commissioned before the start (ramped up or still ramping), within the
    horizon, retired within it."""
    plants = tiny_tree["plants"]
    plants[0].update({"commissioning": "2023-12-20", "ramp_days": 30})  # still ramping
    plants[1].update({"commissioning": "2023-06-01", "ramp_days": 30})  # ramped up before
    plants[2].update({"commissioning": "2024-03-01", "ramp_days": 10})
    plants[3].update({"retirement": "2025-02-01"})
    c = retwin.prepare(retwin.load_scenario(tiny_tree))
    d = np.arange(c.n_days)
    for p in range(len(c.plant_ids)):
        com, ramp, ret = (int(c.commission_day[p]), int(c.ramp_days[p]), int(c.retire_day[p]))
        rule = [0.0 if not com <= x < ret else min(1.0, (x - com + 1) / ramp) if ramp else 1.0
                for x in d]
        np.testing.assert_array_equal(c.ramp[p], rule, err_msg=c.plant_ids[p])
    assert c.ramp[0, 0] < 1.0 and c.ramp[1].min() == 1.0 and c.ramp[3, -1] == 0.0


# --- quotas ---------------------------------------------------------------------------------


def _quota_use(res: Any, q: int = 0) -> np.ndarray:
    topo = res.compiled.topology
    under = topo.plant_quota == q
    return (res.activity[under] * topo.quota_per_activity[under, None]).sum(axis=0)


def _check_quota(res: Any, q: int = 0) -> None:
    c = res.compiled
    use = _quota_use(res, q)
    released = np.zeros(c.n_days)
    first_frac = c.days_left[0] / (366 if c.scenario.start.year % 4 == 0 else 365)
    for d, qi, amount in c.releases:
        if qi == q:
            released[d] += amount * (first_frac if d == 0 else 1.0)
    years = res._year_of_day
    for y in res.years:
        sel = years == y
        # within a year (unused quota lapses at its end), use up to each day never exceeds
        # what was released up to and including that day
        cum_use = np.cumsum(use[sel])
        cum_rel = np.cumsum(released[sel])
        assert np.all(cum_use <= cum_rel * (1 + 1e-9) + 1e-9), y
        ceiling = c.quota_year_total[(q, y)] * (first_frac if y == c.scenario.start.year else 1)
        assert use[sel].sum() <= ceiling * (1 + 1e-9) + 1e-9, y


def test_quota_releases_respected(tiny_run: Any) -> None:
    _check_quota(tiny_run)
    # and the quota binds: the mine could do 40 000 t, the quota allows 30 000 t of concentrate
    mine = idx(tiny_run, "mine")
    assert tiny_run.activity[mine].sum() == pytest.approx(60000, rel=0.02)


def test_quota_batches_gate_the_use(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["settings"] = {"outages": False, "price_noise": False, "demand_noise": False}
    tiny_tree["quotas"][0]["batches"] = [{"month": 1, "share_frac": 0.1},
                                         {"month": 10, "share_frac": 0.9}]
    res = retwin.run(retwin.load_scenario(tiny_tree), seed=2)
    _check_quota(res)
    use = _quota_use(res)
    oct1 = (dt.date(2024, 10, 1) - dt.date(2024, 1, 1)).days
    np.testing.assert_allclose(use[:oct1].sum(), 1500.0, rtol=1e-9)  # only the first batch
    assert use[oct1:366].sum() > 1500


def test_quota_produce_ahead_runs_before_the_first_batch(tiny_tree: dict[str, Any]) -> None:
    """Without produce_ahead nothing is mined before a February batch; with it, the mine runs
    from January, paced to the year's total, which it still never exceeds."""
    tiny_tree["settings"] = {"outages": False, "price_noise": False, "demand_noise": False}
    tiny_tree["quotas"][0]["batches"] = [{"month": 2, "share_frac": 0.5},
                                         {"month": 7, "share_frac": 0.5}]
    feb1 = (dt.date(2024, 2, 1) - dt.date(2024, 1, 1)).days
    gated = retwin.run(retwin.load_scenario(tiny_tree), seed=2)
    assert _quota_use(gated)[:feb1].sum() == 0.0
    tiny_tree["quotas"][0]["produce_ahead"] = True
    ahead = retwin.run(retwin.load_scenario(tiny_tree), seed=2)
    use = _quota_use(ahead)  # ahead of the releases by design: only the year's total binds
    np.testing.assert_allclose(use[:feb1].sum(), 15000 * feb1 / 366, rtol=1e-6)
    assert use[:366].sum() <= 15000 * (1 + 1e-9)


def test_quota_for_a_horizon_starting_mid_year(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["start"] = "2024-07-01"
    res = retwin.run(retwin.load_scenario(tiny_tree), seed=3)
    _check_quota(res)
    use = _quota_use(res)
    in_2024 = use[res._year_of_day == 2024].sum()
    assert in_2024 <= 15000 * 184 / 366 * (1 + 1e-9)
    assert in_2024 > 0.5 * 15000 * 184 / 366


# --- commissioning, ramp, retirement --------------------------------------------------------


def test_commissioning_and_ramp_show_in_activity(tiny_quiet: Scenario) -> None:
    sc = retwin.apply_changes(tiny_quiet, [{"kind": "plant", "action": "add", "plant": {
        **NEW_MINE, "commissioning": "2024-03-01", "ramp_days": 30}}])
    res = retwin.run(sc, seed=1)
    p = idx(res, "mine2")
    c = (dt.date(2024, 3, 1) - sc.start).days
    act = res.activity[p]
    assert np.all(act[:c] == 0.0)
    np.testing.assert_allclose(act[c:c + 30], 10.0 * np.arange(1, 31) / 30)
    np.testing.assert_allclose(act[c + 30:], 10.0)
    # the KPI capacity follows the same ramp
    np.testing.assert_allclose(res.capacity_days[p, c:c + 30], act[c:c + 30])


def test_retirement_stops_a_plant(tiny_tree: dict[str, Any]) -> None:
    tiny_tree["settings"] = {"outages": False, "price_noise": False, "demand_noise": False}
    tiny_tree["plants"][2]["retirement"] = "2025-03-01"
    sc = retwin.load_scenario(tiny_tree)
    res = retwin.run(sc, seed=1)
    p = idx(res, "metal")
    cut = (dt.date(2025, 3, 1) - sc.start).days
    assert res.activity[p, :cut].sum() > 0
    assert np.all(res.activity[p, cut:] == 0.0)
    assert np.all(res.capacity_days[p, cut:] == 0.0)


# --- prices and demand with noise -----------------------------------------------------------


def test_price_noise_reproducible_and_seeded(tiny: Scenario) -> None:
    a, b, c = (retwin.run(tiny, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.price_month, b.price_month)
    ids = a.compiled.material_ids
    noisy = [ids.index("la_ce_oxide"), ids.index("prnd_oxide")]
    calm = [i for i in range(len(ids)) if i not in noisy]
    assert np.all(a.price_month[noisy] != c.price_month[noisy])
    np.testing.assert_array_equal(a.price_month[calm], c.price_month[calm])
    np.testing.assert_array_equal(a.price_month[calm], a.compiled.price_month[calm])
    # noise is in log price around the path: positive, and within a few sigma of it
    assert np.all(a.price_month[noisy] > 0)
    log_dev = np.log(a.price_month[noisy] / a.compiled.price_month[noisy])
    assert np.abs(log_dev).max() < 5 * 0.17


def test_price_noise_off_follows_the_path(tiny_quiet_run: Any) -> None:
    np.testing.assert_array_equal(tiny_quiet_run.price_month,
                                  tiny_quiet_run.compiled.price_month)


def test_demand_noise_seeded(tiny: Scenario) -> None:
    a, b = retwin.run(tiny, seed=1), retwin.run(tiny, seed=2)
    total_a = a.served + a.unmet
    total_b = b.served + b.unmet
    assert not np.array_equal(total_a, total_b)
    assert_same_run(a, retwin.run(tiny, seed=1))


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1, 2**32, 2**63 - 1, 2**64 + 3, 2**200 + 1])
def test_a_named_stream_is_numpys_seed_sequence_stream(tiny: Scenario, seed: int) -> None:
    """``rng(name)`` hashes its seed sequence in compiled code: the numbers must be those of
    ``PCG64(SeedSequence(seed, spawn_key=(crc32(name),)))``, for seeds of one word and of
    more words than numpy's pool holds, and the seed sequence's words too."""
    m = ChainModel(retwin.prepare(tiny), seed)
    for name in ("outage/mine", "price/ndpr_oxide", "demand/ev", ""):
        key = zlib.crc32(name.encode())
        numpy_ss = np.random.SeedSequence(seed, spawn_key=(key,))
        expected = np.random.Generator(np.random.PCG64(numpy_ss)).standard_normal(64)
        np.testing.assert_array_equal(m.rng(name).standard_normal(64), expected)
    for key in (0, 1, 2**32 - 1):
        numpy_ss = np.random.SeedSequence(seed, spawn_key=(key,))
        for n_words, dtype in itertools.product((1, 4, 7), (np.uint32, np.uint64)):
            got = streams.generate_state(m._seed_words, key, n_words, dtype)
            want = numpy_ss.generate_state(n_words, dtype)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(20))
def test_monthly_trade_caps_are_numpys_arithmetic(seed: int) -> None:
    """The compiled monthly trade caps are the numpy formulas bit for bit, NaN and inf
    included: imports base x share / 365, exports min(base, max(demand, contract)) / 365,
    contracted exports min(base, contract) / 365."""
    rng = np.random.default_rng(seed)
    n_k = 40

    def values() -> np.ndarray:
        x = rng.choice([1.0, 0.0, -0.0, np.inf, np.nan, 1e4, -1.0], n_k)
        return np.where(rng.random(n_k) < 0.3, rng.uniform(0, 1e4, n_k), x)

    share, demand, contract, base_imp, base_exp = (values() for _ in range(5))
    table = np.empty((5, n_k))
    table[trade_kernel.BASE_IMPORT], table[trade_kernel.BASE_EXPORT] = base_imp, base_exp
    imp, exp, exp_contract = np.empty(n_k), np.empty(n_k), np.empty(n_k)
    with np.errstate(invalid="ignore"):  # inf x 0 (as Python, with the JIT off)
        trade_kernel.set_caps(share, demand, contract, table, imp, exp, exp_contract)
    def same_bits(got: np.ndarray, want: np.ndarray) -> None:
        np.testing.assert_array_equal(got, want)  # NaN where NaN
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # -0.0 where -0.0

    wanted = np.maximum(demand, contract)
    same_bits(table[trade_kernel.EXPORT_DEMAND], wanted)
    same_bits(table[trade_kernel.IMPORT_SHARE], share)
    same_bits(table[trade_kernel.CONTRACT], contract)
    with np.errstate(invalid="ignore"):  # inf x 0 is NaN, in both
        same_bits(imp, base_imp * share / 365.0)
    same_bits(exp, np.minimum(base_exp, wanted) / 365.0)
    same_bits(exp_contract, np.minimum(base_exp, contract) / 365.0)


def test_price_path_takes_the_last_point_on_or_before_mid_month(
        tiny_tree: dict[str, Any]) -> None:
    """Each month's base price is the path's last point dated on or before the 15th (the
    later of two points of one date), the base price before the first point."""
    tiny_tree["materials"][1]["price"]["path"] = [
        {"date": "2020-01-01", "price_cny_per_unit": 5},
        {"date": "2024-03-15", "price_cny_per_unit": 6},
        {"date": "2024-03-15", "price_cny_per_unit": 7},
        {"date": "2024-06-14", "price_cny_per_unit": 8},
        {"date": "2024-06-16", "price_cny_per_unit": 9},
        {"date": "2090-01-01", "price_cny_per_unit": 10}]
    c = retwin.prepare(retwin.load_scenario(tiny_tree))
    assert c.price_month[1, :8].tolist() == [5, 5, 7, 7, 7, 8, 9, 9]
    tiny_tree["materials"][1]["price"]["path"] = [
        {"date": "2024-02-16", "price_cny_per_unit": 4}]
    base = tiny_tree["materials"][1]["price"]["base_cny_per_unit"]  # concentrate
    c = retwin.prepare(retwin.load_scenario(tiny_tree))
    assert c.price_month[1, :3].tolist() == [base, base, 4]


def test_negative_seed_is_refused(tiny: Scenario) -> None:
    with pytest.raises(ScenarioError, match=r"seed\(=-1\) must be >= 0"):
        retwin.run(tiny, seed=-1)


# --- replications and differences -----------------------------------------------------------


@pytest.fixture(scope="module")
def reps(tiny: Scenario) -> Any:
    return retwin.run_replications(tiny, 4, seed=7)


def test_replication_summary(reps: Any) -> None:
    s = reps.summary
    assert {"kpi", "key", "year", "unit", "mean", "p5", "p50", "p95", "n"} <= set(s.columns)
    assert (s.n == 4).all()
    assert (s.p5 <= s.p50 + 1e-9).all() and (s.p50 <= s.p95 + 1e-9).all()
    assert ((s["mean"] >= s.p5 - 1e-9) & (s["mean"] <= s.p95 + 1e-9)).all()
    row = s[(s.kpi == "output.stage") & (s.key == "separation") & (s.year == 2024)].iloc[0]
    values = [f[(f.kpi == "output.stage") & (f.key == "separation") & (f.year == 2024)]
              .value.iloc[0] for f in reps.kpi_frames]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert len(set(values)) > 1  # outages differ between replications
    assert reps.seeds == [(7, r) for r in range(4)]


def test_difference_between_identical_scenarios_is_exactly_zero(tiny: Scenario, reps: Any
                                                               ) -> None:
    again = retwin.run_replications(tiny, 4, seed=7)
    diff = again.difference(reps)
    for col in ("mean", "p5", "p50", "p95"):
        assert (diff[col] == 0.0).all(), col


def test_quota_cut_gives_a_negative_mining_difference(tiny: Scenario, reps: Any) -> None:
    cut = retwin.run_replications(tiny, 4, seed=7,
                                  changes=[{"kind": "quota", "quota": "mining", "factor": 0.8}])
    diff = cut.difference(reps)
    mining = diff[(diff.kpi == "output.stage") & (diff.key == "mining")]
    assert len(mining) == 2
    assert (mining["mean"] < 0).all() and (mining.p95 < 0).all()
    # 20 % of 30 000 t of concentrate a year, give or take outages
    assert mining["mean"].to_numpy() == pytest.approx(-6000, rel=0.05)


def test_difference_needs_the_same_seeds(tiny: Scenario, reps: Any) -> None:
    other = retwin.run_replications(tiny, 4, seed=8)
    with pytest.raises(ValueError, match="baseline's seeds"):
        other.difference(reps)


def test_replications_out_of_range(tiny: Scenario) -> None:
    with pytest.raises(ScenarioError, match=r"replications\(=0\) must be in 1\.\."):
        retwin.run_replications(tiny, 0)


# --- KPIs agree with the arrays ---------------------------------------------------------------


def _kpi_series(res: Any, kpi: str, key: str) -> np.ndarray:
    df = res.kpis
    return df[(df.kpi == kpi) & (df.key == key)].sort_values("year").value.to_numpy()


def test_kpis_agree_with_the_daily_arrays(tiny_run: Any) -> None:
    res = tiny_run
    years = res._year_of_day
    c = res.compiled
    for p, pid in enumerate(c.plant_ids):
        want = [res.activity[p, years == y].sum() for y in res.years]
        np.testing.assert_allclose(_kpi_series(res, "output.plant", pid), want, rtol=1e-12)
        util = _kpi_series(res, "utilisation.plant", pid)
        assert np.all(util >= 0) and np.all(util <= c.utilisation[p] * (1 + 1e-9))
    for stage in set(c.plant_stage):
        sel = [i for i, s in enumerate(c.plant_stage) if s == stage]
        want = [res.activity[sel][:, years == y].sum() for y in res.years]
        np.testing.assert_allclose(_kpi_series(res, "output.stage", stage), want, rtol=1e-12)
    np.testing.assert_allclose(_kpi_series(res, "production.material", "concentrate"),
                               _kpi_series(res, "output.plant", "mine"), rtol=1e-12)
    fill = _kpi_series(res, "fill_rate.segment", "motors")
    assert np.all((fill >= 0) & (fill <= 1))
    groups = sum(_kpi_series(res, "value.group", g)
                 for g in ("raw_materials", "new_materials", "applications"))
    np.testing.assert_allclose(_kpi_series(res, "value.group", "total"), groups, rtol=1e-12)
    # output sold plus unsold stock is the value of all output
    np.testing.assert_allclose(_kpi_series(res, "value.group", "total")
                               + _kpi_series(res, "unsold_value.group", "total"),
                               [res.value_month[:, [t for t, (y, _) in enumerate(c.months)
                                                    if y == yr]].sum() / 1e8
                                for yr in res.years], rtol=1e-12)
    exp = _kpi_series(res, "exports.market", "la_ce_out")
    np.testing.assert_allclose(exp, [res.exports[0, years == y].sum() for y in res.years])
    conv = _kpi_series(res, "local_conversion", "region")
    assert np.all((conv >= 0) & (conv <= 1))


def test_target_table(tiny_run: Any) -> None:
    t = tiny_run.target_table
    assert list(t.target) == ["magnets-2024"]
    assert t.value.iloc[0] == pytest.approx(tiny_run.kpi("output.stage", "magnet", 2024))
    assert bool(t.attained.iloc[0]) == (t.value.iloc[0] >= 5000)


def test_binding_table_shares_sum_to_one(tiny_run: Any) -> None:
    bt = tiny_run.binding_table
    sums = bt.groupby(["stage", "year"]).share.sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-9)
    assert set(tiny_run.bottlenecks.year) == set(tiny_run.years)


# --- mass balance -------------------------------------------------------------------------------


def _tampered(res: Any, **arrays: np.ndarray) -> Any:
    bad = copy.copy(res)
    bad.__dict__.pop("balance", None)
    for name, value in arrays.items():
        setattr(bad, name, value)
    return bad


def test_balance_closes_on_a_real_run(tiny_run: Any) -> None:
    tiny_run.check_balance()
    assert tiny_run.balance.closes
    assert np.abs(tiny_run.balance.material).max() < tiny_run.balance.tolerance_material.min()


def test_mass_balance_error_names_the_material(tiny_run: Any) -> None:
    totals = tiny_run.totals.copy()
    m = tiny_run.compiled.material_ids.index("concentrate")
    totals[0, m] += 1000.0  # produced concentrate that never reached a pool
    bad = _tampered(tiny_run, totals=totals)
    assert not bad.balance.closes
    with pytest.raises(MassBalanceError, match="material 'concentrate': residual 1000"):
        bad.check_balance()
    tiny_run.check_balance()  # the original is untouched


def test_mass_balance_error_on_the_first_material(tiny_run: Any) -> None:
    totals = tiny_run.totals.copy()
    totals[0, 0] += 5.0
    with pytest.raises(MassBalanceError, match="material 'ore'"):
        _tampered(tiny_run, totals=totals).check_balance()


def test_mass_balance_error_names_the_element(tiny_run: Any) -> None:
    # more activity than recorded flows: the recipe losses no longer add up, per element
    bad = _tampered(tiny_run, activity=tiny_run.activity * 1.5)
    with pytest.raises(MassBalanceError, match=r"element (La|Ce|Pr|Nd|Dy): residual"):
        bad.check_balance()


def test_run_checks_the_balance(tiny_quiet: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` checks the balance of every run unless told not to."""
    calls: list[int] = []

    def failing(self: Any) -> None:
        calls.append(1)
        raise MassBalanceError("run does not close its mass balance; worst is a test")

    monkeypatch.setattr(retwin.RunResult, "check_balance", failing)
    with pytest.raises(MassBalanceError, match="does not close"):
        retwin.run(tiny_quiet, seed=1)
    assert calls == [1]
    assert retwin.run(tiny_quiet, seed=1, check=False).totals.sum() > 0
    assert calls == [1]


# --- monthly series -------------------------------------------------------------------------


def test_monthly_series_add_up_to_the_annual_kpis(tiny_run: Any) -> None:
    m = tiny_run.monthly()
    act = m[m.kind == "activity"]
    by_year = act.assign(year=act.month.dt.year).groupby(["id", "year"]).value.sum()
    k = tiny_run.kpis
    out = k[k.kpi == "output.plant"].set_index(["key", "year"]).value
    np.testing.assert_allclose(by_year.sort_index().to_numpy(),
                               out.rename_axis(["id", "year"]).sort_index().to_numpy(), rtol=1e-9)
    stock = m[(m.kind == "stock")].groupby("id").value.last()
    c = tiny_run.compiled
    final = dict(zip([f"{r}/{mat}" for r, mat in c.pool_keys], tiny_run.final_stock, strict=True))
    for pool, v in stock.items():
        assert v == pytest.approx(final[pool], rel=1e-12, abs=1e-9)


def test_monthly_bands_are_ordered_and_span_the_replications(tiny: Scenario) -> None:
    rs = retwin.run_replications(tiny, 4, seed=5)
    b = rs.monthly_bands
    assert (b.p5 <= b.p50 + 1e-12).all() and (b.p50 <= b.p95 + 1e-12).all()
    assert rs.monthly_stack is not None and rs.monthly_stack.shape[0] == 4
    noisy = b[b.kind == "price"]
    assert (noisy.p95 - noisy.p5).max() > 0  # price noise makes replications differ


def test_one_replication_reads_its_monthly_values_from_its_run(tiny: Scenario) -> None:
    """A set of one replication keeps its run whole and reads its monthly values from it
    when they are wanted: the bands and the stage output are those of the run's own values
    stacked as a set of many keeps them."""
    rs = retwin.run_replications(tiny, 1, seed=5)
    assert rs.monthly_stack is None
    stacked = retwin.ReplicationSet(rs.first, kpi_values=[rs.first.kpi_values],
                                    seeds=rs.seeds,
                                    monthly_stack=rs.first.monthly_array()[None, :])
    pd.testing.assert_frame_equal(rs.monthly_bands, stacked.monthly_bands)
    pd.testing.assert_frame_equal(rs.stage_output, stacked.stage_output)
    b = rs.monthly_bands
    assert (b["p5"] == b["mean"]).all() and (b["p95"] == b["mean"]).all()


# --- the compiled scenario ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "baotou-2024", "china-2024"])
def test_topology_agrees_with_the_scenario(name: str) -> None:
    sc = retwin.load_scenario(name)
    c = retwin.prepare(sc)
    topo = c.topology
    mats = [m.id for m in sc.materials]
    pools = [p.key for p in sc.pools]
    stage_of = {p: s for s, plants in topo.stage_plants.items() for p in plants.tolist()}
    assert stage_of == {i: p.stage for i, p in enumerate(sc.plants)}
    assert list(topo.stage_plants) == [s for s in STAGES if s in stage_of.values()]
    for i, p in enumerate(sc.plants):
        for side, recipe in ((topo.inputs, p.recipe.inputs), (topo.outputs, p.recipe.outputs)):
            got = {mats[m]: a for m, a in zip(side.material[side.of(i)],
                                              side.amount[side.of(i)], strict=True)}
            assert got == dict(recipe), (p.id, side)
            assert np.all(side.plant[side.of(i)] == i)
        for j in range(*topo.outputs.of(i).indices(len(topo.outputs.pool))):
            assert pools[topo.outputs.pool[j]] == (p.region, mats[topo.outputs.material[j]])
        quotas = [q for q, quota in enumerate(sc.quotas) if p.id in quota.plants]
        assert topo.plant_quota[i] == (quotas[0] if quotas else -1)
    assert [mats[m] for m in topo.pool_material] == [p.material for p in sc.pools]
    assert [pools[s] for s in topo.market_pool] == [(k.region, k.material) for k in sc.markets]
    assert [mats[m] for m in topo.market_material] == [k.material for k in sc.markets]
    assert [mats[m] for m in topo.segment_material] == [g.material for g in sc.demand]
    assert {mats[m] for m in topo.produced_materials} == {
        m for p in sc.plants for m in p.recipe.outputs}


def test_row_labels_live_on_the_compiled_scenario(tiny: Scenario) -> None:
    """Every run of one compiled scenario shares its KPI and monthly row labels; another
    compiled scenario has its own (nothing is kept in a module, keyed by object ids)."""
    c = retwin.prepare(tiny)
    a, b = retwin.run(c, seed=1), retwin.run(c, seed=2)
    assert a.monthly_values()[0] is b.monthly_values()[0] is c.labels["monthly"][1]
    assert a.kpis.value.tolist() != b.kpis.value.tolist()
    assert c.labels["kpis"][1] is not None
    other = retwin.prepare(tiny)
    assert other.labels == {}
    assert retwin.run(other, seed=1).monthly_values()[0] is not a.monthly_values()[0]
    pd.testing.assert_frame_equal(a.kpis, retwin.run(other, seed=1).kpis)


def test_a_run_leaves_no_arrays_in_reference_cycles() -> None:
    """The model is freed when its run returns (its processes, waiting past the horizon,
    held it in reference cycles with its arrays until a full garbage collection: a batch
    worker grew by ~25 MB per 100 runs). What is left to the collector is SimPy's own small
    environment cycle, no array."""
    import gc

    c = retwin.prepare(retwin.load_scenario("tiny-markets"))
    retwin.run(c, seed=0)
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        for seed in range(3):
            retwin.run(c, seed=seed)
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not [o for o in garbage if isinstance(o, np.ndarray)]
    assert not [o for o in garbage if type(o).__name__ == "ChainModel"]
    assert len(garbage) <= 3 * 10
