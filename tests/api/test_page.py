"""The planner's page: served with plotly.js from the installed package; the charts
endpoint; and the page driven end to end in a headless Chromium."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiutil import REPO, Server, TestClient, settings_for, whatif

from retwin_service.main import GZIP_MIN_BYTES, create_app
from retwin_service.routes import answer

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path_factory.mktemp("page")))) as c:
        yield c


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    r = client.post(f"{API}/runs", params={"wait": 60, "detail": "full"}, json=whatif())
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


def test_the_summary_of_a_run(client: TestClient, run: dict[str, Any]) -> None:
    """The page's compact answer: the headline cards carry the run's own numbers (a card of
    one KPI row is that row and its paired difference; a sum is the sum of its rows), and the
    first year a change acts."""
    s = client.get(f"{API}/runs/{run['id']}/summary").json()
    assert s["status"] == "done" and s["request"] == run["request"]
    r = s["result"]
    assert r["years"] == [2024, 2025] and r["focus_year"] == 2025  # the quota cut's year
    kpis = {(k["kpi"], k["key"], k["year"]): k for k in run["result"]["kpis"]}
    diffs = {(k["kpi"], k["key"], k["year"]): k for k in run["result"]["difference"]}
    assert r["cards"], "the tiny model has headline KPIs"
    for card in r["cards"]:
        for i, year in enumerate(card["years"]):
            if card["key"] is not None:
                row = (card["kpi"], card["key"], year)
                k, d = kpis[row], diffs[row]
                # the same numbers (the run's JSON keeps 15 significant digits)
                assert [card["mean"][i], card["p5"][i], card["p95"][i]] == pytest.approx(
                    [k["mean"], k["p5"], k["p95"]], rel=1e-13), card["id"]
                assert card["delta"][i] == pytest.approx(d["mean"], rel=1e-13), card["id"]
                assert card["base"][i] == pytest.approx(k["mean"] - d["mean"])
            else:
                rows = [k for (n, _, y), k in kpis.items()
                        if n == card["kpi"] and y == year and k["unit"] == card["sum_of"]]
                assert card["mean"][i] == pytest.approx(sum(k["mean"] for k in rows))
                assert card["delta"][i] == pytest.approx(sum(
                    diffs[(k["kpi"], k["key"], year)]["mean"] for k in rows), abs=1e-6)
    assert len(client.get(f"{API}/runs/{run['id']}/summary").content) < 30_000
    for name in ("stages", "markets"):
        panel = client.get(f"{API}/runs/{run['id']}/panels/{name}")
        assert panel.status_code == 200 and panel.json()["baseline"] is True, name
    stages = client.get(f"{API}/runs/{run['id']}/panels/stages").json()
    assert set(stages["whatif"]) == set(stages["stages"])
    assert all(len(v) == len(stages["months"]) for v in stages["whatif"].values())
    assert client.get(f"{API}/runs/nope/summary").status_code == 404
    assert client.get(f"{API}/runs/{run['id']}/panels/nothing").status_code == 422


@pytest.mark.parametrize(("changes", "year"), [
    ([], 2024),
    ([{"kind": "quota", "quota": "q", "factor": 0.9}], 2024),  # no start: from the first year
    ([{"kind": "outage", "plant": "p", "from": "2027-04-01", "to": "2027-05-01"},
      {"kind": "quota", "quota": "q", "factor": 0.9, "from": "2026-02-01"}], 2026),
    ([{"kind": "plant", "action": "add", "plant": {"id": "n", "commissioning": "2028-01-01"}}],
     2028),
    ([{"kind": "demand", "segment": "s", "factor": 2, "from": "2040-01-01"}], 2030),
    ([{"kind": "demand", "segment": "s", "factor": 2, "from": "2001-01-01"}], 2024),
])
def test_the_first_year_a_change_acts(changes: list[dict[str, Any]], year: int) -> None:
    assert answer.focus_year(changes, list(range(2024, 2031))) == year


THREE = [{"kind": "quota", "quota": "mining", "factor": 0.8, "from": "2025-01-01",
          "to": "2025-12-31"},
         {"kind": "outage", "plant": "magnets", "from": "2025-03-01", "to": "2025-04-30"},
         {"kind": "demand", "segment": "motors", "factor": 1.2, "from": "2025-01-01",
          "to": "2025-12-31"}]


def test_why_attributes_each_cards_difference_to_the_changes(client: TestClient) -> None:
    """A what-if of three changes taken apart: each change alone and all but each, every
    part a stored run paired with the same baseline; the parts add up (the whole Δ is the sum
    of the changes alone plus their interaction) and each part is the run the API gives for
    those changes."""
    body = whatif(changes=THREE, replications=2, seed=4)
    run = client.post(f"{API}/runs", params={"wait": 120}, json=body).json()
    why = client.post(f"{API}/runs/{run['id']}/why", params={"wait": 300})
    assert why.status_code == 200, why.text
    w = why.json()
    assert w["status"] == "done" and len(w["parts"]) == 6  # 3 alone, 3 all-but-one
    alone = [client.post(f"{API}/runs", params={"wait": 120},
                         json=whatif(changes=[c], replications=2, seed=4)).json()
             for c in THREE]
    without = [client.post(f"{API}/runs", params={"wait": 120}, json=whatif(
        changes=THREE[:i] + THREE[i + 1:], replications=2, seed=4)).json() for i in range(3)]
    def cards_of(r: dict[str, Any]) -> dict[str, Any]:
        summary = client.get(f"{API}/runs/{r['id']}/summary").json()["result"]
        return {c["id"]: c for c in summary["cards"]}

    cards = cards_of(run)
    alone_cards, without_cards = [cards_of(r) for r in alone], [cards_of(r) for r in without]
    moved = 0
    for c in w["cards"]:
        assert c["total"] == cards[c["id"]]["delta"]
        for k, year in enumerate(c["years"]):
            total = c["total"][k]
            for i in range(3):
                one = alone_cards[i][c["id"]]["delta"][k]
                assert c["one"][i][k] == pytest.approx(one, abs=1e-9), (c["id"], year, i)
                rest = without_cards[i][c["id"]]["delta"][k]
                assert c["marginal"][i][k] == pytest.approx(total - rest, abs=1e-9)
            assert total == pytest.approx(
                sum(c["one"][i][k] for i in range(3)) + c["interaction"][k], abs=1e-9)
            moved += abs(total) > 1e-6
    assert moved, "the changes move some headline card"
    # asked again: the stored parts answer at once, and no run is submitted twice
    before = client.get(f"{API}/runs", params={"limit": 500}).json()["count"]
    again = client.post(f"{API}/runs/{run['id']}/why").json()
    assert again["status"] == "done" and again["cards"] == w["cards"]
    assert client.get(f"{API}/runs", params={"limit": 500}).json()["count"] == before
    plain = client.post(f"{API}/runs", params={"wait": 60}, json=whatif(changes=[])).json()
    assert client.post(f"{API}/runs/{plain['id']}/why").status_code == 409
    assert client.post(f"{API}/runs/nope/why").status_code == 404


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


def needs_browser(test: Any) -> Any:
    """A test driving the page in Debian's headless Chromium (the compiled pass only)."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at "
                           "/usr/bin/chromium (apt-get install chromium; .ci/run installs it)"),
        pytest.mark.skipif(_playwright() is None, reason="needs playwright (the dev extra)"),
    ):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def _open(browser: Any, server: Server, model: str = "baotou-2024",
          viewport: tuple[int, int] = (1400, 2400)) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", model)
    page.wait_for_function(f"window.retwinModel === {model!r}")
    return page, errors


