"""What-if runs: submit, read, list, cancel; their tables; compare two."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from retwin.storage import DEFERRABLE
from retwin_service import tables
from retwin_service.deps import OwnerDep, ServiceDep
from retwin_service.errors import query_error
from retwin_service.jobs import Answered
from retwin_service.registry import STATUSES, RunRecord
from retwin_service.render import JSONBody, dumps
from retwin_service.schemas import (
    ComparePublic,
    ErrorPublic,
    RunAccepted,
    RunPublic,
    RunsPublic,
    TablePublic,
    ValidationErrorPublic,
    WhatIfRequest,
)
from retwin_service.service import Prepared, Service

router = APIRouter(tags=["runs"], responses={
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API token."},
    403: {"model": ErrorPublic, "description": (
        "The service has no API token and the caller is not on its machine.")},
    422: {"model": ValidationErrorPublic, "description": "The request does not validate."},
})

RunId = Annotated[str, PathParam(min_length=1, max_length=64, description="A run's id.")]
Wait = Annotated[float, Query(ge=0, le=3600, description=(
    "Seconds to wait for the run to finish before answering (at most the service's "
    "RETWIN_WAIT_MAX_SECONDS)."))]
Fmt = Literal["json", "csv", "parquet"]
Many = Annotated[list[str] | None, Query(max_length=100)]
Detail = Annotated[tables.Detail, Query(description=(
    "How much of a finished run's KPIs the answer holds: `headline` (the default) the "
    "region-wide KPIs a planner reads first, per year, and their difference to the "
    "baseline; `full` every KPI, key and year (also at `links.kpis` and "
    "`links.difference`, filterable and paged)."))]

# A period bound: YYYY, YYYY-MM or YYYY-MM-DD, a real day of the Gregorian calendar in
# 1900..2199. The OpenAPI pattern and the parser use this one expression, so whatever the
# document allows is read as written, and nothing else is accepted.
_YEAR = r"(?:19|20|21)[0-9]{2}"
_LEAP = r"(?:(?:19|20|21)(?:0[48]|[2468][048]|[13579][26])|2000)"
_DAY = (rf"{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
        rf"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
        rf"|{_LEAP}-02-29")
PERIOD_PATTERN = rf"^(?:{_YEAR}|{_YEAR}-(?:0[1-9]|1[0-2])|{_DAY})$"
_PERIOD = re.compile(PERIOD_PATTERN)
_PERIOD_DOC = ("YYYY, YYYY-MM or YYYY-MM-DD (a real date, years 1900 to 2199); `from` "
               "starts at its first day, `to` ends with its last.")
From = Annotated[str | None, Query(alias="from", description=_PERIOD_DOC,
                                   json_schema_extra={"pattern": PERIOD_PATTERN})]
To = Annotated[str | None, Query(alias="to", description=_PERIOD_DOC,
                                 json_schema_extra={"pattern": PERIOD_PATTERN})]

TABLE_MEDIA: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}},
                      "application/vnd.apache.parquet": {"schema": {"type": "string",
                                                                    "format": "binary"}}},
          "description": "The rows: JSON by default; CSV or Parquet by `format=` or `Accept`."},
    404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 410: {"model": ErrorPublic},
}
NO_SPACE_DOC: dict[int | str, dict[str, Any]] = {507: {"model": ErrorPublic, "description": (
    "No space left in the data folder; nothing was written. Try again once there is room.")}}


# --- shaping ---------------------------------------------------------------------------------


def _links(run_id: str) -> dict[str, str]:
    base = f"/api/v1/runs/{run_id}"
    return {"self": base, "full": f"{base}?detail=full", "summary": f"{base}/summary",
            "kpis": f"{base}/kpis", "difference": f"{base}/kpis?view=difference",
            "series": f"{base}/series", "flows": f"{base}/flows", "cancel": base}


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


def _public(service: Service, rec: RunRecord, detail: tables.Detail) -> dict[str, Any]:
    result = None
    if rec.status == "done":
        result = tables.run_result(service.settings.results_dir, rec.request_hash, detail)
    return {**_summary(rec), "request": rec.request, "error": rec.error, "result": result}


async def _answer(service: Service, rec: RunRecord, detail: tables.Detail = "headline",
                  status: int = 200) -> Response:
    """The run, read and encoded in a worker thread (``detail=full`` can be large); here
    when there is nothing to read (its result made where it was computed, and encoded
    there too: then only the rest of the run is)."""
    root = service.settings.results_dir
    encoded = None if rec.status != "done" else tables.primed_json(root, rec.request_hash,
                                                                   detail)
    if encoded is not None:  # {..., "result": <encoded>}, as _public orders it
        head = dumps({**_summary(rec), "request": rec.request, "error": rec.error})
        return Response(b"".join((head[:-1], b',"result":', encoded, b"}")),
                        status_code=status, media_type="application/json")
    ready = rec.status != "done" or tables.primed(root, rec.request_hash, detail)
    if ready:
        body = dumps(_public(service, rec, detail))
    else:
        body = await run_in_threadpool(lambda: dumps(_public(service, rec, detail)))
    return Response(body, status_code=status, media_type="application/json")


async def complete_tables(service: Service, key: str, *, baseline: bool = False) -> None:
    """Have stored result ``key`` (and with ``baseline`` its baseline's) write the tables it
    leaves for their first reader (:meth:`retwin_service.jobs.Jobs.complete`), before a
    route reads them. A result that is gone is left alone: reading it answers 410."""
    keys = [key]
    if baseline:
        try:
            m = await run_in_threadpool(tables.manifest, service.settings.results_dir, key)
        except tables.ResultMissing:
            return
        if m.get("baseline_hash"):
            keys.append(str(m["baseline_hash"]))
    await asyncio.gather(*(service.jobs.complete(k) for k in keys))


#: Seconds between two looks at a run whose computation another service process runs.
POLL_S = 0.05


async def _wait(service: Service, rec: RunRecord, seconds: float, *,
                answered: bool = False) -> RunRecord:
    """Wait up to ``seconds`` (capped by the settings) for ``rec`` (just read) to finish.

    Woken as this process finishes the runs of its computation, with what it wrote (the
    run is not read again), or when they may have changed otherwise (the computation's
    tracking ended, a run was cancelled: then it is read again). A computation this
    process does not track (another service process runs it) is looked at every
    :data:`POLL_S`. ``answered``: the caller answers from the headline alone, so the run
    is done as soon as its answer is out, before its result is stored
    (:class:`~retwin_service.jobs.Answered`); else once the registry records it."""
    seconds = min(seconds, service.settings.wait_max_seconds)
    if answered:
        rec = service.jobs.answered(rec)
    if rec.finished or seconds <= 0:
        return rec
    jobs, key = service.jobs, rec.request_hash
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    fresh = True
    while True:
        event = jobs.watch(key)  # before the run is read: no finish is missed between
        try:
            if not fresh:
                rec = await run_in_threadpool(service.registry.get_run, rec.id)
                if answered:
                    rec = service.jobs.answered(rec)
            left = deadline - loop.time()
            if rec.finished or left <= 0:
                return rec
            await asyncio.wait({event}, timeout=left if jobs.tracked(key)
                               else min(POLL_S, left))
        finally:
            jobs.unwatch(key, event)
        finished = event.result() if event.done() and not event.cancelled() else None
        if isinstance(finished, Answered) and not answered:
            finished = None  # its tables are being stored: wait for the registry's finish
        done = None if finished is None else finished.apply(rec)
        if done is not None:
            return done
        fresh = False


async def _settled(service: Service, rec: RunRecord) -> RunRecord:
    """``rec`` (just read), once its result is stored when its answer came out before
    (:meth:`~retwin_service.jobs.Jobs.settle`). A route that reads a run's stored tables
    reads its run through this.

    An unfinished run is read again whether or not there was a store to wait for: its
    computation may have recorded it, and stopped being one answered early, between the
    read of ``rec`` and this look (the answer said done, the run read then did not)."""
    if rec.finished:
        return rec
    await service.jobs.settle(rec.request_hash)
    return await run_in_threadpool(service.registry.get_run, rec.id)


# --- runs ------------------------------------------------------------------------------------


@router.post(
    "/runs", status_code=202, response_model=RunAccepted,
    responses={200: {"model": RunPublic, "description": (
        "The run is finished: answered from a stored result, or it finished within "
        "`wait` seconds.")},
        202: {"description": "Accepted and stored; follow `links.self`."},
        413: {"model": ErrorPublic}, 429: {"model": ErrorPublic, "description": (
            "The queue is full, or this token has too many unfinished runs; see Retry-After.")},
        **NO_SPACE_DOC},
)
async def create_run(body: WhatIfRequest, service: ServiceDep, owner: OwnerDep,
                     wait: Wait = 0.0, detail: Detail = "headline") -> Response:
    """Submit a what-if. It is stored before the answer, so it survives a restart.

    An identical request (same model, changes, seed, replications, horizon) is answered from
    the stored result. Otherwise the answer is ``202`` with the run's id and links, or
    ``200`` with the finished run when it finishes within ``wait`` seconds: its headline
    KPIs and their difference to the baseline (``detail=full``: every KPI), targets,
    bottlenecks and notes, with links to the full tables.
    """
    def check() -> tuple[Prepared, str | None]:  # the request, then the room for its result
        return service.prepare(body), service.space.low()

    prep, full = await run_in_threadpool(check)
    task = prep.task
    reg = service.registry
    if full is not None:  # its result would not fit: refuse before storing anything
        return JSONBody({"detail": f"{full}; free some space there (RETWIN_DATA_DIR) "
                                       "and try again"}, status_code=507)
    await service.jobs.settle(task.key)  # answered, being stored: stored in a moment
    if service.jobs.stored(task.key):
        service.metrics.cache_hits.inc()
        rec = await run_in_threadpool(lambda: reg.add_run(
            owner=owner, model=body.model, request=prep.request, request_hash=task.key,
            status="done"))
        return await _answer(service, rec, detail)
    def admit() -> tuple[RunRecord, bool]:  # the run recorded, then its computation claimed
        rec = reg.add_run(owner=owner, model=body.model, request=prep.request,
                          request_hash=task.key, queue_max=service.settings.queue_max,
                          owner_max=service.settings.per_token_concurrent)
        return rec, service.jobs.claim_ahead(task)

    # no await between the two: a run once recorded is always tracked
    rec, claimed = await run_in_threadpool(admit)
    service.jobs.ensure(task, claimed=claimed)
    rec = await _wait(service, rec, wait, answered=detail == "headline")
    if rec.finished:
        return await _answer(service, rec, detail)
    return JSONBody(_accepted(rec), status_code=202,
                        headers={"Location": _links(rec.id)["self"]})


@router.get("/runs", response_model=RunsPublic)
async def list_runs(
    service: ServiceDep, owner: OwnerDep,
    status: Annotated[list[Literal["queued", "running", "done", "failed", "cancelled"]] | None,
                      Query(max_length=len(STATUSES))] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JSONBody:
    """Your runs, newest first, filtered by status and model."""
    recs, total = await run_in_threadpool(
        lambda: service.registry.list_runs(owner=owner, status=status, model=model,
                                           limit=limit, offset=offset))
    return JSONBody({"data": [_summary(r) for r in recs], "count": total, "limit": limit,
                         "offset": offset})


@router.get("/runs/{run_id}", response_model=RunPublic,
            responses={404: {"model": ErrorPublic}, 410: {"model": ErrorPublic}})
async def read_run(run_id: RunId, service: ServiceDep, owner: OwnerDep,
                   wait: Wait = 0.0, detail: Detail = "headline") -> Response:
    """A run: status and progress; once done, its headline KPIs (mean, p5, p50, p95 per
    year; ``detail=full``: every KPI) and their difference to the baseline of the same
    model, seed and replications, its targets, bottlenecks and notes."""
    rec = await run_in_threadpool(service.registry.get_run, run_id, owner)
    if detail != "headline":  # every KPI: read from the stored tables
        rec = await _settled(service, rec)
    rec = await _wait(service, rec, wait, answered=detail == "headline")
    return await _answer(service, rec, detail)


@router.delete("/runs/{run_id}", response_model=RunPublic,
               responses={404: {"model": ErrorPublic}, 409: {"model": ErrorPublic},
                          410: {"model": ErrorPublic}, **NO_SPACE_DOC})
async def cancel_run(run_id: RunId, service: ServiceDep, owner: OwnerDep) -> Response:
    """Cancel a queued or running run (cancelling a cancelled run changes nothing)."""
    reg = service.registry
    rec = service.jobs.answered(await run_in_threadpool(reg.get_run, run_id, owner))
    if rec.status in ("done", "failed"):
        raise HTTPException(409, f"run {run_id!r} is already {rec.status}; nothing to cancel")
    rec = await run_in_threadpool(reg.cancel, run_id, owner)
    service.jobs.notify(rec.request_hash)  # a request waiting for this run reads it again
    await service.jobs.cancel(rec.request_hash)
    return await _answer(service, rec)


# --- tables ----------------------------------------------------------------------------------


def _date(name: str, value: str | None, *, last: bool) -> dt.date | None:
    """A period bound: its first day (``from``) or its last (``to``); 422 naming ``name``
    unless it matches :data:`PERIOD_PATTERN`."""
    if value is None:
        return None
    if not _PERIOD.fullmatch(value):
        raise query_error(name, f"{name}(={value[:40]!r}) must be YYYY, YYYY-MM or "
                                "YYYY-MM-DD, a real date with a year from 1900 to 2199")
    parts = [int(x) for x in value.split("-")]
    if len(parts) == 1:
        return dt.date(parts[0], 12, 31) if last else dt.date(parts[0], 1, 1)
    if len(parts) == 2:
        day = calendar.monthrange(parts[0], parts[1])[1] if last else 1
        return dt.date(parts[0], parts[1], day)
    return dt.date(parts[0], parts[1], parts[2])


async def _done_run(service: Service, run_id: str, owner: str, what: str = "tables"
                    ) -> RunRecord:
    """The run's record, once it is done (409 before: its ``what`` exist only then)."""
    rec = await _settled(service, await run_in_threadpool(service.registry.get_run, run_id,
                                                          owner))
    if rec.status != "done":
        raise HTTPException(409, f"run {run_id!r} is {rec.status}; its {what} exist once it "
                                 "is done")
    return rec


def _filters(stage: list[str] | None, plant: list[str] | None, material: list[str] | None,
             element: list[str] | None, kind: list[str] | None, kpi: list[str] | None,
             start: str | None, end: str | None) -> tables.Filters:
    t = tuple
    return tables.Filters(stage=t(stage or ()), plant=t(plant or ()),
                          material=t(material or ()), element=t(element or ()),
                          kind=t(kind or ()), kpi=t(kpi or ()),
                          start=_date("from", start, last=False),
                          end=_date("to", end, last=True))


def _page_link(request: Request, offset: int, limit: int) -> str:
    url = request.url.include_query_params(offset=offset, limit=limit)
    return f"{url.path}?{url.query}"


def _stream(chunks: Iterator[bytes], media: str, headers: dict[str, str]) -> StreamingResponse:
    """A streamed answer; each chunk is made in a worker thread as the client reads."""
    return StreamingResponse(chunks, media_type=media, headers=headers)


def _table_response(request: Request, run_id: str, table: str, df: Any, fmt: Fmt,
                    offset: int, limit: int | None) -> Response:
    """JSON: one page (``limit`` rows, by default and at most as :mod:`retwin_service.tables` says)
    with the total and a link to the next page. CSV or Parquet: every row from ``offset``
    (or ``limit`` of them), streamed."""
    total = len(df)
    headers = {"X-Total-Count": str(total)}
    if fmt == "json":
        size = min(limit or tables.JSON_PAGE_DEFAULT, tables.JSON_PAGE_MAX)
        part = tables.page(df, offset, size)
        nxt = offset + size
        body = {"run": run_id, "table": table, "total": total, "offset": offset,
                "limit": size, "next": _page_link(request, nxt, size) if nxt < total else None,
                "columns": list(tables.columns(part)), "rows": tables.records(part)}
        return Response(dumps(body), media_type="application/json", headers=headers)
    part = tables.page(df, offset, limit)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run_id}-{table}")
    headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    chunks = tables.iter_csv(part) if fmt == "csv" else tables.iter_parquet(part)
    return _stream(chunks, tables.MEDIA[fmt], headers)


