"""The flow kernel alone: the whole Baotou horizon in one call, no events, called as the
engine calls it (the packed call on the run's own arrays: nothing copied in or out), the
model's chain kernel (``retwin warmup`` compiles it) and the general one."""

from __future__ import annotations

import numpy as np
import pytest

from retwin.engine.model import ChainModel, chain_kernel
from retwin.kernels.flow import advance_packed


@pytest.mark.parametrize("kernel", ["chain", "general"])
@pytest.mark.benchmark(group="kernel")
def test_advance_whole_horizon(benchmark, baotou_compiled, kernel) -> None:  # type: ignore[no-untyped-def]
    c = baotou_compiled

    def setup():  # type: ignore[no-untyped-def]
        m = ChainModel(c, seed=0)
        m.env.run(until=1)  # day-0 events: quota year, prices, demand
        return (m,), {}

    call = chain_kernel(c) if kernel == "chain" else advance_packed
    assert call is not None  # compiled by the session's warm-up

    def advance(m):  # type: ignore[no-untyped-def]
        call(0, c.n_days, *m._packed)
        return m

    m = benchmark.pedantic(advance, setup=setup, rounds=30, warmup_rounds=2)
    assert m.act_rec.sum() > 0
    assert np.all(m.stock_rec >= -1e-6)
    if benchmark.stats is not None:  # (None: --benchmark-disable, nothing timed)
        plant_days = len(c.plant_ids) * c.n_days
        benchmark.extra_info["ns_per_plant_day"] = round(
            benchmark.stats.stats.median / plant_days * 1e9, 2)
