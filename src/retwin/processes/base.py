"""The interface the processes see of a run, and the outage calendar drawn when it starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from retwin._typing import FloatArray, IntArray

__all__ = ["Chain", "OutageCalendar", "draw_outages"]


class Chain(Protocol):
    """What a process may do to a run (implemented by ``engine.model.ChainModel``)."""

    n_days: int
    month_start_day: Any
    avail: FloatArray

    def advance_to(self, day: int) -> None: ...
    def log(self, day: int, kind: str, subject: str) -> None: ...
    def rng(self, stream: str) -> np.random.Generator: ...


@dataclass(frozen=True, eq=False)
class OutageCalendar:
    """Each plant's outages over the horizon, as change points in compressed sparse rows:
    plant ``p``'s are entries ``ptr[p]:ptr[p + 1]``, on rising days (one per day at most),
    each the share of capacity the outages leave from that day on (1: up, 0: down). What the
    kernel reads as ``cal_ptr``, ``cal_day``, ``cal_up``; ``events`` is what the run's event
    log says of them, ``(day, kind, plant id)`` in day order."""

    ptr: IntArray  # (P + 1,)
    day: IntArray  # (C,)
    up: FloatArray  # (C,)
    events: list[tuple[int, str, str]]


def _random_down(rng: np.random.Generator, mtbf: float, mttr: float, n_days: int
                 ) -> tuple[IntArray, IntArray]:
    """Days of the failures and the repairs within ``[0, n_days)``: alternate exponential
    times to failure and to repair, whole days of at least one, drawn from ``rng`` in blocks
    sized to the horizon (the same numbers as one at a time: up, down, up, …)."""
    block = max(8, 2 * int(n_days / (mtbf + mttr)) + 8)  # even: a block holds whole cycles
    scale = np.tile([mtbf, mttr], block // 2)
    times: list[IntArray] = []
    t = 0
    while t < n_days:
        steps = np.maximum(1, np.ceil(rng.standard_exponential(block) * scale)).astype(np.int64)
        at = t + np.cumsum(steps)
        times.append(at[at < n_days])
        t = int(at[-1])
    every = np.concatenate(times)
    return every[0::2], every[1::2]


def draw_outages(plant_ids: list[str], mtbf: FloatArray, mttr: FloatArray,
                 planned: list[list[tuple[int, int]]], random_outages: bool, n_days: int,
                 rng: Callable[[str], np.random.Generator]) -> OutageCalendar:
    """Every plant's outages over the horizon, drawn before the run starts: their times do
    not depend on the run's state, so they need not stop the flow.

    Random failures and repairs (when ``random_outages``) for each plant with an MTBF:
    exponential times to failure and to repair, from the stream ``outage/<plant id>`` (one
    per plant, so adding a plant does not shift another plant's outages, and a baseline and
    its what-if share them). Planned outages are ``[start, end)`` days. A plant is down while
    it is failed or in any planned outage. Durations are whole days (at least one): the flow
    resolution is daily.
    """
    n_p = len(plant_ids)
    ptr = np.zeros(n_p + 1, np.int64)
    days: list[IntArray] = []
    ups: list[FloatArray] = []
    events: list[tuple[int, str, str]] = []
    empty = np.zeros(0, np.int64)
    for p, pid in enumerate(plant_ids):
        fail, repair = empty, empty
        if random_outages and not np.isnan(mtbf[p]):
            fail, repair = _random_down(rng(f"outage/{pid}"), float(mtbf[p]), float(mttr[p]),
                                        n_days)
            events += [(int(d), "failure", pid) for d in fail]
            events += [(int(d), "repair", pid) for d in repair]
        starts = np.array([s for s, _ in planned[p]], np.int64)
        ends = np.array([e for _, e in planned[p]], np.int64)
        events += [(int(d), "planned_outage", pid) for d in starts]
        events += [(int(d), "planned_outage_end", pid) for d in ends if d < n_days]
        if not fail.size and not starts.size:
            ptr[p + 1] = ptr[p]
            continue
        # how many outages hold the plant down, changed at each of these days
        at = np.concatenate([fail, starts, repair, ends])
        step = np.concatenate([np.ones(fail.size + starts.size, np.int64),
                               -np.ones(repair.size + ends.size, np.int64)])
        uniq, inv = np.unique(at, return_inverse=True)
        net = np.zeros(uniq.size, np.int64)
        np.add.at(net, inv, step)
        up = (np.cumsum(net) == 0).astype(np.float64)
        changed = up != np.r_[1.0, up[:-1]]
        keep = changed & (uniq < n_days)
        days.append(uniq[keep])
        ups.append(up[keep])
        ptr[p + 1] = ptr[p] + int(keep.sum())
    events.sort(key=lambda e: e[0])
    return OutageCalendar(
        ptr=ptr,
        day=np.concatenate(days) if days else np.zeros(0, np.int64),
        up=np.concatenate(ups) if ups else np.zeros(0, np.float64),
        events=events)
