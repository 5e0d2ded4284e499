"""The service in-process (TestClient), open mode: runs, tables, compare, errors, limits."""

from __future__ import annotations

import io
import os
import pickle
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from apiutil import QUOTA_CUT, TestClient, recorded, settings_for, whatif

from retwin_service import tables
from retwin_service.jobs import Source
from retwin_service.main import create_app
from retwin_service.schemas import WhatIfRequest

API = "/api/v1"


def done(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    """Submit ``body`` and wait for the finished run."""
    r = client.post(f"{API}/runs", params={"wait": 30}, json=body)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "done", run
    return run


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An open (no token) service on loopback, shared by this module's tests."""
    s = settings_for(tmp_path_factory.mktemp("app"), max_replications=5000)
    with TestClient(create_app(s)) as c:
        yield c


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    return done(client, whatif())


def test_a_requests_task_goes_to_a_local_worker_as_its_model_and_changes(
        client: TestClient) -> None:
    """The service's task of a request names the reference model (with the hash of the model
    the service read), the end and the changes it was resolved from: a local worker
    receives those and resolves the same what-if."""
    svc = client.app.state.service
    t = svc.prepare(WhatIfRequest.model_validate(whatif(end="2025-06-30"))).task
    assert t.source == Source("tiny", svc.catalog.hashes["tiny"], "2025-06-30",
                              t.whatif.changes)
    back = pickle.loads(pickle.dumps(t.sent())).task()
    assert back.whatif.scenario_hash == t.whatif.scenario_hash
    assert back.whatif.baseline_hash == t.whatif.baseline_hash


# --- health, docs, models ------------------------------------------------------------------


def test_health_needs_no_token_and_reports_the_pool(client: TestClient) -> None:
    r = client.get(f"{API}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["executor"] == "local"


def test_openapi_has_docs_and_stable_operation_ids(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    ops = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"create_run", "read_run", "list_runs", "cancel_run", "read_run_series",
            "read_run_flows", "read_run_kpis", "compare_runs", "list_models", "read_model",
            "read_change_schema", "read_health"} <= ops
    # the changes of a request are the package's typed change schema
    req = spec["components"]["schemas"]["WhatIfRequest"]
    assert "changes" in req["properties"]
    assert "QuotaChange" in spec["components"]["schemas"]


def test_models_list_and_detail(client: TestClient) -> None:
    r = client.get(f"{API}/models")
    assert r.status_code == 200
    names = {m["name"] for m in r.json()["data"]}
    assert {"tiny", "baotou-2024"} <= names
    d = client.get(f"{API}/models/tiny").json()
    assert d["quota_ids"] == ["mining"]
    assert "mine" in d["plant_ids"]
    assert d["scenario"]["name"] == "tiny"
    r = client.get(f"{API}/models/nope")
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_change_schema_lists_the_nine_kinds(client: TestClient) -> None:
    s = client.get(f"{API}/schema/changes").json()
    kinds = {v["properties"]["kind"]["const"] for v in s["$defs"].values()
             if "kind" in v.get("properties", {})}
    assert kinds == {"quota", "price", "capacity", "plant", "outage", "demand", "trade",
                     "reserve", "parameter"}


# --- the happy path ------------------------------------------------------------------------


def test_whatif_reports_kpis_with_bands_and_the_difference(
        client: TestClient, run: dict[str, Any]) -> None:
    res = client.get(f"{API}/runs/{run['id']}", params={"detail": "full"}).json()["result"]
    assert res["detail"] == "full"
    assert res["replications"] == 2 and res["seed"] == 1
    assert res["mass_balance_closes"] is True
    row = next(k for k in res["kpis"] if k["kpi"] == "output.plant" and k["key"] == "mine"
               and k["year"] == 2025)
    assert row["p5"] <= row["p50"] <= row["p95"]
    assert row["n"] == 2
    diff = {(d["kpi"], d["key"], d["year"]): d for d in res["difference"]}
    # the quota cut starts in 2025: nothing changes in 2024, mining drops in 2025
    assert diff[("output.plant", "mine", 2024)]["mean"] == pytest.approx(0, abs=1e-6)
    assert diff[("output.plant", "mine", 2025)]["mean"] < 0
    assert run["links"]["self"] == f"{API}/runs/{run['id']}"
    assert run["request"]["changes"][0]["kind"] == "quota"


def test_the_difference_is_to_the_stored_baseline_of_the_same_seed(
        client: TestClient, run: dict[str, Any]) -> None:
    base = done(client, whatif(changes=[]))
    assert base["result"]["difference"] is None
    cmp = client.get(f"{API}/runs/{run['id']}/compare/{base['id']}").json()
    assert cmp["paired"] is True
    got = {(r["kpi"], r["key"], r["year"]): r["mean"] for r in cmp["rows"]}
    for d in run["result"]["difference"]:
        want = d["mean"]
        have = got[(d["kpi"], d["key"], d["year"])]
        if want is None:
            continue
        assert have == pytest.approx(want, rel=1e-9, abs=1e-6)


def test_an_identical_request_is_answered_from_the_stored_result(
        client: TestClient, run: dict[str, Any]) -> None:
    body = whatif()
    body["changes"] = [dict(body["changes"][0], note="same numbers, another note")]
    body["label"] = "again"
    r = client.post(f"{API}/runs", json=body)
    assert r.status_code == 200  # done at once (without ?wait= a computed run is 202)
    again = r.json()
    assert again["id"] != run["id"] and again["status"] == "done"
    assert again["label"] == "again"
    assert again["result"]["kpis"] == run["result"]["kpis"]
    assert again["started_at"] == again["finished_at"]  # nothing was run for it


def test_accepted_then_polled(client: TestClient) -> None:
    r = client.post(f"{API}/runs", json=whatif(seed=7))
    assert r.status_code in (200, 202)
    if r.status_code == 202:
        acc = r.json()
        assert acc["status"] in ("queued", "running")
        assert r.headers["location"] == acc["links"]["self"]
        r = client.get(acc["links"]["self"], params={"wait": 30})
    assert r.json()["status"] == "done"


def test_a_waiting_request_is_woken_by_its_answer_with_the_run_as_it_is_recorded(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that waits is answered as soon as the answer the worker handed over is
    made (no look at the registry in between, no poll, no table read back). What it answers
    is the run as the registry then records it, once the result is stored, result
    included."""
    reg = client.app.state.service.registry  # type: ignore[attr-defined]
    real, reads = reg.get_run, []

    def get_run(*a: Any, **kw: Any) -> Any:
        reads.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(reg, "get_run", get_run)
    real_result, results = tables._stored_result, []

    def stored_result(*a: Any) -> Any:
        results.append(a)
        return real_result(*a)

    monkeypatch.setattr(tables, "_stored_result", stored_result)
    for seed in (21, 22):
        answer = done(client, whatif(seed=seed))
        # its result was made while the worker stored it: nothing is read back
        assert reads == [] and results == []
        assert recorded(client, answer["id"]).status == "done"
        stored = client.get(answer["links"]["self"]).json()
        assert stored == answer
        assert answer["result"] == real_result(
            client.app.state.service.settings.results_dir,  # type: ignore[attr-defined]
            reg.get_run(answer["id"]).request_hash, "headline")
        reads.clear()


def test_an_answer_sent_with_its_result_encoded_beforehand_is_the_run_encoded_whole(
        client: TestClient) -> None:
    """The result a worker handed over is encoded as it is made; the answer around it is
    byte for byte the run encoded whole (the answer of the POST and of a GET)."""
    from retwin_service.render import dumps
    from retwin_service.routes.runs import _public

    service = client.app.state.service  # type: ignore[attr-defined]
    r = client.post(f"{API}/runs", params={"wait": 30}, json=whatif(seed=31))
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    rec = recorded(client, r.json()["id"])
    assert tables.primed_json(service.settings.results_dir, rec.request_hash, "headline")
    again = client.get(f"{API}/runs/{rec.id}")
    assert again.content == dumps(_public(service, rec, "headline"))
    assert dumps(r.json()) == dumps({**_public(service, rec, "headline"),
                                     "finished_at": r.json()["finished_at"],
                                     "started_at": r.json()["started_at"]})


def test_list_runs_paginates_and_filters(client: TestClient, run: dict[str, Any]) -> None:
    done(client, whatif(seed=11))
    all_runs = client.get(f"{API}/runs", params={"limit": 500}).json()
    assert all_runs["count"] >= 2
    page1 = client.get(f"{API}/runs", params={"limit": 1}).json()
    page2 = client.get(f"{API}/runs", params={"limit": 1, "offset": 1}).json()
    assert len(page1["data"]) == 1 and page1["data"][0]["id"] != page2["data"][0]["id"]
    assert page1["data"][0]["id"] == all_runs["data"][0]["id"]  # newest first
    only = client.get(f"{API}/runs", params={"status": "done", "model": "tiny"}).json()
    assert only["count"] >= 2 and all(x["status"] == "done" for x in only["data"])
    none = client.get(f"{API}/runs", params={"model": "baotou-2024"}).json()
    assert none["count"] == 0
    assert client.get(f"{API}/runs", params={"status": "bogus"}).status_code == 422


# --- tables --------------------------------------------------------------------------------


def test_series_as_json_filtered_by_plant_and_period(client: TestClient,
                                                     run: dict[str, Any]) -> None:
    r = client.get(f"{API}/runs/{run['id']}/series",
                   params={"plant": "mine", "from": "2025-01", "to": "2025-01"})
    assert r.status_code == 200
    t = r.json()
    assert t["columns"] == ["date", "kind", "id", "value"]
    assert t["total"] == 31 == len(t["rows"])
    assert {row["id"] for row in t["rows"]} == {"mine"}
    assert t["rows"][0]["date"] == "2025-01-01"


def test_series_by_material_and_element(client: TestClient, run: dict[str, Any]) -> None:
    t = client.get(f"{API}/runs/{run['id']}/series",
                   params={"material": "magnet", "from": "2024-01-01", "to": "2024-01-01"}
                   ).json()
    got = {(row["kind"], row["id"]) for row in t["rows"]}
    assert ("activity", "magnets") in got and ("stock", "baotou/magnet") in got
    assert ("exports", "magnet_out") in got and ("served", "motors") in got
    assert ("activity", "mine") not in got
    t = client.get(f"{API}/runs/{run['id']}/series",
                   params={"element": "La", "kind": "stock", "to": "2024-01-01"}).json()
    assert {row["id"] for row in t["rows"]} == {"baotou/concentrate", "baotou/la_ce_oxide"}


def test_flows_as_csv_by_accept_header(client: TestClient, run: dict[str, Any]) -> None:
    r = client.get(f"{API}/runs/{run['id']}/flows", params={"stage": "magnet"},
                   headers={"Accept": "text/csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(r.text))
    assert set(df.stage) == {"magnet"}
    assert set(df.material) == {"magnet", "swarf", "prnd_metal", "dy_oxide"}
    assert int(r.headers["x-total-count"]) == len(df)


def test_kpis_as_parquet_by_format(client: TestClient, run: dict[str, Any]) -> None:
    r = client.get(f"{API}/runs/{run['id']}/kpis",
                   params={"format": "parquet", "view": "replications", "kpi": "output",
                           "from": "2025"},
                   headers={"Accept": "text/csv"})  # format= wins over Accept
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    df = pd.read_parquet(io.BytesIO(r.content))
    assert set(df.year) == {2025}
    assert set(df.replication) == {0, 1}
    assert df.kpi.str.startswith("output.").all()


def test_kpis_by_stage_element_and_difference_view(client: TestClient,
                                                   run: dict[str, Any]) -> None:
    t = client.get(f"{API}/runs/{run['id']}/kpis", params={"stage": "mining"}).json()
    keys = {(row["kpi"], row["key"]) for row in t["rows"]}
    assert ("output.stage", "mining") in keys and ("output.plant", "mine") in keys
    assert all(k in ("mining", "mine") for _, k in keys)
    t = client.get(f"{API}/runs/{run['id']}/kpis",
                   params={"element": "Dy", "kpi": "element"}).json()
    assert {(row["kpi"], row["key"]) for row in t["rows"]} == {
        ("element.surplus", "Dy"), ("element.dy_tb_deficit", "Dy+Tb")}
    d = client.get(f"{API}/runs/{run['id']}/kpis", params={"view": "difference"}).json()
    full = client.get(run["links"]["full"]).json()["result"]
    assert d["total"] == len(full["difference"]) == len(full["kpis"])


def _rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["kpi"], r["key"], r["year"]): r for r in rows}


def test_a_finished_run_answers_its_headline_kpis_and_links_the_rest(
        client: TestClient, run: dict[str, Any]) -> None:
    """By default a run holds the headline KPIs per year and their difference (the rows of
    HEADLINE_KPIS, each as the full tables have it); ``detail=full`` and the links hold
    every row."""
    from retwin_service.tables import HEADLINE_KPIS

    res = run["result"]
    assert res["detail"] == "headline"
    full = client.get(f"{API}/runs/{run['id']}", params={"detail": "full"}).json()["result"]
    assert full["detail"] == "full"
    assert {k: v for k, v in full.items() if k not in ("detail", "kpis", "difference")} == {
        k: v for k, v in res.items() if k not in ("detail", "kpis", "difference")}
    want = {k: r for k, r in _rows(full["kpis"]).items()
            if k[0] in HEADLINE_KPIS and (not HEADLINE_KPIS[k[0]] or k[1] in HEADLINE_KPIS[k[0]])}
    assert want and _rows(res["kpis"]) == want
    assert {k[0] for k in want} == {"output.stage", "value.group", "local_conversion",
                                    "element.la_ce_surplus", "element.dy_tb_deficit",
                                    "price.material"}
    diff = _rows(full["difference"])
    assert _rows(res["difference"]) == {k: diff[k] for k in want}
    assert len(full["kpis"]) > 3 * len(res["kpis"])
    # every link resolves, and the KPI tables hold every row of the full answer
    links = run["links"]
    for name in ("self", "full", "summary", "kpis", "difference", "series", "flows"):
        r = client.get(links[name])
        assert r.status_code == 200, (name, r.text)
    for name in ("kpis", "difference"):  # the same rows, the same numbers
        sep = "&" if "?" in links[name] else "?"
        table = client.get(f"{links[name]}{sep}limit=10000").json()
        assert table["total"] == len(full[name])
        assert table["rows"] == full[name]
    # a run answered from the stored result, and the answer to POST ?detail=full, agree
    again = client.post(f"{API}/runs", json=whatif(), params={"detail": "full"}).json()
    assert again["result"] == full
    r = client.post(f"{API}/runs", json=whatif(), params={"detail": "most"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "detail"]


def test_table_paging(client: TestClient, run: dict[str, Any]) -> None:
    full = client.get(f"{API}/runs/{run['id']}/series", params={"plant": "mine"}).json()
    part = client.get(f"{API}/runs/{run['id']}/series",
                      params={"plant": "mine", "offset": 10, "limit": 5}).json()
    assert part["total"] == full["total"]
    assert part["rows"] == full["rows"][10:15]


def test_compare_unpaired_when_seeds_differ(client: TestClient, run: dict[str, Any]) -> None:
    other = done(client, whatif(seed=3, changes=[]))
    cmp = client.get(f"{API}/runs/{run['id']}/compare/{other['id']}",
                     params={"kpi": "output.stage"}).json()
    assert cmp["paired"] is False
    assert cmp["rows"] and all(r["p5"] is None for r in cmp["rows"])
    r = client.get(f"{API}/runs/{run['id']}/compare/{other['id']}", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")


# --- cancel --------------------------------------------------------------------------------


def test_cancel_stops_a_long_run(client: TestClient) -> None:
    r = client.post(f"{API}/runs", json=whatif(replications=4000, seed=99))
    assert r.status_code == 202
    rid = r.json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # progress is reported while it runs
        now = client.get(f"{API}/runs/{rid}").json()
        if now["status"] == "running" and now["progress"] > 0:
            break
        time.sleep(0.05)
    assert now["status"] == "running" and 0 < now["progress"] < 1, now
    c = client.delete(f"{API}/runs/{rid}")
    assert c.status_code == 200
    assert c.json()["status"] == "cancelled"
    assert client.delete(f"{API}/runs/{rid}").json()["status"] == "cancelled"  # idempotent
    service = client.app.state.service  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while service.jobs.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.jobs.in_flight == 0, "the cancelled computation kept running"
    assert client.get(f"{API}/runs/{rid}").json()["status"] == "cancelled"
    assert client.get(f"{API}/runs/{rid}/series").status_code == 409


def test_cancel_a_finished_run_is_a_conflict(client: TestClient, run: dict[str, Any]) -> None:
    r = client.delete(f"{API}/runs/{run['id']}")
    assert r.status_code == 409
    assert "already done" in r.json()["detail"]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "loc", "words"), [
    ({"model": "nope"}, ["body", "model"], "unknown model"),
    (whatif(changes=[{"kind": "quota", "quota": "nope", "factor": 0.5}]),
     ["body", "changes", 0, "quota"], "unknown quota 'nope'"),
    (whatif(changes=[{"kind": "capacity", "plant": "mine", "factor": -1}]),
     ["body", "changes", 0, "capacity", "factor"], "greater than or equal to 0"),
    (whatif(changes=[{"kind": "teleport"}]), ["body", "changes", 0], "kind"),
    (whatif(changes=[{"kind": "quota", "quota": "mining", "factor": 0.9,
                      "from": "2031-01-01"}]), ["body", "changes", 0, "from"], "horizon"),
    (whatif(replications=0), ["body", "replications"], "greater than or equal to 1"),
    (whatif(seed=-1), ["body", "seed"], "greater than or equal to 0"),
    (whatif(colour="blue"), ["body", "colour"], "Extra inputs"),
    (whatif(end="2023-01-01"), ["body", "end"], "must not be before"),
    (whatif(changes=[{"kind": "parameter", "path": "plants.mine.capacity_tpa",
                      "value": -5}]), ["scenario", "plants", 0, "capacity_tpa"], "capacity"),
])
def test_a_bad_request_is_a_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                                 loc: list[Any], words: str) -> None:
    r = client.post(f"{API}/runs", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][:len(loc)] == loc and words in d["msg"] for d in detail), detail


def test_malformed_json_is_a_422_with_a_message(client: TestClient) -> None:
    r = client.post(f"{API}/runs", content=b'{"model": "tiny",',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["detail"][0]["msg"]
    r = client.post(f"{API}/runs", content=b"[1, 2]", headers={"Content-Type":
                                                             "application/json"})
    assert r.status_code == 422
    r = client.post(f"{API}/runs", content=b'\xff"\xfe{', headers={"Content-Type":
                                                                 "application/json"})
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"][0]["msg"]
    r = client.post(f"{API}/runs", content=b'{"model": "tiny"}',
                    headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.text


def test_unknown_run_and_route_are_json_404s(client: TestClient) -> None:
    for path in (f"{API}/runs/0123456789abcdef", f"{API}/runs/x/series", f"{API}/nothing"):
        r = client.get(path)
        assert r.status_code == 404
        assert isinstance(r.json()["detail"], str)
    r = client.put(f"{API}/runs", json={})
    assert r.status_code == 405 and "detail" in r.json()


def test_an_unexpected_error_leaks_no_path_or_traceback(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]

    def boom(*_a: Any) -> Any:
        raise RuntimeError(f"cannot open {Path(__file__)} at line 3")

    monkeypatch.setattr(service, "prepare", boom)
    r = TestClient(client.app, raise_server_exceptions=False).post(f"{API}/runs",
                                                                    json=whatif())
    assert r.status_code == 500
    text = r.text
    assert "incident" in r.json()["detail"]
    assert "Traceback" not in text and str(Path(__file__).parent) not in text
    assert "cannot open" not in text


# --- limits --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = settings_for(tmp_path_factory.mktemp("strict"), max_replications=3, max_changes=2,
                     max_body_bytes=2000, max_horizon_years=3, queue_max=1,
                     per_token_concurrent=2)
    with TestClient(create_app(s)) as c:
        yield c


def test_limit_on_body_size(strict: TestClient) -> None:
    r = strict.post(f"{API}/runs", json=whatif(label="x" * 190, changes=[{
        "kind": "quota", "quota": "mining", "factor": 0.9, "note": "n" * 3000}]))
    assert r.status_code == 413
    assert "2000 bytes" in r.json()["detail"]

    def chunks() -> Any:  # no Content-Length: counted while read
        yield b'{"model": "tiny", "label": "'
        for _ in range(30):
            yield b"y" * 100
        yield b'"}'

    r = strict.post(f"{API}/runs", content=chunks(), headers={"Content-Type":
                                                              "application/json"})
    assert r.status_code == 413


def test_limit_on_replications(strict: TestClient) -> None:
    r = strict.post(f"{API}/runs", json=whatif(replications=4))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "replications"]
    assert "<= 3" in r.json()["detail"][0]["msg"]


def test_limit_on_number_of_changes(strict: TestClient) -> None:
    r = strict.post(f"{API}/runs", json=whatif(changes=[
        {"kind": "quota", "quota": "mining", "factor": f} for f in (0.9, 0.8, 0.7)]))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "changes"]


def test_limit_on_horizon(strict: TestClient) -> None:
    r = strict.post(f"{API}/runs", json=whatif(end="2030-12-31"))
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert d["loc"] == ["body", "end"] and "limit of 3 years" in d["msg"]
    r = strict.post(f"{API}/runs", json=whatif(changes=[
        {"kind": "parameter", "path": "end", "value": "2040-12-31"}]))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "changes"]
    shorter = whatif(end="2024-06-30", changes=[dict(QUOTA_CUT, **{"from": "2024-03-01"})])
    r = strict.post(f"{API}/runs", json=shorter, params={"wait": 30})
    assert r.status_code == 200  # a shorter horizon is fine
    assert r.json()["result"]["end"] == "2024-06-30"
    assert {k["year"] for k in r.json()["result"]["kpis"]} == {2024}


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = settings_for(tmp_path_factory.mktemp("tight"), queue_max=1, per_token_concurrent=2)
    with TestClient(create_app(s)) as c:
        yield c


def test_a_full_queue_is_a_429_with_retry_after(tight: TestClient) -> None:
    long = whatif(replications=900, seed=1000)
    first = tight.post(f"{API}/runs", json=long)
    assert first.status_code == 202
    # a second distinct computation does not fit in a queue of one...
    r = tight.post(f"{API}/runs", json=whatif(seed=1001))
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert "queue is full" in r.json()["detail"]
    # ...but the same request joins the computation under way
    same = tight.post(f"{API}/runs", json=long)
    assert same.status_code == 202
    # and the per-token limit (2 unfinished runs) stops a third
    r = tight.post(f"{API}/runs", json=long)
    assert r.status_code == 429
    assert "per-token limit" in r.json()["detail"]
    for x in (first, same):
        assert tight.delete(x.json()["links"]["self"]).json()["status"] == "cancelled"
    # once both are cancelled, the queue has room again
    assert tight.post(f"{API}/runs", json=whatif(seed=1001),
                      params={"wait": 30}).status_code == 200


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_its_run_still_finishes(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    r = client.post(f"{API}/runs", json=whatif(replications=300, seed=4242))
    rid = r.json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"{API}/runs/{rid}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for proc in list(service.jobs.executor._pool._processes.values()):
        os.kill(proc.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    run = client.get(f"{API}/runs/{rid}", params={"wait": 30}).json()
    assert run["status"] == "done", run
    assert run["result"]["replications"] == 300


#: The most a finished run's default answer may hold (its full KPI table is ten times more).
COMPACT_BYTES = 50_000


@pytest.mark.slow
def test_a_reference_model_run_answers_in_a_few_kilobytes(client: TestClient) -> None:
    body = {"model": "baotou-2024", "replications": 1, "seed": 0, "changes": [
        {"kind": "quota", "quota": "mining", "factor": 0.9, "from": "2025-01-01"}]}
    r = client.post(f"{API}/runs", params={"wait": 120}, json=body,
                    headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    assert len(r.content) <= COMPACT_BYTES
    run = r.json()
    assert run["result"]["difference"] and run["result"]["bottlenecks"]
    full = client.get(run["links"]["full"], headers={"Accept-Encoding": "identity"})
    assert len(full.content) > 5 * COMPACT_BYTES


_FROZEN_AFTER_START = """
import gc, sys
from pathlib import Path
from apiutil import TestClient, settings_for
from retwin_service.main import create_app

own = sys.argv[2] == "own"
with TestClient(create_app(settings_for(Path(sys.argv[1])), own_process=own)) as c:
    assert c.get("/api/v1/health").status_code == 200
    print(gc.get_freeze_count())
"""


@pytest.mark.parametrize("own", [True, False])
def test_a_served_process_freezes_what_it_keeps_once_started(tmp_path: Path, own: bool
                                                            ) -> None:
    """``retwin serve`` (``own_process``): once started, the libraries, models and app are
    out of the cyclic collector's reach, so no request waits for a full collection over
    them. An app in someone else's process leaves that process's heap alone."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", _FROZEN_AFTER_START, str(tmp_path),
                          "own" if own else "guest"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    frozen = int(out.stdout.split()[-1])
    assert frozen > 50_000 if own else frozen == 0
