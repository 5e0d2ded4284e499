"""The interface the processes see of a run, and the outage calendar drawn when it starts."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, overload

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.kernels import outages

__all__ = ["Chain", "EventLog", "OutageCalendar", "draw_outages"]


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
    log says of them, ``(day, kind, plant id)`` in day order, made from the arrays ``ev_day``,
    ``ev_kind`` (:data:`retwin.kernels.outages.EV_FAILURE`…) and ``ev_plant`` when first
    read (most runs are read for their figures, not their log)."""

    ptr: IntArray  # (P + 1,)
    day: IntArray  # (C,)
    up: FloatArray  # (C,)
    ev_day: IntArray  # (E,)
    ev_kind: IntArray  # (E,)
    ev_plant: IntArray  # (E,)
    plant_ids: list[str]

    @cached_property
    def events(self) -> list[tuple[int, str, str]]:
        pids = np.array(self.plant_ids, dtype=object)
        return list(zip(self.ev_day.tolist(), _EVENT_KINDS[self.ev_kind].tolist(),
                        pids[self.ev_plant].tolist(), strict=True))


class EventLog(Sequence[tuple[int, str, str]]):
    """A run's event log, ``(day, kind, subject)`` in day order: its quota calendar's entries,
    what its processes logged and its drawn outages, merged when first read (stable: within a
    day, in that order)."""

    def __init__(self, logged: list[tuple[int, str, str]], outages: OutageCalendar,
                 calendar: list[tuple[int, str, str]] | None = None) -> None:
        self._logged, self._outages = logged, outages
        self._calendar = calendar or []
        self._merged: list[tuple[int, str, str]] | None = None

    def _all(self) -> list[tuple[int, str, str]]:
        if self._merged is None:
            self._merged = sorted(self._calendar + self._logged + self._outages.events,
                                  key=operator.itemgetter(0))
        return self._merged

    @overload
    def __getitem__(self, i: int) -> tuple[int, str, str]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, str, str]]: ...

    def __getitem__(self, i: int | slice) -> tuple[int, str, str] | list[tuple[int, str, str]]:
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._calendar) + len(self._logged) + len(self._outages.ev_day)

    def __iter__(self) -> Iterator[tuple[int, str, str]]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventLog):
            return self._all() == other._all()
        if isinstance(other, list):
            return self._all() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"EventLog({self._all()!r})"


#: The event log's name of each kind of :func:`retwin.kernels.outages.calendar`'s entries.
_EVENT_KINDS = np.array(["failure", "repair", "planned_outage", "planned_outage_end"],
                        dtype=object)


def _block(mtbf: float, mttr: float, n_days: int) -> int:
    """How many exponentials to draw at a time for a plant: about twice the cycles the
    horizon holds (even: a block holds whole cycles, failure then repair)."""
    return max(8, 2 * int(n_days / (mtbf + mttr)) + 8)


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

    The exponentials are drawn from each stream in blocks sized to the horizon (the same
    numbers as one at a time: up, down, up, …); the calendar is then built for all plants in
    one compiled call (:func:`retwin.kernels.outages.calendar`).
    """
    n_p = len(plant_ids)
    gens: dict[int, np.random.Generator] = {}
    draws: list[FloatArray] = [_NO_DRAWS] * n_p
    if random_outages:
        for p in np.flatnonzero(~np.isnan(mtbf)).tolist():
            gens[p] = rng(f"outage/{plant_ids[p]}")
            draws[p] = gens[p].standard_exponential(_block(float(mtbf[p]), float(mttr[p]),
                                                           n_days))
    scale_f = np.where(np.isnan(mtbf), 0.0, mtbf)
    scale_r = np.where(np.isnan(mttr), 0.0, mttr)
    draw_ptr = _row_pointers([d.size for d in draws])
    flat = np.concatenate([_NO_DRAWS, *draws])
    while gens:
        done = outages.reached(flat, draw_ptr, scale_f, scale_r, n_days)
        short = [p for p in gens if not done[p]]
        if not short:
            break
        for p in short:  # rare: the block fell short of the horizon; one more block
            more = gens[p].standard_exponential(_block(float(mtbf[p]), float(mttr[p]), n_days))
            draws[p] = np.concatenate([draws[p], more])
        draw_ptr = _row_pointers([d.size for d in draws])
        flat = np.concatenate([_NO_DRAWS, *draws])
    plan_ptr = _row_pointers([len(w) for w in planned])
    spans = np.array([se for w in planned for se in w], np.int64).reshape(-1, 2)
    ptr, day, up, ev_day, ev_kind, ev_plant = outages.calendar(
        flat, draw_ptr, scale_f, scale_r, plan_ptr, np.ascontiguousarray(spans[:, 0]),
        np.ascontiguousarray(spans[:, 1]), n_days)
    return OutageCalendar(ptr=ptr, day=day, up=up, ev_day=ev_day, ev_kind=ev_kind,
                          ev_plant=ev_plant, plant_ids=plant_ids)


_NO_DRAWS = np.zeros(0, np.float64)


def _row_pointers(sizes: list[int]) -> IntArray:
    return np.fromiter(itertools.accumulate(sizes, initial=0), np.int64, len(sizes) + 1)
