"""Batch studies run in this process on the tiny model: the dataset, its manifest, resume,
refusals, sensitivity and the ``retwin sweep`` command."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

import retwin
from conftest import REPO, TINY_PATH
from retwin.batch import (
    BatchInterrupted,
    BatchResult,
    SerialExecutor,
    kpi_means,
    prepare_study,
    run_batch,
    sensitivity_table,
)
from retwin.batch.spec import KpiSelector, spec_hash
from retwin.batch.store import StudyDir
from retwin.cli import main

QUOTA = {"kind": "quota", "quota": "mining", "from": "2024-07-01"}
PRICE = {"kind": "price", "material": "prnd_oxide", "from": "2024-06-01"}
KPI_KEYS = ["point", "replication", "kpi", "key", "year"]

GRID: dict[str, Any] = {
    "name": "tiny-grid", "base": str(TINY_PATH), "replications": 3, "seed": 5,
    "chunk_replications": 2,
    "vary": [{"name": "q", "change": QUOTA, "field": "factor", "values": [0.7, 1.0]},
             {"name": "p", "change": PRICE, "field": "factor", "values": [1.0, 1.5]}],
    "kpis": ["value.group.total", "output.stage.magnet@2025"],
}

OAT: dict[str, Any] = {
    "name": "tiny-oat", "base": str(TINY_PATH), "replications": 2, "seed": 2,
    "record": "annual",
    "vary": [{"name": "q", "change": QUOTA, "field": "factor", "mode": "oat", "delta_frac": 0.3},
             {"name": "util", "path": "plants.magnets.utilisation_max_frac", "mode": "oat",
              "delta_frac": 0.2},
             {"name": "p", "change": PRICE, "field": "factor", "mode": "oat",
              "delta_frac": 0.5}],
    "kpis": ["value.group.total", "output.stage.magnet"],
}


def sorted_kpis(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path / "kpis")
    df["point"] = df["point"].astype(str)
    return df.sort_values(KPI_KEYS).reset_index(drop=True)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> BatchResult:
    return run_batch(GRID, tmp_path_factory.mktemp("grid") / "out")


# --- the dataset ----------------------------------------------------------------------------


def test_layout_and_manifest(grid: BatchResult) -> None:
    out = grid.path
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "retwin-sweep/1" and m["status"] == "complete"
    assert m["spec_sha256"] == spec_hash(prepare_study(GRID).spec)
    assert m["spec"]["vary"][0]["values"] == [0.7, 1.0]
    assert m["versions"]["retwin"] == retwin.__version__ and "pyarrow" in m["versions"]
    assert m["base"]["name"] == "tiny" and len(m["base"]["scenario_sha256"]) == 64
    assert m["counts"] == {"points": 4, "points_done": 4, "runs": 12, "runs_done": 12}
    assert m["tables"] == ["kpis", "monthly"]
    p0 = m["points"][0]
    assert p0["values"] == {"q": 0.7, "p": 1.0} and p0["seed"] == 5
    assert p0["changes"] == [{**QUOTA, "factor": 0.7}, {**PRICE, "factor": 1.0}]
    assert p0["status"] == "done" and p0["chunks"] == 2
    for p in m["points"]:
        for table in ("kpis", "monthly"):
            for chunk in (0, 1):
                assert (out / table / f"point={p['point']}" / f"part-{chunk}.parquet").is_file()
    assert not (out / ".tmp").exists()


def test_read_with_plain_pyarrow_and_pandas(grid: BatchResult) -> None:
    kpis = pd.read_parquet(grid.path / "kpis")
    assert list(kpis.columns) == ["kpi", "key", "year", "value", "unit", "replication", "point"]
    one = retwin.run(retwin.load_scenario(TINY_PATH), seed=5).kpis
    assert len(kpis) == 4 * 3 * len(one)
    points = pd.read_parquet(grid.path / "points.parquet")
    assert list(points.columns) == ["point", "index", "role", "parameter", "seed", "q", "p",
                                    "changes"]
    joined = kpis.astype({"point": str}).merge(points, on="point")
    total = joined[(joined.kpi == "value.group") & (joined.key == "total")]
    assert set(total.groupby(["q", "p"]).size()) == {3 * 2}  # 3 replications x 2 years
    dset = ds.dataset(grid.path / "monthly", format="parquet", partitioning="hive")
    assert set(dset.schema.names) == {"month", "kind", "id", "value", "replication", "point"}


def test_only_label_columns_are_dictionary_encoded(grid: BatchResult) -> None:
    """Run results (float columns) are written without a dictionary, which a column of
    results rarely fills and which would cost about half of the write; labels keep one."""
    import pyarrow.parquet as pq

    part = next((grid.path / "kpis").rglob("*.parquet"))
    meta = pq.ParquetFile(part).metadata.row_group(0)
    enc = {meta.column(i).path_in_schema: meta.column(i).encodings
           for i in range(meta.num_columns)}
    assert not any("DICTIONARY" in e for e in enc["value"])
    for label in ("kpi", "key", "unit"):
        assert any("DICTIONARY" in e for e in enc[label]), label


def test_number_and_date_columns_carry_bounds_and_labels_none(grid: BatchResult) -> None:
    """Min/max statistics, by which a reader skips files, are written for the number and
    date columns (years, replications, values, months); the label columns span every label
    in each file, so their bounds could skip nothing and are not computed."""
    import pyarrow.parquet as pq

    for table in ("kpis", "monthly"):
        part = next((grid.path / table).rglob("*.parquet"))
        meta = pq.ParquetFile(part).metadata.row_group(0)
        stats = {meta.column(i).path_in_schema: meta.column(i).statistics
                 for i in range(meta.num_columns)}
        for name, st in stats.items():
            bounded = name not in ("kpi", "key", "unit", "kind", "id")
            assert (st is not None and st.has_min_max) == bounded, (table, name)
    years = pq.ParquetFile(part).metadata.row_group(0).column(0).statistics
    assert years.min == dt.date(2024, 1, 1)  # the months of the run


def test_readers_need_no_retwin(grid: BatchResult) -> None:
    code = ("import sys; sys.modules['retwin'] = None; import pandas as pd; "
            "import pyarrow.dataset as ds; "
            f"k = pd.read_parquet({str(grid.path / 'kpis')!r}); "
            f"m = ds.dataset({str(grid.path / 'monthly')!r}, partitioning='hive').to_table(); "
            "print(len(k), k['point'].nunique(), m.num_rows)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    n_kpis, n_points, n_monthly = map(int, done.stdout.split())
    assert n_points == 4 and n_kpis == len(grid.to_pandas()) and n_monthly > 0


def test_duckdb_reads_the_dataset(grid: BatchResult) -> None:
    import duckdb  # the dev extra installs it

    rows = duckdb.sql(
        f"SELECT point, avg(value) FROM read_parquet('{grid.path}/kpis/*/*.parquet', "
        "hive_partitioning = true) WHERE kpi = 'value.group' AND key = 'total' "
        "GROUP BY point").fetchall()
    assert len(rows) == 4


def test_values_equal_single_runs(grid: BatchResult, tiny: retwin.Scenario) -> None:
    pt = grid.manifest["points"][1]
    c = retwin.prepare(tiny, pt["changes"])
    kpis = grid.to_pandas(filter={"point": pt["point"]})
    monthly = grid.to_pandas(filter={"point": pt["point"], "kind": ["activity", "stock",
                                                                    "value", "price"]},
                             table="monthly")
    for r in range(3):
        res = retwin.run(c, seed=pt["seed"], replication=r)
        mine = kpis[kpis.replication == r].drop(columns=["replication", "point"])
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), res.kpis,
                                      check_dtype=False)
        m = monthly[monthly.replication == r]
        act = m[m.kind == "activity"].pivot(index="id", columns="month", values="value")
        want = np.add.reduceat(res.activity, c.month_start_day, axis=1)
        np.testing.assert_array_equal(act.loc[c.plant_ids].to_numpy(), want)
        stock = m[m.kind == "stock"].pivot(index="id", columns="month", values="value")
        ends = np.append(c.month_start_day[1:], c.n_days) - 1
        pools = [f"{a}/{b}" for a, b in c.pool_keys]
        np.testing.assert_array_equal(stock.loc[pools].to_numpy(), res.stock[:, ends])
        val = m[m.kind == "value"].pivot(index="id", columns="month", values="value")
        np.testing.assert_array_equal(val.loc[c.plant_ids].to_numpy(), res.value_month)


def test_monthly_rows_are_the_runs_monthly_series(grid: BatchResult,
                                                  tiny: retwin.Scenario) -> None:
    pt = grid.manifest["points"][2]
    res = retwin.run(retwin.prepare(tiny, pt["changes"]), seed=pt["seed"], replication=1)
    mine = grid.to_pandas(filter={"point": pt["point"], "replication": 1}, table="monthly")
    canon = res.monthly()
    assert list(mine["kind"][: len(canon)]) == list(canon["kind"])
    assert list(mine["id"][: len(canon)]) == list(canon["id"])
    np.testing.assert_array_equal(mine["value"][: len(canon)], canon["value"])
    value = mine[len(canon):]
    assert set(value["kind"]) == {"value"}
    np.testing.assert_array_equal(value["value"], res.value_month.reshape(-1))


def test_the_python_handle(grid: BatchResult) -> None:
    again = BatchResult.open(grid.path)
    assert again.complete and "4/4 points" in repr(again)
    assert again.dataset.count_rows() == len(again.to_pandas())
    total = again.to_pandas(columns=["point", "value"], filter={"kpi": "value.group",
                                                               "key": "total"})
    assert list(total.columns) == ["point", "value"] and len(total) == 4 * 3 * 2
    summ = again.summary({"kpi": "value.group", "key": "total"})
    assert set(summ.columns) >= {"point", "year", "mean", "p5", "p50", "p95", "n", "q", "p"}
    assert (summ["n"] == 3).all() and (summ["p5"] <= summ["p95"]).all()
    means = again.kpi_means()
    assert set(means["kpi"]) == {"value.group.total", "output.stage.magnet@2025"}
    with pytest.raises(retwin.RetwinError, match="no 'daily' table"):
        again.table_dataset("daily")
    with pytest.raises(retwin.RetwinError, match="one-at-a-time"):
        again.sensitivity()
    with pytest.raises(retwin.RetwinError, match="no study"):
        BatchResult.open(grid.path / "kpis")


def test_chunking_and_seeding(tmp_path: Path, grid: BatchResult) -> None:
    """Results do not depend on how replications are split into tasks; independent seeding
    gives each point its own seed, run as retwin.run would."""
    one = run_batch({**GRID, "chunk_replications": 1}, tmp_path / "c1")
    pd.testing.assert_frame_equal(sorted_kpis(one.path), sorted_kpis(grid.path))
    ind = run_batch({**GRID, "seeding": "independent", "replications": 1,
                     "record": "annual"}, tmp_path / "ind")
    seeds = list(ind.points["seed"])
    assert len(set(seeds)) == 4 and 5 not in seeds
    pt = ind.manifest["points"][2]
    res = retwin.run(retwin.load_scenario(TINY_PATH), seed=pt["seed"], changes=pt["changes"])
    got = ind.to_pandas(filter={"point": pt["point"], "kpi": "value.group", "key": "total"})
    np.testing.assert_array_equal(
        got["value"].to_numpy(),
        res.kpis.query("kpi == 'value.group' and key == 'total'")["value"].to_numpy())


def test_daily_record(tmp_path: Path, tiny: retwin.Scenario) -> None:
    res = run_batch({"name": "d", "base": str(TINY_PATH), "seed": 1}, tmp_path / "d",
                    record="daily")
    assert res.tables == ["kpis", "monthly", "daily"]
    daily = res.to_pandas(filter={"kind": "activity"}, table="daily")
    run = retwin.run(tiny, seed=1)
    want = run.series().query("kind == 'activity'")["value"].to_numpy()
    np.testing.assert_array_equal(daily["value"].to_numpy(), want)


# --- resume and refusals --------------------------------------------------------------------


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path: Path,
                                                               grid: BatchResult) -> None:
    out = tmp_path / "r"
    seen: list[int] = []

    def stop_after_three(p: Any) -> None:
        seen.append(p.runs_done)
        if len(seen) == 4:  # the start, then three chunks
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as exc:
        run_batch(GRID, out, progress=stop_after_three)
    assert (exc.value.points_done, exc.value.points_total) == (1, 4)
    assert (exc.value.runs_done, exc.value.runs_total) == (5, 12)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["counts"]["runs_done"] == 5
    assert not (out / ".tmp").exists()
    kept = sorted((out / "kpis").rglob("*.parquet"))
    assert len(kept) == 3
    stamps = {f: f.stat().st_mtime_ns for f in kept}
    starts: list[int] = []
    res = run_batch(GRID, out, progress=lambda p: starts.append(p.runs_at_start))
    assert starts[0] == 5 and res.complete
    assert {f: f.stat().st_mtime_ns for f in kept} == stamps  # finished chunks not redone
    pd.testing.assert_frame_equal(sorted_kpis(out), sorted_kpis(grid.path))
    # a third run has nothing to do
    again = run_batch(GRID, out)
    assert again.manifest["counts"]["runs_done"] == 12


def test_a_damaged_or_foreign_file_is_redone(tmp_path: Path, grid: BatchResult) -> None:
    out = tmp_path / "d"
    run_batch(GRID, out)
    pid = grid.manifest["points"][0]["point"]
    target = out / "kpis" / f"point={pid}" / "part-1.parquet"
    target.write_bytes(b"not parquet")
    (out / ".tmp").mkdir()
    (out / ".tmp" / "leftover").write_bytes(b"half a file")
    runs: list[int] = []
    run_batch(GRID, out, progress=lambda p: runs.append(p.runs_done))
    assert runs[0] == 11  # only replication 2 of point 0 is run again
    pd.testing.assert_frame_equal(sorted_kpis(out), sorted_kpis(grid.path))
    assert not (out / ".tmp").exists()


def test_another_spec_is_refused(tmp_path: Path, grid: BatchResult) -> None:
    out = tmp_path / "x"
    run_batch({**GRID, "replications": 1, "record": "annual"}, out)
    with pytest.raises(retwin.ScenarioError, match=r"holds the results of another study "
                       r"\('tiny-grid', spec sha256 [0-9a-f]{12}\); this spec hashes to"):
        run_batch({**GRID, "replications": 2, "record": "annual"}, out)
    with pytest.raises(retwin.ScenarioError, match="another study"):
        run_batch({**GRID, "replications": 1}, out)  # record differs: another dataset
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(retwin.ScenarioError, match="is not empty and holds no study manifest"):
        run_batch(GRID, other)


def test_a_changed_base_model_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(TINY_PATH.read_text())
    spec = {"name": "b", "base": str(base), "replications": 1, "record": "annual"}
    run_batch(spec, tmp_path / "o")
    tree = yaml.safe_load(base.read_text())
    tree["plants"][0]["capacity_tpa"] = 30000
    base.write_text(yaml.safe_dump(tree))
    with pytest.raises(retwin.ScenarioError, match="the base model changed since the study"):
        run_batch(spec, tmp_path / "o")


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    study = prepare_study({"name": "l", "base": str(TINY_PATH), "record": "annual"})
    kw: dict[str, Any] = dict(spec=study.spec.model_dump(mode="json"),
                              spec_sha256=study.spec_sha256,
                              base={"scenario_sha256": study.base_hash}, versions={},
                              points=study.points, tasks=study.tasks, kinds=study.kinds,
                              names=study.names)
    with StudyDir(tmp_path / "l", **kw), pytest.raises(retwin.RetwinError,
                                                       match="another sweep is writing"):
        StudyDir(tmp_path / "l", **kw).open()


# --- sensitivity ----------------------------------------------------------------------------


def test_one_at_a_time_study_ranks_parameters(tmp_path: Path) -> None:
    res = run_batch(OAT, tmp_path / "oat")
    sens = pd.read_parquet(tmp_path / "oat" / "sensitivity.parquet")
    pd.testing.assert_frame_equal(sens, res.sensitivity())
    assert list(sens["kpi"].unique()) == ["value.group.total", "output.stage.magnet"]
    for _, grp in sens.groupby("kpi"):
        assert list(grp["rank"]) == [1, 2, 3]
        assert list(grp["swing"]) == sorted(grp["swing"], reverse=True)
    mag = sens[sens.kpi == "output.stage.magnet"].set_index("parameter")
    assert mag.loc["util", "rank"] == 1  # the magnet plant's own ceiling moves its output most
    assert mag.loc["p", "swing"] == 0  # prices do not move quantities (no elasticity)
    assert (mag.loc["util", "value_low"], mag.loc["util", "value_high"]) == (0.64, 0.96)
    # the swing is the mean over replications at high minus at low, from the kpis table
    df = res.to_pandas()
    pts = res.points.set_index(["parameter", "role"])["point"]
    sel = df[(df.kpi == "output.stage") & (df.key == "magnet")]
    per_point = sel.groupby(["point", "replication"], observed=True)["value"].mean().groupby(
        level="point", observed=True).mean()
    hi, lo = per_point[pts[("util", "high")]], per_point[pts[("util", "low")]]
    assert mag.loc["util", "swing"] == pytest.approx(abs(hi - lo), rel=1e-12)


def test_sensitivity_table_alone() -> None:
    points = pd.DataFrame({
        "point": ["b", "l1", "h1", "l2", "h2"], "role": ["base", "low", "high", "low", "high"],
        "parameter": [None, "x", "x", "y", "y"], "x": [1.0, 0.9, 1.1, 1.0, 1.0],
        "y": [5.0, 5.0, 5.0, 4.0, 6.0]})
    means = pd.DataFrame({"point": ["b", "l1", "h1", "l2", "h2"], "kpi": "k",
                          "value": [10.0, 9.0, 12.0, 2.0, 30.0]})
    t = sensitivity_table(points, means)
    assert list(t["parameter"]) == ["y", "x"] and list(t["rank"]) == [1, 2]
    y = t.iloc[0]
    assert (y.value_low, y.value_base, y.value_high) == (4.0, 5.0, 6.0)
    assert (y.kpi_low, y.kpi_base, y.kpi_high, y.delta_low, y.delta_high, y.swing) == (
        2.0, 10.0, 30.0, -8.0, 20.0, 28.0)
    missing = sensitivity_table(points, means[means.point != "h2"])
    assert list(missing["parameter"]) == ["x", "y"] and np.isnan(missing.iloc[1].swing)
    with pytest.raises(ValueError, match="exactly one base point"):
        sensitivity_table(points[points.role != "base"], means)


def test_kpi_means_alone() -> None:
    kpis = pd.DataFrame({
        "point": ["a"] * 4 + ["b"] * 4, "kpi": "value.group", "key": "total",
        "year": [2024, 2025] * 4, "replication": [0, 0, 1, 1] * 2,
        "value": [1.0, 3.0, 5.0, 7.0, 10.0, 10.0, 20.0, 20.0]})
    m = kpi_means(kpis, [KpiSelector.parse("value.group.total"),
                         KpiSelector.parse("value.group.total@2025")])
    got = {(r.point, r.kpi): r.value for r in m.itertuples()}
    assert got == {("a", "value.group.total"): 4.0, ("b", "value.group.total"): 15.0,
                   ("a", "value.group.total@2025"): 5.0, ("b", "value.group.total@2025"): 15.0}


# --- the command line -----------------------------------------------------------------------


def write_spec(tmp_path: Path, tree: dict[str, Any], name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_sweep_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, {**GRID, "base": "tiny"})
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert f"sweep tiny-grid: 4 points, 12 runs on this process -> {out}" in stderr
    assert stderr.count(" done in ") == 4 and "point 4/4 " in stderr  # one line per point
    assert "tiny-grid: 4 points, 12 runs in" in stdout and "KPIs per point" in stdout
    assert BatchResult.open(out).complete
    assert main(["sweep", str(spec), "--out", str(out)]) == 0  # resumed: nothing to do
    assert "4 points (12 runs) already done, kept" in capsys.readouterr().err


def test_sweep_prints_the_sensitivity_table(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, OAT)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 0
    stdout = capsys.readouterr().out
    assert "Sensitivity of output.stage.magnet" in stdout and "util" in stdout


@pytest.mark.parametrize(("tree", "message"), [
    ({"vary": [{"name": "q", "change": QUOTA, "field": "factor", "mode": "sample",
                "range": {"low": 1, "high": 0.5}, "n": 3}]},
     "error: vary[0](q).range: empty range: low(=1) must be < high(=0.5)"),
    ({"vary": [{"path": "plants.nope.capacity_tpa", "values": [1]}]},
     "error: vary[0](plants.nope.capacity_tpa).path: 'plants.nope.capacity_tpa': no item "
     "'nope'"),
    ({"vary": [{"change": {"kind": "trade", "market": "dy_in", "side": "export"},
                "field": "factor", "values": [0.5]}]},
     "error: vary[0](trade.dy_in.factor).side: market 'dy_in' has no export side"),
])
def test_sweep_bad_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                tree: dict[str, Any], message: str) -> None:
    spec = write_spec(tmp_path, {"name": "bad", "base": "tiny", **tree})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "o").exists()  # nothing written


def test_sweep_other_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["sweep", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "study spec" in capsys.readouterr().err
    spec = write_spec(tmp_path, {"name": "s", "base": "tiny", "record": "annual"})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers(=0) must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(spec), "--out", "o", "--workers", "2", "--dask", "tcp://x:1"])
    assert exc.value.code == 2
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 0
    other = write_spec(tmp_path, {"name": "s", "base": "tiny", "seed": 1}, "other.yaml")
    assert main(["sweep", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "holds the results of another study" in capsys.readouterr().err
    monkeypatch.setenv("RETWIN_DASK_CONNECT_TIMEOUT_S", "0.5")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "d"), "--dask",
                 "tcp://127.0.0.1:9"]) == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_sweep_interrupted_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as the third chunk is put in place: exit 130; the count names the chunks in
    place, and the third chunk's staged files are gone with the study's ``.tmp``."""
    spec = write_spec(tmp_path, {**GRID, "base": "tiny"})
    real = StudyDir.commit
    calls: list[int] = []

    def commit_then_stop(self: StudyDir, task: Any, staged: Any) -> bool:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, task, staged)

    monkeypatch.setattr(StudyDir, "commit", commit_then_stop)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--daily"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 1 of 4 points done (3 of 12 runs)" in err
    assert "run the same command again to resume" in err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["spec"]["record"] == "daily" and manifest["counts"]["runs_done"] == 3
    assert len(list((tmp_path / "o" / "kpis").rglob("*.parquet"))) == 2
    assert not (tmp_path / "o" / ".tmp").exists()


