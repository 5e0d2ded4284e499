"""Validation against the record: the back-cast's held-out errors, the fit, the report, the CLI.

The tolerances are those of ``retwin.validation.OBSERVABLES`` (stated in the README). The fit
itself takes a few seconds compiled; its tests are marked slow.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import retwin
from retwin import validation as v
from retwin.batch.executors import usable_cores
from retwin.cli import main
from retwin.errors import DataError, ScenarioError
from retwin.scenario.data import (
    FITTED_FILE,
    check_manifest,
    formula_parameters,
    load_fitted,
    load_parameters,
    models_dir,
    reference_dir,
)
from retwin.scenario.load import resolve_model
from retwin.validation import observables
from retwin.validation.fit import _fit_observations

REPO = Path(__file__).resolve().parents[1]
KEY = re.compile(r"\{([a-z0-9_]+(?:\.[a-z0-9_]+)+)\}")


@pytest.fixture(scope="module")
def bc() -> v.Backcast:
    return v.backcast()


@pytest.fixture(scope="module")
def checks() -> v.BaotouChecks:
    return v.baotou_checks()


# --- the back-cast --------------------------------------------------------------------------


def test_held_out_errors_stay_within_their_tolerance(bc: v.Backcast) -> None:
    held = bc.table[(bc.table.split == "held-out") & bc.table.reported.notna()]
    # every observable with a held-out figure is tested; the customs totals have none yet
    assert set(held.observable) == {o.id for o in v.OBSERVABLES
                                    if set(o.reported) & set(v.HELD_OUT_YEARS)}
    assert len(v.OBSERVABLES) >= 7
    tol = {o.id: o.tolerance_frac for o in v.OBSERVABLES if o.tolerance_frac is not None}
    assert max(tol.values()) <= 0.25
    # reported without a tolerance: only what the model is known not to reproduce yet (the
    # PrNd price path, a strict xfail below), never fitted to
    assert [o.id for o in v.OBSERVABLES if o.tolerance_frac is None] == ["prnd_oxide_price"]
    assert not any(o.fitted for o in v.OBSERVABLES if o.tolerance_frac is None)
    for r in held.itertuples():
        if r.observable in tol:
            assert abs(r.error_frac) <= tol[r.observable], (r.observable, r.year, r.error_frac)
    assert bc.held_out_within_tolerance


@pytest.mark.xfail(strict=True, reason=(
    "the formed PrNd oxide price jumps at the start and slides (530, 337, 301, 280, 251 "
    "thousand CNY/t against 319, 598, 849, 530, 392): domestic demand grows at one rate and "
    "the market speeds are not determined by the physical figures; the spike's drivers (Myanmar's "
    "border closures, stockpiling, expectations) are not modelled"))
def test_the_prnd_price_rises_to_a_2022_peak_and_falls_in_2023_and_2024(
        bc: v.Backcast) -> None:
    t = bc.table[bc.table.observable == "prnd_oxide_price"].set_index("year").simulated
    assert t[2021] > 1.2 * t[2020] and t[2022] > 1.1 * t[2021]  # the rise to the 2022 peak
    assert t[2023] < 0.9 * t[2022] and t[2024] < 0.9 * t[2023]  # the fall after it


def test_fitted_years_are_close_and_the_split_is_marked(bc: v.Backcast) -> None:
    t = bc.table
    assert set(t[t.year.isin(v.FIT_YEARS)].split) == {"fitted"}
    assert set(t[t.year.isin(v.HELD_OUT_YEARS)].split) == {"held-out"}
    in_fit = {o.id for o in v.OBSERVABLES if o.fitted}
    fitted = t[(t.split == "fitted") & t.reported.notna() & t.observable.isin(in_fit)]
    assert (fitted.error_frac.abs() <= 0.05).all(), fitted[["observable", "year", "error_frac"]]
    assert t.tolerance_frac[t.split == "fitted"].isna().all()


def test_every_reported_figure_names_its_data_key(bc: v.Backcast) -> None:
    params = formula_parameters()
    rep = bc.table[bc.table.reported.notna()]
    for r in rep.itertuples():
        assert params[r.reported_key].value == r.reported
        assert r.range_low <= r.reported <= r.range_high


def test_source_disagreements_are_shown_with_the_figure_used() -> None:
    rng = v.source_ranges()
    nd23 = rng[(rng.year == 2023)]
    assert set(nd23.key) == {"prod.china.ndfeb_t.2023.csre_blank",
                             "prod.china.ndfeb_t.2023.forecast",
                             "prod.china.ndfeb_t.2023.csre_sintered"}
    assert list(nd23[nd23.used].key) == ["prod.china.ndfeb_t.2023.csre_blank"]
    assert rng.groupby(["observable", "year"]).used.sum().eq(1).all()


def test_the_balance_condition_holds_in_the_fitted_years(bc: v.Backcast) -> None:
    assert all(abs(bc.balance[y]) < 0.01 for y in v.FIT_YEARS)


def test_backcast_is_deterministic(bc: v.Backcast) -> None:
    again = v.backcast()
    pd.testing.assert_frame_equal(again.table, bc.table)


def test_simulate_refuses_a_model_that_is_not_national() -> None:
    res = retwin.run(retwin.load_scenario("tiny"), seed=1)
    with pytest.raises(ScenarioError, match="not a national back-cast model"):
        v.simulate(res)


# --- honesty: what the fit and the back-cast may use ----------------------------------------


def test_held_out_keys_cover_the_checked_figures_and_what_derives_from_them() -> None:
    keys = v.held_out_keys()
    for must in ("prod.china.ndfeb_t.2023.csre_blank", "trade.china.magnet_export_t.2024",
                 "recycling.china.prnd_oxide_from_scrap_t.2023",
                 # derived from the checked figures:
                 "prod.china.ndfeb_t.2023.finished_est", "price.ndfeb_magnet.cny_per_t.2024",
                 "demand.baotou.magnet_served_t.2024"):
        assert must in keys
    assert "prod.china.ndfeb_t.2022" not in keys  # a fitted year stays usable


def test_backcast_model_uses_no_held_out_figure() -> None:
    """Nothing in china-2020 (with its base) takes a held-out figure or one derived from it."""
    tree = resolve_model("china-2020")
    used = set(KEY.findall(yaml.safe_dump(tree, allow_unicode=True, width=10_000)))
    assert used, "the scan found no formulas"
    assert sorted(used & v.held_out_keys()) == []


def test_the_fit_sees_only_fitted_years() -> None:
    params = dict(formula_parameters())
    obs = _fit_observations(params)
    assert obs and {y for _, y, _ in obs} <= set(v.FIT_YEARS)
    # changing every held-out figure changes nothing the fit sees
    for k in v.held_out_keys(params):
        if k in params:
            params[k] = dataclasses.replace(params[k], value=params[k].value * 7)
    assert _fit_observations(params) == obs


def test_fitted_values_come_from_data_with_how_they_were_obtained() -> None:
    path = reference_dir() / "data" / FITTED_FILE
    rows = pd.read_csv(path)
    assert list(rows.key) == [p.key for p in v.FREE_PARAMETERS]
    assert set(rows.flag) == {"derived"}
    assert rows.basis.str.startswith("fitted by `retwin fit` on 2020–2022").all()
    assert rows.basis.str.contains("held out").all()
    params = formula_parameters()
    for p in v.FREE_PARAMETERS:
        lo, hi = p.bounds(params)
        assert lo <= params[p.key].value <= hi, p.key
    assert check_manifest() == []


#: Fitted keys the forward model (china-2024) replaces with the record of its base year.
BASE_YEAR_RECORD = {"fit.china.magnet_export_t": "trade.china.magnet_export_t.2024"}


@pytest.mark.parametrize("name", ["china-2020", "china-2024"])
def test_national_models_refer_to_every_fitted_key(name: str) -> None:
    text = yaml.safe_dump(resolve_model(name), allow_unicode=True, width=10_000)
    for p in v.FREE_PARAMETERS:
        key = BASE_YEAR_RECORD.get(p.key, p.key) if name == "china-2024" else p.key
        assert "{" + key + "}" in text, key
    if name == "china-2024":
        assert not any("{" + k + "}" in text for k in BASE_YEAR_RECORD)


def test_a_fits_trials_load_the_scenario_loading_the_model_gives() -> None:
    """A fit evaluates the model's formulas once and, per trial, only those naming a free
    key: each trial's scenario is the one loading the model with its values gives (field
    for field), and a trial whose values break a formula or the schema is refused with the
    same problems."""
    from retwin.validation.fit import _Trials, _with_values

    tree = resolve_model(v.NATIONAL_MODEL)
    params = formula_parameters()
    free = v.FREE_PARAMETERS
    trials = _Trials(tree, {p.key for p in free})
    assert trials.slots  # the free keys are named by some of the model's formulas
    rng = np.random.default_rng(3)
    for _ in range(4):
        values = {p.key: float(rng.uniform(*p.bounds(params))) for p in free}
        fast = trials.scenario(values)
        assert fast == _with_values(tree, values)
        assert fast.model_dump(mode="json") == _with_values(tree, values).model_dump(mode="json")
    assert trials.scenario({}) == _with_values(tree, {})  # the data's own values
    for bad in ({free[0].key: float("nan")}, {free[1].key: 1e308, free[2].key: 1e308},
                {free[4].key: -1.0}):
        values = {p.key: p.upper for p in free} | bad
        with pytest.raises(ScenarioError) as slow:
            _with_values(tree, values)
        with pytest.raises(ScenarioError) as quick:
            trials.scenario(values)
        assert quick.value.problems == slow.value.problems


def test_a_first_fit_loads_its_trials_without_fitted_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a first fit the data holds no fitted values: the formulas that name them are
    evaluated by the trials alone, and a trial's scenario is still the one loading the model
    with its values gives."""
    import importlib

    from retwin.validation.fit import _Trials, _with_values

    fit_module = importlib.import_module("retwin.validation.fit")

    free = v.FREE_PARAMETERS
    data = {k: p for k, p in formula_parameters().items()
            if k not in {f.key for f in free}}
    monkeypatch.setattr(fit_module, "formula_parameters", lambda: data)
    tree = resolve_model(v.NATIONAL_MODEL)
    with pytest.raises(ScenarioError, match="unknown data key"):
        _with_values(tree, {})  # the model alone does not load
    trials = _Trials(tree, {p.key for p in free})
    values = {p.key: p.upper * 0.6 for p in free}
    assert trials.scenario(values) == _with_values(tree, values)


