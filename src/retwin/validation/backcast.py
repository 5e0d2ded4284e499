"""The national back-cast: the model run with the committed fitted values over 2020–2024,
compared with the record year by year (fitted and held-out years marked)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from retwin.engine.run import run
from retwin.scenario.data import formula_parameters
from retwin.validation.fit import FREE_PARAMETERS, load_model
from retwin.validation.observables import (
    NATIONAL_MODEL,
    OBSERVABLES,
    SEED,
    _check_national,
    balance_residuals,
    compare,
    simulate,
)

__all__ = ["Backcast", "backcast"]


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
                    "tolerance_frac": (o.tolerance_frac if split == "held-out"
                                       and o.tolerance_frac is not None else math.nan),
                    "within_tolerance": (bool((err <= o.tolerance_frac).all())
                                         if split == "held-out" and o.tolerance_frac is not None
                                         else None),
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
    sim = simulate(res)
    return Backcast(model=sc.name, values=used, table=compare(sim, params),
                    balance=balance_residuals(res, sim), result=res)

