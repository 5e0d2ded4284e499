"""``/metrics`` in the Prometheus text format, its auth rule, request ids and JSON logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiutil import TestClient, settings_for, whatif
from prometheus_client.parser import text_string_to_metric_families

from retwin_service.main import create_app
from retwin_service.observe import JsonFormatter, configure_logging
from retwin_service.registry import Registry

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    s = settings_for(tmp_path_factory.mktemp("metrics"))
    reg = Registry(s.database_url)
    token = reg.create_token("ann")[1]
    reg.close()
    with TestClient(create_app(s)) as c:
        yield c, token


def test_metrics_count_runs_computations_cache_hits_and_latency(
        tokened: tuple[TestClient, str]) -> None:
    c, token = tokened
    auth = {"Authorization": f"Bearer {token}"}
    r = c.post(f"{API}/runs", json=whatif(), params={"wait": 60}, headers=auth)
    assert r.json()["status"] == "done"
    c.post(f"{API}/runs", json=whatif(), headers=auth)  # answered from the stored result
    c.get(f"{API}/runs/{r.json()['id']}", headers=auth)
    m = c.get("/metrics")  # from loopback: no token needed
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    got = samples(m.text)
    assert got[("retwin_runs", (("status", "done"),))] == 2
    assert got[("retwin_runs", (("status", "queued"),))] == 0
    assert got[("retwin_queue_depth", ())] == 0
    assert got[("retwin_cache_hits_total", ())] == 1
    assert got[("retwin_computation_seconds_count", (("outcome", "done"),))] == 1
    route = (("method", "GET"), ("route", "/api/v1/runs/{run_id}"))
    assert got[("retwin_http_request_duration_seconds_count", route)] == 1
    assert got[("retwin_http_requests_total",
                (("method", "POST"), ("route", "/api/v1/runs"), ("status", "200")))] == 2


def test_metrics_from_beyond_loopback_need_a_token(tokened: tuple[TestClient, str]) -> None:
    c, token = tokened
    app = c.app
    with TestClient(app, client=("198.51.100.7", 4000)) as far:
        assert far.get("/metrics").status_code == 401
        assert far.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = far.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and "retwin_runs" in ok.text


def test_every_answer_carries_a_request_id(tokened: tuple[TestClient, str]) -> None:
    c, _ = tokened
    a, b = c.get(f"{API}/health"), c.get(f"{API}/health")
    assert len(a.headers["x-request-id"]) == 32 and a.headers["x-request-id"] != \
        b.headers["x-request-id"]
    assert c.get(f"{API}/health", headers={"X-Request-ID": "abc-123"}
                 ).headers["x-request-id"] == "abc-123"
    for odd in ("a b", "x" * 200, "<script>"):  # not echoed: a new one instead
        got = c.get(f"{API}/health", headers={"X-Request-ID": odd}).headers["x-request-id"]
        assert got != odd and len(got) == 32


def test_json_logs_name_the_request(tmp_path: Path) -> None:
    s = settings_for(tmp_path, log_format="json", log_level="info")
    buf = io.StringIO()
    try:
        with TestClient(create_app(s)) as c:
            handler = logging.StreamHandler(buf)
            handler.setFormatter(JsonFormatter())
            logging.getLogger().addHandler(handler)
            try:
                c.get(f"{API}/runs/nope", headers={"X-Request-ID": "req-42"})
            finally:
                logging.getLogger().removeHandler(handler)
    finally:
        configure_logging("warning", "text")
    lines = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    req = [ln for ln in lines if ln.get("message") == "request"]
    assert req and req[-1]["request_id"] == "req-42"
    assert req[-1]["status"] == 404 and req[-1]["route"] == "/api/v1/runs/{run_id}"
    assert req[-1]["method"] == "GET" and req[-1]["duration_ms"] >= 0
    assert all({"time", "level", "logger", "message"} <= set(ln) for ln in lines)


def test_a_bad_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match=r"log_format\(='xml'\) must be text or json"):
        settings_for(Path("/tmp"), log_format="xml")
