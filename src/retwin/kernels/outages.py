"""The outage calendar of every plant, built from its drawn exponentials in one call.

The random numbers are drawn outside (one stream per plant, :mod:`retwin.processes.base`);
this kernel turns them into whole-day failures and repairs, merges them with the planned
outages, and returns the calendar's change points and the event log's entries, for all
plants at once (a loop of small numpy calls per plant cost more than the draws).
"""

from __future__ import annotations

import math

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.kernels._jit import jit

__all__ = ["EV_FAILURE", "EV_PLANNED", "EV_PLANNED_END", "EV_REPAIR", "calendar",
           "reached"]

#: Kinds of the event-log entries :func:`calendar` returns.
EV_FAILURE, EV_REPAIR, EV_PLANNED, EV_PLANNED_END = 0, 1, 2, 3


@jit
def _reached(draws: FloatArray, draw_ptr: IntArray, mtbf: FloatArray, mttr: FloatArray,
             n_days: int, out: np.ndarray) -> None:
    """``out[p]``: whether plant ``p``'s draws carry its alternating times past the horizon."""
    for p in range(draw_ptr.shape[0] - 1):
        t = 0
        for i in range(draw_ptr[p], draw_ptr[p + 1]):
            if t >= n_days:
                break
            mean = mtbf[p] if (i - draw_ptr[p]) % 2 == 0 else mttr[p]
            t += max(1, math.ceil(draws[i] * mean))
        out[p] = t >= n_days


def reached(draws: FloatArray, draw_ptr: IntArray, mtbf: FloatArray, mttr: FloatArray,
            n_days: int) -> np.ndarray:
    """(P,) bool: whether each plant's draws (entries ``draw_ptr[p]:draw_ptr[p + 1]`` of
    ``draws``, standard exponentials) reach the horizon as alternating whole-day times to
    failure (``x mtbf``) and to repair (``x mttr``), each at least one day."""
    out = np.zeros(draw_ptr.shape[0] - 1, np.bool_)
    _reached(draws, draw_ptr, mtbf, mttr, int(n_days), out)
    return out


@jit
def _calendar(draws: FloatArray, draw_ptr: IntArray, mtbf: FloatArray, mttr: FloatArray,
              plan_ptr: IntArray, plan_start: IntArray, plan_end: IntArray, n_days: int,
              ptr: IntArray, cal_day: IntArray, cal_up: FloatArray, ev_day: IntArray,
              ev_kind: IntArray, ev_plant: IntArray) -> tuple[int, int]:
    """Fill the calendar and the events (see :func:`calendar`); returns their counts."""
    n_p = ptr.shape[0] - 1
    n_cal = 0
    n_ev = 0
    ptr[0] = 0
    times = np.empty(draws.shape[0], np.int64)
    for p in range(n_p):
        lo, hi = draw_ptr[p], draw_ptr[p + 1]
        # the alternating times (failure, repair, failure…) within the horizon
        n_fail = 0
        n_rep = 0
        t = 0
        for i in range(lo, hi):
            k = i - lo
            mean = mtbf[p] if k % 2 == 0 else mttr[p]
            t += max(1, math.ceil(draws[i] * mean))
            if t >= n_days:
                break
            times[k] = t
            if k % 2 == 0:
                n_fail += 1
            else:
                n_rep += 1
        n_times = n_fail + n_rep
        # the log's order within a plant: failures, repairs, planned starts, planned ends
        for j in range(n_fail):
            ev_day[n_ev] = times[2 * j]
            ev_kind[n_ev] = EV_FAILURE
            ev_plant[n_ev] = p
            n_ev += 1
        for j in range(n_rep):
            ev_day[n_ev] = times[2 * j + 1]
            ev_kind[n_ev] = EV_REPAIR
            ev_plant[n_ev] = p
            n_ev += 1
        for j in range(plan_ptr[p], plan_ptr[p + 1]):
            ev_day[n_ev] = plan_start[j]
            ev_kind[n_ev] = EV_PLANNED
            ev_plant[n_ev] = p
            n_ev += 1
        for j in range(plan_ptr[p], plan_ptr[p + 1]):
            if plan_end[j] < n_days:
                ev_day[n_ev] = plan_end[j]
                ev_kind[n_ev] = EV_PLANNED_END
                ev_plant[n_ev] = p
                n_ev += 1
        # change points: how many outages hold the plant down, summed per day, and the
        # days its state (up or down) changes within the horizon
        n_plan = plan_ptr[p + 1] - plan_ptr[p]
        at = np.empty(n_times + 2 * n_plan, np.int64)
        step = np.empty(n_times + 2 * n_plan, np.int64)
        for k in range(n_times):
            at[k] = times[k]
            step[k] = 1 if k % 2 == 0 else -1
        for j in range(n_plan):
            at[n_times + 2 * j] = plan_start[plan_ptr[p] + j]
            step[n_times + 2 * j] = 1
            at[n_times + 2 * j + 1] = plan_end[plan_ptr[p] + j]
            step[n_times + 2 * j + 1] = -1
        order = np.argsort(at)
        down = 0
        was_up = True
        i = 0
        while i < order.shape[0]:
            day = at[order[i]]
            while i < order.shape[0] and at[order[i]] == day:
                down += step[order[i]]
                i += 1
            is_up = down == 0
            if is_up != was_up and day < n_days:
                cal_day[n_cal] = day
                cal_up[n_cal] = 1.0 if is_up else 0.0
                n_cal += 1
            was_up = is_up
        ptr[p + 1] = n_cal
    return n_cal, n_ev


