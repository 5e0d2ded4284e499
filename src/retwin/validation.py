"""Validation against the record: the national back-cast, its fit, and Baotou against its seeds.

The procedure (README, "Validation"):

1. ``models/china-2020.yaml`` runs China's chain over 2020–2024 with the historical quotas and
   prices of ``data/`` (deterministic: no outages, no noise; seed :data:`SEED`).
2. Its free parameters (:data:`FREE_PARAMETERS`) are fitted on the *fitted years*
   :data:`FIT_YEARS` only. :func:`fit` minimises, with ``scipy.optimize.least_squares``
   (trust-region reflective, bounded), the sum of squares of

   * the relative error ``(simulated - reported) / reported`` of every observation of an
     :data:`OBSERVABLES` entry in a fitted year (the first data key of the year is the figure
     used; the others only make the range), and
   * the *balance condition* of each fitted year: the domestic concentrate left unseparated,
     as a share of the domestic mine output (:func:`balance_residuals`). Mining and smelting
     quotas are set together, so mined concentrate is separated, not stockpiled; without this
     condition any recovery above the one that fills the smelting quota fits equally well.

   The start is the middle of each parameter's bounds, so the fit is deterministic and
   reproducible. ``retwin fit`` writes the result to ``data/fitted.csv`` with how it was
   obtained; the models refer to the fitted keys by formula.
3. The held-out years :data:`HELD_OUT_YEARS` are never used by the fit; :func:`backcast` runs
   the model with the committed fitted values and reports every year, each marked fitted or
   held out, with the error and, for held-out years, the tolerance of :data:`OBSERVABLES`.

Baotou is checked against its seeds by :func:`baotou_checks`: the structure of the 2024
reference model (capacities the seeds give), the 2022 figures of the seeds next to
``models/baotou-2022.yaml`` (2022 quotas and prices) and the 2024 targets next to the 2024 run.
:func:`write_report` puts everything into one self-contained HTML file (plotly charts).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retwin._files import atomic_write, check_output_file, write_output_file
from retwin.engine.run import run
from retwin.errors import DataError, ScenarioError
from retwin.scenario.data import (
    FITTED_FILE,
    PARAMETER_COLUMNS,
    Parameter,
    build_manifest,
    formula_parameters,
    load_parameters,
    reference_dir,
    resolve_formulas,
)

# Overlay resolution (``base:``) without evaluating formulas, so that trial values of the free
# parameters can be put in before the formulas are evaluated.
from retwin.scenario.load import load_scenario, resolve_model
from retwin.scenario.schema import Scenario

__all__ = [
    "BAOTOU_2022",
    "BAOTOU_2024",
    "FIT_YEARS",
    "FREE_PARAMETERS",
    "HELD_OUT_YEARS",
    "LIMITATIONS",
    "NATIONAL_MODEL",
    "OBSERVABLES",
    "SEED",
    "Backcast",
    "BaotouChecks",
    "FitResult",
    "FreeParameter",
    "Observable",
    "backcast",
    "balance_residuals",
    "baotou_checks",
    "fit",
    "fitted_diff",
    "held_out_keys",
    "load_model",
    "simulate",
    "write_fitted",
    "write_report",
]

NATIONAL_MODEL = "china-2020"
BAOTOU_2022 = "baotou-2022"
BAOTOU_2024 = "baotou-2024"
FIT_YEARS: tuple[int, ...] = (2020, 2021, 2022)
HELD_OUT_YEARS: tuple[int, ...] = (2023, 2024)
#: The seed of every validation run (the back-cast is deterministic; Baotou 2024 is not).
SEED = 0

# Ids in the national model that the observables read (models/china-2024.yaml).
_SMELTING_QUOTA = "smelting"
_EXPORT_MARKET = "magnet_exports"
_PRND_OXIDE = "prnd_oxide"
_DOMESTIC_FEED = ("rock_concentrate", "ionic_mixed_re")
_KEY_REF = re.compile(r"\{([a-z0-9_]+(?:\.[a-z0-9_]+)+)\}")


# --- observables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observable:
    """A reported national figure and how to read it from a run.

    ``reported`` maps a year to data keys: the first is the figure used (in the fit and for
    the error), the others are what other sources say (shown as the range).
    ``tolerance_frac`` bounds the held-out |relative error| (tests/test_validation.py).
    ``reported_is_input``: the reported figure is itself an input of the model (the smelting
    quota), so the comparison checks the mechanics only and the figure may be used.
    """

    id: str
    label: str
    unit: str
    reported: Mapping[int, tuple[str, ...]]
    tolerance_frac: float
    note: str = ""
    reported_is_input: bool = False


OBSERVABLES: tuple[Observable, ...] = (
    Observable(
        "mine_output", "Mine output", "t REO",
        {y: (f"prod.china.mine_t_reo.{y}",) for y in (2021, 2022, 2023, 2024)},
        0.01,
        "USGS mine production, which equals the quota in every year; the model mines under "
        "the quota, so this checks the quota mechanics (pacing, batches), not a forecast.",
    ),
    Observable(
        "smelting_output", "Smelting and separation output (domestic feed)", "t REO",
        {y: (f"quota.national.smelting_t_reo.{y}",) for y in (2020, 2021, 2022, 2023, 2024)},
        0.02,
        "The sources give no separation statistic: the reported figure is the smelting quota "
        "(an upper bound), which is also the model's input. Simulated: separation of domestic "
        "feed, the plants under the quota.",
        reported_is_input=True,
    ),
    Observable(
        "ndfeb_output", "China's NdFeB output", "t (blank)",
        {
            2020: ("prod.china.re_pm_t.2020", "prod.china.re_pm_t.2020.alt"),
            2021: ("prod.china.ndfeb_t.2021", "prod.china.ndfeb_t.2021.creia_smm"),
            2022: ("prod.china.ndfeb_t.2022",),
            2023: ("prod.china.ndfeb_t.2023.csre_blank", "prod.china.ndfeb_t.2023.forecast",
                   "prod.china.ndfeb_t.2023.csre_sintered"),
        },
        0.05,
        "Sources disagree: 2020 is all RE permanent magnets (196 kt; another source 186 kt); "
        "2021 213.3 kt (CREIA/SMM 219.4 kt); 2023 270 kt of blanks (CSRE; the §9 default), of "
        "which 255.2 kt sintered, and a 267 kt forecast. None for 2024. Simulated: blank output.",
    ),
    Observable(
        "prnd_from_scrap", "PrNd oxide recovered from scrap", "t",
        {2023: ("recycling.china.prnd_oxide_from_scrap_t.2023",),
         2024: ("recycling.china.prnd_oxide_from_scrap_t.2024",)},
        0.25,
        "Argus; only held-out years have a figure, so nothing was fitted to it. Simulated: the "
        "PrNd oxide of the scrap recyclers (magnet-making swarf only).",
    ),
    Observable(
        "magnet_exports", "Magnet exports", "t",
        {2021: ("trade.china.magnet_export_t.2021",), 2023: ("trade.china.magnet_export_t.2023",),
         2024: ("trade.china.magnet_export_t.2024",)},
        0.25,
        "2023 is derived from 2024 (+10 %); no 2020 or 2022 figure in the sources. Simulated: "
        "the export market of finished magnets.",
    ),
)

#: What the model cannot reproduce, and why (the report and the README show this list).
LIMITATIONS: tuple[str, ...] = (
    "Mine and smelting output follow the quotas by construction: the model mines and separates "
    "under the quotas and the sources report no production other than the quota, so their small "
    "errors test the quota mechanics, not the model's foresight.",
    "Magnet exports: the export share is one number fitted on the only fitted-year figure (2021): "
    "about 33 % of finished output. In 2023 exports were about 28 % of finished output (52.9 kt "
    "of 0.7 x 270 kt) as domestic demand (NEVs, wind) grew faster; a constant share cannot follow "
    "that, so held-out exports come out too high. Export controls (2025) are outside the horizon.",
    "PrNd oxide from scrap in 2024: Argus reports a 14 % fall, which it ties to low prices; the "
    "model recycles all swarf whatever the price (no margin response), so it cannot reproduce the "
    "fall. Only magnet-making swarf is recycled; end-of-life magnets are not modelled.",
    "NdFeB output is limited by the PrNd the chain supplies. The PrNd that quotas and recorded "
    "imports provide is not enough for the reported output: the fitted supply outside the "
    "statistics (fit.china.unreported_feed_t_reo) closes the gap as one constant. It stands for "
    "unreported mining, stock releases and any overstatement of PrNd per t of magnet (29.5 %), "
    "and it cannot follow year-to-year changes in them: over the fitted years the model grows "
    "more slowly than reported (2020 too high, 2022 too low).",
    "Imports per origin for 2020-2022 are taken at each origin's 2023 mine output, the first year "
    "the sources give; the sources do not say whether imported feed counts against the smelting "
    "quota (the model keeps it outside).",
    "Dy and Tb are topped up from outside, so they never limit magnet output: the HREE balance is "
    "not validated (the element distribution of Baotou concentrate is a proxy, not an assay).",
    "Baotou local conversion is below the seeds' > 85 % in 2022 and in 2024: the model sells all "
    "the Sm, Eu, Gd, Y and heavy oxides out of the region (no local user of them is modelled) and "
    "a quarter of the La/Ce line's output (an estimate); the seeds do not say on what basis the "
    "rate is measured.",
    "Baotou 2022: the seeds give 2022 capacity only for magnets; every other plant keeps its 2024 "
    "target capacity, and output value is gross (each stage's output at its price, as 产值 is "
    "counted) at 2022 prices, when PrNd oxide was about twice its 2024 level. The model's 2022 "
    "output value is therefore far above the seeds' 450 亿元, which also has an unclear scope "
    "(zone, expected); the seeds themselves go from 450 (zone, 2022) to a 1,000 target (city, "
    "2024), which the 2024 run meets.",
)


def held_out_keys(params: Mapping[str, Parameter] | None = None) -> set[str]:
    """Every data key a back-cast model must not use: the figures of the held-out years the
    back-cast is checked against, and every row derived from one (found through the
    ``{key}`` references in the rows' ``basis``, transitively). A figure that is itself an
    input of the model (``Observable.reported_is_input``: the smelting quota) is exempt."""
    params = formula_parameters() if params is None else params
    tainted = {k for o in OBSERVABLES if not o.reported_is_input
               for y, keys in o.reported.items() if y in HELD_OUT_YEARS for k in keys}
    refs = {k: set(_KEY_REF.findall(p.basis)) for k, p in params.items()}
    grew = True
    while grew:
        more = {k for k, r in refs.items() if k not in tainted and r & tainted}
        grew = bool(more)
        tainted |= more
    return tainted


# --- loading and simulating -----------------------------------------------------------------


def load_model(model: str | Path = NATIONAL_MODEL,
               values: Mapping[str, float] | None = None) -> Scenario:
    """Load a model with ``values`` put in for data keys (the trial values of a fit).

    Without ``values`` this is :func:`~retwin.scenario.load.load_scenario`: the fitted keys
    come from ``data/fitted.csv``.
    """
    if not values:
        _require_fitted(formula_parameters())
        return load_scenario(model)
    params = dict(formula_parameters())
    for key, v in values.items():
        params[key] = Parameter(key, float(v), "", "", "derived", "trial value of a fit", "")
    return load_scenario(resolve_formulas(resolve_model(model), params))


def _require_fitted(params: Mapping[str, Parameter]) -> None:
    missing = [p.key for p in FREE_PARAMETERS if p.key not in params]
    if missing:
        raise DataError(f"data/{FITTED_FILE} lacks {', '.join(missing)}; run `retwin fit` first")


def _check_national(sc: Scenario) -> None:
    problems: list[tuple[str, str]] = []
    if _SMELTING_QUOTA not in {q.id for q in sc.quotas}:
        problems.append(("quotas", f"the back-cast needs a quota {_SMELTING_QUOTA!r}"))
    if _EXPORT_MARKET not in {k.id for k in sc.markets}:
        problems.append(("markets", f"the back-cast needs an export market {_EXPORT_MARKET!r}"))
    for stage in ("mining", "recycling", "magnet"):
        if not any(p.stage == stage for p in sc.plants):
            problems.append(("plants", f"the back-cast needs a plant of stage {stage!r}"))
    materials = {m.id for m in sc.materials}
    for m in (_PRND_OXIDE, *_DOMESTIC_FEED):
        if m not in materials:
            problems.append(("materials", f"the back-cast needs the material {m!r}"))
    if problems:
        raise ScenarioError([(p, f"{m} (model {sc.name!r} is not a national back-cast model)")
                             for p, m in problems])


def simulate(res: Any) -> dict[str, dict[int, float]]:
    """The observables of a national run, ``observable id -> {year: value}``."""
    c = res.compiled
    sc: Scenario = c.scenario
    _check_national(sc)
    kp = res.kpis
    years = list(res.years)
    plant_out = kp[kp.kpi == "output.plant"].pivot(index="key", columns="year", values="value")
    qcoef = dict(zip(c.plant_ids, c.kernel_static["qcoef"], strict=True))

    def reo(plants: Sequence[str]) -> dict[int, float]:
        return {y: float(sum(plant_out.loc[p, y] * qcoef[p] for p in plants)) for y in years}

    smelting = next(q for q in sc.quotas if q.id == _SMELTING_QUOTA)
    recyclers = [p for p in sc.plants if p.stage == "recycling"]
    magnets = kp[(kp.kpi == "output.stage") & (kp.key == "magnet")].set_index("year").value
    exports = kp[(kp.kpi == "exports.market") & (kp.key == _EXPORT_MARKET)].set_index("year").value
    return {
        "mine_output": reo([p.id for p in sc.plants if p.stage == "mining"]),
        "smelting_output": reo(smelting.plants),
        "ndfeb_output": {y: float(magnets.get(y, 0.0)) for y in years},
        "prnd_from_scrap": {
            y: float(sum(plant_out.loc[p.id, y] * p.recipe.outputs.get(_PRND_OXIDE, 0.0)
                         for p in recyclers))
            for y in years
        },
        "magnet_exports": {y: float(exports.get(y, 0.0)) for y in years},
    }


def balance_residuals(res: Any) -> dict[int, float]:
    """Per year: domestic concentrate left unseparated (stock build-up of the domestic feed
    pools, t REO) as a share of the domestic mine output (t REO)."""
    c = res.compiled
    mined = simulate(res)["mine_output"]
    pools = [i for i, (_, m) in enumerate(c.pool_keys) if m in _DOMESTIC_FEED]
    mats = [c.material_ids.index(c.pool_keys[i][1]) for i in pools]
    reo = c.comp[mats].sum(axis=1)  # t REO per unit
    stock = (res.stock[pools] * reo[:, None]).sum(axis=0)  # (D,)
    start = float((c.pool_initial[pools] * reo).sum())
    year_of_day = c.dates.astype("datetime64[Y]").astype(int) + 1970
    out: dict[int, float] = {}
    for y in res.years:
        end = float(stock[np.flatnonzero(year_of_day == y)[-1]])
        out[y] = (end - start) / mined[y] if mined[y] > 0 else 0.0
        start = end
    return out


# --- the comparison table -------------------------------------------------------------------


def _split(year: int) -> str:
    if year in FIT_YEARS:
        return "fitted"
    if year in HELD_OUT_YEARS:
        return "held-out"
    return "other"


def compare(sim: Mapping[str, Mapping[int, float]],
            params: Mapping[str, Parameter] | None = None) -> pd.DataFrame:
    """One row per observable and year: reported (the figure used, its key, flag and source,
    the range over all sources), simulated, relative error, split, tolerance."""
    params = formula_parameters() if params is None else params
    rows = []
    for o in OBSERVABLES:
        for y in sorted(set(sim.get(o.id, {})) | set(o.reported)):
            keys = o.reported.get(y, ())
            missing = [k for k in keys if k not in params]
            if missing:
                raise DataError(f"observable {o.id}: data keys not found: {', '.join(missing)}")
            vals = [params[k].value for k in keys]
            rep = vals[0] if vals else math.nan
            s = float(sim.get(o.id, {}).get(y, math.nan))
            err = (s - rep) / rep if vals and rep else math.nan
            split = _split(y)
            within = (bool(abs(err) <= o.tolerance_frac)
                      if split == "held-out" and not math.isnan(err) else None)
            rows.append({
                "observable": o.id, "label": o.label, "unit": o.unit, "year": y, "split": split,
                "reported": rep, "reported_key": keys[0] if keys else "",
                "flag": params[keys[0]].flag if keys else "",
                "source": params[keys[0]].source if keys else "",
                "range_low": min(vals) if vals else math.nan,
                "range_high": max(vals) if vals else math.nan,
                "alternatives": "; ".join(f"{k} = {params[k].value:,.0f}" for k in keys[1:]),
                "simulated": s, "error_frac": err,
                "tolerance_frac": (o.tolerance_frac if split == "held-out" and vals
                                   else math.nan),
                "within_tolerance": within,
            })
    return pd.DataFrame(rows)


def source_ranges(params: Mapping[str, Parameter] | None = None) -> pd.DataFrame:
    """Where sources disagree: every figure of an observable-year with more than one source,
    which one is used, with its flag and source."""
    params = formula_parameters() if params is None else params
    rows = []
    for o in OBSERVABLES:
        for y, keys in sorted(o.reported.items()):
            if len(keys) < 2:
                continue
            for i, k in enumerate(keys):
                p = params[k]
                rows.append({"observable": o.label, "year": y, "key": k, "value": p.value,
                             "unit": p.unit, "flag": p.flag, "source": p.source,
                             "used": i == 0, "basis": p.basis})
    return pd.DataFrame(rows)


# --- the fit --------------------------------------------------------------------------------


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
        "fit.china.magnet_export_share_frac", "fraction of finished magnets", upper=0.6,
        lower=0.05, meaning="share of finished sintered NdFeB made for export",
    ),
)


@dataclass
class FitResult:
    """What :func:`fit` found, with what it minimised."""

    model: str
    values: dict[str, float]
    start: dict[str, float]
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
        for y, keys in sorted(o.reported.items()):
            if y in FIT_YEARS:
                out.append((o.id, y, params[keys[0]].value))
    return out


def fit(model: str | Path = NATIONAL_MODEL, *, max_evaluations: int = 200,
        progress: Callable[[int], None] | None = None) -> FitResult:
    """Fit :data:`FREE_PARAMETERS` on :data:`FIT_YEARS` (see the module docstring)."""
    from scipy.optimize import least_squares

    params = formula_parameters()
    free = FREE_PARAMETERS
    bounds = {p.key: p.bounds(params) for p in free}
    scale = np.array([p.upper for p in free])
    lo = np.array([bounds[p.key][0] for p in free]) / scale
    hi = np.array([bounds[p.key][1] for p in free]) / scale
    z0 = (lo + hi) / 2
    observations = _fit_observations(params)
    labels = [(o, y) for o, y, _ in observations] + [("balance", y) for y in FIT_YEARS]
    cache: dict[tuple[float, ...], np.ndarray] = {}

    def residuals(z: np.ndarray) -> np.ndarray:
        key = tuple(float(v) for v in z)
        if key not in cache:
            values = {p.key: float(v) for p, v in zip(free, z * scale, strict=True)}
            res = run(load_model(model, values), seed=SEED)
            sim = simulate(res)
            bal = balance_residuals(res)
            r = [(sim[o][y] - rep) / rep for o, y, rep in observations]
            r += [bal[y] for y in FIT_YEARS]
            cache[key] = np.array(r)
            if progress is not None:
                progress(len(cache))
        return cache[key]

    out = least_squares(residuals, z0, bounds=(lo, hi), method="trf", diff_step=1e-4,
                        ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=max_evaluations)
    x = out.x * scale
    values = {p.key: float(f"{v:.6g}") for p, v in zip(free, x, strict=True)}
    final = residuals(np.array([values[p.key] for p in free]) / scale)
    table = pd.DataFrame({"what": [w for w, _ in labels], "year": [y for _, y in labels],
                          "residual": final})
    return FitResult(
        model=str(model), values=values,
        start={p.key: float(v) for p, v in zip(free, z0 * scale, strict=True)},
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
                      f"scipy.optimize.least_squares (trf), start {_fmt(result.start[p.key])}, "
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


# --- the back-cast --------------------------------------------------------------------------


@dataclass
class Backcast:
    """A back-cast run and its comparison with the record."""

    model: str
    values: dict[str, float]
    table: pd.DataFrame
    balance: dict[int, float]
    result: Any = field(repr=False)

    def summary(self) -> pd.DataFrame:
        """Per observable and split: observations, mean and largest |error|, tolerance."""
        t = self.table.dropna(subset=["error_frac"])
        rows = []
        for o in OBSERVABLES:
            for split in ("fitted", "held-out"):
                g = t[(t.observable == o.id) & (t.split == split)]
                if g.empty:
                    continue
                err = g.error_frac.abs()
                rows.append({
                    "observable": o.id, "label": o.label, "split": split, "n": len(g),
                    "mean_abs_error_frac": float(err.mean()),
                    "max_abs_error_frac": float(err.max()),
                    "tolerance_frac": o.tolerance_frac if split == "held-out" else math.nan,
                    "within_tolerance": (bool((err <= o.tolerance_frac).all())
                                         if split == "held-out" else None),
                })
        return pd.DataFrame(rows)

    @property
    def held_out_within_tolerance(self) -> bool:
        held = self.table[(self.table.split == "held-out") & self.table.error_frac.notna()]
        return bool(held.within_tolerance.all())


def backcast(model: str | Path = NATIONAL_MODEL,
             values: Mapping[str, float] | None = None) -> Backcast:
    """Run the back-cast model (the committed fitted values unless ``values``) and compare."""
    params = formula_parameters()
    sc = load_model(model, values)
    _check_national(sc)
    res = run(sc, seed=SEED)
    used = dict(values) if values else {p.key: params[p.key].value for p in FREE_PARAMETERS}
    return Backcast(model=sc.name, values=used, table=compare(simulate(res), params),
                    balance=balance_residuals(res), result=res)


# --- Baotou against its seeds ---------------------------------------------------------------


@dataclass
class BaotouChecks:
    """Baotou's structure, its 2022 figures and its 2024 targets against the model."""

    structure: pd.DataFrame
    year_2022: pd.DataFrame
    targets_2024: pd.DataFrame
    value_2022: pd.DataFrame  # output value by group, 2022 run


#: (label, plants or stage, the seeds' 2022 key, the seeds' 2024 key)
_STRUCTURE: tuple[tuple[str, str, str, str], ...] = (
    ("Magnet capacity (zone / city), t/a", "stage:magnet", "capacity.baotou_zone.magnet_tpa.2022",
     "target.baotou.magnet_capacity_tpa.2024"),
    ("JL Mag Baotou, t/a", "plant:jl_mag_baotou", "plant.jl_mag_baotou.capacity_tpa.2022",
     "plant.jl_mag_baotou.capacity_tpa"),
    ("Yunsheng Baotou, t/a", "plant:yunsheng_baotou", "plant.yunsheng_baotou.capacity_tpa.2022",
     "plant.yunsheng_baotou.capacity_tpa"),
    ("Smelting and separation capacity, t/a", "stage:separation", "",
     "target.baotou.separation_capacity_tpa.2024"),
    ("Scrap recycling capacity, t/a", "stage:recycling", "",
     "target.baotou.recycling_capacity_tpa.2024"),
    ("H2-storage materials, t/a", "plant:h2_storage_alloy_plant", "",
     "target.baotou.h2_storage_capacity_tpa.2024"),
    ("Polishing materials, t/a", "plant:polishing_powder_plant", "",
     "target.baotou.polishing_capacity_tpa.2024"),
    ("Catalytic materials and additives, t/a", "plant:catalyst_additive_plant", "",
     "target.baotou.catalyst_additive_capacity_tpa.2024"),
    ("Alloy materials, t/a", "plant:re_alloy_plant", "", "target.baotou.alloy_capacity_tpa.2024"),
)


def _capacity(sc: Scenario, what: str) -> float:
    kind, _, name = what.partition(":")
    plants = [p for p in sc.plants if (p.stage if kind == "stage" else p.id) == name]
    if not plants:
        raise ScenarioError([("plants", f"model {sc.name!r} has no {kind} {name!r}")])
    return float(sum(p.capacity_tpa for p in plants))


def baotou_checks() -> BaotouChecks:
    """Run ``baotou-2022`` and ``baotou-2024`` (seed :data:`SEED`) and set them next to the
    seeds: capacities, the 2022 figures (local conversion, output value), the 2024 targets."""
    params = formula_parameters()
    sc22, sc24 = load_scenario(BAOTOU_2022), load_scenario(BAOTOU_2024)
    r22, r24 = run(sc22, seed=SEED), run(sc24, seed=SEED)
    rows = []
    for label, what, k22, k24 in _STRUCTURE:
        rows.append({
            "item": label,
            "seeds_2022": params[k22].value if k22 else math.nan, "key_2022": k22,
            "model_2022": _capacity(sc22, what),
            "seeds_2024": params[k24].value, "key_2024": k24,
            "model_2024": _capacity(sc24, what),
        })
    structure = pd.DataFrame(rows)
    conv_key, value_key = "conversion.baotou_zone.local_frac.2022", \
        "output.baotou_zone.re_industry_yi_cny.2022"
    total = r22.kpi("value.group", "total", 2022)
    no_app = total - r22.kpi("value.group", "applications", 2022)
    conv = r22.kpi("local_conversion", "region", 2022)
    seeds_conv, seeds_value = params[conv_key].value, params[value_key].value
    year_2022 = pd.DataFrame([
        {"figure": "Local conversion of RE raw materials", "seeds": seeds_conv,
         "seeds_reads": "> 85 % (lower bound)", "key": conv_key, "model": conv,
         "model_reads": f"{conv:.1%}",
         "comparison": ("at or above the seeds' lower bound" if conv >= seeds_conv
                        else f"{seeds_conv - conv:.1%} below the seeds' lower bound"),
         "agrees": bool(conv >= seeds_conv)},
        {"figure": "RE industry output value, 亿元 (model: all three groups)",
         "seeds": seeds_value, "seeds_reads": "about 450 (expected)", "key": value_key,
         "model": total, "model_reads": f"{total:,.0f}",
         "comparison": f"model / seeds = {total / seeds_value:.2f}", "agrees": False},
        {"figure": "RE industry output value, 亿元 (model: raw + new materials only)",
         "seeds": seeds_value, "seeds_reads": "about 450 (expected)", "key": value_key,
         "model": no_app, "model_reads": f"{no_app:,.0f}",
         "comparison": f"model / seeds = {no_app / seeds_value:.2f}", "agrees": False},
    ])
    for i in (1, 2):  # "about 450": within a fifth of it counts as agreeing
        year_2022.loc[i, "agrees"] = bool(abs(year_2022.model[i] / seeds_value - 1) <= 0.2)
    kp = r22.kpis
    value_2022 = kp[(kp.kpi.isin(["value.group", "value.stage"])) & (kp.year == 2022)][
        ["kpi", "key", "value", "unit"]].reset_index(drop=True)
    return BaotouChecks(structure=structure, year_2022=year_2022,
                        targets_2024=r24.target_table, value_2022=value_2022)


# --- the HTML report ------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.86em}
th,td{border:1px solid #ddd;padding:.25em .5em;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.held-out td{background:#fff8e6}tr.fitted td{background:#eef6ff}
.bad{color:#b00020;font-weight:600}.ok{color:#1b7f3b;font-weight:600}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}.small{font-size:.85em;color:#555}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any, fmt: str = ",.0f") -> str:
    if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
        return "–"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | float | np.integer | np.floating):
        if fmt == "d":
            return str(int(v))
        if fmt == "auto":
            return format(float(v), ",.0f" if abs(float(v)) >= 100 else ".3g")
        return format(float(v), fmt)
    return _esc(v)


def _table(df: pd.DataFrame, formats: Mapping[str, str] | None = None,
           row_class: str | None = None, cell_class: Mapping[str, Callable[[Any], str]] | None
           = None) -> str:
    formats = {"year": "d", **(formats or {})}
    cell_class = cell_class or {}
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = []
    for _, r in df.iterrows():
        cls = f' class="{_esc(r[row_class])}"' if row_class else ""
        cells = []
        for c in df.columns:
            v = r[c]
            numeric = isinstance(v, int | float | np.integer | np.floating) and not isinstance(
                v, bool | np.bool_)
            extra = cell_class[c](v) if c in cell_class else ""
            klass = " ".join(x for x in ("n" if numeric else "", extra) if x)
            if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
                text = "–"
            elif c in formats:
                text = _num(v, formats[c])
            else:
                text = _num(v) if numeric or isinstance(v, bool | np.bool_) else _esc(v)
            cells.append(f'<td class="{klass}">{text}</td>' if klass else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _within_class(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return "ok" if bool(v) else "bad"


def _charts(bc: Backcast) -> list[str]:
    import plotly.graph_objects as go

    out = []
    first = True
    for o in OBSERVABLES:
        t = bc.table[bc.table.observable == o.id].sort_values("year")
        fig = go.Figure()
        fig.add_vrect(x0=FIT_YEARS[0] - 0.5, x1=FIT_YEARS[-1] + 0.5, fillcolor="#dbeafe",
                      opacity=0.45, line_width=0, annotation_text="fitted years",
                      annotation_position="top left")
        fig.add_vrect(x0=HELD_OUT_YEARS[0] - 0.5, x1=HELD_OUT_YEARS[-1] + 0.5,
                      fillcolor="#fde68a", opacity=0.35, line_width=0,
                      annotation_text="held-out years", annotation_position="top left")
        fig.add_trace(go.Scatter(x=t.year, y=t.simulated, mode="lines+markers",
                                 name="simulated", line={"color": "#1f4e9c"}))
        rep = t[t.reported.notna()]
        fig.add_trace(go.Scatter(
            x=rep.year, y=rep.reported, mode="markers", name="reported (figure used)",
            marker={"color": "#c2410c", "size": 11, "symbol": "diamond"},
            error_y={"type": "data", "symmetric": False,
                     "array": (rep.range_high - rep.reported).tolist(),
                     "arrayminus": (rep.reported - rep.range_low).tolist(),
                     "color": "#c2410c"},
            text=[f"{k}<br>{a}" if a else k for k, a in zip(rep.reported_key, rep.alternatives,
                                                            strict=True)],
            hovertemplate="%{x}: %{y:,.0f}<br>%{text}<extra></extra>",
        ))
        fig.update_layout(title=f"{o.label} ({o.unit})", height=340,
                          margin={"l": 60, "r": 20, "t": 50, "b": 40},
                          xaxis={"dtick": 1}, yaxis={"rangemode": "tozero"},
                          legend={"orientation": "h", "y": -0.18})
        out.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    return out


def _baotou_chart(bt: BaotouChecks, include_js: bool) -> str:
    import plotly.graph_objects as go

    v = bt.value_2022[bt.value_2022.kpi == "value.group"].set_index("key").value
    seeds = float(bt.year_2022.seeds.iloc[1])
    fig = go.Figure()
    for g, colour in (("raw_materials", "#1f4e9c"), ("new_materials", "#0e7490"),
                      ("applications", "#7c3aed")):
        fig.add_trace(go.Bar(x=["model 2022 (2022 prices)"], y=[float(v.get(g, 0.0))], name=g,
                             marker_color=colour))
    fig.add_trace(go.Bar(x=["seeds 2022 (expected)"], y=[seeds], name="seeds: RE industry",
                         marker_color="#c2410c"))
    fig.update_layout(barmode="stack", title="Baotou RE output value 2022 (亿元)", height=340,
                      margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return str(fig.to_html(full_html=False, include_plotlyjs=include_js))


def _fitted_table(bc: Backcast, params: Mapping[str, Parameter]) -> pd.DataFrame:
    rows = []
    for p in FREE_PARAMETERS:
        prm = params.get(p.key)
        lo, hi = p.bounds(params)
        rows.append({"key": p.key, "value": bc.values[p.key], "unit": p.unit,
                     "bounds": f"[{_fmt(lo)}, {_fmt(hi)}]", "what it stands for": p.meaning,
                     "how it was obtained": prm.basis if prm else "trial value (not committed)"})
    return pd.DataFrame(rows)


def write_report(path: str | Path, model: str | Path = NATIONAL_MODEL,
                 bc: Backcast | None = None, bt: BaotouChecks | None = None, *,
                 force: bool = False) -> Path:
    """Write the validation report: one self-contained HTML file (plotly inlined), written
    atomically; an existing file is replaced only with ``force`` (see :mod:`retwin._files`).
    """
    path = Path(path)
    check_output_file(path, force=force)  # before the work of the back-cast
    params = formula_parameters()
    bc = bc or backcast(model)
    bt = bt or baotou_checks()
    pct = ".1%"
    t = bc.table.copy()
    t["error"] = t.error_frac
    shown = t[["label", "year", "split", "reported", "simulated", "error", "tolerance_frac",
               "within_tolerance", "reported_key", "flag", "alternatives"]].rename(
        columns={"tolerance_frac": "tolerance", "within_tolerance": "within"})
    summ = bc.summary()[["label", "split", "n", "mean_abs_error_frac", "max_abs_error_frac",
                         "tolerance_frac", "within_tolerance"]].rename(columns={
                             "mean_abs_error_frac": "mean |error|",
                             "max_abs_error_frac": "max |error|", "tolerance_frac": "tolerance",
                             "within_tolerance": "within"})
    ranges = source_ranges(params)
    bal = pd.DataFrame({"year": list(bc.balance), "unseparated share of domestic mine output":
                        list(bc.balance.values())})
    charts = _charts(bc)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>retwin validation report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>retwin: validated against the record</h1>",
        "<p>Regenerate this file with <code>retwin validation-report --html FILE</code>; the "
        "table alone with <code>retwin backcast models/china-2020.yaml</code>; the fit with "
        "<code>retwin fit</code>. Fitted years "
        f"{FIT_YEARS[0]}–{FIT_YEARS[-1]} (blue) were used to fit the free parameters; held-out "
        f"years {HELD_OUT_YEARS[0]}–{HELD_OUT_YEARS[-1]} (amber) were not. Error = (simulated − "
        "reported) / reported.</p>",
        f"<h2>National back-cast: <code>{_esc(bc.model)}</code>, 2020–2024</h2>",
        "<h3>Errors by observable</h3>",
        _table(summ, {"mean |error|": pct, "max |error|": pct, "tolerance": pct, "n": ",.0f"},
               cell_class={"within": _within_class}),
        "<h3>Every observation</h3>",
        _table(shown, {"error": pct, "tolerance": pct}, row_class="split",
               cell_class={"within": _within_class}),
        "<h3>Charts</h3><p class='small'>Diamonds: the figure used; bars: the range over "
        "all sources of that year.</p>",
        *charts,
        "<h3>Free parameters (fitted on the fitted years only)</h3>",
        _table(_fitted_table(bc, params), {"value": ".6g"}),
        "<h3>Balance condition of the fit</h3><p class='small'>Domestic concentrate left "
        "unseparated each year, as a share of the domestic mine output (fitted years: part "
        "of the objective).</p>",
        _table(bal, {"unseparated share of domestic mine output": ".2%", "year": "d"}),
        "<h3>Where sources disagree</h3>",
        "<p>For each observable-year with more than one source: the figure used (first) and "
        "the others, which make the range shown on the charts.</p>",
        _table(ranges[["observable", "year", "key", "value", "unit", "flag", "used", "source"]]
               if not ranges.empty else ranges, {"year": "d"}),
        "<h3>Observables: what is compared</h3><ul>",
        *[f"<li><b>{_esc(o.label)}</b> ({_esc(o.unit)}): {_esc(o.note)}</li>"
          for o in OBSERVABLES],
        "</ul>",
        "<h2>Baotou against its seeds</h2>",
        "<h3>Structure: capacities the seeds give</h3>",
        _table(bt.structure, {"seeds_2022": ",.0f", "model_2022": ",.0f", "seeds_2024": ",.0f",
                              "model_2024": ",.0f"}),
        "<h3>2022: the seeds' figures next to the model with 2022 quotas and prices "
        f"(<code>{BAOTOU_2022}</code>)</h3>",
        _table(bt.year_2022[["figure", "seeds_reads", "model_reads", "comparison", "agrees",
                             "key"]].rename(columns={"seeds_reads": "seeds", "model_reads":
                                                     "model 2022"}),
               cell_class={"agrees": _within_class}),
        _baotou_chart(bt, include_js=False),
        "<h3>2024 targets next to the 2024 run "
        f"(<code>{BAOTOU_2024}</code>, seed {SEED})</h3>",
        _table(bt.targets_2024[["name", "year", "goal", "value", "unit", "attained"]],
               {"goal": "auto", "value": "auto"},
               cell_class={"attained": _within_class}),
        "<h2>What the model cannot reproduce, and why</h2><ul>",
        *[f"<li>{_esc(x)}</li>" for x in LIMITATIONS],
        "</ul></body></html>",
    ]
    write_output_file(path, "\n".join(parts), force=force)
    return path
