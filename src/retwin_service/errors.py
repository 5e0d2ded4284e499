"""Domain errors mapped to HTTP in one place.

- a bad request or scenario → 422 ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``
  naming the field;
- an unknown run (or another owner's) → 404; a full queue or too many runs → 429 with
  ``Retry-After``; a body too large → 413; a method the path does not have → 405 with an
  ``Allow`` header naming every method it has;
- a write refused because the data folder is full → 507 "no space left in the data folder";
- anything unexpected → 500 with a generic message and an incident id; the traceback goes to
  the server's log, never into the answer.

Every body is JSON and matches the OpenAPI document: ``{"detail": "message"}``, except a 422
whose ``detail`` is always a list of ``{"loc", "msg", "type"}``.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

import retwin
from retwin_service.registry import OwnerLimit, QueueFull, RegistryError, RunNotFound, Unstorable
from retwin_service.render import JSONBody
from retwin_service.space import NO_SPACE, is_no_space
from retwin_service.tables import ResultMissing

__all__ = ["install", "loc_of", "problem_body", "query_error"]

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


def query_error(name: str, msg: str, where: str = "query") -> RequestValidationError:
    """A 422 naming one parameter (``loc = [where, name]``)."""
    return RequestValidationError([{"loc": (where, name), "msg": msg, "type": "value_error"}])


def _msg(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"body is not valid JSON: {ctx.get('error', msg)}"
    return msg


def _not_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype != "application/json" and not ctype.endswith("+json")


async def _validation(request: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, RequestValidationError)
    items = []
    for e in exc.errors():
        loc = [x if isinstance(x, int) else str(x) for x in e.get("loc", ())]
        msg = _msg(e)
        if loc == ["body"] and e.get("type") == "model_attributes_type" and _not_json(request):
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        items.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
    return JSONBody(status_code=422, content={"detail": items})


async def _scenario(_: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, retwin.ScenarioError)
    return JSONBody(status_code=422, content=problem_body(exc.problems))


async def _not_found(_: Request, exc: Exception) -> JSONBody:
    return JSONBody(status_code=404, content={"detail": str(exc)})


async def _missing(_: Request, exc: Exception) -> JSONBody:
    return JSONBody(status_code=410, content={
        "detail": "the stored result of this run is gone; submit the request again"})


async def _busy(_: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, QueueFull | OwnerLimit)
    return JSONBody(status_code=429, content={"detail": str(exc)},
                        headers={"Retry-After": str(exc.retry_after_s)})


async def _registry(_: Request, exc: Exception) -> JSONBody:
    return JSONBody(status_code=409, content={"detail": str(exc)})


async def _unstorable(_: Request, exc: Exception) -> JSONBody:
    return JSONBody(status_code=422, content={"detail": [
        {"loc": ["body"], "msg": str(exc), "type": "value_error"}]})


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (asked of the
    routes themselves, so included routers count too)."""
    return [m for m in _METHODS
            if any(r.matches({**request.scope, "method": m})[0] == Match.FULL
                   for r in request.app.router.routes)]


async def _http(request: Request, exc: Exception) -> JSONBody:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # a body FastAPI cannot even decode (not UTF-8): a malformed body like any other
        return JSONBody(status_code=422, content={"detail": [{
            "loc": ["body"], "msg": "body is not valid JSON (not UTF-8 text)",
            "type": "json_invalid"}]})
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        allowed = _allowed(request)
        headers["Allow"] = ", ".join(allowed)
        detail = (f"{request.method} is not allowed on {request.url.path[:200]}; it answers "
                  f"{', '.join(allowed)}")
    if exc.status_code == 422:  # the document says a 422 always lists its problems
        return JSONBody(status_code=422, content={"detail": [
            {"loc": [], "msg": detail, "type": "value_error"}]}, headers=headers or None)
    return JSONBody(status_code=exc.status_code, content={"detail": detail},
                        headers=headers or None)


async def _storage(request: Request, exc: Exception) -> JSONBody:
    """An OS or database error: 507 when the data folder is full, else an internal error."""
    service = getattr(request.app.state, "service", None)
    full = service.space.refused(exc) if service is not None else is_no_space(exc)
    if full:
        return JSONBody(status_code=507, content={"detail": (
            f"{NO_SPACE}; free some space there (RETWIN_DATA_DIR) and try again")})
    return await _internal(request, exc)


async def _internal(request: Request, exc: Exception) -> JSONBody:
    incident = uuid.uuid4().hex[:12]
    log.error("incident %s: %s %s failed", incident, request.method, request.url.path,
              exc_info=exc)
    return JSONBody(status_code=500, content={
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
    app.add_exception_handler(Unstorable, _unstorable)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(OSError, _storage)
    app.add_exception_handler(DBAPIError, _storage)
    app.add_exception_handler(Exception, _internal)
