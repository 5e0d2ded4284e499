"""What a caller reads of a finished baotou-2024 run, each on a fresh run (made outside the
timed region): the KPI frame; the bottlenecks with the binding table and the targets (after
the KPIs, which they read); the monthly series. The 4,000-plant chain's KPIs too: one line
per plant must not grow with plants x materials."""

from __future__ import annotations

from typing import Any

import pytest

import retwin
from synthetic import chain


def _fresh(c: Any, *read: str) -> Any:
    seeds = iter(range(10**6))

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        r = retwin.run(c, seed=next(seeds))
        for name in read:  # what is read before the timed part
            getattr(r, name)
        return (r,), {}

    return setup


@pytest.mark.benchmark(group="results")
def test_kpis(benchmark: Any, baotou_compiled: Any) -> None:
    df = benchmark.pedantic(lambda r: r.kpis, setup=_fresh(baotou_compiled), rounds=40,
                            warmup_rounds=2)
    assert len(df) > 1000 and df.value.notna().any()


@pytest.mark.benchmark(group="results")
def test_bottlenecks_binding_and_targets(benchmark: Any, baotou_compiled: Any) -> None:
    def read(r: Any) -> Any:
        return r.bottlenecks, r.binding_table, r.target_table

    bn, bt, _ = benchmark.pedantic(read, setup=_fresh(baotou_compiled, "kpis"), rounds=40,
                                   warmup_rounds=2)
    assert len(bn) == len(bt.year.unique())
    assert bt.groupby(["stage", "year"]).share.sum().between(1 - 1e-9, 1 + 1e-9).all()


@pytest.mark.benchmark(group="results")
def test_monthly_values(benchmark: Any, baotou_compiled: Any) -> None:
    labels, values = benchmark.pedantic(lambda r: r.monthly_values(),
                                        setup=_fresh(baotou_compiled), rounds=40,
                                        warmup_rounds=2)
    assert len(labels) == len(values)


@pytest.mark.benchmark(group="results")
def test_kpis_of_a_4000_plant_chain(benchmark: Any) -> None:
    c = retwin.prepare(chain(4000, 1))
    df = benchmark.pedantic(lambda r: r.kpis, setup=_fresh(c), rounds=5, warmup_rounds=1)
    assert (df.kpi == "output.plant").sum() >= 4000
