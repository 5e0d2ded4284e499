"""The binding table, the bottlenecks and the targets of a run, computed on arrays, against
their definition written plainly with pandas (one row per stage, constraint and year with a
positive share; the bottleneck by summed share, then output value, then stage name; its
constraint the most frequent, a tie (to 1e-9) going to the later code). Binding codes are drawn at
random, whole years of one code included, so shares tie between stages and constraints.
The shares are sums of many plant-days taken in another order than the definition's (plant
by plant, not day by day), so they agree to round-off (1e-12), and the rows exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import retwin
from retwin.kernels.flow import (
    BIND_CAPACITY,
    BIND_DEMAND,
    BIND_MARGIN,
    BIND_NAMES,
    BIND_OUTAGE,
    BIND_QUOTA,
)
from retwin.results import RunResult


def binding_table(r: RunResult) -> pd.DataFrame:
    c, w = r.compiled, r.capacity_days
    rows = []
    for stage, sel in c.topology.stage_plants.items():
        for code, name in BIND_NAMES.items():
            share = r._by_year(np.where(r.binding[sel] == code, w[sel], 0).sum(0))
            total = r._by_year(w[sel].sum(0))
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where(total > 0, share / total, 0.0)
            rows += [(stage, y, name, float(f)) for y, f in zip(r.years, frac, strict=True)
                     if f > 0]
    return pd.DataFrame(rows, columns=["stage", "year", "constraint", "share"])


def bottlenecks(r: RunResult) -> pd.DataFrame:
    bt, df = binding_table(r), r.kpis
    value = df[df.kpi == "value.stage"].set_index(["key", "year"]).value
    supply = {BIND_NAMES[b] for b in (BIND_CAPACITY, BIND_QUOTA, BIND_OUTAGE)}
    market = {BIND_NAMES[b] for b in (BIND_DEMAND, BIND_MARGIN)}

    def best_of(year_rows: pd.DataFrame, kinds: set[str], y: int) -> tuple[float, float, str, str]:
        best: tuple[float, float, str, str] = (-1.0, 0.0, "", "")
        for stage, grp in year_rows.groupby("stage"):
            mine = grp[grp.constraint.isin(kinds)]
            if mine.empty:
                continue
            score = (round(float(mine.share.sum()), 9), float(value.get((stage, y), 0.0)))
            if score > best[:2]:
                share = mine.share.map(lambda x: round(x, 9))  # equal to 1e-9: a tie
                top = mine[share == share.max()].constraint.iloc[-1]
                best = (*score, str(stage), str(top))
        return best

    rows = []
    for y in r.years:
        year_rows = bt[bt.year == y]
        best = best_of(year_rows, supply, y)
        if best[0] < 0.5:
            held = best_of(year_rows, market, y)
            if held[0] >= 0.5:
                best = held
        rows.append((y, best[2], best[3], max(best[0], 0.0)))
    return pd.DataFrame(rows, columns=["year", "stage", "constraint", "score"])


@pytest.fixture(scope="module")
def result() -> RunResult:
    return retwin.run(retwin.load_scenario("tiny-markets"), seed=1)


@pytest.mark.parametrize("seed", range(12))
def test_tables_match_their_definition(result: RunResult, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.choice(list(BIND_NAMES), size=rng.integers(1, 5), replace=False)
    b = rng.choice(codes, size=result.binding.shape).astype(result.binding.dtype)
    if seed % 3 == 0:
        b[:] = codes[0]  # every stage bound by one constraint all year: ties everywhere
    r = dataclasses.replace(result, binding=b)
    pd.testing.assert_frame_equal(r.binding_table, binding_table(r), check_exact=False,
                                  rtol=1e-12, atol=0.0)
    pd.testing.assert_frame_equal(r.bottlenecks, bottlenecks(r), check_exact=False,
                                  rtol=1e-12, atol=0.0)


def test_targets_and_kpi_lookup_read_the_kpi_frame(result: RunResult) -> None:
    r = dataclasses.replace(result)
    df = r.kpis
    for row in df.sample(50, random_state=0).itertuples():
        first = df[(df.kpi == row.kpi) & (df.key == row.key) & (df.year == row.year)]
        assert r.kpi(row.kpi, row.key, row.year) == first.value.iloc[0]
    with pytest.raises(KeyError):
        r.kpi("output.stage", "no-such-stage", r.years[0])
    tt = r.target_table
    assert len(tt) == len(r.compiled.scenario.targets)
    for t in tt.itertuples():
        kpi, _, key = next(x.kpi for x in r.compiled.scenario.targets
                           if x.id == t.target).rpartition(".")
        assert t.value == r.kpi(kpi, key, t.year)


def test_a_runs_kpi_frame_is_its_own(result: RunResult) -> None:
    """Every run's KPI frame shares its labels with the compiled scenario's layout (made
    once): writing into one run's frame changes no other run's, nor the next one made."""
    other = dataclasses.replace(result)
    mine = dataclasses.replace(result).kpis
    mine.loc[0, "kpi"] = "changed"
    mine.loc[0, "value"] = -1.0
    mine.loc[1, "year"] = 1
    fresh = dataclasses.replace(result).kpis
    for df in (other.kpis, fresh):
        assert df.loc[0, "kpi"] != "changed" and df.loc[1, "year"] != 1
        assert df.loc[0, "value"] == result.kpi_values[0]


def test_a_runs_targets_and_bottlenecks_are_its_own(result: RunResult) -> None:
    """The targets and bottlenecks of runs that share their labels are copied from one frame
    kept for them (made once): each equals the frame made from its own rows, dtypes and
    all, and writing into one changes neither another run's nor the next one made."""
    t_cols = ["target", "name", "year", "goal", "value", "unit", "attained"]
    b_cols = ["year", "stage", "constraint", "score"]
    runs = [retwin.run(result.compiled, seed=s) for s in range(4)]
    assert runs[0].target_rows and runs[0].bottleneck_rows
    for r in runs:
        pd.testing.assert_frame_equal(r.target_table, pd.DataFrame(r.target_rows,
                                                                   columns=t_cols),
                                      check_exact=True)
        pd.testing.assert_frame_equal(r.bottlenecks, pd.DataFrame(r.bottleneck_rows,
                                                                  columns=b_cols),
                                      check_exact=True)
    mine = runs[0].target_table
    mine.loc[0, "value"] = -1.0
    mine.loc[0, "target"] = "changed"
    runs[0].bottlenecks.loc[0, "stage"] = "changed"
    runs[0].binding_table.loc[0, "stage"] = "changed"
    runs[0].binding_table.loc[1, "constraint"] = "changed"
    fresh = dataclasses.replace(result)
    for r in (runs[1], fresh):
        assert r.target_table.loc[0, "target"] != "changed"
        assert r.target_table.loc[0, "value"] == r.target_rows[0][4]
        assert r.bottlenecks.loc[0, "stage"] == r.bottleneck_rows[0][1]
        stage, _, constraint, _ = r.binding_columns
        assert r.binding_table.loc[0, "stage"] == stage[0]
        assert r.binding_table.loc[1, "constraint"] == constraint[1]


