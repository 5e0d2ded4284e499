"""Compile a :class:`~retwin.scenario.Scenario` into the arrays the kernel and stages use.

Everything that is known before the run starts is computed here once: index maps, recipes in
compressed sparse rows, the calendar, quota releases (with quota changes applied), monthly
base price paths (with price shocks) and monthly base demand (with demand changes). Changes
that act on state during the run (capacity, outage, trade, reserve) become timed events.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.compiled import Compiled, RecipeSide, TimedChange, Topology
from retwin.kernels import contract
from retwin.scenario.load import DataKept
from retwin.scenario.schema import ELEMENTS, STAGES, Scenario

__all__ = ["PATH_BUILDERS", "Compiled", "TimedChange", "compile_scenario"]

#: Sentinel day for "never" (retirement) in the kernel's int64 day arrays.
NEVER = np.iinfo(np.int64).max // 4


def _day(sc: Scenario, d: dt.date | None, default: int) -> int:
    return default if d is None else (d - sc.start).days


def _month_index(sc: Scenario, n_days: int) -> tuple[list[tuple[int, int]], IntArray, IntArray]:
    """The months of the horizon, each day's month index, and each month's first day."""
    days = np.datetime64(sc.start) + np.arange(n_days)
    month_num = days.astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    first = np.flatnonzero(np.r_[True, month_num[1:] != month_num[:-1]])
    month_of_day = np.cumsum(np.r_[0, (month_num[1:] != month_num[:-1]).astype(np.int64)])
    months = [(int(m // 12 + 1970), int(m % 12 + 1)) for m in month_num[first]]
    return months, month_of_day.astype(np.int64), first.astype(np.int64)


def _of_kind(sc: Scenario, kind: str) -> list[Any]:
    """The scenario's changes of one kind, in their order."""
    return [ch for ch in sc.changes if ch.kind == kind]


def _price_paths(sc: Scenario, months: list[tuple[int, int]]) -> FloatArray:
    """Monthly base prices (the value in force mid-month) with price shocks applied."""
    mids = [dt.date(y, m, 15) for y, m in months]
    mid_days = np.array(mids, dtype="datetime64[D]")
    out = np.empty((len(sc.materials), len(months)))
    for i, mat in enumerate(sc.materials):
        # the last path point on or before each mid-month (the path's dates rise), else
        # the base price
        path = mat.price.path
        prices = np.array([mat.price.base_cny_per_unit,
                           *(pt.price_cny_per_unit for pt in path)], np.float64)
        dates = np.array([pt.date for pt in path], dtype="datetime64[D]")
        out[i] = prices[np.searchsorted(dates, mid_days, side="right")]
    idx = {m.id: i for i, m in enumerate(sc.materials)}
    for ch in _of_kind(sc, "price"):
        i = idx[ch.material]
        lo, hi = ch.start or sc.start, ch.end or sc.end
        for t, mid in enumerate(mids):
            if not lo <= mid <= hi:
                continue
            w = 1.0 if ch.ramp_days == 0 else min(1.0, ((mid - lo).days + 1) / ch.ramp_days)
            if ch.factor is not None:
                out[i, t] *= 1.0 + w * (ch.factor - 1.0)
            else:
                assert ch.value_cny_per_unit is not None
                out[i, t] += w * (ch.value_cny_per_unit - out[i, t])
    return out


def _demand_paths(sc: Scenario, months: list[tuple[int, int]]) -> FloatArray:
    """Monthly base demand in material per day: level x growth x seasonality, with changes.

    Growth compounds daily at the rate in force that day: the segment's own rate, or a
    growth change's rate over its ``[from, to]`` (the level reached carries on afterwards).
    """
    n_days = sc.horizon_days
    mid_days = np.array([(dt.date(y, m, 15) - sc.start).days for y, m in months])
    mid_days = np.clip(mid_days, 0, n_days - 1)
    out = np.empty((len(sc.demand), len(months)))
    for g, seg in enumerate(sc.demand):
        level0 = seg.base_units_per_year * seg.intensity_per_unit / 365.0
        rate = np.full(n_days, seg.growth_frac_per_year)
        factor = np.ones(n_days)
        for ch in _of_kind(sc, "demand"):
            if ch.segment != seg.id:
                continue
            lo = max(0, _day(sc, ch.start, 0))
            hi = min(n_days, _day(sc, ch.end, n_days - 1) + 1)
            if ch.growth_frac_per_year is not None:
                rate[lo:hi] = ch.growth_frac_per_year
            elif ch.factor is not None:
                factor[lo:hi] *= ch.factor
        # level at the end of day d: product over days < d of (1+rate)^(1/365)
        log_level = np.concatenate([[0.0], np.cumsum(np.log1p(rate) / 365.0)])[:n_days]
        season = np.array([seg.seasonality[m - 1] for _, m in months])
        out[g] = level0 * np.exp(log_level[mid_days]) * season * factor[mid_days]
    return out


