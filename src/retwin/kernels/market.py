"""The market process's monthly arithmetic, compiled (:mod:`retwin.processes.economy` says
what it means; this module only computes it).

A month of markets is a few hundred operations on arrays of a few dozen entries: as numpy
calls, each costs more to dispatch than to compute. Here the whole month is one call: prices,
margins, the producers' decisions (with their quotas' water-filling), the outside curves and
demand's response. The arithmetic follows the numpy formulation operation by operation, in
the same order, with numpy's semantics (``np.maximum``/``np.minimum``/``np.clip`` propagate
NaN; a sum over a row is numpy's pairwise sum, bit for bit; ``np.bincount`` adds in index
order). Two things differ in the last bit only: a matrix-vector product is summed in column
order (BLAS may use another order and fused multiply-adds), and ``exp``/``log``/``**`` are the
C library's (numpy may use its own SIMD versions).

Static arrays come packed once per compiled scenario
(:func:`retwin.engine.markets.market_arrays`, ``MarketArrays.packed``):

* ``ints``: (4,) int64 arrays: ``pool_mat`` (S), ``mk_mat`` (K), ``seg_price_mat`` (G),
  ``plant_quota`` (P);
* ``sp``: (3, S, P) drawn from / delivered to / main output pool per unit of activity;
* ``seg_sg`` (S, G) and ``mk_sk`` (S, K): 1 where a segment or a market touches a pool;
* ``pm``: (2, P, M) pooled input and output per unit of activity;
* ``pf``: (4, P) cash cost, margin at the start's prices (where negative), quota
  coefficient, licence share;
* ``sf``: (2, S) working stock (0: cover days of use), lead time of the pool's makers;
* ``kf``: (8, K) the outside curves (see ``KF_*``);
* ``mf``: (M,) 1 where the material has a pool (its price is formed);
* ``gf``: (G,) each segment's price elasticity;
* ``ref0``: (M, T) outside price paths without shocks;
* ``par``: the scalars (see ``PAR_*``).
"""

from __future__ import annotations

import math

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.kernels._jit import jit
from retwin.kernels.flow import BIND_DEMAND, BIND_MARGIN

__all__ = ["KF_NAMES", "PAR_NAMES", "month", "ou_levels", "pairwise_sum", "share_out",
           "start_pass", "warmup"]

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
def _matvec(a: FloatArray, x: FloatArray, out: FloatArray) -> None:
    """``out[:] = a @ x``, summed in column order."""
    for i in range(a.shape[0]):
        acc = 0.0
        for j in range(a.shape[1]):
            acc += a[i, j] * x[j]
        out[i] = acc


@jit
def _matvec_add(a: FloatArray, x: FloatArray, out: FloatArray) -> None:
    """``out += a @ x``."""
    for i in range(a.shape[0]):
        acc = 0.0
        for j in range(a.shape[1]):
            acc += a[i, j] * x[j]
        out[i] += acc


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
    left = 0.0 if 0.0 > allow else allow
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
            s = 1e-300 if 1e-300 > s else s
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
    dl = 1.0 if 1.0 > days_left else days_left
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
def _asked_of_pools(asked: FloatArray, ints: tuple[IntArray, IntArray, IntArray, IntArray],
                    sp: FloatArray, seg_sg: FloatArray, mk_sk: FloatArray, pf: FloatArray,
                    sf: FloatArray, par: FloatArray, cap_day: FloatArray, avail: FloatArray,
                    ramp: FloatArray, ramp_col: int, exp_cap_day: FloatArray,
                    stock: FloatArray, reserve: FloatArray, q_left: FloatArray,
                    days_left: float, offtake: FloatArray, free: FloatArray,
                    target: FloatArray, room: FloatArray) -> None:
    """Each pool's offtake per day (plants at their decided rates within their quotas, the
    segments' ``asked``, outside buyers at the current curve), its stock above the reserve
    and its working stock; and each plant's room under its quota."""
    n_p, n_s = len(cap_day), len(stock)
    running = np.empty(n_p)
    for i in range(n_p):
        running[i] = cap_day[i] * avail[i] * ramp[i, ramp_col]
    granted = np.empty(n_p)
    _quota_room(running, ints[3], pf[2], pf[3], q_left, days_left, granted, room)
    _matvec(sp[0], granted, offtake)
    tmp = np.empty(n_s)
    _matvec(seg_sg, asked, tmp)
    for s in range(n_s):
        offtake[s] += tmp[s]
    _matvec_add(mk_sk, exp_cap_day, offtake)
    cover = par[PAR_COVER]
    for s in range(n_s):
        free[s] = _max(stock[s] - reserve[s], 0.0)
        target[s] = sf[0, s] if sf[0, s] > 0 else cover * offtake[s]


