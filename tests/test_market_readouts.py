"""Readouts and guarantees of the market layer on ``tiny-markets`` (deterministic runs)."""

from __future__ import annotations

import numpy as np

import retwin
from conftest import quiet


def test_a_raised_ceiling_does_not_scale_a_decided_rate() -> None:
    """A producer's monthly decision is a rate: a capacity raise in the middle of the month
    caps it and does not scale it (a rate kept as a share of the old ceiling grew with the
    ceiling, whatever the market asked: a glut, a price fall, and less downstream)."""
    base = quiet(retwin.load_scenario("tiny-markets"))
    b = retwin.run(base, seed=1)
    c = b.compiled
    metal = c.plant_ids.index("metal")
    month = 2  # March 2024: the metal plant runs below its ceiling by its own decision
    start, end = int(c.month_start_day[month]), int(c.month_start_day[month + 1])
    assert b.activity[metal, start:end].max() < 0.9 * c.nameplate_tpa[metal] / 365
    w = retwin.run(retwin.apply_changes(base, [
        {"kind": "capacity", "plant": "metal", "factor": 1.5, "from": "2024-03-15"}]), seed=1)
    np.testing.assert_allclose(w.activity[metal, start:end], b.activity[metal, start:end],
                               rtol=1e-12)
