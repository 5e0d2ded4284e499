"""Markets and decisions: the monthly clearing of a chain whose prices move what it does.

On the first day of each month, having advanced the flow to it, the process reads what the
last month did (plant activity, demand served, exports, imports) and the stocks now, and:

1. **forms prices**: each pooled material's log price moves with the gap between the stock
   it holds (above its reserve, less what buyers asked for last month and did not get:
   plants' draws beyond its free stock, unmet demand and outside demand the region could not
   ship) and the working stock it should hold — the pool's ``target_t``, or
   ``cover_target_days`` of what is asked of it per day — as a share of that working stock
   (a surplus counts up to one working stock, a shortage beyond one by ``1 + ln``, so a
   deeper shortage still raises the price), times ``price_adjust_per_month``; it is pulled toward
   its anchor by ``reference_pull_per_month``, and no month moves it more than
   ``price_max_step_frac``. The anchor is the outside (reference) price; for a material that
   ``follows`` another whose price is formed too, that outside price moved by its share of
   how far the other's formed price stood from its own outside price (the region's cost
   pass-through: metal made from the region's dear oxide is dear, so a converter's margin
   does not collapse each time its input's price jumps).
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
   carry ``main_output_value_share_frac`` or more of its output value at the start's prices,
   and the most valuable one: the shortest of them sets the pace, so a main output in
   surplus does not stop the others) (use smoothed over about three months), plus the gap
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
from retwin.kernels import market as kmarket
from retwin.kernels.market import KF_EXP_BASE, KF_EXP_DEPTH
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
        kmarket.ou_levels(eps, decay, sd, x[i])
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
    short_sum: FloatArray

    def hand_over(self, decide: bool, utilisation: FloatArray, want_day: FloatArray,
                  import_share: FloatArray, export_demand_tpa: FloatArray,
                  export_contract_tpa: FloatArray, exp_asked: FloatArray, days: int) -> None: ...
    def hand_over_arrays(self) -> tuple[FloatArray, ...]: ...
    def set_decisions(self, utilisation: FloatArray, want_day: FloatArray) -> None: ...
    def grow_exports(self, factor: FloatArray) -> None: ...
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
        #: what the month carries over (retwin.kernels.market.new_work), set by a run
        self._work = kmarket.new_work()
        #: (P, T) utilisation decided each month (share of the plant's ceiling)
        self.decision_rec = np.ones((len(arrays.cash_cost), len(month_start_day)))
        #: (P, T) why a plant ran below its ceiling: 0, BIND_DEMAND or BIND_MARGIN
        self.reason_rec = np.zeros((len(arrays.cash_cost), len(month_start_day)), np.int8)
        self._building: set[str] = set()
        #: (P, T) margin per unit of output value
        self.margin_rec = np.zeros((len(arrays.cash_cost), len(month_start_day)))

    def start(self, env: simpy.Environment, chain: _EconomyChain,
              paths: tuple[FloatArray, FloatArray]) -> None:
        """Start the monthly process on ``chain``, with the outside price and demand paths
        :meth:`paths` drew from its streams (writable: the compiled month takes them so)."""
        env.process(self._run(env, chain, paths))

    def paths(self, chain: Chain) -> tuple[FloatArray, FloatArray]:
        """The (M, T) outside price paths with their noise (:func:`reference_paths`) and
        their cost pass-through between materials (:func:`retwin.kernels.market.follow_links`),
        and the (G, T) demand paths with theirs (:func:`demand_paths`), drawn from
        ``chain``'s streams: they do not depend on the state."""
        a = self.a
        ref = reference_paths(chain, self.material_ids, self.price_month, self.volatility,
                              self.reversion)
        # cost pass-through between outside prices: a follower takes its share of the
        # relative change (shock and noise) of the material it follows, in link order
        kmarket.follow_links(ref, np.ascontiguousarray(self.price_month, dtype=float),
                             np.ascontiguousarray(a.ref_price_month, dtype=float), a.link_from,
                             a.link_share)
        rates = np.ascontiguousarray(
            demand_paths(chain, self.segment_ids, self.demand_month, self.demand_cv))
        return ref, rates

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

    def _run(self, env: simpy.Environment, chain: _EconomyChain,
             paths: tuple[FloatArray, FloatArray]) -> Generator[Any, Any, None]:
        """The market month, on the first day of each month (the module docstring says what
        it does). The process decides when a month opens, advances the flow to it, starts
        investment, grows outside demand at a new year and hands the chain its decisions and
        outside curves (in the month's own call; ``hand_over`` when outside demand grew
        first; in the first month's passes ``set_decisions``); a month's arithmetic is one
        compiled call, :func:`retwin.kernels.market.month` (steps 1 to 4, the matrix products
        and ``exp``/``log``/``**`` included, over the scenario's packed arrays and one
        working array the run carries from month to month); in the first month,
        :func:`retwin.kernels.market.close` and :func:`retwin.kernels.market.start_pass`."""
        a = self.a
        ref, rates = paths
        si, sx, kf = a.packed
        n_m, n_p, n_k, n_s = ref.shape[0], len(a.cash_cost), len(a.mk_mat), len(a.pool_mat)
        n_g = len(self.segment_ids)
        # outside demand that grows year by year works on its own copy of the curves
        growing, year, contract = bool(np.any(a.exp_growth != 0.0)), 0, a.exp_contract_tpa
        kf0 = kf
        if growing:
            kf = kf0.copy()
        # what the month carries over, and the views the process hands to the chain
        w = self._work = kmarket.new_work(n_m, n_p, n_s, n_g, n_k)
        w[kmarket.W_P, :n_m] = ref[:, 0]
        w[kmarket.W_SEEN, :n_m] = ref[:, 0]
        share, want = w[kmarket.W_SHARE, :n_p], w[kmarket.W_WANT, :n_p]
        imp_share, exp_tpa = w[kmarket.W_IMP_SHARE, :n_k], w[kmarket.W_EXP_TPA, :n_k]
        exp_asked = w[kmarket.W_EXP_ASKED, :n_k]
        # the chain's records and pool state: arrays it fills in place, read once here
        served_rec, unmet_rec, exp_rec = chain.served_rec, chain.unmet_rec, chain.exp_rec
        stock, reserve, pipe_sum, ipipe_sum = (chain.stock, chain.reserve, chain.pipe_sum,
                                               chain.ipipe_sum)
        short_sum, exp_cap_day, cap_max_day = (chain.short_sum, chain.exp_cap_day,
                                               chain.cap_max_day)
        cap_day, avail, dem_rate = chain.cap_day, chain.avail, chain.dem_rate
        price, price_rec = chain.price, chain.price_rec
        # what the month's call hands the decisions and outside curves into
        decision, want_day, trade, imp_cap_day, exp_contract_day = chain.hand_over_arrays()
        w[kmarket.W_SHORT_THEN, :n_s] = short_sum
        decision_rec, margin_rec, reason_rec = (self.decision_rec, self.margin_rec,
                                                self.reason_rec)
        ramp = np.ascontiguousarray(self.ramp, dtype=float)
        month_days = [int(d) for d in self.month_start_day]
        year_index = a.year_index.tolist()
        n_months = len(month_days)
        invest = bool(a.invest_stages)
        primed = False  # the smoothed margins and expected use hold a first value
        prev_day = 0
        for t in range(n_months):
            day = month_days[t]
            # A month's first day that nothing else is scheduled on or before is the next
            # event anyway: the month goes straight on, without a trip through the event
            # queue (no other process could run in between; the same numbers come out).
            # With investment on, every month waits: a project started reads the clock.
            if day > env.now and (invest or env.peek() <= day):
                yield env.timeout(day - env.now)
            chain.advance_to(day)
            # what each quota has left of its year (at a year's start, the flow has opened it)
            q_left = chain.q_year_left
            grows = growing and year_index[t] != year
            if grows:
                # a new calendar year: outside demand (and the caps with it) grows
                year = year_index[t]
                grown = (1.0 + a.exp_growth) ** year
                kf[KF_EXP_BASE] = kf0[KF_EXP_BASE] * grown
                kf[KF_EXP_DEPTH] = kf0[KF_EXP_DEPTH] * grown
                contract = a.exp_contract_tpa * grown
            next_day = month_days[t + 1] if t + 1 < n_months else chain.n_days
            # the decisions (after a month's clearing) and the outside curves go to the flow
            # in the month's own call, unless outside demand grew first
            handed = day > prev_day and not grows
            if day > prev_day:
                # 1. prices, 3. producers, from what last month's days did; 2. outside
                # curves, 4. demand
                kmarket.month(t, prev_day, day, primed, si, sx, kf, ref, rates, cap_day, avail,
                              ramp, q_left, served_rec, unmet_rec, exp_rec, exp_cap_day,
                              short_sum, stock, reserve, cap_max_day, pipe_sum, ipipe_sum,
                              price, price_rec, dem_rate, w, decision_rec, margin_rec,
                              reason_rec, handed, decision, want_day, contract, trade,
                              imp_cap_day, exp_contract_day, float(next_day - day))
                primed = True
                if invest:
                    self._invest(env, chain, t, day)
            else:
                # 2. outside curves, 4. demand at the start's prices
                kmarket.close(t, si, sx, kf, ref, rates, w, price, price_rec, dem_rate)
            if grows:
                chain.grow_exports(grown)
            if not handed:
                chain.hand_over(day > prev_day, share, want, imp_share, exp_tpa, contract,
                                exp_asked, next_day - day)
            if day == prev_day and N_START_PASSES > 0:
                # 3. producers, from the start: what the demand segments and the outside
                # curves ask now, and the plants' own draws at their decided rates (a few
                # passes, so each level sees its customers' decisions), at the start's
                # prices; so the first month is paced too, not run at every ceiling
                for _ in range(N_START_PASSES):
                    kmarket.start_pass(t, day, si, sx, cap_day, avail, ramp, q_left, dem_rate,
                                       exp_cap_day, stock, reserve, cap_max_day, pipe_sum,
                                       ipipe_sum, w, decision_rec, margin_rec, reason_rec)
                    chain.set_decisions(share, want)
                primed = True
            prev_day = day
