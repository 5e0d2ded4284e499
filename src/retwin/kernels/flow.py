"""The daily flow kernel: moves material through the whole chain between two events.

Axes and units (see :mod:`retwin._typing`): plants ``P``, materials ``M``, pools ``S``,
markets ``K``, demand segments ``G``, quotas ``Q``, days ``D``, months ``T``. Quantities are in
each material's unit (t, units, MW); quotas in t REO; capacities in activity units per day.

One day, in order:

0. outages: a plant whose outage calendar changes today (drawn when the run starts: its
   times do not depend on the state) takes ``derate × cal_up`` of that change point as its
   availability. The changes of day ``d1`` are applied at the end of a call (the state it
   leaves is that of the start of day ``d1``, what the events of ``d1`` see);
   the quota calendar's entries of today (a quota year's start: its ceiling, and what is
   released at once; a batch released) change what each quota allows (also those of ``d1``);
   on a month's first day, when prices and demand are replayed from paths drawn when the
   run starts (markets off: they do not depend on the state either), each segment's daily
   demand and each material's price become the month's (``dem_path``, ``price_path``);
1. arrivals: production and imports whose lead time ends today reach their pools; then
   contracted exports leave (each market's ``exp_contract_day``, from stock above the reserve)
   before any plant of the region draws;
2. plants, level by level (levels follow the stage order, upstream first). Within a level
   each plant asks for ``capacity × availability × ramp``; plants under one quota share what
   the quota allows today by their licence shares (``qshare``; what a plant leaves of its
   part goes to the others by theirs); then plants drawing on one pool share its free stock
   (stock above the strategic reserve, pro rata to their requests); plants delivering into a
   pool with a storage ceiling share its room. A plant's activity is the smallest of these
   limits, and the limit that bound is recorded;
3. demand segments draw their daily rate from their pools (pro rata when short);
4. exports take stock above ``reserve + target`` up to what the contract left of each
   market's daily cap;
5. imports order up to ``reserve + target`` (net of what is already in transit), up to each
   market's daily cap, arriving after the market's lead time.

Accounting (totals per material, records per day, output value per month) is done here, so
that the mass balance can be checked against independently summed quantities afterwards.

The kernel's arrays are declared once, in :mod:`retwin.kernels.contract`. The body
(:func:`_flow`) names each of them; the compiled entry point (:func:`advance_packed`) is
generated from the declaration and that body, and takes the arrays packed in two blobs.

Every index the kernel takes is 0 or more (a pool of ``-1``, "from the ground", is tested
before it is used), so it is compiled with its indices as given
(:func:`retwin.kernels._jit.indices_as_given`: no wraparound of negative ones, about a
seventh of its time); the tests run it compiled with bounds checks, which fail at any
negative index.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from types import CodeType

import numpy as np

from retwin._typing import FloatArray, Int8Array, IntArray
from retwin.kernels import contract
from retwin.kernels._jit import generated_code, jit, kernel_cache_dir

__all__ = [
    "BIND_CAPACITY",
    "BIND_DEMAND",
    "BIND_IDLE",
    "BIND_INPUT",
    "BIND_MARGIN",
    "BIND_NAMES",
    "BIND_OUTAGE",
    "BIND_QUOTA",
    "BIND_STORAGE",
    "advance",
    "advance_packed",
    "advance_unchecked",
    "relabel_capacity",
]

#: This file, as the generated entry point is compiled under its name.
_FILENAME = str(Path(__file__).resolve())

BIND_CAPACITY, BIND_QUOTA, BIND_INPUT, BIND_OUTAGE, BIND_STORAGE, BIND_IDLE = 1, 2, 3, 4, 5, 6
#: Set by the engine, not the kernel: the plant ran below its ceiling by its own decision
#: (markets on), because the demand on its output asked for no more, or its margin allowed
#: no more. The kernel reports these days as capacity-bound; the engine relabels them.
BIND_DEMAND, BIND_MARGIN = 7, 8
BIND_NAMES = {
    0: "none",
    BIND_CAPACITY: "capacity",
    BIND_QUOTA: "quota",
    BIND_INPUT: "input",
    BIND_OUTAGE: "outage",
    BIND_STORAGE: "storage",
    BIND_IDLE: "idle",
    BIND_DEMAND: "demand",
    BIND_MARGIN: "margin",
}


def _flow(
    d0: int,
    d1: int,
    # plants (static)
    order: IntArray,
    lvl_ptr: IntArray,
    lvl_pool_ptr: IntArray,
    lvl_pools: IntArray,
    commission_day: IntArray,
    ramp_days: IntArray,
    retire_day: IntArray,
    lead: IntArray,
    plant_quota: IntArray,
    qcoef: FloatArray,
    qshare: FloatArray,
    in_ptr: IntArray,
    in_pool: IntArray,
    in_mat: IntArray,
    in_amt: FloatArray,
    out_ptr: IntArray,
    out_pool: IntArray,
    out_mat: IntArray,
    out_amt: FloatArray,
    # pools, markets, demand (static)
    pool_mat: IntArray,
    target: FloatArray,
    pool_max: FloatArray,
    mk_pool: IntArray,
    imp_lead: IntArray,
    dem_pool: IntArray,
    # calendar
    days_left: IntArray,
    month_of_day: IntArray,
    # the quota calendar
    qcal_day: IntArray,
    qcal_q: IntArray,
    qcal_year: IntArray,
    qcal_left: FloatArray,
    qcal_avail: FloatArray,
    # state, changed by events between calls
    cap_day: FloatArray,
    avail: FloatArray,
    derate: FloatArray,
    # the outage calendar, drawn when the run starts
    cal_ptr: IntArray,
    cal_day: IntArray,
    cal_up: FloatArray,
    cal_at: IntArray,
    qcal_at: IntArray,
    reserve: FloatArray,
    imp_cap_day: FloatArray,
    exp_cap_day: FloatArray,
    exp_contract_day: FloatArray,
    dem_rate: FloatArray,
    price: FloatArray,
    # the price and demand paths, drawn when the run starts (no months: not replayed)
    dem_path: FloatArray,
    price_path: FloatArray,
    q_avail: FloatArray,
    q_year_left: FloatArray,
    # state, changed by the kernel
    stock: FloatArray,
    pipe: FloatArray,
    ipipe: FloatArray,
    ipipe_sum: FloatArray,
    pipe_sum: FloatArray,
    plan: IntArray,
    # records
    act_rec: FloatArray,
    code_rec: Int8Array,
    stock_rec: FloatArray,
    imp_rec: FloatArray,
    exp_rec: FloatArray,
    served_rec: FloatArray,
    unmet_rec: FloatArray,
    short_sum: FloatArray,
    val_month: FloatArray,
    tot: FloatArray,
) -> None:
    """The flow kernel's body: advance days ``[d0, d1)`` (see the module docstring).

    Its parameters are the arrays of :data:`retwin.kernels.contract.FLOW_ARRAYS`, in that
    order and of those dtypes (checked when this module is imported). The engine does not call
    it as it stands: :func:`_packed_entry` compiles its statements behind the unpacking of the
    packed call, as :func:`advance_packed`. Returns nothing: all outputs are written into the state,
    record and total arrays. ``tot`` has shape ``(6, M)``: rows are produced, drawn by plants,
    extracted from the ground, imported (ordered), exported, and drawn by demand, per material.
    """
    n_pools = stock.shape[0]
    n_quota = q_avail.shape[0]
    ring = pipe.shape[1]
    n_levels = lvl_ptr.shape[0] - 1
    n_plants = order.shape[0]
    n_segments = dem_pool.shape[0]
    n_markets = mk_pool.shape[0]
    nq = max(n_quota, 1)
    scratch = np.empty(n_plants + 4 * n_pools + nq + n_markets)  # one allocation per call
    want = scratch[:n_plants]
    req_pool = scratch[n_plants:n_plants + n_pools]
    room_req = scratch[n_plants + n_pools:n_plants + 2 * n_pools]
    ratio_pool = scratch[n_plants + 2 * n_pools:n_plants + 3 * n_pools]
    room_ratio = scratch[n_plants + 3 * n_pools:n_plants + 4 * n_pools]
    req_q = scratch[n_plants + 4 * n_pools:n_plants + 4 * n_pools + nq]
    contracted = scratch[n_plants + 4 * n_pools + nq:]  # today's contracted exports
    req_pool[:] = 0.0
    room_req[:] = 0.0
    room_ratio[:] = 1.0  # (recomputed daily only for pools with a storage ceiling)
    contracted[:] = 0.0
    codes = np.zeros(n_plants, dtype=np.int8)
    qdone = np.zeros(n_plants, dtype=np.int8)
    # The chain's plan: what follows from the inputs alone, worked out by a run's first call
    # and kept in ``plan`` (its first word 1 once it is). Where storage room can bind:
    # plants delivering into a pool with a ceiling (``ceiled``), their outputs into such
    # pools ceil_out[ceil_ptr[p]:ceil_ptr[p + 1]] (positions in the recipe's outputs), and
    # the levels with such plants not alone (elsewhere every room ratio is 1 and is not
    # computed); which plants are alone at their pools; the pools of each level whose shares
    # and room are computed; the levels with plants under a quota.
    (_ceiled, ceil_ptr, ceil_out, alone, lvl_ceiled, lvl_use, lvl_use_ptr, lvl_room_at,
     lvl_quota) = _plan_parts(plan, n_plants, out_pool.shape[0], n_levels, lvl_pools.shape[0])
    if plan[0] == 0:
        _work_out_plan(plan, order, lvl_ptr, lvl_pool_ptr, lvl_pools, plant_quota, in_ptr,
                       in_pool, out_ptr, out_pool, pool_max)
    # The pools shipments can arrive in (from plants with a lead time, imports with one, or
    # already on their way).
    arrives = np.zeros(n_pools, dtype=np.int8)
    for p in range(n_plants):
        if lead[p] > 0:
            for j in range(out_ptr[p], out_ptr[p + 1]):
                arrives[out_pool[j]] = 1
    for k in range(n_markets):
        if imp_lead[k] > 0:
            arrives[mk_pool[k]] = 1
    for s in range(n_pools):  # and whatever is on its way already
        if pipe_sum[s] != 0.0 or ipipe_sum[s] != 0.0:
            arrives[s] = 1
    arrive_s = np.empty(n_pools, dtype=np.int64)
    n_arrive = 0
    for s in range(n_pools):
        if arrives[s]:
            arrive_s[n_arrive] = s
            n_arrive += 1
    # The markets that trade during the call (caps and contracts change between calls only):
    # those with contracted exports, and those with an export or an import cap, in order.
    contract_k = np.empty(n_markets, dtype=np.int64)
    trade_k = np.empty(n_markets, dtype=np.int64)
    n_contract = 0
    n_trade = 0
    for k in range(n_markets):
        if exp_contract_day[k] > 0.0:
            contract_k[n_contract] = k
            n_contract += 1
        if exp_cap_day[k] > 0.0 or imp_cap_day[k] > 0.0:
            trade_k[n_trade] = k
            n_trade += 1
    # Each plant's output value per unit of activity at the month's prices (recomputed when
    # the paths set new prices; else events change prices between calls only), and whether
    # it runs ramped up on every day of the call (commissioned and ramped up by d0, not
    # retired before d1).
    replay = price_path.shape[1] > 0  # the paths set prices and demand month by month
    unit_value = np.empty(n_plants)
    if not replay:  # (replayed, the day loop sets them on the call's first day)
        _unit_values(out_ptr, out_amt, out_mat, price, unit_value)
    steady = np.zeros(n_plants, dtype=np.int8)
    for p in range(n_plants):
        if (commission_day[p] <= d0 and d1 <= retire_day[p]
                and d0 - commission_day[p] + 1 >= ramp_days[p]):
            steady[p] = 1
    n_qcal = qcal_day.shape[0]
    qc = qcal_at[0]  # the quota calendar's next entry
    path_mon = -1  # the month whose prices and demand are set

    # 0. the outage calendar: the first day a plant's availability changes (past d1: none)
    next_change = d1 + 1
    for p in range(n_plants):
        k = cal_at[p]
        if k < cal_ptr[p + 1] and cal_day[k] < next_change:
            next_change = cal_day[k]

    slot = d0 % ring - 1  # the ring's slot of today: d % ring, counted rather than divided
    for d in range(d0, d1 + 1):
        if d >= next_change:  # the calendar's change points of today (and on d1, of then)
            next_change = d1 + 1
            for p in range(n_plants):
                k = cal_at[p]
                k_end = cal_ptr[p + 1]
                while k < k_end and cal_day[k] <= d:
                    avail[p] = derate[p] * cal_up[k]
                    k += 1
                cal_at[p] = k
                if k < k_end and cal_day[k] < next_change:
                    next_change = cal_day[k]
        while qc < n_qcal and qcal_day[qc] <= d:  # the quota calendar's entries of today
            q = qcal_q[qc]
            if qcal_year[qc]:
                q_year_left[q] = qcal_left[qc]
                q_avail[q] = qcal_avail[qc]
            else:
                q_avail[q] += qcal_avail[qc]
            qc += 1
        if replay and d < month_of_day.shape[0] and month_of_day[d] != path_mon:
            # 0b. a new month: its prices and demand (on d1 too, as for the calendar)
            path_mon = month_of_day[d]
            for g in range(n_segments):
                dem_rate[g] = dem_path[g, path_mon]
            for m in range(price.shape[0]):
                price[m] = price_path[m, path_mon]
            _unit_values(out_ptr, out_amt, out_mat, price, unit_value)
        if d == d1:
            break
        slot += 1
        if slot == ring:
            slot = 0
        mon = month_of_day[d]
        # 1. arrivals
        for ss in range(n_arrive):
            s = arrive_s[ss]
            if pipe[s, slot] != 0.0 or ipipe[s, slot] != 0.0:
                stock[s] += pipe[s, slot] + ipipe[s, slot]
                ipipe_sum[s] -= ipipe[s, slot]
                pipe_sum[s] -= pipe[s, slot]
                pipe[s, slot] = 0.0
                ipipe[s, slot] = 0.0
        # 1b. contracted exports leave before the region's plants draw
        for kk in range(n_contract):
            k = contract_k[kk]
            contracted[k] = 0.0
            s = mk_pool[k]
            free = stock[s] - reserve[s]
            if free > 0.0:
                amt = free if free < exp_contract_day[k] else exp_contract_day[k]
                stock[s] -= amt
                tot[4, pool_mat[s]] += amt
                exp_rec[k, d] = amt
                contracted[k] = amt

        # 2. plants, level by level
        for lv in range(n_levels):
            lo = lvl_ptr[lv]
            hi = lvl_ptr[lv + 1]
            if lo == hi:  # a stage without plants
                continue
            if lvl_quota[lv]:
                for q in range(n_quota):
                    req_q[q] = 0.0
            for j in range(lvl_use_ptr[lv], lvl_use_ptr[lv + 1]):
                req_pool[lvl_use[j]] = 0.0
                room_req[lvl_use[j]] = 0.0
            # 2a. what each plant could do on capacity alone, and what that asks of the
            # quotas, of the pools it draws on and of the room of the pools it delivers into
            # (asked again below if a quota cuts a request)
            for i in range(lo, hi):
                p = order[i]
                if steady[p]:
                    ramp = 1.0
                elif d < commission_day[p] or d >= retire_day[p]:
                    ramp = 0.0
                elif ramp_days[p] > 0:
                    ramp = min(1.0, (d - commission_day[p] + 1) / ramp_days[p])
                else:
                    ramp = 1.0
                x = cap_day[p] * ramp * avail[p]
                if ramp == 0.0 or cap_day[p] == 0.0:
                    codes[p] = BIND_IDLE
                elif avail[p] < 1.0:
                    codes[p] = BIND_OUTAGE
                else:
                    codes[p] = BIND_CAPACITY
                want[p] = x
                q = plant_quota[p]
                if q >= 0:
                    req_q[q] += x * qcoef[p]
                if alone[p]:
                    continue
                for j in range(in_ptr[p], in_ptr[p + 1]):
                    if in_pool[j] >= 0:
                        req_pool[in_pool[j]] += x * in_amt[j]
                for jj in range(ceil_ptr[p], ceil_ptr[p + 1]):
                    j = ceil_out[jj]
                    room_req[out_pool[j]] += x * out_amt[j]
            # 2b. quota shares: a quota that cannot meet its plants' requests is shared by
            # their licence shares; what a plant leaves of its part goes to the others by
            # theirs (water-filling: each pass grants in full every request at or below its
            # part of what is left, until no request is, then splits the rest by shares)
            cut = False
            for q in range(n_quota if lvl_quota[lv] else 0):
                if req_q[q] <= 0.0:
                    continue
                allow = q_avail[q]
                dl = days_left[d]
                paced = q_year_left[q] / dl if dl > 0 else q_year_left[q]
                if paced < allow:
                    allow = paced
                if allow < 0.0:
                    allow = 0.0
                if allow >= req_q[q]:
                    continue
                cut = True
                for i in range(lo, hi):
                    pp = order[i]
                    qdone[pp] = 0 if plant_quota[pp] == q and want[pp] > 0.0 else 1
                left = allow
                while True:
                    shares = 0.0
                    asked = 0.0
                    for i in range(lo, hi):
                        pp = order[i]
                        if qdone[pp] == 0:
                            shares += qshare[pp]
                            asked += want[pp] * qcoef[pp]
                    if asked <= 0.0:
                        break
                    granted = False
                    for i in range(lo, hi):
                        pp = order[i]
                        if qdone[pp] == 0:
                            part = (left * qshare[pp] / shares if shares > 0.0
                                    else left * want[pp] * qcoef[pp] / asked)
                            if want[pp] * qcoef[pp] <= part:
                                qdone[pp] = 1
                                left -= want[pp] * qcoef[pp]
                                granted = True
                    if not granted:
                        if left < 0.0:
                            left = 0.0
                        for i in range(lo, hi):
                            pp = order[i]
                            if qdone[pp] == 0:
                                part = (left * qshare[pp] / shares if shares > 0.0
                                        else left * want[pp] * qcoef[pp] / asked)
                                want[pp] = part / qcoef[pp] if qcoef[pp] > 0.0 else want[pp]
                                codes[pp] = BIND_QUOTA
                                qdone[pp] = 1
                        break
            if cut:  # the requests on the pools, at what the quotas left
                for j in range(lvl_use_ptr[lv], lvl_use_ptr[lv + 1]):
                    req_pool[lvl_use[j]] = 0.0
                    room_req[lvl_use[j]] = 0.0
                for i in range(lo, hi):
                    p = order[i]
                    if alone[p]:
                        continue
                    x = want[p]
                    for j in range(in_ptr[p], in_ptr[p + 1]):
                        if in_pool[j] >= 0:
                            req_pool[in_pool[j]] += x * in_amt[j]
                    for jj in range(ceil_ptr[p], ceil_ptr[p + 1]):
                        j = ceil_out[jj]
                        room_req[out_pool[j]] += x * out_amt[j]
            # 2c. pool shares (inputs) and storage room (outputs) of the pools this level uses
            short = False
            for jj in range(lvl_use_ptr[lv], lvl_room_at[lv]):
                s = lvl_use[jj]
                free = stock[s] - reserve[s]
                if free < 0.0:
                    free = 0.0
                if req_pool[s] > free:
                    ratio_pool[s] = free / req_pool[s]
                    short_sum[s] += req_pool[s] - free
                    short = True
                else:
                    ratio_pool[s] = 1.0
            if lvl_ceiled[lv]:
                for jj in range(lvl_room_at[lv], lvl_use_ptr[lv + 1]):
                    s = lvl_use[jj]
                    room_ratio[s] = 1.0
                    if room_req[s] > 0.0:
                        room = pool_max[s] - stock[s] - pipe_sum[s] - ipipe_sum[s]
                        if room < 0.0:
                            room = 0.0
                        if room < room_req[s]:
                            room_ratio[s] = room / room_req[s]
            # 2d. run: draw inputs, deliver outputs, account
            for i in range(lo, hi):
                p = order[i]
                x = want[p]
                r_in = 1.0
                r_out = 1.0  # (the room of a pool without a ceiling is 1)
                if alone[p]:  # its pools' shares (as 2c computes them), all its own
                    for j in range(in_ptr[p], in_ptr[p + 1]):
                        s = in_pool[j]
                        if s >= 0:
                            free = stock[s] - reserve[s]
                            if free < 0.0:
                                free = 0.0
                            need = x * in_amt[j]
                            if need > free:
                                short_sum[s] += need - free
                                if free / need < r_in:
                                    r_in = free / need
                    for jj in range(ceil_ptr[p], ceil_ptr[p + 1]):
                        j = ceil_out[jj]
                        need = x * out_amt[j]
                        if need > 0.0:
                            s = out_pool[j]
                            room = pool_max[s] - stock[s] - pipe_sum[s] - ipipe_sum[s]
                            if room < 0.0:
                                room = 0.0
                            if room < need and room / need < r_out:
                                r_out = room / need
                else:
                    if short:  # (else every pool of the level meets its requests)
                        for j in range(in_ptr[p], in_ptr[p + 1]):
                            if in_pool[j] >= 0 and ratio_pool[in_pool[j]] < r_in:
                                r_in = ratio_pool[in_pool[j]]
                    for jj in range(ceil_ptr[p], ceil_ptr[p + 1]):
                        if room_ratio[out_pool[ceil_out[jj]]] < r_out:
                            r_out = room_ratio[out_pool[ceil_out[jj]]]
                if x > 0.0:
                    if r_in < 1.0 and r_in <= r_out:
                        x *= r_in
                        codes[p] = BIND_INPUT
                    elif r_out < 1.0:
                        x *= r_out
                        codes[p] = BIND_STORAGE
                for j in range(in_ptr[p], in_ptr[p + 1]):
                    amt = x * in_amt[j]
                    if in_pool[j] >= 0:
                        stock[in_pool[j]] -= amt
                        tot[1, in_mat[j]] += amt
                    else:
                        tot[2, in_mat[j]] += amt
                for j in range(out_ptr[p], out_ptr[p + 1]):
                    amt = x * out_amt[j]
                    s = out_pool[j]
                    if lead[p] == 0:
                        stock[s] += amt
                    else:
                        t = slot + lead[p]  # == (d + lead) % ring, as lead < ring
                        if t >= ring:
                            t -= ring
                        pipe[s, t] += amt
                        pipe_sum[s] += amt
                    tot[0, out_mat[j]] += amt
                q = plant_quota[p]
                if q >= 0:
                    q_avail[q] -= x * qcoef[p]
                    q_year_left[q] -= x * qcoef[p]
                val_month[p, mon] += x * unit_value[p]
                act_rec[p, d] = x
                code_rec[p, d] = codes[p]

        # 3. demand (only the pools segments draw on)
        for g in range(n_segments):
            req_pool[dem_pool[g]] = 0.0
        for g in range(n_segments):
            req_pool[dem_pool[g]] += dem_rate[g]
        for g in range(n_segments):
            s = dem_pool[g]
            free = stock[s] - reserve[s]
            if free < 0.0:
                free = 0.0
            ratio_pool[s] = free / req_pool[s] if req_pool[s] > free else 1.0
        for g in range(n_segments):
            s = dem_pool[g]
            served = dem_rate[g] * ratio_pool[s]
            stock[s] -= served
            tot[5, pool_mat[s]] += served
            served_rec[g, d] = served
            unmet_rec[g, d] = dem_rate[g] - served

        # 4. exports, 5. imports
        for kk in range(n_trade):
            k = trade_k[kk]
            s = mk_pool[k]
            spot = exp_cap_day[k] - contracted[k]  # what the contract left of the cap
            if spot > 0.0:
                surplus = stock[s] - reserve[s] - target[s]
                if surplus > 0.0:
                    amt = surplus if surplus < spot else spot
                    stock[s] -= amt
                    tot[4, pool_mat[s]] += amt
                    exp_rec[k, d] = contracted[k] + amt
            if imp_cap_day[k] > 0.0:
                need = reserve[s] + target[s] - stock[s] - ipipe_sum[s]
                if need > 0.0:
                    amt = need if need < imp_cap_day[k] else imp_cap_day[k]
                    if imp_lead[k] == 0:
                        stock[s] += amt
                    else:
                        t = slot + imp_lead[k]
                        if t >= ring:
                            t -= ring
                        ipipe[s, t] += amt
                        ipipe_sum[s] += amt
                    tot[3, pool_mat[s]] += amt
                    imp_rec[k, d] = amt

        for s in range(n_pools):
            stock_rec[s, d] = stock[s]
    qcal_at[0] = qc


@jit
def _plan_parts(plan: IntArray, n_plants: int, n_out: int, n_levels: int, n_lp: int
                ) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray,
                           IntArray, IntArray, IntArray]:
    """The parts of a chain's plan (see :func:`_flow`), as views of ``plan``: ``ceiled``,
    ``ceil_ptr``, ``ceil_out``, ``alone``, ``lvl_ceiled``, ``lvl_use``, ``lvl_use_ptr``,
    ``lvl_room_at``, ``lvl_quota``."""
    # where each part ends, after the first word (which says the plan is worked out)
    e1 = 1 + n_plants
    e2 = e1 + n_plants + 1
    e3 = e2 + n_out
    e4 = e3 + n_plants
    e5 = e4 + n_levels
    e6 = e5 + 2 * n_lp
    e7 = e6 + n_levels + 1
    e8 = e7 + n_levels
    return (plan[1:e1], plan[e1:e2], plan[e2:e3], plan[e3:e4], plan[e4:e5], plan[e5:e6],
            plan[e6:e7], plan[e7:e8], plan[e8:e8 + n_levels])


@jit
def _work_out_plan(plan: IntArray, order: IntArray, lvl_ptr: IntArray,
                   lvl_pool_ptr: IntArray, lvl_pools: IntArray, plant_quota: IntArray,
                   in_ptr: IntArray, in_pool: IntArray, out_ptr: IntArray, out_pool: IntArray,
                   pool_max: FloatArray) -> None:
    """Work out a chain's plan into ``plan`` (its first word 1 once it is): what follows
    from the kernel's inputs alone (see :func:`_flow`). It reads the structure and which
    pools have a storage ceiling, nothing else."""
    n_plants = order.shape[0]
    n_levels = lvl_ptr.shape[0] - 1
    n_pools = pool_max.shape[0]
    (ceiled, ceil_ptr, ceil_out, alone, lvl_ceiled, lvl_use, lvl_use_ptr, lvl_room_at,
     lvl_quota) = _plan_parts(plan, n_plants, out_pool.shape[0], n_levels, lvl_pools.shape[0])
    plan[1:] = 0
    alone[:] = 1
    for p in range(n_plants):
        ceil_ptr[p + 1] = ceil_ptr[p]
        for j in range(out_ptr[p], out_ptr[p + 1]):
            if pool_max[out_pool[j]] < np.inf:
                ceil_out[ceil_ptr[p + 1]] = j
                ceil_ptr[p + 1] += 1
                ceiled[p] = 1
    # A plant is alone when no other plant of its level draws on or delivers into a pool
    # it draws on or delivers into, and it names each such pool once: its share of a
    # pool's free stock or room is then all of it, computed as the plant runs (2d)
    # instead of gathered for the level first (2a, 2c) -- the same numbers, without the
    # level's pass over pools.
    seen = np.zeros(n_pools, dtype=np.int64)  # the last level (+ 1) touching a pool
    shared = np.zeros(n_pools, dtype=np.int64)  # the last level (+ 1) touching it twice
    for lv in range(n_levels):
        for i in range(lvl_ptr[lv], lvl_ptr[lv + 1]):
            p = order[i]
            n_in = in_ptr[p + 1] - in_ptr[p]
            for jj in range(n_in + out_ptr[p + 1] - out_ptr[p]):
                s = in_pool[in_ptr[p] + jj] if jj < n_in else out_pool[out_ptr[p] + jj - n_in]
                if s >= 0:
                    if seen[s] == lv + 1:
                        shared[s] = lv + 1
                    seen[s] = lv + 1
        for i in range(lvl_ptr[lv], lvl_ptr[lv + 1]):
            p = order[i]
            for j in range(in_ptr[p], in_ptr[p + 1]):
                if in_pool[j] >= 0 and shared[in_pool[j]] == lv + 1:
                    alone[p] = 0
            for j in range(out_ptr[p], out_ptr[p + 1]):
                if shared[out_pool[j]] == lv + 1:
                    alone[p] = 0
            if ceiled[p] and not alone[p]:
                lvl_ceiled[lv] = 1
    # Of each level's pools, those its plants draw on (whose shares are computed), then
    # those with a storage ceiling its plants deliver into (whose room is), of plants not
    # alone: lvl_use[lvl_use_ptr[lv]:lvl_room_at[lv]] and
    # lvl_use[lvl_room_at[lv]:lvl_use_ptr[lv + 1]].
    drawn = np.zeros(n_pools, dtype=np.int64)  # the last level (+ 1) drawing on a pool
    roomed = np.zeros(n_pools, dtype=np.int64)  # the last level (+ 1) filling a ceiled pool
    n_use = 0
    for lv in range(n_levels):
        for i in range(lvl_ptr[lv], lvl_ptr[lv + 1]):
            p = order[i]
            if alone[p]:
                continue
            for j in range(in_ptr[p], in_ptr[p + 1]):
                if in_pool[j] >= 0:
                    drawn[in_pool[j]] = lv + 1
            for jj in range(ceil_ptr[p], ceil_ptr[p + 1]):
                roomed[out_pool[ceil_out[jj]]] = lv + 1
        for j in range(lvl_pool_ptr[lv], lvl_pool_ptr[lv + 1]):
            if drawn[lvl_pools[j]] == lv + 1:
                lvl_use[n_use] = lvl_pools[j]
                n_use += 1
        lvl_room_at[lv] = n_use
        for j in range(lvl_pool_ptr[lv], lvl_pool_ptr[lv + 1]):
            if roomed[lvl_pools[j]] == lv + 1:
                lvl_use[n_use] = lvl_pools[j]
                n_use += 1
        lvl_use_ptr[lv + 1] = n_use
    for lv in range(n_levels):
        for i in range(lvl_ptr[lv], lvl_ptr[lv + 1]):
            if plant_quota[order[i]] >= 0:
                lvl_quota[lv] = 1
    plan[0] = 1


@jit
def _unit_values(out_ptr: IntArray, out_amt: FloatArray, out_mat: IntArray, price: FloatArray,
                 unit_value: FloatArray) -> None:
    """Each plant's output value per unit of activity at ``price``, into ``unit_value``."""
    for p in range(unit_value.shape[0]):
        unit_value[p] = 0.0
        for j in range(out_ptr[p], out_ptr[p + 1]):
            unit_value[p] += out_amt[j] * price[out_mat[j]]


