"""The flow kernel alone: the whole Baotou horizon in one call, no events."""

from __future__ import annotations

import numpy as np
import pytest

from retwin.engine.model import ChainModel
from retwin.kernels.flow import advance_unchecked


@pytest.mark.benchmark(group="kernel")
def test_advance_whole_horizon(benchmark, baotou_compiled) -> None:  # type: ignore[no-untyped-def]
    c = baotou_compiled

    def setup():  # type: ignore[no-untyped-def]
        m = ChainModel(c, seed=0)
        m.env.run(until=1)  # day-0 events: quota year, prices, demand
        return (m,), {}

    def advance(m):  # type: ignore[no-untyped-def]
        advance_unchecked(0, c.n_days, *m._args)
        return m

    m = benchmark.pedantic(advance, setup=setup, rounds=30, warmup_rounds=2)
    assert m.act_rec.sum() > 0
    assert np.all(m.stock_rec >= -1e-6)
