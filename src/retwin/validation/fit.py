"""The free parameters of the national back-cast and their fit on the fitted years.

:func:`fit` minimises the sum of squares of the relative errors of the reported figures of the
fitted years (those of observables with ``Observable.fitted``) and of the balance condition
(:func:`~retwin.validation.observables.balance_residuals`) with
``scipy.optimize.differential_evolution``: a seeded, derivative-free search over the bounds,
then its local polish (L-BFGS-B from the best point found, whose result is kept only where it
lowers the cost). With markets on, a run's figures move in small steps with a parameter
(monthly decisions, quota batches): finite-difference gradients at small steps are noise (a
trust-region fit from the middle of the bounds stopped where it started), so the search does
not rely on gradients. :func:`write_fitted` writes the result to ``data/fitted.csv``;
:func:`load_model` loads a model with trial values put in for data keys.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retwin._files import atomic_write
from retwin.engine.run import run
from retwin.errors import DataError, RetwinError, ScenarioError
from retwin.scenario.data import (
    FITTED_FILE,
    PARAMETER_COLUMNS,
    Parameter,
    build_manifest,
    evaluate_formula,
    formula_keys,
    formula_parameters,
    load_parameters,
    reference_dir,
    resolve_formulas,
)

# Overlay resolution (``base:``) without evaluating formulas, so that trial values of the free
# parameters can be put in before the formulas are evaluated.
from retwin.scenario.load import apply_changes, load_scenario, resolve_model, validate_tree
from retwin.scenario.schema import Scenario
from retwin.validation.observables import (
    FIT_YEARS,
    HELD_OUT_YEARS,
    NATIONAL_MODEL,
    OBSERVABLES,
    SEED,
    balance_residuals,
    simulate,
)

__all__ = [
    "FREE_PARAMETERS",
    "FitResult",
    "FreeParameter",
    "fit",
    "fitted_diff",
    "load_model",
    "write_fitted",
]


# --- the free parameters --------------------------------------------------------------------


@dataclass(frozen=True)
class FreeParameter:
    """A free parameter of the national model: bounds, and what it stands for.

    ``lower_from`` names data keys whose product is the lower bound (a regulatory minimum);
    otherwise ``lower`` is used. The fit starts in the middle of the bounds.
    """

    key: str
    unit: str
    upper: float
    meaning: str
    lower: float = 0.0
    lower_from: tuple[str, ...] = ()

    def bounds(self, params: Mapping[str, Parameter]) -> tuple[float, float]:
        lo = self.lower
        if self.lower_from:
            lo = float(np.prod([params[k].value for k in self.lower_from]))
        return lo, self.upper


FREE_PARAMETERS: tuple[FreeParameter, ...] = (
    FreeParameter(
        "fit.china.separation_recovery_frac", "t REO separated / t REO in concentrate",
        upper=1.0, lower_from=("yield.cracking_leaching_recovery_frac", "yield.sx_recovery_frac"),
        meaning="recovery of cracking and separation of light-RE concentrate; the MIIT minima "
        "(0.92 x 0.96) are the lower bound",
    ),
    FreeParameter(
        "fit.china.unreported_feed_t_reo", "t REO/a", upper=200_000.0,
        meaning="PrNd-bearing feed separated outside the quota beyond the recorded imports: "
        "unreported mining, stock releases (constant over the years)",
    ),
    FreeParameter(
        "fit.china.magnet_export_t", "t/a", upper=120_000.0, lower=10_000.0,
        meaning="foreign demand for China's finished magnets at the world price in 2020, also "
        "the licensed export volume, growing each year with the world's NdFeB demand "
        "(demand.world.ndfeb_growth_per_year); exports draw on the same pool as "
        "domestic users, a share under long-term agreements first "
        "(trade.china.magnet_export_contract_frac)",
    ),
    FreeParameter(
        "fit.china.re_product_export_t_reo", "t REO/a", upper=150_000.0,
        meaning="foreign demand for China's RE products (oxides, metals, compounds) at the world "
        "price, split by element by estimate; fitted on the 2022 customs total in t REO",
    ),
    FreeParameter(
        "fit.china.import_share_frac", "fraction of the origins' mine output", upper=1.0,
        lower=0.2, meaning="share of the origins' mine output (Myanmar, USA, other origins) that "
        "China imports as feed, every year (2020-2022 at the origins' 2023 output, the first "
        "year the sources give); fitted on the 2022 customs imports in t REO",
    ),
    FreeParameter(
        "fit.china.price_adjust_per_month", "change of log price per month per working stock "
        "of gap", upper=0.6, lower=0.02,
        meaning="how fast China's formed prices move with stock against working stock "
        "(economics.price_adjust_per_month of the national models); fitted on the physical "
        "figures only (the PrNd oxide price is an observable, not a residual), which "
        "determine it weakly",
    ),
    FreeParameter(
        "fit.china.reference_pull_per_month", "share of the log gap to the outside price "
        "closed per month", upper=0.6, lower=0.02,
        meaning="how fast China's formed prices revert to the outside price, held at its 2020 "
        "level in the back-cast (economics.reference_pull_per_month of the national models)",
    ),
)


# --- loading a model with trial values ------------------------------------------------------


def load_model(model: str | Path = NATIONAL_MODEL,
               values: Mapping[str, float] | None = None) -> Scenario:
    """Load a model with ``values`` put in for data keys (the trial values of a fit).

    Without ``values`` this is :func:`~retwin.scenario.load.load_scenario`: the fitted keys
    come from ``data/fitted.csv``.
    """
    if not values:
        _require_fitted(formula_parameters())
        return load_scenario(model)
    return _with_values(resolve_model(model), values)


def _with_values(tree: Mapping[str, Any], values: Mapping[str, float]) -> Scenario:
    """A resolved model ``tree`` (:func:`~retwin.scenario.load.resolve_model`: overlays
    merged, formulas not evaluated; left as it is) loaded with ``values`` put in for data
    keys. A fit reads and merges the model's files once, then calls this per trial."""
    return load_scenario(resolve_formulas(tree, _trial_params(formula_parameters(), values)))


