"""Reference data: the parameter table loads, every row is sourced, the manifest is current."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from retwin import DataError
from retwin.scenario.data import (
    FLAGS,
    PARAMETER_COLUMNS,
    build_manifest,
    check_manifest,
    evaluate_formula,
    load_parameters,
    reference_dir,
)

DATA = REPO / "data"


def test_reference_dir_is_the_checkout() -> None:
    assert reference_dir().resolve() == REPO.resolve()


def test_parameters_load() -> None:
    params = load_parameters()
    assert len(params) > 100
    with (DATA / "parameters.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(params)  # no duplicate keys silently merged
    assert tuple(rows[0]) == PARAMETER_COLUMNS


def test_every_row_has_a_source_and_a_flag() -> None:
    for key, p in load_parameters().items():
        assert p.source.strip(), key
        assert p.flag in FLAGS, (key, p.flag)
        assert p.unit.strip(), key


def test_estimates_say_why() -> None:
    for key, p in load_parameters().items():
        if p.flag in ("estimate", "derived"):
            assert p.basis.strip(), key


def test_keys_are_formula_keys() -> None:
    params = load_parameters()
    for key, p in params.items():
        assert evaluate_formula(f"= {{{key}}}", params) == p.value


# --- the table is what data/build_parameters.py writes; every formula gives its value ------------

#: A formula over keys that is not the row's leading ``= formula`` (the script states it first).
_BURIED_FORMULA = re.compile(r"=\s*(?:round\()?\(*\{")


def _formula(basis: str) -> str | None:
    """The formula of a computed row: a basis ``= formula; note`` (or ``= formula``)."""
    return basis[2:].split(";", 1)[0] if basis.startswith("= ") else None


def test_parameters_csv_is_exactly_what_the_script_writes(tmp_path: Path) -> None:
    out = tmp_path / "parameters.csv"
    done = subprocess.run([sys.executable, str(DATA / "build_parameters.py"), str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (DATA / "parameters.csv").read_bytes(), (
        "data/parameters.csv differs from what data/build_parameters.py writes: run "
        "`.venv/bin/python data/build_parameters.py` and `retwin data --write-manifest`")


def test_every_formula_basis_gives_the_rows_value() -> None:
    params = load_parameters()
    computed = {k: f for k, p in params.items() if (f := _formula(p.basis)) is not None}
    assert len(computed) > 100  # the walk sees the computed rows
    assert {params[k].flag for k in computed} == {"derived", "estimate"}
    for key, formula in computed.items():
        # the table keeps 12 significant digits: chains of full-precision rows drift below 1e-11
        assert math.isclose(evaluate_formula(formula, params), params[key].value, rel_tol=1e-10), (
            key, formula)


def test_no_formula_hides_in_a_rows_note() -> None:
    """A row computed from other rows states its formula first, where the test above checks it."""
    for key, p in load_parameters().items():
        formula = _formula(p.basis)
        rest = p.basis if formula is None else p.basis[2 + len(formula):]
        assert not _BURIED_FORMULA.search(rest), (key, p.basis)


def test_manifest_is_current() -> None:
    # check_manifest names a missing manifest and how to write it (`retwin data --write-manifest`)
    assert check_manifest() == []


def test_manifest_describes_every_csv() -> None:
    built = build_manifest()["files"]
    assert set(built) == {p.name for p in DATA.glob("*.csv")}
    assert built["parameters.csv"]["rows"] == len(load_parameters())
    assert sum(built["parameters.csv"]["flags"].values()) == len(load_parameters())


def _table(tmp_path: Path, rows: list[list[str]], header: tuple[str, ...] = PARAMETER_COLUMNS
           ) -> Path:
    path = tmp_path / "parameters.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize(("rows", "message"), [
    ([["a.b", "1", "t", "2024", "A", "", "x"]], "'a.b' has no source"),
    ([["a.b", "1", "t", "2024", "Z", "src", "x"]], "flag(='Z') of 'a.b' must be one of"),
    ([["a.b", "one", "t", "2024", "A", "src", "x"]], "value(='one') of 'a.b' is not a number"),
    ([["a.b", "1", "t", "2024", "A", "src", "x"]] * 2, "line 3: duplicate key 'a.b'"),
])
def test_bad_tables_are_refused(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    with pytest.raises(DataError) as exc:
        load_parameters(_table(tmp_path, rows))
    assert message in str(exc.value)


def test_wrong_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="columns must be key, value"):
        load_parameters(_table(tmp_path, [], header=("key", "value")))


def test_bayan_obo_mix_has_the_published_medium_heavy_content() -> None:
    """The national light-RE mix: Sm..Lu + Y within the published 1,005-1,204 ppm at the ore
    grade, light-RE ratios of the proxy kept, and the mix sums to 1."""
    from retwin.scenario.data import formula_parameters

    p = {k: r.value for k, r in formula_parameters().items()}
    mh = ("sm", "eu", "gd", "tb", "dy", "y", "other")
    lr = ("la", "ce", "pr", "nd")
    share = sum(p[f"dist.bayan_obo.{e}_frac"] for e in mh)
    grade = p["ore.bayan_obo.grade_frac"]
    assert p["ore.bayan_obo.mhree_ppm.aegirine"] / 1e6 / grade <= share
    assert share <= p["ore.bayan_obo.mhree_ppm.fluorite"] / 1e6 / grade
    assert sum(p[f"dist.bayan_obo.{e}_frac"] for e in lr + mh) == pytest.approx(1, abs=1e-9)
    for e in lr[1:]:
        assert (p[f"dist.bayan_obo.{e}_frac"] / p["dist.bayan_obo.la_frac"]
                == pytest.approx(p[f"dist.baotou_concentrate.{e}_frac"]
                                 / p["dist.baotou_concentrate.la_frac"]))
    national = (REPO / "models" / "china-2024.yaml").read_text(encoding="utf-8")
    assert "dist.baotou_concentrate." not in national  # the proxy's M+HREE is not used
