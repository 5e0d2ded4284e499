"""What operators watch: Prometheus metrics, request ids and structured (JSON) logs.

``GET /metrics`` answers in the Prometheus text format:

=======================================  =====================================================
``retwin_runs{status}``                  runs in the registry per status (every process's)
``retwin_queue_depth``                   computations queued or running (what
                                         ``RETWIN_QUEUE_MAX`` bounds)
``retwin_computations_in_flight``        computations this process tracks
``retwin_computation_seconds{outcome}``  histogram: how long computations took, per outcome
``retwin_cache_hits_total``              requests answered from a stored result
``retwin_http_request_duration_seconds`` histogram per ``method`` and ``route`` (the route's
                                         template, ``/api/v1/runs/{run_id}``)
``retwin_http_requests_total``           per ``method``, ``route`` and ``status``
=======================================  =====================================================

It follows the same rule as the rest of the API, except for callers on this machine: a
loopback peer (a local Prometheus agent or sidecar) needs no token; from elsewhere, once a
token exists, ``Authorization: Bearer <token>``.

Every request gets an id: the caller's ``X-Request-ID`` when it is short and plain (letters,
digits, ``-``, ``_``, ``.``; at most 128), else a new one; the answer carries it back in
``X-Request-ID`` and every log line written while serving it names it. With
``RETWIN_LOG_FORMAT=json`` every log line is one JSON object (``time``, ``level``,
``logger``, ``message``, ``request_id`` when there is one, and for each request one line
``request`` with ``method``, ``route``, ``path``, ``status`` and ``duration_ms``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonFormatter", "Metrics", "RequestContext", "configure_logging", "request_id"]

log = logging.getLogger("retwin.api.request")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "retwin_request_id", default=None)

_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

#: Buckets of the computation histogram (seconds): a what-if takes from a fraction of a
#: second (the tiny model) to many minutes (a thousand replications of a national model).
COMPUTATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Buckets of the HTTP latency histogram (seconds).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


class _RegistryCollector(Collector):
    """Gauges read from the run registry (and the jobs) at each scrape."""

    def __init__(self, counts: Callable[[], dict[str, int]], depth: Callable[[], int],
                 in_flight: Callable[[], int]) -> None:
        self.counts, self.depth, self.in_flight = counts, depth, in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily("retwin_runs", "Runs in the registry, per status.",
                                 labels=["status"])
        for status, n in self.counts().items():
            runs.add_metric([status], n)
        yield runs
        yield GaugeMetricFamily("retwin_queue_depth",
                                "Computations queued or running (all service processes).",
                                value=self.depth())
        yield GaugeMetricFamily("retwin_computations_in_flight",
                                "Computations this service process tracks.",
                                value=self.in_flight())


class Metrics:
    """The metrics of one service (a registry of its own: several apps in one process, as in
    the tests, never mix their numbers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.computation_seconds = Histogram(
            "retwin_computation_seconds", "Seconds a computation took, per outcome.",
            ["outcome"], buckets=COMPUTATION_BUCKETS, registry=self.registry)
        self.cache_hits = Counter(
            "retwin_cache_hits", "Requests answered from a stored result.",
            registry=self.registry)
        self.http_seconds = Histogram(
            "retwin_http_request_duration_seconds", "Seconds to answer an HTTP request.",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=self.registry)
        self.http_requests = Counter(
            "retwin_http_requests", "HTTP requests answered.", ["method", "route", "status"],
            registry=self.registry)
        self._collector: _RegistryCollector | None = None

    def watch(self, counts: Callable[[], dict[str, int]], depth: Callable[[], int],
              in_flight: Callable[[], int]) -> None:
        """Read runs per status, queue depth and computations in flight at each scrape."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = _RegistryCollector(counts, depth, in_flight)
        self.registry.register(self._collector)

    def computed(self, outcome: str, seconds: float) -> None:
        self.computation_seconds.labels(outcome).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition (blocking: reads the registry)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _route(scope: Scope) -> str:
    """The template of the route that answered (bounded label values), with the prefix it
    was included under (``/api/v1/runs/{run_id}``), else ``unmatched``."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    path = str(scope.get("path", ""))
    try:
        rendered = template.format(**(scope.get("path_params") or {}))
    except (KeyError, IndexError, ValueError):
        return template
    if rendered and path.endswith(rendered):
        return path[: len(path) - len(rendered)] + template
    return template


class RequestContext:
    """Outermost middleware: the request id (context, header, logs), the HTTP metrics and,
    with JSON logs, one ``request`` log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers") or []
                      if k == b"x-request-id"), "")
        rid = given if _ID_OK.match(given) else uuid.uuid4().hex
        token = _request_id.set(rid)
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
                msg = {**msg, "headers": [*msg.get("headers", []),
                                          (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            method, route = scope.get("method", "?"), _route(scope)
            self.metrics.http_seconds.labels(method, route).observe(seconds)
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            if self.access_log:
                log.info("request", extra={"http": {
                    "method": method, "route": route, "path": scope.get("path", ""),
                    "status": status, "duration_ms": round(seconds * 1000, 3)}})
            _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the request id
    of the request being served, the ``http`` fields of a request line, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or _request_id.get()
        if rid:
            out["request_id"] = rid
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            out.update(http)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _RetwinHandler(logging.StreamHandler):
    """The handler :func:`configure_logging` installs (found again and replaced by it)."""


def configure_logging(level: str, fmt: str) -> None:
    """Log to stderr at ``level``: human-readable lines (``text``) or JSON (``json``).
    Replaces what an earlier call installed; uvicorn's own loggers go through it too."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _RetwinHandler)]:
        root.removeHandler(h)
    handler = _RetwinHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    if fmt == "json":  # uvicorn's loggers write through the root's JSON handler
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True
