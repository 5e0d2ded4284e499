"""The FastAPI application: ``create_app(settings)``.

Its lifespan opens the run registry, registers a bootstrap token if one is set, refuses to
serve beyond loopback without tokens, loads the reference models, starts the workers
(kernels compiled in each), re-queues every run a stopped service left unfinished, and
starts computing the default baselines. Routes live under ``/api/v1``; the OpenAPI docs at
``/docs``. Answers of 1 KB or more are gzipped for a client that accepts it. Run it with
``retwin serve`` (or ``uvicorn --factory retwin_service.main:create_app``).

Without a token the service answers only callers on its own machine, however it was
started (:class:`~retwin_service.guard.OpenGuard` looks at each request's peer and ``Host``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import retwin
from retwin.batch.executors import settle_heap
from retwin_service import errors
from retwin_service.guard import OpenGuard
from retwin_service.jobs import Jobs
from retwin_service.observe import Metrics, RequestContext, configure_logging
from retwin_service.registry import Registry
from retwin_service.render import JSONBody
from retwin_service.routes import health, models, page, runs
from retwin_service.routes import metrics as metrics_route
from retwin_service.service import Catalog, Service
from retwin_service.settings import Settings
from retwin_service.space import Space

__all__ = ["BodyLimit", "InsecureBind", "create_app"]

log = logging.getLogger("retwin.api")

API_PREFIX = "/api/v1"


class InsecureBind(retwin.RetwinError):
    """The service would listen beyond loopback with no API token."""


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids: the route function's name (``create_run``, ``read_run``…)."""
    return route.name


_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]

#: Answers smaller than this are sent as they are (gzip would save little on them).
GZIP_MIN_BYTES = 1024
#: What is compressed already (Parquet) is not compressed again.
GZIP_SKIP = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/vnd.apache.parquet")


class BodyLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413, before any parsing; add
    ``nosniff`` to every answer, and ``no-store`` to every answer that does not say how
    it may be cached (the page's static files are revalidated, :mod:`.routes.page`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                has = {bytes(k).lower() for k, _ in headers}
                msg = {**msg, "headers": [*headers, *(h for h in _HEADERS if h[0] not in has)]}
            await send(msg)

        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send_with_headers)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await self._refuse(send, 413, f"request body of {int(declared)} bytes exceeds "
                                              f"the limit of {self.max_bytes} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, 413, f"request body exceeds the limit of "
                                              f"{self.max_bytes} bytes")
                return
            chunks.append(chunk)
            more = bool(msg.get("more_body", False))
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)


async def _start(app: FastAPI, settings: Settings, metrics: Metrics) -> Service:
    registry = await asyncio.to_thread(Registry, settings.database_url)
    if settings.bootstrap_token is not None:
        await asyncio.to_thread(registry.add_token, settings.bootstrap_token_name,
                                settings.bootstrap_token.get_secret_value())
    if not settings.loopback and not await asyncio.to_thread(registry.has_tokens):
        registry.close()
        raise InsecureBind(
            f"refusing to serve on {settings.host}: beyond loopback every request needs an "
            "API token, and none exists (retwin token create NAME, or RETWIN_BOOTSTRAP_TOKEN)")
    space = Space(settings.data_dir, settings.min_free_bytes)
    jobs = Jobs(registry, settings.results_dir, workers=settings.workers,
                dask_address=settings.dask_address, space=space,
                lease_s=settings.claim_lease_seconds, on_computed=metrics.computed)
    await asyncio.to_thread(jobs.start)  # workers start (and compile) while models load
    try:
        catalog = await asyncio.to_thread(Catalog().load)
    except BaseException:
        await asyncio.to_thread(jobs.close)
        raise
    service = Service(settings, registry, catalog, jobs, space, metrics)
    metrics.watch(registry.counts, registry.active_computations, lambda: jobs.in_flight)
    for task in await asyncio.to_thread(service.recover):
        jobs.ensure(task)
    for name in settings.precompute:
        if name in catalog.models:
            jobs.ensure(service.baseline_task(name))
    log.info("retwin %s serving %d models with %d %s workers; data in %s",
             retwin.__version__, len(catalog.models), settings.workers, jobs.kind,
             settings.data_dir)
    return service


async def _maintain(service: Service) -> None:
    """While the service runs: renew its claims on computations, and take over those no
    live service process holds any more (one sharing the database died)."""
    every = service.jobs.lease_s / 3
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(service.jobs.keep_leases)
            for task in await asyncio.to_thread(service.adopt):
                service.jobs.ensure(task)
        except Exception:  # the database may be away for a moment: try again next time
            log.exception("keeping leases failed")


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document as this service answers: its request limits stated, and the
    token optional (a service with no token answers its own machine without one)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = FastAPI.openapi(app)  # builds the document (and caches it on the app)
    req = doc.get("components", {}).get("schemas", {}).get("WhatIfRequest", {})
    props = req.get("properties", {})
    if "replications" in props:
        props["replications"]["maximum"] = settings.max_replications
    if "changes" in props:
        props["changes"]["maxItems"] = settings.max_changes
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict) and op.get("security"):
                op["security"] = [*op["security"], {}]
    return doc


def create_app(settings: Settings | None = None, *, own_process: bool = False) -> FastAPI:
    """The service as an ASGI app; ``settings`` default to the environment's.

    ``own_process``: the app is all this process runs (``retwin serve``). Once started,
    what the process keeps (libraries, models, the app) is then frozen out of the cyclic
    garbage collector's reach (:func:`retwin.batch.executors.settle_heap`), so that no
    request waits for a full collection that scans all of it (10–45 ms each)."""
    settings = settings or Settings()
    if settings.log_format == "json":
        configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await _start(app, settings, metrics)
        app.state.service = service
        if own_process:
            settle_heap()
        keeper = asyncio.get_running_loop().create_task(_maintain(service),
                                                        name="retwin-leases")
        try:
            yield
        finally:
            keeper.cancel()
            await service.jobs.finish_answered()
            service.jobs.abandon()
            await asyncio.to_thread(service.jobs.close)
            service.registry.close()

    app = FastAPI(
        title="retwin what-if service",
        summary="What-ifs on the rare-earth industrial chain: submit changes to a reference "
                "model, get KPIs and their difference to the baseline.",
        version=retwin.__version__,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        default_response_class=JSONBody,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    errors.install(app)
    app.add_middleware(OpenGuard)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContext, metrics=metrics,
                       access_log=settings.log_format == "json")
    # outermost: every answer of 1 KB or more is gzipped for a client that accepts it
    # (level 6: a run's CSV series within 10 % of level 9's size in a quarter of its time)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=6,
                       exclude_content_types=GZIP_SKIP)
    app.include_router(metrics_route.router)
    app.include_router(health.router, prefix=API_PREFIX)
    app.include_router(models.router, prefix=API_PREFIX)
    app.include_router(runs.router, prefix=API_PREFIX)
    app.include_router(page.router, prefix=API_PREFIX)
    app.include_router(page.page_router)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]

    return app