def _trial_params(data: Mapping[str, Parameter], values: Mapping[str, float]
                  ) -> dict[str, Parameter]:
    """The data's parameters with ``values`` put in for their keys (a fit's trial)."""
    params = dict(data)
    for key, v in values.items():
        params[key] = Parameter(key, float(v), "", "", "derived", "trial value of a fit", "")
    return params


class _Trials:
    """A resolved model ``tree`` (as :func:`_with_values` takes it) loaded again and again
    with trial values for ``keys``: the scenario :func:`_with_values` gives, made cheaply.

    The tree is checked and its formulas evaluated once, with the data's values. A trial
    evaluates again only the formulas that name one of ``keys`` (in place, in this
    object's own copy of the tree) and validates the tree: every other formula names only
    keys whose values are the data's, so it is what it was. The whole tree is not walked,
    copied and checked four times per trial (two thirds of a trial's cost)."""

    def __init__(self, tree: Mapping[str, Any], keys: set[str]) -> None:
        self.source, self.keys = tree, set(keys)
        self.params = dict(formula_parameters())

        def trial_only(text: str) -> bool:  # (a trial sets its value: it is evaluated then)
            return bool(self.keys & formula_keys(text))

        # every other formula evaluated now, as a load evaluates it (those that name a key
        # the data does not hold yet, before a first fit, are the trials' alone)
        resolved = resolve_formulas(tree, self.params, leave=trial_only)
        #: (container in the resolved tree, its key or index, the formula)
        self.slots: list[tuple[Any, Any, str]] = []
        stack: list[Any] = [resolved]
        while stack:
            out = stack.pop()
            for k, v in (out.items() if isinstance(out, dict) else enumerate(out)):
                if isinstance(v, dict | list):
                    stack.append(v)
                elif isinstance(v, str) and v.lstrip().startswith("=") and trial_only(v):
                    self.slots.append((out, k, v))
        self.changes = resolved.pop("changes", None) or []  # (what load_scenario applies)
        self.tree = resolved

    def scenario(self, values: Mapping[str, float]) -> Scenario:
        if not self.keys.issuperset(values):  # (keys this object was not made for)
            return _with_values(self.source, values)
        params = _trial_params(self.params, values)
        for out, k, text in self.slots:
            try:
                out[k] = evaluate_formula(text, params)
            except ValueError:  # reported, with every other problem, as a load reports it
                return _with_values(self.source, values)
        try:
            return apply_changes(validate_tree(self.tree), self.changes)
        except ScenarioError:  # (likewise: a load reports its changes' problems too)
            return _with_values(self.source, values)


def _require_fitted(params: Mapping[str, Parameter]) -> None:
    missing = [p.key for p in FREE_PARAMETERS if p.key not in params]
    if missing:
        raise DataError(f"data/{FITTED_FILE} lacks {', '.join(missing)}; run `retwin fit` first")


