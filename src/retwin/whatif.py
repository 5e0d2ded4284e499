"""What-ifs: a scenario with changes, run against its baseline under common random numbers.

The one pipeline behind ``retwin run --change``, the service's runs (:mod:`retwin_service`)
and the points of ``retwin sweep``:

1. :func:`resolve` — the model (a file, a reference model's name, or a scenario), its
   horizon moved to ``end`` if asked (:func:`with_end`), the changes applied once and
   validated once: a :class:`WhatIf`, holding the what-if scenario and its baseline;
2. :func:`run` — the baseline's and the what-if's replications with the same seeds (common
   random numbers), then their :func:`paired_difference`: a :class:`WhatIfResult`;
3. :func:`save` — a result directory (:func:`retwin.storage.save_result`: atomic).

A baseline computed earlier can stand in for step 2's baseline runs: pass its replication
set, or its KPI frames (:func:`kpi_frames` of a stored ``kpis`` table).

>>> from retwin import whatif
>>> w = whatif.resolve("tiny", [{"kind": "quota", "quota": "mining", "factor": 0.9}])
>>> res = whatif.run(w, replications=2, seed=1)
>>> res.difference.columns.tolist()
['kpi', 'key', 'year', 'unit', 'mean', 'p5', 'p50', 'p95', 'n']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from retwin.engine.run import run_replications
from retwin.errors import ScenarioError
from retwin.results import KPI_KEYS, ReplicationSet, paired_difference
from retwin.scenario.load import apply_changes, load_scenario, scenario_hash
from retwin.scenario.schema import Scenario
from retwin.storage import Format, save_result

__all__ = [
    "KPI_KEYS",
    "Progress",
    "WhatIf",
    "WhatIfResult",
    "kpi_frames",
    "paired_difference",
    "resolve",
    "run",
    "save",
    "with_end",
]

#: ``progress(part, done, total)`` after every replication; ``part`` is ``baseline``,
#: ``whatif`` or (a scenario without a baseline) ``run``. It may raise to stop the runs.
Progress = Callable[[str, int, int], None]


def with_end(scenario: Scenario, end: dt.date | str | None) -> Scenario:
    """``scenario`` with its last simulated day moved to ``end`` (itself when ``end`` is
    ``None`` or its own end). A bad end raises :class:`~retwin.errors.ScenarioError` naming
    ``end``."""
    if end is None:
        return scenario
    value = end.isoformat() if isinstance(end, dt.date) else str(end)
    if value == scenario.end.isoformat():
        return scenario
    try:
        return apply_changes(scenario, [{"kind": "parameter", "path": "end", "value": value}])
    except ScenarioError as exc:
        raise ScenarioError([("end", m) for _, m in exc.problems]) from None


def _as_json(change: Any) -> Any:
    """A change as the mapping it is written as (typed changes are dumped by alias)."""
    dump = getattr(change, "model_dump", None)
    return dump(by_alias=True, mode="json") if dump is not None else change


@dataclass(frozen=True, eq=False)
class WhatIf:
    """A resolved what-if: the scenario to run, and the baseline it is compared with.

    ``baseline`` is ``None`` for a plain run (nothing to compare with). ``changes`` are the
    changes as given (mappings), for the record. Everything here is plain data: it travels
    to worker processes and clusters as it is, and is never validated again there.
    """

    scenario: Scenario
    baseline: Scenario | None = None
    changes: tuple[Any, ...] = ()

    @cached_property
    def scenario_hash(self) -> str:
        return scenario_hash(self.scenario)

    @cached_property
    def baseline_hash(self) -> str | None:
        return None if self.baseline is None else scenario_hash(self.baseline)

    def baseline_only(self) -> WhatIf:
        """The baseline as a plain run (to compute, or store, it alone)."""
        if self.baseline is None:
            raise ValueError("this what-if has no baseline")
        return WhatIf(self.baseline)


def resolve(source: str | Path | Scenario, changes: Iterable[Any] = (), *,
            end: dt.date | str | None = None) -> WhatIf:
    """Load the model, move its end, apply the changes: what :func:`run` runs.

    Parameters
    ----------
    source
        A scenario file, a reference model's name (``baotou-2024``), or a scenario.
    changes
        What-if changes (mappings or typed :data:`~retwin.scenario.Change`); with any, the
        baseline is the model without them.
    end
        The last simulated day of both the baseline and the what-if (default: the model's).

    A scenario *file* may hold ``changes:`` of its own: without other changes, it is
    compared with the same file without them. Raises :class:`~retwin.errors.ScenarioError`
    (one line per problem, naming the field) for a bad model, end or change.
    """
    given = tuple(_as_json(c) for c in changes)
    if isinstance(source, Scenario):
        base = with_end(source, end)
        plain = None
    else:
        base = with_end(load_scenario(source), end)
        plain = None if given else with_end(load_scenario(source, include_changes=False), end)
    if given:
        return WhatIf(apply_changes(base, given), base, given)
    if plain is not None and scenario_hash(plain) != scenario_hash(base):
        return WhatIf(base, plain)  # a what-if file: its own changes against the model
    return WhatIf(base)


def kpi_frames(kpis: pd.DataFrame, replications: int | None = None) -> list[pd.DataFrame]:
    """Split a tidy ``kpis`` table (``kpi, key, year, value, unit, replication``) into one
    KPI frame per replication; with ``replications``, exactly that many (an empty frame for
    a replication without rows)."""
    cols = ["kpi", "key", "year", "value", "unit"]
    groups = {int(r): g[cols].reset_index(drop=True)  # type: ignore[arg-type]  # stubs: any key
              for r, g in kpis.groupby("replication", sort=True)}
    if replications is None:
        return list(groups.values())
    empty = kpis[cols].iloc[:0].reset_index(drop=True)
    return [groups.get(r, empty) for r in range(replications)]


@dataclass(frozen=True, eq=False)
class WhatIfResult:
    """What :func:`run` computed.

    ``baseline`` is the baseline's replication set when it was run (or given) here, ``None``
    when only its KPI frames were given or there is no baseline; ``difference`` (what-if −
    baseline, paired) is ``None`` only without a baseline.
    """

    spec: WhatIf
    whatif: ReplicationSet
    baseline: ReplicationSet | None
    difference: pd.DataFrame | None

    @property
    def scenario_hash(self) -> str:
        return self.spec.scenario_hash

    @property
    def baseline_hash(self) -> str | None:
        return self.spec.baseline_hash

    def baseline_only(self) -> WhatIfResult | None:
        """The baseline's runs as a plain result (to store it alone), if they are here."""
        if self.baseline is None:
            return None
        return WhatIfResult(self.spec.baseline_only(), self.baseline, None, None)


def _replications(sc: Scenario, n: int, seed: int, progress: Progress | None,
                  part: str) -> ReplicationSet:
    if progress is None:
        return run_replications(sc, n, seed=seed)
    return run_replications(sc, n, seed=seed, progress=lambda i, total: progress(part, i, total))


def run(w: WhatIf, *, replications: int = 1, seed: int = 0,
        baseline: ReplicationSet | Sequence[pd.DataFrame] | None = None,
        progress: Progress | None = None) -> WhatIfResult:
    """Run the baseline (unless given) and the what-if, ``replications`` each with the same
    seeds, and their paired difference.

    ``baseline``, when given, must come from the same baseline scenario, seed and
    replications (a stored result of :func:`run` on :meth:`WhatIf.baseline_only`).
    """
    if baseline is not None and w.baseline is None:
        raise ValueError("a baseline was given for a what-if without one")
    base_set: ReplicationSet | None = None
    base_frames: list[pd.DataFrame] | None = None
    if isinstance(baseline, ReplicationSet):
        base_set, base_frames = baseline, baseline.kpi_frames
    elif baseline is not None:
        base_frames = list(baseline)
    if w.baseline is not None and base_frames is None:
        base_set = _replications(w.baseline, replications, seed, progress, "baseline")
        base_frames = base_set.kpi_frames
    part = "run" if w.baseline is None else "whatif"
    res = _replications(w.scenario, replications, seed, progress, part)
    if base_set is not None and base_set.seeds != res.seeds:
        raise ValueError("a difference needs the baseline's seeds and replications")
    diff = None if base_frames is None else paired_difference(res.kpi_frames, base_frames)
    return WhatIfResult(w, res, base_set, diff)


def save(result: WhatIfResult, out_dir: str | Path, *, fmt: Format = "parquet",
         overwrite: bool = True, baseline_ref: str | None = None) -> Path:
    """Write the what-if's result directory: its tables, the difference, and a manifest
    naming the changes and the baseline (``baseline_ref``, default the baseline scenario's
    hash). See :func:`retwin.storage.save_result`."""
    ref = baseline_ref if baseline_ref is not None else result.baseline_hash
    return save_result(result.whatif, out_dir, fmt=fmt, difference=result.difference,
                       baseline_hash=ref, changes=list(result.spec.changes),
                       overwrite=overwrite)
