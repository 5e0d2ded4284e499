"""Loading scenarios: YAML files, ``base:`` overlays, formulas, and typed what-if changes.

Every input is read defensively: YAML through one reader (:func:`read_yaml_value`) that bounds
the file's size, its nesting and what its aliases expand to before building anything; trees
from Python or JSON are bounded by :func:`~retwin.scenario.data.check_tree_shape`; numbers,
text and formulas by the schema and the formula evaluator. Problems are collected, not raised
at the first: a :class:`~retwin.errors.ScenarioError` lists every problem found, one per line.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from retwin._kept import Kept
from retwin.errors import ScenarioError
from retwin.scenario.data import (
    MAX_NESTING,
    check_tree_shape,
    models_dir,
    resolve_formulas_collect,
)
from retwin.scenario.kinds import KINDS, check_change, rewrite
from retwin.scenario.paths import item_key as _item_key
from retwin.scenario.paths import locate_path
from retwin.scenario.schema import Change, Scenario

__all__ = [
    "CHANGE_ADAPTER",
    "DataKept",
    "apply_changes",
    "available_models",
    "load_scenario",
    "load_with_baseline",
    "locate_path",
    "parse_changes",
    "read_yaml",
    "read_yaml_value",
    "resolve_model",
    "scenario_hash",
    "scenario_texts",
]

#: Parses one change of any kind (the ``Change`` union); one adapter for the package.
CHANGE_ADAPTER: TypeAdapter[Change] = TypeAdapter(Change)
_MAX_BASE_DEPTH = 8

#: Bounds of a YAML file (scenario, what-if, change or study spec), checked while it is parsed,
#: before anything is built: its size, its nesting, how many aliases it uses and how many
#: values it holds once its aliases are expanded (a "billion laughs" file expands to 1e9).
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_ALIASES = 500
MAX_YAML_VALUES = 200_000

#: libyaml's loader when PyYAML was built with it (much faster); the bounds hold for either.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def available_models() -> list[str]:
    """Names of the reference models shipped in ``models/`` (without ``.yaml``)."""
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _shown(value: Any, width: int = 60) -> str:
    """``repr(value)``, shortened; an int too long for ``repr`` is described instead."""
    try:
        return _short(repr(value), width)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return f"an integer of {value.bit_length()} bits"


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: no such file
        return False


def _find(ref: str, relative_to: Path | None) -> Path:
    candidates = []
    p = Path(ref)
    if relative_to is not None and not p.is_absolute():
        candidates += [relative_to / ref, relative_to / f"{ref}.yaml"]
    candidates += [p, Path(f"{ref}.yaml"), models_dir() / ref, models_dir() / f"{ref}.yaml"]
    if relative_to is not None:
        candidates += [relative_to.parent / f"{ref}.yaml"]
    for c in candidates:
        if _is_file(c):
            return c
    raise ScenarioError([("", f"scenario {_short(ref)!r} not found (a path, or one of: "
                              f"{', '.join(available_models())})")])


def read_yaml_value(path: Path) -> Any:
    """The value a YAML (or JSON) file holds: the one reader of every scenario, what-if,
    change and study file.

    Refuses, as :class:`ScenarioError` naming the file, the line and the bound: a file larger
    than :data:`MAX_YAML_BYTES`, not UTF-8 text, not valid YAML, nesting deeper than
    :data:`~retwin.scenario.data.MAX_NESTING`, using more than :data:`MAX_YAML_ALIASES`
    aliases, or expanding (through its aliases) to more than :data:`MAX_YAML_VALUES` values.
    The bounds are checked on the event stream, before any value is built, so a hostile file
    costs neither memory nor time.
    """
    name = path.name
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ScenarioError([("", f"{name}: cannot be read ({exc.strerror or exc})")]) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ScenarioError([("", f"{name}: larger than {MAX_YAML_BYTES // 1024 // 1024} MiB; "
                                  "a scenario, change or study file must be smaller")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError([("", f"{name}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                  f"offset {exc.start}); is it a scenario file?")]) from None
    key = (hashlib.sha256(raw).digest(), _YAML_LOADER)
    kept = _READ.get(key)
    if kept is not None:
        return _copied(kept[0])
    try:
        _check_yaml_events(text)
        value = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: plain data only
        _READ.put(key, (value, len(raw)))
        return _copied(value)
    except _YamlBound as exc:
        raise ScenarioError([("", f"{name}: {exc}")]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([("", f"{name}: not valid YAML: {_yaml_problem(exc)}")]) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # a scalar the YAML constructors cannot build (2025-13-45, an int of 5000 digits)
        raise ScenarioError([("", f"{name}: not valid YAML: {_short(str(exc), 200)}")]) \
            from None


#: The values of the files read lately (and their sizes), by a digest of their bytes (and the
#: loader): a file read again as it was (a study's base, for each study) is not parsed (nor
#: its bounds checked) again. Each reader gets its own copy (:func:`_copied`). Up to 16 files
#: and 8 MiB of them.
_READ: Kept[tuple[Any, int]] = Kept(max_items=16, max_bytes=8 * 1024 * 1024,
                                    size=lambda kept: kept[1])


def _copied(value: Any) -> Any:
    """A copy of a YAML value: its mappings, lists and sets new, the rest (text, numbers,
    dates: immutable) shared."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, set):
        return set(value)
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (:func:`read_yaml_value`); ``ScenarioError`` if it is
    not valid YAML or no mapping."""
    tree = read_yaml_value(path)
    if not isinstance(tree, dict):
        raise ScenarioError([("", f"{path.name}: must be a mapping at the top level")])
    return tree


class _YamlBound(Exception):
    """A YAML stream breaks one of the reader's bounds (the message says which, and where)."""