def _wait_done(page: Any) -> str:
    page.wait_for_function("window.retwinShown && window.retwinShown.status === 'done'",
                           timeout=180_000)
    return str(page.evaluate("window.retwinShown.id"))


def _run_from_form(browser: Any, server: Server, fill: Callable[[Any, Any], None]
                   ) -> dict[str, Any]:
    """Open the page, add one change row, let ``fill(page, row)`` fill it and the run's
    settings, submit, and return the finished run as the API has it; no page error on the
    way."""
    page, errors = _open(browser, server)
    try:
        page.click("#add-change")
        fill(page, page.locator("#changes .change").first)
        page.click("#submit")
        run_id = _wait_done(page)
        assert errors == []
    finally:
        page.close()
    return dict(httpx.get(f"{server.url}{API}/runs/{run_id}", params={"detail": "full"},
                          timeout=60).json())


def _api_run(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}{API}/runs", params={"wait": 300, "detail": "full"},
                   json=body, timeout=320)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _diff(run: dict[str, Any], kpi: str, key: str, year: int) -> float:
    return float(next(d["mean"] for d in run["result"]["difference"]
                      if (d["kpi"], d["key"], d["year"]) == (kpi, key, year)))


@needs_browser
def test_an_outage_from_the_form_is_the_outage_of_the_api(browser: Any, server: Server) -> None:
    """The outage form takes the plant down (capacity 0) over dates it shows, says so in
    plain words, and the run it sends is the same outage sent over the API: same Δ."""
    def fill(page: Any, row: Any) -> None:
        row.locator("select[name=kind]").select_option("outage")
        row.locator("select[name=plant]").select_option("cnre_separation")
        # the dates are there to be seen, never left empty
        assert row.locator("input[name=from]").input_value() == "2025-04-01"
        assert row.locator("input[name=to]").input_value() == "2025-06-30"
        plain = row.locator("[data-role=plain]").inner_text()
        assert "down 2025-04-01 → 2025-06-30" in plain, plain
        # an empty date is refused next to its field, nothing is sent
        row.locator("input[name=to]").fill("")
        page.click("#submit")
        assert "required" in row.locator("[data-field=to]").inner_text()
        row.locator("input[name=to]").fill("2025-06-30")
        page.fill("#replications", "4")
        page.fill("#seed", "5")

    run = _run_from_form(browser, server, fill)
    assert run["request"]["changes"][0]["capacity_frac"] == 0.0
    api = _api_run(server, {"model": "baotou-2024", "replications": 4, "seed": 5, "changes": [
        {"kind": "outage", "plant": "cnre_separation", "from": "2025-04-01",
         "to": "2025-06-30"}]})
    form_delta = _diff(run, "output.stage", "separation", 2025)
    assert form_delta < -1000  # a quarter without the main separator is felt
    assert form_delta == pytest.approx(_diff(api, "output.stage", "separation", 2025), rel=1e-12)


