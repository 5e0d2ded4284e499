"""The service's state and its one piece of logic: turning a request into a computation.

:class:`Catalog` holds the reference models; :class:`Service` checks a what-if against the
limits, resolves it once (:func:`retwin.whatif.resolve`: the changes applied to the model
and validated; a bad one raises :class:`~retwin.ScenarioError` naming the field), derives
the computation key (equal requests, equal keys), and holds the registry and the jobs. The
routes call it; the worker runs what it resolved (:func:`retwin_service.jobs.compute`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import retwin
from retwin import whatif
from retwin.scenario import available_models, scenario_hash
from retwin_service.jobs import Jobs, Source, Task
from retwin_service.observe import Metrics
from retwin_service.registry import Registry, RunRecord, request_key
from retwin_service.schemas import WhatIfRequest
from retwin_service.settings import Settings
from retwin_service.space import Space

__all__ = ["Catalog", "Prepared", "Service"]

log = logging.getLogger("retwin.api")

#: Seed and replications of the baselines computed at start-up (a request's defaults).
DEFAULT_SEED = 0
DEFAULT_REPLICATIONS = 1


class Catalog:
    """The reference models (``models/*.yaml``), loaded once, with their hashes."""

    def __init__(self) -> None:
        self.models: dict[str, retwin.Scenario] = {}
        self.hashes: dict[str, str] = {}

    def load(self) -> Catalog:
        for name in available_models():
            try:
                sc = retwin.load_scenario(name)
            except retwin.RetwinError as exc:
                log.warning("model %s not served: %s", name, exc)
                continue
            self.models[name] = sc
            self.hashes[name] = scenario_hash(sc)
        return self

    def names(self) -> list[str]:
        return sorted(self.models)

    def get(self, name: str) -> retwin.Scenario:
        if name not in self.models:
            raise retwin.ScenarioError(
                [("model", f"unknown model {name!r} (known: {', '.join(self.names())})")]
            )
        return self.models[name]


@dataclass(frozen=True)
class Prepared:
    """A checked request: what to store with the run, and what to compute."""

    request: dict[str, Any]
    task: Task


def _where(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def unstorable(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Where ``value`` holds what strict UTF-8 JSON cannot carry: text with a lone surrogate
    (``"\\ud800"``), a non-finite number. Each problem names its field
    (``changes[0].note``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return [(path, f"{path or 'text'}(={value[:40]!r}) is not valid Unicode text: a "
                           f"lone surrogate {value[exc.start]!r} at position {exc.start}")]
        return []
    if isinstance(value, float):
        if math.isfinite(value):
            return []
        return [(path, f"{path or 'number'}(={value!r}) must be a finite number")]
    problems: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            problems += unstorable(k, _where(path, "<key>")) if isinstance(k, str) else []
            problems += unstorable(v, _where(path, str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problems += unstorable(v, _where(path, i))
    return problems


def _canonical_changes(req: WhatIfRequest) -> tuple[dict[str, Any], ...]:
    """Changes as JSON mappings, without the free ``note`` (it changes no number)."""
    out = []
    for ch in req.changes:
        d = ch.model_dump(by_alias=True, mode="json")
        d.pop("note", None)
        out.append(d)
    return tuple(out)


class Service:
    """Settings, registry, catalog and jobs of one running service."""

    def __init__(self, settings: Settings, registry: Registry, catalog: Catalog,
                 jobs: Jobs, space: Space | None = None, metrics: Metrics | None = None
                 ) -> None:
        self.settings = settings
        self.registry = registry
        self.catalog = catalog
        self.jobs = jobs
        self.space = space or Space(settings.data_dir, settings.min_free_bytes)
        self.metrics = metrics or Metrics()

    # --- requests -------------------------------------------------------------------------

    def check_limits(self, req: WhatIfRequest) -> None:
        """The service's limits on one request (:class:`~retwin.ScenarioError` naming the
        field when one is exceeded)."""
        s = self.settings
        problems: list[tuple[str, str]] = []
        if req.replications > s.max_replications:
            problems.append(("replications", f"replications(={req.replications}) must be "
                                             f"<= {s.max_replications} (the service's limit)"))
        if len(req.changes) > s.max_changes:
            problems.append(("changes", f"{len(req.changes)} changes; at most "
                                        f"{s.max_changes} are allowed"))
        if problems:
            raise retwin.ScenarioError(problems)

    def prepare(self, req: WhatIfRequest) -> Prepared:
        """Check a request against its model and the limits; derive its computation.

        Runs in a thread: applying changes validates a whole scenario. A request is stored
        only if it reads back: text that is not valid Unicode, or a non-finite number, is a
        :class:`~retwin.ScenarioError` naming the field.
        """
        bad = unstorable(req.model_dump(by_alias=True))
        if bad:
            raise retwin.ScenarioError(bad)
        self.check_limits(req)
        model = self.catalog.get(req.model)
        end = req.end.isoformat() if req.end and req.end != model.end else None
        w = whatif.resolve(model, _canonical_changes(req), end=end)
        sc = w.scenario
        horizon = (sc.end - sc.start).days + 1
        if horizon > self.settings.max_horizon_days:
            where = "end" if sc.end == (w.baseline or sc).end else "changes"
            raise retwin.ScenarioError([(where, (
                f"horizon of {horizon} days ({sc.start}..{sc.end}) exceeds the "
                f"service's limit of {self.settings.max_horizon_years:g} years"))])
        return Prepared(request=req.model_dump(by_alias=True, mode="json"),
                        task=self.task(req.model, end, w, req.seed, req.replications))

    def task(self, model: str, end: str | None, w: whatif.WhatIf, seed: int,
             replications: int) -> Task:
        """The computation of a resolved what-if of ``model``; its key names its stored
        result, and ``baseline_key`` that of its baseline."""
        model_hash = self.catalog.hashes[model]

        def key(ch: tuple[Any, ...]) -> str:
            return request_key({"model": model, "model_hash": model_hash, "end": end,
                                "changes": list(ch), "seed": seed,
                                "replications": replications, "version": retwin.__version__})

        return Task(key=key(w.changes), whatif=w, seed=seed, replications=replications,
                    baseline_key=key(()) if w.baseline is not None else None,
                    results_root=str(self.settings.results_dir),
                    source=Source(model, model_hash, end, w.changes))

    def baseline_task(self, model: str) -> Task:
        """The default baseline of ``model`` (computed at start-up)."""
        return self.task(model, None, whatif.resolve(self.catalog.get(model)), DEFAULT_SEED,
                         DEFAULT_REPLICATIONS)

    # --- recovery -------------------------------------------------------------------------

    def recover(self) -> list[Task]:
        """Tasks for every run left queued or running by a stopped service (in the order
        they were accepted); a run whose request no longer checks out fails with why. Runs
        another live service process computes are left to it (their tasks wait for it)."""
        n = self.registry.requeue()
        tasks = self._tasks_for(self.registry.active_keys())
        if n:
            log.info("re-queued %d unfinished runs (%d computations)", n, len(tasks))
        return tasks

    def adopt(self) -> list[Task]:
        """Tasks for the unfinished runs no live service process holds and this one does not
        track: those of a process that died (its leases lapsed), or accepted by one that
        stopped before it could claim them."""
        keys = [k for k in self.registry.orphaned_keys() if not self.jobs.tracked(k)]
        if not keys:
            return []
        active = self.registry.active_keys()
        tasks = self._tasks_for({k: active[k] for k in keys if k in active})
        if tasks:
            log.warning("took over %d computations no live service process held", len(tasks))
        return tasks

    def _tasks_for(self, active: dict[str, list[RunRecord]]) -> list[Task]:
        tasks = []
        for key, recs in active.items():
            try:
                prep = self.prepare(WhatIfRequest.model_validate(recs[0].request))
            except (retwin.RetwinError, ValueError) as exc:
                self.registry.finish(key, "failed", f"cannot run any more: {exc}")
                continue
            if prep.task.key != key:  # the model changed since: same runs, new key
                self.registry.finish(key, "failed", "the model changed since this run was "
                                                    "accepted; submit it again")
                continue
            tasks.append(prep.task)
        return tasks
