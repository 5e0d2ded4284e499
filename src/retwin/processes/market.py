"""Prices and demand replayed from their paths (``price_mode: path``, or no economics)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from retwin._typing import FloatArray, IntArray
from retwin.processes.base import Chain
from retwin.processes.economy import demand_paths, reference_paths

__all__ = ["DemandProcess", "MarketProcess"]


class MarketProcess:
    """On the first day of each month, set each material's price: the base path (with any
    shock) times a mean-reverting noise factor in log price (an Ornstein–Uhlenbeck step with
    the material's volatility and reversion speed, drawn from a stream per material)."""

    def __init__(
        self,
        material_ids: list[str],
        month_start_day: IntArray,
        price_month: FloatArray,
        volatility: FloatArray,
        reversion: FloatArray,
        noise: bool,
        price: FloatArray,
        price_rec: FloatArray,
    ) -> None:
        self.material_ids = material_ids
        self.month_start_day = month_start_day
        self.price_month = price_month
        self.volatility = volatility if noise else np.zeros_like(volatility)
        self.reversion = reversion
        self.price = price
        self.price_rec = price_rec

    def start(self, env: simpy.Environment, chain: Chain) -> None:
        env.process(self._run(env, chain))

    def _run(self, env: simpy.Environment, chain: Chain) -> Generator[Any, Any, None]:
        # the noise of the whole horizon is drawn up front: it does not depend on the state
        path = reference_paths(chain, self.material_ids, self.price_month, self.volatility,
                               self.reversion)
        for t, day in enumerate(self.month_start_day):
            if day > env.now:
                yield env.timeout(int(day) - env.now)
            chain.advance_to(int(day))
            self.price[:] = path[:, t]
            self.price_rec[:, t] = path[:, t]


class DemandProcess:
    """On the first day of each month, set each segment's daily rate: the base path (growth,
    seasonality, demand changes) times a mean-one lognormal factor with the segment's
    coefficient of variation, drawn from a stream per segment."""

    def __init__(
        self,
        segment_ids: list[str],
        month_start_day: IntArray,
        demand_month: FloatArray,
        cv: FloatArray,
        noise: bool,
        dem_rate: FloatArray,
    ) -> None:
        self.segment_ids = segment_ids
        self.month_start_day = month_start_day
        self.demand_month = demand_month
        self.cv = cv if noise else np.zeros_like(cv)
        self.dem_rate = dem_rate

    def start(self, env: simpy.Environment, chain: Chain) -> None:
        if self.segment_ids:
            env.process(self._run(env, chain))

    def _run(self, env: simpy.Environment, chain: Chain) -> Generator[Any, Any, None]:
        rate = demand_paths(chain, self.segment_ids, self.demand_month, self.cv)
        for t, day in enumerate(self.month_start_day):
            if day > env.now:
                yield env.timeout(int(day) - env.now)
            chain.advance_to(int(day))
            self.dem_rate[:] = rate[:, t]
