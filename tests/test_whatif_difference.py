"""The what-if's paired difference (:func:`retwin.whatif.run`) is exactly
:func:`retwin.results.paired_difference`, whichever way it is computed: row for row, value
for value, dtype for dtype, for frames with the same rows (the usual case) and for every
frame that differs (rows reordered, missing or repeated, a missing key, missing values, a
baseline frame changed in place between two what-ifs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import retwin
from retwin import whatif
from retwin.results import paired_difference
from retwin.storage import read_table

Frames = list[pd.DataFrame]


def _frame(rng: np.random.Generator, n: int = 40) -> pd.DataFrame:
    kpis = np.array(["output.stage", "price.material", "value.group", "element.x"])
    df = pd.DataFrame({
        "kpi": pd.array(rng.choice(kpis, n), dtype="string"),
        "key": pd.array([f"k{int(i)}" for i in rng.integers(0, 7, n)], dtype="string"),
        "year": rng.integers(2024, 2027, n).astype(np.int64),
        "value": rng.normal(size=n),
        "unit": pd.array(rng.choice(np.array(["t", "CNY/t"]), n), dtype="string"),
    })
    return df.drop_duplicates(["kpi", "key", "year", "unit"]).reset_index(drop=True)


def _same_rows(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return f.assign(value=rng.normal(size=len(f)))


def _nan_values(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    v = rng.normal(size=len(f))
    v[rng.random(len(f)) < 0.3] = np.nan
    return f.assign(value=v)


def _reordered(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return _same_rows(f, rng).iloc[rng.permutation(len(f))].reset_index(drop=True)


def _row_missing(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return _same_rows(f, rng).iloc[1:].reset_index(drop=True)


def _key_repeated(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    g = _same_rows(f, rng)
    return pd.concat([g, g.iloc[:2]], ignore_index=True)


def _key_missing(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    g = _same_rows(f, rng)
    g.loc[0, "key"] = pd.NA
    return g


def _text_as_objects(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    g = _same_rows(f, rng)
    return g.astype({"kpi": object, "key": object, "unit": object})


def _year_int32(f: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return _same_rows(f, rng).astype({"year": np.int32})


CASES: dict[str, Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]] = {
    "same rows": _same_rows, "missing values": _nan_values, "rows reordered": _reordered,
    "a row missing": _row_missing, "a key repeated": _key_repeated,
    "a key missing": _key_missing, "text as Python objects": _text_as_objects,
    "years as int32": _year_int32,
}


@pytest.mark.parametrize("replications", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("side", ["whatif", "baseline"])
def test_the_difference_is_paired_difference_for_any_frames(case: str, side: str,
                                                             replications: int) -> None:
    for seed in range(5):
        rng = np.random.default_rng(seed)
        rows = _frame(rng)
        base = [_same_rows(rows, rng) for _ in range(replications)]
        runs = [_same_rows(rows, rng) for _ in range(replications)]
        changed = runs if side == "whatif" else base
        changed[-1] = CASES[case](rows, rng)
        got = whatif._difference(runs, base)
        pd.testing.assert_frame_equal(got, paired_difference(runs, base), check_exact=True)
        # the same baseline frames again (their sort order is remembered): the same answer
        pd.testing.assert_frame_equal(whatif._difference(runs, base), got, check_exact=True)


def test_a_baseline_frame_changed_in_place_is_sorted_again() -> None:
    rng = np.random.default_rng(7)
    rows = _frame(rng)
    base, runs = [_same_rows(rows, rng)], [_same_rows(rows, rng)]
    whatif._difference(runs, base)  # remembers the baseline frame's order
    shuffled = base[0].iloc[rng.permutation(len(rows))].reset_index(drop=True)
    for c in shuffled.columns:  # the same frame object, its rows in another order
        base[0][c] = shuffled[c].array
    runs2 = [base[0].assign(value=rng.normal(size=len(rows)))]
    pd.testing.assert_frame_equal(whatif._difference(runs2, base),
                                  paired_difference(runs2, base), check_exact=True)


@pytest.mark.parametrize("replications", [1, 2])
def test_a_run_against_a_stored_baseline_is_paired_difference(tmp_path: Path,
                                                              replications: int) -> None:
    tiny = retwin.load_scenario("tiny")
    w = whatif.resolve(tiny, [{"kind": "quota", "quota": "mining", "factor": 0.8}])
    base = whatif.run(w.baseline_only(), replications=replications, seed=3)
    whatif.save(base, tmp_path / "base")
    for frames in (base.whatif.kpi_frames,
                   whatif.kpi_frames(read_table(tmp_path / "base", "kpis"))):
        res = whatif.run(w, replications=replications, seed=3, baseline=frames)
        assert res.difference is not None
        pd.testing.assert_frame_equal(
            res.difference, paired_difference(res.whatif.kpi_frames, frames),
            check_exact=True)
