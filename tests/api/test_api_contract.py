"""The OpenAPI document is the truth: what it allows is read as written, what it refuses is a
422 naming the parameter, every error body has the documented shape, a 405 names every method
of its path, and a request is stored only if every later read of it can answer."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from apiutil import TestClient, settings_for, whatif
from fastapi.exceptions import RequestValidationError
from hypothesis import given
from hypothesis import strategies as st

from retwin_service.main import create_app
from retwin_service.registry import OPEN_OWNER, metadata
from retwin_service.routes.runs import PERIOD_PATTERN, _date

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    s = settings_for(tmp_path_factory.mktemp("contract"), max_replications=7, max_changes=4)
    with TestClient(create_app(s)) as c:
        yield c


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    r = client.post(f"{API}/runs", json=whatif(), params={"wait": 30})
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json())


# --- periods: the pattern and the parser agree exactly -------------------------------------


def _real(value: str) -> bool:
    """What a period bound should be: a real date (or month, or year) in 1900..2199."""
    fmt = {4: "%Y", 7: "%Y-%m", 10: "%Y-%m-%d"}.get(len(value))
    if fmt is None or not re.fullmatch(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?", value):
        return False
    try:
        d = dt.datetime.strptime(value, fmt)
    except ValueError:
        return False
    return 1900 <= d.year <= 2199


def _parses(value: str) -> bool:
    try:
        _date("from", value, last=False)
        _date("to", value, last=True)
    except RequestValidationError:
        return False
    return True


def test_the_documented_pattern_is_the_parsers(spec: dict[str, Any]) -> None:
    for path in ("series", "flows", "kpis"):
        params = spec["paths"][f"{API}/runs/{{run_id}}/{path}"]["get"]["parameters"]
        for name in ("from", "to"):
            p = next(x for x in params if x["name"] == name)
            assert p["schema"]["pattern"] == PERIOD_PATTERN


@given(st.from_regex(PERIOD_PATTERN, fullmatch=True))
def test_every_documented_period_is_read(value: str) -> None:
    assert _real(value) and _parses(value)


@given(st.from_regex(r"\A[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?\Z") | st.text(max_size=12))
def test_a_period_is_read_exactly_when_it_is_a_real_one(value: str) -> None:
    assert _parses(value) == _real(value) == bool(re.fullmatch(PERIOD_PATTERN, value))


@pytest.mark.parametrize(("value", "first", "last"), [
    ("2024", dt.date(2024, 1, 1), dt.date(2024, 12, 31)),
    ("2024-02", dt.date(2024, 2, 1), dt.date(2024, 2, 29)),
    ("2025-02", dt.date(2025, 2, 1), dt.date(2025, 2, 28)),
    ("2025-12", dt.date(2025, 12, 1), dt.date(2025, 12, 31)),
    ("2000-02-29", dt.date(2000, 2, 29), dt.date(2000, 2, 29)),
])
def test_a_period_means_its_first_and_last_day(value: str, first: dt.date,
                                               last: dt.date) -> None:
    assert _date("from", value, last=False) == first
    assert _date("to", value, last=True) == last


@pytest.mark.parametrize(("name", "value"), [
    ("from", "0000"), ("to", "2025-00"), ("to", "2025-13"), ("from", "2025-02-30"),
    ("from", "1900-02-29"), ("to", "2025-1-1"), ("to", "2025\n"), ("from", "٢٠٢٥"),
    ("to", "2200"), ("from", "2025-01-01T00"),
])
def test_a_period_that_is_no_date_is_a_422_naming_it(client: TestClient, run: dict[str, Any],
                                                     name: str, value: str) -> None:
    for table in ("series", "flows", "kpis"):
        r = client.get(f"{API}/runs/{run['id']}/{table}", params={name: value})
        assert r.status_code == 422, (table, value, r.text)
        item = r.json()["detail"][0]
        assert item["loc"] == ["query", name]
        assert f"{name}(=" in item["msg"] and "YYYY-MM-DD" in item["msg"]


def test_to_a_month_ends_on_its_last_day(client: TestClient, run: dict[str, Any]) -> None:
    t = client.get(f"{API}/runs/{run['id']}/series",
                   params={"plant": "mine", "from": "2024-02", "to": "2024-02"}).json()
    assert t["total"] == 29 and t["rows"][-1]["date"] == "2024-02-29"


# --- error bodies ---------------------------------------------------------------------------


def test_every_422_lists_its_problems(client: TestClient, run: dict[str, Any]) -> None:
    """Validation by FastAPI, by the service, by a route: the same documented shape."""
    for method, path, kw in (
            ("GET", f"{API}/runs/{run['id']}/charts/sankey", {"params": {"year": 1950}}),
            ("GET", f"{API}/runs/{run['id']}/series", {"params": {"to": "2025-00"}}),
            ("GET", f"{API}/runs", {"params": {"limit": 0}}),
            ("POST", f"{API}/runs", {"json": whatif(model="nope")}),
            ("POST", f"{API}/runs", {"json": whatif(replications=8)}),
            ("GET", f"{API}/models/{'x' * 80}", {})):
        r = client.request(method, path, **kw)
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, list) and detail, (path, detail)
        assert all({"loc", "msg", "type"} <= set(d) for d in detail), detail
    r = client.get(f"{API}/runs/{run['id']}/charts/sankey", params={"year": 1950})
    assert r.json()["detail"][0]["loc"] == ["query", "year"]


def test_a_405_names_every_method_of_its_path(client: TestClient,
                                              spec: dict[str, Any]) -> None:
    for template, item in spec["paths"].items():
        path = re.sub(r"\{[^}]+\}", "abc", template)
        documented = {m.upper() for m in item}
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            r = client.request(method, path)
            assert r.status_code == 405, (method, path)
            assert set(r.headers["allow"].split(", ")) == documented, (method, path)
            assert isinstance(r.json()["detail"], str)


def test_the_document_states_this_services_limits(spec: dict[str, Any]) -> None:
    props = spec["components"]["schemas"]["WhatIfRequest"]["properties"]
    assert props["replications"]["maximum"] == 7
    assert props["changes"]["maxItems"] == 4
    # a token is optional: a service with none answers its own machine without one
    assert spec["paths"][f"{API}/runs"]["get"]["security"] == [{"HTTPBearer": []}, {}]


# --- a request is stored only if it reads back ------------------------------------------------


@pytest.mark.parametrize(("body", "loc"), [
    ('{"model": "tiny", "label": "\\ud800"}', ["body", "label"]),
    ('{"model": "tiny", "label": "ok \\udfff"}', ["body", "label"]),
    ('{"model": "tiny", "changes": [{"kind": "quota", "quota": "mining", "factor": 0.9, '
     '"note": "a\\ud83d"}]}', ["body", "changes", 0]),  # the change schema refuses it
    ('{"model": "tiny", "\\ud800": 1}', ["body"]),
    ('{"model": "tiny", "changes": [{"kind": "quota", "quota": "mining", "factor": 1e999}]}',
     ["body", "changes", 0]),
])
def test_a_request_json_cannot_carry_is_a_422_and_not_stored(client: TestClient, body: str,
                                                             loc: list[Any]) -> None:
    before = client.get(f"{API}/runs").json()["count"]
    r = client.post(f"{API}/runs", content=body.encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    json.loads(r.content.decode("utf-8"))  # strict UTF-8 JSON, whatever the request held
    assert any(d["loc"][:len(loc)] == loc for d in r.json()["detail"]), r.json()
    assert client.get(f"{API}/runs").json()["count"] == before


def test_a_stored_run_that_cannot_be_encoded_still_reads(client: TestClient,
                                                         run: dict[str, Any]) -> None:
    """A row an older version stored with a lone surrogate: read with U+FFFD, never 500."""
    reg: Any = client.app.state.service.registry  # type: ignore[attr-defined]
    request = dict(run["request"], label="bad \ud800 label")
    rid = "0" * 31 + "1"
    with reg.engine.begin() as conn:  # as it was stored then: JSON with the escape
        conn.execute(metadata.tables["runs"].insert().values(
            id=rid, owner=OPEN_OWNER, model="tiny", request=json.dumps(request),
            request_hash=reg.get_run(run["id"]).request_hash, status="done", progress=1.0,
            attempts=0, created_at=dt.datetime.now(dt.UTC)))
    for path in (f"{API}/runs/{rid}", f"{API}/runs"):
        r = client.get(path)
        assert r.status_code == 200, r.text
        assert "bad \ufffd label" in r.content.decode("utf-8")
    assert client.get(f"{API}/runs/{rid}/kpis").status_code == 200
