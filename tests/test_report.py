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

QUOTA = '{"kind": "quota", "quota": "mining", "factor": 0.9, "from": "2025-01-01"}'


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
        kpi = fig["layout"]["title"]["text"].split(": ", 1)[1].split(" (")[0]
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
