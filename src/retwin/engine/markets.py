"""Compile a scenario's economics into the arrays the monthly market process reads.

Known before the run: which pools each plant draws from and delivers to (per unit of
activity), which pools each demand segment and each outside market touches, every plant's
processing cash cost, each outside market's curve parameters, and the outside reference price
paths without the scenario's price shocks (demand responds to prices against those).

**Outside curves.** Trade with the outside is driven by the price gap: an import side
offers ``import.base_tpa`` (default nothing) at the outside price and more as the region
pays above it; an export side takes ``export.base_tpa`` (default nothing) at the outside
price and more as the region sells below it. A region short of a material therefore pays a
little over the outside price to draw imports, and one with a surplus sells it at a discount.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from retwin._typing import FloatArray, IntArray
from retwin.engine.build import Compiled, _price_paths
from retwin.kernels.market import CSR_NAMES, KF_NAMES, PAR_NAMES, pack_static
from retwin.processes.economy import SMOOTH

__all__ = ["MarketArrays", "compile_markets", "market_arrays"]


def market_arrays(c: Compiled) -> MarketArrays:
    """:func:`compile_markets` of ``c``, computed once per compiled scenario: once for the
    compiled data it comes from (:attr:`~retwin.compiled.Compiled.data`) when no change of
    ``c`` reaches them (they follow from the data and the price paths, which only a price
    change moves)."""
    cached = c.__dict__.get("_market_arrays")
    if cached is None:
        data = c.data
        cached = (market_arrays(data) if data is not None and c.price_month is data.price_month
                  else compile_markets(c))
        c.__dict__["_market_arrays"] = cached
    return cached


@dataclass(frozen=True)
class MarketArrays:
    """Axes: S pools, P plants, M materials, K outside markets, G demand segments,
    T months. Amounts are per unit of plant activity; prices in CNY per unit."""

    pool_mat: IntArray  # (S,) material of each pool
    draw_sp: FloatArray  # (S, P) drawn from pool s per unit of plant p's activity
    make_sp: FloatArray  # (S, P) delivered to pool s per unit of plant p's activity
    seg_sg: FloatArray  # (S, G) 1 where segment g draws from pool s
    mk_sk: FloatArray  # (S, K) 1 where market k trades with pool s
    target_t: FloatArray  # (S,) working stock (0: cover_target_days of use)
    in_mp: FloatArray  # (P, M) pooled input per unit of activity (what a plant buys)
    out_mp: FloatArray  # (P, M) output per unit of activity (what it sells)
    cash_cost: FloatArray  # (P,) CNY per unit of activity
    decide_pool: IntArray  # (P,) the pool of the plant's most valuable output
    main_sp: FloatArray  # (S, P) 1 where pool s takes one of plant p's main outputs
                         # (none for a planned plant: no demand paces it)
    lead_s: FloatArray  # (S,) capacity-weighted lead time (days) of the plants making into s
    margin0: FloatArray  # (P,) margin at the start's prices, where negative (else 0)
    imp_base_share: FloatArray  # (K,) share of the import cap on offer at parity
    imp_on: FloatArray  # (K,) 1 where the market has an import side
    exp_on: FloatArray  # (K,) 1 where the market has an export side
    imp_premium: FloatArray  # (K,)
    imp_slope: FloatArray  # (K,)
    exp_base_tpa: FloatArray  # (K,)
    exp_slope: FloatArray  # (K,)
    exp_depth_tpa: FloatArray  # (K,) the scenario's export caps (before any control)
    exp_contract_tpa: FloatArray  # (K,) exports under long-term contracts
    exp_growth: FloatArray  # (K,) growth of outside demand per calendar year
    year_index: IntArray  # (T,) calendar years since the start's, per month
    mk_mat: IntArray  # (K,) material of each market
    seg_price_mat: IntArray  # (G,) material whose price each segment responds to
    seg_elasticity: FloatArray  # (G,)
    ref_price_month: FloatArray  # (M, T) outside paths without price shocks
    link_from: IntArray  # (M,) material whose outside price this one follows (-1: none)
    link_share: FloatArray  # (M,)
    has_pool: FloatArray  # (M,) 1 where the material has a pool (its price is formed)
    # quotas: what a plant may run is its licence share of its quota's pace
    plant_quota: IntArray  # (P,) quota of each plant (-1: none)
    qcoef: FloatArray  # (P,) t REO counted against the quota per unit of activity
    qshare: FloatArray  # (P,) licence share of each plant in its quota
    days_left: IntArray  # (D,) days left in the calendar year, today included
    # investment (None: off): per stage with a build time, its plants and the days to build
    invest_stages: list[tuple[str, IntArray, int]]
    invest_margin: float
    invest_util: float
    invest_window: int
    invest_step: float
    # scalars (from Economics)
    price_adjust: float
    max_step: float
    reference_pull: float
    cover_target_days: float
    inventory_adjust_days: float
    margin_band: float
    min_util: float
    response_months: float
    #: the static arrays as the compiled month takes them (:mod:`retwin.kernels.market`):
    #: ``(si, sx, kf)``, the blobs of :func:`~retwin.kernels.market.pack_static` and the
    #: outside curves (``KF_NAMES``)
    packed: tuple[Any, ...] = ()


def _csr(mats: list[FloatArray]) -> tuple[IntArray, IntArray, FloatArray]:
    """Dense matrices packed as sparse rows (the layout :mod:`retwin.kernels.market` reads):
    the start of each matrix's row pointers, then the row pointers of each in turn into the
    column indices and values of its nonzero entries, row by row in column order."""
    heads: list[int] = []
    ptrs: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[FloatArray] = []
    n_ptr = n_nz = 0
    for m in mats:
        a = np.asarray(m, dtype=np.float64)
        rows, cs = np.nonzero(a)  # row by row, in column order within a row
        ptr = np.empty(a.shape[0] + 1, np.int64)
        ptr[0] = 0
        np.cumsum(np.count_nonzero(a, axis=1), out=ptr[1:])
        heads.append(len(mats) + n_ptr)
        ptrs.append(ptr + n_nz)
        cols.append(cs.astype(np.int64))
        vals.append(a[rows, cs])
        n_ptr += len(ptr)
        n_nz += len(cs)
    return (np.concatenate([np.array(heads, np.int64), *ptrs]),
            np.concatenate([np.zeros(0, np.int64), *cols]),
            np.concatenate([np.zeros(0, np.float64), *vals]))


def _pack(a: MarketArrays) -> tuple[Any, ...]:
    """``a``'s static arrays packed for :func:`retwin.kernels.market.month` (contiguous,
    float64 / int64), computed once per compiled scenario."""
    def f64(x: Any) -> FloatArray:
        return np.ascontiguousarray(x, dtype=np.float64)

    def i64(x: Any) -> IntArray:
        return np.ascontiguousarray(x, dtype=np.int64)

    alpha = 1.0 - math.exp(-1.0 / a.response_months) if a.response_months > 0 else 1.0
    scalars = {"price_adjust": a.price_adjust, "max_step": a.max_step,
               "reference_pull": a.reference_pull, "cover_target_days": a.cover_target_days,
               "inventory_adjust_days": a.inventory_adjust_days,
               "margin_band": a.margin_band, "min_util": a.min_util, "alpha": alpha,
               "smooth": SMOOTH}
    matrices = {"draw_sp": a.draw_sp, "seg_sg": a.seg_sg, "mk_sk": a.mk_sk,
                "make_sp": a.make_sp, "out_mp": a.out_mp, "in_mp": a.in_mp,
                "main_ps": a.main_sp.T}
    csr_ptr, csr_col, csr_val = _csr([matrices[name] for name in CSR_NAMES])
    si, sx = pack_static(
        pool_mat=i64(a.pool_mat), plant_quota=i64(a.plant_quota), mk_mat=i64(a.mk_mat),
        seg_mat=i64(a.seg_price_mat), csr_ptr=csr_ptr, csr_col=csr_col,
        days_left=i64(a.days_left), csr_val=csr_val,
        pf=f64(np.stack([a.cash_cost, a.margin0, a.qcoef, a.qshare])),
        sf=f64(np.stack([a.target_t, a.lead_s])), mf=f64(a.has_pool),
        par=f64([scalars[name] for name in PAR_NAMES]), ref0=f64(a.ref_price_month),
        seg_el=f64(a.seg_elasticity), link=f64(np.stack([a.link_from, a.link_share])))
    return si, sx, f64(np.stack([getattr(a, name) for name in KF_NAMES]))


def compile_markets(c: Compiled) -> MarketArrays:
    """The economics of ``c.scenario`` as arrays (the scenario must have ``economics``)."""
    sc = c.scenario
    ec = sc.economics
    if ec is None:
        raise ValueError("compile_markets needs a scenario with economics")
    st = c.kernel_static
    n_s, n_p, n_m = len(c.pool_keys), len(c.plant_ids), len(c.material_ids)
    n_k, n_g = len(c.market_ids), len(c.segment_ids)
    mat_index = {m: i for i, m in enumerate(c.material_ids)}
    draw_sp = np.zeros((n_s, n_p))
    make_sp = np.zeros((n_s, n_p))
    in_mp = np.zeros((n_p, n_m))
    out_mp = np.zeros((n_p, n_m))
    # each recipe entry added in turn (np.add.at is unbuffered: the same sums, in the same
    # order, as a loop over the plants and their entries)
    ins, outs = c.topology.inputs, c.topology.outputs
    pooled = ins.pool >= 0  # an extracting plant's inputs come from no pool
    np.add.at(draw_sp, (ins.pool[pooled], ins.plant[pooled]), ins.amount[pooled])
    np.add.at(in_mp, (ins.plant[pooled], ins.material[pooled]), ins.amount[pooled])
    np.add.at(make_sp, (outs.pool, outs.plant), outs.amount)
    np.add.at(out_mp, (outs.plant, outs.material), outs.amount)
    seg_sg = np.zeros((n_s, n_g))
    seg_sg[st["dem_pool"], np.arange(n_g)] = 1.0
    mk_sk = np.zeros((n_s, n_k))
    mk_sk[st["mk_pool"], np.arange(n_k)] = 1.0

    price0 = c.price_month[:, 0]
    value0 = out_mp @ price0  # output value per unit of activity at the start
    plants = {p.id: p for p in sc.plants}
    cash = np.array([
        plants[pid].cash_cost_cny_per_unit if plants[pid].cash_cost_cny_per_unit is not None
        else ec.cash_cost_share_frac.get(plants[pid].stage, 0.0) * value0[p]
        for p, pid in enumerate(c.plant_ids)
    ])
    # the pool that paces a plant: the one its most valuable output goes to
    decide = np.zeros(n_p, np.int64)
    for p in range(n_p):
        best, best_v = -1, -1.0
        for j in range(st["out_ptr"][p], st["out_ptr"][p + 1]):
            v = st["out_amt"][j] * price0[st["out_mat"][j]]
            if v > best_v:
                best, best_v = int(st["out_pool"][j]), v
        decide[p] = best

    # a joint producer's main outputs: the most valuable one, and any other that carries at
    # least economics.main_output_value_share_frac of its output value (at the start's
    # prices): the plant runs as hard as the shortest of its main outputs' pools asks (a
    # by-product below that share never sets its pace)
    main_sp = np.zeros((n_s, n_p))
    value_sp = make_sp * price0[st["pool_mat"]][:, None]
    total = value_sp.sum(axis=0)
    for p in range(n_p):
        if total[p] > 0:
            main_sp[value_sp[:, p] >= ec.main_output_value_share_frac * total[p], p] = 1.0
        main_sp[decide[p], p] = 1.0
    for p, pid in enumerate(c.plant_ids):
        if plants[pid].planned:  # state-planned output: no pool's demand paces it
            main_sp[:, p] = 0.0

    cap0 = c.nameplate_tpa * c.utilisation
    weight = make_sp * cap0[None, :]
    lead_s = np.where(weight.sum(axis=1) > 0,
                      (weight * st["lead"][None, :]).sum(axis=1)
                      / np.maximum(weight.sum(axis=1), 1e-300), 0.0)
    revenue0 = value0
    cost0 = in_mp @ price0 + cash
    margin0 = np.where(revenue0 > 0, (revenue0 - cost0) / np.where(revenue0 > 0, revenue0, 1),
                       0.0)

    markets = {k.id: k for k in sc.markets}
    imp_share0 = np.zeros(n_k)
    exp_contract = np.zeros(n_k)
    imp_on, exp_on = np.zeros(n_k), np.zeros(n_k)
    imp_premium, imp_slope = np.zeros(n_k), np.ones(n_k)
    exp_base, exp_el, exp_growth = np.zeros(n_k), np.ones(n_k), np.zeros(n_k)
    mk_mat = np.zeros(n_k, np.int64)
    for k, kid in enumerate(c.market_ids):
        mk = markets[kid]
        mk_mat[k] = mat_index[mk.material]
        if mk.import_ is not None:
            imp_on[k] = 1.0
            imp_premium[k] = (mk.import_.premium_frac if mk.import_.premium_frac is not None
                              else ec.import_premium_frac)
            imp_slope[k] = (mk.import_.slope_frac if mk.import_.slope_frac is not None
                            else ec.import_slope_frac)
            base = mk.import_.base_tpa or 0.0
            imp_share0[k] = min(1.0, base / mk.import_.cap_tpa) if mk.import_.cap_tpa > 0 else 0.0
        if mk.export is not None:
            exp_on[k] = 1.0
            exp_base[k] = mk.export.base_tpa or 0.0
            exp_contract[k] = exp_base[k] * mk.export.contract_frac
            exp_growth[k] = mk.export.growth_frac_per_year
            exp_el[k] = (mk.export.slope_frac if mk.export.slope_frac is not None
                         else ec.export_slope_frac)
    seg_mat = np.array([
        mat_index[g.price_material or g.material] for g in sc.demand], np.int64)
    seg_el = np.array([
        g.price_elasticity if g.price_elasticity is not None else ec.demand_elasticity
        for g in sc.demand])
    link_from = np.full(n_m, -1, np.int64)
    link_share = np.zeros(n_m)
    for i, mat in enumerate(sc.materials):
        if mat.price.follows is not None:
            link_from[i] = mat_index[mat.price.follows.material]
            link_share[i] = mat.price.follows.share_frac
    has_pool = np.zeros(n_m)
    has_pool[st["pool_mat"]] = 1.0
    inv = ec.investment if sc.settings.investment else None
    invest_stages = [] if inv is None else [
        (str(stage), np.array([p for p, s in enumerate(c.plant_stage) if s == stage], np.int64),
         round(years * 365))
        for stage, years in inv.build_years.items() if stage in c.plant_stage]
    arrays = MarketArrays(
        plant_quota=st["plant_quota"].copy(), qcoef=st["qcoef"].copy(),
        qshare=st["qshare"].copy(), days_left=c.days_left,
        invest_stages=invest_stages,
        invest_margin=inv.margin_threshold_frac if inv else 0.0,
        invest_util=inv.utilisation_threshold_frac if inv else 1.0,
        invest_window=inv.window_months if inv else 0,
        invest_step=inv.step_frac if inv else 0.0,
        pool_mat=st["pool_mat"], draw_sp=draw_sp, make_sp=make_sp, seg_sg=seg_sg, mk_sk=mk_sk,
        target_t=st["target"].copy(), in_mp=in_mp, out_mp=out_mp, cash_cost=cash,
        decide_pool=decide, main_sp=main_sp, lead_s=lead_s, margin0=np.minimum(margin0, 0.0),
        imp_base_share=imp_share0, imp_on=imp_on,
        exp_on=exp_on, imp_premium=imp_premium,
        imp_slope=imp_slope, exp_base_tpa=exp_base, exp_slope=exp_el,
        exp_depth_tpa=c.exp_cap_tpa.copy(), exp_contract_tpa=exp_contract, exp_growth=exp_growth,
        year_index=np.array([y - c.months[0][0] for y, _ in c.months], np.int64), mk_mat=mk_mat,
        seg_price_mat=seg_mat, seg_elasticity=seg_el,
        ref_price_month=(_price_paths(sc.model_copy(update={"changes": []}), c.months)
                         if any(ch.kind == "price" for ch in sc.changes)
                         else c.price_month.copy()),  # the same paths: no price shock
        has_pool=has_pool, link_from=link_from, link_share=link_share,
        price_adjust=ec.price_adjust_per_month, max_step=ec.price_max_step_frac,
        reference_pull=ec.reference_pull_per_month, cover_target_days=ec.cover_target_days,
        inventory_adjust_days=ec.inventory_adjust_days, margin_band=ec.margin_band_frac,
        min_util=ec.min_utilisation_frac, response_months=ec.demand_response_months,
    )
    return dataclasses.replace(arrays, packed=_pack(arrays))
