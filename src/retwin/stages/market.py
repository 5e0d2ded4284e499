"""Monthly market clearing (prices) and monthly demand draws."""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from retwin._typing import FloatArray, IntArray
from retwin.stages.base import Chain

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
        n_m, n_t = len(self.material_ids), len(self.month_start_day)
        # the log-price noise of the whole horizon, one stream per material (drawn up front:
        # it does not depend on the state)
        x = np.zeros((n_m, n_t))
        dt = 1.0 / 12.0
        for i in range(n_m):
            k, s = float(self.reversion[i]), float(self.volatility[i])
            if s <= 0:
                continue
            eps = chain.rng(f"price/{self.material_ids[i]}").standard_normal(n_t)
            decay = math.exp(-k * dt)
            sd = s * math.sqrt((1 - decay * decay) / (2 * k)) if k > 0 else s * math.sqrt(dt)
            level = 0.0
            for t in range(n_t):
                level = level * decay + sd * eps[t]
                x[i, t] = level
        path = self.price_month * np.exp(x)
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
        n_t = len(self.month_start_day)
        sig = np.sqrt(np.log1p(self.cv**2))
        rate = self.demand_month.copy()
        for g in range(len(self.segment_ids)):
            if sig[g] > 0:
                eps = chain.rng(f"demand/{self.segment_ids[g]}").standard_normal(n_t)
                rate[g] *= np.exp(sig[g] * eps - 0.5 * sig[g] ** 2)
        for t, day in enumerate(self.month_start_day):
            if day > env.now:
                yield env.timeout(int(day) - env.now)
            chain.advance_to(int(day))
            self.dem_rate[:] = rate[:, t]
