"""Plotly figures of a result directory or a sweep directory, as JSON-ready dicts.

Every function reads the stored tables (:func:`retwin.storage.read_table`) and returns a
figure ``{"data": [...], "layout": {...}}`` (or a list of them) that ``Plotly.newPlot`` in
a browser and :mod:`retwin.report.html` both draw, so the service's page and the file
report show the same charts.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retwin.report.labels import Labels
from retwin.scenario.schema import ELEMENTS, STAGES
from retwin.storage import read_table

__all__ = [
    "SERIES_KINDS",
    "bottlenecks",
    "distributions",
    "element_balance",
    "headline",
    "is_run_dir",
    "is_sweep_dir",
    "kpi_table",
    "kpi_title",
    "sankey",
    "sankey_years",
    "timeseries",
    "tornado",
    "why_waterfall",
]

Figure = dict[str, Any]

#: Kinds of the ``monthly`` table a time series can show.
SERIES_KINDS: tuple[str, ...] = ("activity", "capacity", "utilisation", "stock", "imports",
                                 "exports", "served", "unmet", "price")

PALETTE = ("#1f4e9c", "#c2410c", "#0e7490", "#7c3aed", "#15803d", "#b91c1c", "#a16207",
           "#be185d", "#4d7c0f", "#334155", "#0369a1", "#9333ea")

_SOURCES = ("ore_body", "imports", "stock_draw")
_SINKS = ("exports", "end_use", "stock_build", "losses")

#: Headline KPIs (kpi, key or None for every key), in the order shown.
HEADLINE: tuple[tuple[str, str | None], ...] = (
    ("output.stage", None),
    ("value.group", "total"),
    ("local_conversion", None),
    ("fill_rate.segment", None),
    ("element.la_ce_surplus", None),
    ("element.dy_tb_deficit", None),
)


def _layout(title: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"title": {"text": title}, "margin": {"l": 60, "r": 20, "t": 50,
                                                                  "b": 40},
                            "height": 380, "legend": {"orientation": "h", "y": -0.15},
                            "font": {"family": "system-ui, 'Noto Sans CJK SC', sans-serif"}}
    base.update(kw)
    return base


def _num(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# --- reading -------------------------------------------------------------------------------


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "scenario.json").is_file()


def is_sweep_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "points.parquet").is_file()


@lru_cache(maxsize=32)
def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _scenario(run_dir: Path) -> dict[str, Any]:
    return _json(Path(run_dir) / "scenario.json")


def _labels(run_dir: Path, lang: str) -> Labels:
    return Labels(lang, _scenario(run_dir))


def _summary(run_dir: Path) -> pd.DataFrame:
    """Mean (and band) per KPI, key and year; from ``kpis`` when there is no ``summary``."""
    try:
        return read_table(run_dir, "summary")
    except FileNotFoundError:
        k = read_table(run_dir, "kpis")
        g = k.groupby(["kpi", "key", "year", "unit"], sort=False)["value"]
        return pd.DataFrame({"mean": g.mean(), "p5": g.quantile(0.05), "p50": g.median(),
                             "p95": g.quantile(0.95), "n": g.size()}).reset_index()


def _year_of(col: pd.Series) -> pd.Series:
    return pd.to_datetime(col).dt.year


def _item_name(lb: Labels, item: str) -> str:
    """``region/material`` pools keep their region; everything else its name."""
    if "/" in item:
        region, rest = item.split("/", 1)
        return f"{region}/{lb.name(rest)}"
    return lb.name(item)


# --- the Sankey ----------------------------------------------------------------------------


def sankey_years(run_dir: str | Path) -> list[int]:
    """The years of a run (those its flows cover)."""
    flows = read_table(Path(run_dir), "flows")
    return sorted(int(y) for y in _year_of(flows["month"]).unique())


def sankey(run_dir: str | Path, year: int | None = None, *, lang: str = "en",
           title: str = "") -> Figure:
    """The year's flows of the first replication in t REO, from mine to end use.

    Nodes are the stages plus ore body, imports, stock draw-down, exports, end use, stock
    build-up (stock change, goods in transit included) and losses. For each material its
    sources (producing stages, imports) are split over its uses (consuming stages, exports,
    demand served) in proportion; what is left over is stock build-up (or, short, stock
    draw-down), so each stage's inflow equals its outflow plus its losses.
    """
    d = Path(run_dir)
    sc = _scenario(d)
    lb = Labels(lang, sc)
    years = sankey_years(d)
    if not years:
        raise ValueError(f"{d} has no flows")
    year = years[0] if year is None else int(year)
    if year not in years:
        raise ValueError(f"year(={year}) is outside the run's years {years[0]}..{years[-1]}")
    reo = {m["id"]: float(sum((m.get("composition_t_reo_per_unit") or {}).values()))
           for m in sc.get("materials", [])}
    flows = read_table(d, "flows")
    flows = flows[_year_of(flows["month"]) == year]
    by = flows.groupby(["stage", "material", "direction"], observed=True)["amount"].sum()
    series = read_table(d, "series")
    series = series[(_year_of(series["date"]) == year)
                    & series["kind"].isin(["imports", "exports", "served"])]
    trade = series.groupby([series["kind"].astype(str), series["id"].astype(str)],
                           observed=True)["value"].sum()
    market_mat = {k["id"]: k["material"] for k in sc.get("markets", [])}
    segment_mat = {g["id"]: g["material"] for g in sc.get("demand", [])}

    sources: dict[str, dict[str, float]] = {}
    uses: dict[str, dict[str, float]] = {}
    stage_in: dict[str, float] = {}
    stage_out: dict[str, float] = {}
    for row in by.reset_index().itertuples(index=False):
        stage, mat, direction = str(row[0]), str(row[1]), str(row[2])
        amount = float(row[3])
        if amount <= 0:
            continue
        side = sources if direction == "out" else uses
        side.setdefault(str(mat), {})
        side[str(mat)][str(stage)] = side[str(mat)].get(str(stage), 0.0) + amount
        tot = stage_out if direction == "out" else stage_in
        tot[str(stage)] = tot.get(str(stage), 0.0) + amount * reo.get(str(mat), 0.0)
    for row in trade.reset_index().itertuples(index=False):
        kind, ident, amount = str(row[0]), str(row[1]), float(row[2])
        if amount <= 0:
            continue
        found = segment_mat.get(ident) if kind == "served" else market_mat.get(ident)
        if found is None:
            continue
        mat = str(found)
        node = "end_use" if kind == "served" else kind
        side = sources if kind == "imports" else uses
        side.setdefault(mat, {})
        side[mat][node] = side[mat].get(node, 0.0) + amount

    links: dict[tuple[str, str, str], float] = {}
    for mat in sorted(set(sources) | set(uses)):
        src = dict(sources.get(mat, {}))
        use = dict(uses.get(mat, {}))
        left = sum(src.values()) - sum(use.values())
        if left > 0:
            use["stock_build"] = use.get("stock_build", 0.0) + left
        elif left < 0:
            extracted = not src and all(s == "mining" for s in use)
            key = "ore_body" if extracted else "stock_draw"
            src[key] = src.get(key, 0.0) - left
        total = sum(use.values())
        if total <= 0:
            continue
        for s, sa in src.items():
            for u, ua in use.items():
                v = round(sa * ua / total * reo.get(mat, 0.0), 6)
                if v > 0:
                    links[(s, u, mat)] = links.get((s, u, mat), 0.0) + v
    for stage in sorted(set(stage_in) | set(stage_out)):
        loss = stage_in.get(stage, 0.0) - stage_out.get(stage, 0.0)
        if loss > 1e-9 * max(stage_in.get(stage, 0.0), 1.0):
            links[(stage, "losses", "")] = loss
        elif loss < 0:  # output without declared input REO: from the ore body
            links[("ore_body", stage, "")] = -loss

    used = {n for s, u, _ in links for n in (s, u)}
    order = [n for n in (*_SOURCES, *STAGES, *sorted(used - set(STAGES) - set(_SOURCES)
                                                      - set(_SINKS)), *_SINKS) if n in used]
    index = {n: i for i, n in enumerate(order)}
    mats = sorted({m for _, _, m in links if m})
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(mats)}
    node_colour = {n: ("#64748b" if n in _SOURCES or n in _SINKS else "#1f4e9c") for n in order}
    node_colour["losses"] = "#b91c1c"
    keys = list(links)
    trace = {
        "type": "sankey", "arrangement": "snap", "valueformat": ",.0f", "valuesuffix": " t REO",
        "node": {"label": [lb(n) for n in order], "customdata": order, "pad": 14,
                 "thickness": 16, "color": [node_colour[n] for n in order],
                 "hovertemplate": "%{label}: %{value}<extra></extra>"},
        "link": {"source": [index[s] for s, _, _ in keys],
                 "target": [index[u] for _, u, _ in keys],
                 "value": [links[k] for k in keys],
                 "label": [lb.name(m) if m else lb("losses") for _, _, m in keys],
                 "customdata": [m for _, _, m in keys],
                 "color": [_rgba(colour[m], 0.4) if m else "rgba(185,28,28,0.3)"
                           for _, _, m in keys],
                 "hovertemplate": "%{source.label} → %{target.label}<br>%{label}: "
                                  "%{value}<extra></extra>"},
    }
    head = f"{lb('flows')} {year} ({lb('t_reo')})"
    return {"data": [trace], "layout": _layout(f"{head}{' — ' + title if title else ''}",
                                               height=460)}


# --- time series ---------------------------------------------------------------------------


def timeseries(run_dir: str | Path, kind: str, baseline_dir: str | Path | None = None, *,
               lang: str = "en", ids: list[str] | None = None) -> Figure:
    """Monthly ``kind`` per id (plant, stage, pool, market, segment or material): the mean
    with its p5–p95 band when the run has replications; the baseline dashed."""
    if kind not in SERIES_KINDS:
        raise ValueError(f"kind(={kind!r}) must be one of {', '.join(SERIES_KINDS)}")
    d = Path(run_dir)
    lb = _labels(d, lang)
    m = read_table(d, "monthly")
    m = m[m["kind"].astype(str) == kind]
    base = None
    if baseline_dir is not None:
        b = read_table(Path(baseline_dir), "monthly")
        base = b[b["kind"].astype(str) == kind]
    data: list[dict[str, Any]] = []
    for i, (ident, g) in enumerate(m.groupby(m["id"].astype(str), sort=False)):
        if ids and ident not in ids:
            continue
        c = PALETTE[i % len(PALETTE)]
        x = pd.to_datetime(g["month"]).dt.strftime("%Y-%m-%d").tolist()
        name = _item_name(lb, ident)
        col = "mean" if "mean" in g.columns else "value"
        if {"p5", "p95"} <= set(g.columns) and not np.allclose(g["p5"], g["p95"]):
            data.append({"type": "scatter", "x": x, "y": g["p95"].tolist(), "mode": "lines",
                         "line": {"width": 0, "color": c}, "showlegend": False,
                         "legendgroup": ident, "hoverinfo": "skip", "name": f"{name} p95"})
            data.append({"type": "scatter", "x": x, "y": g["p5"].tolist(), "mode": "lines",
                         "line": {"width": 0, "color": c}, "fill": "tonexty",
                         "fillcolor": _rgba(c, 0.18), "showlegend": False,
                         "legendgroup": ident, "name": f"{name} {lb('band')}",
                         "meta": "band"})
        data.append({"type": "scatter", "x": x, "y": g[col].tolist(), "mode": "lines",
                     "name": name, "legendgroup": ident, "line": {"color": c, "width": 2}})
        if base is not None:
            bg = base[base["id"].astype(str) == ident]
            if len(bg):
                bcol = "mean" if "mean" in bg.columns else "value"
                data.append({"type": "scatter", "mode": "lines", "legendgroup": ident,
                             "x": pd.to_datetime(bg["month"]).dt.strftime("%Y-%m-%d").tolist(),
                             "y": bg[bcol].tolist(), "name": f"{name} ({lb('baseline')})",
                             "line": {"color": c, "width": 1.5, "dash": "dash"},
                             "meta": "baseline"})
    yaxis: dict[str, Any] = {"rangemode": "tozero"}
    if kind == "utilisation":
        yaxis["tickformat"] = ".0%"
    return {"data": data, "layout": _layout(lb(kind), yaxis=yaxis, hovermode="x unified")}


# --- elements, bottlenecks, KPIs -------------------------------------------------------------


def element_balance(run_dir: str | Path, *, lang: str = "en") -> Figure:
    """Per element and year, the surplus (+, piles up) or shortfall (−) in t REO."""
    d = Path(run_dir)
    lb = _labels(d, lang)
    s = _summary(d)
    s = s[s["kpi"] == "element.surplus"]
    keep = [e for e in ELEMENTS if (s.loc[s["key"] == e, "mean"].abs() > 1e-9).any()]
    data = []
    for i, (year, g) in enumerate(s.groupby("year", sort=True)):
        v = g.set_index("key")["mean"]
        y = [_num(v.get(e, 0.0)) for e in keep]
        data.append({"type": "bar", "name": str(year), "x": keep, "y": y,
                     "marker": {"color": [PALETTE[i % len(PALETTE)]] * len(keep)},
                     "hovertemplate": "%{x} " + str(year) + ": %{y:,.0f} t REO<extra></extra>"})
    return {"data": data, "layout": _layout(lb("element_balance"), barmode="group",
                                            yaxis={"title": {"text": lb("t_reo")},
                                                   "zeroline": True})}


def _table(header: list[str], columns: list[list[Any]], title: str,
           colours: list[list[str]] | None = None) -> Figure:
    rows = len(columns[0]) if columns else 0
    cells: dict[str, Any] = {"values": columns, "align": "left", "height": 24}
    if colours is not None:
        cells["fill"] = {"color": colours}
    return {"data": [{"type": "table", "header": {"values": header, "align": "left",
                                                  "fill": {"color": "#e2e8f0"}},
                      "cells": cells}],
            "layout": _layout(title, height=min(120 + 26 * rows, 700),
                              margin={"l": 10, "r": 10, "t": 50, "b": 10})}


def bottlenecks(run_dir: str | Path, *, lang: str = "en") -> Figure:
    """The bottleneck stage and its binding constraint per year (first replication)."""
    d = Path(run_dir)
    lb = _labels(d, lang)
    b = read_table(d, "bottlenecks").sort_values("year")
    return _table([lb("year"), lb("stage"), lb("constraint"), lb("score")],
                  [b["year"].astype(int).tolist(), [lb(str(s)) for s in b["stage"]],
                   [lb(str(c)) if str(c) in ("quota", "outage", "input", "demand") else
                    (lb("capacity_c") if str(c) == "capacity" else str(c))
                    for c in b["constraint"]],
                   [round(float(x), 3) for x in b["score"]]],
                  lb("bottlenecks"))


def headline(run_dir: str | Path) -> pd.DataFrame:
    """Headline KPIs: ``kpi, key, year, unit, mean, p5, p95`` and ``delta`` (what-if −
    baseline, NaN for a baseline run)."""
    d = Path(run_dir)
    s = _summary(d)
    keep = np.zeros(len(s), dtype=bool)
    for kpi, key in HEADLINE:
        keep |= (s["kpi"] == kpi).to_numpy() & (
            True if key is None else (s["key"] == key).to_numpy())
    out = s[keep].copy()
    out["order"] = [next(i for i, (k, _) in enumerate(HEADLINE) if k == x) for x in out["kpi"]]
    try:
        diff = read_table(d, "difference")[["kpi", "key", "year", "mean"]]
        out = out.merge(diff.rename(columns={"mean": "delta"}), on=["kpi", "key", "year"],
                        how="left")
    except FileNotFoundError:
        out["delta"] = np.nan
    out = out.sort_values(["order", "key", "year"], kind="stable")
    return out[["kpi", "key", "year", "unit", "mean", "p5", "p95", "delta"]].reset_index(
        drop=True)


def _fmt(v: Any) -> str:
    f = _num(v) if v is not None else None
    if f is None:
        return "–"
    return f"{f:,.0f}" if abs(f) >= 100 else f"{f:,.3g}"


def kpi_table(run_dir: str | Path, *, lang: str = "en") -> Figure:
    """Headline KPIs with their difference to the baseline, then the targets."""
    d = Path(run_dir)
    lb = _labels(d, lang)
    h = headline(d)
    cols: list[list[Any]] = [
        [lb(str(k)) for k in h["kpi"]], [lb(str(k)) for k in h["key"]],
        h["year"].astype(int).tolist(),
        h["unit"].astype(str).tolist(), [_fmt(v) for v in h["mean"]],
        [f"{_fmt(a)} – {_fmt(b)}" for a, b in zip(h["p5"], h["p95"], strict=True)],
        [("+" if (_num(v) or 0) > 0 else "") + _fmt(v) for v in h["delta"]]]
    colours = [["white"] * len(h)] * 7
    try:
        t = read_table(d, "targets")
    except FileNotFoundError:
        t = pd.DataFrame()
    if len(t):
        cols[0] += [f"{lb('target')}: {n}" for n in t["name"]]
        cols[1] += [str(x) for x in t["target"]]
        cols[2] += t["year"].astype(int).tolist()
        cols[3] += t["unit"].astype(str).tolist()
        cols[4] += [_fmt(v) for v in t["value"]]
        cols[5] += [f"{lb('target')} {_fmt(g)}" for g in t["goal"]]
        cols[6] += [lb("attained") if a else lb("missed") for a in t["attained"]]
        colours = [c + ["#dcfce7" if a else "#fee2e2" for a in t["attained"]] for c in colours]
    return _table([lb("kpi"), lb("key"), lb("year"), "unit", lb("mean"), lb("band"),
                   lb("difference")], cols, lb("kpis"), colours)


# --- sweeps ----------------------------------------------------------------------------------


def tornado(sweep_dir: str | Path, *, lang: str = "en") -> list[Figure]:
    """One tornado per ranked KPI of a one-at-a-time study: the KPI's change when each
    input moves low and high, the widest swing on top."""
    from retwin.batch.spec import KpiSelector

    d = Path(sweep_dir)
    lb = Labels(lang)
    f = d / "sensitivity.parquet"
    if not f.is_file():
        return []
    sens = pd.read_parquet(f)
    units = _sweep_units(d)
    out = []
    for kpi, g in sens.groupby("kpi", sort=False):
        g = g.sort_values("swing", ascending=False, kind="stable")
        params = g["parameter"].astype(str).tolist()
        base = float(g["kpi_base"].iloc[0])
        data = [
            {"type": "bar", "orientation": "h", "name": lb("low"), "y": params,
             "x": [_num(v) for v in g["delta_low"]], "marker": {"color": "#1f4e9c"},
             "customdata": [_num(v) for v in g["value_low"]],
             "hovertemplate": "%{y} = %{customdata}: Δ %{x:,.3g}<extra></extra>"},
            {"type": "bar", "orientation": "h", "name": lb("high"), "y": params,
             "x": [_num(v) for v in g["delta_high"]], "marker": {"color": "#c2410c"},
             "customdata": [_num(v) for v in g["value_high"]],
             "hovertemplate": "%{y} = %{customdata}: Δ %{x:,.3g}<extra></extra>"},
        ]
        sel = KpiSelector.parse(str(kpi))
        unit = units.get((sel.kpi, sel.key), "")
        out.append({"data": data, "layout": _layout(
            f"{lb('tornado')}: {kpi_title(sel.kpi, sel.key, sel.year, unit, lb)} "
            f"({lb('base')} {_fmt(base)})", barmode="overlay",
            yaxis={"autorange": "reversed", "categoryorder": "array", "categoryarray": params,
                   "title": {"text": lb("parameter")}},
            xaxis={"title": {"text": f"Δ ({unit})" if unit else "Δ"}, "zeroline": True},
            height=max(220, 80 + 40 * len(params)), meta={"kpi": str(kpi)})})
    return out


def _point_labels(d: Path, lb: Labels) -> dict[str, str]:
    """Each point's name: a one-at-a-time point says which parameter it moves and where to
    (``q low (0.63)``), the base point ``base``; a sweep's point lists its parameters' values
    (``q=0.63, util=0.95``), named as the study names them."""
    from retwin.batch.spec import RESERVED_COLUMNS

    pts = pd.read_parquet(d / "points.parquet")
    params = [c for c in pts.columns if c not in RESERVED_COLUMNS]

    def value(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float | int) else str(v)

    out = {}
    for _, r in pts.iterrows():
        role = str(r["role"]) if "role" in pts.columns and pd.notna(r["role"]) else ""
        param = str(r["parameter"]) if "parameter" in pts.columns and pd.notna(
            r["parameter"]) else ""
        if role in ("low", "high") and param in params:
            out[str(r["point"])] = f"{param} {lb(role)} ({value(r[param])})"
        elif role == "base":
            out[str(r["point"])] = lb("base")
        else:
            out[str(r["point"])] = ", ".join(f"{c}={value(r[c])}" for c in params
                                             if pd.notna(r[c])) or str(r["point"])
    return out


def _sweep_units(d: Path) -> dict[tuple[str, str], str]:
    """The unit of each (kpi, key) the sweep's KPI rows carry."""
    kpis = pd.read_parquet(d / "kpis", columns=["kpi", "key", "unit"]).drop_duplicates()
    return {(str(k), str(y)): str(u) for k, y, u in kpis.itertuples(index=False)}


