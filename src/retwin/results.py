"""Run results: arrays and metadata, tidy frames on demand, KPIs, targets, mass balance."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from retwin import config
from retwin._typing import FloatArray, Int8Array
from retwin.compiled import Compiled
from retwin.errors import MassBalanceError
from retwin.kernels.flow import (
    BIND_CAPACITY,
    BIND_DEMAND,
    BIND_MARGIN,
    BIND_NAMES,
    BIND_OUTAGE,
    BIND_QUOTA,
)
from retwin.scenario.schema import ELEMENTS, STAGE_GROUP

__all__ = ["Balance", "ReplicationSet", "RunResult", "summarise"]

YI = 1e8  # CNY per 亿元
RAW_STAGES = ("separation", "recycling")


@dataclass(frozen=True)
class Balance:
    """Residuals of the mass balance: per material (own unit) and per element (t REO).

    ``residual = inputs - (outputs + losses + change in stock + in transit)``; the run fails
    when any |residual| exceeds ``tolerance``, which scales with the largest flow.
    """

    material: FloatArray
    element: FloatArray
    tolerance_material: FloatArray
    tolerance_element: float

    @property
    def closes(self) -> bool:
        return bool(
            np.all(np.abs(self.material) <= self.tolerance_material)
            and np.all(np.abs(self.element) <= self.tolerance_element)
        )


@dataclass
class RunResult:
    """Everything one run produced. Arrays keep the axis order of :mod:`retwin._typing`."""

    compiled: Compiled
    seed: int
    replication: int
    activity: FloatArray  # (P, D) activity units per day
    binding: Int8Array  # (P, D) binding-constraint codes (kernels.flow.BIND_NAMES)
    stock: FloatArray  # (S, D) end-of-day stock
    imports: FloatArray  # (K, D) ordered
    exports: FloatArray  # (K, D)
    served: FloatArray  # (G, D)
    unmet: FloatArray  # (G, D)
    value_month: FloatArray  # (P, T) CNY
    price_month: FloatArray  # (M, T) CNY per unit
    totals: FloatArray  # (6, M) produced, drawn, extracted, imported, exported, demand
    final_stock: FloatArray
    in_transit: FloatArray  # (S,) production and imports not yet arrived
    events: list[tuple[int, str, str]]
    kernel_calls: int
    capacity_log: list[tuple[int, int, float]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    # --- mass balance -------------------------------------------------------------------

    @cached_property
    def balance(self) -> Balance:
        c = self.compiled
        n_m = len(c.material_ids)
        pool_mat = c.topology.pool_material
        init = np.bincount(pool_mat, c.pool_initial, minlength=n_m)
        final = np.bincount(pool_mat, self.final_stock, minlength=n_m)
        transit = np.bincount(pool_mat, self.in_transit, minlength=n_m)
        produced, drawn, extracted, imported, exported, demand = self.totals
        mat_res = (init + produced + imported) - (drawn + exported + demand + final + transit)
        scale = np.maximum.reduce([init, produced, imported, drawn, exported, demand, final,
                                   extracted, np.ones(n_m)])
        losses = self.activity.sum(axis=1) @ c.loss_per_act  # (E,)
        el_in = (init + extracted + imported) @ c.comp
        el_out = (exported + demand + final + transit) @ c.comp + losses
        el_res = el_in - el_out
        el_scale = max(float(np.max(el_in)), float(np.max(el_out)), 1.0)
        rtol = config.MASS_BALANCE_RTOL
        return Balance(mat_res, el_res, rtol * scale * 10, rtol * el_scale * 10)

    def check_balance(self) -> None:
        """Raise :class:`MassBalanceError` naming the worst residual unless the run closes."""
        b = self.balance
        if b.closes:
            return
        c = self.compiled
        rel_m = np.abs(b.material) / b.tolerance_material
        rel_e = np.abs(b.element) / b.tolerance_element
        if rel_m.max(initial=0) >= rel_e.max(initial=0):
            i = int(np.argmax(rel_m))
            what = f"material {c.material_ids[i]!r}: residual {b.material[i]:.6g} " \
                   f"{c.material_unit[i]} (tolerance {b.tolerance_material[i]:.3g})"
        else:
            i = int(np.argmax(rel_e))
            what = f"element {ELEMENTS[i]}: residual {b.element[i]:.6g} t REO " \
                   f"(tolerance {b.tolerance_element:.3g})"
        raise MassBalanceError(f"run does not close its mass balance; worst is {what}")

    # --- calendar helpers ---------------------------------------------------------------

    @cached_property
    def years(self) -> list[int]:
        return sorted({y for y, _ in self.compiled.months})

    @cached_property
    def _year_of_day(self) -> np.ndarray:
        return self.compiled.dates.astype("datetime64[Y]").astype(int) + 1970

    def _by_year(self, daily: np.ndarray) -> np.ndarray:
        """Sum a (..., D) array into (..., Y)."""
        yd = self._year_of_day
        starts = np.searchsorted(yd, self.years)
        return np.add.reduceat(daily, starts, axis=-1)

    def _month_to_year(self, monthly: np.ndarray) -> np.ndarray:
        ym = np.array([y for y, _ in self.compiled.months])
        starts = np.searchsorted(ym, self.years)
        return np.add.reduceat(monthly, starts, axis=-1)

    # --- KPIs ---------------------------------------------------------------------------

    @cached_property
    def nameplate_days(self) -> FloatArray:
        """(P, D) nameplate capacity per year in force each day (capacity changes included)."""
        c = self.compiled
        out = np.repeat(c.nameplate_tpa[:, None], c.n_days, axis=1)
        for day, p, value in self.capacity_log:
            out[p, day:] = value
        return out

    @cached_property
    def capacity_days(self) -> FloatArray:
        """(P, D) nameplate activity per day a plant had (commissioned, ramped, not retired)."""
        return self.compiled.ramp * self.nameplate_days / 365.0

    @cached_property
    def kpis(self) -> pd.DataFrame:
        """Annual KPIs, tidy: columns ``kpi, key, year, value, unit``."""
        c = self.compiled
        years = self.years
        meta: list[tuple[str, str, str]] = []
        vals: list[np.ndarray] = []

        def add(kpi: str, key: str, values: np.ndarray, unit: str) -> None:
            meta.append((kpi, key, unit))
            vals.append(np.asarray(values, dtype=np.float64))

        topo = c.topology
        act_y = self._by_year(self.activity)  # (P, Y)
        cap_y = self._by_year(self.capacity_days)
        sc = c.scenario
        main_unit = {p.id: sc.material(p.recipe.main_output).unit for p in sc.plants}
        for stage, sel in topo.stage_plants.items():
            units = {main_unit[c.plant_ids[p]] for p in sel}
            add("output.stage", stage, act_y[sel].sum(axis=0),
                units.pop() if len(units) == 1 else "mixed")
            with np.errstate(divide="ignore", invalid="ignore"):
                util = np.where(cap_y[sel].sum(0) > 0, act_y[sel].sum(0) / cap_y[sel].sum(0), 0)
            add("utilisation.stage", stage, util, "fraction")
            add("capacity.stage", stage, self._capacity_at_year_end(sel), "per year")
        for i, pid in enumerate(c.plant_ids):
            add("output.plant", pid, act_y[i], main_unit[pid])
            with np.errstate(divide="ignore", invalid="ignore"):
                add("utilisation.plant", pid,
                    np.where(cap_y[i] > 0, act_y[i] / np.where(cap_y[i] > 0, cap_y[i], 1), 0),
                    "fraction")
        prod = self._production_by_material()  # (M, Y)
        for m, mid in enumerate(c.material_ids):
            if m in topo.produced_materials:
                add("production.material", mid, prod[m], c.material_unit[m])
        # trade, per material and in t REO per element
        pool_mat = topo.pool_material
        mk_mat = topo.market_material
        imp_y = self._by_year(self.imports)
        exp_y = self._by_year(self.exports)
        for k, kid in enumerate(c.market_ids):
            unit = c.material_unit[mk_mat[k]]
            if c.imp_cap_tpa[k] > 0:
                add("imports.market", kid, imp_y[k], unit)
            if c.exp_cap_tpa[k] > 0:
                add("exports.market", kid, exp_y[k], unit)
        # element balance of the region's raw materials (products of mining, separation,
        # recycling and metal plants): surplus = stock build-up + net exports of raw material
        raw = self._raw_materials()
        pool_raw = np.isin(pool_mat, list(raw))
        mk_raw = np.isin(mk_mat, list(raw)) if c.market_ids else np.zeros(0, bool)
        raw_imp = ((imp_y[mk_raw].T @ c.comp[mk_mat[mk_raw]]).T if mk_raw.any()
                   else np.zeros((len(ELEMENTS), len(years))))
        raw_exp = ((exp_y[mk_raw].T @ c.comp[mk_mat[mk_raw]]).T if mk_raw.any()
                   else np.zeros((len(ELEMENTS), len(years))))
        comp_raw = c.comp[pool_mat] * pool_raw[:, None]
        stock_el = comp_raw.T @ self.stock  # (E, D)
        end_idx = np.searchsorted(self._year_of_day, years, side="right") - 1
        start_stock = np.concatenate(
            [(comp_raw.T @ c.pool_initial)[:, None], stock_el[:, end_idx[:-1]]], axis=1
        )
        surplus = stock_el[:, end_idx] - start_stock + raw_exp - raw_imp
        for e, el in enumerate(ELEMENTS):
            add("element.surplus", el, surplus[e], "t REO")
        la, ce = ELEMENTS.index("La"), ELEMENTS.index("Ce")
        dy, tb = ELEMENTS.index("Dy"), ELEMENTS.index("Tb")
        add("element.la_ce_surplus", "La+Ce", surplus[la] + surplus[ce], "t REO")
        add("element.dy_tb_deficit", "Dy+Tb", -(surplus[dy] + surplus[tb]), "t REO")
        add("local_conversion", "region", self._local_conversion(exp_y, mk_mat), "fraction")
        # demand
        served_y = self._by_year(self.served)
        unmet_y = self._by_year(self.unmet)
        for g, gid in enumerate(c.segment_ids):
            tot = served_y[g] + unmet_y[g]
            with np.errstate(divide="ignore", invalid="ignore"):
                add("fill_rate.segment", gid, np.where(tot > 0, served_y[g] / tot, 1.0),
                    "fraction")
            add("unmet.segment", gid, unmet_y[g], c.material_unit[topo.segment_material[g]])
        # output value (产值) per stage and the seeds' three groups
        val_y = self._month_to_year(self.value_month) / YI
        groups = {"raw_materials": 0.0, "new_materials": 0.0, "applications": 0.0}
        gvals = {g: np.zeros(len(years)) for g in groups}
        for stage, sel in topo.stage_plants.items():
            v = val_y[sel].sum(axis=0)
            add("value.stage", stage, v, "亿元")
            gvals[STAGE_GROUP[stage]] += v
        for group, v in gvals.items():
            add("value.group", group, v, "亿元")
        add("value.group", "total", np.sum(list(gvals.values()), axis=0), "亿元")
        values = np.concatenate(vals) if vals else np.zeros(0)
        index = c.labels.get("kpis")
        if index is None or index[0] != meta:
            n_y = len(years)
            frame = pd.DataFrame({
                "kpi": np.repeat([m[0] for m in meta], n_y),
                "key": np.repeat([m[1] for m in meta], n_y),
                "year": np.tile(np.array(years, dtype=np.int64), len(meta)),
                "unit": np.repeat([m[2] for m in meta], n_y),
            })
            index = c.labels["kpis"] = (meta, frame)
        df = index[1].copy()
        df.insert(3, "value", values)
        return df

    def _raw_materials(self) -> set[int]:
        c = self.compiled
        out = c.topology.outputs
        raw: set[int] = set()
        for p, stage in enumerate(c.plant_stage):
            if stage in ("mining", "recycling", "separation", "metal"):
                raw.update(int(m) for m in out.material[out.of(p)])
        return raw

    def _capacity_at_year_end(self, sel: np.ndarray) -> np.ndarray:
        """Nameplate capacity per year (activity units) in force on each year's last day."""
        end_idx = np.searchsorted(self._year_of_day, self.years, side="right") - 1
        ramp = self.compiled.ramp[sel][:, end_idx]
        return (ramp * self.nameplate_days[sel][:, end_idx]).sum(axis=0)

    def _production_by_material(self) -> np.ndarray:
        c = self.compiled
        outputs = c.topology.outputs
        act_y = self._by_year(self.activity)
        out = np.zeros((len(c.material_ids), len(self.years)))
        for p in range(len(c.plant_ids)):
            for j in range(outputs.ptr[p], outputs.ptr[p + 1]):
                out[outputs.material[j]] += act_y[p] * outputs.amount[j]
        return out

    def _local_conversion(self, exp_y: np.ndarray, mk_mat: np.ndarray) -> np.ndarray:
        """Share of the region's separated output (separation and recycling, t REO) that is
        not exported: what the region's own plants use or keep (DESIGN §2.6)."""
        c = self.compiled
        outputs = c.topology.outputs
        act_y = self._by_year(self.activity)
        sep_mats: set[int] = set()
        produced = np.zeros(len(self.years))
        for p, stage in enumerate(c.plant_stage):
            if stage not in RAW_STAGES:
                continue
            for j in range(outputs.ptr[p], outputs.ptr[p + 1]):
                m = outputs.material[j]
                sep_mats.add(int(m))
                produced += act_y[p] * outputs.amount[j] * c.comp[m].sum()
        exported = np.zeros(len(self.years))
        for k in range(len(c.market_ids)):
            if int(mk_mat[k]) in sep_mats:
                exported += exp_y[k] * c.comp[mk_mat[k]].sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(produced > 0, np.clip(1 - exported / produced, 0, 1), np.nan)

    def kpi(self, kpi: str, key: str, year: int) -> float:
        """One KPI value; ``KeyError`` if the run has no such KPI for that year."""
        df = self.kpis
        hit = df[(df.kpi == kpi) & (df.key == key) & (df.year == year)]
        if hit.empty:
            raise KeyError(f"no KPI {kpi}[{key}] for {year}")
        return float(hit.value.iloc[0])

    @cached_property
    def binding_table(self) -> pd.DataFrame:
        """Share of capacity-weighted plant-days each constraint bound, per stage and year;
        and the bottleneck stage per year."""
        c = self.compiled
        w = self.capacity_days
        rows = []
        for stage, sel in c.topology.stage_plants.items():
            for code, name in BIND_NAMES.items():
                share = self._by_year(np.where(self.binding[sel] == code, w[sel], 0).sum(0))
                total = self._by_year(w[sel].sum(0))
                with np.errstate(divide="ignore", invalid="ignore"):
                    frac = np.where(total > 0, share / total, 0.0)
                for y, f in zip(self.years, frac, strict=True):
                    if f > 0:
                        rows.append((stage, y, name, float(f)))
        return pd.DataFrame(rows, columns=["stage", "year", "constraint", "share"])

    @cached_property
    def bottlenecks(self) -> pd.DataFrame:
        """Per year: the stage most limited by its own supply-side constraints (capacity,
        quota, outage). An input-starved stage is not the bottleneck — its supplier is. Where
        no stage is held back by its own supply limits for at least half its capacity-weighted
        plant-days (markets on), the chain is limited by the market: the stage most held back
        by the demand on its output or by its margin is reported, with that constraint. Ties go
        to the stage with the larger output value; the constraint reported is the stage's most
        frequent limit of the kind that made it the bottleneck.
        """
        bt = self.binding_table
        df = self.kpis
        value = df[df.kpi == "value.stage"].set_index(["key", "year"]).value
        rows = []
        supply = {BIND_NAMES[b] for b in (BIND_CAPACITY, BIND_QUOTA, BIND_OUTAGE)}
        market = {BIND_NAMES[b] for b in (BIND_DEMAND, BIND_MARGIN)}

        def best_of(year_rows: pd.DataFrame, kinds: set[str]) -> tuple[float, float, str, str]:
            best: tuple[float, float, str, str] = (-1.0, 0.0, "", "")
            for stage, grp in year_rows.groupby("stage"):
                mine = grp[grp.constraint.isin(kinds)]
                if mine.empty:
                    continue
                score = (round(float(mine.share.sum()), 9), float(value.get((stage, y), 0.0)))
                if score > best[:2]:
                    top = str(mine.sort_values("share").constraint.iloc[-1])
                    best = (*score, str(stage), top)
            return best

        for y in self.years:
            year_rows = bt[bt.year == y]
            best = best_of(year_rows, supply)
            if best[0] < 0.5:
                held = best_of(year_rows, market)
                if held[0] >= 0.5:
                    best = held
            rows.append((y, best[2], best[3], max(best[0], 0.0)))
        return pd.DataFrame(rows, columns=["year", "stage", "constraint", "score"])

    @cached_property
    def target_table(self) -> pd.DataFrame:
        """The scenario's targets against the run: ``target, year, goal, value, attained``."""
        rows = []
        for t in self.compiled.scenario.targets:
            kpi, _, key = t.kpi.rpartition(".")
            try:
                v = self.kpi(kpi, key, t.year)
            except KeyError:
                v = float("nan")
            tol = 1e-9 * max(1.0, abs(t.value))  # a target met exactly is met
            ok = v >= t.value - tol if t.kind == "at_least" else v <= t.value + tol
            rows.append((t.id, t.name, t.year, t.value, v, t.unit, bool(ok and not np.isnan(v))))
        return pd.DataFrame(rows, columns=["target", "name", "year", "goal", "value", "unit",
                                           "attained"])

    # --- tidy frames --------------------------------------------------------------------

    def series(self) -> pd.DataFrame:
        """Daily series, tidy: ``date, kind, id, value`` for plant activity and pool stock."""
        c = self.compiled
        dates = c.dates
        parts = []
        for kind, ids, arr in (
            ("activity", c.plant_ids, self.activity),
            ("stock", [f"{r}/{m}" for r, m in c.pool_keys], self.stock),
            ("imports", c.market_ids, self.imports),
            ("exports", c.market_ids, self.exports),
            ("served", c.segment_ids, self.served),
            ("unmet", c.segment_ids, self.unmet),
        ):
            if not ids:
                continue
            parts.append((kind, ids, arr))
        n_d = len(dates)
        kinds = [k for k, ids, _ in parts for _ in ids]
        names = [i for _, ids, _ in parts for i in ids]
        rows = np.repeat(np.arange(len(names)), n_d)
        # categorical columns: a few hundred labels over ~10^5-10^6 rows (dictionary-encoded
        # in Parquet too)
        kind_labels, kind_codes = np.unique(kinds, return_inverse=True)
        id_labels, id_codes = np.unique(names, return_inverse=True)
        return pd.DataFrame({
            "date": np.tile(dates, len(names)),
            "kind": pd.Categorical.from_codes(kind_codes[rows],
                                              categories=pd.Index(kind_labels.tolist())),
            "id": pd.Categorical.from_codes(id_codes[rows],
                                            categories=pd.Index(id_labels.tolist())),
            "value": np.concatenate([a.reshape(-1) for _, _, a in parts]),
        })

    def monthly_values(self) -> tuple[pd.DataFrame, np.ndarray]:
        """Monthly series as row labels (``month, kind, id``) and values, in a fixed row
        order for every run of one compiled scenario (so replications stack into bands).

        Kinds: ``activity`` (per plant, units of activity in the month), ``capacity`` (per
        plant, nameplate activity available in the month), ``utilisation`` (per stage),
        ``stock`` (per pool, at the month's end), ``imports``/``exports`` (per market),
        ``served``/``unmet`` (per segment), ``price`` (per material, CNY per unit).
        """
        c = self.compiled
        starts = c.month_start_day
        ends = np.r_[starts[1:], c.n_days] - 1
        act_m = np.add.reduceat(self.activity, starts, axis=1)
        cap_m = np.add.reduceat(self.capacity_days, starts, axis=1)
        stage_plants = c.topology.stage_plants
        stages = list(stage_plants)
        with np.errstate(divide="ignore", invalid="ignore"):
            util = np.array([
                np.where(cap_m[sel].sum(0) > 0, act_m[sel].sum(0) / cap_m[sel].sum(0), 0.0)
                for sel in stage_plants.values()
            ]).reshape(len(stages), len(starts))
        blocks = [
            ("activity", c.plant_ids, act_m),
            ("capacity", c.plant_ids, cap_m),
            ("utilisation", stages, util),
            ("stock", [f"{r}/{m}" for r, m in c.pool_keys], self.stock[:, ends]),
            ("imports", c.market_ids, np.add.reduceat(self.imports, starts, axis=1)
             if c.market_ids else np.zeros((0, len(starts)))),
            ("exports", c.market_ids, np.add.reduceat(self.exports, starts, axis=1)
             if c.market_ids else np.zeros((0, len(starts)))),
            ("served", c.segment_ids, np.add.reduceat(self.served, starts, axis=1)
             if c.segment_ids else np.zeros((0, len(starts)))),
            ("unmet", c.segment_ids, np.add.reduceat(self.unmet, starts, axis=1)
             if c.segment_ids else np.zeros((0, len(starts)))),
            ("price", c.material_ids, self.price_month),
        ]
        blocks = [b for b in blocks if len(b[1])]
        values = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1)
                                 for _, _, a in blocks])
        key = tuple((kind, tuple(ids)) for kind, ids, _ in blocks)
        cached = c.labels.get("monthly")
        if cached is None or cached[0] != key:
            months = np.array([np.datetime64(f"{y:04d}-{m:02d}-01") for y, m in c.months])
            labels = pd.concat([
                pd.DataFrame({
                    "month": np.tile(months, len(ids)),
                    "kind": kind,
                    "id": np.repeat(np.asarray(ids, dtype=object), len(months)),
                })
                for kind, ids, _ in blocks
            ], ignore_index=True)
            cached = c.labels["monthly"] = (key, labels)
        return cached[1], values

    def monthly(self) -> pd.DataFrame:
        """Monthly series, tidy: ``month, kind, id, value`` (see :meth:`monthly_values`)."""
        labels, values = self.monthly_values()
        return labels.assign(value=values)  # assign copies: the cached labels stay intact

    def flows(self) -> pd.DataFrame:
        """Monthly flows per plant: ``month, plant, stage, material, direction, amount``."""
        c = self.compiled
        starts = c.month_start_day
        act_m = np.add.reduceat(self.activity, starts, axis=1)  # (P, T)
        months = np.empty(len(c.months), dtype=object)
        months[:] = [dt.date(y, m, 1) for y, m in c.months]
        plant_of, mat_of, side_of, amt_of = [], [], [], []
        for side, entries in (("in", c.topology.inputs), ("out", c.topology.outputs)):
            plant_of.append(entries.plant)
            mat_of.append(entries.material)
            side_of += [side] * len(entries.plant)
            amt_of.append(entries.amount)
        p_idx = np.concatenate(plant_of)
        if not len(p_idx):
            return pd.DataFrame()
        # entries in plant order, inputs before outputs (stable sort keeps that within a plant)
        order = np.argsort(p_idx, kind="stable")
        p_idx = p_idx[order]
        m_idx = np.concatenate(mat_of)[order]
        sides = np.asarray(side_of, dtype=object)[order]
        amounts = act_m[p_idx] * np.concatenate(amt_of)[order][:, None]  # (entries, T)
        n_t = len(months)
        plant_ids = np.asarray(c.plant_ids, dtype=object)
        stages = np.asarray(c.plant_stage, dtype=object)
        materials = np.asarray(c.material_ids, dtype=object)
        return pd.DataFrame({
            "month": np.tile(months, len(p_idx)),
            "plant": np.repeat(plant_ids[p_idx], n_t),
            "stage": np.repeat(stages[p_idx], n_t),
            "material": np.repeat(materials[m_idx], n_t),
            "direction": np.repeat(sides, n_t),
            "amount": amounts.reshape(-1),
        })