@needs_browser
def test_a_new_plant_from_the_form(browser: Any, server: Server) -> None:
    """A magnet plant added from its stage's template (capacity, start, ramp) raises
    magnet output once it runs."""
    def fill(page: Any, row: Any) -> None:
        row.locator("select[name=kind]").select_option("plant")
        row.locator("select[name=action]").select_option("add")
        row.locator("select[name=stage]").select_option("magnet")
        row.locator("input[name=capacity_tpa]").fill("20000")
        row.locator("input[name=from]").fill("2025-01-01")
        row.locator("input[name=ramp_days]").fill("90")
        plain = row.locator("[data-role=plain]").inner_text()
        assert "a magnet plant of 20,000 t/yr" in plain and "2025-01-01" in plain
        page.fill("#replications", "2")

    run = _run_from_form(browser, server, fill)
    plant = run["request"]["changes"][0]["plant"]
    assert plant["stage"] == "magnet" and plant["capacity_tpa"] == 20000
    assert plant["ramp_days"] == 90 and plant["commissioning"] == "2025-01-01"
    assert _diff(run, "output.plant", plant["id"], 2026) > 1000


def _fmt(v: float, unit: str) -> str:
    """A number as the page prints it (``fmtNum`` in app.js)."""
    if unit == "fraction":
        return f"{v * 100:.1f} %"
    a = abs(v)
    if a < 1e-9:
        return "0"
    if a >= 100:
        return f"{math.floor(v + 0.5):,}"
    g = float(f"{v:.3g}")
    return f"{int(g):,}" if g == int(g) else str(g)


def _fmt_delta(d: float, unit: str, ref: float) -> str:
    if abs(d) <= 1e-9 * max(1.0, abs(ref)):
        return "0"
    if unit == "fraction":
        return f"{'+' if d > 0 else '−'}{abs(d) * 100:.1f} pp"
    return ("+" if d > 0 else "−") + _fmt(abs(d), unit)


