"""Every what-if change kind in one table: its model, how it reaches a run, its checks.

A kind reaches a run in one of three ways (``reaches``, declared on its model in
:mod:`retwin.scenario.schema`):

- ``data``: applying it rewrites the scenario's data (:func:`~retwin.scenario.apply_changes`
  calls the kind's ``rewrite``): a plant added or retired, a parameter set;
- ``path``: it is compiled into a base path when the scenario is compiled
  (``retwin.engine.build.PATH_BUILDERS``): price shocks, demand changes, quota releases;
- ``timed``: it acts on run state from its date to its end, played by the policy process
  (``retwin.engine.model.TIMED_HANDLERS``): capacity, outages, trade caps, reserves.

Adding a kind: its model in ``schema.py`` (a member of the ``Change`` union, with ``kind`` and
``reaches``), its row here (the check against a scenario, and ``rewrite`` for a data kind),
and its handler in the engine for a path or timed kind. ``tests/test_change_kinds.py`` checks
that every kind is in this table, has a handler at every step it reaches, and changes a run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel

from retwin.scenario.paths import set_path
from retwin.scenario.schema import (
    CapacityChange,
    Change,
    DemandChange,
    OutageChange,
    ParameterChange,
    PlantChange,
    PriceChange,
    QuotaChange,
    Reaches,
    ReserveChange,
    Scenario,
    TradeChange,
)

__all__ = ["KINDS", "ChangeKind", "Problems", "check_change", "rewrite"]

#: ``(field path, message)`` pairs, as :class:`~retwin.errors.ScenarioError` takes them.
Problems = list[tuple[str, str]]


class _Report:
    """What a kind's check reports into: problems under ``changes[i]``."""

    def __init__(self, sc: Scenario, where: str, problems: Problems) -> None:
        self.sc, self.where, self.problems = sc, where, problems

    def add(self, field: str, message: str) -> None:
        self.problems.append((f"{self.where}.{field}", message))

    def need(self, value: str | None, known: set[str], field: str, what: str) -> None:
        """Report ``value`` unless it is one of ``known`` (``None`` is not checked)."""
        if isinstance(value, str) and value not in known:
            self.add(field, f"unknown {what} {value!r} (known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class ChangeKind:
    """One change kind: its model, how it reaches a run, and what it does at each step."""

    kind: str
    model: type[BaseModel]
    #: Checks the change's references against the scenario it is applied to.
    check: Callable[[Any, _Report], None]
    #: For a ``data`` kind: rewrites the scenario tree; returns the problems it met.
    rewrite: Callable[[dict[str, Any], Any, Scenario, str], Problems] | None = None

    @property
    def reaches(self) -> Reaches:
        return self.model.reaches  # type: ignore[attr-defined]


# --- checks against the scenario --------------------------------------------------------------


def _check_quota(ch: QuotaChange, r: _Report) -> None:
    quotas = {q.id: q for q in r.sc.quotas}
    r.need(ch.quota, set(quotas), "quota", "quota")
    q = quotas.get(ch.quota)
    if q is not None and isinstance(ch.batch, int) and ch.batch > len(q.batches):
        r.add("batch", f"batch(={ch.batch}) must be in 1..{len(q.batches)}"
                       f" (quota {ch.quota!r} has {len(q.batches)} batches a year)")


def _check_price(ch: PriceChange, r: _Report) -> None:
    r.need(ch.material, {m.id for m in r.sc.materials}, "material", "material")


def _check_capacity(ch: CapacityChange, r: _Report) -> None:
    r.need(ch.plant, {p.id for p in r.sc.plants}, "plant", "plant")
    if ch.stage is not None and not any(p.stage == ch.stage for p in r.sc.plants):
        r.add("stage", f"no plant of stage {ch.stage!r} in the scenario")


def _check_plant(ch: PlantChange, r: _Report) -> None:
    if ch.action == "retire":
        r.need(ch.plant_id, {p.id for p in r.sc.plants}, "plant_id", "plant")


def _check_outage(ch: OutageChange, r: _Report) -> None:
    r.need(ch.plant, {p.id for p in r.sc.plants}, "plant", "plant")


def _check_demand(ch: DemandChange, r: _Report) -> None:
    r.need(ch.segment, {g.id for g in r.sc.demand}, "segment", "demand segment")


def _check_trade(ch: TradeChange, r: _Report) -> None:
    markets = {k.id: k for k in r.sc.markets}
    r.need(ch.market, set(markets), "market", "market")
    k = markets.get(ch.market)
    if k is not None and ((ch.side == "import" and k.import_ is None) or
                          (ch.side == "export" and k.export is None)):
        r.add("side", f"market {ch.market!r} has no {ch.side} side")


def _check_reserve(ch: ReserveChange, r: _Report) -> None:
    if isinstance(ch.region, str) and isinstance(ch.material, str) and (
            (ch.region, ch.material) not in {p.key for p in r.sc.pools}):
        r.add("material", f"no pool for {ch.material!r} in region {ch.region!r}")


def _check_parameter(ch: ParameterChange, r: _Report) -> None:
    """A path is checked when it is set (:func:`_rewrite_parameter`), against the tree as the
    earlier changes of the same list left it."""


# --- rewrites of the scenario's data ----------------------------------------------------------


def _rewrite_plant(tree: dict[str, Any], ch: PlantChange, sc: Scenario, where: str) -> Problems:
    if ch.action == "add":
        assert ch.plant is not None
        new = ch.plant.model_dump(by_alias=True, mode="json")
        if any(p["id"] == new["id"] for p in tree["plants"]):
            return [(f"{where}.plant.id", f"plant {new['id']!r} already exists")]
        if ch.start is not None and ch.plant.commissioning is None:
            new["commissioning"] = ch.start.isoformat()
        tree["plants"].append(new)
    else:
        for p in tree["plants"]:
            if p["id"] == ch.plant_id:
                p["retirement"] = (ch.start or sc.start).isoformat()
    return []


def _rewrite_parameter(tree: dict[str, Any], ch: ParameterChange, sc: Scenario, where: str
                       ) -> Problems:
    try:
        set_path(tree, ch.path, ch.value)
    except KeyError as exc:
        return [(f"{where}.path", f"{ch.path!r}: {exc.args[0]}")]
    return []


_ROWS: dict[type[BaseModel], tuple[Callable[..., None], Callable[..., Problems] | None]] = {
    QuotaChange: (_check_quota, None),
    PriceChange: (_check_price, None),
    CapacityChange: (_check_capacity, None),
    PlantChange: (_check_plant, _rewrite_plant),
    OutageChange: (_check_outage, None),
    DemandChange: (_check_demand, None),
    TradeChange: (_check_trade, None),
    ReserveChange: (_check_reserve, None),
    ParameterChange: (_check_parameter, _rewrite_parameter),
}

#: Every change kind by its ``kind`` tag, in the order of the ``Change`` union.
KINDS: dict[str, ChangeKind] = {
    cls.model_fields["kind"].default: ChangeKind(
        cls.model_fields["kind"].default, cls, *_ROWS[cls])
    for cls in get_args(get_args(Change)[0])
}


def check_change(sc: Scenario, i: int, ch: Any, problems: Problems) -> None:
    """Check change ``i`` against ``sc``: its kind's references, then its dates."""
    where = f"changes[{i}]"
    KINDS[ch.kind].check(ch, _Report(sc, where, problems))
    if isinstance(ch.start, dt.date) and not (sc.start <= ch.start <= sc.end):
        problems.append(
            (f"{where}.from", f"from(={ch.start}) must lie in the horizon {sc.start}..{sc.end}"))
    if isinstance(ch.end, dt.date) and ch.end < sc.start:
        problems.append(
            (f"{where}.to", f"to(={ch.end}) must not be before the horizon's start {sc.start}"))


def rewrite(tree: dict[str, Any], i: int, ch: Any, sc: Scenario) -> Problems:
    """Apply data change ``i`` to the scenario tree; the problems it met (none: applied)."""
    fn = KINDS[ch.kind].rewrite
    assert fn is not None, f"{ch.kind} changes do not rewrite the scenario"
    return fn(tree, ch, sc, f"changes[{i}]")
