"""Compiled kernels: arrays in, arrays out, no configuration reads, no Python objects.

This is the only package that imports Numba. The flow kernel's arrays are declared once, in
:mod:`retwin.kernels.contract`.
"""

from __future__ import annotations

import time

import numpy as np

from retwin.kernels import contract, outages, streams, tables
from retwin.kernels.flow import BIND_NAMES, advance

__all__ = ["BIND_NAMES", "advance", "warmup"]

#: Axis sizes of the smallest valid kernel call: nothing on any axis, but one day (in one
#: month, with a ring of one slot), the single entry of each row-pointer array, and the plan
#: of a chain of nothing.
_EMPTY_CHAIN: dict[str, int] = {**dict.fromkeys(contract.AXES, 0),
                                "P1": 1, "L1": 1, "D": 1, "T": 1, "R": 1}
_EMPTY_CHAIN["W"] = contract.plan_words(_EMPTY_CHAIN)


def warmup() -> float:
    """Compile (or load from the on-disk cache) every kernel; returns the seconds taken.

    Compilation depends on the arguments' types only, so one call on an empty chain compiles
    the kernel the engine calls (with the same packed argument types); likewise the outage
    calendar's kernels on no plants, the random streams' seeding, and the result tables' sums
    and the mass balance on no plants.
    """
    t0 = time.perf_counter()
    advance(0, 1, *contract.zeros(_EMPTY_CHAIN).values())
    no_plants, no_draws, no_days = np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.int64)
    outages.reached(no_draws, no_plants, no_draws, no_draws, 1)
    outages.calendar(no_draws, no_plants, no_draws, no_draws, no_plants, no_days, no_days, 1)
    streams.generate_state(np.zeros(1, np.int64), 0, 4, np.uint64)
    held = np.zeros((0, 1))  # a run's nameplate activity when its capacity held: shared,
    held.flags.writeable = False  # read-only (retwin.results), a type of its own to Numba
    for weight in (np.zeros((0, 1)), held):
        tables.binding_weights(np.zeros((0, 1), np.int8), weight, no_days, 0, 1,
                               np.zeros(1, np.int64), 1)
    tables.mass_balance(no_days, no_draws, no_draws, no_draws, np.zeros((6, 0)),
                        np.zeros((0, 1)), np.zeros((0, 0)), np.zeros((0, 0)), 1e-9)
    return time.perf_counter() - t0
