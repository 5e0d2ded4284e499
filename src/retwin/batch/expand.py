"""Pure helpers that turn a study spec into points, seeds and tasks.

Nothing here reads files or the clock: the same spec gives the same points, ids and seeds in
every process, on every machine (the base model is passed in where a centre value is read
from it).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retwin.batch.spec import Scalar, StudySpec, VariedParameter, canonical_json
from retwin.errors import ScenarioError
from retwin.scenario.load import locate_path
from retwin.scenario.schema import Scenario

__all__ = [
    "Point",
    "Task",
    "centre_value",
    "expand_points",
    "grid_values",
    "latin_hypercube",
    "make_change",
    "oat_bounds",
    "path_value",
    "plan_tasks",
    "point_id",
    "point_seed",
    "sample_matrix",
]

#: Entropy word that keeps the sampling stream apart from the runs' streams.
_SAMPLING_STREAM = 0x5A4D504C


@dataclass(frozen=True)
class Point:
    """One combination of parameter values; all its replications share its seed.

    ``changes`` are the varied changes only (the spec's fixed ``changes`` apply to every
    point). ``role`` is ``point`` for grid and sampled points, and ``base``, ``low`` or
    ``high`` in a one-at-a-time study, where ``parameter`` names the one that moved.
    """

    index: int
    id: str
    values: dict[str, Scalar]
    changes: tuple[dict[str, Any], ...]
    seed: int
    role: str = "point"
    parameter: str | None = None


@dataclass(frozen=True)
class Task:
    """Replications ``first .. stop-1`` of one point: the unit of work and of a result file."""

    point: int
    point_id: str
    changes: tuple[dict[str, Any], ...]
    seed: int
    chunk: int
    first: int
    stop: int

    @property
    def runs(self) -> int:
        return self.stop - self.first


def point_id(changes: Sequence[Mapping[str, Any]], occurrence: int = 0) -> str:
    """A stable id from a hash of the point's changes: ``p`` and 12 hex digits.

    The letter keeps the id a string for every reader that infers partition types.
    ``occurrence`` tells apart points with equal changes (a sample may repeat a value).
    """
    key: Any = list(changes) if occurrence == 0 else {"changes": list(changes),
                                                       "occurrence": occurrence}
    return "p" + hashlib.sha256(canonical_json(key).encode()).hexdigest()[:12]


def point_seed(seed: int, index: int, seeding: str) -> int:
    """The seed of point ``index``: the study seed itself (``common``: every point sees the
    same outages, prices and demand noise), or child ``index`` of
    ``numpy.random.SeedSequence(seed)`` (``independent``). Replication ``r`` of a point runs
    with :func:`retwin.engine.run.replication_seed` ``(point seed, r)``."""
    if seeding == "common":
        return int(seed)
    if seeding != "independent":
        raise ValueError(f"seeding(={seeding!r}) must be common or independent")
    child = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _tidy(x: float) -> float:
    """Drop floating-point dust from evenly spaced values (0.30000000000000004 -> 0.3)."""
    return float(f"{x:.12g}")


def grid_values(p: VariedParameter) -> list[Scalar]:
    """The values of a grid parameter: as listed, or ``n`` evenly spaced over its range."""
    if p.values is not None:
        return list(p.values)
    assert p.range is not None and p.n is not None
    lo, hi = p.range.low, p.range.high
    if p.integer:
        lo, hi = math.ceil(lo), math.floor(hi)
        if p.n > hi - lo + 1:
            raise ValueError(f"n(={p.n}) distinct integers do not fit in [{lo}, {hi}]")
        return [_round(x) for x in np.linspace(lo, hi, p.n)]
    return [_tidy(x) for x in np.linspace(lo, hi, p.n)]


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, d)`` points in ``[0, 1)``: in every column each of the ``n`` equal strata holds
    exactly one point (McKay, Beckman & Conover 1979)."""
    u = np.empty((n, d))
    for j in range(d):
        u[:, j] = (rng.permutation(n) + rng.random(n)) / n
    return u


def sample_matrix(spec: StudySpec) -> list[dict[str, Scalar]]:
    """The joint sample of the spec's ``mode: sample`` parameters, one dict per row
    (``[{}]`` when nothing is sampled). Drawn from the study seed's own sampling stream."""
    sampled = [p for p in spec.vary if p.mode == "sample"]
    if not sampled:
        return [{}]
    n, method = int(sampled[0].n or 0), sampled[0].sample
    rng = np.random.default_rng(np.random.SeedSequence([int(spec.seed), _SAMPLING_STREAM]))
    u = latin_hypercube(n, len(sampled), rng) if method == "lhs" else rng.random(
        (n, len(sampled)))
    rows: list[dict[str, Scalar]] = [{} for _ in range(n)]
    for j, p in enumerate(sampled):
        assert p.range is not None
        lo, hi = p.range.low, p.range.high
        for i in range(n):
            if p.integer:
                ilo, ihi = math.ceil(lo), math.floor(hi)
                rows[i][p.label] = min(ihi, ilo + math.floor(u[i, j] * (ihi - ilo + 1)))
            else:
                rows[i][p.label] = float(lo + u[i, j] * (hi - lo))
    return rows


def path_value(tree: Mapping[str, Any], path: str) -> Any:
    """The value at a parameter path (``plants.<id>.capacity_tpa``) of a scenario mapping,
    addressed as a ``parameter`` change addresses it; ``KeyError`` naming the missing part."""
    node, field = locate_path(tree, path)
    return node[field]