@jit
def _margin(p: FloatArray, pm: FloatArray, pf: FloatArray, out: FloatArray) -> None:
    """Each plant's margin at prices ``p``: output value less inputs bought and cash cost,
    per unit of output value (0 without output value)."""
    n_p = pm.shape[1]
    revenue = np.empty(n_p)
    cost = np.empty(n_p)
    _matvec(pm[1], p, revenue)
    _matvec(pm[0], p, cost)
    for i in range(n_p):
        cost[i] += pf[0, i]
        r = revenue[i]
        out[i] = (r - cost[i]) / _max(r, 1e-12) if r > 1e-12 else 0.0


@jit
def _decide(t: int, margin: FloatArray, smooth_margin: FloatArray, expected: FloatArray,
            free: FloatArray, target: FloatArray, room: FloatArray, sp: FloatArray,
            pf: FloatArray, sf: FloatArray, par: FloatArray, cap_max_day: FloatArray,
            pipe_sum: FloatArray, ipipe_sum: FloatArray, share: FloatArray,
            want: FloatArray, decision_rec: FloatArray, margin_rec: FloatArray,
            reason_rec: np.ndarray) -> None:
    """Each plant's share of its ceiling for the month (``share``, no more than 1), the rate
    a plant running flat out was asked for (``want``), and the month's records."""
    n_s, n_p = sp.shape[1], sp.shape[2]
    ceiling = np.empty(n_p)
    for i in range(n_p):
        ceiling[i] = _min(cap_max_day[i], room[i])
    inflow_max = np.empty(n_s)
    _matvec(sp[1], ceiling, inflow_max)
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
def _after(t: int, p: FloatArray, seen: FloatArray, ref: FloatArray, rates: FloatArray,
           ints: tuple[IntArray, IntArray, IntArray, IntArray], kf: FloatArray,
           gf: FloatArray, ref0: FloatArray, par: FloatArray, price: FloatArray,
           price_rec: FloatArray, imp_share: FloatArray, exp_tpa: FloatArray,
           dem_rate: FloatArray) -> None:
    """The month's prices into the chain, the outside curves at them, and demand's
    response."""
    for m in range(len(p)):
        price[m] = p[m]
        price_rec[m, t] = p[m]
    mk_mat = ints[1]
    for k in range(len(mk_mat)):
        pm, rm = p[mk_mat[k]], ref[mk_mat[k], t]
        priced = pm > TINY and rm > TINY
        if priced:
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
    seg_mat = ints[2]
    for g in range(len(seg_mat)):
        sm = seg_mat[g]
        base = _max(ref0[sm, t], TINY)
        factor = (_max(seen[sm], TINY) / base) ** gf[g] if seen[sm] > TINY else 1.0
        dem_rate[g] = rates[g, t] * factor


