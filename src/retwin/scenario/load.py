"""Loading scenarios: YAML files, ``base:`` overlays, formulas, and typed what-if changes."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from retwin.errors import ScenarioError
from retwin.scenario.data import models_dir, resolve_formulas
from retwin.scenario.schema import (
    CapacityChange,
    Change,
    DemandChange,
    OutageChange,
    ParameterChange,
    PlantChange,
    PriceChange,
    QuotaChange,
    ReserveChange,
    Scenario,
    TradeChange,
)

__all__ = [
    "apply_changes",
    "available_models",
    "load_scenario",
    "locate_path",
    "parse_changes",
    "read_yaml",
    "resolve_model",
    "scenario_hash",
]

_CHANGE_LIST: TypeAdapter[list[Change]] = TypeAdapter(list[Change])
_MAX_BASE_DEPTH = 8


def available_models() -> list[str]:
    """Names of the reference models shipped in ``models/`` (without ``.yaml``)."""
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def _find(ref: str, relative_to: Path | None) -> Path:
    candidates = []
    p = Path(ref)
    if relative_to is not None and not p.is_absolute():
        candidates += [relative_to / ref, relative_to / f"{ref}.yaml"]
    candidates += [p, Path(f"{ref}.yaml"), models_dir() / ref, models_dir() / f"{ref}.yaml"]
    if relative_to is not None:
        candidates += [relative_to.parent / f"{ref}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ScenarioError(
        [("", f"scenario {ref!r} not found (a path, or one of: {', '.join(available_models())})")]
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; ``ScenarioError`` if it is not valid YAML or no mapping."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError([("", f"{path.name}: not valid YAML: {exc}")]) from None
    if not isinstance(tree, dict):
        raise ScenarioError([("", f"{path.name}: must be a mapping at the top level")])
    return tree


def _merge(base: Any, over: Any) -> Any:
    """Overlay ``over`` on ``base``: mappings merge by key, lists of items with ``id`` merge by
    id (new ids are appended), ``changes`` lists are concatenated, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if k == "changes" and isinstance(v, list):
                out[k] = list(base.get(k) or []) + list(v)
            else:
                out[k] = _merge(base[k], v) if k in base else v
        return out
    if (
        isinstance(base, list)
        and isinstance(over, list)
        and all(isinstance(x, dict) and _item_key(x) for x in [*base, *over])
    ):
        merged = {_item_key(x): x for x in base}
        for x in over:
            k = _item_key(x)
            merged[k] = _merge(merged[k], x) if k in merged else x
        return list(merged.values())
    return over


def _resolve_tree(tree: dict[str, Any], here: Path | None, depth: int = 0) -> dict[str, Any]:
    base_ref = tree.get("base")
    tree = {k: v for k, v in tree.items() if k != "base"}
    if base_ref is None:
        return tree
    if depth >= _MAX_BASE_DEPTH:
        raise ScenarioError([("base", f"overlays nest deeper than {_MAX_BASE_DEPTH} levels")])
    base_path = _find(str(base_ref), here)
    base_tree = _resolve_tree(read_yaml(base_path), base_path.parent, depth + 1)
    return _merge(base_tree, tree)


def error_location(tree: Any, loc: tuple[Any, ...], name_keys: tuple[str, ...] = ("id",)) -> str:
    """``plants[3](jl_mag).capacity_tpa`` from a pydantic error location in ``tree``.

    A list item is labelled with the first of ``name_keys`` it has; union tags (a change's
    ``kind``, member class names, scalar type names) are left out as they are no fields.
    """
    parts: list[str] = []
    node = tree
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, dict):
                    name = next((node[k] for k in name_keys if isinstance(node.get(k), str)), None)
                    if name is not None:
                        label += f"({name})"
            else:
                node = None
            parts.append(label)
        else:
            if isinstance(node, dict) and node.get("kind") == item:
                continue  # the tag of a discriminated union (a change's kind)
            if str(item)[:1].isupper() or str(item) in ("float", "int", "bool", "str"):
                continue  # union members add nothing for the reader
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)