def centre_value(p: VariedParameter, base: Scenario | Mapping[str, Any] | None) -> float:
    """The centre of a one-at-a-time parameter: ``base`` if given; else the base model's
    value at ``path``; else 1 for a change's ``factor``."""
    if p.base is not None:
        return float(p.base)
    if p.path is not None:
        if base is None:
            raise ValueError("needs the base model to read its centre value (or give base)")
        tree = base.model_dump(mode="json", by_alias=True) if isinstance(base, Scenario) \
            else base
        try:
            v = path_value(tree, p.path)
        except KeyError as exc:
            raise ValueError(f"path {p.path!r}: {exc.args[0]}") from None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"path {p.path!r} holds {v!r}, not a number; give base")
        return float(v)
    if p.field is not None and p.field.rpartition(".")[2] == "factor":
        return 1.0
    raise ValueError(f"a one-at-a-time {p.field!r} needs base (the centre value)")


def oat_bounds(p: VariedParameter, centre: float) -> tuple[Scalar, Scalar]:
    """Low and high values of a one-at-a-time parameter around ``centre``."""
    if p.range is not None:
        lo, hi = p.range.low, p.range.high
    else:
        assert p.delta_frac is not None
        a, b = centre * (1 - p.delta_frac), centre * (1 + p.delta_frac)
        lo, hi = min(a, b), max(a, b)
    if p.integer:
        ilo, ihi = _round(lo), _round(hi)
        if ilo >= ihi:
            raise ValueError(f"low and high round to the same integer ({ilo})")
        return ilo, ihi
    if not lo < hi:
        raise ValueError(f"empty range around base(={centre:g}): low(={lo:g}) must be < "
                         f"high(={hi:g}); give range: {{low, high}}")
    return _tidy(lo), _tidy(hi)


def make_change(p: VariedParameter, value: Scalar) -> dict[str, Any]:
    """The change a parameter makes at ``value``: its template with ``field`` filled in, or
    a ``parameter`` change at its path."""
    if p.path is not None:
        return {"kind": "parameter", "path": p.path, "value": value}
    assert p.change is not None and p.field is not None
    out = copy.deepcopy(p.change)
    node = out
    *parents, leaf = p.field.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def expand_points(spec: StudySpec, base: Scenario | Mapping[str, Any] | None = None
                  ) -> list[Point]:
    """Every point of the study, in a fixed order: grid values in a cartesian product (the
    first parameter slowest), each combined with every sampled row; or, one at a time, the
    base point then each parameter's low and high point. ``base`` (the base model) is read
    only for the centre of a one-at-a-time ``path`` parameter without ``base``."""
    rows: list[tuple[dict[str, Scalar], str, str | None]] = []
    oat = [(i, p) for i, p in enumerate(spec.vary) if p.mode == "oat"]
    if oat:
        centres: dict[str, Scalar] = {}
        bounds: dict[str, tuple[Scalar, Scalar]] = {}
        problems: list[tuple[str, str]] = []
        for i, p in oat:
            try:
                c = centre_value(p, base)
                centres[p.label] = _round(c) if p.integer else c
                bounds[p.label] = oat_bounds(p, c)
            except ValueError as exc:
                problems.append((spec.where(i), str(exc)))
        if problems:
            raise ScenarioError(problems)
        rows.append((dict(centres), "base", None))
        for _, p in oat:
            for role, v in zip(("low", "high"), bounds[p.label], strict=True):
                rows.append(({**centres, p.label: v}, role, p.label))
    else:
        grid = [p for p in spec.vary if p.mode == "grid"]
        lists: list[list[Scalar]] = []
        for i, p in enumerate(spec.vary):
            if p.mode == "grid":
                try:
                    lists.append(grid_values(p))
                except ValueError as exc:
                    raise ScenarioError([(f"{spec.where(i)}.n", str(exc))]) from None
        samples = sample_matrix(spec)
        for combo in itertools.product(*lists):
            fixed = {p.label: v for p, v in zip(grid, combo, strict=True)}
            for s in samples:
                values = {**fixed, **s}
                rows.append(({p.label: values[p.label] for p in spec.vary}, "point", None))
    points: list[Point] = []
    seen: dict[str, int] = {}
    for index, (values, role, parameter) in enumerate(rows):
        changes = tuple(make_change(p, values[p.label]) for p in spec.vary)
        plain = point_id(changes)
        occurrence = seen.get(plain, 0)
        seen[plain] = occurrence + 1
        points.append(Point(index=index, id=point_id(changes, occurrence), values=values,
                            changes=changes, seed=point_seed(spec.seed, index, spec.seeding),
                            role=role, parameter=parameter))
    return points


def plan_tasks(points: Sequence[Point], replications: int, chunk_replications: int
               ) -> list[Task]:
    """Split each point's replications into chunks of ``chunk_replications``: chunk ``k``
    runs replications ``k*chunk .. min((k+1)*chunk, replications) - 1``."""
    if replications < 1 or chunk_replications < 1:
        raise ValueError("replications and chunk_replications must be >= 1")
    tasks = []
    for pt in points:
        for k, first in enumerate(range(0, replications, chunk_replications)):
            tasks.append(Task(point=pt.index, point_id=pt.id, changes=pt.changes,
                              seed=pt.seed, chunk=k, first=first,
                              stop=min(replications, first + chunk_replications)))
    return tasks
