"""Benchmarks: judged as ratios on one machine, kernels compiled outside the timed region,
and every benchmark also asserts a correctness fact (a balance, an event count)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import retwin

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels() -> None:
    """Every kernel compiled (or loaded), with the reference model's chain kernel, as
    ``retwin warmup`` leaves them."""
    retwin.warmup("baotou-2024")


@pytest.fixture(scope="session")
def baotou() -> retwin.Scenario:
    return retwin.load_scenario("baotou-2024")


@pytest.fixture(scope="session")
def baotou_compiled(baotou: retwin.Scenario):  # type: ignore[no-untyped-def]
    return retwin.prepare(baotou)
