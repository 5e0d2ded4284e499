"""The market process's monthly arithmetic, compiled (:mod:`retwin.processes.economy` says
what it means; this module only computes it).

A month of markets is a few hundred operations on arrays of a few dozen entries: as numpy
calls, each costs more to dispatch than to compute. Here a month is a few calls (the process
chains them): what buyers asked and the quotas' water-filling (:func:`month_open`), the price
step (:func:`month_step`), margins (:func:`margins`), the producers' decisions
(:func:`decide`) and the outside curves and demand's response (:func:`month_close`). The
matrix products and ``exp``/``log``/``**`` stay with numpy between the calls (BLAS sums in its
own order, with fused multiply-adds, and numpy has its own SIMD ``exp``/``log``/``power``):
everything here follows numpy's arithmetic operation by operation, in the same order and with
numpy's semantics (``np.maximum``/``np.minimum``/``np.clip`` propagate NaN; a sum is numpy's
pairwise sum; ``np.bincount`` adds in index order), so a run's results are the same bit for
bit as the numpy formulation's.

Static arrays come packed once per compiled scenario
(:func:`retwin.engine.markets.market_arrays`, ``MarketArrays.packed``):

* ``sp``: (3, S, P) drawn from / delivered to / main output pool per unit of activity;
* ``pf``: (4, P) cash cost, margin at the start's prices (where negative), quota
  coefficient, licence share;
* ``sf``: (2, S) working stock (0: cover days of use), lead time of the pool's makers;
* ``kf``: (8, K) the outside curves (``KF_NAMES``);
* ``mf``: (M,) 1 where the material has a pool (its price is formed);
* ``ref0``: (M, T) outside price paths without shocks;
* ``par``: the scalars (``PAR_NAMES``).
"""

from __future__ import annotations

import math

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.kernels._jit import jit
from retwin.kernels.flow import BIND_DEMAND, BIND_MARGIN

__all__ = ["KF_NAMES", "PAR_NAMES", "decide", "margins", "month_close", "month_open",
           "month_step", "ou_levels", "pairwise_sum", "pools", "running_room", "share_out"]

TINY = 1e-12

#: ``kf`` rows: the outside curves of each market (``MarketArrays`` fields), in order.
KF_NAMES = ("imp_base_share", "imp_on", "exp_on", "imp_premium", "imp_slope", "exp_base_tpa",
            "exp_slope", "exp_depth_tpa")
KF_IMP_BASE, KF_IMP_ON, KF_EXP_ON, KF_IMP_PREMIUM, KF_IMP_SLOPE = 0, 1, 2, 3, 4
KF_EXP_BASE, KF_EXP_SLOPE, KF_EXP_DEPTH = 5, 6, 7
#: ``par`` entries, in order.
PAR_NAMES = ("price_adjust", "max_step", "reference_pull", "cover_target_days",
             "inventory_adjust_days", "margin_band", "min_util", "alpha", "smooth")
(PAR_PRICE_ADJUST, PAR_MAX_STEP, PAR_REFERENCE_PULL, PAR_COVER, PAR_INV_ADJUST,
 PAR_MARGIN_BAND, PAR_MIN_UTIL, PAR_ALPHA, PAR_SMOOTH) = range(len(PAR_NAMES))


@jit
def _max(a: float, b: float) -> float:
    """``np.maximum`` of two floats (NaN propagates)."""
    return a if (a >= b or a != a) else b


@jit
def _min(a: float, b: float) -> float:
    """``np.minimum`` of two floats (NaN propagates)."""
    return a if (a <= b or a != a) else b


