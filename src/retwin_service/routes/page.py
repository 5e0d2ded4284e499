"""The planner's page (``/``), its static files, and the charts it draws.

The page is plain HTML, CSS and JavaScript in ``retwin_service/static`` (no build step);
plotly.js is served from the installed plotly package.
``GET /api/v1/runs/{id}/charts/{name}`` returns the figures of :mod:`retwin.report.figures`
for a finished run (and its baseline), the same charts ``retwin report`` writes to a file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from retwin.report import figures
from retwin_service import tables
from retwin_service.deps import OwnerDep, ServiceDep
from retwin_service.errors import query_error
from retwin_service.render import dumps
from retwin_service.routes import answer
from retwin_service.routes.runs import _done_run
from retwin_service.schemas import ErrorPublic, ValidationErrorPublic

__all__ = ["page_router", "router"]

STATIC = Path(__file__).resolve().parents[1] / "static"
_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}

page_router = APIRouter(include_in_schema=False)
router = APIRouter(tags=["charts"], responses={
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API token."},
    403: {"model": ErrorPublic, "description": (
        "The service has no API token and the caller is not on its machine.")},
    404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 410: {"model": ErrorPublic},
    422: {"model": ValidationErrorPublic, "description": "The request does not validate."}})


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


@page_router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


@page_router.get("/static/plotly.min.js")
async def plotly_js() -> FileResponse:
    return FileResponse(_plotly_js(), media_type="text/javascript; charset=utf-8")


@page_router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    if name not in _FILES:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=_FILES[name])


def _clean(x: Any) -> Any:
    """JSON-ready: NaN and infinities become null."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


ChartName = Literal["sankey", "timeseries", "elements", "bottlenecks", "kpis"]


def _charts(run_dir: Path, base_dir: Path | None, name: str, year: int | None, kind: str,
            lang: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "baseline": base_dir is not None}
    if name == "sankey":
        years = figures.sankey_years(run_dir)
        if not years:
            raise HTTPException(409, "this run has no year of flows to draw")
        y = years[0] if year is None else year
        if y not in years:
            raise query_error("year", f"year(={y}) is outside the run's years "
                                      f"{years[0]}..{years[-1]}")
        figs = [figures.sankey(run_dir, y, lang=lang)]
        if base_dir is not None and y in figures.sankey_years(base_dir):
            figs.append(figures.sankey(base_dir, y, lang=lang))
        body.update(years=years, year=y, figures=figs)
    elif name == "timeseries":
        body["figures"] = [figures.timeseries(run_dir, kind, base_dir, lang=lang)]
    elif name == "elements":
        body["figures"] = [figures.element_balance(run_dir, lang=lang)]
    elif name == "bottlenecks":
        body["figures"] = [figures.bottlenecks(run_dir, lang=lang)]
    else:
        body["figures"] = [figures.kpi_table(run_dir, lang=lang)]
    return body


@router.get("/runs/{run_id}/charts/{name}", response_model=dict[str, Any])
async def read_run_chart(
    run_id: Annotated[str, PathParam(min_length=1, max_length=64)],
    name: ChartName, service: ServiceDep, owner: OwnerDep,
    year: Annotated[int | None, Query(ge=1900, le=2200)] = None,
    kind: Annotated[Literal["activity", "capacity", "utilisation", "stock", "imports",
                            "exports", "served", "unmet", "price"],
                    Query(description="The series of a time-series chart.")] = "activity",
    lang: Annotated[Literal["en", "zh"], Query()] = "en",
    baseline: Annotated[bool, Query(description="Draw the baseline too.")] = True,
) -> Response:
    """Plotly figures of a finished run: ``sankey`` (a year's flows in t REO, the
    baseline's beside), ``timeseries`` (monthly ``kind``, p5–p95 bands, baseline dashed),
    ``elements``, ``bottlenecks`` and ``kpis``. ``figures`` holds the what-if's first."""
    rec = await _done_run(service, run_id, owner, "charts")
    root = Path(service.settings.results_dir)

    def build() -> Response:
        run_dir = root / rec.request_hash
        if not figures.is_run_dir(run_dir):
            raise HTTPException(410, f"the result of run {run_id!r} is gone")
        base_dir = None
        base_key = tables.manifest(root, rec.request_hash).get("baseline_hash")
        if baseline and base_key and figures.is_run_dir(root / str(base_key)):
            base_dir = root / str(base_key)
        body = _charts(run_dir, base_dir, name, year, kind, lang)
        return Response(dumps(_clean(body)), media_type="application/json")

    return await run_in_threadpool(build)


router.include_router(answer.router)
