"""The compiled market arithmetic (retwin.kernels.market): its sums and water-filling against
numpy's, bit for bit, and the month against a numpy formulation of it.

A run with markets on is sensitive: a last-bit difference in one month's price grows into
visible differences in later months, so a run must reproduce itself exactly, and each month's
arithmetic must be what the numpy formulation computes (up to the last bits of its BLAS
products and SIMD ``exp``/``log``).
"""

from __future__ import annotations

import contextlib
import inspect
import types
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest

import retwin
from conftest import assert_same_run
from retwin.kernels import market as km
from retwin.kernels import trade as trade_kernel
from retwin.kernels._jit import indices_as_given

JIT = not numba.config.DISABLE_JIT


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
    real = market.month

    def spy(*args: Any) -> Any:
        opened.append(1)
        return real(*args)

    monkeypatch.setattr(market, "month", spy)
    retwin.warmup()
    assert opened, "warm-up did not run a market month"
    monkeypatch.undo()
    kernels = {n: f for n, f in vars(market).items() if hasattr(f, "signatures")}
    before = {n: len(f.signatures) for n, f in kernels.items()}
    retwin.run(retwin.load_scenario("tiny-markets"), seed=4)
    assert {n: len(f.signatures) for n, f in kernels.items()} == before


def _numpy_room(v: dict[str, Any], a: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each plant's rate within its quota and the most its quota lets it run, in numpy."""
    ramp_col = min(v["day"], v["ramp"].shape[1] - 1)
    running = v["cap_day"] * v["avail"] * v["ramp"][:, ramp_col]
    granted, room = running.copy(), np.full(len(running), np.inf)
    pace_days = max(float(a.days_left[min(v["day"], len(a.days_left) - 1)]), 1.0)
    for q in range(len(v["q_left"])):
        idx = np.flatnonzero(a.plant_quota == q)
        if len(idx) == 0:
            continue
        pace = max(v["q_left"][q], 0.0) / pace_days
        coef, share = a.qcoef[idx], a.qshare[idx]
        got = _numpy_share_out(running[idx] * coef, share, pace)
        with np.errstate(divide="ignore", invalid="ignore"):
            granted[idx] = np.where(coef > 0, got / coef, running[idx])
            own = pace * share / share.sum() if share.sum() > 0 else np.full(len(idx),
                                                                             pace / len(idx))
            room[idx] = np.where(coef > 0, np.maximum(own, pace - (got.sum() - got)) / coef,
                                 np.inf)
    return granted, room


def _numpy_month(v: dict[str, Any], a: Any) -> dict[str, np.ndarray]:
    """One month of markets as the numpy formulation computes it (dense products, numpy's
    ``exp``/``log``/``**``), from the compiled month's inputs ``v`` and the scenario's
    market arrays ``a``."""
    w, t, n = v["w"], v["t"], v["day"] - v["prev_day"]
    n_m, n_p, n_s, n_k = a.out_mp.shape[1], len(a.cash_cost), len(a.pool_mat), len(a.mk_mat)
    static = dict(zip(km.STATIC_PARTS, km.static_parts(v["si"], v["sx"]), strict=True))
    par = dict(zip(km.PAR_NAMES, static["par"], strict=True))
    days = slice(v["prev_day"], v["day"])
    unmet = v["unmet_rec"][:, days].sum(axis=1)
    asked = (v["served_rec"][:, days].sum(axis=1) + unmet) / n
    not_shipped = np.maximum(w[km.W_EXP_ASKED, :n_k] - v["exp_rec"][:, days].sum(axis=1), 0.0)
    granted, room = _numpy_room(v, a)
    offtake = a.draw_sp @ granted + a.seg_sg @ asked + a.mk_sk @ v["exp_cap_day"]
    short = ((v["short_sum"] - w[km.W_SHORT_THEN, :n_s]) + a.seg_sg @ unmet
             + a.mk_sk @ not_shipped)
    # 1. prices
    p, ref = w[km.W_P, :n_m], v["ref"][:, t]
    # the anchor of a material that follows a formed price: its share of that price's gap
    lead = a.link_from
    moved = (lead >= 0) & (a.has_pool[lead] > 0) & (ref[lead] > km.TINY) & (p[lead] > km.TINY)
    anchor = np.where(moved, ref * (1.0 + a.link_share * (p[lead] / np.where(
        moved, ref[lead], 1.0) - 1.0)), ref)
    ok = (a.has_pool > 0) & (p > km.TINY) & (anchor > km.TINY)
    ratio = np.where(ok, anchor / np.where(ok, p, 1.0), 1.0)
    free = np.maximum(v["stock"] - v["reserve"], 0.0)
    target = np.where(a.target_t > 0, a.target_t, par["cover_target_days"] * offtake)
    free_m = np.bincount(a.pool_mat, free - short, minlength=n_m)
    target_m = np.bincount(a.pool_mat, target, minlength=n_m)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(target_m > km.TINY, np.maximum(
            (target_m - free_m) / np.maximum(target_m, km.TINY), -1.0), 0.0)
        gap = np.where(gap > 1.0, 1.0 + np.log(np.maximum(gap, 1.0)), gap)
    step = np.clip(par["price_adjust"] * gap + par["reference_pull"] * np.log(ratio),
                   -par["max_step"], par["max_step"])
    p = np.where(ok, p * np.exp(step), ref)
    # 3. producers
    revenue, bought = a.out_mp @ p, a.in_mp @ p
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(revenue > 1e-12, (revenue - (bought + a.cash_cost))
                          / np.maximum(revenue, 1e-12), 0.0)
    sm = w[km.W_SMOOTH_MARGIN, :n_p]
    ex = w[km.W_EXPECTED, :n_s]
    if v["primed"]:
        sm, ex = sm + (margin - sm) * par["smooth"], ex + (offtake - ex) * par["smooth"]
    else:
        sm, ex = margin, offtake
    ceiling = np.minimum(v["cap_max_day"], room)
    inflow = a.make_sp @ ceiling
    position = free + v["pipe_sum"] + v["ipipe_sum"]
    need = ex + (target + ex * a.lead_s - position) / par["inventory_adjust_days"]
    with np.errstate(divide="ignore", invalid="ignore"):
        pace = np.where(inflow > km.TINY, need / np.maximum(inflow, km.TINY), np.inf)
    u_margin = np.clip(1.0 + (sm - a.margin0) / par["margin_band"], 0.0, 1.0)
    paced = np.where(a.main_sp > 0, pace[:, None], -np.inf).max(axis=0, initial=-np.inf)
    paced = np.where(paced == -np.inf, np.inf, paced)
    u_pull = np.clip(paced, 0.0, 1.0)
    u = np.maximum(par["min_util"], np.minimum(u_margin, u_pull))
    full = u >= 1.0 - 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(full, 1.0, np.where(
            v["cap_max_day"] > km.TINY, u * ceiling / np.maximum(v["cap_max_day"], km.TINY), u))
        want = np.where(np.isfinite(paced), np.maximum(paced, 0.0) * ceiling, np.inf)
    # 2. outside curves at the month's prices
    kf = dict(zip(km.KF_NAMES, v["kf"], strict=True))
    pm, rm = p[a.mk_mat], v["ref"][a.mk_mat, t]
    both = (pm > km.TINY) & (rm > km.TINY)
    pm, rm = np.where(both, pm, 1.0), np.where(both, rm, 1.0)
    imp_share = kf["imp_on"] * np.where(both, np.clip(
        kf["imp_base_share"] + (pm / rm - 1.0 - kf["imp_premium"]) / kf["imp_slope"], 0, 1), 1.0)
    exp_tpa = kf["exp_on"] * np.maximum(
        kf["exp_base_tpa"] + kf["exp_depth_tpa"] * (1.0 - pm / rm) / kf["exp_slope"], 0.0)
    # 4. demand
    seen = w[km.W_SEEN, :n_m] + (p - w[km.W_SEEN, :n_m]) * par["alpha"]
    sm_g = a.seg_price_mat
    rel = np.maximum(seen[sm_g], km.TINY) / np.maximum(a.ref_price_month[sm_g, t], km.TINY)
    dem_rate = v["rates"][:, t] * np.where(seen[sm_g] > km.TINY, rel ** a.seg_elasticity, 1.0)
    reason = np.where(full, 0, np.where(u_margin < u_pull, km.BIND_MARGIN, km.BIND_DEMAND))
    return {"p": p, "seen": seen, "smooth_margin": sm, "expected": ex, "share": np.minimum(
        share, 1.0), "want": want, "imp_share": imp_share, "exp_tpa": exp_tpa,
        "dem_rate": dem_rate, "decision": u, "margin": margin, "reason": reason,
        "short_then": v["short_sum"]}


def _months_of(sc: retwin.Scenario, seed: int) -> tuple[Any, list[dict[str, Any]]]:
    """The inputs of every compiled month of a run (copies, as the month received them)."""
    from retwin.engine.markets import market_arrays
    from retwin.engine.run import prepare

    c = prepare(sc)
    params = list(inspect.signature(getattr(km.month, "py_func", km.month)).parameters)
    calls: list[dict[str, Any]] = []
    real = km.month

    def spy(*args: Any) -> Any:
        calls.append({n: (x.copy() if isinstance(x, np.ndarray) else x)
                      for n, x in zip(params, args, strict=True)})
        return real(*args)

    km.month = spy
    try:
        retwin.run(c, seed=seed)
    finally:
        km.month = real
    return market_arrays(c), calls


@pytest.mark.parametrize("name, changes", [
    ("baotou-2024", []),
    ("china-2024", []),  # outside demand grows year by year
    ("tiny-markets", [{"kind": "quota", "quota": "mining", "factor": 0.3}]),  # quota binds
])
def test_the_compiled_month_is_the_numpy_formulation(name: str, changes: list[Any]) -> None:
    """Every month of a run, the compiled month (sparse products in column order, the C
    library's exp/log/pow) gives what the dense numpy formulation gives from the same inputs,
    up to rounding."""
    sc = retwin.apply_changes(retwin.load_scenario(name), changes)
    a, calls = _months_of(sc, seed=2)
    assert len(calls) > 20
    n_m, n_p, n_k = a.out_mp.shape[1], len(a.cash_cost), len(a.mk_mat)
    for v in calls:
        want = _numpy_month(v, a)
        w, t = v["w"], v["t"]
        km.month(*v.values())
        got = {"p": w[km.W_P, :n_m], "seen": w[km.W_SEEN, :n_m],
               "smooth_margin": w[km.W_SMOOTH_MARGIN, :n_p],
               "expected": w[km.W_EXPECTED, :len(a.pool_mat)], "share": w[km.W_SHARE, :n_p],
               "want": w[km.W_WANT, :n_p], "imp_share": w[km.W_IMP_SHARE, :n_k],
               "exp_tpa": w[km.W_EXP_TPA, :n_k], "dem_rate": v["dem_rate"],
               "decision": v["decision_rec"][:, t], "margin": v["margin_rec"][:, t],
               "reason": v["reason_rec"][:, t],
               "short_then": w[km.W_SHORT_THEN, :len(a.pool_mat)]}
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} month {t}: {key}")
        np.testing.assert_array_equal(v["price"], got["p"])
        np.testing.assert_array_equal(v["price_rec"][:, t], got["p"])


