"""The service's answer says where a what-if's change does not bind (the what-if's notes,
:func:`retwin.whatif.binding_notes`), and a stored result answers the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from apiutil import TestClient, settings_for, whatif

from retwin_service.main import create_app

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"

#: tiny ships at most ~4,800 t/a of magnets: a 10,000 t/a cap is never reached; 2,000 is.
LOOSE = {"kind": "trade", "market": "magnet_out", "side": "export", "cap_tpa": 10000,
         "to": "2024-12-31"}
TIGHT = {"kind": "trade", "market": "magnet_out", "side": "export", "cap_tpa": 2000,
         "from": "2025-01-01"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path_factory.mktemp("notes")))) as c:
        yield c


def _done(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"{API}/runs", params={"wait": 60}, json=body)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "done", run
    return dict(run)


def test_the_answer_notes_a_cap_that_does_not_bind_and_a_stored_run_says_the_same(
        client: TestClient) -> None:
    run = _done(client, whatif(changes=[LOOSE, TIGHT]))
    notes = run["result"]["notes"]
    assert len(notes) == 1 and notes[0].startswith(
        "changes[0] (export cap on market magnet_out) does not bind: exports stayed below")
    again = _done(client, whatif(changes=[LOOSE, TIGHT], label="again"))
    assert again["id"] != run["id"] and again["started_at"] == again["finished_at"]
    assert again["result"]["notes"] == notes
    assert client.get(f"{API}/runs/{run['id']}").json()["result"]["notes"] == notes
    # a baseline (no changes) and a binding what-if have none
    assert _done(client, whatif(changes=[TIGHT]))["result"]["notes"] == []
    assert _done(client, whatif(changes=[]))["result"]["notes"] == []
