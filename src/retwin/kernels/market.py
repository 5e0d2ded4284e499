"""The market process's monthly arithmetic, compiled (:mod:`retwin.processes.economy` says
what it means; this module only computes it).

A month of markets is a few hundred operations on arrays of a few dozen entries: as numpy
calls, each costs more to dispatch than to compute. Here a month is one call from the
process, all its arithmetic inside it: :func:`month` (what buyers asked and did not get, the
quotas' water-filling, the products of the pools' and plants' matrices, the price step with
its ``log`` and ``exp``, margins, the producers' decisions, then the outside curves and
demand's response with its power: :func:`close`). The first month, which has no last month
to clear, is :func:`close` and a few :func:`start_pass`. The process keeps what decides
(when a month opens, investment, outside demand's growth, the chain's setters) and calls
these in between; before the first month, :func:`follow_links` passes cost changes between
the outside price paths.

Numerics: the matrix products are sparse rows summed from 0.0 in column order (no BLAS, no
fused multiply-add: Numba without fastmath), ``exp``/``log``/``**`` are the C library's; a
sum over days is numpy's pairwise sum (:func:`pairwise_sum`), ``_max``/``_min`` are
``np.maximum``/``np.minimum`` (NaN propagates). A run's results are the same bit for bit run
after run (the same operations in the same order), but differ in the last bits from a
formulation with numpy's BLAS products and SIMD ``exp``/``log``, which a run with markets on
amplifies over the months.

Static arrays come packed once per compiled scenario
(:func:`retwin.engine.markets.market_arrays`, ``MarketArrays.packed``: ``(si, sx, kf)``), the
int64 and float64 ones each in one blob (:func:`pack_static`; :func:`static_parts` unpacks
them as views, ``STATIC_PARTS``):

* ``pool_mat``, ``plant_quota``, ``mk_mat``, ``seg_mat``: the material of each pool, each
  plant's quota (-1: none), the material of each outside market and the one whose price
  each demand segment responds to;
* ``csr_ptr``, ``csr_col``, ``csr_val``: the sparse matrices ``CSR_*`` (:data:`CSR_NAMES`),
  row by row: ``csr_ptr[mat]`` is where matrix ``mat``'s row pointers start in
  ``csr_ptr``; row ``r``'s entries are ``csr_ptr[csr_ptr[mat] + r]`` up to the next;
* ``days_left``: (D,) days left in the calendar year, per day;
* ``pf``: (4, P) cash cost, margin at the start's prices (where negative), quota
  coefficient, licence share;
* ``sf``: (2, S) working stock (0: cover days of use), lead time of the pool's makers;
* ``mf``: (M,) 1 where the material has a pool (its price is formed);
* ``par``: the scalars (``PAR_NAMES``);
* ``ref0``: (M, T) outside price paths without shocks;
* ``seg_el``: (G,) each demand segment's price elasticity;
* ``link``: (2, M) the material whose price each one follows (-1: none) and the share it
  follows (the scenario's ``price.follows``);

and, apart (a run whose outside demand grows works on its own copy), ``kf``: (8, K) the
outside curves (``KF_NAMES``).

What a run carries from month to month is one float array ``w`` (:func:`new_work`), a row
per quantity (``W_*``, :data:`W_NAMES`), each row as long as the longest axis; the process
reads its decisions and outside curves from row views.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.kernels import _jit
from retwin.kernels.flow import BIND_DEMAND, BIND_MARGIN
from retwin.kernels.trade import _hand_over

#: Every kernel here takes its indices as given (no wraparound of negative ones: none is
#: ever negative; a material a price follows, ``-1`` for none, and a plant's quota are tested
#: before they index), as the flow kernel does (:func:`retwin.kernels._jit.indices_as_given`;
#: about a quarter of a month's time). The tests run them compiled with bounds checks.
jit = functools.partial(_jit.jit, wraparound=False)

__all__ = ["CSR_NAMES", "KF_NAMES", "PAR_NAMES", "STATIC_PARTS", "W_NAMES", "close",
           "follow_links", "margins", "month", "month_step", "new_work", "ou_levels",
           "pack_static", "pairwise_sum", "pools", "running_room", "share_out", "start_pass",
           "static_parts"]

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

#: The packed sparse matrices, in order: what a plant draws from each pool (S x P), which
#: pool each segment (S x G) and each outside market (S x K) takes from, what a plant makes
#: into each pool (S x P), its output and its pooled input per material (P x M), and its main
#: outputs' pools (P x S).
CSR_NAMES = ("draw_sp", "seg_sg", "mk_sk", "make_sp", "out_mp", "in_mp", "main_ps")
CSR_DRAW, CSR_SEG, CSR_MK, CSR_MAKE, CSR_OUT, CSR_IN, CSR_MAIN = range(len(CSR_NAMES))
#: Rows of the month's working array ``w`` (:func:`new_work`): the formed prices and the
#: price demand sees (M); plants' margins, smoothed margins, ceilings, rates within their
#: quotas, quota room, decided shares, asked rates, output value and input cost per unit (P);
#: pools' expected use, free stock, working stock, buyers' shortfall so far, offtake,
#: shortfall this month, pace asked of their makers (S); segments' asked and unmet (G);
#: markets' unshipped demand, import share, export demand (t a year), what outside buyers
#: asked over the month (K); the pull toward and the step of each log price (M); then
#: ``N_SCRATCH`` rows of scratch.
W_NAMES = ("p", "seen", "margin", "smooth_margin", "ceiling", "granted", "room", "share",
           "want", "revenue", "bought", "expected", "free", "target", "short_then", "offtake",
           "short", "pace", "asked", "unmet", "not_shipped", "imp_share", "exp_tpa",
           "exp_asked", "pull", "step", "scratch")
(W_P, W_SEEN, W_MARGIN, W_SMOOTH_MARGIN, W_CEILING, W_GRANTED, W_ROOM, W_SHARE, W_WANT,
 W_REVENUE, W_BOUGHT, W_EXPECTED, W_FREE, W_TARGET, W_SHORT_THEN, W_OFFTAKE, W_SHORT,
 W_PACE, W_ASKED, W_UNMET, W_NOT_SHIPPED, W_IMP_SHARE, W_EXP_TPA, W_EXP_ASKED, W_PULL,
 W_STEP, W_SCRATCH) = range(len(W_NAMES))
#: Rows of scratch from ``W_SCRATCH`` on (the quotas' water-filling).
N_SCRATCH = 9


def new_work(*sizes: int) -> FloatArray:
    """A zeroed working array ``w`` for axes of these sizes (rows ``W_NAMES``)."""
    return np.zeros((len(W_NAMES) - 1 + N_SCRATCH, max((1, *sizes))))


#: The static arrays a month reads, in the order :func:`static_parts` returns them: the
#: material of each pool, market and demand segment (the price it responds to), each plant's
#: quota (-1: none), the sparse matrices (``CSR_NAMES``), the days left in the calendar year
#: per day (int64, in ``si``); then the sparse matrices' values, ``pf``, ``sf``, ``mf``,
#: ``par``, ``ref0``, ``seg_el`` and ``link`` (float64, in ``sx``).
STATIC_PARTS = ("pool_mat", "plant_quota", "mk_mat", "seg_mat", "csr_ptr", "csr_col",
                "days_left", "csr_val", "pf", "sf", "mf", "par", "ref0", "seg_el", "link")
_N_INT_PARTS = 7
#: The sizes heading ``si``: materials, plants, pools, segments, markets, months, then the
#: lengths of ``csr_ptr`` and ``csr_col`` and the days.
_N_HEAD = 9


def pack_static(**parts: np.ndarray) -> tuple[IntArray, FloatArray]:
    """The static arrays (``STATIC_PARTS``, by name) in two blobs: ``si`` (the sizes, then
    the int64 parts) and ``sx`` (the float64 parts), as :func:`static_parts` reads them."""
    if set(parts) != set(STATIC_PARTS):
        raise TypeError(f"pack_static takes {', '.join(STATIC_PARTS)}; got {', '.join(parts)}")
    n_m, n_t = parts["ref0"].shape
    head = [n_m, len(parts["plant_quota"]), len(parts["pool_mat"]), len(parts["seg_mat"]),
            len(parts["mk_mat"]), n_t, len(parts["csr_ptr"]), len(parts["csr_col"]),
            len(parts["days_left"])]
    ints = [np.asarray(parts[n], np.int64).ravel() for n in STATIC_PARTS[:_N_INT_PARTS]]
    floats = [np.asarray(parts[n], np.float64).ravel() for n in STATIC_PARTS[_N_INT_PARTS:]]
    return (np.concatenate([np.array(head, np.int64), *ints]),
            np.concatenate([np.zeros(0), *floats]))


@jit
def static_parts(si: IntArray, sx: FloatArray) -> tuple[Any, ...]:
    """The static arrays packed by :func:`pack_static`, as views (``STATIC_PARTS``)."""
    n_m, n_p, n_s, n_g, n_k, n_t = si[0], si[1], si[2], si[3], si[4], si[5]
    n_ptr, n_col, n_d = si[6], si[7], si[8]
    o = _N_HEAD
    pool_mat = si[o:o + n_s]
    o += n_s
    plant_quota = si[o:o + n_p]
    o += n_p
    mk_mat = si[o:o + n_k]
    o += n_k
    seg_mat = si[o:o + n_g]
    o += n_g
    csr_ptr = si[o:o + n_ptr]
    o += n_ptr
    csr_col = si[o:o + n_col]
    o += n_col
    days_left = si[o:o + n_d]
    o = 0
    csr_val = sx[o:o + n_col]
    o += n_col
    pf = sx[o:o + 4 * n_p].reshape((4, n_p))
    o += 4 * n_p
    sf = sx[o:o + 2 * n_s].reshape((2, n_s))
    o += 2 * n_s
    mf = sx[o:o + n_m]
    o += n_m
    par = sx[o:o + len(PAR_NAMES)]
    o += len(PAR_NAMES)
    ref0 = sx[o:o + n_m * n_t].reshape((n_m, n_t))
    o += n_m * n_t
    seg_el = sx[o:o + n_g]
    o += n_g
    link = sx[o:o + 2 * n_m].reshape((2, n_m))
    return (pool_mat, plant_quota, mk_mat, seg_mat, csr_ptr, csr_col, days_left, csr_val, pf,
            sf, mf, par, ref0, seg_el, link)



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
    _share_out(ask, share, allow, got, np.empty((4, len(ask))))


@jit
def _share_out(ask: FloatArray, share: FloatArray, allow: float, got: FloatArray,
               scratch: FloatArray) -> None:
    """:func:`share_out` with its working rows in ``scratch`` (4 rows, each ``len(ask)`` or
    more)."""
    n = len(ask)
    for i in range(n):
        got[i] = ask[i]
    if 0.0 + pairwise_sum(ask, 0, n) <= allow:
        return
    buf, part, open_, fits = scratch[0], scratch[1], scratch[2], scratch[3]
    left = 0.0 if allow < 0.0 else allow
    n_open = 0
    for i in range(n):
        open_[i] = 1.0 if ask[i] > 0 else 0.0
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
            fits[i] = 1.0 if (open_[i] and ask[i] <= part[i]) else 0.0
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
                open_[i] = 0.0
                n_open -= 1


@jit
def _quota_room(want: FloatArray, plant_quota: IntArray, qcoef: FloatArray,
                qshare: FloatArray, q_left: FloatArray, days_left: float,
                granted: FloatArray, room: FloatArray, scratch: FloatArray) -> None:
    """Each plant's rate at ``want`` no more than its quota lets it run (``granted``), and
    the most its quota lets it run (``room``, inf outside a quota): the quota's pace (what is
    left of the year over the days left) shared by licence shares, what a plant leaves of
    its part going to the others. ``scratch``: 8 rows of at least one entry per plant."""
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
    coef, ask, shares, got = scratch[0], scratch[1], scratch[2], scratch[3]
    for q in range(len(q_left)):
        pace = _max(q_left[q], 0.0) / dl
        m = 0
        for i in range(n_p):
            if plant_quota[i] == q:
                coef[m] = qcoef[i]
                ask[m] = want[i] * coef[m]
                shares[m] = qshare[i]
                m += 1
        if m == 0:
            continue
        _share_out(ask[:m], shares[:m], pace, got[:m], scratch[4:8])
        total_share = 0.0 + pairwise_sum(shares, 0, m)
        total_got = 0.0 + pairwise_sum(got, 0, m)
        j = 0
        for i in range(n_p):
            if plant_quota[i] != q:
                continue
            granted[i] = got[j] / coef[j] if coef[j] > 0 else want[i]
            own = pace * shares[j] / total_share if total_share > 0 else pace / m
            left_by_others = pace - (total_got - got[j])
            room[i] = _max(own, left_by_others) / coef[j] if coef[j] > 0 else np.inf
            j += 1


@jit
def running_room(ramp_col: int, days_left: float, cap_day: FloatArray, avail: FloatArray,
                 ramp: FloatArray, plant_quota: IntArray, pf: FloatArray, q_left: FloatArray,
                 granted: FloatArray, room: FloatArray, scratch: FloatArray) -> None:
    """Each plant's rate at its decided rate (``cap_day * avail * ramp``) no more than its
    quota lets it run (``granted``), and the most its quota lets it run (``room``).
    ``scratch``: ``N_SCRATCH`` rows of at least one entry per plant."""
    n_p = len(cap_day)
    running = scratch[0]
    for i in range(n_p):
        running[i] = cap_day[i] * avail[i] * ramp[i, ramp_col]
    _quota_room(running[:n_p], plant_quota, pf[2], pf[3], q_left, days_left, granted, room,
                scratch[1:])


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
def _row(csr_ptr: IntArray, csr_col: IntArray, csr_val: FloatArray, mat: int, r: int,
         x: FloatArray) -> float:
    """Row ``r`` of the packed sparse matrix ``mat`` (``CSR_*``) times ``x``: the products
    of its nonzero entries, added from 0.0 in column order (a dense product in that order
    less the zero terms)."""
    at = csr_ptr[mat] + r
    acc = 0.0
    for j in range(csr_ptr[at], csr_ptr[at + 1]):
        acc += csr_val[j] * x[csr_col[j]]
    return acc


@jit
def _offtake(csr_ptr: IntArray, csr_col: IntArray, csr_val: FloatArray, granted: FloatArray,
             asked: FloatArray, exp_cap_day: FloatArray, offtake: FloatArray) -> None:
    """What is asked of each pool per day: plants at ``granted``, demand segments at
    ``asked``, outside buyers at ``exp_cap_day``."""
    for s in range(len(offtake)):
        offtake[s] = (_row(csr_ptr, csr_col, csr_val, CSR_DRAW, s, granted)
                      + _row(csr_ptr, csr_col, csr_val, CSR_SEG, s, asked)) \
            + _row(csr_ptr, csr_col, csr_val, CSR_MK, s, exp_cap_day)


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
def _producers(t: int, primed: bool, csr_ptr: IntArray, csr_col: IntArray,
               csr_val: FloatArray, pf: FloatArray, sf: FloatArray, par: FloatArray,
               cap_max_day: FloatArray, pipe_sum: FloatArray, ipipe_sum: FloatArray,
               w: FloatArray, decision_rec: FloatArray, margin_rec: FloatArray,
               reason_rec: np.ndarray) -> None:
    """3. producers: margins at the prices in ``w`` (:func:`margins`), then each plant's
    share of its ceiling for the month (``share``, no more than 1), the rate a plant running
    flat out was asked for (``want``), and the month's records. Reads ``w``'s offtake, room,
    free and target; what the makers of each pool can deliver is their ceilings through
    ``make``."""
    n_p, n_s = pf.shape[1], sf.shape[1]
    p = w[W_P]
    revenue, bought = w[W_REVENUE, :n_p], w[W_BOUGHT, :n_p]
    for i in range(n_p):
        revenue[i] = _row(csr_ptr, csr_col, csr_val, CSR_OUT, i, p)
        bought[i] = _row(csr_ptr, csr_col, csr_val, CSR_IN, i, p)
    margin, smooth_margin = w[W_MARGIN, :n_p], w[W_SMOOTH_MARGIN, :n_p]
    ceiling, expected = w[W_CEILING, :n_p], w[W_EXPECTED, :n_s]
    margins(primed, revenue, bought, w[W_OFFTAKE, :n_s], pf, par, cap_max_day,
            w[W_ROOM, :n_p], margin, smooth_margin, expected, ceiling)
    free, target = w[W_FREE], w[W_TARGET]
    ratio = w[W_PACE]
    inv_adjust = par[PAR_INV_ADJUST]
    for s in range(n_s):
        inflow_max = _row(csr_ptr, csr_col, csr_val, CSR_MAKE, s, ceiling)
        position = free[s] + pipe_sum[s] + ipipe_sum[s]
        need = expected[s] + (target[s] + expected[s] * sf[1, s] - position) / inv_adjust
        ratio[s] = need / _max(inflow_max, TINY) if inflow_max > TINY else np.inf
    band, min_util = par[PAR_MARGIN_BAND], par[PAR_MIN_UTIL]
    share, want = w[W_SHARE], w[W_WANT]
    for i in range(n_p):
        u_margin = _min(_max(1.0 + (smooth_margin[i] - pf[1, i]) / band, 0.0), 1.0)
        # the shortest of the plant's main outputs' pools paces it (-inf: none)
        asked = -np.inf
        at = csr_ptr[CSR_MAIN] + i
        for j in range(csr_ptr[at], csr_ptr[at + 1]):
            v = ratio[csr_col[j]]
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
def _calendar(day: int, days_left_of: IntArray, ramp: FloatArray) -> tuple[int, float]:
    """The ramp's column for ``day`` (its last beyond the horizon) and the days left in the
    calendar year (the last day's beyond it)."""
    ramp_col = day if day < ramp.shape[1] - 1 else ramp.shape[1] - 1
    last = len(days_left_of) - 1
    return ramp_col, float(days_left_of[day if day < last else last])


@jit
def month(t: int, prev_day: int, day: int, primed: bool, si: IntArray, sx: FloatArray,
          kf: FloatArray, ref: FloatArray, rates: FloatArray, cap_day: FloatArray,
          avail: FloatArray, ramp: FloatArray, q_left: FloatArray, served_rec: FloatArray,
          unmet_rec: FloatArray, exp_rec: FloatArray, exp_cap_day: FloatArray,
          short_sum: FloatArray, stock: FloatArray, reserve: FloatArray,
          cap_max_day: FloatArray, pipe_sum: FloatArray, ipipe_sum: FloatArray,
          price: FloatArray, price_rec: FloatArray, dem_rate: FloatArray, w: FloatArray,
          decision_rec: FloatArray, margin_rec: FloatArray, reason_rec: np.ndarray,
          hand: bool, decision: FloatArray, want_day: FloatArray, contract: FloatArray,
          trade: FloatArray, imp_cap_day: FloatArray, exp_contract_day: FloatArray,
          days: float) -> None:
    """One month's clearing from what the days ``prev_day .. day - 1`` did: what buyers
    asked and did not get, the plants' rates within their quotas, 1. the prices (into
    ``w[W_P]``), 3. the producers' decisions (``w[W_SHARE]``, ``w[W_WANT]``) and the
    month's records (column ``t``); then :func:`close`. ``si``, ``sx``: the static arrays
    (:func:`pack_static`); ``kf``: the outside curves (this year's); ``ref``, ``rates``: the
    run's outside price and base demand paths; the rest the chain's and the run's state.

    When ``hand``, the month's decisions and outside curves then go to the flow, as
    :func:`retwin.kernels.trade.hand_over` hands them over (into ``decision``,
    ``want_day``, ``cap_day``, ``trade``, the daily caps, and ``w[W_EXP_ASKED]`` for the
    month's ``days``, with ``contract`` the exports under contract, t a year): one call
    for the month instead of two. The process hands them over itself when something
    changes the caps in between (a year whose outside demand grows)."""
    (pool_mat, plant_quota, mk_mat, seg_mat, csr_ptr, csr_col, days_left_of, csr_val, pf, sf,
     mf, par, ref0, seg_el, link) = static_parts(si, sx)
    n_m, n_p, n_s = len(mf), pf.shape[1], sf.shape[1]
    n_g, n_k = served_rec.shape[0], exp_rec.shape[0]
    ramp_col, days_left = _calendar(day, days_left_of, ramp)
    n = day - prev_day
    # what the segments asked per day (served or not) and did not get, what outside buyers
    # asked (the month's curve) and the region could not ship
    asked, unmet, not_shipped = w[W_ASKED, :n_g], w[W_UNMET, :n_g], w[W_NOT_SHIPPED, :n_k]
    for g in range(n_g):
        unmet[g] = 0.0 + pairwise_sum(unmet_rec[g], prev_day, n)
        asked[g] = (0.0 + pairwise_sum(served_rec[g], prev_day, n) + unmet[g]) / n
    exp_asked = w[W_EXP_ASKED]
    for k in range(n_k):
        # nothing asked, nothing short (what is shipped is never negative)
        not_shipped[k] = 0.0 if exp_asked[k] == 0.0 else _max(
            exp_asked[k] - (0.0 + pairwise_sum(exp_rec[k], prev_day, n)), 0.0)
    granted = w[W_GRANTED, :n_p]
    running_room(ramp_col, days_left, cap_day, avail, ramp, plant_quota, pf, q_left, granted,
                 w[W_ROOM, :n_p], w[W_SCRATCH:])
    offtake = w[W_OFFTAKE, :n_s]
    _offtake(csr_ptr, csr_col, csr_val, granted, asked, exp_cap_day, offtake)
    # what buyers asked for last month and did not get: plants' draws beyond a pool's free
    # stock, the segments' unmet draws, outside demand the region could not ship
    short, short_then = w[W_SHORT, :n_s], w[W_SHORT_THEN]
    for s in range(n_s):
        short[s] = ((short_sum[s] - short_then[s])
                    + _row(csr_ptr, csr_col, csr_val, CSR_SEG, s, unmet)) \
            + _row(csr_ptr, csr_col, csr_val, CSR_MK, s, not_shipped)
        short_then[s] = short_sum[s]
    # 1. prices: a formed price is pulled toward its anchor by the log of their ratio (0
    # where it does not form); where it does not, it is the outside price. The anchor is the
    # outside price, moved, for a material that follows one whose price is formed, by its
    # share of how far that formed price stood from its own outside price last month (the
    # region's cost pass-through: metal made from the region's dear oxide is dear)
    p, pull = w[W_P], w[W_PULL, :n_m]
    ok = np.empty(n_m, np.bool_)
    for m in range(n_m):
        r = ref[m, t]
        j = int(link[0, m])
        if j >= 0 and mf[j] > 0 and ref[j, t] > TINY and p[j] > TINY:
            r = r * (1.0 + link[1, m] * (p[j] / ref[j, t] - 1.0))
        ok[m] = mf[m] > 0 and p[m] > TINY and r > TINY
        pull[m] = math.log(r / p[m]) if ok[m] else 0.0
    step = w[W_STEP, :n_m]
    month_step(offtake, short, pull, ok, pool_mat, sf, par, stock, reserve, w[W_FREE, :n_s],
               w[W_TARGET, :n_s], step)
    for m in range(n_m):
        p[m] = p[m] * math.exp(step[m]) if ok[m] else ref[m, t]
    # 3. producers
    _producers(t, primed, csr_ptr, csr_col, csr_val, pf, sf, par, cap_max_day, pipe_sum,
               ipipe_sum, w, decision_rec, margin_rec, reason_rec)
    # 2. outside curves; 4. demand
    _close(t, mk_mat, seg_mat, kf, ref0, par, seg_el, ref, rates, w, price, price_rec,
           dem_rate)
    if hand:
        _hand_over(True, w[W_SHARE, :n_p], w[W_WANT, :n_p], decision, want_day, cap_max_day,
                   cap_day, w[W_IMP_SHARE, :n_k], w[W_EXP_TPA, :n_k], contract, trade,
                   imp_cap_day, exp_cap_day, exp_contract_day, w[W_EXP_ASKED, :n_k], days)


@jit
def start_pass(t: int, day: int, si: IntArray, sx: FloatArray, cap_day: FloatArray,
               avail: FloatArray, ramp: FloatArray, q_left: FloatArray, dem_rate: FloatArray,
               exp_cap_day: FloatArray, stock: FloatArray, reserve: FloatArray,
               cap_max_day: FloatArray, pipe_sum: FloatArray, ipipe_sum: FloatArray,
               w: FloatArray, decision_rec: FloatArray, margin_rec: FloatArray,
               reason_rec: np.ndarray) -> None:
    """3. producers, from the start: one pass of the first month's decisions at the start's
    prices, from what the segments (``dem_rate``) and the outside curves (``exp_cap_day``)
    ask now and the plants' own draws at their decided rates (``cap_day``)."""
    (_, plant_quota, _, _, csr_ptr, csr_col, days_left_of, csr_val, pf, sf, _, par, _,
     _, _) = static_parts(si, sx)
    ramp_col, days_left = _calendar(day, days_left_of, ramp)
    n_p, n_s, n_g = pf.shape[1], sf.shape[1], len(dem_rate)
    asked = w[W_ASKED, :n_g]
    for g in range(n_g):
        asked[g] = dem_rate[g]
    granted = w[W_GRANTED, :n_p]
    running_room(ramp_col, days_left, cap_day, avail, ramp, plant_quota, pf, q_left, granted,
                 w[W_ROOM, :n_p], w[W_SCRATCH:])
    offtake = w[W_OFFTAKE, :n_s]
    _offtake(csr_ptr, csr_col, csr_val, granted, asked, exp_cap_day, offtake)
    pools(offtake, stock, reserve, sf, par, w[W_FREE, :n_s], w[W_TARGET, :n_s])
    _producers(t, False, csr_ptr, csr_col, csr_val, pf, sf, par, cap_max_day, pipe_sum,
               ipipe_sum, w, decision_rec, margin_rec, reason_rec)


@jit
def close(t: int, si: IntArray, sx: FloatArray, kf: FloatArray, ref: FloatArray,
          rates: FloatArray, w: FloatArray, price: FloatArray, price_rec: FloatArray,
          dem_rate: FloatArray) -> None:
    """The month's prices (``w[W_P]``) into the chain (``price``, ``price_rec``); 2. the
    outside curves at them (``w[W_IMP_SHARE]``, ``w[W_EXP_TPA]``); 4. the price demand sees
    and each segment's draw: its base path (``rates``) times the seen price over the outside
    price without shocks to the power of its elasticity."""
    (_, _, mk_mat, seg_mat, _, _, _, _, _, _, _, par, ref0, seg_el, _) = static_parts(si, sx)
    _close(t, mk_mat, seg_mat, kf, ref0, par, seg_el, ref, rates, w, price, price_rec,
           dem_rate)


@jit
def _close(t: int, mk_mat: IntArray, seg_mat: IntArray, kf: FloatArray, ref0: FloatArray,
           par: FloatArray, seg_el: FloatArray, ref: FloatArray, rates: FloatArray,
           w: FloatArray, price: FloatArray, price_rec: FloatArray,
           dem_rate: FloatArray) -> None:
    """:func:`close` on the unpacked static arrays."""
    p, seen = w[W_P], w[W_SEEN]
    imp_share, exp_tpa = w[W_IMP_SHARE], w[W_EXP_TPA]
    for m in range(len(price)):
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
    for m in range(len(price)):
        seen[m] += (p[m] - seen[m]) * alpha
    for g in range(len(seg_mat)):
        sm = seg_mat[g]
        rel = _max(seen[sm], TINY) / _max(ref0[sm, t], TINY)
        dem_rate[g] = rates[g, t] * (rel ** seg_el[g] if seen[sm] > TINY else 1.0)

@jit
def _followed(ref: FloatArray, price_month: FloatArray, ref0: FloatArray,
              link_share: FloatArray, i: int, j: int, t: int) -> float:
    """Material ``i``'s outside price in month ``t`` following material ``j``'s."""
    r0 = ref0[j, t]
    rel = ref[j, t] / _max(r0, TINY) if r0 > TINY else 1.0
    return price_month[i, t] * (1.0 + link_share[i] * (rel - 1.0))


@jit
def follow_links(ref: FloatArray, price_month: FloatArray, ref0: FloatArray,
                 link_from: IntArray, link_share: FloatArray) -> None:
    """Outside price paths ``ref`` (M, T) that pass cost changes on, in place: a material
    that follows another (``link_from``, -1: none) takes ``link_share`` of the relative
    change of that material's path against its path without shocks (``ref0``), applied to
    its own replayed path (``price_month``); followers in material order, passes until none
    moves (at most one per material)."""
    n_m, n_t = ref.shape
    for _ in range(n_m):
        moved = False
        for i in range(n_m):
            j = link_from[i]
            if j < 0:
                continue
            differs = False
            for t in range(n_t):
                if _followed(ref, price_month, ref0, link_share, i, j, t) != ref[i, t]:
                    differs = True
                    break
            if differs:  # the whole path, as it was computed from the leader's
                moved = True
                for t in range(n_t):
                    ref[i, t] = _followed(ref, price_month, ref0, link_share, i, j, t)
        if not moved:
            break


@jit
def ou_levels(eps: FloatArray, decay: float, sd: float, out: FloatArray) -> None:
    """An Ornstein–Uhlenbeck level per step: ``level = level * decay + sd * eps[t]`` from 0."""
    level = 0.0
    for t in range(len(eps)):
        level = level * decay + sd * eps[t]
        out[t] = level