def _problems(exc: ValidationError, tree: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        where = error_location(tree, tuple(err["loc"]))
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        for line in msg.splitlines():
            if ": " in line and where == "" and line.split(": ", 1)[0].count(" ") == 0:
                p, m = line.split(": ", 1)
                out.append((p, m))
                continue
            shown = err.get("input")
            if err["type"] not in ("value_error", "assertion_error", "missing") and not isinstance(
                shown, dict | list
            ):
                line = f"{line} (got {shown!r})"
            out.append((where, line))
    return out


def validate_tree(tree: dict[str, Any]) -> Scenario:
    """Validate a resolved tree; raise :class:`ScenarioError` with one line per problem."""
    try:
        return Scenario.model_validate(tree)
    except ValidationError as exc:
        raise ScenarioError(_problems(exc, tree)) from None


def resolve_model(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A model file (or name, or mapping) with its ``base:`` overlays merged, formulas not yet
    evaluated: the tree :func:`load_scenario` validates."""
    if isinstance(source, Mapping):
        return _resolve_tree(dict(source), None)
    path = _find(str(source), None)
    return _resolve_tree(read_yaml(path), path.parent)


def load_scenario(
    source: str | Path | Mapping[str, Any], *, include_changes: bool = True
) -> Scenario:
    """Load a scenario from a YAML path, a reference-model name, or a mapping.

    ``base:`` overlays are resolved (the overlay's keys win, lists of items merge by ``id``,
    ``changes`` accumulate), ``"= …"`` formulas are evaluated against ``data/``, and the result
    is validated; an invalid scenario raises :class:`~retwin.errors.ScenarioError`. The
    file's ``changes`` are applied with :func:`apply_changes` (``include_changes=False`` gives
    the scenario without them: the baseline a what-if file is compared with).
    """
    tree = resolve_formulas(resolve_model(source))
    changes = tree.pop("changes", None) or []
    scenario = validate_tree(tree)
    return apply_changes(scenario, changes) if include_changes else scenario


def parse_changes(changes: Iterable[Any]) -> list[Change]:
    """Validate a list of change mappings (or change models) into typed changes."""
    raw = [c.model_dump(by_alias=True) if hasattr(c, "model_dump") else c for c in changes]
    raw = resolve_formulas(raw, path="changes")
    try:
        return _CHANGE_LIST.validate_python(raw)
    except ValidationError as exc:
        probs = _problems(exc, raw)
        raise ScenarioError([(f"changes{p}" if p.startswith("[") else p, m) for p, m in probs])\
            from None


def _check_change(sc: Scenario, i: int, ch: Change, problems: list[tuple[str, str]]) -> None:
    where = f"changes[{i}]"
    plants = {p.id for p in sc.plants}
    mats = {m.id for m in sc.materials}

    def need(value: str | None, known: set[str], field: str, what: str) -> None:
        if value is not None and value not in known:
            known_list = ", ".join(sorted(known))
            problems.append((f"{where}.{field}", f"unknown {what} {value!r} (known: {known_list})"))

    if isinstance(ch, QuotaChange):
        quotas = {q.id: q for q in sc.quotas}
        need(ch.quota, set(quotas), "quota", "quota")
        q = quotas.get(ch.quota)
        if q is not None and ch.batch is not None and ch.batch > len(q.batches):
            problems.append((f"{where}.batch", f"batch(={ch.batch}) must be in 1..{len(q.batches)}"
                             f" (quota {ch.quota!r} has {len(q.batches)} batches a year)"))
    elif isinstance(ch, PriceChange):
        need(ch.material, mats, "material", "material")
    elif isinstance(ch, CapacityChange):
        need(ch.plant, plants, "plant", "plant")
        if ch.stage is not None and not any(p.stage == ch.stage for p in sc.plants):
            problems.append((f"{where}.stage", f"no plant of stage {ch.stage!r} in the scenario"))
    elif isinstance(ch, OutageChange):
        need(ch.plant, plants, "plant", "plant")
    elif isinstance(ch, DemandChange):
        need(ch.segment, {g.id for g in sc.demand}, "segment", "demand segment")
    elif isinstance(ch, TradeChange):
        markets = {k.id: k for k in sc.markets}
        need(ch.market, set(markets), "market", "market")
        k = markets.get(ch.market)
        if k is not None and ((ch.side == "import" and k.import_ is None) or
                              (ch.side == "export" and k.export is None)):
            problems.append((f"{where}.side", f"market {ch.market!r} has no {ch.side} side"))
    elif isinstance(ch, ReserveChange):
        if (ch.region, ch.material) not in {p.key for p in sc.pools}:
            problems.append(
                (f"{where}.material", f"no pool for {ch.material!r} in region {ch.region!r}")
            )
    elif isinstance(ch, PlantChange) and ch.action == "retire":
        need(ch.plant_id, plants, "plant_id", "plant")
    if ch.start is not None and not (sc.start <= ch.start <= sc.end):
        problems.append(
            (f"{where}.from", f"from(={ch.start}) must lie in the horizon {sc.start}..{sc.end}")
        )
    if ch.end is not None and ch.end < sc.start:
        problems.append(
            (f"{where}.to", f"to(={ch.end}) must not be before the horizon's start {sc.start}")
        )


def locate_path(tree: Mapping[str, Any], path: str) -> tuple[Any, str]:
    """The mapping that holds the field a parameter path names, and the field's name.

    Paths address list items by id (``plants.<id>``) or, for pools, ``<region>/<material>``
    (``pools.baotou/concentrate.max_t``); ``KeyError`` names the part that does not exist.
    """
    *parents, last = path.split(".")
    node: Any = tree
    for part in parents:
        if isinstance(node, list):
            match = [x for x in node if isinstance(x, dict) and _item_key(x) == part]
            if not match:
                keys = ", ".join(str(_item_key(x)) for x in node)
                raise KeyError(f"no item {part!r} (known: {keys})")
            node = match[0]
        elif isinstance(node, Mapping):
            if part not in node:
                raise KeyError(f"no field {part!r} (known: {', '.join(map(str, node))})")
            node = node[part]
        else:
            raise KeyError(f"{part!r}: cannot descend into a scalar")
    if isinstance(node, list):
        raise KeyError("a path must end at a field, not at a list item")
    if not isinstance(node, Mapping):
        raise KeyError(f"{last!r}: cannot descend into a scalar")
    if last not in node:
        raise KeyError(f"no field {last!r} (known: {', '.join(map(str, node))})")
    return node, last


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    node, field = locate_path(tree, path)
    if isinstance(node[field], dict | list):
        raise KeyError(f"{field!r} is not a scalar field")
    node[field] = value


def _item_key(x: dict[str, Any]) -> str | None:
    """How list items are addressed: by ``id``, or a pool by ``region/material``."""
    if "id" in x:
        return str(x["id"])
    if "material" in x and set(x) <= _POOL_FIELDS:
        return f"{x.get('region', 'baotou')}/{x['material']}"
    return None


_POOL_FIELDS = {"region", "material", "initial_t", "reserve_t", "target_t", "max_t"}


def apply_changes(scenario: Scenario, changes: Iterable[Any]) -> Scenario:
    """A new scenario: ``scenario`` with ``changes`` applied. The input is never modified.

    Plant additions and retirements and parameter changes rewrite the scenario's data; the
    timed changes (quota, price, capacity, outage, demand, trade, reserve) are appended to
    ``scenario.changes`` and played by the engine on their dates. Each change is checked
    against the scenario (unknown plant, quota, market…) and the result is validated again.
    """
    typed = parse_changes(changes)
    if not typed:
        return scenario
    tree = copy.deepcopy(scenario.model_dump(by_alias=True, mode="json"))
    problems: list[tuple[str, str]] = []
    current, dirty = scenario, False
    for i, ch in enumerate(typed):
        if dirty and not problems:
            # a change may name what an earlier change of the same list added
            current, dirty = validate_tree(copy.deepcopy(tree)), False
        dirty = isinstance(ch, PlantChange | ParameterChange)
        _check_change(current, i, ch, problems)
        if isinstance(ch, PlantChange) and ch.action == "add":
            assert ch.plant is not None
            new = ch.plant.model_dump(by_alias=True, mode="json")
            if any(p["id"] == new["id"] for p in tree["plants"]):
                problems.append((f"changes[{i}].plant.id", f"plant {new['id']!r} already exists"))
                continue
            if ch.start is not None and ch.plant.commissioning is None:
                new["commissioning"] = ch.start.isoformat()
            tree["plants"].append(new)
        elif isinstance(ch, PlantChange):
            for p in tree["plants"]:
                if p["id"] == ch.plant_id:
                    p["retirement"] = (ch.start or scenario.start).isoformat()
        elif isinstance(ch, ParameterChange):
            try:
                _set_path(tree, ch.path, ch.value)
            except KeyError as exc:
                problems.append((f"changes[{i}].path", f"{ch.path!r}: {exc.args[0]}"))
        else:
            tree.setdefault("changes", []).append(ch.model_dump(by_alias=True, mode="json"))
    if problems:
        raise ScenarioError(problems)
    return validate_tree(tree)


def scenario_hash(scenario: Scenario) -> str:
    """A stable sha256 of the scenario's content (names and order included)."""
    blob = json.dumps(scenario.model_dump(mode="json", by_alias=True), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()

