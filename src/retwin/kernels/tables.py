"""Sums over a run's daily records for its result tables, in one pass."""

from __future__ import annotations

import numpy as np

from retwin._typing import FloatArray, Int8Array, IntArray
from retwin.kernels._jit import jit

__all__ = ["binding_weights"]


@jit
def _binding_weights(binding: Int8Array, weight: FloatArray, stage_of: IntArray,
                     year_of_day: IntArray, share: FloatArray, total: FloatArray) -> None:
    for p in range(binding.shape[0]):
        s = stage_of[p]
        for d in range(binding.shape[1]):
            w = weight[p, d]
            y = year_of_day[d]
            share[s, binding[p, d], y] += w
            total[s, y] += w


def binding_weights(binding: Int8Array, weight: FloatArray, stage_of: IntArray, n_stages: int,
                    n_codes: int, year_of_day: IntArray, n_years: int
                    ) -> tuple[FloatArray, FloatArray]:
    """Each stage's weight of plant-days (``weight``, (P, D), e.g. capacity) per binding code
    and year, and in all: ``share`` (stages, codes, Y) and ``total`` (stages, Y). ``binding``
    (P, D) holds codes ``0 .. n_codes - 1``; plant ``p`` is in stage ``stage_of[p]``; day
    ``d`` in year ``year_of_day[d]`` (``0 .. n_years - 1``)."""
    share = np.zeros((n_stages, n_codes, n_years))
    total = np.zeros((n_stages, n_years))
    _binding_weights(np.ascontiguousarray(binding, dtype=np.int8),
                     np.ascontiguousarray(weight, dtype=np.float64),
                     np.ascontiguousarray(stage_of, dtype=np.int64),
                     np.ascontiguousarray(year_of_day, dtype=np.int64), share, total)
    return share, total
