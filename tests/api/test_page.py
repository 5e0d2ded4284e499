"""The planner's page: served with plotly.js from the installed package; the charts
endpoint; and the page driven end to end in a headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiutil import REPO, Server, TestClient, settings_for, whatif

from retwin_service.main import create_app

API = "/api/v1"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path_factory.mktemp("page")))) as c:
        yield c


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    r = client.post(f"{API}/runs", params={"wait": 60}, json=whatif())
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_page_and_plotly_js_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/static/plotly.min.js" in r.text and "/static/app.js" in r.text
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:500]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/nothing.js").status_code == 404


def test_charts_of_a_run(client: TestClient, run: dict[str, Any]) -> None:
    base = f"{API}/runs/{run['id']}/charts"
    s = client.get(f"{base}/sankey", params={"year": 2025}).json()
    assert s["years"] == [2024, 2025] and s["year"] == 2025
    assert len(s["figures"]) == 2  # the what-if and its baseline
    assert s["figures"][0]["data"][0]["type"] == "sankey"
    ts = client.get(f"{base}/timeseries", params={"kind": "stock"}).json()["figures"][0]
    metas = {d.get("meta") for d in ts["data"]}
    assert {"band", "baseline"} <= metas  # 2 replications: bands; the baseline dashed
    zh = client.get(f"{base}/sankey", params={"lang": "zh"}).json()["figures"][0]
    assert "采选" in zh["data"][0]["node"]["label"]
    for name in ("elements", "bottlenecks", "kpis"):
        r = client.get(f"{base}/{name}")
        assert r.status_code == 200 and r.json()["figures"][0]["data"], name
    assert client.get(f"{base}/sankey", params={"year": 2030}).status_code == 422
    assert client.get(f"{base}/nothing").status_code == 422
    assert client.get(f"{API}/runs/nope/charts/sankey").status_code == 404


# --- in a real browser ---------------------------------------------------------------------


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("browser"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it)")
@pytest.mark.skipif(_playwright() is None, reason="needs playwright (the dev extra)")
def test_the_page_end_to_end(server: Server) -> None:
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            page.select_option("#model", "tiny")
            page.wait_for_function("() => { const o = document.querySelector('#model');"
                                   " return o.value === 'tiny'; }")
            page.wait_for_timeout(300)  # the model's ids load
            page.click("#add-change")
            row = page.locator("#changes .change").first
            row.locator("select[name=kind]").select_option("quota")
            row.locator("select[name=quota]").select_option("mining")
            row.locator("input[name=value]").fill("0.8")
            row.locator("input[name=from]").fill("2025-01-01")
            page.fill("#replications", "2")
            page.fill("#seed", "3")
            # a bad value first: the API's error shows next to the field
            page.fill("#replications", "0")
            page.click("#submit")
            page.wait_for_function(
                "document.querySelector('[data-loc=replications]').textContent.length > 0")
            page.fill("#replications", "2")
            page.click("#submit")
            page.wait_for_selector("#sankey .main-svg", timeout=120_000)
            page.wait_for_selector("#timeseries .main-svg", timeout=60_000)
            page.wait_for_selector("#sankey-baseline .main-svg", timeout=60_000)
            page.wait_for_function(
                "document.querySelector('#sankey').data && "
                "document.querySelector('#sankey').data[0].link.value.length > 0 && "
                "document.querySelector('#timeseries').data.length > 0")
            page.wait_for_timeout(800)
            page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
            run_id = page.locator("#run-link").inner_text()
            cell = page.locator(
                ".kpi-value[data-kpi='output.stage'][data-key='magnet'][data-year='2024']")
            shown = cell.inner_text()
            assert errors == []
        finally:
            browser.close()
    run = httpx.get(f"{server.url}{API}/runs/{run_id}").json()
    assert run["request"]["changes"][0]["factor"] == 0.8 and run["request"]["seed"] == 3
    kpi = next(k for k in run["result"]["kpis"]
               if (k["kpi"], k["key"], k["year"]) == ("output.stage", "magnet", 2024))
    assert shown == f"{kpi['mean']:,.0f}"


def test_the_browser_artifacts_are_ignored_by_git() -> None:
    """What the browser test leaves (its screenshot) is never picked up by ``git add``."""
    git = shutil.which("git")
    assert git is not None, "git is needed to ask what it ignores"
    for path in (ARTIFACTS / "page.png", ARTIFACTS / "sub" / "trace.zip"):
        asked = subprocess.run([git, "-C", str(REPO), "check-ignore", "--no-index", "-q",
                                str(path)], capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0, f"git would pick up {path}: {asked.stderr}"
    kept = subprocess.run([git, "-C", str(REPO), "check-ignore", "--no-index", "-q",
                           str(REPO / "tests" / "api" / "test_page.py")], timeout=60)
    assert kept.returncode == 1  # the question is real: a test file is not ignored