def test_example_studies_expand_and_apply(tmp_path: Path) -> None:
    """Every study in models/studies expands, and each of its parameter values applies to
    its base model (the runs themselves are in the slow smoke test)."""
    from retwin.batch import expand_points, load_spec
    from retwin.batch.study import _check_parameters, _load_base

    files = sorted((REPO / "models" / "studies").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        spec, here = load_spec(f)
        base = _load_base(spec, here)
        if spec.changes:
            base = retwin.apply_changes(base, spec.changes)
        points = expand_points(spec, base)
        assert _check_parameters(spec, base, points) == [], f.name
    assert os.path.isfile(REPO / "models" / "studies" / "sensitivity-oat.yaml")


# --- what a worker holds --------------------------------------------------------------------

SMALL: dict[str, Any] = {"name": "tiny-mc", "base": str(TINY_PATH), "replications": 3,
                         "record": "annual",
                         "seed": 5}


def test_a_worker_reporting_kpis_needs_neither_pandas_nor_pyarrow() -> None:
    """A task's KPIs travel as arrays under one set of row labels; the study's process makes
    the table, equal to the runs' KPI frames (a worker saves ~100 MB without pyarrow)."""
    from retwin.batch.tables import SCHEMAS

    study = prepare_study(SMALL)
    task = study.tasks[0]
    code = ("import sys, pickle\n"
            "sys.modules['pandas'] = sys.modules['pyarrow'] = None\n"
            "runner, task = pickle.loads(sys.stdin.buffer.read())\n"
            "sys.stdout.buffer.write(pickle.dumps(runner(task)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO,
                          input=pickle.dumps((study.runner(), task)), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    got = pickle.loads(proc.stdout).table("kpis")
    c = retwin.prepare(study.base)
    frames = [retwin.run(c, seed=task.seed, replication=r).kpis.assign(replication=r)
              for r in range(task.first, task.stop)]
    import pyarrow as pa

    want = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=SCHEMAS["kpis"],
                                preserve_index=False)
    assert got.schema.equals(SCHEMAS["kpis"]) and got.num_rows == want.num_rows > 0
    for col in ("kpi", "key", "year", "unit", "replication"):
        assert got[col].equals(want[col]), col
    assert np.array_equal(got["value"].to_numpy(), want["value"].to_numpy(), equal_nan=True)


def test_a_task_leaves_no_run_behind() -> None:
    """A run's model sits in reference cycles; a task frees each run as it ends rather than
    leaving it to the next full collection (a worker's memory grew ~25 MB per 100 runs)."""
    import gc

    from retwin.engine.model import ChainModel

    study = prepare_study(SMALL)
    runner = study.runner()
    gc.collect()
    gc.disable()  # as if no automatic collection happened during the task
    try:
        runner(study.tasks[0])
        alive = sum(isinstance(o, ChainModel) for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0


def test_selected_kpis_are_checked_without_running_the_base_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A study's KPI selectors are checked against the rows a run would report (they depend
    on the compiled model only): the study's process does not run the model for it."""
    from retwin.engine.model import ChainModel

    def no_run(self: ChainModel) -> None:
        raise AssertionError("the base model was run")

    monkeypatch.setattr(ChainModel, "run", no_run)
    assert prepare_study(GRID).spec.kpis
    with pytest.raises(retwin.ScenarioError, match=r"kpis\[1\].*no key 'nowhere'"):
        prepare_study({**GRID, "kpis": ["value.group.total", "output.stage.nowhere"]})


# --- what the study's process does --------------------------------------------------------------


def test_a_study_and_its_summary_need_no_pandas(tmp_path: Path) -> None:
    """Running a study (KPIs only) and printing its KPIs per point load no pandas in the
    study's process: its tables are made from their buffers (``pyarrow.array`` would load
    pandas) and the summary from the results as they came, not read back."""
    spec = write_spec(tmp_path, {**GRID, "base": "tiny", "record": "annual"})
    out = tmp_path / "o"
    code = ("import sys\n"
            "sys.modules['pandas'] = None  # any import of it fails\n"
            "from retwin.cli import main\n"
            f"code = main(['sweep', {str(spec)!r}, '--out', {str(out)!r}])\n"
            "assert 'pyarrow.dataset' not in sys.modules\n"
            "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "KPIs per point" in proc.stdout and "–" not in proc.stdout
    res = BatchResult.open(out)
    assert res.complete and len(res.to_pandas()) > 0


def _kpi_rows(point: str, reps: list[int], values: np.ndarray) -> Any:
    from retwin.batch.expand import Task
    from retwin.batch.tables import ChunkResult, KpiRows

    rows = KpiRows(kpi=["value.group"] * 3 + ["output.stage"], key=["total"] * 3 + ["magnet"],
                   year=np.array([2024, 2025, 2026, 2025]), unit=["亿元"] * 3 + ["t"],
                   values=values, replications=np.array(reps, np.int64))
    task = Task(point=0, point_id=point, changes=(), seed=1, chunk=reps[0] // 2,
                first=reps[0], stop=reps[-1] + 1)
    return ChunkResult(task, {"kpis": rows}, 0.0, "here"), rows


def test_the_tally_of_kpis_equals_the_means_of_the_written_rows() -> None:
    """Per point and selector, the tally of the chunks as they arrive (in any order, with
    NaN values and a KPI the point does not report) equals ``kpi_means`` of the rows the
    chunks are written as; a point with a replication missing gives no tally at all."""
    from retwin.batch.study import KpiTally

    rng = np.random.default_rng(3)
    selectors = [KpiSelector.parse(k) for k in ("value.group.total", "value.group.total@2025",
                                                "output.stage.magnet", "output.stage.mine")]
    chunks = []
    for point in ("a", "b"):
        for first in (0, 2, 4):
            values = rng.normal(100, 30, (2, 4))
            if point == "b" and first == 2:
                values[0, 1] = values[1, :] = np.nan
            chunks.append(_kpi_rows(point, [first, first + 1], values))
    tally = KpiTally(selectors, 6)
    for i in (3, 0, 5, 1, 4, 2):
        tally.add(chunks[i][0])
    got = tally.means(["a", "b"])
    frames = []
    for res, rows in chunks:
        t = rows.table().to_pandas()
        frames.append(t.assign(point=res.task.point_id))
    want = kpi_means(pd.concat(frames, ignore_index=True), selectors)
    assert got is not None
    assert {(p, k) for p, d in got.items() for k in d} == {
        (r.point, r.kpi) for r in want.itertuples()}  # output.stage.mine: no rows, no mean
    for r in want.itertuples():
        assert got[r.point][r.kpi] == pytest.approx(r.value, rel=1e-13, nan_ok=True), r
    short = KpiTally(selectors, 6)
    for res, _ in chunks[:5]:
        short.add(res)
    assert short.means(["a", "b"]) is None and short.means(["a"]) is not None


def test_point_means_come_from_the_run_or_from_the_dataset(tmp_path: Path,
                                                          grid: BatchResult) -> None:
    """After a study, its KPIs per point (from its results as they came) equal those read
    back from its dataset, which a resumed study with nothing left to run gives."""
    import shutil

    assert grid._means is not None
    shutil.copytree(grid.path, tmp_path / "again")
    resumed = run_batch(GRID, tmp_path / "again")
    assert resumed._means is None
    got, want = grid.point_means(), resumed.point_means()
    assert got.keys() == want.keys() == set(grid.points["point"])
    for point, means in want.items():
        assert got[point] == pytest.approx(means, rel=1e-13)
    assert set(want[grid.points["point"][0]]) == set(GRID["kpis"])


def test_workers_start_before_the_output_folder_is_opened(tmp_path: Path) -> None:
    """A study starts its executor's workers (they load the kernels) before it prepares the
    output folder, and runs its tasks with the function they were started for; a refused
    folder stops the workers it started."""
    from retwin.batch import SerialExecutor
    from retwin.batch.store import StudyDir

    calls: list[str] = []
    opened: list[str] = []

    class Recording(SerialExecutor):
        def start(self, fn: Any) -> None:
            calls.append(f"start {fn.cache_key}")

        def map_unordered(self, fn: Any, items: Any, **kw: Any) -> Any:
            calls.append(f"map {fn.cache_key}")
            return super().map_unordered(fn, items, **kw)

        def abort(self) -> None:
            calls.append("abort")

    open_ = StudyDir.open

    def spy(self: StudyDir) -> None:
        opened.append(calls[-1] if calls else "")
        open_(self)

    small = {**GRID, "vary": GRID["vary"][:1], "replications": 1}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StudyDir, "open", spy)
        res = run_batch(small, tmp_path / "o", executor=Recording())
        assert res.complete
        assert calls[0].startswith("start ") and calls[1] == "map " + calls[0][6:]
        assert opened == [calls[0]]
        calls.clear()
        (tmp_path / "x").write_text("not a folder")
        with mp.context() as mp2:
            mp2.setattr("retwin.batch.study.make_executor", lambda *a, **k: Recording())
            with pytest.raises(retwin.OutputError):
                run_batch(small, tmp_path / "x")
        assert calls[0].startswith("start ") and calls[1:] == ["abort"]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_last_tasks_are_split_and_their_parts_cover_them(workers: int) -> None:
    """With several workers, each of the last ``workers`` tasks runs as parts of consecutive
    replications that cover it exactly; the other tasks (and every task of one worker) run
    whole."""
    from retwin.batch.study import TAIL_PARTS, split_tail

    tasks = prepare_study({**GRID, "replications": 7, "chunk_replications": 3}).tasks
    assert {t.runs for t in tasks[-3:]} == {1, 3}  # the last chunk of a point is short
    units = split_tail(tasks, workers)
    n_split = 0 if workers == 1 else workers
    assert units[:len(tasks) - n_split] == tasks[:len(tasks) - n_split]
    for task in tasks[len(tasks) - n_split:]:
        parts = [u for u in units if (u.point_id, u.chunk) == (task.point_id, task.chunk)]
        assert len(parts) == min(TAIL_PARTS, task.runs)
        assert [p.first for p in parts] == [task.first] + [p.stop for p in parts[:-1]]
        assert parts[-1].stop == task.stop and all(p.runs >= 1 for p in parts)
        assert all(dataclasses.replace(p, first=task.first, stop=task.stop) == task
                   for p in parts)


class _InPieces(SerialExecutor):
    """Tasks in this process, handed out as to two workers: the last two run in pieces."""

    workers = 2


class _InPiecesStudyWrites(_InPieces):
    tasks_write = False


def _part_names(out: Path, table: str = "kpis") -> set[str]:
    return {f.relative_to(out / table).as_posix() for f in (out / table).rglob("*.parquet")}


@pytest.mark.parametrize("executor", [_InPieces, _InPiecesStudyWrites])
def test_a_chunk_run_in_pieces_is_stored_as_its_pieces_files(
        tmp_path: Path, grid: BatchResult, executor: type[SerialExecutor]) -> None:
    """The last chunks of a study on two workers run in pieces; each piece is written as
    files of its own, named by its first replication's offset in the chunk, whoever writes
    them (the task or the study). Read in their names' order, the files hold the rows, in
    the order, of the chunk's one file; the tallied KPIs are the same. A resumed study
    keeps a chunk done in pieces (on any number of workers)."""
    from retwin.batch.study import split_tail

    res = run_batch(GRID, tmp_path / "o", executor=executor())
    out = res.path
    study = prepare_study(GRID)
    pieces = [u for u in split_tail(study.tasks, 2) if u not in study.tasks]
    assert len(pieces) == 2  # the last chunk of 2 runs is run as 2 pieces of 1 (the very
    # last chunk, 1 run, cannot be cut)
    last = study.tasks[-2]
    names = _part_names(out)
    assert {f"point={last.point_id}/part-{last.chunk}.0.parquet",
            f"point={last.point_id}/part-{last.chunk}.1.parquet"} <= names
    assert f"point={last.point_id}/part-{last.chunk}.parquet" not in names
    assert len(names) == len(study.tasks) + 1
    for table in ("kpis", "monthly"):  # rows and their order, as one file per chunk
        pd.testing.assert_frame_equal(pd.read_parquet(out / table),
                                      pd.read_parquet(grid.path / table), check_exact=True)
    assert res.point_means() == grid.point_means()  # tallied as the pieces came
    assert BatchResult(out).point_means() == BatchResult(grid.path).point_means()
    runs: list[int] = []
    again = run_batch(GRID, out, progress=lambda p: runs.append(p.runs_at_start))
    assert again.complete and runs[0] == 12 and _part_names(out) == names


def test_an_unfinished_chunk_s_pieces_are_removed_and_run_again(tmp_path: Path,
                                                                grid: BatchResult) -> None:
    """A study stopped between two pieces of a chunk leaves the first piece's files; a
    resumed study removes them and runs the chunk again (whole, on one worker): no row
    stands twice, and the dataset equals an uninterrupted study's."""
    out = tmp_path / "o"
    study = prepare_study(GRID)
    last = study.tasks[-2]
    seen: list[Any] = []

    def stop_after_one_piece(p: Any) -> None:
        seen.append(p)
        if len(seen) == len(study.tasks):  # the start, the 6 chunks run whole, one piece
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):
        run_batch(GRID, out, executor=_InPieces(), progress=stop_after_one_piece)
    piece = f"point={last.point_id}/part-{last.chunk}.0.parquet"
    assert piece in _part_names(out) and piece in _part_names(out, "monthly")
    runs: list[int] = []
    res = run_batch(GRID, out, progress=lambda p: runs.append(p.runs_at_start))
    assert res.complete and runs[0] == 12 - 2 - 1  # the chunk in pieces and the last one
    names = _part_names(out)
    assert piece not in names and f"point={last.point_id}/part-{last.chunk}.parquet" in names
    for table in ("kpis", "monthly"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table),
                                      pd.read_parquet(grid.path / table), check_exact=True)


