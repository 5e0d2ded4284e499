"""The planner's page (``/``), its static files, and the charts it draws.

The page is plain HTML, CSS and JavaScript in ``retwin_service/static`` (no build step);
plotly.js is served from the installed plotly package. Static files carry an ``ETag`` and
``Cache-Control: no-cache``: a browser asks again on every load and is answered ``304``
with no body while the file is unchanged.
``GET /api/v1/runs/{id}/charts/{name}`` returns the figures of :mod:`retwin.report.figures`
for a finished run (and its baseline), the same charts ``retwin report`` writes to a file.
``GET /api/v1/models/{name}/outline`` is what the page's what-if form needs of a model (a
quarter of the whole model document); ``GET /api/v1/runs/{id}/panels/stages/{stage}`` the
monthly output of each plant of one stage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

import retwin
from retwin.report import figures
from retwin_service import tables
from retwin_service.deps import OwnerDep, ServiceDep
from retwin_service.errors import query_error
from retwin_service.render import dumps
from retwin_service.routes import answer
from retwin_service.routes.runs import RunId, _done_run, complete_tables
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


def _static(request: Request, path: Path, media_type: str) -> Response:
    """A static file, or ``304 Not Modified`` when the browser holds it already (its
    ``If-None-Match`` names the file's ``ETag``); the browser asks again on every load."""
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"etag": etag, "cache-control": "no-cache"}
    asked = request.headers.get("if-none-match", "")
    held = {t.strip().removeprefix("W/") for t in asked.split(",")}
    if etag in held or "*" in held:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)


@page_router.get("/")
async def page(request: Request) -> Response:
    return _static(request, STATIC / "index.html", "text/html; charset=utf-8")


@page_router.get("/static/plotly.min.js")
async def plotly_js(request: Request) -> Response:
    return _static(request, _plotly_js(), "text/javascript; charset=utf-8")


@page_router.get("/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    if name not in _FILES:
        raise HTTPException(404, f"no static file {name!r}")
    return _static(request, STATIC / name, _FILES[name])


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
    run_id: RunId,
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
    await complete_tables(service, rec.request_hash, baseline=baseline)

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


# --- what the what-if form needs of a model ------------------------------------------------


def outline(sc: retwin.Scenario) -> dict[str, Any]:
    """What the page's what-if form reads of a model (a :class:`retwin.Scenario`): the
    ids, names, stages, capacities and units of what a change may name, the defaults a form
    starts from (a quota's tonnes, a material's base price), the targets' names, and
    whether markets are on (a price change then moves the outside price)."""
    def named(x: Any, **more: Any) -> dict[str, Any]:
        return {"id": x.id, "name": x.name, "name_zh": getattr(x, "name_zh", "") or "", **more}

    return {
        "start": sc.start.isoformat(), "end": sc.end.isoformat(), "markets_on": sc.markets_on,
        "plants": [named(p, stage=p.stage, capacity_tpa=p.capacity_tpa,
                         output=next(iter(p.recipe.outputs))) for p in sc.plants],
        "materials": [named(m, unit=m.unit, base_cny_per_unit=m.price.base_cny_per_unit)
                      for m in sc.materials],
        "quotas": [named(q, annual_t_reo={str(y): v for y, v in q.annual_t_reo.items()})
                   for q in sc.quotas],
        "markets": [named(k, material=k.material) for k in sc.markets],
        "demand": [named(g, material=g.material) for g in sc.demand],
        "targets": [named(t, year=t.year) for t in sc.targets],
    }


@router.get("/models/{name}/outline", response_model=dict[str, Any], tags=["page"],
            responses={404: {"model": ErrorPublic}})
async def read_model_outline(name: Annotated[str, PathParam(max_length=64)],
                             service: ServiceDep, _owner: OwnerDep) -> dict[str, Any]:
    """What the planner's page's what-if form needs of a reference model: for each plant,
    material, quota, market, demand segment and target its id, English and Chinese name
    and what a form shows of it (a plant's stage, capacity per year and main output; a
    material's unit and base price; a quota's tonnes REO per year); the horizon; and
    ``markets_on``. ``GET /models/{name}`` holds the whole scenario."""
    cat = service.catalog
    if name not in cat.models:
        raise HTTPException(404, f"model {name!r} not found (known: {', '.join(cat.names())})")
    return {"name": name, **outline(cat.models[name])}


# --- monthly output per plant of one stage --------------------------------------------------


def stage_plants(root: Path, key: str, stage: str) -> dict[str, Any]:
    """Monthly output of each plant of ``stage`` of a stored result: the what-if's mean and
    (more than one replication) its p5–p95 across the replications, the baseline's mean;
    4 significant digits, in the stage's unit."""
    m, base_key, scenario = answer.stored(root, key)
    plants = [p for p in scenario["plants"] if p["stage"] == stage]
    if not plants:
        stages = list(dict.fromkeys(p["stage"] for p in scenario["plants"]))
        raise HTTPException(404, f"stage(={stage!r}) is not a stage of this run's model "
                                 f"(its stages: {', '.join(stages)})")
    ids = [p["id"] for p in plants]
    mats = {x["id"]: x for x in scenario["materials"]}
    units = {mats.get(next(iter(p["recipe"]["outputs"])), {}).get("unit", "t") for p in plants}
    bands = int(m.get("replications", 1)) > 1

    def series(k: str, with_bands: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        return answer.grouped_series(tables.plant_output(root, k, ids), "id", with_bands)

    whatif, band = series(key, bands)
    return {
        "name": "plants", "stage": stage, "months": answer.result_months(root, key),
        "baseline": base_key is not None, "unit": units.pop() if len(units) == 1 else "mixed",
        "plants": [{"id": p["id"], "name": p.get("name", p["id"]),
                    "name_zh": p.get("name_zh", "") or ""} for p in plants],
        "whatif": whatif, "bands": band if bands else None,
        "base": series(base_key, False)[0] if base_key else None,
    }


@router.get("/runs/{run_id}/panels/stages/{stage}", response_model=dict[str, Any],
            tags=["page"])
async def read_run_stage_plants(
    run_id: RunId,
    stage: Annotated[str, PathParam(min_length=1, max_length=64)],
    service: ServiceDep, owner: OwnerDep,
) -> Response:
    """Monthly output of each plant of one stage of a finished run, in the stage's unit:
    ``whatif`` (each plant's mean over the replications), ``bands`` (its p5–p95, ``null``
    for one replication) and ``base`` (the baseline's mean, ``null`` without one); the
    plants' ids and names in ``plants``. 404 when the run's model has no such stage.
    Numbers are kept to 4 significant digits."""
    rec = await _done_run(service, run_id, owner, "charts")
    root = Path(service.settings.results_dir)
    await complete_tables(service, rec.request_hash, baseline=True)
    return await answer.result_answer(run_id, lambda: stage_plants(root, rec.request_hash, stage))


router.include_router(answer.router)
