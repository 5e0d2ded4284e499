"""Shared fixtures and builders for retwin's tests.

Hypothesis profiles: ``default`` (compiled kernels), ``nojit`` (the suite's second pass with
``NUMBA_DISABLE_JIT=1``, where every kernel call is plain Python) and ``thorough`` (a deliberate
deep search), chosen by the environment variable ``HYPOTHESIS_PROFILE``.

Markers: ``slow`` marks long multi-run and multi-process tests; ``io`` marks the modules whose
subject is files, the console or the service (refused outputs, readers of the tables, the
registry, the page), which do not change with the JIT. The pass with the JIT off
(``make test-nojit``) leaves both to the compiled pass; the kernels' numbers, the engine, the
markets, what-ifs, studies and the commands run in both.

Builders (``mat``, ``plant``, ``make_scenario``) turn a few keyword arguments into a valid
scenario mapping, so a test states only what it is about. They live here and are imported by
the test modules (``from conftest import make_scenario``); ``tests/`` is on ``sys.path``.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings

import retwin
from retwin.engine.build import compile_scenario
from retwin.engine.model import ChainModel

hyp_settings.register_profile(
    "default", deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow]
)
hyp_settings.register_profile(
    "nojit", deadline=None, max_examples=5, suppress_health_check=[HealthCheck.too_slow]
)
# For a deliberate deep search: HYPOTHESIS_PROFILE=thorough pytest tests/test_kernel.py
hyp_settings.register_profile(
    "thorough", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
TINY_PATH = REPO / "models" / "tiny.yaml"

#: Settings of a deterministic run: no random outages, no price or demand noise.
QUIET: dict[str, bool] = {"outages": False, "price_noise": False, "demand_noise": False}

#: The element mix of every material the builders make (t REO per t REO of the material).
MIX: dict[str, float] = {"La": 0.25, "Ce": 0.45, "Nd": 0.3}


# --- builders -------------------------------------------------------------------------------


def mat(id: str, reo: float = 0.5, *, price: float = 1000.0, **extra: Any) -> dict[str, Any]:
    """A material holding ``reo`` t REO per t, in the fixed element mix :data:`MIX`."""
    comp = {el: reo * f for el, f in MIX.items()} if reo > 0 else {}
    return {"id": id, "name": id, "composition_t_reo_per_unit": comp,
            "price": {"base_cny_per_unit": price}, **extra}


def plant(
    id: str,
    stage: str,
    capacity_tpa: float,
    outputs: dict[str, float],
    inputs: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {"id": id, "name": id, "stage": stage, "capacity_tpa": capacity_tpa,
            "recipe": {"outputs": outputs, "inputs": inputs or {}}, **extra}


def make_tree(
    materials: list[dict[str, Any]],
    plants: list[dict[str, Any]],
    *,
    pools: list[dict[str, Any]] | None = None,
    days: int = 60,
    start: str = "2024-01-01",
    settings: dict[str, bool] | None = None,
    **rest: Any,
) -> dict[str, Any]:
    """A scenario mapping. Pools not given are added (empty) for every material a plant
    delivers or draws from a pool, and for every market's and demand segment's material."""
    pools = [dict(p) for p in pools or []]
    have = {(p.get("region", "baotou"), p["material"]) for p in pools}
    needed: list[str] = []
    for p in plants:
        needed += list(p["recipe"]["outputs"])
        if not p.get("extracts"):
            needed += list(p["recipe"].get("inputs", {}))
    needed += [k["material"] for k in rest.get("markets", [])]
    needed += [g["material"] for g in rest.get("demand", [])]
    for m in dict.fromkeys(needed):
        if ("baotou", m) not in have:
            pools.append({"material": m})
            have.add(("baotou", m))
    begin = dt.date.fromisoformat(start)
    return {
        "name": "test",
        "start": start,
        "end": (begin + dt.timedelta(days=days - 1)).isoformat(),
        "materials": materials,
        "plants": plants,
        "pools": pools,
        "settings": dict(QUIET if settings is None else settings),
        **rest,
    }


def make_scenario(*args: Any, **kwargs: Any) -> retwin.Scenario:
    """:func:`make_tree`, loaded and validated."""
    return retwin.load_scenario(make_tree(*args, **kwargs))


def chain_model(scenario: retwin.Scenario, seed: int = 0) -> ChainModel:
    """An un-run model: its ``_args`` are the kernel's arguments after ``d0, d1``."""
    return ChainModel(compile_scenario(scenario), seed)


def quiet(scenario: retwin.Scenario) -> retwin.Scenario:
    """The scenario with every random stream off."""
    return retwin.apply_changes(scenario, [
        {"kind": "parameter", "path": f"settings.{k}", "value": False} for k in QUIET
    ])


def assert_same_run(a: Any, b: Any) -> None:
    """Two RunResults are equal bit for bit in every array they record."""
    for name in ("activity", "binding", "stock", "imports", "exports", "served", "unmet",
                 "value_month", "price_month", "totals", "final_stock", "in_transit"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.events == b.events


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _leaves_the_process_as_it_found_it() -> Any:
    """Every test leaves this process's signal handling and environment as it found them:
    the commands, servers and workers later tests start inherit both (an ignored SIGTERM
    would not stop them, a thread limit would follow them), so a leak would make those
    tests depend on the order the suite runs in. A leak fails the test that made it."""
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    environ = dict(os.environ)
    yield
    assert {sig: signal.getsignal(sig) for sig in signals} == signals, "signal handling changed"
    changed = sorted(k for k in set(environ) | set(os.environ)
                     if environ.get(k) != os.environ.get(k) and k != "PYTEST_CURRENT_TEST")
    assert not changed, f"environment changed: {changed}"


@pytest.fixture(scope="session")
def tiny_tree_master() -> dict[str, Any]:
    return yaml.safe_load(TINY_PATH.read_text(encoding="utf-8"))


@pytest.fixture
def tiny_tree(tiny_tree_master: dict[str, Any]) -> dict[str, Any]:
    """The tiny model as a mapping, a fresh copy per test (edit freely)."""
    return copy.deepcopy(tiny_tree_master)


@pytest.fixture(scope="session")
def tiny() -> retwin.Scenario:
    """``models/tiny.yaml``, loaded once per session (scenarios are frozen)."""
    return retwin.load_scenario(TINY_PATH)


@pytest.fixture(scope="session")
def tiny_quiet(tiny: retwin.Scenario) -> retwin.Scenario:
    return quiet(tiny)


@pytest.fixture(scope="session")
def tiny_run(tiny: retwin.Scenario) -> Any:
    """One run of the tiny model, seed 1, with its random streams on."""
    return retwin.run(tiny, seed=1)


@pytest.fixture(scope="session")
def tiny_quiet_run(tiny_quiet: retwin.Scenario) -> Any:
    return retwin.run(tiny_quiet, seed=1)
