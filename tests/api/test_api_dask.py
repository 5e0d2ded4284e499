"""With ``RETWIN_DASK_ADDRESS`` set, runs go to that Dask cluster (a real LocalCluster)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiutil import TestClient, settings_for, whatif

from retwin_service.main import create_app

pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")

API = "/api/v1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:
        yield c


def test_runs_go_to_the_cluster(cluster: Any, tmp_path: Path) -> None:
    s = settings_for(tmp_path, dask_address=cluster.scheduler_address, max_replications=5000)
    with TestClient(create_app(s)) as c:
        assert c.get(f"{API}/health").json()["executor"] == "dask"
        r = c.post(f"{API}/runs", json=whatif(), params={"wait": 60})
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["status"] == "done" and run["result"]["difference"]
        # the server stored what the cluster computed, baseline included
        assert c.post(f"{API}/runs", json=whatif(changes=[])).json()["status"] == "done"
        rid = run["id"]
        assert c.get(f"{API}/runs/{rid}/series", params={"plant": "mine"}).json()["total"]
        # a what-if whose baseline is stored sends the baseline along
        r = c.post(f"{API}/runs", json=whatif(changes=[{"kind": "price",
                                                        "material": "prnd_oxide",
                                                        "factor": 1.4}]),
                   params={"wait": 60})
        assert r.json()["status"] == "done"
        # cancel reaches the cluster's worker
        r = c.post(f"{API}/runs", json=whatif(replications=4000, seed=5))
        assert r.status_code == 202
        time.sleep(1.0)
        assert c.delete(f"{API}/runs/{r.json()['id']}").json()["status"] == "cancelled"
        service = c.app.state.service  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while service.jobs.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.jobs.in_flight == 0