# --- the fit (slow: about a thousand runs) ---------------------------------------------


@pytest.mark.slow
def test_fit_is_reproducible_and_equals_the_committed_values() -> None:
    # the committed values were written by `retwin fit` in another process: a fit here that
    # equals them is a fit that is reproducible (a seeded search of about two thousand runs,
    # here in two worker processes, as the command runs it on two cores)
    first = v.fit(workers=2)
    committed = formula_parameters()
    for p in v.FREE_PARAMETERS:
        assert math.isclose(first.values[p.key], committed[p.key].value, rel_tol=1e-4), p.key
    assert set(first.residuals.year) <= set(v.FIT_YEARS)
    assert (v.fitted_diff(first).change_frac.abs() <= 1e-4).all()


# --- the loader reads the fitted table ------------------------------------------------------


def _reference_copy(tmp_path: Path) -> Path:
    for sub in ("data", "models"):
        shutil.copytree(REPO / sub, tmp_path / sub)
    return tmp_path


def test_loader_merges_the_fitted_table_and_refuses_duplicates(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    root = _reference_copy(tmp_path)
    monkeypatch.setenv("RETWIN_REFERENCE_DIR", str(root))
    assert "fit.china.unreported_feed_t_reo" in formula_parameters()
    assert "fit.china.unreported_feed_t_reo" not in load_parameters()  # parameters.csv alone
    fitted = root / "data" / FITTED_FILE
    text = fitted.read_text(encoding="utf-8")
    dup = "yield.sx_recovery_frac,0.5,fraction,,derived,test,duplicate\n"
    fitted.write_text(text + dup, encoding="utf-8")
    with pytest.raises(DataError, match=r"also in parameters\.csv"):
        formula_parameters()
    fitted.unlink()
    with pytest.raises(DataError, match="run `retwin fit` first"):
        v.load_model("china-2020")


# --- the CLI ----------------------------------------------------------------------------------


def test_backcast_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_csv = tmp_path / "backcast.csv"
    model = str(REPO / "models" / "china-2020.yaml")
    assert main(["backcast", model, "--csv", str(out_csv), "--strict"]) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "fitted" in text and "Errors by observable" in text
    table = pd.read_csv(out_csv)
    assert {"observable", "year", "split", "reported", "simulated", "error_frac"} <= set(table)
    assert main(["backcast", "tiny"]) == 2
    assert "not a national back-cast model" in capsys.readouterr().err
    assert main(["backcast", "no-such-model"]) == 2
    (tmp_path / "file").write_text("x")  # a file where a folder should be: bad input
    assert main(["backcast", "--csv", str(tmp_path / "file" / "dir" / "x.csv")]) == 2


def test_backcast_strict_fails_when_a_tolerance_is_exceeded(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tight = tuple(dataclasses.replace(o, tolerance_frac=1e-9) if o.id == "magnet_exports" else o
                  for o in v.OBSERVABLES)
    monkeypatch.setattr(observables, "OBSERVABLES", tight)  # where compare() reads it
    assert main(["backcast", "--strict"]) == 1
    assert "exceed their tolerance" in capsys.readouterr().err
    assert main(["backcast"]) == 0  # without --strict the table is only reported


def test_fit_command_writes_the_fitted_table_and_the_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = _reference_copy(tmp_path)
    monkeypatch.setenv("RETWIN_REFERENCE_DIR", str(root))
    params = formula_parameters()
    values = {p.key: params[p.key].value * 1.01 for p in v.FREE_PARAMETERS}
    canned = v.FitResult(
        model="china-2020", values=values,
        bounds={p.key: p.bounds(params) for p in v.FREE_PARAMETERS}, cost=0.5, evaluations=3,
        message="stub", residuals=pd.DataFrame({"what": ["ndfeb_output"], "year": [2021],
                                                "residual": [0.01]}))
    asked: list[int] = []

    def stub(model: str, progress: Any = None, workers: int = 1) -> v.FitResult:
        asked.append(workers)
        return canned

    monkeypatch.setattr(v, "fit", stub)
    assert main(["fit", "--dry-run"]) == 0
    assert "Dry run" in capsys.readouterr().out
    assert main(["fit", "--dry-run", "--workers", "1"]) == 0
    capsys.readouterr()
    assert asked == [min(usable_cores(), 8), 1]  # the cores by default, at most 8
    assert formula_parameters()["fit.china.unreported_feed_t_reo"].value == \
        params["fit.china.unreported_feed_t_reo"].value
    assert main(["fit"]) == 0
    assert "+1.0%" in capsys.readouterr().out  # the diff against the committed values
    new = formula_parameters()
    for k, val in values.items():
        assert math.isclose(new[k].value, val, rel_tol=1e-5)
    assert check_manifest(root / "data") == []


def test_validation_report_writes_one_self_contained_file(tmp_path: Path) -> None:
    path = tmp_path / "report" / "validation.html"
    assert main(["validation-report", "--html", str(path)]) == 0
    html = path.read_text(encoding="utf-8")
    for section in ("Errors by observable", "Every observation", "Charts",
                    "Free parameters (fitted on the fitted years only)", "Where sources disagree",
                    "Baotou against its seeds", "Structure: capacities the seeds give",
                    "2022: the seeds' figures", "2024 targets next to the 2024 run",
                    "What the model cannot reproduce, and why"):
        assert section in html or section.replace("'", "&#x27;") in html, section
    assert html.count('class="held-out"') >= 6 and html.count('class="fitted"') >= 6
    assert "plotly" in html.lower() and 'src="https://' not in html  # plotly.js is inlined
    assert html.count("Plotly.newPlot") == len(v.OBSERVABLES) + 1
    assert "simulated, monthly" in html  # the formed PrNd price, month by month
    assert not list(path.parent.glob("*.tmp"))


def test_the_report_draws_the_monthly_price_within_its_years(bc: v.Backcast) -> None:
    """The price chart's monthly line: twelve months inside each year's span of the axis,
    averaging to the year's simulated mean (the annual figure is a daily mean)."""
    from retwin.report.validation import _monthly_price

    x, y = _monthly_price(bc, "prnd_oxide")
    annual = bc.table[bc.table.observable == "prnd_oxide_price"].set_index("year").simulated
    assert len(x) == 12 * len(annual)
    for year, mean in annual.items():
        months = [p for t, p in zip(x, y, strict=True) if year - 0.5 < t < year + 0.5]
        assert len(months) == 12
        assert np.mean(months) == pytest.approx(mean, rel=0.02)


def test_validation_report_bad_path_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["validation-report", "--html", str(blocker / "r.html")]) == 2


# --- Baotou against its seeds -----------------------------------------------------------------


def test_baotou_reproduces_the_seeds_structure(checks: v.BaotouChecks) -> None:
    s = checks.structure
    assert (s.model_2024 == s.seeds_2024).all(), s
    known = s[s.key_2022 != ""]
    assert (known.model_2022 == known.seeds_2022).all(), known


def test_baotou_2022_figures_are_set_next_to_the_seeds(checks: v.BaotouChecks) -> None:
    y = checks.year_2022
    assert list(y.key) == ["conversion.baotou_zone.local_frac.2022",
                           "output.baotou_zone.re_industry_yi_cny.2022",
                           "output.baotou_zone.re_industry_yi_cny.2022"]
    assert 0 < y.model[0] <= 1 and y.model[1] > y.model[2] > 0
    assert y.seeds[0] == 0.85 and y.seeds[1] == 450


def test_baotou_2024_targets_are_set_next_to_the_2024_run(checks: v.BaotouChecks) -> None:
    t = checks.targets_2024
    sc = retwin.load_scenario("baotou-2024")
    assert list(t.target) == [x.id for x in sc.targets]
    assert t.value.notna().all()


def test_baotou_2022_runs_2022_with_2022_quotas() -> None:
    sc = retwin.load_scenario(models_dir() / "baotou-2022.yaml")
    params = formula_parameters()
    assert (sc.start.year, sc.end.year) == (2022, 2022)
    q = {x.id: x.amount_for(2022) for x in sc.quotas}
    assert q["mining"] == params["quota.cnre.mining_t_reo.2022"].value
    assert q["separation"] == params["quota.cnre.smelting_t_reo.2022"].value
    assert sc.material("prnd_oxide").price.base_cny_per_unit == \
        params["price.prnd_oxide.cny_per_t.2022"].value


def test_readme_states_the_tolerances_and_the_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Validation"):]
    section = section[:section.index("\n## ", 1)]
    for cmd in ("retwin backcast models/china-2020.yaml", "retwin fit",
                "retwin validation-report --html"):
        assert cmd in section
    for o in v.OBSERVABLES:
        if o.tolerance_frac is None:
            assert f"{o.label}: no tolerance yet" in section, o.id
        else:
            assert f"{o.tolerance_frac * 100:g} %" in section, o.id
    assert "What the model cannot reproduce" in section
    assert set(load_fitted()) == {p.key for p in v.FREE_PARAMETERS}


def test_light_re_feed_is_separated_into_real_uses_and_exports(bc: v.Backcast) -> None:
    """La, Ce and Y have domestic non-magnet uses and RE-product exports in the back-cast, and
    the customs observables read the right markets."""
    kp = bc.result.kpis
    demand = {d.id: d.material for d in bc.result.compiled.scenario.demand}
    for mat in ("la_oxide", "ce_oxide", "y_oxide"):
        segs = [k for k, m in demand.items() if m == mat]
        fill = kp[(kp.kpi == "fill_rate.segment") & kp.key.isin(segs) & (kp.year == 2022)]
        assert segs and (fill.value > 0.5).all(), (mat, fill)
    sim = v.simulate(bc.result)
    assert sim["re_product_exports"][2022] > 0 and sim["re_product_imports"][2022] > 0
    assert sim["domestic_magnet_consumption"][2023] == pytest.approx(
        sim["ndfeb_output"][2023] - sim["magnet_exports"][2023])


@pytest.mark.slow
def test_a_fit_in_worker_processes_is_the_fit_in_this_one(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A short search (a population of 7, one generation, a polish of about 20 runs): in 2
    worker processes it asks for the same trials and finds the same fit, to the last bit."""
    import importlib

    fit_module = importlib.import_module("retwin.validation.fit")
    monkeypatch.setattr(fit_module, "POPULATION", 1)
    monkeypatch.setattr(fit_module, "POLISH_MAXFUN", 20)
    here: list[int] = []  # the number of workers of each trial run in this process
    trial_residuals = fit_module._trial_residuals
    counts: dict[int, list[int]] = {1: [], 2: []}
    fits = {}
    for w in (1, 2):
        monkeypatch.setattr(fit_module, "_trial_residuals",
                            lambda *a, w=w: (here.append(w), trial_residuals(*a))[1])
        fits[w] = v.fit(generations=1, workers=w, progress=counts[w].append)
    one, two = fits[1], fits[2]
    assert one.evaluations == two.evaluations > 14  # the population's and the polish's
    assert here.count(1) == one.evaluations  # one process: every trial here
    assert here.count(2) < one.evaluations // 2  # two workers: most trials in them
    assert counts[1] == counts[2] == list(range(1, one.evaluations + 1))
    assert one.values == two.values
    assert one.cost.hex() == two.cost.hex()
    assert [r.hex() for r in one.residuals.residual] == [r.hex() for r in two.residuals.residual]
    assert one.message == two.message


def test_the_fit_command_refuses_no_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--workers", "0", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "--workers(=0) must be >= 1"
