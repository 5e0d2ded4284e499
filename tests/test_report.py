"""Charts and the HTML report of a result directory and of a sweep, on the tiny model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_PATH
from retwin.cli import main
from retwin.report import figures
from retwin.report.html import render
from retwin.report.why import explain, result_cards
from retwin.storage import read_table

QUOTA = '{"kind": "quota", "quota": "mining", "factor": 0.9, "from": "2025-01-01"}'
OUTAGE = '{"kind": "outage", "plant": "magnets", "from": "2025-03-01", "to": "2025-06-30"}'


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("report")
    base, what = d / "base", d / "whatif"
    assert main(["run", str(TINY_PATH), "--replications", "2", "--seed", "1",
                 "--out", str(base)]) == 0
    assert main(["run", str(TINY_PATH), "--replications", "2", "--seed", "1",
                 "--change", QUOTA, "--out", str(what)]) == 0
    return base, what


@pytest.mark.parametrize("year", [2024, 2025])
def test_sankey_stage_nodes_balance(runs: tuple[Path, Path], year: int) -> None:
    fig = figures.sankey(runs[1], year)
    t = fig["data"][0]
    keys = t["node"]["customdata"]
    inflow: Counter[str] = Counter()
    outflow: Counter[str] = Counter()
    for s, u, v in zip(t["link"]["source"], t["link"]["target"], t["link"]["value"],
                       strict=True):
        assert v > 0
        outflow[keys[s]] += v
        inflow[keys[u]] += v
    stages = [k for k in keys if k in ("mining", "separation", "metal", "magnet", "recycling")]
    assert len(stages) == 5
    for k in stages:
        assert inflow[k] == pytest.approx(outflow[k], rel=1e-6), k
    for k in ("exports", "end_use", "stock_build", "losses"):
        assert outflow[k] == 0
    assert {"ore_body", "exports", "losses", "stock_build", "end_use"} <= set(keys)
    with pytest.raises(ValueError, match="outside"):
        figures.sankey(runs[1], 1999)


def test_timeseries_bands_and_baseline(runs: tuple[Path, Path]) -> None:
    base, what = runs
    fig = figures.timeseries(what, "activity", base)
    metas = Counter(d.get("meta") for d in fig["data"])
    assert metas["band"] >= 1 and metas["baseline"] == 5
    dashed = [d for d in fig["data"] if d.get("meta") == "baseline"]
    assert all(d["line"]["dash"] == "dash" for d in dashed)
    assert all(len(d["x"]) == 24 for d in dashed)
    with pytest.raises(ValueError):
        figures.timeseries(what, "nothing")


def test_elements_bottlenecks_kpis_and_labels(runs: tuple[Path, Path]) -> None:
    what = runs[1]
    el = figures.element_balance(what)
    assert {"La", "Ce"} <= set(el["data"][0]["x"])
    assert figures.bottlenecks(what)["data"][0]["type"] == "table"
    h = figures.headline(what)
    row = h[(h.kpi == "output.stage") & (h.key == "mining") & (h.year == 2025)]
    assert float(row["delta"].iloc[0]) < 0  # the quota cut mines less
    zh = figures.sankey(what, 2024, lang="zh")["data"][0]["node"]["label"]
    assert "采选" in zh and "出口" in zh


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sweep")
    spec = d / "oat.yaml"
    spec.write_text(f"""name: tiny-oat
base: {TINY_PATH}
replications: 2
seed: 2
record: annual
vary:
  - {{name: q, change: {{kind: quota, quota: mining, from: 2024-07-01}}, field: factor,
     mode: oat, delta_frac: 0.3}}
  - {{name: util, path: plants.magnets.utilisation_max_frac, mode: oat, delta_frac: 0.2}}
