"""Domain errors mapped to HTTP in one place.

- a bad request or scenario → 422 ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``
  naming the field;
- an unknown run (or another owner's) → 404; a full queue or too many runs → 429 with
  ``Retry-After``; a body too large → 413;
- anything unexpected → 500 with a generic message and an incident id; the traceback goes to
  the server's log, never into the answer.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import retwin
from api.tables import ResultMissing
from retwin.registry import OwnerLimit, QueueFull, RegistryError, RunNotFound

__all__ = ["install", "loc_of", "problem_body"]

log = logging.getLogger("retwin.api")

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\](?:\([^)]*\))?")


def loc_of(path: str) -> list[str | int]:
    """``changes[0].quota`` → ``["body", "changes", 0, "quota"]``; a path into the scenario
    (a parameter change made it invalid) → ``["scenario", "plants", 3, "capacity_tpa"]``."""
    parts: list[str | int] = []
    for name, index in _PART.findall(path):
        parts.append(int(index) if index else name)
    head = "body" if not parts or parts[0] in ("changes", "model", "replications", "seed",
                                                 "end", "label") else "scenario"
    return [head, *parts]


def problem_body(problems: list[tuple[str, str]]) -> dict[str, Any]:
    return {"detail": [{"loc": loc_of(p), "msg": f"{p}: {m}" if p else m, "type": "scenario"}
                       for p, m in problems]}


def _msg(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"body is not valid JSON: {ctx.get('error', msg)}"
    return msg


def _not_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype != "application/json" and not ctype.endswith("+json")


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = []
    for e in exc.errors():
        loc = [x if isinstance(x, int) else str(x) for x in e.get("loc", ())]
        msg = _msg(e)
        if loc == ["body"] and e.get("type") == "model_attributes_type" and _not_json(request):
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        items.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
    return JSONResponse(status_code=422, content={"detail": items})


async def _scenario(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, retwin.ScenarioError)
    return JSONResponse(status_code=422, content=problem_body(exc.problems))


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def _missing(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=410, content={
        "detail": "the stored result of this run is gone; submit the request again"})


async def _busy(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull | OwnerLimit)
    return JSONResponse(status_code=429, content={"detail": str(exc)},
                        headers={"Retry-After": str(exc.retry_after_s)})


async def _registry(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # a body FastAPI cannot even decode (not UTF-8): a malformed body like any other
        return JSONResponse(status_code=422, content={"detail": [{
            "loc": ["body"], "msg": "body is not valid JSON (not UTF-8 text)",
            "type": "json_invalid"}]})
    return JSONResponse(status_code=exc.status_code, content={"detail": detail},
                        headers=getattr(exc, "headers", None))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.error("incident %s: %s %s failed", incident, request.method, request.url.path,
              exc_info=exc)
    return JSONResponse(status_code=500, content={
        "detail": f"internal error (incident {incident}); the service log has the details"})


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(retwin.ScenarioError, _scenario)
    app.add_exception_handler(RunNotFound, _not_found)
    app.add_exception_handler(ResultMissing, _missing)
    app.add_exception_handler(QueueFull, _busy)
    app.add_exception_handler(OwnerLimit, _busy)
    app.add_exception_handler(RegistryError, _registry)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)
