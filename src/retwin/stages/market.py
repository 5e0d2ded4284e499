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
        noisy = [i for i in range(len(self.material_ids)) if self.volatility[i] > 0]
        rngs = {i: chain.rng(f"price/{self.material_ids[i]}") for i in noisy}
        x = np.zeros(len(self.material_ids))
        dt = 1.0 / 12.0
        for t, day in enumerate(self.month_start_day):
            if day > env.now:
                yield env.timeout(int(day) - env.now)
            chain.advance_to(int(day))
            for i in noisy:
                k, s = self.reversion[i], self.volatility[i]
                decay = math.exp(-k * dt)
                sd = s * math.sqrt((1 - decay * decay) / (2 * k)) if k > 0 else s * math.sqrt(dt)
                x[i] = x[i] * decay + sd * rngs[i].standard_normal()
            self.price[:] = self.price_month[:, t] * np.exp(x)
            self.price_rec[:, t] = self.price


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
        noisy = [g for g in range(len(self.segment_ids)) if self.cv[g] > 0]
        rngs = {g: chain.rng(f"demand/{self.segment_ids[g]}") for g in noisy}
        sig = np.sqrt(np.log1p(self.cv**2))
        for t, day in enumerate(self.month_start_day):
            if day > env.now:
                yield env.timeout(int(day) - env.now)
            chain.advance_to(int(day))
            rate = self.demand_month[:, t].copy()
            for g in noisy:
                rate[g] *= math.exp(sig[g] * rngs[g].standard_normal() - 0.5 * sig[g] ** 2)
            self.dem_rate[:] = rate