def kpi_title(kpi: str, key: str, year: int | None, unit: str, lb: Labels) -> str:
    """A KPI row in words: its declared label, the key's name, the year (else the mean over
    the years) and the unit: ``Output value — Total, mean over the years (亿元)``."""
    when = str(year) if year is not None else lb("over_years")
    name = lb(kpi)
    thing = "" if key in ("region",) else f" — {lb.name(key)}"
    return f"{name}{thing}, {when}" + (f" ({unit})" if unit else "")


def distributions(sweep_dir: str | Path, *, lang: str = "en") -> list[Figure]:
    """Per KPI of the study, the distribution over replications at each point (a box per
    point; the mean over the years unless the KPI names a year)."""
    from retwin.batch.spec import KpiSelector

    d = Path(sweep_dir)
    lb = Labels(lang)
    m = _json(d / "manifest.json")
    units = _sweep_units(d)
    selectors = [KpiSelector.parse(t) for t in (m.get("spec") or {}).get("kpis") or []]
    kpis = pd.read_parquet(d / "kpis")
    kpis["point"] = kpis["point"].astype(str)
    names = _point_labels(d, lb)
    out = []
    for sel in selectors:
        rows = kpis[(kpis["kpi"] == sel.kpi) & (kpis["key"] == sel.key)]
        if sel.year is not None:
            rows = rows[rows["year"] == sel.year]
        per = rows.groupby(["point", "replication"], sort=False)["value"].mean().reset_index()
        data = []
        for i, (pt, g) in enumerate(per.groupby("point", sort=False)):
            data.append({"type": "box", "name": names.get(str(pt), str(pt)),
                         "y": g["value"].tolist(), "boxmean": True,
                         "marker": {"color": PALETTE[i % len(PALETTE)]}, "showlegend": False})
        unit = units.get((sel.kpi, sel.key), "")
        out.append({"data": data, "layout": _layout(
            f"{lb('distributions')}: {kpi_title(sel.kpi, sel.key, sel.year, unit, lb)}",
            xaxis={"tickangle": -30, "title": {"text": lb("point")}},
            yaxis={"title": {"text": unit}}, meta={"kpi": sel.label})})
    return out