kpis: [value.group.total, output.stage.magnet]
""", encoding="utf-8")
    assert main(["sweep", str(spec), "--out", str(d / "out")]) == 0
    return d / "out"


def test_tornado_is_ordered_by_swing(sweep: Path) -> None:
    figs = figures.tornado(sweep)
    sens = pd.read_parquet(sweep / "sensitivity.parquet")
    assert len(figs) == sens["kpi"].nunique()
    for fig in figs:
        kpi = fig["layout"]["meta"]["kpi"]
        g = sens[sens["kpi"] == kpi]
        order = fig["data"][0]["y"]
        swings = [float(g.loc[g.parameter == p, "swing"].iloc[0]) for p in order]
        assert swings == sorted(swings, reverse=True)
    dist = figures.distributions(sweep)
    assert len(dist) == 2 and all(d["data"][0]["type"] == "box" for d in dist)


def test_report_command_writes_one_html_file(runs: tuple[Path, Path], sweep: Path,
                                             tmp_path: Path) -> None:
    base, what = runs
    out = tmp_path / "r" / "report.html"
    assert main(["report", str(what), "--html", str(out), "--baseline", str(base)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.count("plotly.js v") >= 1 and "cdn.plot.ly" not in text.split("<body>")[0]
    for cid in ("chart-kpis", "chart-sankey-2024", "chart-sankey-baseline-2025",
                "chart-ts-activity", "chart-elements", "chart-bottlenecks"):
        assert f'id="{cid}"' in text, cid
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left
    s = tmp_path / "sweep.html"
    assert main(["report", str(sweep), "--html", str(s)]) == 0
    st = s.read_text(encoding="utf-8")
    assert 'id="chart-tornado-0"' in st and 'id="chart-dist-1"' in st
    _, ids = render(what, lang="zh")
    assert "chart-sankey-baseline-2024" not in ids


def test_report_command_refuses_a_missing_dir(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "nope"), "--html", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()


def test_report_cards_are_the_results_numbers(runs: tuple[Path, Path]) -> None:
    """A card of one KPI row is that row of the result's summary and difference; a sum is
    the sum of its rows per replication, paired with the baseline's; the HTML shows them."""
    base, what = runs
    cards = result_cards(what, base)
    summ = read_table(what, "summary").set_index(["kpi", "key", "year"])
    diff = read_table(what, "difference").set_index(["kpi", "key", "year"])
    kpis, bk = read_table(what, "kpis"), read_table(base, "kpis")
    assert {"magnet", "separation", "value_total", "exports"} <= {c["id"] for c in cards}
    for c in cards:
        for i, year in enumerate(c["years"]):
            if c["key"] is not None:
                row, d = summ.loc[(c["kpi"], c["key"], year)], diff.loc[(c["kpi"], c["key"], year)]
                assert [c["mean"][i], c["p5"][i], c["p95"][i]] == [row["mean"], row["p5"],
                                                                  row["p95"]], c["id"]
                assert c["delta"][i] == d["mean"] and c["base"][i] == pytest.approx(
                    row["mean"] - d["mean"])
            else:
                def total(k: pd.DataFrame, c: dict = c, year: int = year) -> pd.Series:
                    r = k[(k.kpi == c["kpi"]) & (k.unit == c["sum_of"]) & (k.year == year)]
                    return r.groupby("replication")["value"].sum()
                assert c["mean"][i] == pytest.approx(total(kpis).mean())
                assert c["delta"][i] == pytest.approx((total(kpis) - total(bk)).mean(), abs=1e-9)
    text, _ = render(what, base)
    magnet = next(c for c in cards if c["id"] == "magnet")
    i = magnet["years"].index(2025)  # the quota cut's year, the cards' year
    assert "Headline cards, 2025" in text and "<svg class='spark'" in text
    assert f"data-card='magnet'><div class='card-title' title='output.stage · magnet'>" \
           f"Magnet output</div><div class='card-value'><span class='v' " \
           f"data-value='{magnet['mean'][i]!r}'>" in text
    assert f"data-value='{magnet['delta'][i]!r}'" in text
    zh, _ = render(what, base, lang="zh")
    assert "磁材产量" in zh and "主要指标卡" in zh


def test_why_takes_the_difference_apart(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Two changes: the parts add up to the whole Δ, and the quota cut alone is the Δ of the
    what-if of that change alone, run on its own with the same seed (common random
    numbers)."""
    base, alone = runs
    both = tmp_path / "both"
    assert main(["run", str(TINY_PATH), "--replications", "2", "--seed", "1", "--change",
                 QUOTA, "--change", OUTAGE, "--out", str(both)]) == 0
    w = explain(both, base)
    quota = {c["id"]: c["delta"] for c in result_cards(alone, base)}
    moved = 0
    for c in w["cards"]:
        for k in range(len(c["years"])):
            t = c["total"][k]
            assert t == pytest.approx(c["one"][0][k] + c["one"][1][k] + c["interaction"][k],
                                      abs=1e-9)
            assert c["one"][0][k] == pytest.approx(quota[c["id"]][k], abs=1e-9), c["id"]
            assert c["marginal"][1][k] == pytest.approx(t - c["one"][0][k], abs=1e-9)
            moved += abs(c["one"][1][k]) > 1e-6  # the outage moves some card alone
    assert moved
    out = tmp_path / "why.html"
    assert main(["report", str(both), "--html", str(out)]) == 0
    assert "--why" in out.read_text(encoding="utf-8")  # said how to get the why
    # refused before any run: no baseline, or not the result's baseline
    assert main(["report", str(both), "--html", str(out), "--force", "--why"]) == 2
    assert main(["report", str(both), "--html", str(tmp_path / "n.html"), "--why",
                 "--baseline", str(alone)]) == 2
    assert not (tmp_path / "n.html").exists()
    text, ids = render(both, base, why=w)
    assert "chart-why-magnet" in ids and "interaction" in text and "alone" in text


def test_sweep_charts_have_readable_labels(sweep: Path) -> None:
    torn = figures.tornado(sweep)
    titles = [f["layout"]["title"]["text"] for f in torn]
    assert any("Output value — Total, mean over the years (亿元)" in t for t in titles)
    assert any("Output — Magnets" in t for t in titles)
    dist = figures.distributions(sweep, lang="zh")
    assert "产值 — 合计" in dist[0]["layout"]["title"]["text"]
    names = {b["name"] for b in dist[0]["data"]}
    assert {"基准", "q 下调 (0.7)", "q 上调 (1.3)"} <= names, names
    en = {b["name"] for b in figures.distributions(sweep)[1]["data"]}
    assert {"base", "util low (0.64)", "util high (0.96)"} <= en, en
    assert figures.distributions(sweep)[1]["layout"]["yaxis"]["title"]["text"] == "t"


def test_every_stage_has_an_english_and_a_chinese_label() -> None:
    # the Sankey and the stage charts name stages by these labels (motor and end_product were
    # shown as their ids on the Chinese page)
    from typing import get_args

    from retwin.report.labels import Labels
    from retwin.scenario.schema import Stage

    en, zh = Labels("en"), Labels("zh")
    for stage in get_args(Stage):
        assert en(stage) != stage and zh(stage) != stage, stage
        assert any("\u4e00" <= ch <= "\u9fff" for ch in zh(stage)), stage