def test_a_piece_that_is_not_one_of_its_chunk_is_refused(tmp_path: Path) -> None:
    """A piece's name comes from its chunk: replications outside the chunk (or of another
    chunk) are refused, naming them."""
    from retwin.batch.store import piece_name

    task = prepare_study({**GRID, "replications": 12, "chunk_replications": 12}).tasks[0]
    assert piece_name(task, task) == ""
    assert piece_name(task, dataclasses.replace(task, first=3, stop=6)) == ".03"
    with pytest.raises(retwin.RetwinError, match=r"replications 10\.\.12 are not a piece"):
        piece_name(task, dataclasses.replace(task, first=10, stop=13))
    with pytest.raises(retwin.RetwinError, match="not a piece"):
        piece_name(task, dataclasses.replace(task, chunk=1, first=3, stop=6))


# --- who writes a chunk's files -------------------------------------------------------------


class _StudyWrites(SerialExecutor):
    """Tasks in this process that leave their files to the study (as on Dask)."""

    tasks_write = False


def _all_tables(path: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table, keys in (("kpis", KPI_KEYS), ("monthly", ["point", "replication", "kind", "id",
                                                         "month"]),
                        ("daily", ["point", "replication", "kind", "id", "date"])):
        if (path / table).is_dir():
            df = pd.read_parquet(path / table).astype({"point": str})
            out[table] = df.sort_values(keys).reset_index(drop=True)
    return out


def _assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = _all_tables(a), _all_tables(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)


def test_a_study_writes_its_files_itself_unless_its_tasks_do(
        tmp_path: Path, grid: BatchResult) -> None:
    """An executor whose tasks do not write (Dask: they run where this process's files are
    not; local processes with a core to spare) gets plain tasks and their tables back, and
    the study writes each chunk; one whose tasks write gets tasks that write their own
    files. The datasets are the same, value for value, and so are the tallied KPIs."""
    from retwin.batch import SerialExecutor, Task
    from retwin.batch.tables import PartTask

    seen: dict[str, list[type]] = {}

    class Remote(SerialExecutor):
        tasks_write = False

        def map_unordered(self, fn: Any, items: Any, **kw: Any) -> Any:
            items = list(items)
            seen[type(self).__name__] = [type(i) for i in items]
            return super().map_unordered(fn, items, **kw)

    class Local(Remote):
        tasks_write = True

    writes: list[int] = []
    real = StudyDir.write_chunk

    def counted(self: StudyDir, result: Any) -> bool:
        writes.append(1)
        return real(self, result)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StudyDir, "write_chunk", counted)
        remote = run_batch(GRID, tmp_path / "remote", executor=Remote())
        assert len(writes) == 8  # 4 points x 2 chunks, each written by the study
        local = run_batch(GRID, tmp_path / "local", executor=Local())
        assert len(writes) == 8  # none more: the tasks wrote their own
    assert set(seen["Remote"]) == {Task}
    assert set(seen["Local"]) == {PartTask}
    _assert_same_tables(grid.path, remote.path)
    _assert_same_tables(grid.path, local.path)
    assert remote.point_means() == local.point_means() == grid.point_means()


