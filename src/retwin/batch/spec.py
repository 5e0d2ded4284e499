"""Study specs: a base model, fixed changes, varied parameters, replications, seed.

A spec is YAML (or a mapping) validated by :class:`StudySpec` (``extra="forbid"``). A varied
parameter targets either a *change template* — a what-if change with one field left open,
e.g. the factor of a quota change — or a scenario *path* (``plants.<id>.capacity_tpa``), and
says how its values are chosen:

* ``mode: grid`` — listed ``values``, or ``range`` with ``n`` evenly spaced values; grid
  parameters combine as a cartesian product;
* ``mode: sample`` — ``n`` values drawn from ``range`` at random or by Latin hypercube
  (``sample: lhs``, the default); all sampled parameters are drawn together, as one
  ``n``-point design;
* ``mode: oat`` — one at a time: the centre (``base``, else the base model's value, else
  1 for a ``factor``) and ``±delta_frac`` around it (or an explicit ``range``), for
  sensitivity studies. One-at-a-time parameters are not mixed with the other modes.

Problems are reported one per line, naming the spec field (``vary[0](quota).range``), the
value and the rule, as :class:`~retwin.errors.ScenarioError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retwin.config import MAX_REPLICATIONS
from retwin.errors import ScenarioError
from retwin.scenario.load import error_location, read_yaml

__all__ = [
    "MAX_POINTS",
    "RESERVED_COLUMNS",
    "KpiSelector",
    "Range",
    "Scalar",
    "StudySpec",
    "VariedParameter",
    "load_spec",
    "spec_hash",
]

#: Most points one study may expand to (a guard against a grid that explodes).
MAX_POINTS: int = int(os.environ.get("RETWIN_MAX_POINTS", "100000"))

#: Columns of the points table; a parameter may not take one of these names.
RESERVED_COLUMNS = frozenset({"point", "index", "seed", "role", "parameter", "changes"})

Scalar = float | int | bool | str

#: Fields that name what a change acts on, in the order a default parameter name uses them.
_TARGET_FIELDS = ("quota", "material", "plant", "plant_id", "stage", "segment", "market")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-/@]*$")
_KPI = re.compile(r"^(?P<kpi>[a-z_]+(?:\.[a-z_]+)*)\.(?P<key>[^.@\s]+)(?:@(?P<year>\d{4}))?$")


def _plain(value: Any) -> Any:
    """JSON-able copy: dates (YAML reads ``2025-01-01`` as a date) become ISO strings."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Spec):
    """A closed interval ``[low, high]`` of a numeric parameter."""

    low: Annotated[float, Field(allow_inf_nan=False)]
    high: Annotated[float, Field(allow_inf_nan=False)]


class VariedParameter(_Spec):
    """One varied parameter: a change template's ``field``, or a scenario ``path``."""

    name: str | None = Field(None, description="Column name in the results (default: derived).")
    change: dict[str, Any] | None = Field(
        None, description="A what-if change without the varied field, e.g. {kind: quota, …}.")
    field: str | None = Field(
        None, description="The change field that varies (dotted for nested: plant.capacity_tpa).")
    path: str | None = Field(None, description="A scenario field, as in a parameter change.")
    mode: Literal["grid", "sample", "oat"] = "grid"
    values: list[Scalar] | None = None
    range: Range | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    sample: Literal["lhs", "random"] = "lhs"
    integer: bool = Field(False, description="Round values drawn from a range to integers.")
    base: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        None, description="oat: the centre value (default: the base model's, or 1 for a factor).")
    delta_frac: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="oat: low and high are base x (1 -/+ delta_frac).")

    @field_validator("change", mode="before")
    @classmethod
    def _plain_change(cls, v: Any) -> Any:
        return _plain(v) if isinstance(v, Mapping) else v

    @field_validator("values", mode="before")
    @classmethod
    def _plain_values(cls, v: Any) -> Any:
        return _plain(v) if isinstance(v, list | tuple) else v

    @property
    def label(self) -> str:
        """The parameter's name: given, or ``kind.target.field`` / the path."""
        if self.name:
            return self.name
        if self.path is not None:
            return self.path
        ch = self.change or {}
        target = next((str(ch[f]) for f in _TARGET_FIELDS if f in ch), None)
        parts = [str(ch.get("kind", "change"))] + ([target] if target else []) + [
            str(self.field)]
        return ".".join(parts)


@dataclass(frozen=True)
class KpiSelector:
    """A KPI to rank, ``kpi.key`` with an optional ``@year`` (else the mean over the years)."""

    label: str
    kpi: str
    key: str
    year: int | None

    @classmethod
    def parse(cls, text: str) -> KpiSelector:
        m = _KPI.match(text.strip())
        if m is None:
            raise ValueError(f"KPI {text!r} must read kpi.key or kpi.key@year, "
                             "e.g. value.group.total or output.stage.magnet@2025")
        year = m.group("year")
        return cls(text.strip(), m.group("kpi"), m.group("key"), int(year) if year else None)