#: A what-if whose changes act from 2026 only: an outage of the main separator, and an export
#: cap far above anything shipped (it never binds, so the run says so in its notes).
LATE = {"model": "baotou-2024", "replications": 4, "seed": 7, "changes": [
    {"kind": "outage", "plant": "cnre_separation", "from": "2026-04-01", "to": "2026-06-30"},
    {"kind": "trade", "market": "concentrate_out", "side": "export", "cap_tpa": 1e8,
     "from": "2026-01-01", "to": "2030-12-31"}]}


@needs_browser
def test_the_first_screen_of_a_run(browser: Any, server: Server) -> None:
    """A finished run opened at ``/#run=<id>``: the headline cards show the API's numbers
    (value and Δ of the year the changes start, with the unit), the notes of changes that
    never bound are shown, the Sankey opens on the first year a change acts, and everything
    the run's first screen asks of the API weighs under 100 KB."""
    run = _api_run(server, LATE)
    result = run["result"]
    assert result["notes"], "the never-binding export cap is noted"
    page, errors = _open(browser, server)
    sizes: dict[str, int] = {}

    def count(response: Any) -> None:
        if f"{API}/runs/{run['id']}" in response.url:
            sizes[response.url] = len(response.body())

    page.on("response", count)
    try:
        page.goto(f"{server.url}/#run={run['id']}")
        page.reload()
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r}", timeout=120_000)
        assert page.locator("#year").input_value() == "2026"
        assert page.locator("#sankey-year").input_value() == "2026"
        assert page.evaluate("document.querySelector('#sankey').dataset.year") == "2026"
        title = page.evaluate("document.querySelector('#sankey').layout.title.text")
        assert "2026" in title
        shown_notes = page.locator("#notes li").all_inner_texts()
        assert shown_notes == result["notes"]
        kpis = {(k["kpi"], k["key"], k["year"]): k for k in result["kpis"]}
        diffs = {(k["kpi"], k["key"], k["year"]): k for k in result["difference"]}
        checked = 0
        for card, kpi, key in (("magnet", "output.stage", "magnet"),
                               ("separation", "output.stage", "separation"),
                               ("prnd_price", "price.material", "prnd_oxide"),
                               ("local_conversion", "local_conversion", "region"),
                               ("value_total", "value.group", "total")):
            k, d = kpis[(kpi, key, 2026)], diffs[(kpi, key, 2026)]
            loc = page.locator(f".card[data-card={card}]")
            unit = k["unit"]
            assert loc.locator(".card-value .v").inner_text() == _fmt(k["mean"], unit), card
            assert loc.locator(".card-delta .d").inner_text() == _fmt_delta(
                d["mean"], unit, k["mean"] - d["mean"]), card
            assert f"{_fmt(k['p5'], unit)} – {_fmt(k['p95'], unit)}" in \
                loc.locator(".card-band").inner_text(), card
            checked += 1
        assert checked == 5
        assert page.locator(".card[data-card=prnd_price] .unit").inner_text() == "CNY/t"
        assert any("/panels/stages" in u for u in sizes)  # the page asked for its panels
        assert errors == []
    finally:
        page.close()
    total = sum(sizes.values())
    assert total < 100_000, f"the first screen of a run is {total} bytes: {sizes}"
    # the whole run's answer is several times that: the page does not ask for it
    assert not any(u.endswith(f"/runs/{run['id']}") for u in sizes)


