"""Compiled kernels: arrays in, arrays out, no configuration reads, no Python objects.

This is the only package that imports Numba.
"""

from __future__ import annotations

import time

import numpy as np

from retwin.kernels.flow import BIND_NAMES, _advance, advance

__all__ = ["BIND_NAMES", "advance", "warmup"]


def warmup() -> float:
    """Compile (or load from cache) every kernel on tiny arrays; returns the seconds taken."""
    t0 = time.perf_counter()
    i1 = np.zeros(1, np.int64)
    f1 = np.zeros(1)
    _advance(
        0, 1,
        np.zeros(1, np.int64), np.array([0, 1], np.int64), np.array([0, 1], np.int64), i1,
        i1, i1, np.full(1, 2, np.int64), i1,
        np.full(1, -1, np.int64), f1,
        np.zeros(2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
        np.array([0, 1], np.int64), i1, i1, np.ones(1),
        i1, f1, np.full(1, np.inf), np.zeros(0, np.int64), np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.ones(1, np.int64), i1,
        np.ones(1), np.ones(1), f1, np.zeros(0), np.zeros(0), np.zeros(0), np.ones(1),
        np.zeros(0), np.zeros(0),
        f1.copy(), np.zeros((1, 1)), np.zeros((1, 1)), f1.copy(),
        np.zeros((1, 1)), np.zeros((1, 1), np.int8), np.zeros((1, 1)), np.zeros((0, 1)),
        np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((1, 1)), np.zeros((6, 1)),
    )
    return time.perf_counter() - t0
