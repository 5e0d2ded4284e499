"""``run``: one seeded run of a scenario, with its mass balance checked."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from retwin.compiled import Compiled
from retwin.config import MAX_REPLICATIONS
from retwin.engine.build import compile_scenario
from retwin.engine.model import ChainModel, specialise_chain
from retwin.errors import ScenarioError
from retwin.kernels import warmup as _warm_flow
from retwin.results import ReplicationSet, RunResult
from retwin.scenario.load import apply_changes, load_scenario
from retwin.scenario.schema import Scenario

__all__ = ["prepare", "replication_seed", "run", "run_replications", "versions", "warmup"]


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("retwin", "numpy", "numba", "simpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def prepare(scenario: Scenario | Compiled, changes: Iterable[Any] | None = None) -> Compiled:
    """Compile a scenario (with changes applied) once, for many runs."""
    if isinstance(scenario, Compiled):
        if changes:
            return compile_scenario(apply_changes(scenario.scenario, changes))
        return scenario
    if changes:
        scenario = apply_changes(scenario, changes)
    return compile_scenario(scenario)


def replication_seed(seed: int, replication: int) -> int:
    """The engine seed of replication ``replication`` of a study seeded ``seed``.

    Replication 0 uses ``seed`` itself, so a single run and the first replication agree.
    """
    if replication == 0:
        return int(seed)
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(replication),))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def run(
    scenario: Scenario | Compiled,
    *,
    seed: int = 0,
    changes: Iterable[Any] | None = None,
    replication: int = 0,
    check: bool = True,
) -> RunResult:
    """Run ``scenario`` once and return a :class:`~retwin.results.RunResult`.

    The run is reproducible bit for bit from ``seed`` (and ``replication``). Unless
    ``check=False``, the mass balance is checked and a run that does not close raises
    :class:`~retwin.errors.MassBalanceError`.
    """
    if seed < 0:
        raise ScenarioError([("seed", f"seed(={seed}) must be >= 0")])
    c = prepare(scenario, changes)
    eng_seed = replication_seed(seed, replication)
    model = ChainModel(c, eng_seed)
    model.run()
    a = model.arrays
    res = RunResult(
        compiled=c,
        seed=int(seed),
        replication=int(replication),
        activity=a["act_rec"],
        binding=a["code_rec"],
        stock=a["stock_rec"],
        imports=a["imp_rec"],
        exports=a["exp_rec"],
        served=a["served_rec"],
        unmet=a["unmet_rec"],
        value_month=a["val_month"],
        price_month=model.price_rec,
        totals=a["tot"],
        final_stock=a["stock"].copy(),
        in_transit=a["pipe"].sum(axis=1) + a["ipipe"].sum(axis=1),
        events=model.event_log,
        capacity_log=model.capacity_log,
        kernel_calls=model.kernel_calls,
        margin_month=None if model.economy is None else model.economy.margin_rec,
        metadata={"seed": int(seed), "replication": int(replication), "engine_seed": eng_seed},
    )
    model.close()
    if check:
        res.check_balance()
    return res


def run_replications(
    scenario: Scenario | Compiled,
    replications: int,
    *,
    seed: int = 0,
    changes: Iterable[Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    each: Callable[[RunResult], None] | None = None,
) -> ReplicationSet:
    """Run ``replications`` seeded replications; keep the first run whole and every run's
    annual KPIs. The same ``seed`` gives the same replications (common random numbers).

    ``each``, when given, sees every run whole as it ends (before ``progress``), to read
    what the KPI frames do not keep."""
    if not 1 <= replications <= MAX_REPLICATIONS:
        raise ScenarioError([("replications",
                              f"replications(={replications}) must be in 1..{MAX_REPLICATIONS}")])
    c = prepare(scenario, changes)
    first = None
    values = []
    monthly = []  # (one run: its monthly values are read from it, when they are wanted)
    for r in range(replications):
        res = run(c, seed=seed, replication=r)
        values.append(res.kpi_values)
        if replications > 1:
            monthly.append(res.monthly_array())
        if each is not None:
            each(res)
        if first is None:
            first = res
        if progress is not None:
            progress(r + 1, replications)
    assert first is not None
    return ReplicationSet(first=first, kpi_values=values,
                          seeds=[(seed, r) for r in range(replications)],
                          monthly_stack=np.stack(monthly) if monthly else None)


def warmup(*chains: str | Path | Scenario | Compiled) -> float:
    """Compile (or load from the on-disk cache) every kernel a run calls; returns the seconds
    taken. The flow kernel is warmed on an empty chain; the market month's kernels by one
    month of ``tiny-markets`` (their argument types are a market run's), so that the first
    run with markets on compiles nothing either.

    Each of ``chains`` (a scenario, or the name or path of one) also gets the flow kernel
    specialised to its structure (:mod:`retwin.kernels.specialised`): seconds to compile
    once per chain and machine, after which its runs, and those of its what-ifs and sweeps
    that keep its plants, pools and trade links, take it (the flow kernel in about half the
    time)."""
    t0 = time.perf_counter()
    _warm_flow()
    month = apply_changes(load_scenario("tiny-markets"),
                          [{"kind": "parameter", "path": "end", "value": "2024-02-29"}])
    run(month, seed=0)
    for chain in chains:
        specialise_chain(prepare(load_scenario(chain) if isinstance(chain, str | Path)
                                 else chain))
    return time.perf_counter() - t0
