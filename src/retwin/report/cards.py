"""The headline cards and their "why", declared and computed once for the planner's page
(:mod:`retwin_service.routes.answer`) and the file report (:mod:`retwin.report.html`).

A card is the handful of numbers a planner reads first about one KPI: the what-if value
per year, its p5–p95 band, the Δ and Δ % against the baseline, the unit. :data:`CARDS`
declares which; :func:`card_values` computes them from a result's stored tables;
:func:`attribute` takes each card's Δ apart over the what-if's changes, given the cards of
the runs :func:`part_changes` names (each change alone and, with three or more, all but
one; the same seed and replications, so every part is paired with the same baseline).

This module reads tables given to it and runs nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from retwin.kpis import get as kpi_decl

__all__ = ["CARDS", "Card", "attribute", "card_values", "focus_year", "part_changes"]


@dataclass(frozen=True)
class Card:
    """A headline card: one KPI row (``keys`` of one key), or the sum of several rows measured
    in ``unit`` (``keys`` empty: every key of that unit), summed per replication."""

    id: str
    kpi: str
    keys: tuple[str, ...]
    label: str
    label_zh: str
    unit: str | None = None  # for a sum: the unit of the rows summed


CARDS: tuple[Card, ...] = (
    Card("magnet", "output.stage", ("magnet",), "Magnet output", "磁材产量"),
    Card("separation", "output.stage", ("separation",), "Separated output", "冶炼分离产量"),
    Card("prnd_price", "price.material", ("prnd_oxide",), "PrNd oxide price", "氧化镨钕价格"),
    Card("local_conversion", "local_conversion", ("region",), "Local conversion", "就地转化率"),
    Card("value_total", "value.group", ("total",), "Output value, total", "产值：合计"),
    Card("value_raw", "value.group", ("raw_materials",), "Output value, raw materials",
         "产值：原材料"),
    Card("value_new", "value.group", ("new_materials",), "Output value, new materials",
         "产值：新材料"),
    Card("value_app", "value.group", ("applications",), "Output value, applications",
         "产值：应用"),
    Card("unmet", "unmet.segment", (), "Unmet demand (t)", "未满足需求（吨）", unit="t"),
    Card("imports", "imports.market", (), "Imports (t)", "进口量（吨）", unit="t"),
    Card("exports", "exports.market", (), "Exports (t)", "出口量（吨）", unit="t"),
)

#: A table, or how to read it when it is needed (replication tables are large).
Table = pd.DataFrame | Callable[[], pd.DataFrame]


def _f(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


def _get(t: Table) -> pd.DataFrame:
    return t() if callable(t) else t


def _unit(card: Card, unit: str, materials: dict[str, dict[str, Any]]) -> str:
    if card.kpi == "price.material" and card.keys:
        return f"CNY/{materials.get(card.keys[0], {}).get('unit', 'unit')}"
    return unit


def _quantiles(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("year")["value"]
    return pd.DataFrame({"mean": g.mean(), "p5": g.quantile(0.05), "p95": g.quantile(0.95)})


def _sum_rows(reps: pd.DataFrame, card: Card) -> pd.DataFrame:
    rows = reps[(reps["kpi"] == card.kpi) & (reps["unit"] == card.unit)]
    return pd.DataFrame(rows.groupby(["replication", "year"], as_index=False)["value"].sum())


def card_values(summary: pd.DataFrame, difference: pd.DataFrame | None, kpis: Table,
                base_kpis: Table | None, scenario: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The headline cards of a stored result: per card ``id, kpi, key, sum_of, label,
    label_zh, unit, kind, years`` and, one value a year, ``mean, p5, p95, base, delta,
    delta_p5, delta_p95, delta_pct``, and the scenario's ``targets`` on that KPI row.

    A card of one KPI row takes its numbers from ``summary`` and ``difference`` (the
    result's own tables), so they are the result's numbers exactly. A sum is taken per
    replication from ``kpis`` (every replication's rows) and, when ``base_kpis`` is given,
    paired with the baseline's by replication (common random numbers); without it, its Δ is
    the sum of the rows' mean differences (exact: a mean adds up) and has no band.
    A card whose rows the result lacks (a model without magnets) is left out."""
    materials = {m["id"]: m for m in scenario.get("materials", [])}
    targets = scenario.get("targets", [])
    years = sorted(int(y) for y in summary["year"].unique())
    out: list[dict[str, Any]] = []
    for card in CARDS:
        delta: pd.DataFrame | None = None
        if card.keys:
            rows = summary[(summary["kpi"] == card.kpi) & (summary["key"] == card.keys[0])]
            if rows.empty:
                continue
            what = rows.set_index("year")[["mean", "p5", "p95"]]
            unit = str(rows["unit"].iloc[0])
            if difference is not None:
                d = difference[(difference["kpi"] == card.kpi)
                               & (difference["key"] == card.keys[0])]
                delta = d.set_index("year")[["mean", "p5", "p95"]]
        else:
            s = _sum_rows(_get(kpis), card)
            if s.empty:
                continue
            what = _quantiles(s)
            unit = card.unit or ""
            if base_kpis is not None:
                b = _sum_rows(_get(base_kpis), card)
                paired = s.merge(b, on=["replication", "year"], suffixes=("", "_b"))
                paired["value"] = paired["value"] - paired["value_b"]
                delta = _quantiles(paired)
            elif difference is not None:
                d = difference[(difference["kpi"] == card.kpi)
                               & (difference["unit"] == card.unit)]
                delta = pd.DataFrame({"mean": d.groupby("year")["mean"].sum()})
                delta["p5"] = delta["p95"] = math.nan
        series: dict[str, list[float | None]] = {n: [] for n in (
            "mean", "p5", "p95", "base", "delta", "delta_p5", "delta_p95", "delta_pct")}
        for y in years:
            w = what.loc[y] if y in what.index else None
            dy = delta.loc[y] if delta is not None and y in delta.index else None
            m = None if w is None else _f(w["mean"])
            series["mean"].append(m)
            series["p5"].append(None if w is None else _f(w["p5"]))
            series["p95"].append(None if w is None else _f(w["p95"]))
            dm = None if dy is None else _f(dy["mean"])
            base = None if m is None or dm is None else m - dm
            series["delta"].append(dm)
            series["delta_p5"].append(None if dy is None else _f(dy["p5"]))
            series["delta_p95"].append(None if dy is None else _f(dy["p95"]))
            series["base"].append(base if dy is not None else None)
            series["delta_pct"].append(
                None if dm is None or not base else 100.0 * dm / abs(base))
        path = f"{card.kpi}.{card.keys[0]}" if card.keys else ""
        goals = [{"year": int(g["year"]), "goal": _f(g["value"]),
                  "kind": g.get("kind", "at_least"), "name": g.get("name", ""),
                  "name_zh": g.get("name_zh", "")}
                 for g in targets if path and g.get("kpi") == path]
        decl = kpi_decl(card.kpi)
        out.append({"id": card.id, "kpi": card.kpi, "key": card.keys[0] if card.keys else None,
                    "sum_of": None if card.keys else card.unit, "label": card.label,
                    "label_zh": card.label_zh, "unit": _unit(card, unit, materials),
                    "kind": decl.kind, "years": years, **series, "targets": goals})
    return out


