"""Validation against the record: the national back-cast, its fit, and Baotou against its seeds.

The procedure (README, "Validation"):

1. ``models/china-2020.yaml`` runs China's chain over 2020–2024 with the historical quotas of
   ``data/`` and markets on, prices formed from their 2020 levels (deterministic: no outages,
   no noise; seed :data:`SEED`).
2. Its free parameters (:data:`FREE_PARAMETERS`) are fitted on the *fitted years*
   :data:`FIT_YEARS` only. :func:`fit` minimises, with ``scipy.optimize.differential_evolution``
   (seeded, then polished), the sum of squares of

   * the relative error ``(simulated - reported) / reported`` of every observation of a fitted
     :data:`OBSERVABLES` entry (``Observable.fitted``) in a fitted year (the first data key of
     the year is the figure used; the others only make the range), and
   * the *balance condition* of each fitted year: the domestic concentrate left unseparated,
     as a share of the domestic mine output (:func:`balance_residuals`). Mining and smelting
     quotas are set together, so mined concentrate is separated, not stockpiled; without this
     condition any recovery above the one that fills the smelting quota fits equally well.

   The search is seeded, so the fit is deterministic and reproducible. ``retwin fit`` writes
   the result to ``data/fitted.csv`` with how it was obtained; the models refer to the fitted
   keys by formula.
3. The held-out years :data:`HELD_OUT_YEARS` are never used by the fit; :func:`backcast` runs
   the model with the committed fitted values and reports every year, each marked fitted or
   held out, with the error and, for held-out years, the tolerance of :data:`OBSERVABLES`.

Baotou is checked against its seeds by :func:`baotou_checks`: the structure of the 2024
reference model (capacities the seeds give), the 2022 figures of the seeds next to
``models/baotou-2022.yaml`` (2022 quotas and prices) and the 2024 targets next to the 2024 run.
:func:`write_report` puts everything into one self-contained HTML file (plotly charts).

The package: :mod:`~retwin.validation.observables` (the years, the observables, reading a
national run, the comparison table), :mod:`~retwin.validation.fit` (the free parameters and
their fit), :mod:`~retwin.validation.backcast`, :mod:`~retwin.validation.baotou`; the HTML is
laid out by :mod:`retwin.report.validation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retwin.validation.backcast import Backcast, backcast
from retwin.validation.baotou import BaotouChecks, baotou_checks
from retwin.validation.fit import (
    FREE_PARAMETERS,
    FitResult,
    FreeParameter,
    fit,
    fitted_diff,
    load_model,
    write_fitted,
)
from retwin.validation.observables import (
    BAOTOU_2022,
    BAOTOU_2024,
    FIT_YEARS,
    HELD_OUT_YEARS,
    LIMITATIONS,
    NATIONAL_MODEL,
    OBSERVABLES,
    SEED,
    Observable,
    balance_residuals,
    compare,
    held_out_keys,
    simulate,
    source_ranges,
)

if TYPE_CHECKING:
    from retwin.report.validation import write_report

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
    "compare",
    "fit",
    "fitted_diff",
    "held_out_keys",
    "load_model",
    "simulate",
    "source_ranges",
    "write_fitted",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # retwin.report.validation imports this package, so it is loaded on first use (an import
    # at the top would be circular when the report module is imported first).
    if name == "write_report":
        from retwin.report.validation import write_report

        return write_report
    raise AttributeError(f"module 'retwin.validation' has no attribute {name!r}")