@jit
def month(t: int, prev_day: int, day: int, primed: bool, ramp_col: int, days_left: float,
          # static
          ints: tuple[IntArray, IntArray, IntArray, IntArray], sp: FloatArray,
          seg_sg: FloatArray, mk_sk: FloatArray, pm: FloatArray, pf: FloatArray,
          sf: FloatArray, kf: FloatArray, mf: FloatArray, gf: FloatArray, ref0: FloatArray,
          par: FloatArray,
          # this run's paths and the process's state
          ref: FloatArray, rates: FloatArray, p: FloatArray, seen: FloatArray,
          smooth_margin: FloatArray, expected: FloatArray, exp_asked: FloatArray,
          # the chain
          cap_day: FloatArray, avail: FloatArray, cap_max_day: FloatArray, ramp: FloatArray,
          exp_cap_day: FloatArray, stock: FloatArray, reserve: FloatArray,
          pipe_sum: FloatArray, ipipe_sum: FloatArray, q_left: FloatArray,
          served_rec: FloatArray, unmet_rec: FloatArray, exp_rec: FloatArray,
          price: FloatArray, price_rec: FloatArray, dem_rate: FloatArray,
          # out
          share: FloatArray, want: FloatArray, imp_share: FloatArray, exp_tpa: FloatArray,
          decision_rec: FloatArray, margin_rec: FloatArray, reason_rec: np.ndarray) -> bool:
    """One month of markets from ``prev_day`` to ``day`` (month ``t``): when days have passed,
    prices form from last month's stocks and use, producers decide (``share``, ``want`` and
    the records; returns True); then the month's prices go to the chain, the outside curves
    are set at them (``imp_share``, ``exp_tpa``) and demand responds (``dem_rate``)."""
    n = day - prev_day
    decided = n > 0
    if decided:
        n_g, n_s, n_m, n_p = len(rates), len(stock), len(p), len(cap_day)
        unmet = np.empty(n_g)
        asked = np.empty(n_g)
        for g in range(n_g):
            unmet[g] = 0.0 + pairwise_sum(unmet_rec[g], prev_day, n)
            asked[g] = (0.0 + pairwise_sum(served_rec[g], prev_day, n) + unmet[g]) / n
        offtake, free, target = np.empty(n_s), np.empty(n_s), np.empty(n_s)
        room = np.empty(n_p)
        _asked_of_pools(asked, ints, sp, seg_sg, mk_sk, pf, sf, par, cap_day, avail, ramp,
                        ramp_col, exp_cap_day, stock, reserve, q_left, days_left, offtake,
                        free, target, room)
        n_k = len(exp_asked)
        not_shipped = np.empty(n_k)
        for k in range(n_k):
            not_shipped[k] = _max(exp_asked[k] - (0.0 + pairwise_sum(exp_rec[k], prev_day, n)),
                                  0.0)
        short = np.empty(n_s)
        _matvec(seg_sg, unmet, short)
        _matvec_add(mk_sk, not_shipped, short)
        # 1. prices
        free_m, target_m = np.zeros(n_m), np.zeros(n_m)
        pool_mat = ints[0]
        for s in range(n_s):
            free_m[pool_mat[s]] += free[s] - short[s]
        for s in range(n_s):
            target_m[pool_mat[s]] += target[s]
        adjust, pull_k, max_step = par[PAR_PRICE_ADJUST], par[PAR_REFERENCE_PULL], \
            par[PAR_MAX_STEP]
        for m in range(n_m):
            tm = target_m[m]
            gap = (_min(_max((tm - free_m[m]) / _max(tm, TINY), -1.0), 1.0) if tm > TINY
                   else 0.0)
            r = ref[m, t]
            ok = mf[m] > 0 and p[m] > TINY and r > TINY
            pull = math.log(r / p[m]) if ok else 0.0
            step = _min(_max(adjust * gap + pull_k * pull, -max_step), max_step)
            p[m] = p[m] * math.exp(step) if ok else r
        # 3. producers
        margin = np.empty(n_p)
        _margin(p, pm, pf, margin)
        smooth = par[PAR_SMOOTH]
        for i in range(n_p):
            smooth_margin[i] = (smooth_margin[i] + (margin[i] - smooth_margin[i]) * smooth
                                if primed else margin[i])
        for s in range(n_s):
            expected[s] = (expected[s] + (offtake[s] - expected[s]) * smooth
                           if primed else offtake[s])
        _decide(t, margin, smooth_margin, expected, free, target, room, sp, pf, sf, par,
                cap_max_day, pipe_sum, ipipe_sum, share, want, decision_rec, margin_rec,
                reason_rec)
    _after(t, p, seen, ref, rates, ints, kf, gf, ref0, par, price, price_rec, imp_share,
           exp_tpa, dem_rate)
    return decided


@jit
def start_pass(t: int, ramp_col: int, days_left: float,
               ints: tuple[IntArray, IntArray, IntArray, IntArray], sp: FloatArray,
               seg_sg: FloatArray, mk_sk: FloatArray, pm: FloatArray, pf: FloatArray,
               sf: FloatArray, par: FloatArray, p: FloatArray, smooth_margin: FloatArray,
               expected: FloatArray, cap_day: FloatArray, avail: FloatArray,
               cap_max_day: FloatArray, ramp: FloatArray, exp_cap_day: FloatArray,
               stock: FloatArray, reserve: FloatArray, pipe_sum: FloatArray,
               ipipe_sum: FloatArray, q_left: FloatArray, dem_rate: FloatArray,
               share: FloatArray, want: FloatArray, decision_rec: FloatArray,
               margin_rec: FloatArray, reason_rec: np.ndarray) -> None:
    """One pass of the producers' decisions from the start: what the demand segments ask
    now (``dem_rate``), the outside curves and the plants' own draws at their decided rates,
    at prices ``p``; the margin (unsmoothed) into ``smooth_margin`` and the offtake into
    ``expected``."""
    n_s, n_p = len(stock), len(cap_day)
    asked = dem_rate.copy()
    free, target = np.empty(n_s), np.empty(n_s)
    room = np.empty(n_p)
    _asked_of_pools(asked, ints, sp, seg_sg, mk_sk, pf, sf, par, cap_day, avail, ramp,
                    ramp_col, exp_cap_day, stock, reserve, q_left, days_left, expected, free,
                    target, room)
    _margin(p, pm, pf, smooth_margin)
    _decide(t, smooth_margin, smooth_margin, expected, free, target, room, sp, pf, sf, par,
            cap_max_day, pipe_sum, ipipe_sum, share, want, decision_rec, margin_rec,
            reason_rec)


@jit
def ou_levels(eps: FloatArray, decay: float, sd: float, out: FloatArray) -> None:
    """An Ornstein–Uhlenbeck level per step: ``level = level * decay + sd * eps[t]`` from 0."""
    level = 0.0
    for t in range(len(eps)):
        level = level * decay + sd * eps[t]
        out[t] = level