@jit
def _relabel(code_rec: Int8Array, reason_rec: Int8Array, month_start_day: IntArray) -> None:
    n_days = code_rec.shape[1]
    n_months = month_start_day.shape[0]
    for p in range(code_rec.shape[0]):
        for t in range(n_months):
            reason = reason_rec[p, t]
            if reason == 0:
                continue
            end = month_start_day[t + 1] if t + 1 < n_months else n_days
            for d in range(month_start_day[t], end):
                if code_rec[p, d] == BIND_CAPACITY:
                    code_rec[p, d] = reason


def relabel_capacity(code_rec: Int8Array, reason_rec: Int8Array,
                     month_start_day: IntArray) -> None:
    """Days the kernel recorded as capacity-bound (``BIND_CAPACITY``) in a month whose
    ``reason_rec`` (P, T) is not 0 take that reason (``BIND_DEMAND``, ``BIND_MARGIN``): the
    plant ran below its ceiling by its own decision. ``code_rec`` is (P, D), changed in
    place; month ``t`` is days ``month_start_day[t]`` up to the next month's first day."""
    if reason_rec.shape != (code_rec.shape[0], month_start_day.shape[0]):
        raise ValueError(f"reason_rec has shape {reason_rec.shape}; it must be (plants, months)"
                         f" = {(code_rec.shape[0], month_start_day.shape[0])}")
    _relabel(code_rec, np.ascontiguousarray(reason_rec, dtype=np.int8),
             np.ascontiguousarray(month_start_day, dtype=np.int64))