async def _table(request: Request, service: Service, run_id: str, owner: str, table: str,
                 f: tables.Filters, fmt: str | None, accept: str | None, offset: int,
                 limit: int | None) -> Response:
    rec = await _done_run(service, run_id, owner)
    root = service.settings.results_dir
    chosen = tables.pick_format(fmt, accept)
    if table in DEFERRABLE:
        await complete_tables(service, rec.request_hash)

    def build() -> Response:
        df = tables.filter_table(root, rec.request_hash, table, f)
        return _table_response(request, run_id, table, df, chosen, offset, limit)

    return await run_in_threadpool(build)


Format = Annotated[Fmt | None, Query(description="json, csv or parquet; overrides Accept.")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="Rows to skip.")]
Limit = Annotated[int | None, Query(ge=1, le=5_000_000, description=(
    f"Rows to answer. JSON is paged: {tables.JSON_PAGE_DEFAULT} rows unless asked, at most "
    f"{tables.JSON_PAGE_MAX} (a larger limit is lowered to it; the answer's `limit` says "
    "which applied and `next` links the next page). CSV and Parquet: every row unless "
    "asked, streamed."))]
Accept = Annotated[str | None, Header(include_in_schema=False)]


@router.get("/runs/{run_id}/series", response_model=TablePublic, responses=TABLE_MEDIA)
async def read_run_series(
    request: Request, run_id: RunId, service: ServiceDep, owner: OwnerDep,
    format: Format = None,
    kind: Annotated[list[Literal["activity", "stock", "imports", "exports", "served",
                                 "unmet"]] | None, Query(max_length=6)] = None,
    stage: Many = None, plant: Many = None, material: Many = None, element: Many = None,
    start: From = None, end: To = None,
    offset: Offset = 0, limit: Limit = None, accept: Accept = None,
) -> Response:
    """Daily series of the first replication (``date, kind, id, value``): plant activity,
    pool stocks, imports, exports, demand served and unmet."""
    f = _filters(stage, plant, material, element, list(kind or []), None, start, end)
    return await _table(request, service, run_id, owner, "series", f, format, accept, offset, limit)