@pytest.mark.parametrize("name", ["baotou-2024", "china-2024"])
def test_a_month_that_hands_over_hands_over_what_the_chain_would(name: str) -> None:
    """A month's call that hands its decisions and outside curves to the flow itself
    (``hand``) leaves every array as the month without it followed by
    :func:`retwin.kernels.trade.hand_over` does, bit for bit; a year whose outside demand
    grows (china-2024) is handed over by the process instead."""
    _, calls = _months_of(retwin.load_scenario(name), seed=2)
    handed = [v for v in calls if v["hand"]]
    assert len(handed) > 20
    if name == "china-2024":
        assert len(handed) < len(calls)  # a new year's month: the process hands it over
    for v in handed[::7]:
        fused = {n: (x.copy() if isinstance(x, np.ndarray) else x) for n, x in v.items()}
        apart = {n: (x.copy() if isinstance(x, np.ndarray) else x) for n, x in v.items()}
        km.month(*fused.values())
        km.month(*{**apart, "hand": False}.values())
        w, n_p, n_k = apart["w"], len(apart["cap_day"]), len(apart["exp_cap_day"])
        trade_kernel.hand_over(True, w[km.W_SHARE, :n_p], w[km.W_WANT, :n_p],
                               apart["decision"], apart["want_day"], apart["cap_max_day"],
                               apart["cap_day"], w[km.W_IMP_SHARE, :n_k],
                               w[km.W_EXP_TPA, :n_k], apart["contract"], apart["trade"],
                               apart["imp_cap_day"], apart["exp_cap_day"],
                               apart["exp_contract_day"], w[km.W_EXP_ASKED, :n_k],
                               int(apart["days"]))
        for n, x in fused.items():
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, apart[n], err_msg=f"month {v['t']}: {n}")
        assert not np.array_equal(fused["trade"], v["trade"])  # it did hand over


