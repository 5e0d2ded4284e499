"""Whole runs: one Baotou run (7 years, daily flow, outages on), replications, and the cost of
a run against plants × days on synthetic chains."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import retwin
from retwin.kernels import market as kmarket
from synthetic import chain


@pytest.mark.benchmark(group="engine")
def test_baotou_one_run(benchmark, baotou_compiled) -> None:  # type: ignore[no-untyped-def]
    res = benchmark(retwin.run, baotou_compiled, seed=1)
    assert res.balance.closes
    assert any(kind == "failure" for _, kind, _ in res.events)  # outages are on
    benchmark.extra_info["events"] = len(res.events)
    benchmark.extra_info["kernel_calls"] = res.kernel_calls


@pytest.mark.benchmark(group="engine")
def test_baotou_prepare_and_run(benchmark, baotou) -> None:  # type: ignore[no-untyped-def]
    """What a what-if costs end to end: compile the scenario, run, check, annual KPIs."""

    def whatif():  # type: ignore[no-untyped-def]
        return retwin.run(baotou, seed=1).kpis

    kpis = benchmark(whatif)
    assert not kpis.empty


@pytest.mark.benchmark(group="engine")
def test_baotou_market_month(benchmark, baotou_compiled) -> None:  # type: ignore[no-untyped-def]
    """One compiled market month as the market process calls it (baotou-2024's month 20,
    its inputs as the run gave them): what each of a markets-on run's 84 months costs."""
    seen: list[tuple[Any, ...]] = []
    month = kmarket.month

    def spy(*args: Any) -> None:
        if args[0] == 20:
            seen.append(tuple(x.copy() if isinstance(x, np.ndarray) else x for x in args))
        month(*args)

    kmarket.month = spy
    try:
        retwin.run(baotou_compiled, seed=1)
    finally:
        kmarket.month = month
    (args,) = seen
    benchmark(month, *args)
    w = args[list(inspect.signature(getattr(month, "py_func", month)).parameters).index("w")]
    assert np.isfinite(w[kmarket.W_P]).all()


@pytest.mark.benchmark(group="batch")
def test_baotou_100_replications(benchmark, baotou_compiled) -> None:  # type: ignore[no-untyped-def]
    rs = benchmark.pedantic(retwin.run_replications, args=(baotou_compiled, 100),
                            kwargs={"seed": 3}, rounds=3, warmup_rounds=1)
    assert len(rs.kpi_frames) == 100
    s = rs.summary.dropna(subset=["p5", "p95"])  # a stock cover without use is NaN
    assert len(s) > 0.9 * len(rs.summary) and s["p95"].ge(s["p5"]).all()


@pytest.mark.benchmark(group="scaling")
@pytest.mark.parametrize("plants", [12, 100, 1000])
@pytest.mark.parametrize("years", [1, 4])
def test_scaling_plants_days(benchmark, plants: int, years: int) -> None:
    c = retwin.prepare(chain(plants, years))
    res = benchmark.pedantic(retwin.run, args=(c,), kwargs={"seed": 1},
                             rounds=5 if plants < 1000 else 2, warmup_rounds=1)
    assert res.balance.closes
    benchmark.extra_info["plant_days"] = len(c.plant_ids) * c.n_days
