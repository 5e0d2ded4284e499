"""Sums over a run's daily records for its result tables, in one pass."""

from __future__ import annotations

import numpy as np

from retwin._typing import FloatArray, Int8Array, IntArray
from retwin.kernels._jit import jit

__all__ = ["binding_weights", "mass_balance"]


@jit
def _binding_weights(binding: Int8Array, weight: FloatArray, stage_of: IntArray,
                     year_of_day: IntArray, share: FloatArray, total: FloatArray) -> None:
    # a plant's days run in a few long spells of one code within a year: each spell is
    # summed apart (adding into one bin day after day would wait on the last day's sum)
    n_days = binding.shape[1]
    for p in range(binding.shape[0]):
        s = stage_of[p]
        code, year = binding[p, 0] if n_days else 0, year_of_day[0] if n_days else 0
        spell, spell_all = 0.0, 0.0
        for d in range(n_days):
            c, y, w = binding[p, d], year_of_day[d], weight[p, d]
            if c != code or y != year:
                share[s, code, year] += spell
                spell = 0.0
                if y != year:
                    total[s, year] += spell_all
                    spell_all = 0.0
                code, year = c, y
            spell += w
            spell_all += w
        if n_days:
            share[s, code, year] += spell
            total[s, year] += spell_all


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


@jit
def _mass_balance(pool_mat: IntArray, initial: FloatArray, final: FloatArray,
                  transit: FloatArray, totals: FloatArray, activity: FloatArray,
                  loss_per_act: FloatArray, comp: FloatArray, rtol: float,
                  out_m: FloatArray, tol_m: FloatArray, out_e: FloatArray) -> float:
    n_m, n_e = comp.shape
    init = np.zeros(n_m)
    fin = np.zeros(n_m)
    tra = np.zeros(n_m)
    for s in range(pool_mat.shape[0]):
        m = pool_mat[s]
        init[m] += initial[s]
        fin[m] += final[s]
        tra[m] += transit[s]
    el_in = np.zeros(n_e)
    el_out = np.zeros(n_e)
    for p in range(activity.shape[0]):
        act = 0.0
        for d in range(activity.shape[1]):
            act += activity[p, d]
        for e in range(n_e):
            el_out[e] += act * loss_per_act[p, e]
    for m in range(n_m):
        produced, drawn, extracted = totals[0, m], totals[1, m], totals[2, m]
        imported, exported, demand = totals[3, m], totals[4, m], totals[5, m]
        out_m[m] = (init[m] + produced + imported) - (drawn + exported + demand + fin[m]
                                                      + tra[m])
        scale = 1.0
        for v in (init[m], produced, imported, drawn, exported, demand, fin[m], extracted):
            if v > scale:
                scale = v
        tol_m[m] = rtol * scale * 10
        into, out = init[m] + extracted + imported, exported + demand + fin[m] + tra[m]
        for e in range(n_e):
            el_in[e] += into * comp[m, e]
            el_out[e] += out * comp[m, e]
    el_scale = 1.0
    for e in range(n_e):
        out_e[e] = el_in[e] - el_out[e]
        el_scale = max(el_scale, el_in[e], el_out[e])
    return rtol * el_scale * 10


def mass_balance(pool_mat: IntArray, initial: FloatArray, final: FloatArray,
                 transit: FloatArray, totals: FloatArray, activity: FloatArray,
                 loss_per_act: FloatArray, comp: FloatArray, rtol: float
                 ) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """A run's mass balance in one pass: per material (its unit) ``inputs - outputs``, that
    is the pools' starting stock, production and imports less plants' draws, exports,
    demand, the final stock and what is in transit (pools ``(S,)`` of material
    ``pool_mat``; ``totals`` (6, M) as the flow kernel sums them), and its tolerance
    (``10 rtol`` x the largest of those flows, at least 1); per element (t REO, ``comp``
    (M, E)) the same with the ground's extraction as an input and each plant's losses
    (``activity`` (P, D) summed, x ``loss_per_act`` (P, E)) as an output, and its tolerance
    (``10 rtol`` x the larger side, at least 1). Returns ``material, tolerance_material,
    element, tolerance_element``."""
    n_m, n_e = comp.shape
    out_m, tol_m, out_e = np.empty(n_m), np.empty(n_m), np.empty(n_e)
    tol_e = _mass_balance(np.ascontiguousarray(pool_mat, dtype=np.int64),
                          np.ascontiguousarray(initial, dtype=np.float64),
                          np.ascontiguousarray(final, dtype=np.float64),
                          np.ascontiguousarray(transit, dtype=np.float64),
                          np.ascontiguousarray(totals, dtype=np.float64),
                          np.ascontiguousarray(activity, dtype=np.float64),
                          np.ascontiguousarray(loss_per_act, dtype=np.float64),
                          np.ascontiguousarray(comp, dtype=np.float64), float(rtol),
                          out_m, tol_m, out_e)
    return out_m, tol_m, out_e, float(tol_e)
