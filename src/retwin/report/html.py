"""One self-contained HTML report of a result directory or a sweep directory.

plotly.js is inlined once (``include_plotlyjs=True``), so the file opens offline. A run
directory gives its headline KPIs and targets, the Sankey of each year (beside the
baseline's when one is given), the time series (baseline dashed), the element balance and
the bottlenecks; a sweep directory gives the tornado (one-at-a-time studies) and the KPI
distributions per point.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from retwin._files import check_output_file, write_output_file
from retwin.report import figures
from retwin.report.cards import focus_year
from retwin.report.labels import Labels
from retwin.report.why import Progress, check, explain, result_cards

__all__ = ["REPORT_KINDS", "render", "write_report"]

#: Time series shown in a run's report.
REPORT_KINDS: tuple[str, ...] = ("activity", "stock", "price", "utilisation")

_CSS = """
body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:1.5rem auto;max-width:1200px;
color:#0f172a;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #cbd5e1}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.meta{color:#475569;font-size:.9rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:.75rem}
.card{border:1px solid #cbd5e1;border-radius:6px;padding:.6rem .75rem}
.card-title{font-size:.85rem;color:#475569}.card-value{font-size:1.35rem;font-weight:600}
.unit{font-size:.85rem;font-weight:400;color:#475569}
.card-delta,.card-band,.card-target{font-size:.85rem}.up{color:#15803d}.down{color:#b91c1c}
.card-band{color:#64748b}.ok{color:#15803d}.bad{color:#b91c1c}
.spark{width:100%;height:34px}.spark .what{fill:none;stroke:#1f4e9c;stroke-width:1.6}
.spark .base{fill:none;stroke:#64748b;stroke-width:1.2;stroke-dasharray:3 2}
.spark .band{fill:rgba(31,78,156,.15);stroke:none}
table.why{border-collapse:collapse;font-size:.9rem;margin-bottom:1rem}
table.why td,table.why th{border-bottom:1px solid #e2e8f0;padding:.2rem .6rem;text-align:left}
table.why td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


class _Charts:
    def __init__(self) -> None:
        self.first = True
        self.ids: list[str] = []

    def __call__(self, fig: dict[str, Any], div_id: str) -> str:
        import plotly.io as pio

        self.ids.append(div_id)
        out = pio.to_html(fig, full_html=False, include_plotlyjs=self.first, div_id=div_id,
                          config={"displaylogo": False, "responsive": True})
        self.first = False
        return str(out)


def _fmt(v: float | None, unit: str) -> str:
    """A value as the page shows it: a fraction in %, 3 significant digits below 100."""
    if v is None or math.isnan(v):
        return "–"
    if unit == "fraction":
        return f"{v * 100:,.1f} %"
    if abs(v) < 1e-9:
        return "0"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{float(f'{v:.3g}'):,}"


def _fmt_delta(v: float | None, unit: str, ref: float | None) -> str:
    """A difference: signed; below a billionth of what it changes it is float noise, 0."""
    if v is None or math.isnan(v):
        return "–"
    if abs(v) <= 1e-9 * max(1.0, abs(ref or 0.0)):
        return "0"
    sign = "+" if v > 0 else "−"
    if unit == "fraction":
        return f"{sign}{abs(v) * 100:,.1f} pp"
    return sign + _fmt(abs(v), unit)


def _cls(v: float | None, ref: float | None) -> str:
    if v is None or abs(v) <= 1e-9 * max(1.0, abs(ref or 0.0)):
        return ""
    return "up" if v > 0 else "down"


def _spark(c: dict[str, Any], i: int) -> str:
    """The card's years: the what-if solid, the baseline dashed, the p5–p95 band."""
    w, h = 180.0, 34.0
    vals = [v for k in ("mean", "p5", "p95", "base") for v in c[k] if v is not None]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    n = len(c["years"])

    def x(k: int) -> float:
        return 2 + k * (w - 4) / max(1, n - 1)

    def y(v: float) -> float:
        return h - 2 - (v - lo) / ((hi - lo) or 1.0) * (h - 4)

    def path(arr: list[float | None]) -> str:
        out, pen = [], "M"
        for k, v in enumerate(arr):
            if v is None:
                pen = "M"
                continue
            out.append(f"{pen}{x(k):.1f},{y(v):.1f}")
            pen = "L"
        return "".join(out)

    band = "".join(f"{'L' if k else 'M'}{x(k):.1f},{y(lo if v is None else v):.1f}"
                   for k, v in enumerate(c["p5"]))
    band += "".join(f"L{x(k):.1f},{y(lo if v is None else v):.1f}"
                    for k, v in reversed(list(enumerate(c["p95"])))) + "Z"
    parts = [f"<svg class='spark' viewBox='0 0 {w:.0f} {h:.0f}' preserveAspectRatio='none'>",
             f"<path class='band' d='{band}'/>"]
    if any(v is not None for v in c["base"]):
        parts.append(f"<path class='base' d='{path(c['base'])}'/>")
    parts.append(f"<path class='what' d='{path(c['mean'])}'/>")
    if c["mean"][i] is not None:
        parts.append(f"<circle cx='{x(i):.1f}' cy='{y(c['mean'][i]):.1f}' r='2.5'/>")
    return "".join(parts) + "</svg>"


def _cards(cards: list[dict[str, Any]], year: int, lb: Labels) -> list[str]:
    """The headline cards of ``year``: what-if value, Δ and Δ %, p5–p95, unit, sparkline."""
    esc = html.escape
    out = [f"<h2 id='cards'>{lb('cards')}, {year}</h2>", "<div class='cards'>"]
    for c in cards:
        i = c["years"].index(year)
        unit = str(c["unit"])
        m, d, b = c["mean"][i], c["delta"][i], c["base"][i]
        label = c["label_zh"] if lb.lang == "zh" else c["label"]
        what = (f"{c['kpi']} (sum of rows in {c['sum_of']})" if c["sum_of"]
                else f"{c['kpi']} · {c['key']}")
        pct = c["delta_pct"][i]
        target = ""
        goal = next((g for g in c["targets"] if g["year"] == year), None)
        if goal is not None and m is not None and goal["goal"] is not None:
            met = m <= goal["goal"] if goal["kind"] == "at_most" else m >= goal["goal"]
            target = (f"<div class='card-target {'ok' if met else 'bad'}'>{lb('target')} "
                      f"{esc(_fmt(goal['goal'], unit))} · "
                      f"{lb('attained') if met else lb('missed')}</div>")
        out.append(
            f"<div class='card' data-card='{esc(c['id'])}'>"
            f"<div class='card-title' title='{esc(what)}'>{esc(label)}</div>"
            f"<div class='card-value'><span class='v' data-value='{m!r}'>{esc(_fmt(m, unit))}"
            f"</span> <span class='unit'>{esc('%' if unit == 'fraction' else unit)}</span></div>"
            f"<div class='card-delta {_cls(d, b)}'>Δ <span class='d' data-value='{d!r}'>"
            f"{esc(_fmt_delta(d, unit, b))}</span> · <span class='dp'>"
            f"{'–' if pct is None else f'{pct:+.1f} %'}</span></div>"
            f"<div class='card-band'>p5–p95 {esc(_fmt(c['p5'][i], unit))} – "
            f"{esc(_fmt(c['p95'][i], unit))}</div>{_spark(c, i)}{target}</div>")
    out.append("</div>")
    return out


def describe(ch: dict[str, Any]) -> str:
    """A change in a few words: ``quota mining ×0.9 2025-01-01 → 2025-12-31``."""
    kind = str(ch.get("kind", "change"))
    what = next((str(ch[k]) for k in ("quota", "segment", "market", "material", "path",
                                      "pool") if isinstance(ch.get(k), str)), "")
    plant = ch.get("plant")
    if isinstance(plant, dict):
        what = f"{ch.get('action', '')} {plant.get('id', '')}".strip()
    elif isinstance(plant, str):
        what = plant
    words = [kind, what]
    for k, fmt in (("factor", "×{}"), ("capacity_frac", "capacity ×{}"), ("value", "= {}")):
        if k in ch and not isinstance(ch[k], dict | list):
            words.append(fmt.format(ch[k]))
    if ch.get("from") or ch.get("to"):
        words.append(f"{ch.get('from') or 'start'} → {ch.get('to') or 'end'}")
    return " ".join(w for w in words if w)


def _why(why: dict[str, Any], year: int, lb: Labels, chart: _Charts) -> list[str]:
    """Per card the changes move: the waterfall of ``year`` and the table of the parts."""
    esc = html.escape
    names = [f"{k + 1}. {describe(ch)}" for k, ch in enumerate(why["changes"])]
    out = [f"<h2 id='why'>{lb('why')}, {year}</h2>",
           f"<p class='meta'>{len(names)} change(s) taken apart: each alone"
           f"{' and all but each' if len(names) >= 3 else ''}, with the result's seed and "
           "replications, paired with the same baseline (common random numbers); the "
           "interaction is the Δ of all changes less the sum of each alone.</p>"]

    def moved(c: dict[str, Any]) -> float:
        i = c["years"].index(year)
        t, b = c["total"][i], c["base"][i]
        if t is None or abs(t) <= 1e-9 * max(1.0, abs(b or 0.0)):
            return 0.0
        return abs(t) / max(abs(b or 0.0), 1e-12)

    cards = sorted((c for c in why["cards"] if moved(c) > 0), key=moved, reverse=True)
    if not cards:
        out.append(f"<p>{lb('none_moved')}</p>")
    for c in cards:
        i = c["years"].index(year)
        unit, b = str(c["unit"]), c["base"][i]
        short = [n if len(n) <= 40 else n[:38] + "…" for n in names]
        out.append(chart(figures.why_waterfall(c, year, short, lang=lb.lang),
                         f"chart-why-{c['id']}"))
        rows = "".join(
            f"<tr><td>{esc(n)}</td><td class='num {_cls(c['one'][k][i], b)}'>"
            f"{esc(_fmt_delta(c['one'][k][i], unit, b))}</td>"
            f"<td class='num {_cls(c['marginal'][k][i], b)}'>"
            f"{esc(_fmt_delta(c['marginal'][k][i], unit, b))}</td></tr>"
            for k, n in enumerate(names))
        out.append(
            f"<table class='why' data-card='{esc(c['id'])}'><thead><tr><th>{lb('change')}</th>"
            f"<th>{lb('alone')}</th><th>{lb('added')}</th></tr></thead><tbody>{rows}"
            f"<tr><td>{lb('interaction')}</td><td class='num'>"
            f"{esc(_fmt_delta(c['interaction'][i], unit, b))}</td><td></td></tr>"
            f"<tr><th>{lb('total_delta')}</th><th class='num'>"
            f"{esc(_fmt_delta(c['total'][i], unit, b))}</th><th></th></tr></tbody></table>")
    return out


def _run_body(run_dir: Path, baseline_dir: Path | None, lang: str, chart: _Charts,
              why: dict[str, Any] | None = None) -> list[str]:
    lb = Labels(lang)
    m = figures._json(run_dir / "manifest.json")
    parts = [f"<h1>{html.escape(str(m.get('scenario', run_dir.name)))}</h1>",
             f"<p class='meta'>{html.escape(str(m.get('start')))} – "
             f"{html.escape(str(m.get('end')))}, seed {m.get('seed')}, "
             f"{m.get('replications')} replication(s); "
             f"{len(m.get('changes') or [])} change(s)</p>"]
    cards = result_cards(run_dir, baseline_dir)
    changes = list(m.get("changes") or [])
    year = focus_year(changes, cards[0]["years"]) if cards else None
    if cards and year is not None:
        parts += _cards(cards, year, lb)
    if why is not None and year is not None:
        parts += _why(why, year, lb, chart)
    elif len(changes) >= 2:
        parts.append(f"<p class='meta'>{len(changes)} changes: <code>retwin report "
                     "--why --baseline DIR</code> takes each card's Δ apart, change by "
                     "change.</p>")
    parts += [chart(figures.kpi_table(run_dir, lang=lang), "chart-kpis"),
              f"<h2>{lb('flows')}</h2>"]
    for year in figures.sankey_years(run_dir):
        what = chart(figures.sankey(run_dir, year, lang=lang, title=lb("whatif")
                                    if baseline_dir else ""), f"chart-sankey-{year}")
        if baseline_dir is not None and year in figures.sankey_years(baseline_dir):
            base = chart(figures.sankey(baseline_dir, year, lang=lang, title=lb("baseline")),
                         f"chart-sankey-baseline-{year}")
            parts.append(f"<div class='pair'><div>{base}</div><div>{what}</div></div>")
        else:
            parts.append(what)
    parts.append(f"<h2>{lb('activity')}, {lb('stock')}, {lb('price')}, "
                 f"{lb('utilisation')}</h2>")
    for kind in REPORT_KINDS:
        parts.append(chart(figures.timeseries(run_dir, kind, baseline_dir, lang=lang),
                           f"chart-ts-{kind}"))
    parts.append(chart(figures.element_balance(run_dir, lang=lang), "chart-elements"))
    parts.append(chart(figures.bottlenecks(run_dir, lang=lang), "chart-bottlenecks"))
    return parts


def _sweep_body(sweep_dir: Path, lang: str, chart: _Charts) -> list[str]:
    lb = Labels(lang)
    m = figures._json(sweep_dir / "manifest.json")
    parts = [f"<h1>{html.escape(str(m.get('study', sweep_dir.name)))}</h1>",
             f"<p class='meta'>{html.escape(str((m.get('spec') or {}).get('description', '')))}"
             "</p>"]
    torn = figures.tornado(sweep_dir, lang=lang)
    if torn:
        parts.append(f"<h2>{lb('tornado')}</h2>")
        parts += [chart(f, f"chart-tornado-{i}") for i, f in enumerate(torn)]
    parts.append(f"<h2>{lb('distributions')}</h2>")
    parts += [chart(f, f"chart-dist-{i}")
              for i, f in enumerate(figures.distributions(sweep_dir, lang=lang))]
    return parts


def render(source: str | Path, baseline: str | Path | None = None, *,
           lang: str = "en", why: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """The report's HTML and its chart ids. ``source`` is a run or a sweep directory;
    ``why`` is :func:`retwin.report.why.explain` of a run (its "why" panel)."""
    d = Path(source)
    chart = _Charts()
    if figures.is_sweep_dir(d):
        body = _sweep_body(d, lang, chart)
        title = "retwin sweep report"
    elif figures.is_run_dir(d):
        b = None if baseline is None else Path(baseline)
        if b is not None and not figures.is_run_dir(b):
            raise FileNotFoundError(f"{b} is not a result directory (no manifest.json and "
                                    "scenario.json)")
        body = _run_body(d, b, lang, chart, why)
        title = "retwin run report"
    else:
        raise FileNotFoundError(f"{d} is neither a result directory (retwin run --out) nor a "
                                "sweep directory (retwin sweep --out)")
    doc = ["<!DOCTYPE html>", f"<html lang='{'zh' if lang == 'zh' else 'en'}'><head>",
           "<meta charset='utf-8'>", f"<title>{title}</title>", f"<style>{_CSS}</style>",
           "</head><body>", *body, "</body></html>"]
    return "\n".join(doc), chart.ids


def write_report(path: str | Path, source: str | Path, baseline: str | Path | None = None, *,
                 lang: str = "en", force: bool = False, why: bool = False,
                 progress: Progress | None = None) -> Path:
    """Write the report of ``source`` to the file ``path`` atomically; returns the path.

    With ``why``, the result's changes are taken apart first (:func:`retwin.report.why.
    explain`: one run per part, ``progress`` after each replication); that needs
    ``baseline``, the result's own baseline directory (:class:`~retwin.report.why.WhyError`
    otherwise, before any run). An existing file is replaced only with ``force``; a folder,
    a link or anything else at ``path`` is never written onto
    (:class:`~retwin.errors.OutputError`).
    """
    check_output_file(path, force=force)  # before the work of rendering
    explained = None
    if why:
        if not figures.is_run_dir(source):
            raise FileNotFoundError(f"--why: {source} is not a result directory (retwin run "
                                    "--out)")
        check(source, baseline)  # refused before any run
        explained = explain(source, baseline, progress=progress)
    text, _ = render(source, baseline, lang=lang, why=explained)
    write_output_file(path, text, force=force)
    return Path(path)
