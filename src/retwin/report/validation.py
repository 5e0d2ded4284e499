"""The validation report: the national back-cast, its fit and Baotou against its seeds in one
self-contained HTML file (plotly.js inlined once, so it opens offline).

The numbers come from :mod:`retwin.validation`; this module only lays them out. The
command is ``retwin validation-report --html FILE``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retwin._files import check_output_file, write_output_file
from retwin.scenario.data import Parameter, formula_parameters
from retwin.validation.backcast import Backcast, backcast
from retwin.validation.baotou import BaotouChecks, baotou_checks
from retwin.validation.fit import FREE_PARAMETERS
from retwin.validation.observables import (
    BAOTOU_2022,
    BAOTOU_2024,
    FIT_YEARS,
    HELD_OUT_YEARS,
    LIMITATIONS,
    NATIONAL_MODEL,
    OBSERVABLES,
    SEED,
    source_ranges,
)

__all__ = ["write_report"]

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


def _g6(v: float) -> str:
    return f"{v:.6g}"  # as data/fitted.csv writes its numbers


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
        if o.id == "prnd_oxide_price":
            x, y = _monthly_price(bc, "prnd_oxide")
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="simulated, monthly",
                                     line={"color": "#1f4e9c", "width": 1, "dash": "dot"},
                                     hovertemplate="%{y:,.0f}<extra></extra>"))
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


def _monthly_price(bc: Backcast, material: str) -> tuple[list[float], list[float]]:
    """The formed monthly price of ``material`` in the back-cast, each month at its middle on
    the charts' year axis, where year ``y`` spans ``y - 0.5`` to ``y + 0.5`` (mid-January 2020
    is at 2019.54), next to the annual means."""
    res = bc.result
    c = res.compiled
    i = c.material_ids.index(material)
    x = [y + (m - 0.5) / 12 - 0.5 for y, m in c.months]
    return x, [float(v) for v in res.price_month[i]]


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
                     "bounds": f"[{_g6(lo)}, {_g6(hi)}]", "what it stands for": p.meaning,
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
