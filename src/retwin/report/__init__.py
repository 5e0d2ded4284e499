"""Charts of a result directory or a sweep: plotly figures as plain JSON-ready dicts
(:mod:`retwin.report.figures`), their English/Chinese labels (:mod:`retwin.report.labels`)
and one self-contained HTML report (:func:`retwin.report.html.write_report`)."""

from __future__ import annotations

from retwin.report.html import write_report

__all__ = ["write_report"]