def _checked_market_kernels() -> types.ModuleType:
    """A copy of :mod:`retwin.kernels.market` whose kernels are compiled with their indices
    as given (as the module's are) and with bounds checks: any index out of range, a
    negative one included, raises IndexError. (Compiled on their first call: make it
    inside :func:`retwin.kernels._jit.indices_as_given`.)"""

    def checked_jit(fn: Any = None, **_: Any) -> Any:
        def wrap(f: Any) -> Any:
            return numba.njit(boundscheck=True, error_model="numpy", nogil=True)(f)
        return wrap(fn) if fn is not None else wrap

    source = Path(km.__file__).read_text(encoding="utf-8")
    line = "jit = functools.partial(_jit.jit, wraparound=False)\n"
    assert line in source
    mod = types.ModuleType("market_checked")
    mod.__dict__["checked_jit"] = checked_jit
    exec(compile(source.replace(line, "jit = checked_jit\n"), km.__file__, "exec"),
         mod.__dict__)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(not JIT, reason="bounds checks are compiled code's")
def test_the_market_kernels_index_nothing_below_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The market kernels are compiled with their indices as given (no wraparound of
    negative ones): none may index below zero. Compiled that way with bounds checks, they
    run the markets-on models (a quota that binds, outside demand that grows, a price that
    follows another, investment) and give the numbers of the module's kernels, bit for
    bit."""
    checked = _checked_market_kernels()
    runs = [("tiny-markets", [{"kind": "quota", "quota": "mining", "factor": 0.3}]),
            ("baotou-2024", [{"kind": "quota", "quota": "mining", "factor": 0.5,
                              "from": "2025-01-01"}]),
            ("china-2024", [])]
    for i, (name, changes) in enumerate(runs):
        sc = retwin.apply_changes(retwin.load_scenario(name), changes)
        for fn in ("month", "close", "start_pass", "follow_links"):
            monkeypatch.setattr(km, fn, getattr(checked, fn))
        with indices_as_given() if i == 0 else contextlib.nullcontext():  # (compiled now)
            got = retwin.run(sc, seed=2)
        monkeypatch.undo()
        assert_same_run(got, retwin.run(sc, seed=2))


def _numpy_follow(ref: np.ndarray, price_month: np.ndarray, ref0: np.ndarray,
                  link_from: np.ndarray, link_share: np.ndarray) -> np.ndarray:
    """The outside prices' cost pass-through as numpy computed it before it was compiled."""
    ref = ref.copy()
    for _ in range(len(link_from)):
        moved = False
        for i in np.flatnonzero(link_from >= 0):
            j = link_from[i]
            rel = np.where(ref0[j] > 1e-12, ref[j] / np.maximum(ref0[j], 1e-12), 1.0)
            new = price_month[i] * (1.0 + link_share[i] * (rel - 1.0))
            if not np.array_equal(new, ref[i]):
                ref[i] = new
                moved = True
        if not moved:
            break
    return ref


