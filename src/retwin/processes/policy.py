"""The what-if timeline: changes that act on run state from one date to another."""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, Protocol

import simpy

from retwin.processes.base import Chain

__all__ = ["PolicyProcess"]

#: A ramped capacity change moves in steps of this many days (the flow is daily; a weekly
#: step keeps the event count low while following the ramp closely).
RAMP_STEP_DAYS = 7


class _Timed(Protocol):
    index: int
    kind: str
    start: int
    end: int
    change: Any


class _PolicyChain(Chain, Protocol):
    def set_change_weight(self, timed: Any, weight: float) -> None: ...


class PolicyProcess:
    """One process per timed change: it starts the change (ramping capacity changes in
    weekly steps), and ends it on its ``to`` date, after which the state returns to what the
    other active changes make it."""

    def __init__(self, timed: list[Any]) -> None:
        self.timed = timed

    def start(self, env: simpy.Environment, chain: _PolicyChain) -> None:
        for t in self.timed:
            env.process(self._run(env, chain, t))

    def _run(self, env: simpy.Environment, chain: _PolicyChain, t: _Timed
             ) -> Generator[Any, Any, None]:
        ramp = int(getattr(t.change, "ramp_days", 0) or 0)
        steps = max(1, math.ceil(ramp / RAMP_STEP_DAYS)) if ramp > 0 else 1
        for k in range(steps):
            day = t.start + k * RAMP_STEP_DAYS
            if day >= min(t.end, chain.n_days):
                break
            if day > env.now:
                yield env.timeout(day - env.now)
            chain.advance_to(day)
            weight = 1.0 if ramp == 0 else min(1.0, (day - t.start + RAMP_STEP_DAYS) / ramp)
            chain.set_change_weight(t, weight)
            if k == 0:
                chain.log(day, f"{t.kind}_change", f"changes[{t.index}]")
        if t.end < chain.n_days:
            yield env.timeout(t.end - env.now)
            chain.advance_to(t.end)
            chain.set_change_weight(t, 0.0)
            chain.log(t.end, f"{t.kind}_change_end", f"changes[{t.index}]")
