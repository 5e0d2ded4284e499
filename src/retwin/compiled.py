"""A scenario compiled into arrays: what the engine runs and what results read.

Made by :func:`retwin.engine.build.compile_scenario`. It lives below both the engine and
:mod:`retwin.results` (it imports neither), so each can use it without the other.
Axis order as in :mod:`retwin._typing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.scenario.schema import Scenario

__all__ = ["Compiled", "RecipeSide", "TimedChange", "Topology"]


@dataclass(frozen=True)
class TimedChange:
    """A change acting on run state from ``start`` to ``end`` (days; ``end`` exclusive)."""

    index: int
    kind: str
    start: int
    end: int
    change: Any


@dataclass(frozen=True, eq=False)
class RecipeSide:
    """One side (inputs or outputs) of every plant's recipe, as compressed sparse rows:
    plant ``p``'s entries are ``ptr[p]:ptr[p + 1]`` (see :meth:`of`)."""

    ptr: IntArray  # (P + 1,)
    plant: IntArray  # (entries,) the plant of each entry
    pool: IntArray  # (entries,) the pool it draws on or delivers into; -1: from the ground
    material: IntArray  # (entries,)
    amount: FloatArray  # (entries,) units per unit of activity

    def of(self, p: int) -> slice:
        """Plant ``p``'s entries."""
        return slice(int(self.ptr[p]), int(self.ptr[p + 1]))


@dataclass(frozen=True, eq=False)
class Topology:
    """Who is connected to what: the index maps of a compiled scenario (plants by stage,
    recipes, the material of each pool, the pool of each market and demand segment, the quota
    of each plant)."""

    #: Each stage that has plants (in the order of ``STAGES``): its plants, ascending.
    stage_plants: dict[str, IntArray]
    #: (P,) each plant's stage, as its position in ``stage_plants``
    plant_stage: IntArray
    inputs: RecipeSide
    outputs: RecipeSide
    pool_material: IntArray  # (S,)
    market_pool: IntArray  # (K,)
    market_material: IntArray  # (K,)
    segment_pool: IntArray  # (G,)
    segment_material: IntArray  # (G,)
    plant_quota: IntArray  # (P,) -1: under no quota
    quota_per_activity: FloatArray  # (P,) t REO counted against the quota per unit activity

    @cached_property
    def produced_materials(self) -> frozenset[int]:
        """Materials some plant makes."""
        return frozenset(int(m) for m in self.outputs.material)


@dataclass(eq=False)
class Compiled:
    """The scenario as arrays; see :mod:`retwin._typing` for the axis order."""

    scenario: Scenario
    n_days: int
    dates: np.ndarray
    months: list[tuple[int, int]]
    month_of_day: IntArray
    month_start_day: IntArray
    days_left: IntArray
    plant_ids: list[str]
    plant_stage: list[str]
    material_ids: list[str]
    material_unit: list[str]
    pool_keys: list[tuple[str, str]]
    market_ids: list[str]
    segment_ids: list[str]
    quota_ids: list[str]
    topology: Topology
    comp: FloatArray  # (M, E) t REO per unit
    loss_per_act: FloatArray  # (P, E)
    nameplate_tpa: FloatArray  # (P,)
    utilisation: FloatArray  # (P,)
    commission_day: IntArray  # (P,) first day a plant runs
    ramp_days: IntArray  # (P,) days to full capacity
    retire_day: IntArray  # (P,) first day it no longer runs
    mtbf: FloatArray  # (P,) nan when no random outages
    mttr: FloatArray
    planned: list[list[tuple[int, int]]]  # per plant, [start, end) days
    pool_initial: FloatArray
    reserve0: FloatArray
    imp_cap_tpa: FloatArray  # (K,)
    exp_cap_tpa: FloatArray
    imp_price_factor: FloatArray
    exp_price_factor: FloatArray
    price_month: FloatArray  # (M, T) base path with shocks
    volatility: FloatArray  # (M,)
    reversion: FloatArray
    demand_month: FloatArray  # (G, T) material per day, before noise
    demand_cv: FloatArray
    releases: list[tuple[int, int, float]]  # (day, quota, t REO), sorted
    quota_year_total: dict[tuple[int, int], float]  # (quota, year) -> t REO
    #: what the event log says of the quota calendar: (day, kind, subject) in day order
    quota_log: list[tuple[int, str, str]]
    timed: list[TimedChange]
    #: The flow kernel's inputs by their declared names (``retwin.kernels.contract.INPUTS``);
    #: they share their arrays with :attr:`topology` and the fields above.
    kernel_static: dict[str, np.ndarray]
    #: The size of every kernel axis (``retwin.kernels.contract.AXES``) for this scenario.
    kernel_sizes: dict[str, int]
    ring: int
    #: What readers of results build once per compiled scenario (row labels), kept here so
    #: it lives exactly as long as the scenario does.
    labels: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    #: The compiled data this was compiled from (``retwin.engine.build.compile_scenario``):
    #: its scenario without changes, whose arrays this shares where no change reaches them;
    #: what follows from those arrays alone is made once, for it. ``None`` when made
    #: otherwise.
    data: Compiled | None = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without :attr:`data`: what it holds is made again where needed."""
        return {**self.__dict__, "data": None}

    @cached_property
    def ramp(self) -> FloatArray:
        """(P, D) share of nameplate each plant has: 0 before commissioning and from
        retirement on, rising linearly over its ramp (the kernel's rule). Computed once.

        Plants at full capacity over the whole horizon (commissioned and ramped up before it
        starts, not retired within it; most of a large chain) are rows of ones: the rule is
        computed only for the others; taken from the compiled data this comes from, where
        there is one (:attr:`data`: the same plants)."""
        if self.data is not None:
            return self.data.ramp
        out = np.ones((len(self.commission_day), self.n_days))
        full_from = self.commission_day + np.maximum(self.ramp_days, 1) - 1
        moving = np.flatnonzero((full_from > 0) | (self.retire_day < self.n_days))
        if moving.size:
            out[moving] = _ramp_rows(self.commission_day[moving], self.ramp_days[moving],
                                     self.retire_day[moving], self.n_days)
        return out


def _ramp_rows(commission_day: IntArray, ramp_days: IntArray, retire_day: IntArray,
               n_days: int) -> FloatArray:
    """The rule of :attr:`Compiled.ramp` for the given plants."""
    d = np.arange(n_days)[None, :]
    com = commission_day[:, None]
    ramp = ramp_days[:, None].astype(float)
    r = np.where(ramp > 0, np.clip((d - com + 1) / np.where(ramp > 0, ramp, 1), 0, 1), 1.0)
    live = (d >= com) & (d < retire_day[:, None])
    return np.where(live, r, 0.0)