def _signature_errors() -> list[str]:
    """How the kernel body's parameters differ from the declaration (names, order, dtypes)."""
    params = list(inspect.signature(_flow).parameters.values())
    errors = [f"parameter {p.name!r} should be {n!r}"
              for p, n in zip(params[:2], ("d0", "d1"), strict=True) if p.name != n]
    got = tuple(p.name for p in params[2:])
    if got != contract.NAMES:
        errors.append(f"the kernel body takes {got}, the declaration says {contract.NAMES}")
    dtypes = {"IntArray": np.int64, "FloatArray": np.float64, "Int8Array": np.int8}
    for p in params[2:]:
        spec = contract.FLOW_ARRAYS[contract.NAMES.index(p.name)] \
            if p.name in contract.NAMES else None
        if spec is not None and dtypes.get(str(p.annotation)) is not spec.dtype:
            errors.append(f"{p.name} is annotated {p.annotation}, declared "
                          f"{np.dtype(spec.dtype)}")
    return errors


if _signature_errors():
    raise TypeError("the flow kernel does not match its declaration: "
                    + "; ".join(_signature_errors()))


def _entry_source(source: str, *, frozen: tuple[str, ...] = (),
                  name: str = "_advance_packed") -> str:
    """The source of :func:`advance_packed`, generated from the declaration and the body of
    :func:`_flow` in ``source`` (the text of this file).

    ``frozen`` names packed arrays the generated function does not cut from its blobs: it
    reads them as globals of the scope it is run in (a kernel specialised to one chain,
    :mod:`retwin.kernels.specialised`, where Numba compiles them in as constants); ``name``
    is the generated function's.

    The generated function takes ``d0, d1``, the two blobs and their offsets, the shapes of
    the 2-D arrays in them, and the arrays of :data:`retwin.kernels.contract.UNPACKED`; one
    line cuts the blobs into the body's arrays, and then come the body's statements,
    verbatim, on their own line numbers (blank lines stand in for the rest of the file), so
    that errors point into :func:`_flow`. (Calling the body as a compiled function of its own
    instead costs about a quarter more per call: a call with that many arguments cannot be
    inlined.)
    """
    fn = next(node for node in ast.parse(source).body
              if isinstance(node, ast.FunctionDef) and node.name == "_flow")
    stmts = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
    first, start = fn.lineno, stmts[0].lineno  # of the ``def`` and of the first statement
    assert fn.end_lineno is not None and start >= first + 2
    cut = {n: f"si[si_off[{i}]:si_off[{i + 1}]]" for i, n in enumerate(contract.PACKED_INTS)
           if n not in frozen}
    cut.update({n: f"sf[sf_off[{i}]:sf_off[{i + 1}]]"
                for i, n in enumerate(contract.PACKED_FLOATS)})
    for i, n in enumerate(contract.PACKED_2D):
        if n in cut:
            cut[n] += f".reshape((shapes[{2 * i}], shapes[{2 * i + 1}]))"
    params = ", ".join(("d0", "d1", "si", "si_off", "sf", "sf_off", "shapes",
                        *contract.UNPACKED))
    lines = source.splitlines(keepends=True)
    return ("\n" * (first - 1)
            + f"def {name}({params}):\n"
            + "    " + "; ".join(f"{n} = {cut[n]}" for n in cut) + "\n"
            + "\n" * (start - first - 2)
            + "".join(lines[start - 1:fn.end_lineno]))