def test_follow_links_is_the_numpy_pass_through_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    # 0 <- 2 <- 4 (a follower before its leader needs a second pass), 1 <- 0, 3 alone
    link_from = np.array([2, 0, 4, -1, -1, 3], np.int64)
    for _ in range(50):
        ref0 = rng.uniform(1, 10, (6, 12)) * (rng.uniform(size=(6, 12)) > 0.1)
        price_month = ref0 * rng.uniform(0.5, 2.0, (6, 12))
        ref = price_month * np.exp(rng.standard_normal((6, 12)) * 0.1)
        share = rng.uniform(0, 1, 6)
        want = _numpy_follow(ref, price_month, ref0, link_from, share)
        km.follow_links(ref, price_month, ref0, link_from, share)
        np.testing.assert_array_equal(ref, want)


def test_static_parts_unpack_what_pack_static_packed() -> None:
    rng = np.random.default_rng(4)
    n_m, n_p, n_s, n_g, n_k, n_t = 5, 7, 4, 3, 6, 9
    parts = {"pool_mat": rng.integers(0, n_m, n_s), "plant_quota": rng.integers(-1, 2, n_p),
             "mk_mat": rng.integers(0, n_m, n_k), "seg_mat": rng.integers(0, n_m, n_g),
             "csr_ptr": rng.integers(0, 9, 11), "csr_col": rng.integers(0, 9, 13),
             "days_left": rng.integers(1, 366, 40), "csr_val": rng.uniform(size=13),
             "pf": rng.uniform(size=(4, n_p)), "sf": rng.uniform(size=(2, n_s)),
             "mf": rng.uniform(size=n_m), "par": rng.uniform(size=len(km.PAR_NAMES)),
             "ref0": rng.uniform(size=(n_m, n_t)), "seg_el": rng.uniform(size=n_g),
             "link": rng.uniform(size=(2, n_m))}
    got = km.static_parts(*km.pack_static(**parts))
    assert len(got) == len(km.STATIC_PARTS)
    for name, x in zip(km.STATIC_PARTS, got, strict=True):
        np.testing.assert_array_equal(x, parts[name], err_msg=name)
        assert x.shape == parts[name].shape, name
    with pytest.raises(TypeError, match="pack_static takes"):
        km.pack_static(**{k: v for k, v in parts.items() if k != "par"})