def test_a_task_s_files_stand_only_once_the_study_puts_them_in_place(tmp_path: Path,
                                                                    grid: BatchResult) -> None:
    """A task that writes its own files leaves them under the study's ``.tmp`` (invisible to
    readers and to a resumed study) until the study's process commits them; a commit takes
    only files staged in that ``.tmp``, in the study's table order."""
    from retwin.batch.tables import PartTask

    out = tmp_path / "o"
    seen: list[int] = []

    def stop_at_start(p: Any) -> None:
        seen.append(p.runs_done)
        raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):
        run_batch(GRID, out, progress=stop_at_start)
    study = prepare_study(GRID)
    task = study.tasks[0]
    res = study.runner()(PartTask(task, str(out), study.spec_sha256,
                                  tuple(study.spec.selectors)))
    assert [k for k, _ in res.staged] == ["monthly", "kpis"] and not res.tables
    assert all(Path(name).parent == out / ".tmp" for _, name in res.staged)
    assert not list(out.glob("*/point=*/*.parquet"))  # nothing stands yet
    store = StudyDir(out, spec=study.spec.model_dump(mode="json"),
                     spec_sha256=study.spec_sha256, base={"scenario_sha256": study.base_hash},
                     versions={}, points=study.points, tasks=study.tasks, kinds=study.kinds,
                     names=study.names)
    with pytest.raises(retwin.RetwinError, match="not staged in"):
        store.commit(task, tuple(reversed(res.staged)))
    with pytest.raises(retwin.RetwinError, match="not staged in"):
        store.commit(task, (("monthly", str(tmp_path / "elsewhere")), res.staged[1]))
    store.commit(task, res.staged)
    assert {f.relative_to(out).as_posix() for f in out.glob("*/point=*/*.parquet")} == {
        f"{k}/point={task.point_id}/part-{task.chunk}.parquet" for k in ("monthly", "kpis")}
    assert not list((out / ".tmp").iterdir())
    assert run_batch(GRID, out).complete
    _assert_same_tables(grid.path, out)


