"""The peers' 5-stage chain (``peer_chain.yaml``, 10 years daily) in retwin next to a
hand-written Numba loop of the same chain (``peer_loop.py``): a warm ``retwin.run``, the
flow kernel alone over the whole horizon in one call (ns per plant-day), and the loop. The
chain's own kernel is compiled first (``retwin warmup benchmarks/peer_chain.yaml`` does the
same), so the run and the first kernel figure are what a user who warmed it up gets; the
general kernel (what a chain not warmed up runs) is timed too. The ratios to the loop go to
``extra_info`` and are printed (``pytest benchmarks/test_bench_peer_chain.py
--benchmark-only -s``).

The machine may change speed from one minute to the next (the loop, which nothing here
changes, has taken from 0.10 to 0.22 ms on one machine within an hour), so each ratio is
also taken pair by pair: after its benchmark, the loop and the measured call take turns
(:data:`PAIRS` times), and the median of the pairs' ratios goes to ``extra_info`` as
``paired_times_the_loop`` with its quartiles. That is the figure to compare with a
target stated against the loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import peer_loop
import retwin
from retwin.engine.model import ChainModel, chain_kernel, specialise_chain
from retwin.kernels.flow import advance_packed

SCENARIO = Path(__file__).with_name("peer_chain.yaml")
_median: dict[str, float] = {}


@pytest.fixture(scope="module")
def peer() -> Any:
    c = retwin.prepare(retwin.load_scenario(SCENARIO))
    specialise_chain(c)  # seconds once; then loaded from the on-disk cache
    return c


#: Turns of the loop and the measured call for a paired ratio.
PAIRS = 41


def _paired(benchmark: Any, name: str, setup: Callable[[], Any], call: Callable[[Any], Any]
            ) -> None:
    """The loop and ``call(setup())`` in turns, :data:`PAIRS` times (the setup untimed);
    the median and quartiles of the ratios of each pair's two times go to ``extra_info``."""
    if benchmark.stats is None:  # --benchmark-disable: nothing timed
        return
    dem = peer_loop.demand()
    ratios = []
    for _ in range(PAIRS):
        t0 = time.perf_counter()
        peer_loop.run(dem)
        loop = time.perf_counter() - t0
        arg = setup()
        t0 = time.perf_counter()
        call(arg)
        ratios.append((time.perf_counter() - t0) / loop)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    benchmark.extra_info["paired_times_the_loop"] = round(float(med), 2)
    benchmark.extra_info["paired_q1_q3"] = [round(float(q1), 2), round(float(q3), 2)]
    print(f"\npeer chain, {name}: {med:.2f} x the hand-written loop, paired "
          f"({PAIRS} turns; quartiles {q1:.2f}-{q3:.2f})")


def _vs_loop(benchmark: Any, name: str) -> None:
    if benchmark.stats is None:  # --benchmark-disable: run once as a test, nothing timed
        return
    med = benchmark.stats.stats.median
    _median[name] = med
    if "loop" in _median and name != "loop":
        ratio = med / _median["loop"]
        benchmark.extra_info["times_the_hand_written_loop"] = round(ratio, 1)
        print(f"\npeer chain, {name}: {med * 1e3:.3f} ms = {ratio:.1f} x the hand-written "
              f"loop ({_median['loop'] * 1e3:.3f} ms)")


@pytest.mark.benchmark(group="peer-chain")
def test_peer_chain_hand_written_loop(benchmark: Any) -> None:
    dem = peer_loop.demand()
    peer_loop.run(dem)  # compiled (or loaded from the cache) outside the timed region
    served, stock, made = benchmark.pedantic(peer_loop.run, args=(dem,), rounds=200,
                                             warmup_rounds=5)
    # mass balance: what the mine made is served, in a store or on its way
    assert made[0] >= served + stock.sum() - 1e-6
    assert served > 0.95 * dem.sum()  # capacity 120 a day against demand 100: served
    _vs_loop(benchmark, "loop")


@pytest.mark.parametrize("kernel", ["chain", "general"])
@pytest.mark.benchmark(group="peer-chain")
def test_peer_chain_kernel_whole_horizon(benchmark: Any, peer: Any, kernel: str) -> None:
    """retwin's flow kernel over the whole horizon in one call (no events between days), as
    the engine calls it (the packed call on the run's own arrays): the chain's own kernel,
    and the general one."""

    def setup() -> tuple[tuple[ChainModel], dict[str, Any]]:
        m = ChainModel(peer, seed=1)
        m.env.run(until=1)  # day-0 events: demand, prices
        return (m,), {}

    call = chain_kernel(peer) if kernel == "chain" else advance_packed
    assert call is not None

    def advance(m: ChainModel) -> ChainModel:
        call(0, peer.n_days, *m._packed)
        return m

    m = benchmark.pedantic(advance, setup=setup, rounds=100, warmup_rounds=3)
    assert m.act_rec.sum() > 0 and np.all(m.stock_rec >= -1e-6)
    _paired(benchmark, f"{kernel} kernel", lambda: setup()[0][0], advance)
    plant_days = len(peer.plant_ids) * peer.n_days
    if benchmark.stats is None:  # --benchmark-disable
        return
    ns = benchmark.stats.stats.median / plant_days * 1e9
    benchmark.extra_info["plant_days"] = plant_days
    benchmark.extra_info["ns_per_plant_day"] = round(ns, 2)
    print(f"\npeer chain, {kernel} kernel: {ns:.1f} ns per plant-day")
    _vs_loop(benchmark, f"{kernel} kernel")


@pytest.mark.benchmark(group="peer-chain")
def test_peer_chain_warm_run(benchmark: Any, peer: Any) -> None:
    res = benchmark.pedantic(retwin.run, args=(peer,), kwargs={"seed": 1}, rounds=50,
                             warmup_rounds=2)
    assert res.balance.closes
    assert res.kpi("fill_rate.segment", "customers", 2030) > 0.99
    benchmark.extra_info["kernel_calls"] = res.kernel_calls
    _vs_loop(benchmark, "run")
    _paired(benchmark, "run", lambda: peer, lambda c: retwin.run(c, seed=1))
