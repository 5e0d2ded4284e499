"""What-if runs: submit, read, list, cancel; their tables; compare two."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import tables
from api.deps import OwnerDep, ServiceDep
from api.schemas import (
    ComparePublic,
    ErrorPublic,
    RunAccepted,
    RunPublic,
    RunsPublic,
    TablePublic,
    ValidationErrorPublic,
    WhatIfRequest,
)
from api.service import Service
from retwin.registry import STATUSES, RunRecord

router = APIRouter(tags=["runs"], responses={
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API token."},
    422: {"model": ValidationErrorPublic, "description": "The request does not validate."},
})

RunId = Annotated[str, PathParam(min_length=1, max_length=64, description="A run's id.")]
Wait = Annotated[float, Query(ge=0, le=3600, description=(
    "Seconds to wait for the run to finish before answering (at most the service's "
    "RETWIN_WAIT_MAX_SECONDS)."))]
Fmt = Literal["json", "csv", "parquet"]
Period = Annotated[str | None, Query(pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$",
                                     description="YYYY, YYYY-MM or YYYY-MM-DD.")]
Many = Annotated[list[str] | None, Query(max_length=100)]

TABLE_MEDIA: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}},
                      "application/vnd.apache.parquet": {"schema": {"type": "string",
                                                                    "format": "binary"}}},
          "description": "The rows: JSON by default; CSV or Parquet by `format=` or `Accept`."},
    404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 410: {"model": ErrorPublic},
}


# --- shaping ---------------------------------------------------------------------------------


def _links(run_id: str) -> dict[str, str]:
    base = f"/api/v1/runs/{run_id}"
    return {"self": base, "series": f"{base}/series", "flows": f"{base}/flows",
            "kpis": f"{base}/kpis", "cancel": base}


def _time(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _summary(rec: RunRecord) -> dict[str, Any]:
    return {"id": rec.id, "status": rec.status, "progress": rec.progress, "model": rec.model,
            "label": str(rec.request.get("label", "")), "created_at": _time(rec.created_at),
            "started_at": _time(rec.started_at), "finished_at": _time(rec.finished_at),
            "links": _links(rec.id)}


def _accepted(rec: RunRecord) -> dict[str, Any]:
    return {"id": rec.id, "status": rec.status, "progress": rec.progress,
            "created_at": _time(rec.created_at), "links": _links(rec.id)}


def _public(service: Service, rec: RunRecord) -> dict[str, Any]:
    result = None
    if rec.status == "done":
        result = tables.run_result(service.settings.results_dir, rec.request_hash)
    return {**_summary(rec), "request": rec.request, "error": rec.error, "result": result}


async def _answer(service: Service, rec: RunRecord, status: int = 200) -> JSONResponse:
    body = await run_in_threadpool(_public, service, rec)
    return JSONResponse(body, status_code=status)


async def _wait(service: Service, rec: RunRecord, seconds: float) -> RunRecord:
    """Wait up to ``seconds`` (capped by the settings) for ``rec`` to finish."""
    seconds = min(seconds, service.settings.wait_max_seconds)
    if rec.finished or seconds <= 0:
        return rec
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        left = deadline - asyncio.get_running_loop().time()
        track = service.jobs.waiter(rec.request_hash)
        if track is None:
            await asyncio.sleep(min(0.05, max(left, 0)))
        else:
            await asyncio.wait({track}, timeout=max(left, 0))
        rec = await run_in_threadpool(service.registry.get_run, rec.id)
        if rec.finished or asyncio.get_running_loop().time() >= deadline:
            return rec


# --- runs ------------------------------------------------------------------------------------


@router.post(
    "/runs", status_code=202, response_model=RunAccepted,
    responses={200: {"model": RunPublic, "description": (
        "The run is finished: answered from a stored result, or it finished within "
        "`wait` seconds.")},
        202: {"description": "Accepted and stored; follow `links.self`."},
        413: {"model": ErrorPublic}, 429: {"model": ErrorPublic, "description": (
            "The queue is full, or this token has too many unfinished runs; see Retry-After.")}},
)
async def create_run(body: WhatIfRequest, service: ServiceDep, owner: OwnerDep,
                     wait: Wait = 0.0) -> JSONResponse:
    """Submit a what-if. It is stored before the answer, so it survives a restart.

    An identical request (same model, changes, seed, replications, horizon) is answered from
    the stored result. Otherwise the answer is ``202`` with the run's id and links, or
    ``200`` with the whole run when it finishes within ``wait`` seconds.
    """
    prep = await run_in_threadpool(service.prepare, body)
    task = prep.task
    reg = service.registry
    if service.jobs.stored(task.key):
        rec = await run_in_threadpool(lambda: reg.add_run(
            owner=owner, model=body.model, request=prep.request, request_hash=task.key,
            status="done"))
        return await _answer(service, rec)
    rec = await run_in_threadpool(lambda: reg.add_run(
        owner=owner, model=body.model, request=prep.request, request_hash=task.key,
        queue_max=service.settings.queue_max,
        owner_max=service.settings.per_token_concurrent))
    service.jobs.ensure(task)
    rec = await _wait(service, rec, wait)
    if rec.finished:
        return await _answer(service, rec)
    return JSONResponse(_accepted(rec), status_code=202,
                        headers={"Location": _links(rec.id)["self"]})


@router.get("/runs", response_model=RunsPublic)
async def list_runs(
    service: ServiceDep, owner: OwnerDep,
    status: Annotated[list[Literal["queued", "running", "done", "failed", "cancelled"]] | None,
                      Query(max_length=len(STATUSES))] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JSONResponse:
    """Your runs, newest first, filtered by status and model."""
    recs, total = await run_in_threadpool(
        lambda: service.registry.list_runs(owner=owner, status=status, model=model,
                                           limit=limit, offset=offset))
    return JSONResponse({"data": [_summary(r) for r in recs], "count": total, "limit": limit,
                         "offset": offset})


@router.get("/runs/{run_id}", response_model=RunPublic,
            responses={404: {"model": ErrorPublic}, 410: {"model": ErrorPublic}})
async def read_run(run_id: RunId, service: ServiceDep, owner: OwnerDep,
                   wait: Wait = 0.0) -> JSONResponse:
    """A run: status and progress; once done, its KPIs (mean, p5, p50, p95) and the
    difference to the baseline of the same model, seed and replications."""
    rec = await run_in_threadpool(service.registry.get_run, run_id, owner)
    rec = await _wait(service, rec, wait)
    return await _answer(service, rec)


@router.delete("/runs/{run_id}", response_model=RunPublic,
               responses={404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}})
async def cancel_run(run_id: RunId, service: ServiceDep, owner: OwnerDep) -> JSONResponse:
    """Cancel a queued or running run (cancelling a cancelled run changes nothing)."""
    reg = service.registry
    rec = await run_in_threadpool(reg.get_run, run_id, owner)
    if rec.status in ("done", "failed"):
        raise HTTPException(409, f"run {run_id!r} is already {rec.status}; nothing to cancel")
    rec = await run_in_threadpool(reg.cancel, run_id, owner)
    await service.jobs.cancel(rec.request_hash)
    return await _answer(service, rec)


# --- tables ----------------------------------------------------------------------------------


def _date(value: str | None, *, last: bool) -> dt.date | None:
    if value is None:
        return None
    parts = [int(x) for x in value.split("-")]
    try:
        if len(parts) == 1:
            return dt.date(parts[0], 12, 31) if last else dt.date(parts[0], 1, 1)
        if len(parts) == 2:
            if not last:
                return dt.date(parts[0], parts[1], 1)
            nxt = dt.date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
            return nxt - dt.timedelta(days=1)
        return dt.date(*parts)
    except ValueError:
        name = "to" if last else "from"
        raise RequestValidationError([{"loc": ("query", name), "type": "value_error",
                                       "msg": f"{name}(={value!r}) is not a date"}]) from None


async def _done_run(service: Service, run_id: str, owner: str) -> RunRecord:
    rec = await run_in_threadpool(service.registry.get_run, run_id, owner)
    if rec.status != "done":
        raise HTTPException(409, f"run {run_id!r} is {rec.status}; its tables exist once it "
                                 "is done")
    return rec


def _filters(stage: list[str] | None, plant: list[str] | None, material: list[str] | None,
             element: list[str] | None, kind: list[str] | None, kpi: list[str] | None,
             start: str | None, end: str | None) -> tables.Filters:
    t = tuple
    return tables.Filters(stage=t(stage or ()), plant=t(plant or ()),
                          material=t(material or ()), element=t(element or ()),
                          kind=t(kind or ()), kpi=t(kpi or ()),
                          start=_date(start, last=False), end=_date(end, last=True))


def _table_response(run_id: str, table: str, df: Any, fmt: Fmt, offset: int,
                    limit: int | None) -> Response:
    total = len(df)
    part = tables.page(df, offset, limit)
    headers = {"X-Total-Count": str(total)}
    if fmt == "json":
        body = {"run": run_id, "table": table, "total": total, "offset": offset,
                "limit": limit, "columns": list(tables.columns(part)),
                "rows": tables.records(part)}
        return Response(json.dumps(body, ensure_ascii=False, allow_nan=False),
                        media_type="application/json", headers=headers)
    ext = "csv" if fmt == "csv" else "parquet"
    headers["Content-Disposition"] = f'attachment; filename="{run_id}-{table}.{ext}"'
    return Response(tables.render(part, fmt), media_type=tables.MEDIA[fmt], headers=headers)


async def _table(service: Service, run_id: str, owner: str, table: str, f: tables.Filters,
                 fmt: str | None, accept: str | None, offset: int,
                 limit: int | None) -> Response:
    rec = await _done_run(service, run_id, owner)
    root = service.settings.results_dir
    chosen = tables.pick_format(fmt, accept)

    def build() -> Response:
        df = tables.filter_table(root, rec.request_hash, table, f)
        return _table_response(run_id, table, df, chosen, offset, limit)

    return await run_in_threadpool(build)


Format = Annotated[Fmt | None, Query(description="json, csv or parquet; overrides Accept.")]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int | None, Query(ge=1, le=5_000_000)]
Accept = Annotated[str | None, Header(include_in_schema=False)]


@router.get("/runs/{run_id}/series", response_model=TablePublic, responses=TABLE_MEDIA)
async def read_run_series(
    run_id: RunId, service: ServiceDep, owner: OwnerDep, format: Format = None,
    kind: Annotated[list[Literal["activity", "stock", "imports", "exports", "served",
                                 "unmet"]] | None, Query(max_length=6)] = None,
    stage: Many = None, plant: Many = None, material: Many = None, element: Many = None,
    start: Annotated[Period, Query(alias="from")] = None,
    end: Annotated[Period, Query(alias="to")] = None,
    offset: Offset = 0, limit: Limit = None, accept: Accept = None,
) -> Response:
    """Daily series of the first replication (``date, kind, id, value``): plant activity,
    pool stocks, imports, exports, demand served and unmet."""
    f = _filters(stage, plant, material, element, list(kind or []), None, start, end)
    return await _table(service, run_id, owner, "series", f, format, accept, offset, limit)


@router.get("/runs/{run_id}/flows", response_model=TablePublic, responses=TABLE_MEDIA)
async def read_run_flows(
    run_id: RunId, service: ServiceDep, owner: OwnerDep, format: Format = None,
    direction: Annotated[list[Literal["in", "out"]] | None, Query(max_length=2)] = None,
    stage: Many = None, plant: Many = None, material: Many = None, element: Many = None,
    start: Annotated[Period, Query(alias="from")] = None,
    end: Annotated[Period, Query(alias="to")] = None,
    offset: Offset = 0, limit: Limit = None, accept: Accept = None,
) -> Response:
    """Monthly flows of the first replication per plant and material
    (``month, plant, stage, material, direction, amount``)."""
    f = _filters(stage, plant, material, element, list(direction or []), None, start, end)
    return await _table(service, run_id, owner, "flows", f, format, accept, offset, limit)


@router.get("/runs/{run_id}/kpis", response_model=TablePublic, responses=TABLE_MEDIA)
async def read_run_kpis(
    run_id: RunId, service: ServiceDep, owner: OwnerDep, format: Format = None,
    view: Annotated[Literal["summary", "replications", "difference"], Query(description=(
        "summary: mean, p5, p50, p95 per KPI and year; replications: every replication's "
        "value; difference: paired what-if − baseline."))] = "summary",
    kpi: Many = None, stage: Many = None, plant: Many = None, material: Many = None,
    element: Many = None,
    start: Annotated[Period, Query(alias="from")] = None,
    end: Annotated[Period, Query(alias="to")] = None,
    offset: Offset = 0, limit: Limit = None, accept: Accept = None,
) -> Response:
    """Annual KPIs of a run, filterable by KPI name (prefix), stage, plant, material,
    element and years."""
    table = {"summary": "summary", "replications": "kpis", "difference": "difference"}[view]
    if view == "difference":
        rec = await _done_run(service, run_id, owner)
        m = await run_in_threadpool(tables.manifest, service.settings.results_dir,
                                    rec.request_hash)
        if "difference.parquet" not in m.get("files", []):
            raise HTTPException(409, f"run {run_id!r} is a baseline (no changes); it has "
                                     "no difference")
    f = _filters(stage, plant, material, element, None, kpi, start, end)
    return await _table(service, run_id, owner, table, f, format, accept, offset, limit)


@router.get("/runs/{run_id}/compare/{other_id}", response_model=ComparePublic,
            responses=TABLE_MEDIA)
async def compare_runs(
    run_id: RunId, other_id: Annotated[str, PathParam(min_length=1, max_length=64)],
    service: ServiceDep, owner: OwnerDep, format: Format = None,
    kpi: Many = None, stage: Many = None, plant: Many = None, material: Many = None,
    element: Many = None,
    start: Annotated[Period, Query(alias="from")] = None,
    end: Annotated[Period, Query(alias="to")] = None, accept: Accept = None,
) -> Response:
    """KPI differences ``run − other`` of two of your finished runs; paired by replication
    (common random numbers) when both used the same seed and replications."""
    a = await _done_run(service, run_id, owner)
    b = await _done_run(service, other_id, owner)
    f = _filters(stage, plant, material, element, None, kpi, start, end)
    root = service.settings.results_dir
    chosen = tables.pick_format(format, accept)

    def build() -> Response:
        df, paired = tables.compare(root, a.request_hash, b.request_hash, f)
        if chosen != "json":
            return _table_response(run_id, f"compare-{other_id}", df, chosen, 0, None)
        body = {"a": run_id, "b": other_id, "paired": paired, "total": len(df),
                "rows": tables.records(df)}
        return Response(json.dumps(body, ensure_ascii=False, allow_nan=False),
                        media_type="application/json")

    return await run_in_threadpool(build)