@jit
def _pairwise_block(x: FloatArray, lo: int, n: int) -> float:
    """numpy's pairwise sum of ``x[lo:lo + n]`` for ``n <= 128`` (one block)."""
    if n < 8:
        r = 0.0
        for i in range(lo, lo + n):
            r += x[i]
        return r
    r0, r1, r2, r3 = x[lo], x[lo + 1], x[lo + 2], x[lo + 3]
    r4, r5, r6, r7 = x[lo + 4], x[lo + 5], x[lo + 6], x[lo + 7]
    i = 8
    while i < n - n % 8:
        r0 += x[lo + i]
        r1 += x[lo + i + 1]
        r2 += x[lo + i + 2]
        r3 += x[lo + i + 3]
        r4 += x[lo + i + 4]
        r5 += x[lo + i + 5]
        r6 += x[lo + i + 6]
        r7 += x[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += x[lo + i]
        i += 1
    return res


@jit
def pairwise_sum(x: FloatArray, lo: int, n: int) -> float:
    """``x[lo:lo + n].sum()`` less its initial 0.0, as numpy sums it (pairwise, eight
    accumulators, blocks of 128 halved recursively), bit for bit. The recursion runs on an
    explicit stack (Numba's cache does not load recursive functions safely)."""
    if n <= 128:
        return _pairwise_block(x, lo, n)
    f_lo = np.empty(128, np.int64)
    f_n = np.empty(128, np.int64)
    f_stage = np.empty(128, np.int64)
    vals = np.empty(128)
    top, nv = 0, 0
    f_lo[0], f_n[0], f_stage[0] = lo, n, 0
    top = 1
    while top > 0:
        k = top - 1
        lk, nk = f_lo[k], f_n[k]
        if nk <= 128:
            vals[nv] = _pairwise_block(x, lk, nk)
            nv += 1
            top -= 1
            continue
        n2 = nk // 2
        n2 -= n2 % 8
        if f_stage[k] == 0:
            f_stage[k] = 1
            f_lo[top], f_n[top], f_stage[top] = lk, n2, 0
            top += 1
        elif f_stage[k] == 1:
            f_stage[k] = 2
            f_lo[top], f_n[top], f_stage[top] = lk + n2, nk - n2, 0
            top += 1
        else:
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            top -= 1
    return vals[0]


@jit
def _masked_sum(x: FloatArray, mask: np.ndarray, buf: FloatArray) -> float:
    """``x[mask].sum()``."""
    m = 0
    for i in range(len(x)):
        if mask[i]:
            buf[m] = x[i]
            m += 1
    return 0.0 + pairwise_sum(buf, 0, m)


@jit
def share_out(ask: FloatArray, share: FloatArray, allow: float, got: FloatArray) -> None:
    """What each of a quota's plants is granted of ``allow`` when they ask ``ask`` (t REO per
    day), into ``got``: by licence shares, what one leaves of its part going to the others by
    theirs (water-filling, as the flow kernel shares a quota)."""
    n = len(ask)
    buf = np.empty(n)
    for i in range(n):
        got[i] = ask[i]
    if 0.0 + pairwise_sum(ask, 0, n) <= allow:
        return
    left = 0.0 if allow < 0.0 else allow
    open_ = np.empty(n, np.bool_)
    fits = np.empty(n, np.bool_)
    part = np.empty(n)
    n_open = 0
    for i in range(n):
        open_[i] = ask[i] > 0
        if open_[i]:
            got[i] = 0.0
            n_open += 1
    while n_open > 0:
        shares = _masked_sum(share, open_, buf)
        if shares > 0:
            for i in range(n):
                part[i] = left * share[i] / shares
        else:
            s = _masked_sum(ask, open_, buf)
            s = 1e-300 if s < 1e-300 else s
            for i in range(n):
                part[i] = left * ask[i] / s
        n_fit = 0
        for i in range(n):
            fits[i] = open_[i] and ask[i] <= part[i]
            if fits[i]:
                n_fit += 1
        if n_fit == 0:
            for i in range(n):
                if open_[i]:
                    got[i] = part[i]
            break
        for i in range(n):
            if fits[i]:
                got[i] = ask[i]
        left -= _masked_sum(ask, fits, buf)
        for i in range(n):
            if fits[i]:
                open_[i] = False
                n_open -= 1


@jit
def _quota_room(want: FloatArray, plant_quota: IntArray, qcoef: FloatArray,
                qshare: FloatArray, q_left: FloatArray, days_left: float,
                granted: FloatArray, room: FloatArray) -> None:
    """Each plant's rate at ``want`` no more than its quota lets it run (``granted``), and
    the most its quota lets it run (``room``, inf outside a quota): the quota's pace (what is
    left of the year over the days left) shared by licence shares, what a plant leaves of
    its part going to the others."""
    n_p = len(want)
    any_quota = False
    for i in range(n_p):
        granted[i] = want[i]
        room[i] = np.inf
        if plant_quota[i] >= 0:
            any_quota = True
    if not any_quota:
        return
    dl = 1.0 if days_left < 1.0 else days_left
    idx = np.empty(n_p, np.int64)
    for q in range(len(q_left)):
        pace = _max(q_left[q], 0.0) / dl
        m = 0
        for i in range(n_p):
            if plant_quota[i] == q:
                idx[m] = i
                m += 1
        if m == 0:
            continue
        coef = np.empty(m)
        ask = np.empty(m)
        shares = np.empty(m)
        for j in range(m):
            coef[j] = qcoef[idx[j]]
            ask[j] = want[idx[j]] * coef[j]
            shares[j] = qshare[idx[j]]
        got = np.empty(m)
        share_out(ask, shares, pace, got)
        for j in range(m):
            granted[idx[j]] = got[j] / coef[j] if coef[j] > 0 else want[idx[j]]
        total_share = 0.0 + pairwise_sum(shares, 0, m)
        total_got = 0.0 + pairwise_sum(got, 0, m)
        for j in range(m):
            own = pace * shares[j] / total_share if total_share > 0 else pace / m
            left_by_others = pace - (total_got - got[j])
            room[idx[j]] = _max(own, left_by_others) / coef[j] if coef[j] > 0 else np.inf


@jit
def running_room(ramp_col: int, days_left: float, cap_day: FloatArray, avail: FloatArray,
                 ramp: FloatArray, plant_quota: IntArray, pf: FloatArray, q_left: FloatArray,
                 granted: FloatArray, room: FloatArray) -> None:
    """Each plant's rate at its decided rate (``cap_day * avail * ramp``) no more than its
    quota lets it run (``granted``), and the most its quota lets it run (``room``)."""
    n_p = len(cap_day)
    running = np.empty(n_p)
    for i in range(n_p):
        running[i] = cap_day[i] * avail[i] * ramp[i, ramp_col]
    _quota_room(running, plant_quota, pf[2], pf[3], q_left, days_left, granted, room)


@jit
def month_open(t: int, prev_day: int, day: int, ramp_col: int, days_left: float,
               plant_quota: IntArray, pf: FloatArray, mf: FloatArray, ref: FloatArray,
               p: FloatArray, exp_asked: FloatArray, cap_day: FloatArray, avail: FloatArray,
               ramp: FloatArray, q_left: FloatArray, served_rec: FloatArray,
               unmet_rec: FloatArray, exp_rec: FloatArray, asked: FloatArray,
               unmet: FloatArray, not_shipped: FloatArray, granted: FloatArray,
               room: FloatArray, ok: np.ndarray, ratio: FloatArray) -> None:
    """What last month's buyers asked per day (``asked``) and did not get (``unmet``,
    ``not_shipped``), the plants' rates within their quotas (``granted``, ``room``), which
    materials' prices form (``ok``) and the outside price over the formed one (``ratio``, 1
    where the price does not form: its log pulls the price toward the outside)."""
    n = day - prev_day
    for g in range(len(asked)):
        unmet[g] = 0.0 + pairwise_sum(unmet_rec[g], prev_day, n)
        asked[g] = (0.0 + pairwise_sum(served_rec[g], prev_day, n) + unmet[g]) / n
    for k in range(len(exp_asked)):
        not_shipped[k] = _max(exp_asked[k] - (0.0 + pairwise_sum(exp_rec[k], prev_day, n)),
                              0.0)
    running_room(ramp_col, days_left, cap_day, avail, ramp, plant_quota, pf, q_left,
                 granted, room)
    for m in range(len(p)):
        r = ref[m, t]
        ok[m] = mf[m] > 0 and p[m] > TINY and r > TINY
        ratio[m] = r / p[m] if ok[m] else 1.0


@jit
def pools(offtake: FloatArray, stock: FloatArray, reserve: FloatArray, sf: FloatArray,
          par: FloatArray, free: FloatArray, target: FloatArray) -> None:
    """Each pool's stock above its reserve (``free``) and working stock (``target``)."""
    cover = par[PAR_COVER]
    for s in range(len(stock)):
        free[s] = _max(stock[s] - reserve[s], 0.0)
        target[s] = sf[0, s] if sf[0, s] > 0 else cover * offtake[s]


@jit
def month_step(offtake: FloatArray, short: FloatArray, pull: FloatArray, ok: np.ndarray,
               pool_mat: IntArray, sf: FloatArray, par: FloatArray, stock: FloatArray,
               reserve: FloatArray, free: FloatArray, target: FloatArray,
               step: FloatArray) -> None:
    """1. prices: each material's step in log price from the gap between the stock its pools
    hold (less what buyers did not get, ``short``) and their working stock, and the pull
    toward the outside price (``pull``); and ``free``, ``target`` (:func:`pools`)."""
    pools(offtake, stock, reserve, sf, par, free, target)
    n_m = len(step)
    free_m, target_m = np.zeros(n_m), np.zeros(n_m)
    for s in range(len(stock)):
        free_m[pool_mat[s]] += free[s] - short[s]
    for s in range(len(stock)):
        target_m[pool_mat[s]] += target[s]
    adjust, pull_k, max_step = par[PAR_PRICE_ADJUST], par[PAR_REFERENCE_PULL], \
        par[PAR_MAX_STEP]
    for m in range(n_m):
        tm = target_m[m]
        # a surplus counts up to one working stock; a shortage in full up to one working
        # stock and by its logarithm beyond (1 + ln gap: what buyers could not get can be many
        # working stocks, and a deeper shortage must still raise the price), the step itself
        # bounded by max_step
        gap = _max((tm - free_m[m]) / _max(tm, TINY), -1.0) if tm > TINY else 0.0
        if gap > 1.0:
            gap = 1.0 + math.log(gap)
        step[m] = _min(_max(adjust * gap + pull_k * pull[m], -max_step), max_step)


@jit
def margins(primed: bool, revenue: FloatArray, bought: FloatArray, offtake: FloatArray,
            pf: FloatArray, par: FloatArray, cap_max_day: FloatArray, room: FloatArray,
            margin: FloatArray, smooth_margin: FloatArray, expected: FloatArray,
            ceiling: FloatArray) -> None:
    """3. each plant's margin from its output value (``revenue``) and inputs (``bought``)
    per unit of activity, per unit of output value (0 without output value); the smoothed
    margin and expected offtake (the first values where not ``primed``); and each plant's
    ceiling (its capacity, no more than its quota lets it run)."""
    smooth = par[PAR_SMOOTH]
    for i in range(len(revenue)):
        r = revenue[i]
        cost = bought[i] + pf[0, i]
        margin[i] = (r - cost) / _max(r, 1e-12) if r > 1e-12 else 0.0
        smooth_margin[i] = (smooth_margin[i] + (margin[i] - smooth_margin[i]) * smooth
                            if primed else margin[i])
        ceiling[i] = _min(cap_max_day[i], room[i])
    for s in range(len(offtake)):
        expected[s] = (expected[s] + (offtake[s] - expected[s]) * smooth
                       if primed else offtake[s])


@jit
def decide(t: int, margin: FloatArray, smooth_margin: FloatArray, expected: FloatArray,
           free: FloatArray, target: FloatArray, ceiling: FloatArray, inflow_max: FloatArray,
           sp: FloatArray, pf: FloatArray, sf: FloatArray, par: FloatArray,
           cap_max_day: FloatArray, pipe_sum: FloatArray, ipipe_sum: FloatArray,
           share: FloatArray, want: FloatArray, decision_rec: FloatArray,
           margin_rec: FloatArray, reason_rec: np.ndarray) -> None:
    """Each plant's share of its ceiling for the month (``share``, no more than 1), the rate
    a plant running flat out was asked for (``want``), and the month's records; what the
    makers of each pool can deliver is ``inflow_max``."""
    n_s, n_p = sp.shape[1], sp.shape[2]
    ratio = np.empty(n_s)
    inv_adjust = par[PAR_INV_ADJUST]
    for s in range(n_s):
        position = free[s] + pipe_sum[s] + ipipe_sum[s]
        need = expected[s] + (target[s] + expected[s] * sf[1, s] - position) / inv_adjust
        ratio[s] = need / _max(inflow_max[s], TINY) if inflow_max[s] > TINY else np.inf
    band, min_util = par[PAR_MARGIN_BAND], par[PAR_MIN_UTIL]
    for i in range(n_p):
        u_margin = _min(_max(1.0 + (smooth_margin[i] - pf[1, i]) / band, 0.0), 1.0)
        # the shortest of the plant's main outputs' pools paces it (-inf: none)
        asked = -np.inf
        for s in range(n_s):
            v = ratio[s] if sp[2, s, i] > 0 else -np.inf
            if v > asked or v != v:
                asked = v
                if v != v:
                    break
        if asked == -np.inf:
            asked = np.inf
        u_pull = _min(_max(asked, 0.0), 1.0)
        u = _max(min_util, _min(u_margin, u_pull))
        full = u >= 1.0 - 1e-9
        if full:
            sh = 1.0
        elif cap_max_day[i] > TINY:
            sh = u * ceiling[i] / _max(cap_max_day[i], TINY)
        else:
            sh = u
        share[i] = _min(sh, 1.0)
        want[i] = _max(asked, 0.0) * ceiling[i] if math.isfinite(asked) else np.inf
        decision_rec[i, t] = u
        margin_rec[i, t] = margin[i]
        reason_rec[i, t] = 0 if full else (BIND_MARGIN if u_margin < u_pull else BIND_DEMAND)


@jit
def month_close(t: int, p: FloatArray, seen: FloatArray, ref: FloatArray, mk_mat: IntArray,
                seg_mat: IntArray, kf: FloatArray, ref0: FloatArray, par: FloatArray,
                price: FloatArray, price_rec: FloatArray, imp_share: FloatArray,
                exp_tpa: FloatArray, seen_rel: FloatArray, seen_ok: np.ndarray) -> None:
    """The month's prices into the chain; 2. the outside curves at them (``imp_share``,
    ``exp_tpa``); 4. the price demand sees, and each segment's seen price over the outside
    price without shocks (``seen_rel``, where ``seen_ok``: demand scales by its power)."""
    for m in range(len(p)):
        price[m] = p[m]
        price_rec[m, t] = p[m]
    for k in range(len(mk_mat)):
        pm, rm = p[mk_mat[k]], ref[mk_mat[k], t]
        if pm > TINY and rm > TINY:
            x = kf[KF_IMP_BASE, k] + (pm / rm - 1.0 - kf[KF_IMP_PREMIUM, k]) / kf[KF_IMP_SLOPE, k]
            imp_share[k] = kf[KF_IMP_ON, k] * _min(_max(x, 0.0), 1.0)
        else:
            pm = rm = 1.0
            imp_share[k] = kf[KF_IMP_ON, k] * 1.0
        exp_tpa[k] = kf[KF_EXP_ON, k] * _max(
            kf[KF_EXP_BASE, k] + kf[KF_EXP_DEPTH, k] * (1.0 - pm / rm) / kf[KF_EXP_SLOPE, k],
            0.0)
    alpha = par[PAR_ALPHA]
    for m in range(len(seen)):
        seen[m] += (p[m] - seen[m]) * alpha
    for g in range(len(seg_mat)):
        sm = seg_mat[g]
        seen_ok[g] = seen[sm] > TINY
        seen_rel[g] = _max(seen[sm], TINY) / _max(ref0[sm, t], TINY)


@jit
def ou_levels(eps: FloatArray, decay: float, sd: float, out: FloatArray) -> None:
    """An Ornstein–Uhlenbeck level per step: ``level = level * decay + sd * eps[t]`` from 0."""
    level = 0.0
    for t in range(len(eps)):
        level = level * decay + sd * eps[t]
        out[t] = level