def _check_yaml_events(text: str) -> None:
    """Walk the event stream (no values built) and enforce nesting, alias and size bounds.

    Each anchor's expanded size (values) and height (levels of nesting) is measured when its
    node ends, so an alias counts as everything it stands for, and nesting reached through
    aliases counts too.
    """
    values = aliases = depth = 0
    # per open collection: its anchor, the count before it, the deepest level inside it
    frames: list[list[Any]] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, height)

    def where(event: Any) -> str:
        m = event.start_mark
        return f" (line {m.line + 1}, column {m.column + 1})" if m is not None else ""

    def reach(level: int, event: Any) -> None:
        if level > MAX_NESTING:
            raise _YamlBound(f"nests deeper than {MAX_NESTING} levels{where(event)}")
        if frames and level > frames[-1][2]:
            frames[-1][2] = level

    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            values += 1
            depth += 1
            reach(depth, event)
            frames.append([event.anchor, values - 1, depth])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before, deepest = frames.pop()
            if anchor is not None:
                anchors[anchor] = (values - before, deepest - depth + 1)
            depth -= 1
            if frames and deepest > frames[-1][2]:
                frames[-1][2] = deepest
        elif isinstance(event, yaml.ScalarEvent):
            values += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise _YamlBound(f"uses more than {MAX_YAML_ALIASES} aliases{where(event)}")
            size, height = anchors.get(event.anchor or "", (1, 0))
            values += size
            reach(depth + height, event)
        if values > MAX_YAML_VALUES:
            raise _YamlBound(f"holds more than {MAX_YAML_VALUES:,} values once its aliases are "
                             f"expanded{where(event)}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without quoting the file (it may not be a scenario at all)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x) or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return _short(what, 200) + at
    if isinstance(exc, yaml.reader.ReaderError):
        ch = exc.character
        code = f" #x{ch:04x}" if isinstance(ch, int) else ""
        return f"{exc.reason}{code} at position {exc.position}"
    return _short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)


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


#: What may stand at the top of a scenario file (its fields by YAML name, and ``base``).
_SCENARIO_KEYS = frozenset(
    [f.alias or n for n, f in Scenario.model_fields.items()] + ["base"])