def _start(ch: Mapping[str, Any]) -> dt.date | None:
    """The day a change starts acting: its ``from``, or an added plant's commissioning."""
    day = ch.get("from")
    plant = ch.get("plant")
    if not day and isinstance(plant, dict):
        day = plant.get("commissioning")
    return dt.date.fromisoformat(str(day)) if day else None


def focus_year(changes: Sequence[Mapping[str, Any]], years: list[int]) -> int | None:
    """The first year of the run in which a change acts (a change without a start acts from
    the first year); the first year when there is no change."""
    if not years:
        return None
    starts = [(d.year if (d := _start(ch)) else years[0]) for ch in changes]
    y = min(starts) if starts else years[0]
    return min(max(y, years[0]), years[-1])


def part_changes(changes: Sequence[Any]) -> list[tuple[str, int, list[Any]]]:
    """The runs a "why" needs, as ``(part, i, changes)``: each change alone (``one``) and,
    with three changes or more, every change but one (``without``). With one or two changes
    the all-but-one runs are the whole what-if and the other change alone: nothing more."""
    ch = list(changes)
    parts = [("one", i, [c]) for i, c in enumerate(ch)]
    if len(ch) >= 3:
        parts += [("without", i, ch[:i] + ch[i + 1:]) for i in range(len(ch))]
    return parts


def attribute(whole: Sequence[dict[str, Any]],
              parts: Mapping[tuple[str, int], Sequence[dict[str, Any]]],
              n_changes: int) -> list[dict[str, Any]]:
    """Attribute each headline card's Δ (``whole``: the what-if's :func:`card_values`) to
    the changes, given the cards of the runs of :func:`part_changes` by ``(part, i)``.

    ``one[i]`` is the Δ of change ``i`` alone; ``marginal[i]`` is the Δ it adds to all the
    others (the whole Δ less the Δ without it; with two changes, the whole less the other
    alone); ``interaction`` is what the changes do together beyond the sum of their ``one``,
    so ``sum(one) + interaction == total`` in every year. A missing part gives ``None``."""
    got = {k: {c["id"]: c for c in v} for k, v in parts.items()}
    out = []
    for c in whole:
        cid, years = c["id"], c["years"]

        def delta(kind: str, i: int, cid: str = cid, years: list[int] = years
                  ) -> list[float | None]:
            part = got.get((kind, i), {}).get(cid)
            return list(part["delta"]) if part else [None] * len(years)

        one = [delta("one", i) for i in range(n_changes)]
        if n_changes == 1:
            without: list[list[float | None]] = [[0.0] * len(years)]
        elif n_changes == 2:
            without = [one[1], one[0]]
        else:
            without = [delta("without", i) for i in range(n_changes)]
        total = c["delta"]
        marginal = [[None if t is None or w is None else t - w
                     for t, w in zip(total, wo, strict=True)] for wo in without]
        interaction: list[float | None] = []
        for k in range(len(years)):
            vals = [o[k] for o in one]
            interaction.append(None if total[k] is None or any(v is None for v in vals)
                               else total[k] - sum(v for v in vals if v is not None))
        out.append({"id": cid, "label": c["label"], "label_zh": c["label_zh"],
                    "unit": c["unit"], "years": years, "base": c["base"], "mean": c["mean"],
                    "total": total, "one": one, "marginal": marginal,
                    "interaction": interaction})
    return out