@needs_browser
def test_the_first_screen_over_the_wire(browser: Any, server: Server) -> None:
    """A finished run opened at ``/#run=<id>`` in a browser with nothing cached: everything
    the first screen fetches (the page, its script and style, the model outline, the runs,
    the summary, the panels and the Sankey) comes gzipped and weighs under 100 KB over the
    wire. plotly.js (1.5 MB gzipped) comes once: a reload revalidates it (304, no body), and
    the whole reload, plotly.js counted, stays under 100 KB."""
    run = _api_run(server, LATE)
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    loads: list[list[dict[str, Any]]] = [[]]

    def finished(request: Any) -> None:
        response = request.response()
        body = 0 if 300 <= response.status < 400 else len(response.body())  # 304: none
        loads[-1].append({"url": request.url.removeprefix(server.url),
                          "wire": request.sizes()["responseBodySize"],
                          "status": response.status, "body": body,
                          "encoding": response.headers.get("content-encoding", "")})

    page.on("requestfinished", finished)
    try:
        page.goto(f"{server.url}/#run={run['id']}")
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r}", timeout=120_000)
        page.wait_for_function("window.retwinPlants", timeout=60_000)
        page.wait_for_timeout(300)
        loads.append([])
        page.reload()
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r}", timeout=120_000)
        page.wait_for_function("window.retwinPlants", timeout=60_000)
        page.wait_for_timeout(300)
        assert errors == []
    finally:
        page.close()
    cold, warm = loads
    urls = [r["url"] for r in cold]
    for part in ("/", "/static/app.js", "/static/app.css", "/static/plotly.min.js",
                 "/api/v1/models/baotou-2024/outline", f"/runs/{run['id']}/summary",
                 "/panels/stages", "/panels/markets", "/charts/sankey"):
        assert any(u == part if part == "/" else part in u for u in urls), (part, urls)
    # the whole model document, the KPI catalogue and the whole run are not asked for
    assert not any(u.endswith(("/models/baotou-2024", "/kpis", f"/runs/{run['id']}"))
                   for u in urls), urls
    for r in cold:
        if r["body"] >= GZIP_MIN_BYTES:
            assert r["encoding"] == "gzip" and r["wire"] < r["body"], r
    plotly = [r for r in cold if r["url"].endswith("/plotly.min.js")]
    first = sum(r["wire"] for r in cold if r not in plotly)
    assert first < 100_000, f"the first screen is {first} bytes over the wire: {cold}"
    again = [r for r in warm if r["url"].endswith("/plotly.min.js")]
    assert again and again[0]["status"] == 304 and again[0]["wire"] == 0, again
    total = sum(r["wire"] for r in warm)
    assert total < 100_000, f"a reload is {total} bytes over the wire: {warm}"


#: A what-if on the magnet stage (an outage of a magnet plant, from 2026), with the runs
#: the series test opens after it: another seed, and one replication.
MAGNET = {"model": "baotou-2024", "replications": 4, "seed": 7, "changes": [
    {"kind": "outage", "plant": "jl_mag_baotou", "from": "2026-04-01", "to": "2026-06-30"}]}


def _plants_shown(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("""() => ({
      shown: window.retwinPlants,
      boxes: [...document.querySelectorAll('#plant-list .plant-box')]
        .map((b) => [b.value, b.checked]),
      all: document.querySelector('#plant-list .plant-all').checked,
      labels: [...document.querySelectorAll('#plant-list label')].map((l) => l.textContent.trim()),
      traces: document.querySelector('#plants').data
        .map((d) => [d.meta, d.legendgroup, d.name]),
      shapes: (document.querySelector('#plants').layout.shapes || []).map((x) => x.x0),
      stageShapes: (document.querySelector('#stages').layout.shapes || []).map((x) => x.x0),
    })"""))