def _resolve_tree(
    tree: dict[str, Any], here: Path | None, chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """Merge ``tree`` over its ``base:`` chain; ``chain`` holds the files already on it."""
    base_ref = tree.get("base")
    tree = {k: v for k, v in tree.items() if k != "base"}
    if base_ref is None:
        return tree
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise ScenarioError([("base", "must name a scenario file or a reference model "
                                      f"(got {type(base_ref).__name__})")])
    base_path = _find(base_ref, here)
    seen = [p.resolve() for p in chain]
    if base_path.resolve() in seen:
        loop = chain[seen.index(base_path.resolve()):]
        names = " -> ".join(p.name for p in (*loop, base_path))
        raise ScenarioError([("base", f"overlays form a cycle: {names}")])
    if len(chain) > _MAX_BASE_DEPTH:
        raise ScenarioError([("base", f"overlays nest deeper than {_MAX_BASE_DEPTH} levels")])
    base_tree = read_yaml(base_path)
    unknown = [k for k in base_tree if k not in _SCENARIO_KEYS]
    if unknown:
        # say what is wrong with the file, but never quote its content: it may be anything
        raise ScenarioError([("base", f"{_short(base_ref)!r} is not a scenario file: "
                                      f"{len(unknown)} of its {len(base_tree)} top-level "
                                      "keys are not scenario fields")])
    return _merge(_resolve_tree(base_tree, base_path.parent, (*chain, base_path)), tree)


def error_location(tree: Any, loc: tuple[Any, ...], name_keys: tuple[str, ...] = ("id",)) -> str:
    """``plants[3](jl_mag).capacity_tpa`` from a pydantic error location in ``tree``.

    A list item is labelled with the first of ``name_keys`` it has; union tags (a change's
    ``kind``, member class names, scalar type names) are left out as they are no fields.
    """
    parts: list[str] = []
    node = tree
    tag_skipped: Any = None  # the node whose union tag was left out (a tag comes once)
    for item in loc:
        is_key = isinstance(node, dict) and item in node
        if isinstance(item, int) and not is_key:
            label = f"[{_shown(item)}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, dict):
                    name = next((node[k] for k in name_keys if isinstance(node.get(k), str)), None)
                    if name is not None:
                        label += f"({_short(name, 40)})"
            else:
                node = None
            parts.append(label)
        else:
            if isinstance(node, dict) and node.get("kind") == item and tag_skipped is not node:
                tag_skipped = node
                continue  # the tag of a discriminated union (a change's kind)
            label = _shown(item) if isinstance(item, int) else str(item)
            if not is_key and (label[:1].isupper() or "[" in label
                               or label in ("float", "int", "bool", "str", "date", "none")
                               or label.startswith(("constrained-", "function-"))):
                continue  # union members and validator labels add nothing for the reader
            parts.append(("." if parts else "") + _short(label, 60))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)



