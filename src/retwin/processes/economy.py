"""Markets and decisions: the monthly clearing of a chain whose prices move what it does.

On the first day of each month, having advanced the flow to it, the process reads what the
last month did (plant activity, demand served, exports, imports) and the stocks now, and:

1. **forms prices**: each pooled material's log price moves with the gap between the stock
   it holds (above its reserve, less what buyers asked for last month and did not get:
   unmet demand and outside demand the region could not ship) and the working stock it should
   hold — the pool's ``target_t``, or ``cover_target_days`` of what is asked of it per day —
   as a share of that working stock, times ``price_adjust_per_month``; it is pulled toward
   the outside (reference) price by ``reference_pull_per_month``, and no month moves it more
   than ``price_max_step_frac``.
   Materials without a pool take the outside price;
2. **sets the outside curves**: an import side offers its base volume (default nothing) at
   the outside price times ``1 + premium``, and a share of its cap more per ``slope`` of the
   outside price the region pays above that; an export side's demand is its base volume
   (default nothing) at the outside price, plus a share of its cap per ``slope`` of the
   outside price the region sells below it. A region short of a material thus pays a little
   over the outside price to draw imports, one with a surplus sells it at a discount; the
   kernel ships the smaller of the demand and the cap (the licence or control); the part of
   the base volume under long-term contracts (``contract_frac``) leaves before the region's
   plants draw, whatever the price. Outside
   prices pass cost changes on: a material that ``follows`` another takes its share of that
   material's relative change (shock and noise);
3. **lets producers decide**: each plant runs at the share of its ceiling that the expected
   use of its main output pools asks for (a joint producer's main outputs are those that
   carry a quarter or more of its output value at the start's prices, and the most
   valuable one: the shortest of them sets the pace, so a main output in surplus does not
   stop the others) (use smoothed over about three months), plus the gap
   between that pool's inventory position (stock above reserve, plus what is in the
   pipeline) and its working stock plus the pipeline that use needs over the producers' lead
   time (a base-stock policy), closed over ``inventory_adjust_days``; and no more than its
   (smoothed) margin allows: full at a margin (share of output value) of zero or more,
   falling linearly to ``min_utilisation_frac`` at ``-margin_band_frac``. A plant whose
   margin at the start's prices is already negative (the price records and the recipes'
   yields are not exactly consistent) is taken to break even there, and responds to its
   margin falling further;
4. **lets demand respond**: each segment's draw is its base path (with its noise) times
   ``(price seen / outside price without shocks) ** elasticity``, where the price seen follows
   the formed price with a first-order delay of ``demand_response_months``;
5. **lets sustained margins build capacity** (``economics.investment``, switchable by
   ``settings.investment``): a stage whose plants ran at the utilisation threshold or more of
   their ceiling with the margin threshold or more, on average over the last window, starts a
   project (one at a time per stage) that adds a share of each plant's nameplate after the
   stage's build time.

The random parts (the outside price noise, the demand noise) are drawn up front from the same
streams as the price-path mode, so a baseline and a what-if share them.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, Protocol

import numpy as np
import simpy

from retwin._typing import FloatArray, IntArray
from retwin.kernels.flow import BIND_DEMAND, BIND_MARGIN
from retwin.processes.base import Chain

__all__ = ["EconomyProcess", "demand_paths", "reference_paths"]


def reference_paths(chain: Chain, material_ids: list[str], price_month: FloatArray,
                    volatility: FloatArray, reversion: FloatArray) -> FloatArray:
    """(M, T) price paths times a mean-reverting noise factor in log price (an
    Ornstein–Uhlenbeck step per month with each material's volatility and reversion speed,
    drawn from a stream per material)."""
    n_m, n_t = price_month.shape
    x = np.zeros((n_m, n_t))
    dt = 1.0 / 12.0
    for i in range(n_m):
        k, s = float(reversion[i]), float(volatility[i])
        if s <= 0:
            continue
        eps = np.asarray(chain.rng(f"price/{material_ids[i]}").standard_normal(size=int(n_t)))
        decay = math.exp(-k * dt)
        sd = s * math.sqrt((1 - decay * decay) / (2 * k)) if k > 0 else s * math.sqrt(dt)
        level = 0.0
        for t in range(n_t):
            level = level * decay + sd * eps[t]
            x[i, t] = level
    return price_month * np.exp(x)


def demand_paths(chain: Chain, segment_ids: list[str], demand_month: FloatArray,
                 cv: FloatArray) -> FloatArray:
    """(G, T) base demand times a mean-one lognormal factor with each segment's coefficient
    of variation, drawn from a stream per segment."""
    n_t = demand_month.shape[1]
    sig = np.sqrt(np.log1p(cv**2))
    rate = demand_month.copy()
    for g in range(len(segment_ids)):
        if sig[g] > 0:
            eps = chain.rng(f"demand/{segment_ids[g]}").standard_normal(n_t)
            rate[g] *= np.exp(sig[g] * eps - 0.5 * sig[g] ** 2)
    return rate


#: Weight of the latest month in the producers' expected demand and margin (exponential
#: smoothing over about three months): decisions follow a trend, not one month's noise.
SMOOTH = 1.0 / 3.0

#: Passes of the first month's decisions (0 would run every plant at its ceiling in the first
#: month). Producers decide from the start, one pass per level that draws, so each level sees
#: its customers' decisions: without it, a raised capacity flooded its pool in month one and
#: the price crash that followed could lower output downstream (tiny-markets, recycler
#: capacity x 1.23: magnets -7.8 % -> 0.0 %; tests/test_properties_markets.py).
N_START_PASSES = 4


def _share_out(ask: FloatArray, share: FloatArray, allow: float) -> FloatArray:
    """What each of a quota's plants is granted of ``allow`` when they ask ``ask`` (t REO per
    day): by licence shares, what one leaves of its part going to the others by theirs
    (water-filling, as the flow kernel shares a quota)."""
    got = ask.copy()
    if ask.sum() <= allow:
        return got
    left = max(allow, 0.0)
    open_ = ask > 0
    got[open_] = 0.0
    while open_.any():
        shares = share[open_].sum()
        part = (left * share / shares if shares > 0
                else left * ask / max(ask[open_].sum(), 1e-300))
        fits = open_ & (ask <= part)
        if not fits.any():
            got[open_] = part[open_]
            break
        got[fits] = ask[fits]
        left -= ask[fits].sum()
        open_ &= ~fits
    return got


class _EconomyChain(Chain, Protocol):
    stock: FloatArray
    reserve: FloatArray
    pipe_sum: FloatArray
    ipipe_sum: FloatArray
    q_year_left: FloatArray
    price: FloatArray
    price_rec: FloatArray
    dem_rate: FloatArray
    cap_max_day: FloatArray
    cap_day: FloatArray
    avail: FloatArray
    exp_cap_day: FloatArray
    exp_rec: FloatArray
    served_rec: FloatArray
    unmet_rec: FloatArray

    def set_outside(self, import_share: FloatArray, export_demand_tpa: FloatArray,
                    export_contract_tpa: FloatArray) -> None: ...
    def set_decisions(self, utilisation: FloatArray, want_day: FloatArray) -> None: ...
    def add_capacity(self, plants: IntArray, share_of_nameplate: float) -> None: ...


class EconomyProcess:
    """The monthly market clearing and decisions (see the module docstring)."""

    def __init__(self, arrays: Any, ramp: FloatArray, material_ids: list[str],
                 segment_ids: list[str], month_start_day: IntArray, price_month: FloatArray,
                 volatility: FloatArray, reversion: FloatArray, price_noise: bool,
                 demand_month: FloatArray, demand_cv: FloatArray, demand_noise: bool) -> None:
        self.a = arrays
        self.ramp = ramp
        self.material_ids = material_ids
        self.segment_ids = segment_ids
        self.month_start_day = month_start_day
        self.price_month = price_month
        self.volatility = volatility if price_noise else np.zeros_like(volatility)
        self.reversion = reversion
        self.demand_month = demand_month
        self.demand_cv = demand_cv if demand_noise else np.zeros_like(demand_cv)
        self._exp_asked = np.zeros(len(arrays.mk_mat))
        #: (P, T) utilisation decided each month (share of the plant's ceiling)
        self.decision_rec = np.ones((len(arrays.cash_cost), len(month_start_day)))
        #: (P, T) why a plant ran below its ceiling: 0, BIND_DEMAND or BIND_MARGIN
        self.reason_rec = np.zeros((len(arrays.cash_cost), len(month_start_day)), np.int8)
        self._building: set[str] = set()
        #: (P, T) margin per unit of output value
        self.margin_rec = np.zeros((len(arrays.cash_cost), len(month_start_day)))

    def _margin(self, p: FloatArray) -> FloatArray:
        """(P,) each plant's margin at prices ``p``: output value less inputs bought and
        processing cash cost, per unit of output value (0 without output value)."""
        a = self.a
        revenue = a.out_mp @ p
        cost = a.in_mp @ p + a.cash_cost
        return np.where(revenue > 1e-12, (revenue - cost) / np.maximum(revenue, 1e-12), 0.0)

    def _quota_pace(self, chain: _EconomyChain, day: int) -> FloatArray:
        """(Q,) what each quota lets its plants run per day from ``day`` on: what is left of
        the year's total over the days left (at a year's start, that year's total, whether
        or not the quota process has opened the year yet)."""
        a = self.a
        left = a.quota_year_start.get(day)
        if left is None:
            left = chain.q_year_left
        dl = float(a.days_left[min(day, len(a.days_left) - 1)])
        return np.maximum(np.asarray(left, dtype=float), 0.0) / max(dl, 1.0)

    def _quota_room(self, chain: _EconomyChain, day: int, want: FloatArray
                    ) -> tuple[FloatArray, FloatArray]:
        """(P,) each plant's rate at ``want`` (activity per day) no more than its quota lets
        it run, and (P,) the most its quota lets it run (``inf`` outside a quota): the
        quota's pace is shared by licence shares, and what a plant leaves of its part goes to
        the others (as the kernel shares it), so a plant's room is its own part or what the
        others leave, whichever is more."""
        a = self.a
        granted = want.copy()
        room = np.full(len(want), np.inf)
        if not np.any(a.plant_quota >= 0):
            return granted, room
        pace = self._quota_pace(chain, day)
        for q in range(len(pace)):
            plants = np.flatnonzero(a.plant_quota == q)
            coef = a.qcoef[plants]
            if len(plants) == 0:
                continue
            ask = want[plants] * coef
            got = _share_out(ask, a.qshare[plants], float(pace[q]))
            granted[plants] = np.where(coef > 0, got / np.where(coef > 0, coef, 1.0),
                                       want[plants])
            shares = a.qshare[plants]
            own = (float(pace[q]) * shares / shares.sum() if shares.sum() > 0
                   else np.full(len(plants), float(pace[q]) / len(plants)))
            left_by_others = float(pace[q]) - (got.sum() - got)
            room[plants] = np.where(coef > 0, np.maximum(own, left_by_others)
                                    / np.where(coef > 0, coef, 1.0), np.inf)
        return granted, room

    def _asked_of_pools(self, chain: _EconomyChain, day: int, asked: FloatArray
                        ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(S,) each pool's offtake per day (plants at their decided rates, no more than
        their quotas let them run; the demand segments' ``asked`` per day; outside buyers at
        the current curve), its stock above the reserve, and its working stock; and (P,)
        the most each plant's quota lets it run per day."""
        a = self.a
        running = chain.cap_day * chain.avail * self.ramp[:, min(day, chain.n_days - 1)]
        running, room = self._quota_room(chain, day, running)
        offtake = a.draw_sp @ running + a.seg_sg @ asked + a.mk_sk @ chain.exp_cap_day
        free = np.maximum(chain.stock - chain.reserve, 0.0)
        target = np.where(a.target_t > 0, a.target_t, a.cover_target_days * offtake)
        return offtake, free, target, room

    def _decide(self, chain: _EconomyChain, t: int, margin: FloatArray,
                smooth_margin: FloatArray, expected: FloatArray, free: FloatArray,
                target: FloatArray, room: FloatArray) -> None:
        """3. each plant's share of its ceiling for the month (see the module docstring).

        A plant's ceiling here is what it may run: its capacity, and no more than its quota
        lets it run (``room``); a pool's makers are paced on what they can deliver, and a
        plant that wants less than it may run decides a rate of that (the kernel still
        shares the quota day by day, and a plant that wants all it may run is left to it)."""
        a = self.a
        tiny = 1e-12
        ceiling = np.minimum(chain.cap_max_day, room)
        u_margin = np.clip(1.0 + (smooth_margin - a.margin0) / a.margin_band, 0.0, 1.0)
        inflow_max = a.make_sp @ ceiling
        position = free + chain.pipe_sum + chain.ipipe_sum
        need = expected + (target + expected * a.lead_s - position) / a.inventory_adjust_days
        # each pool's need as a share of what its makers can deliver (inf: no makers)
        ratio = np.where(inflow_max > tiny, need / np.maximum(inflow_max, tiny), np.inf)
        # a joint producer is pulled by the main output that is shortest: a main output
        # whose pool is in surplus does not hold back the others (what piles up is sold off
        # at its falling price; the margin says whether the bundle still pays)
        asked = np.where(a.main_sp > 0, ratio[:, None], -np.inf).max(axis=0)
        asked = np.where(np.isneginf(asked), np.inf, asked)
        u_pull = np.clip(asked, 0.0, 1.0)
        u = np.maximum(a.min_util, np.minimum(u_margin, u_pull))
        full = u >= 1.0 - 1e-9
        share = np.where(full, 1.0, np.where(
            chain.cap_max_day > tiny,
            u * ceiling / np.maximum(chain.cap_max_day, tiny), u))
        # what a plant running flat out was asked for: its main pools' need over what their
        # makers can deliver, times its own ceiling (a plant not paced on a pool: no limit)
        want = np.full_like(ceiling, np.inf)
        paced = np.isfinite(asked)
        want[paced] = np.maximum(asked[paced], 0.0) * ceiling[paced]
        chain.set_decisions(np.minimum(share, 1.0), want)
        self.decision_rec[:, t] = u
        self.margin_rec[:, t] = margin
        self.reason_rec[:, t] = np.where(
            full, 0, np.where(u_margin < u_pull, BIND_MARGIN, BIND_DEMAND))

    def start(self, env: simpy.Environment, chain: _EconomyChain) -> None:
        env.process(self._run(env, chain))

    def _invest(self, env: simpy.Environment, chain: _EconomyChain, t: int, day: int) -> None:
        """5. investment: a stage whose plants ran at their ceiling with a good margin over
        the last window starts a project (one at a time), built after its lead time."""
        a = self.a
        w = a.invest_window
        if not a.invest_stages or t < w:
            return
        for stage, plants, build_days in a.invest_stages:
            if stage in self._building or len(plants) == 0:
                continue
            util = float(self.decision_rec[plants, t - w + 1:t + 1].mean())
            margin = float(self.margin_rec[plants, t - w + 1:t + 1].mean())
            if util >= a.invest_util and margin >= a.invest_margin:
                self._building.add(stage)
                chain.log(day, "investment", stage)
                env.process(self._build(env, chain, stage, plants, build_days))

    def _build(self, env: simpy.Environment, chain: _EconomyChain, stage: str,
               plants: IntArray, build_days: int) -> Generator[Any, Any, None]:
        if build_days > 0:
            yield env.timeout(build_days)
        day = int(env.now)
        if day < chain.n_days:
            chain.advance_to(day)
            chain.add_capacity(plants, self.a.invest_step)
            chain.log(day, "commissioning", stage)
        self._building.discard(stage)

    def _run(self, env: simpy.Environment, chain: _EconomyChain) -> Generator[Any, Any, None]:
        a = self.a
        tiny = 1e-12
        ref = reference_paths(chain, self.material_ids, self.price_month, self.volatility,
                              self.reversion)
        # cost pass-through between outside prices: a follower takes its share of the
        # relative change (shock and noise) of the material it follows, in link order
        for _ in range(len(a.link_from)):
            moved = False
            for i in np.flatnonzero(a.link_from >= 0):
                j = a.link_from[i]
                rel = np.where(a.ref_price_month[j] > tiny,
                               ref[j] / np.maximum(a.ref_price_month[j], tiny), 1.0)
                new = self.price_month[i] * (1.0 + a.link_share[i] * (rel - 1.0))
                if not np.array_equal(new, ref[i]):
                    ref[i] = new
                    moved = True
            if not moved:
                break
        rates = demand_paths(chain, self.segment_ids, self.demand_month, self.demand_cv)
        n_m = ref.shape[0]
        formed = a.has_pool > 0
        p = ref[:, 0].copy()
        seen = p.copy()
        alpha = 1.0 - math.exp(-1.0 / a.response_months) if a.response_months > 0 else 1.0
        prev_day = 0
        expected: FloatArray | None = None
        smooth_margin: FloatArray | None = None
        for t, day in enumerate(self.month_start_day):
            day = int(day)
            if day > env.now:
                yield env.timeout(day - env.now)
            chain.advance_to(day)
            n = day - prev_day
            if n > 0:
                # what is asked of each pool per day (not what it could serve: a pool that
                # ran dry must still see its demand): plants at their decided rates, demand
                # segments' requests of last month, outside buyers at this month's curve
                unmet = chain.unmet_rec[:, prev_day:day].sum(axis=1)
                asked = (chain.served_rec[:, prev_day:day].sum(axis=1) + unmet) / n
                offtake, free, target, room = self._asked_of_pools(chain, day, asked)
                # what buyers asked for last month and did not get: demand segments' unmet
                # draws and outside demand (below any control cap) the region could not ship
                not_shipped = np.maximum(
                    self._exp_asked - chain.exp_rec[:, prev_day:day].sum(axis=1), 0.0)
                short = a.seg_sg @ unmet + a.mk_sk @ not_shipped
                # 1. prices
                free_m = np.bincount(a.pool_mat, free - short, minlength=n_m)
                target_m = np.bincount(a.pool_mat, target, minlength=n_m)
                gap = np.where(target_m > tiny,
                               np.clip((target_m - free_m) / np.maximum(target_m, tiny), -1, 1),
                               0.0)
                ok = formed & (p > tiny) & (ref[:, t] > tiny)
                pull = np.log(np.where(ok, ref[:, t], 1.0) / np.where(ok, p, 1.0))
                step = np.clip(a.price_adjust * gap + a.reference_pull * pull,
                               -a.max_step, a.max_step)
                p = np.where(ok, p * np.exp(step), ref[:, t])
                # 3. producers
                margin = self._margin(p)
                smooth_margin = margin if smooth_margin is None \
                    else smooth_margin + (margin - smooth_margin) * SMOOTH
                expected = offtake if expected is None else expected + (offtake - expected) * SMOOTH
                self._decide(chain, t, margin, smooth_margin, expected, free, target, room)
                self._invest(env, chain, t, day)
            chain.price[:] = p
            chain.price_rec[:, t] = p
            # 2. outside curves
            # a material without a price (a feed such as Fe/B) has no market: its import cap
            # is on offer and its outside demand is its base
            pm = p[a.mk_mat]
            rm = ref[a.mk_mat, t]
            priced = (pm > tiny) & (rm > tiny)
            rm, pm = np.where(priced, rm, 1.0), np.where(priced, pm, 1.0)
            imp_share = a.imp_on * np.where(priced, np.clip(
                a.imp_base_share + (pm / rm - 1.0 - a.imp_premium) / a.imp_slope, 0, 1), 1.0)
            exp_tpa = a.exp_on * np.clip(
                a.exp_base_tpa + a.exp_depth_tpa * (1.0 - pm / rm) / a.exp_slope, 0.0, None)
            chain.set_outside(imp_share, exp_tpa, a.exp_contract_tpa)
            next_day = int(self.month_start_day[t + 1]) if t + 1 < len(self.month_start_day) \
                else chain.n_days
            self._exp_asked = chain.exp_cap_day * (next_day - day)
            # 4. demand
            seen += (p - seen) * alpha
            sm = a.seg_price_mat
            base = np.maximum(a.ref_price_month[sm, t], tiny)
            factor = np.where(seen[sm] > tiny, (np.maximum(seen[sm], tiny) / base)
                              ** a.seg_elasticity, 1.0)
            chain.dem_rate[:] = rates[:, t] * factor
            if n == 0 and N_START_PASSES > 0:
                # 3. producers, from the start: what the demand segments and the outside
                # curves ask now, and the plants' own draws at their decided rates (a few
                # passes, so each level sees its customers' decisions), at the start's
                # prices; so the first month is paced too, not run at every ceiling
                margin = smooth_margin = self._margin(p)
                for _ in range(N_START_PASSES):
                    offtake, free, target, room = self._asked_of_pools(
                        chain, day, chain.dem_rate.copy())
                    self._decide(chain, t, margin, smooth_margin, offtake, free, target, room)
                expected = offtake
            prev_day = day