def test_every_file_of_a_study_gets_the_mode_of_a_new_file(tmp_path: Path) -> None:
    """Whoever writes a study's files (the study's process, or the task that ran a chunk),
    each gets the mode any new file gets here (0666 less the umask), and a task's staged
    files are named as retwin's temporary files are (what a restart clears)."""
    from retwin._files import is_temp_name
    from retwin.batch.tables import PartTask

    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    want = probe.stat().st_mode & 0o777
    small = {**GRID, "replications": 1}
    for name, executor in (("tasks", None), ("study", _StudyWrites())):
        res = run_batch(small, tmp_path / name, executor=executor)
        files = [f for f in res.path.rglob("*") if f.is_file() and f.name != ".lock"]
        assert len(files) > 5
        assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(want)}, name
    study = prepare_study(small)
    staged = study.runner()(PartTask(study.tasks[0], str(tmp_path / "tasks"),
                                     study.spec_sha256)).staged
    assert staged and all(is_temp_name(Path(n).name) for _, n in staged)
    assert all(os.stat(n).st_mode & 0o777 == want for _, n in staged)
    # a file redone keeps the permissions its owner gave it, as any file retwin replaces
    kept = tmp_path / "tasks" / "kpis" / f"point={study.tasks[0].point_id}" / "part-0.parquet"
    kept.chmod(0o640)
    store = StudyDir(tmp_path / "tasks", spec=study.spec.model_dump(mode="json"),
                     spec_sha256=study.spec_sha256, base={"scenario_sha256": study.base_hash},
                     versions={}, points=study.points, tasks=study.tasks, kinds=study.kinds,
                     names=study.names)
    store.commit(study.tasks[0], staged)
    assert kept.stat().st_mode & 0o777 == 0o640


