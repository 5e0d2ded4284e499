"""Quota years and batch releases (total-quantity control)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from retwin._typing import FloatArray
from retwin.processes.base import Chain

__all__ = ["QuotaProcess"]


class QuotaProcess:
    """At each calendar year's start, unused quota lapses and the year's ceiling is set; on
    each batch date the batch is released (for a quota that produces ahead, the whole year's
    total is available from the start and the releases are only logged). A horizon that
    starts mid-year gets the share of that year's ceiling and of its earlier batches that the
    remaining days represent."""

    def __init__(
        self,
        quota_ids: list[str],
        releases: list[tuple[int, int, float]],
        year_starts: list[tuple[int, int]],
        year_total: dict[tuple[int, int], float],
        first_year_frac: float,
        produce_ahead: list[bool],
        q_avail: FloatArray,
        q_year_left: FloatArray,
    ) -> None:
        self.quota_ids = quota_ids
        self.releases = releases
        self.year_starts = year_starts
        self.year_total = year_total
        self.first_year_frac = first_year_frac
        self.produce_ahead = produce_ahead
        self.q_avail = q_avail
        self.q_year_left = q_year_left

    def start(self, env: simpy.Environment, chain: Chain) -> None:
        if self.quota_ids:
            env.process(self._run(env, chain))

    def _run(self, env: simpy.Environment, chain: Chain) -> Generator[Any, Any, None]:
        events: list[tuple[int, int, int, float]] = []  # (day, order, quota, amount)
        for day, year in self.year_starts:
            events.append((day, 0, year, 0.0))
        for day, q, amount in self.releases:
            events.append((day, 1, q, amount))
        events.sort(key=lambda e: (e[0], e[1]))
        first = True
        for day, kind, which, amount in events:
            if day > env.now:
                yield env.timeout(day - env.now)
            chain.advance_to(day)
            if kind == 0:
                frac = self.first_year_frac if first else 1.0
                first = False
                for q in range(len(self.quota_ids)):
                    total = frac * self.year_total.get((q, which), 0.0)
                    self.q_year_left[q] = total
                    self.q_avail[q] = total if self.produce_ahead[q] else 0.0
                chain.log(day, "quota_year", str(which))
            else:
                if not self.produce_ahead[which]:
                    share = self.first_year_frac if day == 0 else 1.0
                    self.q_avail[which] += share * amount
                chain.log(day, "quota_release", self.quota_ids[which])
