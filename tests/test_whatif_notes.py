"""Where a change does not bind, the answer says so (:func:`retwin.whatif.binding_notes`).

A what-if's trade (import or export cap), quota and capacity changes are checked against
the what-if's own runs: a cap its flow never reaches, a quota that never holds its plants, a
ceiling its plants never reach, each gets a plain note naming ``changes[i]``; one that
binds on some day gets none. The notes travel with the result: ``retwin run`` prints them and
the stored manifest keeps them (the service's answer is tested in ``tests/api``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import retwin
from conftest import TINY_PATH, quiet
from retwin import whatif
from retwin.cli import main
from retwin.kernels.flow import BIND_CAPACITY, BIND_QUOTA
from retwin.results import RunResult

#: tiny ships at most ~4,800 t/a of magnets; its export cap is 20,000 t/a.
LOOSE_EXPORT_CAP: dict[str, Any] = {"kind": "trade", "market": "magnet_out", "side": "export",
                                    "cap_tpa": 10000, "to": "2024-12-31"}
TIGHT_EXPORT_CAP: dict[str, Any] = {"kind": "trade", "market": "magnet_out", "side": "export",
                                    "cap_tpa": 2000, "from": "2025-01-01"}
#: tiny's mine is held by its quota most days; three times the quota never holds it.
LOOSE_QUOTA: dict[str, Any] = {"kind": "quota", "quota": "mining", "factor": 3.0,
                               "to": "2024-12-31"}
TIGHT_QUOTA: dict[str, Any] = {"kind": "quota", "quota": "mining", "factor": 0.9,
                               "from": "2025-01-01"}
LOOSE_IMPORT_CAP: dict[str, Any] = {"kind": "trade", "market": "dy_in", "side": "import",
                                    "factor": 2.0}
#: the magnet plant runs at its ceiling; the mine (held by the cut quota) never reaches its own
TIGHT_CAPACITY: dict[str, Any] = {"kind": "capacity", "plant": "magnets", "factor": 1.2}
LOOSE_CAPACITY: dict[str, Any] = {"kind": "capacity", "stage": "mining", "factor": 1.5,
                                  "from": "2025-01-01"}
CHANGES = [LOOSE_EXPORT_CAP, TIGHT_EXPORT_CAP, LOOSE_QUOTA, TIGHT_QUOTA, LOOSE_IMPORT_CAP,
           TIGHT_CAPACITY, LOOSE_CAPACITY]
LOOSE = {0, 2, 4, 6}


def _named(notes: tuple[str, ...] | list[str]) -> set[int]:
    """The ``i`` of every ``changes[i]`` the notes name (each note names one, first)."""
    out = set()
    for n in notes:
        assert n.startswith("changes["), n
        out.add(int(n[len("changes["):n.index("]")]))
    return out


@pytest.fixture(scope="module")
def tiny_whatif() -> whatif.WhatIf:
    return whatif.resolve("tiny", CHANGES)


@pytest.fixture(scope="module")
def result(tiny_whatif: whatif.WhatIf) -> whatif.WhatIfResult:
    res = whatif.run(tiny_whatif, replications=2, seed=3)
    runs: list[RunResult] = [retwin.run(tiny_whatif.scenario, seed=3, replication=r)
                             for r in range(2)]
    assert whatif.binding_notes(tiny_whatif, runs) == res.notes  # all runs, not the first
    return res


def test_each_change_that_never_binds_gets_a_note_and_no_other(
        result: whatif.WhatIfResult) -> None:
    assert _named(result.notes) == LOOSE
    by_change = {i: n for n in result.notes for i in _named([n])}
    assert "export cap on market magnet_out" in by_change[0]
    assert "exports stayed below the cap on every day" in by_change[0]
    assert "each of the what-if's 2 replications" in by_change[0]
    assert "quota mining" in by_change[2] and "import cap on market dy_in" in by_change[4]
    assert "the mining stage's plants never reached the capacity ceiling" in by_change[6]


def test_a_note_is_true_of_the_runs_and_a_bound_change_really_bound(
        tiny_whatif: whatif.WhatIf) -> None:
    """What the notes claim, checked on the flows and binding codes themselves."""
    r = retwin.run(tiny_whatif.scenario, seed=3)
    c = r.compiled
    k = c.market_ids.index("magnet_out")
    days = c.dates.astype("datetime64[D]")
    in_2024 = days <= np.datetime64("2024-12-31")
    assert r.exports[k, in_2024].max() < 10000 / 365  # the loose cap, never reached
    assert np.isclose(r.exports[k, ~in_2024].max(), 2000 / 365)  # the tight one, reached
    mine = c.plant_ids.index("mine")
    assert not (r.binding[mine, in_2024] == BIND_QUOTA).any()  # the loose quota: never
    assert (r.binding[mine, ~in_2024] == BIND_QUOTA).any()  # the cut one: held
    assert not (r.binding[mine, ~in_2024] == BIND_CAPACITY).any()  # not its raised ceiling
    assert (r.binding[c.plant_ids.index("magnets")] == BIND_CAPACITY).any()
    single = whatif.run(whatif.resolve("tiny", [LOOSE_QUOTA]), seed=3)
    assert _named(single.notes) == {0}
    cut = whatif.run(whatif.resolve("tiny", [TIGHT_QUOTA]), seed=3)
    assert cut.notes == ()


def test_a_zero_ceiling_binds() -> None:
    """A plant shut by a capacity change is held by it (the kernel calls those days idle)."""
    res = whatif.run(whatif.resolve("tiny", [
        {"kind": "capacity", "plant": "metal", "factor": 0.0, "from": "2024-07-01"}]), seed=1)
    assert res.notes == ()


def test_markets_on_an_export_control_binds_or_says_it_does_not() -> None:
    base = quiet(retwin.load_scenario("tiny-markets"))
    tight = {"kind": "trade", "market": "magnet_out", "side": "export", "factor": 0.25,
             "from": "2024-07-01"}  # 1,500 t/a: exports fall to it
    loose = {**tight, "factor": 0.9}  # 5,400 t/a: exports stay near 3,000 at most
    assert whatif.run(whatif.resolve(base, [tight]), seed=1).notes == ()
    notes = whatif.run(whatif.resolve(base, [loose]), seed=1).notes
    assert _named(notes) == {0} and "export cap on market magnet_out" in notes[0]


def test_a_stored_baseline_gives_the_same_notes(tiny_whatif: whatif.WhatIf,
                                                result: whatif.WhatIfResult) -> None:
    assert result.baseline is not None
    again = whatif.run(tiny_whatif, replications=2, seed=3,
                       baseline=result.baseline.kpi_frames)
    assert again.notes == result.notes


def test_the_manifest_keeps_the_notes(result: whatif.WhatIfResult, tmp_path: Path) -> None:
    out = whatif.save(result, tmp_path / "r")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["notes"] == list(result.notes)
    base = result.baseline_only()
    assert base is not None and base.notes == ()


def test_a_whatif_file_names_its_own_changes(tmp_path: Path) -> None:
    f = tmp_path / "cap.yaml"
    f.write_text(yaml.safe_dump({"base": str(TINY_PATH),
                                 "changes": [TIGHT_QUOTA, LOOSE_EXPORT_CAP]}))
    assert _named(whatif.run(whatif.resolve(f), seed=1).notes) == {1}


def test_retwin_run_prints_the_notes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(TINY_PATH), "--change", json.dumps(LOOSE_EXPORT_CAP),
                 "--change", json.dumps(TIGHT_EXPORT_CAP)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "Note: changes[0] (export cap on market magnet_out) does not bind" in out
    assert "changes[1]" not in out


@pytest.mark.parametrize("change", [
    {"kind": "trade", "market": "la_ce_out", "side": "export", "factor": 10.0},
    {"kind": "trade", "market": "la_ce_out", "side": "export", "cap_tpa": 40000}])
def test_a_raise_not_used_up_is_not_called_a_change_without_effect(change: dict[str, Any]
                                                                   ) -> None:
    """tiny's La/Ce exports are held at their 4,000 t/a cap; a tenfold cap lets them rise by
    about 6,000 t a year without reaching the new cap. The note must not say the change does
    not bind: the cap it replaced did."""
    res = whatif.run(whatif.resolve("tiny", [change]), seed=1)
    assert res.difference is not None
    d = res.difference
    rise = d[(d.kpi == "exports.market") & (d.key == "la_ce_out")]["mean"]
    assert (rise > 1000).all()
    assert _named(res.notes) == {0}
    assert "raise not used up" in res.notes[0] and "does not bind" not in res.notes[0]