@needs_browser
def test_the_series_bands_and_the_plants_chosen(browser: Any, server: Server) -> None:
    """Output per stage draws each stage's p5–p95 band (the API's, around the mean); output
    per plant opens on the stage of the changed plant with every plant ticked, draws only
    the plants ticked, and keeps them when the year, the run or the language changes; a
    run of one replication draws no band (tests/artifacts/page-plants.png)."""
    run = _api_run(server, MAGNET)
    other = _api_run(server, {**MAGNET, "seed": 8})
    one = _api_run(server, {**MAGNET, "replications": 1})
    panel = httpx.get(f"{server.url}{API}/runs/{run['id']}/panels/stages", timeout=60).json()
    magnet = httpx.get(f"{server.url}{API}/runs/{run['id']}/panels/stages/magnet",
                       timeout=60).json()
    ids = [p["id"] for p in magnet["plants"]]
    names = {p["id"]: p["name"] for p in magnet["plants"]}
    assert len(ids) >= 4
    page, errors = _open(browser, server)
    try:
        page.goto(f"{server.url}/#run={run['id']}")
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r} && window.retwinPlants "
                               f"&& window.retwinPlants.run === {run['id']!r}", timeout=120_000)
        # every stage's band: the API's p95 forth and p5 back, around the mean drawn
        traces = page.evaluate("document.querySelector('#stages').data.map((d) => "
                               "({meta: d.meta, group: d.legendgroup, y: d.y}))")
        bands = {t["group"]: t["y"] for t in traces if t["meta"] == "band"}
        means = {t["group"]: t["y"] for t in traces if t["meta"] == "whatif"}
        assert set(bands) == set(panel["bands"]) == set(means) and bands
        for stage, y in bands.items():
            b = panel["bands"][stage]
            assert y == b["p95"] + b["p5"][::-1], stage
            assert all(lo <= m <= hi for lo, m, hi in
                       zip(b["p5"], means[stage], b["p95"], strict=True)), stage
        # the plants: the changed plant's stage, every plant ticked ("all")
        s = _plants_shown(page)
        assert s["shown"]["stage"] == "magnet" and s["shown"]["plants"] == ids
        assert s["all"] and all(on for _, on in s["boxes"])
        assert [g for m, g, _ in s["traces"] if m == "whatif"] == ids
        assert [g for m, g, _ in s["traces"] if m == "band"] == ids  # 4 replications: bands
        # untick two: only the others are drawn, "all" is no longer ticked
        for pid in ids[1:3]:
            page.locator(f"#plant-list .plant-box[value={pid}]").uncheck()
        kept = [ids[0], *ids[3:]]
        page.wait_for_function(f"window.retwinPlants.plants.join() === {','.join(kept)!r}")
        s = _plants_shown(page)
        assert not s["all"] and [v for v, on in s["boxes"] if on] == kept
        assert [n for m, _, n in s["traces"] if m == "whatif"] == [names[i] for i in kept]
        assert {g for m, g, _ in s["traces"]} == set(kept)
        # another year: the shading moves, the plants stay
        page.select_option("#year", "2028")
        page.wait_for_function("window.retwinPlants.year === 2028")
        s = _plants_shown(page)
        assert [v for v, on in s["boxes"] if on] == kept and s["shown"]["plants"] == kept
        assert s["shapes"] == ["2028-01-01"] and set(s["stageShapes"]) == {"2028-01-01"}
        page.locator("#series-block").screenshot(path=str(ARTIFACTS / "page-plants.png"))
        # another run of the model: the same stage and plants
        page.goto(f"{server.url}/#run={other['id']}")
        page.wait_for_function(f"window.retwinPlants && window.retwinPlants.run === "
                               f"{other['id']!r}", timeout=120_000)
        s = _plants_shown(page)
        assert s["shown"]["stage"] == "magnet" and s["shown"]["plants"] == kept
        assert [v for v, on in s["boxes"] if on] == kept
        # another stage opens on all of its plants; back, the choice is there
        page.select_option("#plant-stage", "separation")
        page.wait_for_function("window.retwinPlants.stage === 'separation'")
        assert _plants_shown(page)["all"]
        page.select_option("#plant-stage", "magnet")
        page.wait_for_function(f"window.retwinPlants.stage === 'magnet' && "
                               f"window.retwinPlants.plants.join() === {','.join(kept)!r}")
        # in Chinese: the labels and the plants' names, the same plants ticked
        page.click("#lang-toggle")
        page.wait_for_function("document.querySelector('#plant-list legend').textContent "
                               "=== '工厂'")
        s = _plants_shown(page)
        zh = {p["id"]: p["name_zh"] or p["name"] for p in magnet["plants"]}
        assert s["labels"][0] == "全部" and s["labels"][1:] == [zh[i] for i in ids]
        assert [v for v, on in s["boxes"] if on] == kept
        assert [n for m, _, n in s["traces"] if m == "whatif"] == [zh[i] for i in kept]
        page.click("#lang-toggle")  # back to English for the other tests
        page.wait_for_function("document.documentElement.lang === 'en'")
        # one replication: the means, no band
        page.goto(f"{server.url}/#run={one['id']}")
        page.wait_for_function(f"window.retwinPlants && window.retwinPlants.run === "
                               f"{one['id']!r}", timeout=120_000)
        metas = page.evaluate("[...document.querySelector('#stages').data, "
                              "...document.querySelector('#plants').data].map((d) => d.meta)")
        assert "band" not in metas and "whatif" in metas
        assert errors == []
    finally:
        page.close()


