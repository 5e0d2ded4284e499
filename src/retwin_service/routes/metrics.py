"""``GET /metrics``: the service's metrics in the Prometheus text format
(:mod:`retwin_service.observe`). A caller on this machine needs no token; from elsewhere the
rule of the rest of the API applies (a token once any exists)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from retwin_service.deps import _bearer, get_owner, get_service
from retwin_service.schemas import ErrorPublic
from retwin_service.settings import is_loopback

router = APIRouter(tags=["health"])

#: The content type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
    401: {"model": ErrorPublic, "description": "From beyond loopback without a valid token."},
    403: {"model": ErrorPublic, "description": (
        "The service has no API token and the caller is not on its machine.")},
})
async def read_metrics(request: Request) -> Response:
    """Runs per status, queue depth, computation seconds, cache hits, HTTP latency per
    route (Prometheus text format)."""
    service = await get_service(request)
    client = request.client
    if client is not None and not is_loopback(str(client.host)):
        credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
        await get_owner(service, credentials)  # raises 401 like every other route
    body = await run_in_threadpool(service.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