# --- why --------------------------------------------------------------------------------------


def why_waterfall(card: dict[str, Any], year: int, names: list[str], *,
                  lang: str = "en") -> Figure:
    """A card's Δ in ``year`` taken apart (:func:`retwin.report.cards.attribute`): from the
    baseline, each change alone (``names``, in order), their interaction, to the what-if."""
    lb = Labels(lang)
    i = card["years"].index(year)
    steps = [o[i] for o in card["one"]]
    x = [lb("baseline"), *names, lb("interaction"), lb("whatif")]
    y = [card["base"][i], *steps, card["interaction"][i], card["mean"][i]]
    label = card["label_zh"] if lang == "zh" else card["label"]
    return {"data": [{"type": "waterfall", "x": x, "y": [_num(v) if v is not None else None
                                                           for v in y],
                      "measure": ["absolute", *(["relative"] * len(steps)), "relative",
                                  "total"],
                      "text": [_fmt(v) if k in (0, len(y) - 1) else _signed(v)
                               for k, v in enumerate(y)],
                      "textposition": "outside", "connector": {"line": {"color": "#94a3b8"}},
                      "increasing": {"marker": {"color": "#15803d"}},
                      "decreasing": {"marker": {"color": "#b91c1c"}},
                      "totals": {"marker": {"color": "#1f4e9c"}}}],
            "layout": _layout(f"{label} · {year}", showlegend=False,
                              yaxis={"title": {"text": card["unit"]}},
                              meta={"card": card["id"], "year": year})}


def _signed(v: Any) -> str:
    f = _num(v) if v is not None else None
    if f is None:
        return "–"
    return ("+" if f > 0 else "") + _fmt(f)
