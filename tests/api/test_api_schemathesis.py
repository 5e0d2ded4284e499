"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis).

Against a real server: ``uvicorn --factory retwin_service.main:create_app`` (the documented
entry) in its own process on 127.0.0.1. The document is built here from the same settings (the
parametrized tests need it at import) and checked to be the one the server serves. Every
operation gets generated requests, valid and invalid (schemathesis' examples, coverage and
fuzzing phases), and every answer must be no server error and match the status codes,
content types and schemas the document declares. Half of the generated run ids are swapped
for real ones (a finished what-if, its baseline, a cancelled run), so the table, compare and
chart routes are reached, not only their 404. Examples are bounded so the run stays short.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from apiutil import Server, whatif
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.checks import allow_header_conformance

from retwin_service.main import create_app
from retwin_service.settings import Settings

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, allow_header_conformance]
API = "/api/v1"
LIMITS = {"max_replications": 3, "max_horizon_years": 3, "wait_max_seconds": 2}


def _finished(c: httpx.Client, body: dict[str, Any]) -> str:
    r = c.post(f"{API}/runs", json=body)
    assert r.status_code in (200, 202), r.text
    rid = str(r.json()["id"])
    for _ in range(60):  # the service waits at most 2 s per call here
        if r.json()["status"] == "done":
            return rid
        r = c.get(f"{API}/runs/{rid}", params={"wait": 2})
    raise AssertionError(f"run {rid} did not finish: {r.text}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {f"RETWIN_{k.upper()}": str(v) for k, v in LIMITS.items()}
    srv = Server(tmp_path_factory.mktemp("schemathesis"), factory=True,
                 env={**env, "RETWIN_WORKERS": "1"})
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            srv.env["run_id"] = _finished(c, whatif())
            srv.env["base_id"] = _finished(c, whatif(changes=[]))
            r = c.post(f"{API}/runs", json=whatif(seed=5, replications=3))
            c.delete(f"{API}/runs/{r.json()['id']}")
            srv.env["cancelled_id"] = str(r.json()["id"])
        yield srv
    finally:
        srv.kill()


# The document of an app with the server's settings; building it needs no running service.
DOCUMENT = create_app(Settings(precompute=[], **LIMITS)).openapi()  # type: ignore[arg-type]
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def api_schema() -> Any:
    return schema


def test_the_document_is_the_one_the_server_serves(live: Server) -> None:
    assert httpx.get(f"{live.url}/openapi.json", timeout=30).json() == DOCUMENT


def _aim(case: Any, live: Server) -> None:
    """Swap half of the generated run ids (chosen by their own hash, so a failing example
    replays the same) for real ones."""
    params = case.path_parameters or {}
    real = [live.env["run_id"], live.env["base_id"], live.env["cancelled_id"]]
    for i, name in enumerate(("run_id", "other_id")):
        value = params.get(name)
        if isinstance(value, str):
            h = zlib.crc32(value.encode("utf-8", "replace"))
            if h % 2 == 0:
                params[name] = real[(h // 2 + i) % len(real)]


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi(case: Any, live: Server) -> None:
    _aim(case, live)
    case.call_and_validate(base_url=live.url, checks=CHECKS)


def test_a_finished_run_and_its_tables_conform(live: Server, api_schema: Any) -> None:
    """Requests the generator rarely makes: real runs, their tables in every format."""
    rid, base = live.env["run_id"], live.env["base_id"]
    for path, params in (
            (f"{API}/runs/{rid}", {}), (f"{API}/runs/{rid}/series", {"plant": "mine",
                                                                     "limit": 3}),
            (f"{API}/runs/{rid}/series", {"format": "csv"}),
            (f"{API}/runs/{rid}/flows", {"format": "parquet"}),
            (f"{API}/runs/{rid}/flows", {"limit": 3, "from": "2024-02", "to": "2024-02-29"}),
            (f"{API}/runs/{rid}/kpis", {"view": "difference", "limit": 3}),
            (f"{API}/runs/{base}/kpis", {"view": "difference"}),
            (f"{API}/runs/{rid}/compare/{base}", {"kpi": "output.stage"}),
            (f"{API}/runs/{rid}/charts/sankey", {"year": 2025}),
            (f"{API}/runs/{rid}/charts/sankey", {"year": 1999}),
            (f"{API}/runs", {"status": "done"})):
        template = path.replace(rid, "{run_id}", 1).replace(base, "{other_id}"
                                                            if "compare" in path else
                                                            "{run_id}", 1)
        template = template.replace("/charts/sankey", "/charts/{name}")
        op = api_schema.find_operation_by_path("GET", template)
        pp = {k: v for k, v in (("run_id", base if base in path and "compare" not in path
                                 else rid), ("other_id", base), ("name", "sankey"))
              if "{" + k + "}" in op.path}
        case = op.Case(path_parameters=pp or None, query=params)
        case.call_and_validate(base_url=live.url, checks=CHECKS)


def test_the_document_names_every_error_body(api_schema: Any) -> None:
    raw = api_schema.raw_schema
    post = raw["paths"]["/api/v1/runs"]["post"]["responses"]
    assert {"200", "202", "401", "403", "413", "422", "429", "507"} <= set(post)
    for item in raw["paths"].values():
        for op in item.values():
            assert "403" in op["responses"], op["operationId"]
