"""The planner's page's monthly series and what it costs over the wire: output per stage with
the p5–p95 band of the replications' stage totals, output per plant of one stage, the model
outline the what-if form reads, answers gzipped (their content unchanged) and static files
revalidated. (In a real browser: ``test_page.py``.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from apiutil import TestClient, settings_for, whatif

from retwin import whatif as core
from retwin.engine import run as engine_run
from retwin.engine.run import prepare
from retwin.scenario.load import load_scenario
from retwin_service import tables
from retwin_service.main import GZIP_MIN_BYTES, create_app
from retwin_service.routes import answer

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

API = "/api/v1"
#: What the panels keep of a number: 4 significant digits.
ROUNDED = 6e-4


def second_magnet_plant() -> dict[str, Any]:
    """A second magnet maker on the tiny model (its only magnet plant's recipe), with
    outages of its own: the magnet stage then has two plants that are not down together."""
    sc = load_scenario("tiny")
    plant = next(p for p in sc.plants if p.id == "magnets").model_dump(mode="json",
                                                                         by_alias=True)
    plant.update(id="magnets_two", name="Second magnet maker", name_zh="第二磁材厂",
                 capacity_tpa=4000.0,
                 availability={"mtbf_days": 60, "mttr_days": 15, "planned_outages": []})
    return plant


ADD = [{"kind": "plant", "action": "add", "plant": second_magnet_plant(),
        "from": "2024-01-01"}]
REPLICATIONS = 4
SEED = 1


# --- the band of a stage, computed ---------------------------------------------------------


def _reference(rs: Any, stage_of: dict[str, str]) -> pd.DataFrame:
    """Each replication's monthly stage totals with pandas (a group-by per replication),
    then their mean and percentiles: the obviously correct way."""
    labels, _ = rs.first.monthly_values()
    totals = []
    for r, values in enumerate(rs.monthly_stack):
        f = labels.assign(value=values)
        f = f[f["kind"] == "activity"]
        f = f.assign(stage=f["id"].map(stage_of))
        totals.append(f.groupby(["stage", "month"])["value"].sum().rename(r))
    t = pd.concat(totals, axis=1)
    return pd.DataFrame({"mean": t.mean(axis=1), "p5": t.quantile(0.05, axis=1),
                         "p50": t.quantile(0.5, axis=1), "p95": t.quantile(0.95, axis=1)})


def test_a_stages_band_is_taken_across_the_replications_totals() -> None:
    """Two magnet plants that take turns (one makes 10 when the other makes 0): the stage
    makes 10 in every replication, so its band is 10–10, where the sum of the plants' p5
    is 1 (each plant's p5 of 0 and 10 is 0.5). A stage of one plant has that plant's
    band."""
    res = engine_run(prepare(load_scenario("tiny"), ADD), seed=0)
    labels, values = res.monthly_values()
    stack = np.stack([values, values])
    act = labels["kind"].to_numpy() == "activity"
    ids = labels["id"].to_numpy()
    for r, (a, b) in enumerate(((0.0, 10.0), (10.0, 0.0))):
        stack[r, act & (ids == "magnets")] = a
        stack[r, act & (ids == "magnets_two")] = b
    out = res.stage_output(stack)
    magnet = out[out["stage"] == "magnet"]
    assert len(magnet) == len(res.compiled.months)
    for col in ("mean", "p5", "p50", "p95"):
        assert magnet[col].to_numpy() == pytest.approx(10.0, abs=1e-12), col
    plants_p5 = sum(np.percentile(stack[:, act & (ids == i)], 5, axis=0)
                    for i in ("magnets", "magnets_two"))
    assert plants_p5 == pytest.approx(1.0)  # what summing the plants' bands would draw
    metal = out[out["stage"] == "metal"]
    rows = act & (ids == "metal")
    assert metal["p5"].to_numpy() == pytest.approx(np.percentile(stack[:, rows], 5, axis=0))
    # one run alone: a band of width 0 around its own values
    alone = res.stage_output()
    assert (alone["p5"] == alone["mean"]).all() and (alone["p95"] == alone["mean"]).all()


def test_the_stage_output_of_replications_is_the_per_replication_totals() -> None:
    """On real replications: every stage and month equals the pandas reference, a year's
    months add up to the stage's output KPI, and the mean is inside the band."""
    res = core.run(core.resolve("tiny", ADD), replications=REPLICATIONS, seed=SEED).whatif
    stage_of = {p.id: p.stage for p in res.first.compiled.scenario.plants}
    got = res.stage_output.set_index(["stage", "month"])
    ref = _reference(res, stage_of)
    assert sorted(got.index) == sorted(ref.index)
    for col in ("mean", "p5", "p50", "p95"):
        assert got.loc[ref.index, col].to_numpy() == pytest.approx(ref[col].to_numpy(),
                                                                   rel=1e-12, abs=1e-9)
    assert (got["p5"] <= got["mean"] * (1 + 1e-12) + 1e-9).all()
    assert (got["mean"] <= got["p95"] * (1 + 1e-12) + 1e-9).all()
    year = got.reset_index().assign(year=lambda d: pd.to_datetime(d["month"]).dt.year)
    annual = year.groupby(["stage", "year"])["mean"].sum()
    kpi = res.summary[res.summary["kpi"] == "output.stage"].set_index(["key", "year"])["mean"]
    assert annual.to_numpy() == pytest.approx(kpi.loc[annual.index].to_numpy(), rel=1e-9)
    # the magnet plants are not down together: the band of their sum is not the sum of bands
    plants = res.monthly_bands[res.monthly_bands["kind"] == "activity"]
    summed = (plants.assign(stage=plants["id"].map(stage_of))
              .groupby(["stage", "month"])["p5"].sum().loc["magnet"])
    assert float(np.abs(summed.to_numpy() - got.loc["magnet", "p5"].to_numpy()).max()) > 1.0


# --- through the API -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path_factory.mktemp("series")))) as c:
        yield c


@pytest.fixture(scope="module")
def run(client: TestClient) -> dict[str, Any]:
    r = client.post(f"{API}/runs", params={"wait": 120},
                    json=whatif(changes=ADD, replications=REPLICATIONS, seed=SEED))
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    return dict(r.json())


def _panel(client: TestClient, url: str) -> dict[str, Any]:
    """A panel's answer, which must be a 200 (else the failure shows what came instead)."""
    got = client.get(url)
    assert got.status_code == 200, (url, got.status_code, got.text)
    return dict(got.json())


def _root(client: TestClient) -> Path:
    return Path(client.app.state.service.settings.results_dir)  # type: ignore[attr-defined]


def _key(client: TestClient, run_id: str) -> str:
    rec = client.app.state.service.registry.get_run(run_id)  # type: ignore[attr-defined]
    return str(rec.request_hash)


def test_the_stages_panel_draws_the_band_of_the_stage_totals(client: TestClient,
                                                            run: dict[str, Any]) -> None:
    """``GET /panels/stages``: each stage's band is the p5–p95 of the replications' stage
    totals (the same run computed here, with pandas), it holds the mean, and it is not the
    sum of the plants' bands (``/panels/stages/magnet`` has those)."""
    p = _panel(client, f"{API}/runs/{run['id']}/panels/stages")
    assert p["bands"] is not None and set(p["bands"]) == set(p["whatif"]) == set(p["stages"])
    res = core.run(core.resolve("tiny", ADD), replications=REPLICATIONS, seed=SEED).whatif
    ref = _reference(res, {pl.id: pl.stage for pl in res.first.compiled.scenario.plants})
    for stage, band in p["bands"].items():
        mean = p["whatif"][stage]
        assert len(band["p5"]) == len(band["p95"]) == len(mean) == len(p["months"])
        r = ref.loc[stage]
        assert mean == pytest.approx(r["mean"].to_list(), rel=ROUNDED, abs=1e-9), stage
        assert band["p5"] == pytest.approx(r["p5"].to_list(), rel=ROUNDED, abs=1e-9), stage
        assert band["p95"] == pytest.approx(r["p95"].to_list(), rel=ROUNDED, abs=1e-9), stage
        for lo, m, hi in zip(band["p5"], mean, band["p95"], strict=True):
            assert lo <= m <= hi, (stage, lo, m, hi)
    plants = _panel(client, f"{API}/runs/{run['id']}/panels/stages/magnet")
    summed = np.sum([plants["bands"][i]["p5"] for i in ("magnets", "magnets_two")], axis=0)
    assert float(np.abs(summed - np.array(p["bands"]["magnet"]["p5"])).max()) > 1.0
    # the baseline is drawn as its mean only
    assert p["base"] is not None and set(p["base"]) == set(p["stages"])


def test_a_one_replication_run_has_no_band(client: TestClient) -> None:
    """One replication has no spread: the panels answer with the means and ``bands`` null
    (the page then draws no band)."""
    r = client.post(f"{API}/runs", params={"wait": 120},
                    json=whatif(changes=ADD, replications=1, seed=SEED))
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    one = r.json()["id"]
    p = _panel(client, f"{API}/runs/{one}/panels/stages")
    assert p["bands"] is None and set(p["whatif"]) == set(p["stages"])
    plants = _panel(client, f"{API}/runs/{one}/panels/stages/magnet")
    assert plants["bands"] is None and set(plants["whatif"]) == {"magnets", "magnets_two"}


def test_the_plants_of_a_stage(client: TestClient, run: dict[str, Any]) -> None:
    """``GET /panels/stages/{stage}``: the stage's plants (the what-if's own, an added one
    too), each plant's monthly mean and band from the stored monthly table; the baseline
    has only its own plants. An unknown stage is a 404 naming it."""
    url = f"{API}/runs/{run['id']}/panels/stages"
    p = _panel(client, f"{url}/magnet")
    assert [x["id"] for x in p["plants"]] == ["magnets", "magnets_two"]
    assert p["plants"][1]["name_zh"] == "第二磁材厂" and p["unit"] == "t"
    mon = tables.read(_root(client), _key(client, run["id"]), "monthly")
    for pid in ("magnets", "magnets_two"):
        rows = mon[(mon["kind"] == "activity") & (mon["id"] == pid)].sort_values("month")
        assert p["whatif"][pid] == pytest.approx(rows["mean"].to_list(), rel=ROUNDED, abs=1e-9)
        band = p["bands"][pid]
        assert band["p5"] == pytest.approx(rows["p5"].to_list(), rel=ROUNDED, abs=1e-9)
        assert all(lo <= m <= hi for lo, m, hi in
                   zip(band["p5"], p["whatif"][pid], band["p95"], strict=True))
    assert set(p["base"]) == {"magnets"}  # the baseline has no second magnet plant
    assert len(p["months"]) == len(p["whatif"]["magnets"]) == 24
    missing = client.get(f"{url}/smelting")
    assert missing.status_code == 404 and "smelting" in missing.json()["detail"]
    assert "magnet" in missing.json()["detail"]  # the stages it has are named
    assert client.get(f"{API}/runs/nope/panels/stages/magnet").status_code == 404
    assert client.get(f"{url}/{'x' * 65}").status_code == 422


def test_a_result_stored_before_stage_bands_still_draws(client: TestClient,
                                                         run: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """A result stored before ``stage_output`` existed: each stage's mean is its plants'
    summed, and no band is drawn rather than a wrong one."""
    key = _key(client, run["id"])
    old = tmp_path / "results"
    shutil.copytree(_root(client) / key, old / key)
    for f in (old / key).glob("stage_output.*"):
        f.unlink()
    m = json.loads((old / key / "manifest.json").read_text())
    m["files"] = [f for f in m["files"] if not f.startswith("stage_output.")]
    (old / key / "manifest.json").write_text(json.dumps(m))
    stage_of = {"mine": "mining", "separation": "separation", "metal": "metal",
                "magnets": "magnet", "magnets_two": "magnet", "recycler": "recycling"}
    means, bands = answer._stage_series(old, key, stage_of)
    assert bands is None
    now = _panel(client, f"{API}/runs/{run['id']}/panels/stages")["whatif"]
    assert set(means) == set(now)
    for stage in now:
        assert means[stage] == pytest.approx(now[stage], rel=2 * ROUNDED, abs=1e-9)


# --- the model outline ---------------------------------------------------------------------


def test_the_model_outline_is_what_the_form_reads(client: TestClient) -> None:
    """``GET /models/{name}/outline`` holds, for what a change may name, the ids in the
    order of the model document and what the form shows of them, taken from the model; it
    is a small part of the whole document."""
    for name in ("tiny", "baotou-2024"):
        full = client.get(f"{API}/models/{name}")
        o = client.get(f"{API}/models/{name}/outline")
        assert o.status_code == 200, o.text
        doc, out = full.json(), o.json()
        sc = doc["scenario"]
        assert out["name"] == name and (out["start"], out["end"]) == (doc["start"], doc["end"])
        for key, ids in (("plants", "plant_ids"), ("materials", "material_ids"),
                         ("quotas", "quota_ids"), ("markets", "market_ids"),
                         ("demand", "segment_ids")):
            assert [x["id"] for x in out[key]] == doc[ids], key
        assert [x["id"] for x in out["targets"]] == [t["id"] for t in sc["targets"]]
        for got, p in zip(out["plants"], sc["plants"], strict=True):
            assert (got["name"], got["name_zh"], got["stage"], got["capacity_tpa"]) == (
                p["name"], p["name_zh"], p["stage"], p["capacity_tpa"])
            assert got["output"] == next(iter(p["recipe"]["outputs"]))
        for got, m in zip(out["materials"], sc["materials"], strict=True):
            assert (got["unit"], got["base_cny_per_unit"]) == (
                m["unit"], m["price"]["base_cny_per_unit"])
        for got, q in zip(out["quotas"], sc["quotas"], strict=True):
            assert got["annual_t_reo"] == q["annual_t_reo"]
        markets_on = sc["economics"] is not None and sc["settings"]["price_mode"] == "market"
        assert out["markets_on"] is markets_on
        if name == "baotou-2024":
            assert len(o.content) * 3 < len(full.content), (len(o.content), len(full.content))
    missing = client.get(f"{API}/models/nothing/outline")
    assert missing.status_code == 404 and "nothing" in missing.json()["detail"]


# --- over the wire -------------------------------------------------------------------------


def _both(client: TestClient, url: str, **kw: Any) -> tuple[Any, Any]:
    plain = client.get(url, headers={"Accept-Encoding": "identity"}, **kw)
    packed = client.get(url, headers={"Accept-Encoding": "gzip"}, **kw)
    return plain, packed


def test_answers_are_gzipped_and_their_content_is_unchanged(client: TestClient,
                                                            run: dict[str, Any]) -> None:
    """Every answer of 1 KB or more goes gzipped to a client that accepts it, and unpacked
    it is the very answer a client that does not gets; smaller ones, and Parquet (packed
    already), go as they are."""
    rid = run["id"]
    urls = ["/", "/static/app.js", "/static/app.css", "/openapi.json", f"{API}/models",
            f"{API}/models/tiny", f"{API}/models/tiny/outline", f"{API}/kpis",
            f"{API}/schema/changes", f"{API}/runs", f"{API}/runs/{rid}",
            f"{API}/runs/{rid}/summary", f"{API}/runs/{rid}/panels/stages",
            f"{API}/runs/{rid}/panels/markets", f"{API}/runs/{rid}/panels/stages/magnet",
            f"{API}/runs/{rid}/charts/sankey", f"{API}/runs/{rid}/kpis",
            f"{API}/runs/{rid}/series?limit=3000", f"{API}/runs/{rid}/series?format=csv",
            f"{API}/runs/{rid}/flows?format=csv", f"{API}/health"]
    packed_some = small_some = 0
    for url in urls:
        plain, packed = _both(client, url)
        assert plain.status_code == packed.status_code == 200, url
        assert "content-encoding" not in plain.headers, url
        if url.endswith("/health"):  # a live figure (the data folder's free bytes) moves
            live = "data_free_bytes"
            assert {k: v for k, v in packed.json().items() if k != live} == \
                {k: v for k, v in plain.json().items() if k != live}
        else:
            assert packed.content == plain.content, url  # unpacked, the same bytes
        assert packed.headers["content-type"] == plain.headers["content-type"], url
        if len(plain.content) >= GZIP_MIN_BYTES:
            assert packed.headers.get("content-encoding") == "gzip", url
            assert packed.num_bytes_downloaded < len(plain.content), url
            assert "accept-encoding" in packed.headers.get("vary", "").lower(), url
            packed_some += 1
        else:
            assert "content-encoding" not in packed.headers, url
            small_some += 1
    assert packed_some >= 15 and small_some >= 1  # /health is small
    plain, packed = _both(client, f"{API}/runs/{rid}/series?format=parquet")
    assert packed.status_code == 200 and "content-encoding" not in packed.headers
    assert packed.content == plain.content


def test_static_files_are_revalidated_and_api_answers_never_stored(client: TestClient) -> None:
    """A static file carries an ``ETag`` and ``no-cache``: asked again with that tag it is
    a ``304`` without a body (plotly.js is not sent on every load); the API's answers stay
    ``no-store``."""
    for url in ("/", "/static/app.js", "/static/app.css", "/static/plotly.min.js"):
        first = client.get(url)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-cache", url
        tag = first.headers["etag"]
        again = client.get(url, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"", url
        assert again.headers["etag"] == tag
        weak = client.get(url, headers={"If-None-Match": f'"other", W/{tag}'})
        assert weak.status_code == 304, url
        other = client.get(url, headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == first.content, url
    for url in (f"{API}/kpis", f"{API}/models/tiny/outline", f"{API}/health"):
        assert client.get(url).headers["cache-control"] == "no-store", url