def calendar(draws: FloatArray, draw_ptr: IntArray, mtbf: FloatArray, mttr: FloatArray,
             plan_ptr: IntArray, plan_start: IntArray, plan_end: IntArray, n_days: int
             ) -> tuple[IntArray, IntArray, FloatArray, IntArray, IntArray, IntArray]:
    """Every plant's outages over ``n_days`` as a calendar of change points and log entries.

    Plant ``p``'s random outages come from its draws (entries ``draw_ptr[p]:draw_ptr[p + 1]``
    of ``draws``, standard exponentials, enough to reach the horizon: :func:`reached`):
    alternating whole-day times to failure (``x mtbf[p]``) and to repair (``x mttr[p]``), each
    at least one day. Its planned outages are ``[plan_start[j], plan_end[j])`` for entries
    ``plan_ptr[p]:plan_ptr[p + 1]``. A plant is down while failed or in any planned outage.

    Returns ``ptr`` (P + 1,), ``day`` and ``up`` (C,) (the calendar of
    :class:`retwin.processes.OutageCalendar`), and the log entries' ``day``, ``kind``
    (``EV_*``) and ``plant``, in day order (stable: within a day, by plant, then failures,
    repairs, planned starts, planned ends).
    """
    n_p = draw_ptr.shape[0] - 1
    n_draws = int(draw_ptr[-1])
    n_plan = int(plan_ptr[-1])
    # at most one change point per failure, repair and planned start or end
    cap = n_draws + 2 * n_plan
    ptr = np.zeros(n_p + 1, np.int64)
    cal_day = np.empty(cap, np.int64)
    cal_up = np.empty(cap, np.float64)
    ev_day = np.empty(cap, np.int64)
    ev_kind = np.empty(cap, np.int64)
    ev_plant = np.empty(cap, np.int64)
    n_cal, n_ev = _calendar(draws, draw_ptr, mtbf, mttr, plan_ptr, plan_start, plan_end,
                            int(n_days), ptr, cal_day, cal_up, ev_day, ev_kind, ev_plant)
    order = np.empty(n_ev, np.int64)
    _day_order(ev_day[:n_ev], order)
    return (ptr, cal_day[:n_cal].copy(), cal_up[:n_cal].copy(), ev_day[:n_ev][order],
            ev_kind[:n_ev][order], ev_plant[:n_ev][order])


@jit
def _day_order(day: IntArray, order: IntArray) -> None:
    """``order``: the entries by day (days >= 0), stable: a counting sort."""
    last = 0
    for i in range(day.shape[0]):
        last = max(last, day[i])
    start = np.zeros(last + 2, np.int64)
    for i in range(day.shape[0]):
        start[day[i] + 1] += 1
    for d in range(last + 1):
        start[d + 1] += start[d]
    for i in range(day.shape[0]):
        order[start[day[i]]] = i
        start[day[i]] += 1