def _problems(
    exc: ValidationError, tree: Any, skip: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """One ``(path, message)`` per pydantic error (the value shown, shortened); errors at a
    path in ``skip`` (a formula already reported there) are left out."""
    out: list[tuple[str, str]] = []
    skipped = set(skip)
    for err in exc.errors(include_url=False):
        where = error_location(tree, tuple(err["loc"]))
        if where in skipped:
            continue
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
                line = f"{line} (got {_shown(shown)})"
            out.append((where, line))
    return out


def validate_tree(tree: dict[str, Any], skip: Iterable[str] = ()) -> Scenario:
    """Validate a resolved tree; raise :class:`ScenarioError` with one line per problem
    (leaving out problems at the paths in ``skip``, already reported)."""
    try:
        return Scenario.model_validate(tree)
    except ValidationError as exc:
        raise ScenarioError(_problems(exc, tree, skip)) from None


def resolve_model(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A model file (or name, or mapping) with its ``base:`` overlays merged, formulas not yet
    evaluated: the tree :func:`load_scenario` validates."""
    if isinstance(source, Mapping):
        check_tree_shape(source)  # a mapping from Python: bounded like a file
        return _resolve_tree(dict(source), None)
    path = _find(str(source), None)
    return _resolve_tree(read_yaml(path), path.parent, (path,))


def load_scenario(
    source: str | Path | Mapping[str, Any], *, include_changes: bool = True
) -> Scenario:
    """Load a scenario from a YAML path, a reference-model name, or a mapping.

    ``base:`` overlays are resolved (the overlay's keys win, lists of items merge by ``id``,
    ``changes`` accumulate), ``"= …"`` formulas are evaluated against ``data/``, and the result
    is validated; an invalid scenario raises :class:`~retwin.errors.ScenarioError`. The
    file's ``changes`` are applied with :func:`apply_changes` (``include_changes=False`` gives
    the scenario without them: the baseline a what-if file is compared with).

    Every problem is reported at once: bad formulas, schema and cross-field problems of the
    scenario, and (with ``include_changes``) every problem of every change.
    """
    return _load(source, include_changes)[0]


def load_with_baseline(source: str | Path | Mapping[str, Any]) -> tuple[Scenario,
                                                                          Scenario | None]:
    """:func:`load_scenario` and, when the file holds ``changes``, the scenario without them
    (the baseline a what-if file is compared with; ``None`` without changes): the file is
    read, resolved and validated once for both."""
    scenario, plain, changes = _load(source, True)
    return scenario, (plain if changes else None)


def _load(source: str | Path | Mapping[str, Any], include_changes: bool
          ) -> tuple[Scenario, Scenario, list[Any]]:
    """The scenario (with its changes if asked), the scenario without its changes, and the
    changes as written."""
    tree = resolve_model(source)
    changes = tree.pop("changes", None) or []
    tree, bad_formulas = resolve_formulas_collect(tree)
    problems = [(where, msg) for where, _, msg in bad_formulas]
    if not isinstance(changes, list):
        problems.append(("changes", f"must be a list of changes (got {type(changes).__name__})"))
        changes = []
    scenario: Scenario | None = None
    try:
        scenario = validate_tree(tree, skip=[error_location(tree, loc)
                                             for _, loc, _ in bad_formulas])
    except ScenarioError as exc:
        problems += exc.problems
    if include_changes:
        try:
            if scenario is not None and not problems:
                return apply_changes(scenario, changes), scenario, changes
            parse_changes(changes)  # the scenario is invalid: check the changes alone
        except ScenarioError as exc:
            problems += exc.problems
    if problems or scenario is None:
        raise ScenarioError(problems)
    return scenario, scenario, changes


def parse_changes(changes: Iterable[Any]) -> list[Change]:
    """Validate a list of change mappings (or change models) into typed changes.

    Every problem of every change is reported in one :class:`ScenarioError`: its bad
    formulas and fields, and the rules of its kind (``give exactly one of …``) checked on the
    fields that are good.
    """
    parsed = _parse_each(changes)
    problems = [p for _, _, probs in parsed for p in probs]
    if problems:
        raise ScenarioError(problems)
    return [ch for ch, ok, _ in parsed if ok]


#: Stands for a field that failed validation when a change's own rules are checked on the
#: rest of it (so ``give exactly one of`` counts a field that was given, even if invalid).
_INVALID = object()


def _parse_each(changes: Iterable[Any]) -> list[tuple[Any, bool, list[tuple[str, str]]]]:
    """Each change validated on its own, with its problems: ``(change, True, [])``, or
    ``(partial, False, problems)`` where the partial holds the fields that are valid on their
    own (None for the others), so that it can still be checked against a scenario."""
    raw = [c.model_dump(by_alias=True) if hasattr(c, "model_dump") else c for c in changes]
    raw, bad_formulas = resolve_formulas_collect(raw, path="changes")
    out: list[tuple[Any, bool, list[tuple[str, str]]]] = []
    for i, item in enumerate(raw):
        problems = [(where, msg) for where, loc, msg in bad_formulas if loc[0] == i]
        try:
            change = CHANGE_ADAPTER.validate_python(item)
            if not problems:
                out.append((change, True, []))
                continue
        except ValidationError as exc:
            skip = {where for where, _ in problems}
            for p, m in _problems(exc, item):
                where = f"changes[{i}].{p}" if p and not p.startswith("[") else f"changes[{i}]{p}"
                if where not in skip:  # a formula that failed there is reported already
                    problems.append((where, m))
        rules = _partial_change(item, invalid=_INVALID)
        if rules is not None:
            for dec in type(rules).__pydantic_decorators__.model_validators.values():
                if dec.info.mode != "after":
                    continue
                try:
                    dec.func(rules)
                except ValueError as exc:
                    problems.append((f"changes[{i}]", str(exc)))
                except (TypeError, AttributeError):
                    pass  # the rule reads a field that is itself invalid (reported above)
        out.append((_partial_change(item, invalid=None), False, _unique(problems)))
    return out


def _unique(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


@cache
def _field_adapter(cls: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = cls.model_fields[name]
    kind: Any = info.annotation
    if info.metadata:
        kind = Annotated[(kind, *info.metadata)]
    return TypeAdapter(kind, config=ConfigDict(allow_inf_nan=False))


def _partial_change(item: Any, *, invalid: Any) -> Any:
    """The fields of a change mapping that are valid on their own, built without the change's
    rules (``model_construct``); a field that is not valid becomes ``invalid``, a missing
    required one None. None when ``item`` names no known kind."""
    if not isinstance(item, dict):
        return None
    kind = item.get("kind")
    cls = KINDS[kind].model if isinstance(kind, str) and kind in KINDS else None
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        key = info.alias if info.alias in item else name
        if key in item:
            try:
                values[name] = _field_adapter(cls, name).validate_python(item[key])
            except ValidationError:
                values[name] = invalid
        elif info.is_required():
            values[name] = None
    return cls.model_construct(**values)


def apply_changes(scenario: Scenario, changes: Iterable[Any]) -> Scenario:
    """A new scenario: ``scenario`` with ``changes`` applied. The input is never modified.

    Plant additions and retirements and parameter changes rewrite the scenario's data; the
    timed changes (quota, price, capacity, outage, demand, trade, reserve) are appended to
    ``scenario.changes`` and played by the engine on their dates. Each change is checked
    against the scenario (unknown plant, quota, market…). A scenario whose data a change
    rewrote is validated again whole; one that only gained changes the engine plays keeps
    its data (valid, frozen, shared with ``scenario``) and lists them after its own.
    """
    typed = _parse_each(changes)
    if not typed:
        return scenario
    tree: dict[str, Any] | None = None  # the scenario's data, once a change rewrites it
    played: list[dict[str, Any]] = []  # the changes the engine plays, as they are listed
    problems: list[tuple[str, str]] = []
    current, dirty = scenario, False
    for i, (ch, ok, parse_problems) in enumerate(typed):
        problems += parse_problems
        if ch is None:
            continue
        if dirty and tree is not None:
            # a change may name what an earlier change of the same list added
            try:
                current = validate_tree(copy.deepcopy(tree))
            except ScenarioError as exc:
                problems += exc.problems  # checked against the last valid state below
        dirty = False
        check_change(current, i, ch, problems)
        if not ok:
            continue  # reported; the rest of it was still checked against the scenario
        if ch.reaches == "data":
            if tree is None:  # (new containers: ours to change)
                tree = scenario.model_dump(by_alias=True, mode="json")
                tree.setdefault("changes", []).extend(played)
            dirty = True
            problems += rewrite(tree, i, ch, scenario)
        else:  # played by the engine on its dates
            entry = ch.model_dump(by_alias=True, mode="json")
            played.append(entry)
            if tree is not None:
                tree.setdefault("changes", []).append(entry)
    if problems:
        raise ScenarioError(_unique(problems))
    if tree is not None:
        return validate_tree(tree)
    # Only changes the engine plays: the scenario's data is as it was (valid, and frozen, so
    # shared), and its list of changes grows by these, each read back from its record as
    # validating the whole tree would read it -- the same scenario, without validating the
    # rest again. The scenario's own rules see changes only to refuse those that rewrite it.
    return scenario.model_copy(update={"changes": [
        *scenario.changes, *(CHANGE_ADAPTER.validate_python(e) for e in played)]})


def scenario_hash(scenario: Scenario | dict[str, Any]) -> str:
    """A stable sha256 of the scenario's content (names and order included); of its
    ``model_dump(mode="json", by_alias=True)`` when given that instead (the same hash).

    The hash is of that tree's JSON with sorted keys, written from each field's text
    (:func:`_field_texts`: those of the data made once for a baseline's what-ifs)."""
    if isinstance(scenario, dict):
        blob = json.dumps(scenario, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
    return _hash_of(_field_texts(scenario))


#: The scenario's fields besides its changes (its data).
_DATA_FIELDS = tuple(f for f in Scenario.model_fields if f != "changes")
#: Each field's key in a scenario's tree (its alias, if it has one), in declaration order.
_TREE_KEYS = tuple(info.serialization_alias or info.alias or name
                   for name, info in Scenario.model_fields.items())
V = TypeVar("V")


class DataKept(Generic[V]):
    """What follows from a scenario's data alone (every field but its changes), made once
    per data and kept for the last ``max_items``: a baseline's what-ifs whose changes the
    engine plays share every one of those fields with it, object for object, and find it
    again by their identity (an equal scenario made otherwise makes it again). The fields
    are kept with the value, so no other object takes their identities meanwhile."""

    def __init__(self, max_items: int) -> None:
        self._kept: Kept[tuple[tuple[Any, ...], V]] = Kept(max_items=max_items)

    def get_or_make(self, sc: Scenario, make: Callable[[], V]) -> V:
        refs = tuple(getattr(sc, f) for f in _DATA_FIELDS)
        return self._kept.get_or_make(tuple(map(id, refs)), lambda: (refs, make()))[1]


#: Each field's texts (:func:`_texts`) of the last scenarios' data.
_DATA_TEXTS: DataKept[dict[str, tuple[str, str]]] = DataKept(max_items=8)


def _texts(value: Any) -> tuple[str, str]:
    """``value`` (a part of a scenario's tree) as JSON with sorted keys (what the hash is
    of), and as compact JSON (what a result's ``scenario.json`` holds)."""
    return (json.dumps(value, sort_keys=True, separators=(",", ":")),
            json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _field_texts(sc: Scenario) -> dict[str, tuple[str, str]]:
    """:func:`_texts` of each field of ``sc`` by its key in the tree: the data's made once
    for what shares it (:class:`DataKept`), the changes' each time."""
    texts = dict(_DATA_TEXTS.get_or_make(sc, lambda: {
        k: _texts(v) for k, v in sc.model_dump(mode="json", by_alias=True,
                                                exclude={"changes"}).items()}))
    ((key, changes),) = sc.model_dump(mode="json", by_alias=True,
                                       include={"changes"}).items()
    texts[key] = _texts(changes)
    return texts


def _hash_of(texts: dict[str, tuple[str, str]]) -> str:
    """The sha256 of the tree whose fields' texts are ``texts``, keys sorted."""
    blob = "{" + ",".join(json.dumps(k) + ":" + texts[k][0] for k in sorted(texts)) + "}"
    return hashlib.sha256(blob.encode()).hexdigest()


def scenario_texts(sc: Scenario) -> tuple[str, str]:
    """The scenario's hash (:func:`scenario_hash`) and its tree
    (``model_dump(mode="json", by_alias=True)``) as compact JSON, non-ASCII kept, both
    written from its fields' texts (:func:`_field_texts`): the same bytes as writing the
    tree."""
    texts = _field_texts(sc)
    tree = "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + texts[k][1]
                          for k in _TREE_KEYS) + "}"
    return _hash_of(texts), tree

