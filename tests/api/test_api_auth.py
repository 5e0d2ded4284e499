"""Tokens: every request needs one once one exists; runs belong to their token's owner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api.main import InsecureBind, create_app
from apiutil import TestClient, settings_for, whatif

from retwin.registry import Registry

API = "/api/v1"
BOOT = "bootstrap-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    data = tmp_path_factory.mktemp("auth")
    s = settings_for(data)
    reg = Registry(s.database_url)
    tokens = {name: reg.create_token(name)[1] for name in ("ann", "bob", "eve")}
    reg.revoke_token("eve")
    reg.close()
    with TestClient(create_app(s)) as c:
        yield c, tokens


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_missing_token_is_a_401(tokened: tuple[TestClient, dict]) -> None:
    c, _ = tokened
    for method, path in (("get", "/runs"), ("post", "/runs"), ("get", "/models"),
                         ("get", "/schema/changes"), ("get", "/runs/abc")):
        r = c.request(method.upper(), API + path, json=whatif() if method == "post" else None)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "missing API token" in r.json()["detail"]
    assert c.get(f"{API}/health").status_code == 200


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer " + "x" * 600, "Basic YTpi",
                                    "Bearer"])
def test_a_wrong_token_is_a_401(tokened: tuple[TestClient, dict], header: str) -> None:
    c, _ = tokened
    r = c.get(f"{API}/runs", headers={"Authorization": header})
    assert r.status_code == 401
    assert "token" in r.json()["detail"]


def test_a_revoked_token_is_a_401(tokened: tuple[TestClient, dict]) -> None:
    c, tokens = tokened
    r = c.get(f"{API}/runs", headers=h(tokens["eve"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_runs_belong_to_their_owner(tokened: tuple[TestClient, dict]) -> None:
    c, tokens = tokened
    r = c.post(f"{API}/runs", json=whatif(), headers=h(tokens["ann"]), params={"wait": 30})
    assert r.status_code == 200
    rid = r.json()["id"]
    assert c.get(f"{API}/runs/{rid}", headers=h(tokens["ann"])).status_code == 200
    for path in ("", "/series", "/flows", "/kpis", f"/compare/{rid}"):
        r = c.get(f"{API}/runs/{rid}{path}", headers=h(tokens["bob"]))
        assert r.status_code == 404, path
        assert "not found" in r.json()["detail"]
    assert c.delete(f"{API}/runs/{rid}", headers=h(tokens["bob"])).status_code == 404
    assert c.get(f"{API}/runs", headers=h(tokens["bob"])).json()["count"] == 0
    assert c.get(f"{API}/runs", headers=h(tokens["ann"])).json()["count"] == 1
    # the same request by bob reuses the stored computation, in a run of his own
    r = c.post(f"{API}/runs", json=whatif(), headers=h(tokens["bob"]))
    assert r.status_code == 200 and r.json()["id"] != rid


def test_beyond_loopback_without_tokens_the_service_refuses_to_start(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, host="0.0.0.0"))
    with pytest.raises(InsecureBind, match=r"none exists"), TestClient(app):
        pass


def test_a_bootstrap_token_opens_it(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, host="0.0.0.0", bootstrap_token=BOOT))
    with TestClient(app) as c:
        assert c.get(f"{API}/models").status_code == 401
        assert c.get(f"{API}/models", headers=h(BOOT)).status_code == 200
        # every token revoked while serving beyond loopback: closed, not open
        reg: Any = c.app.state.service.registry  # type: ignore[attr-defined]
        reg.revoke_token("admin")
        r = c.get(f"{API}/models")
        assert r.status_code == 401 and "beyond loopback" in r.json()["detail"]


def test_open_mode_on_loopback(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        assert c.get(f"{API}/runs").status_code == 200
        # a token sent to an open service is still checked
        assert c.get(f"{API}/runs", headers=h("whatever")).status_code == 401
        # once a token exists, every request needs one
        reg: Any = c.app.state.service.registry  # type: ignore[attr-defined]
        asyncio.run(asyncio.to_thread(reg.create_token, "ann"))
        assert c.get(f"{API}/runs").status_code == 401
