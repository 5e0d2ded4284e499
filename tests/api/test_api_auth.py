"""Tokens: every request needs one once one exists; runs belong to their token's owner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiutil import TestClient, settings_for, whatif

from retwin_service.main import InsecureBind, create_app
from retwin_service.registry import OPEN_OWNER, Registry, RegistryError

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

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


# --- open mode: this machine only, however the app was started ------------------------------

OUTSIDE = ("192.0.2.7", 40000)  # a documentation address: a caller on another machine


@pytest.fixture(scope="module")
def open_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An open service (no token) whose settings say loopback, as ``uvicorn --factory``
    runs it whatever --host it was given."""
    app = create_app(settings_for(tmp_path_factory.mktemp("open")))
    with TestClient(app):
        yield app


PATHS = ["/api/v1/health", "/api/v1/models", "/api/v1/runs", "/api/v1/runs/abc",
         "/api/v1/schema/changes", "/", "/docs", "/openapi.json", "/static/app.js"]


@pytest.mark.parametrize("path", PATHS)
def test_open_mode_refuses_every_request_from_beyond_loopback(open_app: Any,
                                                              path: str) -> None:
    outside = TestClient(open_app, client=OUTSIDE)
    r = outside.get(path)
    assert r.status_code == 403, r.text
    assert "answers only on this machine" in r.json()["detail"]
    assert "192.0.2.7" in r.json()["detail"]
    assert outside.post(f"{API}/runs", json=whatif()).status_code == 403
    assert TestClient(open_app).get(path).status_code in (200, 404)


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_open_mode_answers_loopback_peers(open_app: Any, peer: str) -> None:
    assert TestClient(open_app, client=(peer, 1)).get(f"{API}/runs").status_code == 200


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1", True), ("127.0.0.1:8000", True), ("localhost:8000", True),
    ("LOCALHOST", True), ("127.3.2.1", True), ("[::1]:8000", True), ("[::1]", True),
    ("evil.example:8000", False), ("evil.example", False), ("localhost.evil.example", False),
    ("0.0.0.0:8000", False), ("192.168.1.5", False), ("[::]:8000", False),
    ("127.0.0.1:80x", False), ("[::1]x", False), ("::1", False), ("", False),
])
def test_open_mode_answers_only_loopback_host_names(open_app: Any, host: str,
                                                    ok: bool) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name."""
    r = TestClient(open_app).get(f"{API}/runs", headers={"Host": host})
    assert r.status_code == (200 if ok else 403), (host, r.text)
    if not ok:
        assert "loopback names" in r.json()["detail"]


def test_with_a_token_the_peer_and_host_rules_give_way_to_it(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    reg = Registry(s.database_url)
    token = reg.create_token("ann")[1]
    reg.close()
    with TestClient(create_app(s), client=OUTSIDE, base_url="http://retwin.example") as c:
        assert c.get(f"{API}/runs").status_code == 401  # a token is asked for, not a place
        assert c.get(f"{API}/runs", headers=h(token)).status_code == 200
        assert c.get(f"{API}/health").status_code == 200


def test_a_token_named_like_the_open_owner_sees_no_open_run(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    with TestClient(create_app(s)) as c:
        r = c.post(f"{API}/runs", json=whatif(), params={"wait": 30})
        assert r.status_code == 200
        rid = r.json()["id"]
        reg: Any = c.app.state.service.registry  # type: ignore[attr-defined]
        for name in ("local", "open", "admin"):
            token = asyncio.run(asyncio.to_thread(reg.create_token, name))[1]
            assert c.get(f"{API}/runs/{rid}", headers=h(token)).status_code == 404, name
            assert c.get(f"{API}/runs", headers=h(token)).json()["count"] == 0, name
    with pytest.raises(RegistryError, match="token name"):
        Registry(s.database_url).create_token(OPEN_OWNER)