@router.get("/runs/{run_id}/flows", response_model=TablePublic, responses=TABLE_MEDIA)
async def read_run_flows(
    request: Request, run_id: RunId, service: ServiceDep, owner: OwnerDep,
    format: Format = None,
    direction: Annotated[list[Literal["in", "out"]] | None, Query(max_length=2)] = None,
    stage: Many = None, plant: Many = None, material: Many = None, element: Many = None,
    start: From = None, end: To = None,
    offset: Offset = 0, limit: Limit = None, accept: Accept = None,
) -> Response:
    """Monthly flows of the first replication per plant and material
    (``month, plant, stage, material, direction, amount``)."""
    f = _filters(stage, plant, material, element, list(direction or []), None, start, end)
    return await _table(request, service, run_id, owner, "flows", f, format, accept, offset, limit)


@router.get("/runs/{run_id}/kpis", response_model=TablePublic, responses=TABLE_MEDIA)
async def read_run_kpis(
    request: Request, run_id: RunId, service: ServiceDep, owner: OwnerDep,
    format: Format = None,
    view: Annotated[Literal["summary", "replications", "difference"], Query(description=(
        "summary: mean, p5, p50, p95 per KPI and year; replications: every replication's "
        "value; difference: paired what-if − baseline."))] = "summary",
    kpi: Many = None, stage: Many = None, plant: Many = None, material: Many = None,
    element: Many = None,
    start: From = None, end: To = None,
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
    return await _table(request, service, run_id, owner, table, f, format, accept, offset, limit)


@router.get("/runs/{run_id}/compare/{other_id}", response_model=ComparePublic,
            responses=TABLE_MEDIA)
async def compare_runs(
    request: Request, run_id: RunId,
    other_id: Annotated[str, PathParam(min_length=1, max_length=64)],
    service: ServiceDep, owner: OwnerDep, format: Format = None,
    kpi: Many = None, stage: Many = None, plant: Many = None, material: Many = None,
    element: Many = None,
    start: From = None, end: To = None, accept: Accept = None,
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
            return _table_response(request, run_id, f"compare-{other_id}", df, chosen, 0,
                                   None)
        body = {"a": run_id, "b": other_id, "paired": paired, "total": len(df),
                "rows": tables.records(df)}
        return Response(dumps(body), media_type="application/json")

    return await run_in_threadpool(build)