def _quota_releases(
    sc: Scenario, n_days: int
) -> tuple[list[tuple[int, int, float]], dict[tuple[int, int], float]]:
    releases: list[tuple[int, int, float]] = []
    totals: dict[tuple[int, int], float] = {}
    years = range(sc.start.year, sc.end.year + 1)
    for qi, q in enumerate(sc.quotas):
        for y in years:
            for b, batch in enumerate(q.batches, start=1):
                when = dt.date(y, batch.month, batch.day)
                amount = q.amount_for(y) * batch.share_frac
                for ch in _of_kind(sc, "quota"):
                    if ch.quota != q.id:
                        continue
                    if ch.batch is not None and ch.batch != b:
                        continue
                    if not (ch.start or sc.start) <= when <= (ch.end or dt.date.max):
                        continue
                    if ch.factor is not None:
                        amount *= ch.factor
                    elif ch.delta_t_reo is not None:
                        amount = max(0.0, amount + ch.delta_t_reo * batch.share_frac)
                    elif ch.set_t_reo is not None:
                        amount = ch.set_t_reo * batch.share_frac
                totals[(qi, y)] = totals.get((qi, y), 0.0) + amount
                day = (when - sc.start).days
                if day < n_days:
                    releases.append((max(day, 0), qi, amount))
    releases.sort(key=lambda r: (r[0], r[1]))
    return releases, totals


def _quota_calendar(sc: Scenario, releases: list[tuple[int, int, float]],
                    year_starts: list[tuple[int, int]], totals: dict[tuple[int, int], float],
                    days_left0: int) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """The quota calendar the flow kernel reads (``qcal_*``) and what the event log says of
    it. At each calendar year's start, unused quota lapses and each quota's year ceiling is
    set (for a quota that produces ahead, the whole year's total is available from the
    start); on each batch date the batch is released (for a quota that produces ahead, only
    logged). A horizon that starts mid-year gets the share of that year's ceiling and of its
    earlier batches (released on its first day) that the remaining days represent."""
    first_frac = days_left0 / (366 if calendar.isleap(sc.start.year) else 365)
    ahead = [q.produce_ahead for q in sc.quotas]
    n_q = len(sc.quotas)
    events = sorted([(day, 0, year, 0.0) for day, year in year_starts]
                    + [(day, 1, q, amount) for day, q, amount in releases] if n_q else [],
                    key=lambda e: (e[0], e[1]))
    day_, q_, year_, left_, avail_ = [], [], [], [], []
    log: list[tuple[int, str, str]] = []
    first = True
    for day, kind, which, amount in events:
        if kind == 0:
            frac = first_frac if first else 1.0
            first = False
            for q in range(n_q):
                total = frac * totals.get((q, int(which)), 0.0)
                day_.append(day)
                q_.append(q)
                year_.append(1)
                left_.append(total)
                avail_.append(total if ahead[q] else 0.0)
            log.append((day, "quota_year", str(which)))
        else:
            if not ahead[int(which)]:
                share = first_frac if day == 0 else 1.0
                day_.append(day)
                q_.append(int(which))
                year_.append(0)
                left_.append(0.0)
                avail_.append(share * amount)
            log.append((day, "quota_release", sc.quotas[int(which)].id))
    arrays = {"qcal_day": np.array(day_, np.int64), "qcal_q": np.array(q_, np.int64),
              "qcal_year": np.array(year_, np.int64), "qcal_left": np.array(left_, np.float64),
              "qcal_avail": np.array(avail_, np.float64)}
    return arrays, log


#: The ``path`` change kinds (``retwin.scenario.kinds``), each with the builder that compiles
#: it into its path; ``timed`` kinds become :class:`TimedChange` entries, ``data`` kinds never
#: reach the engine (they rewrote the scenario when applied).
PATH_BUILDERS: dict[str, Callable[..., Any]] = {
    "price": _price_paths, "demand": _demand_paths, "quota": _quota_releases}