def test_sparse_rows_hold_each_matrix_entry_by_entry() -> None:
    """``_csr`` (the market kernel's sparse layout) read back by its own rules gives every
    matrix again, entry for entry, whatever the shapes: empty, all zero, dense, with a NaN
    (a nonzero, as ``np.nonzero`` counts it)."""
    from retwin.engine.markets import _csr

    rng = np.random.default_rng(7)
    cases: list[list[np.ndarray]] = [[np.zeros((0, 3))], [np.zeros((3, 0)), np.ones((2, 2))],
                                     [np.zeros((2, 2))]]
    for _ in range(200):
        mats = []
        for _ in range(int(rng.integers(1, 7))):
            r, c = (int(x) for x in rng.integers(0, 6, 2))
            m = rng.normal(size=(r, c))
            m[rng.random((r, c)) < 0.6] = 0.0
            if m.size and rng.random() < 0.1:
                m.flat[0] = np.nan
            mats.append(m)
        cases.append(mats)
    for mats in cases:
        ptr, col, val = _csr(mats)
        assert ptr.dtype == col.dtype == np.int64 and val.dtype == np.float64
        for i, m in enumerate(mats):
            head = ptr[i]
            back = np.zeros_like(m)
            for r in range(m.shape[0]):
                lo, hi = ptr[head + r], ptr[head + r + 1]
                assert np.all(np.diff(col[lo:hi]) > 0)  # column order within a row
                back[r, col[lo:hi]] = val[lo:hi]
                assert hi - lo == np.count_nonzero(m[r])
            np.testing.assert_array_equal(back, m)