class StudySpec(_Spec):
    """A batch study: sweeps, Monte Carlo and sensitivity over one base model."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str = ""
    base: Annotated[str, Field(min_length=1)] = Field(
        description="A reference model name (baotou-2024) or a path (relative to the spec).")
    changes: list[dict[str, Any]] = Field(
        default_factory=list, description="Changes every point shares (what-if changes).")
    vary: list[VariedParameter] = Field(default_factory=list)
    replications: Annotated[int, Field(ge=1, le=MAX_REPLICATIONS)] = 1
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    seeding: Literal["common", "independent"] = Field(
        "common", description="common: every point runs the same seeds (common random "
        "numbers); independent: each point its own seed from the study seed.")
    kpis: list[str] = Field(default_factory=lambda: ["value.group.total"],
                            description="KPIs to rank (sensitivity) and to show per point.")
    record: Literal["annual", "monthly", "daily"] = Field(
        "monthly", description="annual: KPIs only; monthly: plus monthly series; daily: "
        "plus daily series.")
    chunk_replications: Annotated[int, Field(ge=1, le=MAX_REPLICATIONS)] | None = Field(
        None, description="Replications per task and per result file (default 50; 5 with "
        "record: daily, whose tables are 30 times larger).")

    @field_validator("changes", mode="before")
    @classmethod
    def _plain_changes(cls, v: Any) -> Any:
        return _plain(v) if isinstance(v, list | tuple) else v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        problems = _check_spec(self)
        if problems:
            raise ValueError("\n".join(f"{p}: {m}" for p, m in problems))
        return self

    @property
    def chunk(self) -> int:
        """Replications per task: ``chunk_replications``, or the default for ``record``."""
        if self.chunk_replications is not None:
            return self.chunk_replications
        return 5 if self.record == "daily" else 50

    @property
    def is_oat(self) -> bool:
        return any(p.mode == "oat" for p in self.vary)

    @property
    def selectors(self) -> list[KpiSelector]:
        return [KpiSelector.parse(k) for k in self.kpis]

    def where(self, i: int) -> str:
        """How problems name the ``i``-th varied parameter: ``vary[i](label)``."""
        return f"vary[{i}]({self.vary[i].label})"


def _check_spec(spec: StudySpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    labels: dict[str, int] = {}
    paths: dict[str, int] = {}
    for i, p in enumerate(spec.vary):
        where = spec.where(i)
        problems += [(f"{where}{sub}", msg) for sub, msg in _check_parameter(p)]
        if p.label in labels:
            problems.append((f"{where}.name",
                             f"name {p.label!r} is already used by vary[{labels[p.label]}]; "
                             "give each parameter its own name"))
        labels.setdefault(p.label, i)
        if p.label in RESERVED_COLUMNS:
            problems.append((f"{where}.name", f"name {p.label!r} is reserved (a column of the "
                             f"points table: {', '.join(sorted(RESERVED_COLUMNS))})"))
        elif not _NAME.match(p.label):
            problems.append((f"{where}.name", f"name {p.label!r} must be letters, digits and "
                             "_ . + - / @ (no spaces)"))
        if p.path is not None:
            if p.path in paths:
                problems.append((f"{where}.path", f"path {p.path!r} is already varied by "
                                 f"vary[{paths[p.path]}]"))
            paths.setdefault(p.path, i)
    modes = {p.mode for p in spec.vary}
    if "oat" in modes and len(modes) > 1:
        problems.append(("vary", "one-at-a-time (oat) parameters cannot be mixed with grid or "
                         "sample ones: a sensitivity study moves one parameter at a time"))
    sampled = [(i, p) for i, p in enumerate(spec.vary) if p.mode == "sample"]
    for i, p in sampled[1:]:
        j, first = sampled[0]
        if p.n != first.n or p.sample != first.sample:
            problems.append((f"{spec.where(i)}.n", f"sampled parameters are drawn together: "
                             f"n(={p.n}) and sample(={p.sample}) must equal those of "
                             f"vary[{j}] (n={first.n}, sample={first.sample})"))
    for k, text in enumerate(spec.kpis):
        try:
            KpiSelector.parse(text)
        except ValueError as exc:
            problems.append((f"kpis[{k}]", str(exc)))
    if not problems:
        n = count_points(spec)
        if n > MAX_POINTS:
            problems.append(("vary", f"the study expands to {n:,} points; the limit is "
                             f"{MAX_POINTS:,} (RETWIN_MAX_POINTS)"))
    return problems


def _check_parameter(p: VariedParameter) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if (p.change is None) == (p.path is None):
        return [("", "give exactly one of change (a change template with field) or path")]
    if p.change is not None:
        kind = p.change.get("kind")
        if not isinstance(kind, str):
            out.append((".change.kind", "a change template needs a kind (quota, price, "
                        "capacity, plant, outage, demand, trade, reserve)"))
        elif kind == "parameter":
            out.append((".change.kind", "vary a scenario field with path: instead of a "
                        "parameter change template"))
        if p.field is None:
            out.append((".field", "a change template needs field: the change field that "
                        "varies (e.g. factor)"))
        elif _has_field(p.change, p.field):
            out.append((".field", f"the template already sets {p.field!r}; leave it out, "
                        "the varied values fill it"))
    if p.path is not None and p.field is not None:
        out.append((".field", "field belongs to a change template; a path names the field "
                    "itself"))
    if p.range is not None and not p.range.low < p.range.high:
        out.append((".range", f"empty range: low(={p.range.low:g}) must be < "
                    f"high(={p.range.high:g})"))
    given = {k for k in ("values", "range", "n", "delta_frac", "base")
             if getattr(p, k) is not None}
    need: dict[str, tuple[set[str], str]] = {
        "grid": ({"values", "range", "n"}, "values, or range and n (evenly spaced values)"),
        "sample": ({"range", "n"}, "range and n (the number of values drawn)"),
        "oat": ({"delta_frac", "range", "base"}, "delta_frac (±, as a fraction of base) or "
                "range"),
    }
    allowed, how = need[p.mode]
    for extra in sorted(given - allowed):
        out.append((f".{extra}", f"{extra} does not apply to mode {p.mode} (it needs {how})"))
    if p.mode == "grid":
        if p.values is not None and (p.range is not None or p.n is not None):
            out.append(("", "give values, or range and n, not both"))
        elif p.values is None and (p.range is None or p.n is None):
            out.append(("", f"mode grid needs {how}"))
        elif p.values is None and p.n is not None and p.n < 2:
            out.append((".n", f"n(={p.n}) must be >= 2 for evenly spaced values from a range"))
    elif p.mode == "sample" and (p.range is None or p.n is None):
        out.append(("", f"mode sample needs {how}"))
    elif p.mode == "oat" and (p.delta_frac is None) == (p.range is None):
        out.append(("", f"mode oat needs exactly one of {how}"))
    if p.values is not None:
        if not p.values:
            out.append((".values", "values must not be empty"))
        seen: dict[str, int] = {}
        for j, v in enumerate(p.values):
            key = canonical_json(v)
            if key in seen:
                out.append((f".values[{j}]", f"duplicate value {v!r} (as values[{seen[key]}])"))
            seen.setdefault(key, j)
    if p.integer and p.range is None and p.delta_frac is None:
        out.append((".integer", "integer applies to values taken from a range or delta_frac"))
    if p.integer and p.range is not None and p.mode != "oat" and (
        math.floor(p.range.high) < math.ceil(p.range.low)
    ):
        out.append((".range", f"no integer lies in [{p.range.low:g}, {p.range.high:g}]"))
    return out


def _has_field(template: Mapping[str, Any], dotted: str) -> bool:
    node: Any = template
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def count_points(spec: StudySpec) -> int:
    """How many points the spec expands to (without expanding it)."""
    grid = [p for p in spec.vary if p.mode == "grid"]
    sampled = [p for p in spec.vary if p.mode == "sample"]
    oat = [p for p in spec.vary if p.mode == "oat"]
    if oat:
        return 1 + 2 * len(oat)
    n = 1
    for p in grid:
        n *= len(p.values) if p.values is not None else int(p.n or 0)
    if sampled:
        n *= int(sampled[0].n or 0)
    return n


def canonical_json(value: Any) -> str:
    """JSON that equal values share: sorted keys, ``1`` and ``1.0`` written alike."""

    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        return _plain(v)

    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_hash(spec: StudySpec) -> str:
    """sha256 of the spec's content (every field, defaults included)."""
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _location(tree: Any, loc: tuple[Any, ...]) -> str:
    """``vary[1](quota).range.low`` from a pydantic location."""
    return error_location(tree, loc, name_keys=("name",))


