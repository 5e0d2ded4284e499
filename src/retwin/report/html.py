"""One self-contained HTML report of a result directory or a sweep directory.

plotly.js is inlined once (``include_plotlyjs=True``), so the file opens offline. A run
directory gives its headline KPIs and targets, the Sankey of each year (beside the
baseline's when one is given), the time series (baseline dashed), the element balance and
the bottlenecks; a sweep directory gives the tornado (one-at-a-time studies) and the KPI
distributions per point.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from retwin._files import check_output_file, write_output_file
from retwin.report import figures
from retwin.report.labels import Labels

__all__ = ["REPORT_KINDS", "render", "write_report"]

#: Time series shown in a run's report.
REPORT_KINDS: tuple[str, ...] = ("activity", "stock", "price", "utilisation")

_CSS = """
body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:1.5rem auto;max-width:1200px;
color:#0f172a;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #cbd5e1}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.meta{color:#475569;font-size:.9rem}
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


def _run_body(run_dir: Path, baseline_dir: Path | None, lang: str, chart: _Charts) -> list[str]:
    lb = Labels(lang)
    m = figures._json(run_dir / "manifest.json")
    parts = [f"<h1>{html.escape(str(m.get('scenario', run_dir.name)))}</h1>",
             f"<p class='meta'>{html.escape(str(m.get('start')))} – "
             f"{html.escape(str(m.get('end')))}, seed {m.get('seed')}, "
             f"{m.get('replications')} replication(s); "
             f"{len(m.get('changes') or [])} change(s)</p>",
             chart(figures.kpi_table(run_dir, lang=lang), "chart-kpis"),
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
           lang: str = "en") -> tuple[str, list[str]]:
    """The report's HTML and its chart ids. ``source`` is a run or a sweep directory."""
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
        body = _run_body(d, b, lang, chart)
        title = "retwin run report"
    else:
        raise FileNotFoundError(f"{d} is neither a result directory (retwin run --out) nor a "
                                "sweep directory (retwin sweep --out)")
    doc = ["<!DOCTYPE html>", f"<html lang='{'zh' if lang == 'zh' else 'en'}'><head>",
           "<meta charset='utf-8'>", f"<title>{title}</title>", f"<style>{_CSS}</style>",
           "</head><body>", *body, "</body></html>"]
    return "\n".join(doc), chart.ids


def write_report(path: str | Path, source: str | Path, baseline: str | Path | None = None, *,
                 lang: str = "en", force: bool = False) -> Path:
    """Write the report of ``source`` to the file ``path`` atomically; returns the path.

    An existing file is replaced only with ``force``; a folder, a link or anything else
    at ``path`` is never written onto (:class:`~retwin.errors.OutputError`).
    """
    check_output_file(path, force=force)  # before the work of rendering
    text, _ = render(source, baseline, lang=lang)
    write_output_file(path, text, force=force)
    return Path(path)
