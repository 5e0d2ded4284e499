"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis).

Against a live ``retwin serve`` on 127.0.0.1: every generated request, valid or not, gets
no 5xx, and every answer matches the status codes, content types and schemas the document
declares. Examples are bounded so the run stays short.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from api.main import create_app
from api.settings import Settings
from apiutil import Server, whatif
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("schemathesis"), env={
        "RETWIN_MAX_REPLICATIONS": "3", "RETWIN_MAX_HORIZON_YEARS": "3",
        "RETWIN_WAIT_MAX_SECONDS": "2"})
    srv.start()
    try:
        # one finished run, so that its id reaches the table routes
        r = httpx.post(f"{srv.url}/api/v1/runs", json=whatif(), timeout=60)
        rid = r.json()["id"]
        for _ in range(30):  # the service waits at most 2 s per call here
            if r.json()["status"] == "done":
                break
            r = httpx.get(f"{srv.url}/api/v1/runs/{rid}", params={"wait": 2}, timeout=60)
        assert r.json()["status"] == "done"
        srv.env["run_id"] = rid
        yield srv
    finally:
        srv.kill()


# The document is the app's own; building it needs no running service.
schema = schemathesis.openapi.from_dict(create_app(Settings(precompute=[])).openapi())


@pytest.fixture(scope="module")
def api_schema() -> Any:
    return schema


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi(case: Any, live: Server) -> None:
    if "run_id" in (case.path_parameters or {}) and case.path_parameters["run_id"] == "x":
        case.path_parameters["run_id"] = live.env["run_id"]
    case.call_and_validate(base_url=live.url, checks=CHECKS)


def test_a_finished_run_and_its_tables_conform(live: Server, api_schema: Any) -> None:
    """The generated ids above are mostly unknown (404); these paths hit a real run."""
    rid = live.env["run_id"]
    for path, params in ((f"/api/v1/runs/{rid}", {}), (f"/api/v1/runs/{rid}/series", {
            "plant": "mine", "limit": 3}), (f"/api/v1/runs/{rid}/flows", {"limit": 3}),
            (f"/api/v1/runs/{rid}/kpis", {"view": "difference", "limit": 3}),
            (f"/api/v1/runs/{rid}/compare/{rid}", {"kpi": "output.stage"}),
            ("/api/v1/runs", {"status": "done"})):
        op = api_schema.find_operation_by_path("GET", path.replace(rid, "{run_id}", 1)
                                               .replace(rid, "{other_id}"))
        case = op.Case(path_parameters={k: rid for k in ("run_id", "other_id")
                                        if "{" + k + "}" in op.path} or None,
                       query=params)
        case.call_and_validate(base_url=live.url, checks=CHECKS)


def test_the_schema_names_every_error_body(api_schema: Any) -> None:
    raw = api_schema.raw_schema
    post = raw["paths"]["/api/v1/runs"]["post"]["responses"]
    assert {"200", "202", "401", "413", "422", "429"} <= set(post)