def _spec_problems(exc: ValidationError, tree: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for e in exc.errors(include_url=False):
        msg = str(e["msg"]).removeprefix("Value error, ")
        where = _location(tree, tuple(e["loc"]))
        for line in msg.splitlines():
            prob: tuple[str, str]
            if not e["loc"] and ": " in line:
                head, tail = line.split(": ", 1)
                prob = (head, tail)
            else:
                shown = e.get("input")
                if e["type"] not in ("value_error", "missing") and not isinstance(
                        shown, dict | list):
                    line = f"{line} (got {shown!r})"
                prob = (where, line)
            if prob not in seen:  # a value failing every member of a union, once
                seen.add(prob)
                out.append(prob)
    return out


def load_spec(source: str | Path | Mapping[str, Any] | StudySpec) -> tuple[StudySpec, Path]:
    """Read and validate a study spec; returns it with the folder its ``base`` is relative to.

    ``source`` is a YAML file, a mapping, or a spec. Raises
    :class:`~retwin.errors.ScenarioError` with one line per problem.
    """
    if isinstance(source, StudySpec):
        return source, Path.cwd()
    if isinstance(source, Mapping):
        tree, here = dict(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ScenarioError([("", f"study spec {str(source)!r} not found")])
        tree = read_yaml(path)
        here = path.resolve().parent
    try:
        return StudySpec.model_validate(tree), here
    except ValidationError as exc:
        raise ScenarioError(_spec_problems(exc, tree)) from None
