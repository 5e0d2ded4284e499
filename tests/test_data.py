"""Reference data: the parameter table loads, every row is sourced, the manifest is current."""

from __future__ import annotations

import csv
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