def test_a_binding_table_is_typed_as_a_frame_of_its_columns(result: RunResult) -> None:
    """The binding table is put together from labels typed once: it is the frame pandas
    builds from its columns, dtypes and all."""
    for s in range(3):
        r = retwin.run(result.compiled, seed=s)
        stage, year, constraint, share = r.binding_columns
        pd.testing.assert_frame_equal(
            r.binding_table, pd.DataFrame({"stage": stage, "year": year,
                                           "constraint": constraint, "share": share}),
            check_exact=True)


@pytest.mark.parametrize("seed", range(6))
def test_rows_added_by_index_are_numpys_add_at_to_the_last_bit(seed: int) -> None:
    """The KPIs add rows into groups (plants into stages, entries into materials) with
    one ``bincount`` over an index kept per compiled scenario: each group's sum is
    ``np.add.at``'s into zeros, part after part, to the last bit, repeated rows, NaN and
    signed zeros included."""
    from retwin.results import _add_rows

    rng = np.random.default_rng(seed)
    c = dataclasses.replace(retwin.prepare(retwin.load_scenario("tiny")))
    n_rows, k = int(rng.integers(1, 6)), int(rng.integers(1, 9))
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(0, 12))
        values = rng.normal(size=(n, k)) * 10.0 ** rng.integers(-8, 9, size=(n, k))
        values[rng.random((n, k)) < 0.1] = -0.0
        if seed == 5 and n:
            values[0, 0] = np.nan
        parts.append((rng.integers(0, n_rows, size=n), values))
    want = np.zeros((n_rows, k))
    for rows, values in parts:
        np.add.at(want, rows, values)
    for _ in range(2):  # made, then from the kept index
        got = _add_rows(c, "test", n_rows, *parts)
        assert got.shape == want.shape
        assert np.array_equal(got.view(np.int64), want.view(np.int64))


@pytest.mark.parametrize("storage", ["pyarrow", "python"])
def test_frames_put_together_from_kept_columns_are_their_own(storage: str) -> None:
    """A frame put together from kept columns shares none that a write could change: not
    Arrow's strings (a view, replaced on write), not numpy's or pandas' own (copied)."""
    from retwin.results import _columns_of, _frame_of

    strings = pd.array(["a", "b"], dtype=pd.StringDtype(storage))
    kept = pd.DataFrame({"s": strings, "n": np.array([1, 2]), "x": [1.0, 2.0]})
    names, labels, arrays = _columns_of(kept)
    assert labels == ("s", "n", "x") and all(type(n) is str for n in labels)
    mine, other = _frame_of(names, arrays), _frame_of(names, arrays)
    pd.testing.assert_frame_equal(mine, kept, check_exact=True)
    mine.loc[0, "s"] = "changed"
    mine.loc[0, "n"] = -1
    mine.loc[0, "x"] = -1.0
    for df in (other, kept, _frame_of(names, arrays)):
        assert df.loc[0].tolist() == ["a", 1, 1.0]


@pytest.mark.parametrize("storage", ["pyarrow", "python"])
def test_a_take_of_kept_labels_is_pandas_take(storage: str) -> None:
    """Labels taken by position (:func:`retwin.results.take`) are pandas' own ``take``:
    the same values and dtype, repeated and reordered positions included, and a column of
    its own: a write into the frame it goes to changes nothing kept."""
    from retwin.results import _frame_of, take

    labels = pd.array(["mine", "sep", "", "magnets"], dtype=pd.StringDtype(storage,
                                                                          na_value=np.nan))
    for positions in ([], [0], [3, 3, 1, 0, 2, 1], list(range(4))):
        pos = np.array(positions, dtype=np.int64)
        got, want = take(labels, pos), labels.take(pos)
        assert type(got) is type(want) and got.dtype == want.dtype
        pd.testing.assert_extension_array_equal(got, want)
    df = _frame_of(pd.Index(["s"]), [take(labels, np.array([1, 0]))])
    df.loc[0, "s"] = "changed"
    assert labels.tolist() == ["mine", "sep", "", "magnets"]