# --- the fit --------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit` found, with what it minimised."""

    model: str
    values: dict[str, float]
    bounds: dict[str, tuple[float, float]]
    cost: float
    evaluations: int
    message: str
    residuals: pd.DataFrame  # what, year, residual

    @property
    def objective(self) -> str:
        kinds = sorted(set(self.residuals.what))
        return (f"least squares of {len(self.residuals)} residuals on {FIT_YEARS[0]}-"
                f"{FIT_YEARS[-1]} ({', '.join(kinds)}): relative errors of the reported "
                "figures and the domestic-concentrate balance")


def _fit_observations(params: Mapping[str, Parameter]) -> list[tuple[str, int, float]]:
    out = []
    for o in OBSERVABLES:
        if not o.fitted:
            continue
        for y, keys in sorted(o.reported.items()):
            if y in FIT_YEARS:
                out.append((o.id, y, params[keys[0]].value))
    return out


#: The search (``differential_evolution``): population per parameter, generations, seed.
#: About two thousand runs of the back-cast model, half of them the polish's (half a minute
#: in one process); the same seed gives the same fit on every machine.
POPULATION, GENERATIONS, FIT_SEED = 8, 15, 0
#: The polish's limit on runs (L-BFGS-B's own default; it converges well before).
POLISH_MAXFUN = 15000


def _trial_residuals(trials: _Trials, observations: list[tuple[str, int, float]],
                     values: Mapping[str, float]) -> np.ndarray:
    """The fit's residuals at one trial: the relative errors of ``observations``, then the
    balance condition of each fitted year."""
    res = run(trials.scenario(values), seed=SEED)
    sim = simulate(res)
    bal = balance_residuals(res, sim)
    r = [(sim[o][y] - rep) / rep for o, y, rep in observations]
    r += [bal[y] for y in FIT_YEARS]
    return np.array(r)


#: Each worker process's trials, per fit (:class:`_TrialTask`).
_WORKER_TRIALS: dict[str, _Trials] = {}


@dataclass(frozen=True)
class _TrialTask:
    """A fit's trials in a worker process: ``(point, values)`` -> ``(point, residuals)``.
    The resolved model is sent once per worker; :meth:`prepare` loads it when the worker
    starts."""

    tree: Mapping[str, Any]
    keys: frozenset[str]
    observations: list[tuple[str, int, float]]
    cache_key: str

    def prepare(self) -> None:
        if self.cache_key not in _WORKER_TRIALS:
            _WORKER_TRIALS.clear()  # (one fit at a time)
            _WORKER_TRIALS[self.cache_key] = _Trials(self.tree, set(self.keys))

    def __call__(self, item: tuple[tuple[float, ...], dict[str, float]]
                 ) -> tuple[tuple[float, ...], np.ndarray]:
        self.prepare()
        point, values = item
        return point, _trial_residuals(_WORKER_TRIALS[self.cache_key], self.observations,
                                       values)