def summarise(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean and p5/p50/p95 across replications of tidy KPI frames (same rows in each)."""
    if not frames:
        raise ValueError("summarise needs at least one KPI frame")
    cols = ["kpi", "key", "year", "unit"]
    if all(len(f) == len(frames[0]) for f in frames) and all(
        f[cols].equals(frames[0][cols]) for f in frames[1:]
    ):
        keys = frames[0][cols].reset_index(drop=True)
        values = np.stack([f.value.to_numpy() for f in frames])
    else:  # rows differ between runs: align on the keys, a missing row counts as 0
        wide = pd.concat([f.set_index(cols).value.rename(i) for i, f in enumerate(frames)],
                         axis=1).fillna(0.0)
        keys = wide.index.to_frame(index=False)
        values = wide.to_numpy().T
    out = keys.copy()
    out["mean"] = values.mean(axis=0)
    for q in (5, 50, 95):
        out[f"p{q}"] = np.percentile(values, q, axis=0)
    out["n"] = len(frames)
    return out


@dataclass
class ReplicationSet:
    """Replications of one scenario: the first run in full, every run's KPI frame."""

    first: RunResult
    kpi_frames: list[pd.DataFrame]
    seeds: list[tuple[int, int]]
    monthly_stack: np.ndarray | None = None  # (replications, rows of first.monthly_values())

    @cached_property
    def summary(self) -> pd.DataFrame:
        return summarise(self.kpi_frames)

    @cached_property
    def monthly_bands(self) -> pd.DataFrame:
        """Monthly series across replications: ``month, kind, id, mean, p5, p50, p95``."""
        labels, first_values = self.first.monthly_values()
        stack = self.monthly_stack if self.monthly_stack is not None else first_values[None, :]
        out = labels.copy()  # the labels are shared by every run of the scenario
        out["mean"] = stack.mean(axis=0)
        for q in (5, 50, 95):
            out[f"p{q}"] = np.percentile(stack, q, axis=0)
        return out

    def difference(self, baseline: ReplicationSet) -> pd.DataFrame:
        """Paired differences to a baseline run with the same seeds (common random numbers)."""
        if self.seeds != baseline.seeds:
            raise ValueError("a difference needs the baseline's seeds and replications")
        diffs = []
        for a, b in zip(self.kpi_frames, baseline.kpi_frames, strict=True):
            m = a.merge(b, on=["kpi", "key", "year", "unit"], how="outer",
                        suffixes=("", "_base")).fillna({"value": 0.0, "value_base": 0.0})
            m["value"] = m["value"] - m["value_base"]
            diffs.append(m.drop(columns="value_base"))
        return summarise(diffs)
