"""One-at-a-time sensitivity: which parameter moves each KPI most (a tornado table).

Two pure functions on plain frames, so they can be tested alone and applied to any study's
Parquet output: :func:`kpi_means` reduces the tidy KPI rows to one number per point and KPI;
:func:`sensitivity_table` ranks the parameters by the swing they cause.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from retwin.batch.spec import KpiSelector

__all__ = ["SENSITIVITY_COLUMNS", "kpi_means", "sensitivity_table"]

SENSITIVITY_COLUMNS = ["kpi", "rank", "parameter", "value_low", "value_base", "value_high",
                       "kpi_low", "kpi_base", "kpi_high", "delta_low", "delta_high", "swing"]


def kpi_means(kpis: pd.DataFrame, selectors: Sequence[KpiSelector]) -> pd.DataFrame:
    """Per point and selector, the mean over replications of the KPI.

    ``kpis`` has the columns of a study's ``kpis`` table (``point, kpi, key, year, value,
    replication``). A selector with a year takes that year's value; one without takes the
    mean over the years of each replication first. Returns ``point, kpi, value`` where
    ``kpi`` is the selector's label.
    """
    parts = []
    for sel in selectors:
        rows = kpis[(kpis["kpi"] == sel.kpi) & (kpis["key"] == sel.key)]
        if sel.year is not None:
            rows = rows[rows["year"] == sel.year]
        per_run = rows.groupby(["point", "replication"], observed=True, sort=False)[
            "value"].mean()
        per_point = per_run.groupby(level="point", observed=True, sort=False).mean()
        parts.append(pd.DataFrame({"point": per_point.index.astype(str), "kpi": sel.label,
                                   "value": per_point.to_numpy(np.float64)}))
    if not parts:
        return pd.DataFrame({"point": pd.Series(dtype=str), "kpi": pd.Series(dtype=str),
                             "value": pd.Series(dtype=float)})
    return pd.concat(parts, ignore_index=True)


def sensitivity_table(points: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame:
    """Rank the parameters of a one-at-a-time study by the swing of each KPI.

    ``points`` is a study's points table (``point, role, parameter`` and one column per
    parameter): one ``base`` point and, per parameter, a ``low`` and a ``high`` point.
    ``means`` is :func:`kpi_means`'s output. For every KPI and parameter the table gives the
    parameter's low, base and high values, the KPI there, the changes from base
    (``delta_low``, ``delta_high``) and ``swing = |kpi_high - kpi_low|``; ``rank`` 1 is the
    largest swing (ties keep the spec's parameter order). A point without results gives NaN
    and ranks last.
    """
    base = points[points["role"] == "base"]
    if len(base) != 1:
        raise ValueError(f"a one-at-a-time study has exactly one base point (found {len(base)})")
    base_id = str(base["point"].iloc[0])
    moved = points[points["role"].isin(["low", "high"])]
    params = list(dict.fromkeys(moved["parameter"]))
    value = means.set_index(["point", "kpi"])["value"]

    def at(point: str, kpi: str) -> float:
        return float(value.get((point, kpi), np.nan))

    rows = []
    for kpi in dict.fromkeys(means["kpi"]):
        k_base = at(base_id, kpi)
        block = []
        for order, name in enumerate(params):
            lo = moved[(moved["parameter"] == name) & (moved["role"] == "low")]
            hi = moved[(moved["parameter"] == name) & (moved["role"] == "high")]
            if len(lo) != 1 or len(hi) != 1:
                raise ValueError(f"parameter {name!r} needs one low and one high point")
            k_lo, k_hi = at(str(lo["point"].iloc[0]), kpi), at(str(hi["point"].iloc[0]), kpi)
            block.append({
                "kpi": kpi, "parameter": name, "value_low": _num(lo[name].iloc[0]),
                "value_base": _num(base[name].iloc[0]), "value_high": _num(hi[name].iloc[0]),
                "kpi_low": k_lo, "kpi_base": k_base, "kpi_high": k_hi,
                "delta_low": k_lo - k_base, "delta_high": k_hi - k_base,
                "swing": abs(k_hi - k_lo), "_order": order,
            })
        block.sort(key=lambda r: (np.isnan(r["swing"]), -np.nan_to_num(r["swing"]),
                                  r["_order"]))
        for rank, r in enumerate(block, start=1):
            r["rank"] = rank
            del r["_order"]
        rows += block
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