#: Draws two Chinese characters of a zh label, and a code point no font has (a private-use
#: one, drawn as the missing-glyph box), in the page's font on a canvas; returns their alpha
#: masks. Without a CJK font every Chinese character is that same box.
GLYPHS_JS = """(sel) => {
  const font = getComputedStyle(document.querySelector(sel)).fontFamily;
  const draw = (ch) => {
    const c = document.createElement('canvas'); c.width = 48; c.height = 48;
    const x = c.getContext('2d'); x.font = `36px ${font}`; x.textBaseline = 'top';
    x.fillStyle = '#000'; x.fillText(ch, 4, 4);
    return Array.from(x.getImageData(0, 0, 48, 48).data.filter((_, i) => i % 4 === 3));
  };
  return {font, a: draw('磁'), b: draw('产'), box: draw('\\u{10FFFD}')};
}"""


@needs_browser
def test_the_page_in_chinese_renders_glyphs(browser: Any, server: Server) -> None:
    """中文 switches the page's labels, and they are drawn as Chinese glyphs (distinct
    shapes, none of them the missing-glyph box); the first screen is saved in both languages
    (tests/artifacts/page-en.png, page-zh.png)."""
    run = _api_run(server, LATE)
    page, errors = _open(browser, server)
    try:
        page.goto(f"{server.url}/#run={run['id']}")
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r}", timeout=120_000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "page-en.png"))
        page.click("#lang-toggle")
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r} && "
                               "document.documentElement.lang === 'zh'")
        page.wait_for_function("document.querySelector('.card[data-card=magnet] .card-title')"
                               ".textContent === '磁材产量'")
        assert page.locator("#submit").inner_text() == "运行情景"
        g = page.evaluate(GLYPHS_JS, ".card[data-card=magnet] .card-title")
        ink = [sum(1 for v in g[k] if v) for k in ("a", "b", "box")]
        assert ink[0] > 40 and ink[1] > 40, f"nothing drawn for the Chinese glyphs ({ink})"
        assert g["a"] != g["b"], f"two Chinese characters draw the same box in {g['font']}"
        assert g["a"] != g["box"] and g["b"] != g["box"], "a Chinese character is the box"
        page.wait_for_timeout(800)  # the charts redraw with the Chinese labels
        page.screenshot(path=str(ARTIFACTS / "page-zh.png"))
        page.click("#lang-toggle")  # back to English for the other tests
        assert errors == []
    finally:
        page.close()


@needs_browser
def test_the_why_panel(browser: Any, server: Server) -> None:
    """"Explain the difference" runs the changes one at a time and draws, for the card they
    move most, a waterfall from the baseline through each change and their interaction to
    the what-if: the same numbers as the API's why."""
    run = _api_run(server, LATE)
    page, errors = _open(browser, server)
    try:
        page.goto(f"{server.url}/#run={run['id']}")
        page.wait_for_function(f"window.retwinDrawn === {run['id']!r}", timeout=120_000)
        page.click("#why-button")
        page.wait_for_function("document.querySelector('#why').dataset.card", timeout=300_000)
        page.wait_for_timeout(500)
        card = page.evaluate("document.querySelector('#why').dataset.card")
        bars = page.evaluate("document.querySelector('#why').data[0].y")
        page.locator("#why-panel").screenshot(path=str(ARTIFACTS / "page-why.png"))
        assert errors == []
    finally:
        page.close()
    why = httpx.post(f"{server.url}{API}/runs/{run['id']}/why", timeout=60).json()
    c = next(x for x in why["cards"] if x["id"] == card)
    i = c["years"].index(2026)
    assert bars == pytest.approx([c["base"][i], c["one"][0][i], c["one"][1][i],
                                  c["interaction"][i], c["mean"][i]])
    assert abs(c["total"][i]) > 0  # the card the changes move most does move


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