def test_errors_cross_a_process_boundary_as_themselves() -> None:
    """What a worker raises reaches the study as it was raised (type, message, fields): a
    worker that cannot write its file gives the study an OutputError (exit code 2)."""
    from retwin.errors import DataError, MassBalanceError, OutputError, RetwinError, ScenarioError

    errors: list[Exception] = [
        OutputError("/out", "cannot write kpis/point=a/part-0.parquet: No space left",
                    replaceable=True),
        ScenarioError([("point a", "changes[0].factor(=-1) must be >= 0"), ("b", "bad")]),
        MassBalanceError("point a, replication 3: residual 2 t"),
        DataError("no such key"), RetwinError("worker x runs retwin 0"),
    ]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.args == err.args
        assert vars(back) == vars(err)


def test_a_failed_write_of_a_task_leaves_no_part_and_the_study_resumes(
        tmp_path: Path, grid: BatchResult) -> None:
    """A task whose file write fails half-way (a full disk) stops the study with an
    OutputError: no part of that chunk stands, the chunks written before are recorded, and
    the study run again completes to the uninterrupted result."""
    import errno

    import pyarrow.parquet as pq

    out = tmp_path / "o"
    real = pq.write_table
    calls: list[bool] = []

    def half_then_full(table: Any, where: Any, **kw: Any) -> None:
        calls.append("kpi" in table.column_names)
        if sum(calls) == 2:  # the second chunk's kpis file
            where.write(b"PAR1" + b"\0" * 100)  # some bytes of the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, where, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pq, "write_table", half_then_full)
        with pytest.raises(retwin.OutputError, match=r"cannot write kpis/point=.*No space"):
            run_batch(GRID, out)
    standing = sorted((out / "kpis").rglob("*.parquet"))
    assert len(standing) == 1 and all(pd.read_parquet(f).shape[0] > 0 for f in standing)
    assert len(list((out / "monthly").rglob("*.parquet"))) == 1  # none of the failed chunk
    assert not (out / ".tmp").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["counts"]["runs_done"] == 2  # the first chunk
    starts: list[int] = []
    res = run_batch(GRID, out, progress=lambda p: starts.append(p.runs_at_start))
    assert starts[0] == 2 and res.complete
    _assert_same_tables(grid.path, out)