def _entry_code(source: bytes, cache_dir: Path | None) -> CodeType:
    """The compiled module code of :func:`_entry_source`, kept in ``cache_dir`` (next to
    Numba's cache of this file's kernels) and taken from there while it is fresh.

    Generating it (parsing this file, compiling the body) was ~15 ms of every process that
    imports the kernels. What it is generated from is the key: this file's text, the packed
    layout of :mod:`retwin.kernels.contract`, and the Python bytecode's version; any other
    key, or a file that cannot be read, means it is generated again (and written, when
    ``cache_dir`` can be written). ``cache_dir=None``: generated, not kept.
    """
    return generated_code(
        _FILENAME, source.decode("utf-8"), _entry_source, cache_dir,
        name="flow._advance_packed",
        layout=repr((contract.PACKED_INTS, contract.PACKED_FLOATS, contract.PACKED_2D,
                     contract.UNPACKED)))


def _packed_entry() -> Callable[..., None]:
    """Compile :func:`advance_packed` (see :func:`_entry_source`). Numba's on-disk cache
    keeps the compiled kernel (it keys on the bytecode, which follows the declaration)."""
    code = _entry_code(Path(_FILENAME).read_bytes(), kernel_cache_dir(_flow))
    scope: dict[str, object] = {**globals(), "__name__": __name__}
    exec(code, scope)
    entry = scope["_advance_packed"]
    assert callable(entry)
    entry.__doc__ = (
        "The flow kernel (:func:`_flow`) on packed arguments: ``d0, d1, si, si_off, sf, "
        "sf_off, shapes`` and then the arrays of :data:`retwin.kernels.contract.UNPACKED` (see "
        ":class:`retwin.kernels.contract.Packed`). Packing matters because the engine calls "
        "the kernel once per event, and a call's cost grows with its arguments.")
    compiled: Callable[..., None] = jit(entry, wraparound=False)  # its indices are >= 0
    return compiled


