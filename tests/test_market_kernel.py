"""The compiled market arithmetic (retwin.kernels.market) against numpy's, bit for bit.

A run with markets on is sensitive: a last-bit difference in one month's price grows into
visible differences in later months, so the compiled steps must reproduce numpy's arithmetic
exactly (same operations, same order), not merely closely.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import retwin
from retwin.kernels import market as km


def _numpy_share_out(ask: np.ndarray, share: np.ndarray, allow: float) -> np.ndarray:
    """The water-filling as numpy computed it before it was compiled."""
    got = ask.copy()
    if ask.sum() <= allow:
        return got
    left = max(allow, 0.0)
    open_ = ask > 0
    got[open_] = 0.0
    while open_.any():
        shares = share[open_].sum()
        part = (left * share / shares if shares > 0
                else left * ask / max(ask[open_].sum(), 1e-300))
        fits = open_ & (ask <= part)
        if not fits.any():
            got[open_] = part[open_]
            break
        got[fits] = ask[fits]
        left -= ask[fits].sum()
        open_ &= ~fits
    return got


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 31, 127, 128, 129, 257, 1000, 2049])
def test_pairwise_sum_is_numpys_sum_bit_for_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n + 5) * 10.0 ** rng.uniform(-8, 8, n + 5)
    for lo in (0, 3):
        want = x[lo:lo + n].sum()
        assert 0.0 + km.pairwise_sum(x, lo, n) == want


def test_share_out_is_the_numpy_water_filling_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for case in range(400):
        m = int(rng.integers(1, 6))
        ask = rng.uniform(0, 10, m) * (rng.uniform(size=m) > 0.2)
        share = rng.uniform(0, 1, m) * (rng.uniform(size=m) > 0.2) if case % 3 else np.zeros(m)
        allow = float(rng.uniform(-1, 1.2) * ask.sum())
        got = np.empty(m)
        km.share_out(ask, share, allow, got)
        np.testing.assert_array_equal(got, _numpy_share_out(ask, share, allow))


def test_a_market_run_is_reproducible_bit_for_bit() -> None:
    # the same seed twice: the compiled steps keep no state between runs
    sc = retwin.load_scenario("tiny-markets")
    a, b = retwin.run(sc, seed=5), retwin.run(sc, seed=5)
    np.testing.assert_array_equal(a.price_month, b.price_month)
    np.testing.assert_array_equal(a.activity, b.activity)


def test_warmup_compiles_the_market_kernels_a_run_calls(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Warm-up runs the market month (so it compiles, or loads, the market kernels); compiled,
    a run with markets on after it adds no signature to any market kernel."""
    market = km
    opened: list[int] = []
    real = market.month_open

    def spy(*args: Any) -> Any:
        opened.append(1)
        return real(*args)

    monkeypatch.setattr(market, "month_open", spy)
    retwin.warmup()
    assert opened, "warm-up did not run a market month"
    monkeypatch.undo()
    kernels = {n: f for n, f in vars(market).items() if hasattr(f, "signatures")}
    before = {n: len(f.signatures) for n, f in kernels.items()}
    retwin.run(retwin.load_scenario("tiny-markets"), seed=4)
    assert {n: len(f.signatures) for n, f in kernels.items()} == before