_KILLED_WRITE = """
import os, pickle, signal, sys
import pyarrow.parquet as pq

def half_then_killed(table, where, **kw):
    where.write(b"PAR1" + b"\\0" * 4096)
    where.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies in the middle of its file

pq.write_table = half_then_killed
runner, item = pickle.loads(sys.stdin.buffer.read())
runner(item)
"""


def test_a_worker_killed_while_writing_leaves_no_part_and_the_study_resumes(
        tmp_path: Path, grid: BatchResult) -> None:
    """A worker process killed half-way through a chunk's file leaves nothing a reader or
    a resumed study takes for that chunk; the study run again completes to the
    uninterrupted result."""
    from retwin.batch.tables import PartTask

    out = tmp_path / "o"
    seen: list[int] = []

    def stop_after_one(p: Any) -> None:
        seen.append(p.runs_done)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):
        run_batch(GRID, out, progress=stop_after_one)
    study = prepare_study(GRID)
    task = study.tasks[1]
    item = PartTask(task, str(out), study.spec_sha256, tuple(study.spec.selectors))
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITE], capture_output=True,
                          cwd=REPO, input=pickle.dumps((study.runner(), item)), timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert [p.name for p in (out / ".tmp").iterdir()]  # its half file, under .tmp only
    assert not (out / "kpis" / f"point={task.point_id}" / f"part-{task.chunk}.parquet").exists()
    assert len(list((out / "kpis").rglob("*.parquet"))) == 1
    ds.dataset(out / "kpis", format="parquet").to_table()  # every file that stands reads
    res = run_batch(GRID, out)
    assert res.complete and not (out / ".tmp").exists()
    _assert_same_tables(grid.path, out)


def test_local_workers_write_their_files_when_they_take_every_core(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Local workers write their own files when they are as many as the cores (this process
    would take CPU from them); with a core to spare, this process writes; on Dask, always."""
    from retwin.batch import DaskExecutor, ProcessExecutor, SerialExecutor, executors

    assert 1 <= executors.usable_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(executors, "usable_cores", lambda: 2)
    assert [ProcessExecutor(n).tasks_write for n in (1, 2, 3)] == [False, True, True]
    monkeypatch.setattr(executors, "usable_cores", lambda: 4)
    assert [ProcessExecutor(n).tasks_write for n in (2, 3, 4)] == [False, False, True]
    assert SerialExecutor().tasks_write and not DaskExecutor.tasks_write