def fit(model: str | Path = NATIONAL_MODEL, *, generations: int = GENERATIONS,
        progress: Callable[[int], None] | None = None, workers: int = 1) -> FitResult:
    """Fit :data:`FREE_PARAMETERS` on :data:`FIT_YEARS` (see the module docstring).

    ``workers`` > 1 evaluates the trials the search asks for at once (each generation's
    population, the polish's finite-difference steps) in that many local processes. The
    trials and their order are the same, so the fit is the same to the last bit."""
    from scipy.optimize import differential_evolution, minimize

    if workers < 1:
        raise ValueError(f"workers(={workers}) must be >= 1")
    params = formula_parameters()
    free = FREE_PARAMETERS
    bounds = {p.key: p.bounds(params) for p in free}
    scale = np.array([p.upper for p in free])
    lo = np.array([bounds[p.key][0] for p in free]) / scale
    hi = np.array([bounds[p.key][1] for p in free]) / scale
    observations = _fit_observations(params)
    labels = [(o, y) for o, y, _ in observations] + [("balance", y) for y in FIT_YEARS]
    cache: dict[tuple[float, ...], np.ndarray] = {}
    tree = resolve_model(model)  # the files read once
    trials = _Trials(tree, {p.key for p in free})

    def point_of(z: np.ndarray) -> tuple[float, ...]:  # (the cache's key)
        return tuple(float(v) for v in z)

    def values_at(point: tuple[float, ...]) -> dict[str, float]:
        return {p.key: float(v) for p, v in zip(free, np.array(point) * scale, strict=True)}

    def residuals(z: np.ndarray) -> np.ndarray:
        key = point_of(z)
        if key not in cache:
            cache[key] = _trial_residuals(trials, observations, values_at(key))
            if progress is not None:
                progress(len(cache))
        return cache[key]

    def cost(z: np.ndarray) -> float:
        return 0.5 * float(np.sum(residuals(z) ** 2))

    executor = None
    if workers > 1:
        from retwin.batch.executors import ProcessExecutor, WorkerDied, forkserver_available

        executor = ProcessExecutor(workers, start_method="forkserver" if forkserver_available()
                                   else "spawn")
        task = _TrialTask(tree, frozenset(p.key for p in free), observations,
                          cache_key=f"fit-{os.getpid()}-{id(cache)}")

    def evaluate(func: Callable[[np.ndarray], Any], points: Iterable[np.ndarray]) -> list[Any]:
        """``func`` at every point (the search's map): the points not evaluated yet go to
        the workers at once, then ``func`` reads each from the cache, in order."""
        points = list(points)
        if executor is not None:
            todo = list(dict.fromkeys(k for k in map(point_of, points) if k not in cache))
            if len(todo) > 1:
                for key, r in executor.map_unordered(task, [(k, values_at(k)) for k in todo]):
                    cache[key] = r
                    if progress is not None:
                        progress(len(cache))
        return [func(z) for z in points]

    try:
        out = differential_evolution(
            cost, list(zip(lo, hi, strict=True)), seed=FIT_SEED, popsize=POPULATION,
            maxiter=generations, init="sobol", tol=1e-6, updating="deferred", workers=evaluate,
            polish=functools.partial(minimize, method="L-BFGS-B",
                                     options={"workers": evaluate, "maxfun": POLISH_MAXFUN}))
    except BaseException as exc:
        if executor is not None:
            executor.abort()  # (Ctrl-C, or a failed trial: nothing left running)
            if isinstance(exc, WorkerDied):
                raise RetwinError(f"{exc}; the fit wrote nothing: run it again") from None
        raise
    finally:
        if executor is not None:
            executor.close()
    x = out.x * scale
    values = {p.key: float(f"{v:.6g}") for p, v in zip(free, x, strict=True)}
    final = residuals(np.array([values[p.key] for p in free]) / scale)
    table = pd.DataFrame({"what": [w for w, _ in labels], "year": [y for _, y in labels],
                          "residual": final})
    return FitResult(
        model=str(model), values=values,
        bounds=bounds, cost=float(0.5 * np.sum(final ** 2)), evaluations=len(cache),
        message=str(out.message), residuals=table,
    )


def _fitted_path(data_dir: Path | None = None) -> Path:
    return (data_dir or reference_dir() / "data") / FITTED_FILE


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def write_fitted(result: FitResult, data_dir: Path | None = None) -> Path:
    """Write ``data/fitted.csv`` (one row per free parameter, with how it was obtained) and
    rewrite ``data/manifest.json`` so that it covers the new table."""
    path = _fitted_path(data_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(PARAMETER_COLUMNS), lineterminator="\n")
    w.writeheader()
    for p in FREE_PARAMETERS:
        lo, hi = result.bounds[p.key]
        w.writerow({
            "key": p.key, "value": _fmt(result.values[p.key]), "unit": p.unit,
            "year": f"{FIT_YEARS[0]}-{FIT_YEARS[-1]}", "flag": "derived",
            "source": f"retwin fit (retwin.validation) on models/{result.model}.yaml",
            "basis": (f"fitted by `retwin fit` on {FIT_YEARS[0]}–{FIT_YEARS[-1]}: "
                      f"{result.objective}; "
                      f"scipy.optimize.differential_evolution (seed {FIT_SEED}, population "
                      f"{POPULATION} per parameter, {GENERATIONS} generations, polished), "
                      f"bounds [{_fmt(lo)}, {_fmt(hi)}], final cost {result.cost:.4g}; "
                      f"{HELD_OUT_YEARS[0]}–{HELD_OUT_YEARS[-1]} held out. {p.meaning}"),
        })
    atomic_write(path, buf.getvalue().encode("utf-8"))
    manifest = path.parent / "manifest.json"
    atomic_write(manifest, (json.dumps(build_manifest(path.parent), indent=2,
                                       ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def fitted_diff(result: FitResult, data_dir: Path | None = None) -> pd.DataFrame:
    """The committed fitted values (``data/fitted.csv``) next to a fresh fit."""
    path = _fitted_path(data_dir)
    old: dict[str, float] = {}
    if path.is_file():
        old = {k: p.value for k, p in load_parameters(path).items()}
    rows = []
    for p in FREE_PARAMETERS:
        new = result.values[p.key]
        was = old.get(p.key, math.nan)
        rows.append({"key": p.key, "committed": was, "fitted": new,
                     "change_frac": (new - was) / was if was else math.nan})
    return pd.DataFrame(rows)