def _quota_parts(sc: Scenario, n_days: int, days_left0: int
                 ) -> tuple[list[tuple[int, int, float]], dict[tuple[int, int], float],
                            dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """The quota releases (quota changes applied), the year totals, the kernel's quota
    calendar and what the event log says of it."""
    releases, totals = _quota_releases(sc, n_days)
    year_starts = [(max(0, (dt.date(y, 1, 1) - sc.start).days), y)
                   for y in range(sc.start.year, sc.end.year + 1)]
    qcal, quota_log = _quota_calendar(sc, releases, year_starts, totals, days_left0)
    return releases, totals, qcal, quota_log


def _timed(sc: Scenario, n_days: int) -> list[TimedChange]:
    """The changes that act on state during the run, with their days."""
    timed: list[TimedChange] = []
    for i, ch in enumerate(sc.changes):
        if ch.reaches == "timed":
            start = max(0, _day(sc, ch.start, 0))
            end = n_days if ch.end is None else min(n_days, _day(sc, ch.end, n_days) + 1)
            if end > start:
                timed.append(TimedChange(i, ch.kind, start, end, ch))
    return timed


def _check(sc: Scenario, static: dict[str, np.ndarray], n_m: int, n_months: int, ring: int
           ) -> dict[str, int]:
    """Fail here, once, rather than on the hot path: the inputs are what the kernel declares
    (names, dtypes, shapes, indices in range); the run's state and records take these
    sizes."""
    return contract.check(static, sizes={"M": n_m, "Q": len(sc.quotas), "T": n_months,
                                         "R": ring, "TP": 0 if sc.markets_on else n_months})


#: The compiled data of the last scenarios (:func:`_compiled_data`).
_COMPILED_DATA: DataKept[Compiled] = DataKept(max_items=8)


def _compiled_data(sc: Scenario) -> Compiled:
    """:func:`_compile` of ``sc`` without its changes, kept for the scenarios that share its
    data (:class:`~retwin.scenario.load.DataKept`: one compiled data per baseline, for all
    its what-ifs)."""
    return _COMPILED_DATA.get_or_make(
        sc, lambda: _compile(sc.model_copy(update={"changes": []}) if sc.changes else sc))


def compile_scenario(sc: Scenario) -> Compiled:
    """Build the arrays for one run of ``sc`` (deterministic; no randomness here).

    What follows from the scenario's data alone is compiled once for that data
    (:func:`_compiled_data`): a what-if whose changes the engine plays shares every field
    of its baseline but the changes, so only what its changes reach is compiled for it
    (the price, demand and quota paths of the ``path`` kinds, the ``timed`` changes) -- the
    same arrays as compiling it whole, in a fraction of the time."""
    data = _compiled_data(sc)
    if not sc.changes:
        return _of_data(replace(data, scenario=sc, kernel_static=dict(data.kernel_static)),
                        data)
    kinds = {ch.kind for ch in sc.changes}
    if any(ch.reaches != "timed" and ch.kind not in PATH_BUILDERS for ch in sc.changes):
        return _compile(sc)  # (a change of a kind compiled here otherwise: all of it)
    static = dict(data.kernel_static)
    releases, totals, quota_log = data.releases, data.quota_year_total, data.quota_log
    sizes = data.kernel_sizes
    if "quota" in kinds:
        releases, totals, qcal, quota_log = _quota_parts(sc, data.n_days,
                                                         int(data.days_left[0]))
        static.update(qcal)
        sizes = _check(sc, static, len(data.material_ids), len(data.months), data.ring)
    return _of_data(replace(
        data, scenario=sc, kernel_static=static, kernel_sizes=sizes, releases=releases,
        quota_year_total=totals, quota_log=quota_log, timed=_timed(sc, data.n_days),
        price_month=_price_paths(sc, data.months) if "price" in kinds else data.price_month,
        demand_month=(_demand_paths(sc, data.months) if "demand" in kinds
                      else data.demand_month)), data)


def _of_data(c: Compiled, data: Compiled) -> Compiled:
    """``c``, compiled from ``data``, which it keeps (:attr:`Compiled.data`)."""
    c.data = data
    return c


def _compile(sc: Scenario) -> Compiled:
    """:func:`compile_scenario` of ``sc``, all of it."""
    n_days = sc.horizon_days
    dates = np.arange(np.datetime64(sc.start), np.datetime64(sc.end) + 1)
    months, month_of_day, month_start = _month_index(sc, n_days)
    days = dates.astype("datetime64[D]")
    year_end = (days.astype("datetime64[Y]") + 1).astype("datetime64[D]")
    days_left = (year_end - days).astype(np.int64)

    mats = {m.id: i for i, m in enumerate(sc.materials)}
    pools = {p.key: i for i, p in enumerate(sc.pools)}
    plants = sc.plants
    n_p, n_m, n_e = len(plants), len(mats), len(ELEMENTS)
    comp = np.zeros((n_m, n_e))
    for i, mat in enumerate(sc.materials):
        for el, v in mat.composition_t_reo_per_unit.items():
            comp[i, ELEMENTS.index(el)] = v

    rank = {s: i for i, s in enumerate(STAGES)}
    order = np.array(sorted(range(n_p), key=lambda p: (rank[plants[p].stage], p)), np.int64)
    lvl_ptr = [0]
    lvl_pool_ptr, lvl_pools = [0], []
    for lv in range(len(STAGES)):
        lvl_ptr.append(lvl_ptr[-1] + sum(1 for p in plants if rank[p.stage] == lv))
        touched = sorted({
            pools[(p.region, m)]
            for p in plants if rank[p.stage] == lv
            for m in (*(() if p.extracts else p.recipe.inputs), *p.recipe.outputs)
        })
        lvl_pools += touched
        lvl_pool_ptr.append(len(lvl_pools))

    in_ptr, in_pool, in_mat, in_amt = [0], [], [], []
    out_ptr, out_pool, out_mat, out_amt = [0], [], [], []
    loss = np.zeros((n_p, n_e))
    for pi, p in enumerate(plants):
        for mid, a in p.recipe.inputs.items():
            in_pool.append(-1 if p.extracts else pools[(p.region, mid)])
            in_mat.append(mats[mid])
            in_amt.append(a)
            loss[pi] += a * comp[mats[mid]]
        for mid, a in p.recipe.outputs.items():
            out_pool.append(pools[(p.region, mid)])
            out_mat.append(mats[mid])
            out_amt.append(a)
            loss[pi] -= a * comp[mats[mid]]
        in_ptr.append(len(in_amt))
        out_ptr.append(len(out_amt))
    loss[np.abs(loss) < 1e-15] = 0.0

    quota_of = {pid: qi for qi, q in enumerate(sc.quotas) for pid in q.plants}
    plant_quota = np.array([quota_of.get(p.id, -1) for p in plants], np.int64)
    qcoef = np.array(
        [sum(a * comp[mats[m]].sum() for m, a in p.recipe.outputs.items()) for p in plants]
    )
    # licence shares (MIIT allocates a quota to licensed producers): stated per quota, or
    # each plant's nameplate REO capacity as the scenario defines it (later capacity changes
    # do not move them, so adding capacity takes only what the others leave)
    qshare = np.ones(len(plants))
    for qi, q in enumerate(sc.quotas):
        for pi, p in enumerate(plants):
            if plant_quota[pi] != qi:
                continue
            if q.shares is not None:
                qshare[pi] = q.shares.get(p.id, 0.0)
            else:
                qshare[pi] = p.capacity_tpa * p.utilisation_max_frac * qcoef[pi]
    markets = sc.markets
    lead = np.array([p.lead_time_days for p in plants], np.int64)
    imp_lead = np.array([k.import_.lead_time_days if k.import_ else 0 for k in markets], np.int64)
    ring = int(max([1, *(lead + 1), *(imp_lead + 1)]))

    releases, totals, qcal, quota_log = _quota_parts(sc, n_days, int(days_left[0]))
    timed = _timed(sc, n_days)

    def i64(x: list[int]) -> IntArray:
        return np.array(x, np.int64)

    def recipe_side(ptr: list[int], pool: list[int], mat: list[int], amt: list[float]
                    ) -> RecipeSide:
        p = i64(ptr)
        return RecipeSide(ptr=p, plant=np.repeat(np.arange(n_p), np.diff(p)), pool=i64(pool),
                          material=i64(mat), amount=np.array(amt, np.float64))

    pool_mat = i64([mats[p.material] for p in sc.pools])
    mk_pool = i64([pools[(k.region, k.material)] for k in markets])
    dem_pool = i64([pools[(g.region, g.material)] for g in sc.demand])
    stage_of = [p.stage for p in plants]
    stages_held = [s for s in STAGES if s in stage_of]
    topology = Topology(
        stage_plants={s: i64([i for i, ps in enumerate(stage_of) if ps == s])
                      for s in stages_held},
        plant_stage=i64([stages_held.index(ps) for ps in stage_of]),
        inputs=recipe_side(in_ptr, in_pool, in_mat, in_amt),
        outputs=recipe_side(out_ptr, out_pool, out_mat, out_amt),
        pool_material=pool_mat,
        market_pool=mk_pool,
        market_material=pool_mat[mk_pool],
        segment_pool=dem_pool,
        segment_material=pool_mat[dem_pool],
        plant_quota=plant_quota,
        quota_per_activity=qcoef,
    )
    commission_day = i64([_day(sc, p.commissioning, -NEVER) for p in plants])
    ramp_days = i64([p.ramp_days for p in plants])
    retire_day = i64([_day(sc, p.retirement, NEVER) for p in plants])
    static = {
        "order": order,
        "lvl_ptr": i64(lvl_ptr),
        "lvl_pool_ptr": i64(lvl_pool_ptr),
        "lvl_pools": i64(lvl_pools),
        "commission_day": commission_day,
        "ramp_days": ramp_days,
        "retire_day": retire_day,
        "lead": lead,
        "plant_quota": plant_quota,
        "qcoef": qcoef,
        "qshare": qshare,
        "in_ptr": topology.inputs.ptr,
        "in_pool": topology.inputs.pool,
        "in_mat": topology.inputs.material,
        "in_amt": topology.inputs.amount,
        "out_ptr": topology.outputs.ptr,
        "out_pool": topology.outputs.pool,
        "out_mat": topology.outputs.material,
        "out_amt": topology.outputs.amount,
        "pool_mat": pool_mat,
        "target": np.array([p.target_t for p in sc.pools], np.float64),
        "pool_max": np.array([np.inf if p.max_t is None else p.max_t for p in sc.pools]),
        "mk_pool": mk_pool,
        "imp_lead": imp_lead,
        "dem_pool": dem_pool,
        "days_left": days_left,
        "month_of_day": month_of_day,
        **qcal,
    }
    sizes = _check(sc, static, n_m, len(months), ring)

    def avail_spec(attr: str) -> FloatArray:
        return np.array([getattr(p.availability, attr) or np.nan for p in plants], np.float64)

    return Compiled(
        scenario=sc,
        n_days=n_days,
        dates=dates,
        months=months,
        month_of_day=month_of_day,
        month_start_day=month_start,
        days_left=days_left,
        plant_ids=[p.id for p in plants],
        plant_stage=[p.stage for p in plants],
        material_ids=list(mats),
        material_unit=[m.unit for m in sc.materials],
        pool_keys=[p.key for p in sc.pools],
        market_ids=[k.id for k in markets],
        segment_ids=[g.id for g in sc.demand],
        quota_ids=[q.id for q in sc.quotas],
        topology=topology,
        comp=comp,
        loss_per_act=loss,
        nameplate_tpa=np.array([p.capacity_tpa for p in plants], np.float64),
        utilisation=np.array([p.utilisation_max_frac for p in plants], np.float64),
        commission_day=commission_day,
        ramp_days=ramp_days,
        retire_day=retire_day,
        mtbf=avail_spec("mtbf_days"),
        mttr=avail_spec("mttr_days"),
        planned=[
            [
                (max(0, _day(sc, o.start, 0)), min(n_days, _day(sc, o.end, 0) + 1))
                for o in p.availability.planned_outages
                if _day(sc, o.end, 0) >= 0 and _day(sc, o.start, 0) < n_days
            ]
            for p in plants
        ],
        pool_initial=np.array([p.initial_t for p in sc.pools], np.float64),
        reserve0=np.array([p.reserve_t for p in sc.pools], np.float64),
        imp_cap_tpa=np.array([k.import_.cap_tpa if k.import_ else 0.0 for k in markets]),
        exp_cap_tpa=np.array([k.export.cap_tpa if k.export else 0.0 for k in markets]),
        imp_price_factor=np.array([k.import_.price_factor if k.import_ else 1.0 for k in markets]),
        exp_price_factor=np.array([k.export.price_factor if k.export else 1.0 for k in markets]),
        price_month=_price_paths(sc, months),
        volatility=np.array([m.price.volatility_per_year for m in sc.materials]),
        reversion=np.array([m.price.mean_reversion_per_year for m in sc.materials]),
        demand_month=_demand_paths(sc, months),
        demand_cv=np.array([g.noise_cv for g in sc.demand]),
        releases=releases,
        quota_year_total=totals,
        quota_log=quota_log,
        timed=timed,
        kernel_static=static,
        kernel_sizes=sizes,
        ring=ring,
    )