_advance_packed = _packed_entry()
#: The packed kernel, for the engine's hot path (arrays checked once when a run is built).
advance_packed = _advance_packed


def advance_unchecked(d0: int, d1: int, *arrays: np.ndarray) -> None:
    """The flow kernel with every array named, in the order of
    :data:`retwin.kernels.contract.NAMES`: packs them, runs :func:`advance_packed` and copies
    the state back. Slower per call than the packed form (it copies); for tests and one-off
    callers that checked their arrays.
    """
    named = dict(zip(contract.NAMES, arrays, strict=True))
    packed = contract.pack(named)
    _advance_packed(d0, d1, *packed.call)
    contract.unpack_into(named, packed)


def advance(d0: int, d1: int, *arrays: np.ndarray) -> None:
    """Checked wrapper of the flow kernel: the arrays of
    :data:`retwin.kernels.contract.NAMES`, in that order, after the day range.

    Checks the day range and every array against its declaration
    (:func:`retwin.kernels.contract.check`: type, dtype, C order, shape, and that every index
    and row pointer it holds is in range) — the compiled kernel does no bounds checks — and
    has the kernel work out its ``plan`` again from these inputs. The engine checks its inputs
    once when it compiles a scenario and then calls :func:`advance_packed` directly on its
    hot path (a run's first call works out the plan, the others read it).
    """
    if not 0 <= d0 <= d1:
        raise ValueError(f"day range [{d0}, {d1}) must satisfy 0 <= d0 <= d1")
    if len(arrays) != len(contract.NAMES):
        raise TypeError(f"the kernel takes {len(contract.NAMES)} arrays after d0, d1; "
                        f"got {len(arrays)}")
    named = dict(zip(contract.NAMES, arrays, strict=True))
    contract.check(named, d1=d1)
    named["plan"][:1] = 0  # worked out again from these inputs (it is not checked)
    advance_unchecked(d0, d1, *arrays)
