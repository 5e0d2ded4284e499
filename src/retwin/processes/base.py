"""The interface the processes see of a run, and the per-stage outage processes."""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, Protocol

import numpy as np
import simpy

from retwin._typing import FloatArray

__all__ = ["Chain", "StageProcess"]


class Chain(Protocol):
    """What a process may do to a run (implemented by ``engine.model.ChainModel``)."""

    n_days: int
    month_start_day: Any
    avail: FloatArray

    def advance_to(self, day: int) -> None: ...
    def set_plant_state(self, plant: int, *, random_up: bool | None = None,
                        planned_up: bool | None = None) -> None: ...
    def log(self, day: int, kind: str, subject: str) -> None: ...
    def rng(self, stream: str) -> np.random.Generator: ...


class StageProcess:
    """The discrete events of one stage's plants: random failures and repairs (exponential
    times to failure and to repair, drawn from a stream per plant, so adding a plant does not
    shift another plant's outages), and planned outages.

    Durations are whole days (at least one): the flow resolution is daily.
    """

    def __init__(
        self,
        stage: str,
        plants: list[int],
        plant_ids: list[str],
        mtbf: FloatArray,
        mttr: FloatArray,
        planned: list[list[tuple[int, int]]],
        random_outages: bool,
    ) -> None:
        self.stage = stage
        self.plants = plants
        self.plant_ids = plant_ids
        self.mtbf = mtbf
        self.mttr = mttr
        self.planned = planned
        self.random_outages = random_outages

    def start(self, env: simpy.Environment, chain: Chain) -> None:
        for p in self.plants:
            if self.random_outages and not math.isnan(self.mtbf[p]):
                env.process(self._random(env, chain, p))
            for start, end in self.planned[p]:
                env.process(self._planned(env, chain, p, start, end))

    def _random(self, env: simpy.Environment, chain: Chain, p: int) -> Generator[Any, Any, None]:
        rng = chain.rng(f"outage/{self.plant_ids[p]}")
        mtbf, mttr = float(self.mtbf[p]), float(self.mttr[p])
        pid = self.plant_ids[p]
        # Draw in blocks (same numbers as one at a time from this stream: up, down, up, …)
        # sized to the horizon, so a run makes a few generator calls rather than one an event.
        block = max(8, 2 * int(chain.n_days / (mtbf + mttr)) + 8)
        advance_to, set_state, log = chain.advance_to, chain.set_plant_state, chain.log
        while True:
            draws = rng.standard_exponential(block)
            for k in range(0, block - 1, 2):
                yield env.timeout(max(1, math.ceil(draws[k] * mtbf)))
                now = int(env.now)
                advance_to(now)
                set_state(p, random_up=False)
                log(now, "failure", pid)
                yield env.timeout(max(1, math.ceil(draws[k + 1] * mttr)))
                now = int(env.now)
                advance_to(now)
                set_state(p, random_up=True)
                log(now, "repair", pid)

    def _planned(
        self, env: simpy.Environment, chain: Chain, p: int, start: int, end: int
    ) -> Generator[Any, Any, None]:
        if start > 0:
            yield env.timeout(start)
        chain.advance_to(int(env.now))
        chain.set_plant_state(p, planned_up=False)
        chain.log(int(env.now), "planned_outage", self.plant_ids[p])
        yield env.timeout(end - max(start, 0))
        chain.advance_to(int(env.now))
        chain.set_plant_state(p, planned_up=True)
        chain.log(int(env.now), "planned_outage_end", self.plant_ids[p])
