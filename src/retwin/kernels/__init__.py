"""Compiled kernels: arrays in, arrays out, no configuration reads, no Python objects.

This is the only package that imports Numba.
"""

from __future__ import annotations

import time

import numpy as np

from retwin.kernels.flow import BIND_NAMES, _advance_packed, advance, pack

__all__ = ["BIND_NAMES", "advance", "warmup"]


def _tiny_arguments() -> dict[str, np.ndarray]:
    """One plant delivering into one pool for one day: the smallest valid kernel input."""
    i = np.int64
    e_i, e_f = np.zeros(0, i), np.zeros(0)
    return {
        "order": np.zeros(1, i), "lvl_ptr": np.array([0, 1], i),
        "lvl_pool_ptr": np.array([0, 1], i), "lvl_pools": np.zeros(1, i),
        "commission_day": np.zeros(1, i), "ramp_days": np.zeros(1, i),
        "retire_day": np.full(1, 2, i), "lead": np.zeros(1, i),
        "plant_quota": np.full(1, -1, i), "qcoef": np.zeros(1),
        "in_ptr": np.zeros(2, i), "in_pool": e_i, "in_mat": e_i, "in_amt": e_f,
        "out_ptr": np.array([0, 1], i), "out_pool": np.zeros(1, i), "out_mat": np.zeros(1, i),
        "out_amt": np.ones(1), "pool_mat": np.zeros(1, i), "target": np.zeros(1),
        "pool_max": np.full(1, np.inf), "mk_pool": e_i, "imp_lead": e_i, "dem_pool": e_i,
        "days_left": np.ones(1, i), "month_of_day": np.zeros(1, i),
        "cap_day": np.ones(1), "avail": np.ones(1), "reserve": np.zeros(1),
        "imp_cap_day": e_f, "exp_cap_day": e_f, "dem_rate": e_f, "price": np.ones(1),
        "q_avail": e_f, "q_year_left": e_f, "stock": np.zeros(1),
        "pipe": np.zeros((1, 1)), "ipipe": np.zeros((1, 1)), "ipipe_sum": np.zeros(1),
        "pipe_sum": np.zeros(1), "act_rec": np.zeros((1, 1)),
        "code_rec": np.zeros((1, 1), np.int8), "stock_rec": np.zeros((1, 1)),
        "imp_rec": np.zeros((0, 1)), "exp_rec": np.zeros((0, 1)),
        "served_rec": np.zeros((0, 1)), "unmet_rec": np.zeros((0, 1)),
        "val_month": np.zeros((1, 1)), "tot": np.zeros((6, 1)),
    }


def warmup() -> float:
    """Compile (or load from the on-disk cache) every kernel; returns the seconds taken."""
    t0 = time.perf_counter()
    named = _tiny_arguments()
    advance(0, 1, *named.values())
    si, si_off, sf, sf_off, _ = pack(named)
    rest = [named[n] for n in ("pipe", "ipipe", "act_rec", "code_rec", "stock_rec", "imp_rec",
                               "exp_rec", "served_rec", "unmet_rec", "val_month", "tot")]
    _advance_packed(0, 1, si, si_off, sf, sf_off, *rest)
    return time.perf_counter() - t0
