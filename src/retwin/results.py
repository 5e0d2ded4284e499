"""Run results: arrays and metadata, tidy frames on demand, KPIs, targets, mass balance."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from retwin import config
from retwin._kept import Kept
from retwin._typing import FloatArray, Int8Array, IntArray
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
from retwin.kpis import KPIS, VALUE_GROUPS, Kpi
from retwin.scenario.schema import ELEMENTS, STAGE_GROUP

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["KPI_KEYS", "Balance", "ReplicationSet", "RunResult", "paired_difference", "summarise"]

#: The columns that name one KPI value (with ``value`` they make a tidy KPI frame).
KPI_KEYS = ["kpi", "key", "year", "unit"]

YI = 1e8  # CNY per 亿元
#: Stages whose output is the region's separated output (local conversion).
RAW_STAGES = ("separation", "recycling")
#: Stages whose outputs are the region's raw materials (element surplus).
RAW_PRODUCERS = ("mining", "recycling", "separation", "metal")


def _years(c: Compiled) -> list[int]:
    """The calendar years of a run of ``c``."""
    return _calendar(c).years


@dataclass(frozen=True)
class _Calendar:
    """The years of a compiled scenario's days and months (made once per scenario)."""

    years: list[int]
    year_of_day: IntArray  # (D,) the calendar year of each day
    year_of_month: IntArray  # (T,)
    day_starts: IntArray  # (Y,) each year's first day
    month_starts: IntArray  # (Y,) each year's first month
    year_end: IntArray  # (Y,) each year's last day
    month_masks: list[np.ndarray]  # (T,) bool: each year's months
    days: FloatArray  # (Y,) the days of each year in the run


#: Recent calendars by what they are made of (a run's first day and its length): the
#: compiled scenarios of what-ifs on one model share one.
_CALENDARS: Kept[_Calendar] = Kept(max_items=8)


def _calendar(c: Compiled) -> _Calendar:
    cached = c.labels.get("calendar")
    if cached is None:
        cal = _CALENDARS.get_or_make((str(c.dates[0]), c.n_days), lambda: _make_calendar(c))
        cached = c.labels["calendar"] = (cal, cal)
    return cast(_Calendar, cached[0])


def _make_calendar(c: Compiled) -> _Calendar:
    years = sorted({y for y, _ in c.months})
    year_of_day = c.dates.astype("datetime64[Y]").astype(np.int64) + 1970
    year_of_month = np.array([y for y, _ in c.months], dtype=np.int64)
    month_starts = np.searchsorted(year_of_month, years)
    return _Calendar(years, year_of_day, year_of_month,
                     np.searchsorted(year_of_day, years), month_starts,
                     np.searchsorted(year_of_day, years, side="right") - 1,
                     [year_of_month == y for y in years],
                     np.bincount(year_of_day - years[0], minlength=len(years)).astype(np.float64))


class _Capacity:
    """A run's nameplate activity (plants x days, its sums by month and by year), made when
    first read. Without capacity changes during the run it depends on the compiled
    scenario's plants and calendar alone: one read-only set serves every such run
    (:func:`_held_capacity`), the same numbers each would make."""

    def __init__(self, c: Compiled, nameplate: FloatArray, shared: bool) -> None:
        self.ramp, self.nameplate, self.shared = c.ramp, nameplate, shared
        self.month_start_day, self.day_starts = c.month_start_day, _calendar(c).day_starts

    def _kept(self, a: FloatArray) -> FloatArray:
        if self.shared:
            a.flags.writeable = False
        return a

    @cached_property
    def days(self) -> FloatArray:
        """(P, D) nameplate activity per day a plant had (commissioned, ramped, not
        retired)."""
        out = np.multiply(self.ramp, self.nameplate)
        out /= 365.0
        return self._kept(out)

    @cached_property
    def month(self) -> FloatArray:
        """(P, T) the sum of :attr:`days` per month."""
        return self._kept(np.add.reduceat(self.days, self.month_start_day, axis=1))

    @cached_property
    def year(self) -> FloatArray:
        """(P, Y) the sum of :attr:`days` per calendar year."""
        return self._kept(np.add.reduceat(self.days, self.day_starts, axis=-1))

    @property
    def nbytes(self) -> int:
        return self.days.nbytes + self.month.nbytes + self.year.nbytes


def _made_held_capacity(c: Compiled) -> _Capacity:
    cap = _Capacity(c, c.nameplate_tpa[:, None], shared=True)
    cap.days, cap.month, cap.year  # noqa: B018 - made now: kept whole, shared, never changed
    return cap


#: Recent held-capacity sets by what they are made of (the plants' nameplate, the days their
#: ramps and retirements fall on, the calendar): the compiled scenarios of what-ifs that
#: change no plant share one.
_HELD: Kept[_Capacity] = Kept(max_items=4, max_bytes=256 << 20, size=lambda cap: cap.nbytes)


def _held_capacity(c: Compiled) -> _Capacity:
    """The :class:`_Capacity` of every run of ``c`` whose capacity did not change."""
    cached = c.labels.get("capacity")
    if cached is None:
        key = (str(c.dates[0]), c.n_days, c.nameplate_tpa.tobytes(),
               c.commission_day.tobytes(), c.ramp_days.tobytes(), c.retire_day.tobytes())
        cap = _HELD.get_or_make(key, lambda: _made_held_capacity(c))
        cached = c.labels["capacity"] = (cap, cap)
    return cast(_Capacity, cached[0])


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
    events: Sequence[tuple[int, str, str]]  # (day, kind, subject) in day order
    kernel_calls: int
    capacity_log: list[tuple[int, int, float]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: (P, T) each plant's margin as a share of its output value, as the producers'
    #: decisions read it each month (markets on; ``None`` otherwise)
    margin_month: FloatArray | None = None

    # --- mass balance -------------------------------------------------------------------

    @cached_property
    def balance(self) -> Balance:
        from retwin.kernels.tables import mass_balance

        c = self.compiled
        material, tol_m, element, tol_e = mass_balance(
            c.topology.pool_material, c.pool_initial, self.final_stock, self.in_transit,
            self.totals, self.activity, c.loss_per_act, c.comp, config.MASS_BALANCE_RTOL)
        return Balance(material, element, tol_m, tol_e)

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

    @property
    def years(self) -> list[int]:
        return list(_calendar(self.compiled).years)

    @property
    def _year_of_day(self) -> np.ndarray:
        return _calendar(self.compiled).year_of_day

    def _by_year(self, daily: np.ndarray) -> np.ndarray:
        """Sum a (..., D) array into (..., Y)."""
        return np.add.reduceat(daily, _calendar(self.compiled).day_starts, axis=-1)

    def _month_to_year(self, monthly: np.ndarray) -> np.ndarray:
        return np.add.reduceat(monthly, _calendar(self.compiled).month_starts, axis=-1)

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
    def _capacity(self) -> _Capacity:
        if not self.capacity_log:  # held all along: as every such run of the scenario
            return _held_capacity(self.compiled)
        return _Capacity(self.compiled, self.nameplate_days, shared=False)  # as changed

    @property
    def capacity_days(self) -> FloatArray:
        """(P, D) nameplate activity per day a plant had (commissioned, ramped, not retired).
        Read-only when no capacity changed during the run (then shared by such runs)."""
        return self._capacity.days

    @cached_property
    def activity_month(self) -> FloatArray:
        """(P, T) activity per plant and month (the sum of its days)."""
        return np.add.reduceat(self.activity, self.compiled.month_start_day, axis=1)

    @property
    def capacity_month(self) -> FloatArray:
        """(P, T) nameplate activity per plant and month (the sum of :attr:`capacity_days`)."""
        return self._capacity.month

    @cached_property
    def kpis(self) -> pd.DataFrame:
        """Annual KPIs, tidy: columns ``kpi, key, year, value, unit``.

        A row per declared KPI (:data:`retwin.kpis.KPIS`), key and year, in the
        declaration's order; each KPI is computed by its function in :data:`_COMPUTE`.
        """
        return _kpi_frame(self.compiled, self.kpi_values)

    @cached_property
    def kpi_values(self) -> FloatArray:
        """The ``value`` column of :attr:`kpis` as an array, in its rows' order (without
        building the frame); the rows' labels are those of :func:`kpi_labels`."""
        layout = _kpi_layout(self.compiled)
        annual = _Annual(self)
        blocks = [_COMPUTE[k.name](annual)[rows] for k, rows in zip(KPIS, layout.rows,
                                                                     strict=True)]
        values = np.concatenate(blocks, axis=0)[layout.order].reshape(-1)
        values.flags.writeable = False  # shared by every reader of this run
        return cast(FloatArray, values)

    def kpi(self, kpi: str, key: str, year: int) -> float:
        """One KPI value; ``KeyError`` if the run has no such KPI for that year."""
        row = self._kpi_rows.get((kpi, key, year))
        if row is None:
            raise KeyError(f"no KPI {kpi}[{key}] for {year}")
        return float(self._kpi_values[row])

    @cached_property
    def _kpi_rows(self) -> dict[tuple[str, str, int], int]:
        return _kpi_index(self.compiled)

    @property
    def _kpi_values(self) -> FloatArray:
        """The ``value`` column of :attr:`kpis`, in its rows' order (see :func:`_kpi_index`)."""
        return self.kpi_values

    @cached_property
    def _binding_shares(self) -> FloatArray:
        """(stages, codes, Y): share of each stage's capacity-weighted plant-days each
        binding code (:data:`BIND_NAMES`) bound, per year; 0 where the stage had no capacity."""
        from retwin.kernels.tables import binding_weights

        c = self.compiled
        codes = np.fromiter(BIND_NAMES, dtype=np.int64)
        share, total = binding_weights(self.binding, self.capacity_days, c.topology.plant_stage,
                                       len(c.topology.stage_plants), int(codes.max()) + 1,
                                       self._year_of_day - self.years[0], len(self.years))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total[:, None, :] > 0, share[:, codes] / total[:, None, :], 0.0)

    @cached_property
    def binding_table(self) -> pd.DataFrame:
        """Share of capacity-weighted plant-days each constraint bound, per stage and year;
        and the bottleneck stage per year."""
        si, ci, yi = self._binding_where
        names, stages, codes = _labels_of(("binding", tuple(self.compiled.topology.stage_plants)),
                                          ["stage", "year", "constraint", "share"],
                                          list(self.compiled.topology.stage_plants),
                                          list(BIND_NAMES.values()))
        frac = self._binding_shares
        return _frame_of(names, [take(stages, si), np.asarray(self.years, dtype=np.int64)[yi],
                                 take(codes, ci), frac[si, ci, yi]])

    @cached_property
    def binding_columns(self) -> tuple[np.ndarray, IntArray, np.ndarray, FloatArray]:
        """The columns of :attr:`binding_table` (``stage, year, constraint, share``) as
        arrays, without building the frame."""
        frac = self._binding_shares
        si, ci, yi = self._binding_where
        stages = np.asarray(list(self.compiled.topology.stage_plants), dtype=object)
        names = np.asarray(list(BIND_NAMES.values()), dtype=object)
        return (stages[si], np.asarray(self.years, dtype=np.int64)[yi], names[ci],
                frac[si, ci, yi])

    @cached_property
    def _binding_where(self) -> tuple[IntArray, IntArray, IntArray]:
        """The (stage, constraint, year) positions of the binding shares above 0, in that
        order."""
        si, ci, yi = np.nonzero(self._binding_shares > 0)
        return si, ci, yi

    @cached_property
    def bottlenecks(self) -> pd.DataFrame:
        """Per year: ``year, stage, constraint, score`` (see :attr:`bottleneck_rows`)."""
        import pandas as pd

        rows = self.bottleneck_rows
        cols = ["year", "stage", "constraint", "score"]
        if not rows:
            return pd.DataFrame(rows, columns=cols)
        score = np.array([r[3] for r in rows], dtype=np.float64)

        def make() -> pd.DataFrame:
            stage_names = [*self.compiled.topology.stage_plants, ""]  # "": none held back
            code_names = [*BIND_NAMES.values(), ""]
            names, stages, codes = _labels_of(("bottlenecks", tuple(stage_names)), cols,
                                              stage_names, code_names)
            stage_at = {n: i for i, n in enumerate(stage_names)}
            code_at = {n: i for i, n in enumerate(code_names)}
            return _frame_of(names, [np.array([r[0] for r in rows], dtype=np.int64),
                                     stages.take(np.array([stage_at[r[1]] for r in rows])),
                                     codes.take(np.array([code_at[r[2]] for r in rows])),
                                     score])

        # runs of one model mostly share their bottlenecks: the frame is kept by them
        return _framed(("bottlenecks", tuple(r[:3] for r in rows)), make, score=score)

    @cached_property
    def bottleneck_rows(self) -> list[tuple[int, str, str, float]]:
        """Per year: the stage most limited by its own supply-side constraints (capacity,
        quota, outage). An input-starved stage is not the bottleneck — its supplier is. Where
        no stage is held back by its own supply limits for at least half its capacity-weighted
        plant-days (markets on), the chain is limited by the market: the stage most held back
        by the demand on its output or by its margin is reported, with that constraint. Ties go
        to the stage with the larger output value; the constraint reported is the stage's most
        frequent limit of the kind that made it the bottleneck (shares equal to 1e-9 tie, the
        later code winning).
        """
        frac = self._binding_shares
        stage_names = list(self.compiled.topology.stage_plants)
        code_names = list(BIND_NAMES.values())
        code_pos = {code: i for i, code in enumerate(BIND_NAMES)}
        supply = sorted(code_pos[b] for b in (BIND_CAPACITY, BIND_QUOTA, BIND_OUTAGE))
        market = sorted(code_pos[b] for b in (BIND_DEMAND, BIND_MARGIN))
        years = self.years
        # each stage's output value per year, 0 without a row: (stages, Y) as lists
        rows_of = self._kpi_rows
        at = np.array([[rows_of.get(("value.stage", name, year), -1) for year in years]
                       for name in stage_names], dtype=np.int64).reshape(len(stage_names),
                                                                         len(years))
        value = np.where(at >= 0, self._kpi_values[np.maximum(at, 0)], 0.0).tolist()
        # stages in name order, and a tie on the score keeps the first: as grouping by name
        by_name = sorted(range(len(stage_names)), key=lambda i: stage_names[i])

        def scored(kinds: list[int]) -> tuple[list[list[bool]], list[list[float]]]:
            """(stages, Y): whether any of these codes held the stage back, and the sum of
            their shares (code by code, as Python adds them) to 1e-9."""
            total = frac[:, kinds[0], :].copy()
            for k in kinds[1:]:
                total += frac[:, k, :]
            held = cast(list[list[bool]], (frac[:, kinds, :] > 0).any(axis=1).tolist())
            return held, [[round(x, 9) for x in row] for row in total.tolist()]

        def best_of(y: int, kinds: list[int], held: list[list[bool]],
                    score: list[list[float]]) -> tuple[float, float, str, str]:
            best: tuple[float, float] = (-1.0, 0.0)
            stage = -1
            for i in by_name:
                if held[i][y] and (score[i][y], value[i][y]) > best:
                    best, stage = (score[i][y], value[i][y]), i
            if stage < 0:
                return (*best, "", "")
            # the most frequent (to 1e-9, as the score: shares equal but for round-off
            # tie), a tie going to the later code
            f = frac[stage, :, y].tolist()
            top = max((k for k in kinds if f[k] > 0), key=lambda k: (round(f[k], 9), k))
            return (*best, stage_names[stage], code_names[top])

        by_supply = scored(supply)
        by_market: tuple[list[list[bool]], list[list[float]]] | None = None
        rows = []
        for y, year in enumerate(years):
            best = best_of(y, supply, *by_supply)
            if best[0] < 0.5:
                by_market = by_market or scored(market)
                held = best_of(y, market, *by_market)
                if held[0] >= 0.5:
                    best = held
            rows.append((year, best[2], best[3], max(best[0], 0.0)))
        return rows

    @cached_property
    def target_table(self) -> pd.DataFrame:
        """The scenario's targets against the run: ``target, year, goal, value, attained``."""
        import pandas as pd

        rows = self.target_rows
        cols = ["target", "name", "year", "goal", "value", "unit", "attained"]
        if not rows:
            return pd.DataFrame(rows, columns=cols)
        key = ("targets", tuple((t, n, y, float(g).hex(), u) for t, n, y, g, _, u, _ in rows))
        return _framed(key, lambda: pd.DataFrame(rows, columns=cols),
                       value=np.array([r[4] for r in rows], dtype=np.float64),
                       attained=np.array([r[6] for r in rows], dtype=np.bool_))

    @cached_property
    def target_rows(self) -> list[tuple[str, str, int, float, float, str, bool]]:
        """The rows of :attr:`target_table`, without building the frame."""
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
        return rows

    # --- tidy frames --------------------------------------------------------------------

    def series(self) -> pd.DataFrame:
        """Daily series, tidy: ``date, kind, id, value`` for plant activity and pool stock."""
        import pandas as pd

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
        import pandas as pd

        blocks, values = self._monthly_blocks()
        c = self.compiled
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

    def monthly_array(self) -> FloatArray:
        """The values of :meth:`monthly_values` alone (without their labels' frame)."""
        return self._monthly_blocks()[1]

    def _monthly_blocks(self) -> tuple[list[tuple[str, list[str], np.ndarray]], FloatArray]:
        c = self.compiled
        starts = c.month_start_day
        ends = np.r_[starts[1:], c.n_days] - 1
        act_m, cap_m = self.activity_month, self.capacity_month
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
        return blocks, values

    def monthly(self) -> pd.DataFrame:
        """Monthly series, tidy: ``month, kind, id, value`` (see :meth:`monthly_values`)."""
        labels, values = self.monthly_values()
        return labels.assign(value=values)  # assign copies: the cached labels stay intact

    def stage_output(self, stack: FloatArray | None = None) -> pd.DataFrame:
        """Monthly output per stage across replications: ``month, stage, mean, p5, p50,
        p95`` (stages in :attr:`Topology.stage_plants` order, months within each).

        ``stack`` (replications, rows of :meth:`monthly_values`) holds the replications'
        monthly values; this run alone by default (a band of width 0). Each replication's
        stage total is the sum of its plants' ``activity`` in that replication, and the
        band is taken across those totals: the sum of the plants' p5 is not the stage's
        p5 (the plants' outages and noise do not strike together)."""
        import pandas as pd

        c = self.compiled
        labels, values = self.monthly_values()
        if stack is None:
            stack = values[None, :]
        n_p, n_m = len(c.plant_ids), len(c.months)
        rows = np.flatnonzero(labels["kind"].to_numpy() == "activity")
        # monthly_values lays a kind's rows out id-major, months within each id
        if len(rows) != n_p * n_m or (n_p and not np.array_equal(
                labels["id"].to_numpy()[rows[::n_m]], np.asarray(c.plant_ids, dtype=object))):
            raise ValueError("the monthly activity rows are not one per plant and month")
        act = stack[:, rows].reshape(len(stack), n_p, n_m)  # (R, P, T)
        stages = list(c.topology.stage_plants)
        member = np.zeros((len(stages), n_p))
        for i, sel in enumerate(c.topology.stage_plants.values()):
            member[i, sel] = 1.0
        totals = np.matmul(member, act)  # (R, stages, T): each replication's stage totals
        p5, p50, p95 = np.percentile(totals, [5, 50, 95], axis=0)
        months = labels["month"].to_numpy()[rows[:n_m]]
        return pd.DataFrame({
            "month": np.tile(months, len(stages)),
            "stage": np.repeat(np.asarray(stages, dtype=object), n_m),
            "mean": totals.mean(axis=0).reshape(-1),
            "p5": p5.reshape(-1), "p50": p50.reshape(-1), "p95": p95.reshape(-1),
        })

    def flows(self) -> pd.DataFrame:
        """Monthly flows per plant: ``month, plant, stage, material, direction, amount``."""
        import pandas as pd

        c = self.compiled
        act_m = self.activity_month  # (P, T)
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


# --- how each declared KPI is computed ------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """``num / den`` where ``den > 0``, else ``empty``."""
    ok = den > 0
    return np.where(ok, num / np.where(ok, den, 1.0), empty)


class _Plan:
    """What the KPIs of every run of one compiled scenario take from its structure alone
    (which rows go where, which plants and materials count): made once, with the first
    run's KPIs, and read by the others (:func:`_plan`)."""

    def __init__(self, c: Compiled) -> None:
        topo, out, inp = c.topology, c.topology.outputs, c.topology.inputs
        n_m = len(c.material_ids)
        # the region's raw materials (products of mining, recycling, separation and metal)
        raw = np.zeros(n_m, dtype=bool)
        raw[out.material[_stages_in(c, RAW_PRODUCERS)[out.plant]]] = True
        mk_mat = topo.market_material
        self.mk_raw = raw[mk_mat]
        self.any_mk_raw = bool(self.mk_raw.any())
        self.comp_mk_raw = c.comp[mk_mat[self.mk_raw]]  # (raw markets, E)
        comp_raw = c.comp[topo.pool_material] * raw[topo.pool_material][:, None]
        self.comp_raw_t = comp_raw.T  # (E, S)
        self.raw_initial = self.comp_raw_t @ c.pool_initial  # (E,)
        # the separated output (separation and recycling), t REO per unit
        reo = c.comp.sum(axis=1)  # (M,)
        ent = np.flatnonzero(_stages_in(c, RAW_STAGES)[out.plant])
        self.sep_material = out.material[ent]
        self.sep_plant = out.plant[ent]
        self.sep_amount = out.amount[ent, None]
        self.sep_reo = reo[out.material[ent], None]
        # what plants draw from pools
        pooled = inp.pool >= 0
        self.draw_material = inp.material[pooled]
        self.draw_plant = inp.plant[pooled]
        self.draw_amount = inp.amount[pooled, None]
        # each material's reserve: the sum of its pools'
        self.reserve = _add_rows(c, "pool", n_m, (topo.pool_material, c.reserve0[:, None]))[:, 0]
        cal = _calendar(c)
        self.year_months = np.array(cal.month_masks)  # (Y, T)
        # each year's months with the year's place: those with any
        self.month_index = [(i, np.flatnonzero(months))
                            for i, months in enumerate(cal.month_masks) if months.any()]


def _plan(c: Compiled) -> _Plan:
    """The :class:`_Plan` of ``c``: made once for the compiled data it comes from, when it
    has one (the plan follows from the data alone)."""
    cached = c.labels.get("kpi_plan")
    if cached is None:
        plan = _plan(c.data) if c.data is not None else _Plan(c)
        cached = c.labels["kpi_plan"] = (plan, plan)
    return cast(_Plan, cached[0])


class _Annual:
    """A run's arrays summed by year, each made once, and the annual value of every declared
    KPI for every key of its axis (a method per KPI, each ``(n_axis, Y)``)."""

    def __init__(self, r: RunResult) -> None:
        self.r = r
        self.c = r.compiled
        self.topo = r.compiled.topology
        self.n_y = len(r.years)
        self.plan = _plan(r.compiled)

    # sums by year ---------------------------------------------------------------------

    @cached_property
    def act(self) -> FloatArray:  # (P, Y) activity units
        return self.r._by_year(self.r.activity)

    @property
    def cap(self) -> FloatArray:  # (P, Y) nameplate activity the plants had
        return self.r._capacity.year

    @cached_property
    def imp(self) -> FloatArray:  # (K, Y) the market's material
        return self._by_year_or_empty(self.r.imports)

    @cached_property
    def exp(self) -> FloatArray:  # (K, Y)
        return self._by_year_or_empty(self.r.exports)

    @cached_property
    def served(self) -> FloatArray:  # (G, Y) the segment's material
        return self._by_year_or_empty(self.r.served)

    @cached_property
    def unmet(self) -> FloatArray:  # (G, Y)
        return self._by_year_or_empty(self.r.unmet)

    @cached_property
    def year_end(self) -> IntArray:  # (Y,) the day index of each year's last day
        return _calendar(self.c).year_end

    def _by_year_or_empty(self, daily: FloatArray) -> FloatArray:
        if not len(daily):
            return np.zeros((0, self.n_y))
        return self.r._by_year(daily)

    def _per_stage(self, per_plant: FloatArray) -> FloatArray:
        """(P, Y) summed over each stage's plants, in plant order: (stages with plants, Y)."""
        return _add_rows(self.c, "stage", len(self.topo.stage_plants),
                         (self.topo.plant_stage, per_plant))

    @cached_property
    def _stage_act(self) -> FloatArray:
        return self._per_stage(self.act)

    @cached_property
    def _stage_value(self) -> FloatArray:
        """(stages, Y) output value, 亿元."""
        return self._per_stage(self.r._month_to_year(self.r.value_month) / YI)

    @cached_property
    def surplus(self) -> FloatArray:
        """(E, Y) t REO: of the region's raw materials (products of mining, recycling,
        separation and metal plants), stock build-up plus exports minus imports."""
        p = self.plan
        n_e = len(ELEMENTS)
        raw_imp = ((self.imp[p.mk_raw].T @ p.comp_mk_raw).T if p.any_mk_raw
                   else np.zeros((n_e, self.n_y)))
        raw_exp = ((self.exp[p.mk_raw].T @ p.comp_mk_raw).T if p.any_mk_raw
                   else np.zeros((n_e, self.n_y)))
        stock_end = p.comp_raw_t @ self.r.stock[:, self.year_end]  # (E, Y) on each last day
        start_stock = np.concatenate([p.raw_initial[:, None], stock_end[:, :-1]], axis=1)
        return np.asarray(stock_end - start_stock + raw_exp - raw_imp)

    # the declared KPIs ----------------------------------------------------------------

    def output_stage(self) -> FloatArray:
        return self._stage_act

    def utilisation_stage(self) -> FloatArray:
        return _ratio(self._stage_act, self._per_stage(self.cap), 0.0)

    def capacity_stage(self) -> FloatArray:
        """Nameplate capacity per year (activity units) in force on each year's last day."""
        end = self.year_end
        nameplate = (self.c.nameplate_tpa[:, None] if not self.r.capacity_log
                     else self.r.nameplate_days[:, end])
        return self._per_stage(self.c.ramp[:, end] * nameplate)

    def output_plant(self) -> FloatArray:
        return self.act

    def utilisation_plant(self) -> FloatArray:
        return _ratio(self.act, self.cap, 0.0)

    def production_material(self) -> FloatArray:
        out = self.topo.outputs
        # entry by entry, in plant order
        return _add_rows(self.c, "made", len(self.c.material_ids),
                         (out.material, self.act[out.plant] * out.amount[:, None]))

    def imports_market(self) -> FloatArray:
        return self.imp

    def exports_market(self) -> FloatArray:
        return self.exp

    def element_surplus(self) -> FloatArray:
        return self.surplus

    def la_ce_surplus(self) -> FloatArray:
        s = self.surplus
        return (s[ELEMENTS.index("La")] + s[ELEMENTS.index("Ce")])[None, :]

    def dy_tb_deficit(self) -> FloatArray:
        s = self.surplus
        return (-(s[ELEMENTS.index("Dy")] + s[ELEMENTS.index("Tb")]))[None, :]

    @cached_property
    def build_up(self) -> FloatArray:
        """(S, Y) each pool's stock on the year's last day less on the previous year's
        (the starting stock for the first year)."""
        end = self.r.stock[:, self.year_end]
        start = np.concatenate([self.c.pool_initial[:, None], end[:, :-1]], axis=1)
        return np.asarray(end - start)

    @cached_property
    def unsold_share(self) -> FloatArray:
        """(S, Y) the share of each pool's inflow in the year (made by plants, imported)
        that stayed in it: its build-up, 0 where it drew down, at most all of the inflow."""
        topo, out = self.topo, self.topo.outputs
        inflow = _add_rows(self.c, "inflow", len(topo.pool_material),
                           (out.pool, self.act[out.plant] * out.amount[:, None]),
                           (topo.market_pool, self.imp))
        return _ratio(np.clip(self.build_up, 0.0, inflow), inflow, 0.0)

    @cached_property
    def _stage_unsold(self) -> FloatArray:
        """(stages, Y) 亿元: each output's value in the year (at the month's prices) times
        the share of its pool's inflow that stayed in stock."""
        r, out = self.r, self.topo.outputs
        act_m = r.activity_month  # (P, T)
        entry_m = act_m[out.plant] * out.amount[:, None] * r.price_month[out.material]
        entry_y = r._month_to_year(entry_m)  # (entries, Y) CNY
        per_plant = _add_rows(self.c, "plant", len(self.c.plant_ids),
                              (out.plant, entry_y * self.unsold_share[out.pool]))
        return self._per_stage(per_plant / YI)

    def local_conversion(self) -> FloatArray:
        """Share of the region's separated output (separation and recycling, t REO) drawn
        by the region's plants (DESIGN §2.6). Each separated material's supply in the year
        (made, imported, drawn from stock) goes to its uses pro rata: plants' draws, demand
        served, exports and stock build-up; only the plants' part is converted locally."""
        c, topo, p = self.c, self.topo, self.plan
        n_m = len(c.material_ids)
        made = _add_rows(  # (M, Y) separated output, t REO
            c, "separated", n_m,
            (p.sep_material, self.act[p.sep_plant] * p.sep_amount * p.sep_reo))
        draws = (p.draw_material, self.act[p.draw_plant] * p.draw_amount)
        drawn = _add_rows(c, "drawn", n_m, draws)
        # (the draws again, then the other uses: each sum in the order it was added)
        uses = _add_rows(c, "uses", n_m, draws, (topo.segment_material, self.served),
                         (topo.market_material, self.exp),
                         (topo.pool_material, np.maximum(self.build_up, 0.0)))
        converted = (made * _ratio(drawn, uses, 0.0)).sum(axis=0, keepdims=True)
        produced = made.sum(axis=0, keepdims=True)
        return _ratio(np.minimum(converted, produced), produced, np.nan)

    def fill_rate_segment(self) -> FloatArray:
        return _ratio(self.served, self.served + self.unmet, 1.0)

    def unmet_segment(self) -> FloatArray:
        return self.unmet

    def value_stage(self) -> FloatArray:
        """(stages, Y) 亿元: output sold (the value of all output less what stayed in
        stock)."""
        return self._stage_value - self._stage_unsold

    def unsold_value_stage(self) -> FloatArray:
        return self._stage_unsold

    def price_material(self) -> FloatArray:
        """(M, Y) the monthly prices averaged over each year's months."""
        price = self.r.price_month
        out = np.zeros((len(self.c.material_ids), self.n_y))
        for i, months in self.plan.month_index:
            out[:, i] = price[:, months].mean(axis=1)
        return out

    def cover_material(self) -> FloatArray:
        """(M, Y) days: stock above reserve on the year's last day over the year's average
        daily use of the material's pools (plants' draws, demand served, exports)."""
        c, topo, p = self.c, self.topo, self.plan
        n_m = len(c.material_ids)
        use = _add_rows(c, "use", n_m,
                        (p.draw_material, self.act[p.draw_plant] * p.draw_amount),
                        (topo.segment_material, self.served), (topo.market_material, self.exp))
        days = _calendar(self.c).days
        stock = _add_rows(c, "pool", n_m, (topo.pool_material, self.r.stock[:, self.year_end]))
        per_day = use / days[None, :]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(per_day > 0, np.maximum(stock - p.reserve[:, None], 0) / per_day,
                            np.nan)

    def _groups(self, per_stage: FloatArray) -> FloatArray:
        """(groups and total, Y): each stage's row added to its group, in stage order."""
        groups = np.zeros((len(VALUE_GROUPS) - 1, self.n_y))
        for stage, v in zip(self.topo.stage_plants, per_stage, strict=True):
            groups[VALUE_GROUPS.index(STAGE_GROUP[stage])] += v
        return np.concatenate([groups, np.sum(groups, axis=0)[None, :]])

    def value_group(self) -> FloatArray:
        return self._groups(self.value_stage())

    def unsold_value_group(self) -> FloatArray:
        return self._groups(self._stage_unsold)

    def margin_stage(self) -> FloatArray:
        """(stages, Y) the monthly margins of the stage's plants (share of output value),
        weighted by their output value at capacity, averaged over the year's months."""
        r, out = self.r, self.topo.outputs
        n_stages = len(self.topo.stage_plants)
        if r.margin_month is None:
            return np.full((n_stages, self.n_y), np.nan)
        unit_value = _add_rows(  # (P, T) CNY per unit
            self.c, "plant", len(self.c.plant_ids),
            (out.plant, out.amount[:, None] * r.price_month[out.material]))
        weight = r.capacity_month * unit_value
        stage_of = self.topo.plant_stage
        stage_w = _add_rows(self.c, "stage", n_stages, (stage_of, weight))
        stage_wm = _add_rows(self.c, "stage", n_stages, (stage_of, weight * r.margin_month))
        stage_m = _ratio(stage_wm, stage_w, np.nan)
        # (stages, Y, T): each year's months where the stage had a weight
        sel = self.plan.year_months[None, :, :] & (stage_w > 0)[:, None, :]
        n = sel.sum(axis=2)
        tot = np.where(sel, stage_m[:, None, :], 0.0).sum(axis=2)
        return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


def _add_rows(c: Compiled, name: str, n_rows: int,
              *parts: tuple[IntArray, FloatArray]) -> FloatArray:
    """(n_rows, K): for each part ``(rows, values)`` in turn, row ``values[i]`` (K values)
    added to row ``rows[i]``, entry after entry -- ``np.add.at`` into zeros, part by part,
    the same sums to the last bit (each added in the same order), in one ``np.bincount``
    over an index made once per compiled scenario. ``name`` names the parts' row indices,
    which are fixed by the scenario's structure."""
    k = parts[0][1].shape[1]
    key = f"add_rows:{name}:{k}:" + ",".join(str(len(r)) for r, _ in parts)
    cached = c.labels.get(key)
    if cached is None:
        rows = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in parts])
        flat = (rows[:, None] * k + np.arange(k)).reshape(-1)
        cached = c.labels[key] = (flat, flat)
    values = parts[0][1] if len(parts) == 1 else np.concatenate([v for _, v in parts])
    sums = np.bincount(cached[0], weights=np.asarray(values, dtype=np.float64).reshape(-1),
                       minlength=n_rows * k)
    return cast(FloatArray, sums.reshape(n_rows, k))


#: How each declared KPI (:data:`retwin.kpis.KPIS`) is computed: for every key of its
#: axis, ``(n_axis, Y)`` values in its unit.
_COMPUTE: dict[str, Callable[[_Annual], FloatArray]] = {
    "output.stage": _Annual.output_stage,
    "utilisation.stage": _Annual.utilisation_stage,
    "capacity.stage": _Annual.capacity_stage,
    "output.plant": _Annual.output_plant,
    "utilisation.plant": _Annual.utilisation_plant,
    "production.material": _Annual.production_material,
    "imports.market": _Annual.imports_market,
    "exports.market": _Annual.exports_market,
    "element.surplus": _Annual.element_surplus,
    "element.la_ce_surplus": _Annual.la_ce_surplus,
    "element.dy_tb_deficit": _Annual.dy_tb_deficit,
    "local_conversion": _Annual.local_conversion,
    "fill_rate.segment": _Annual.fill_rate_segment,
    "unmet.segment": _Annual.unmet_segment,
    "value.stage": _Annual.value_stage,
    "unsold_value.stage": _Annual.unsold_value_stage,
    "value.group": _Annual.value_group,
    "unsold_value.group": _Annual.unsold_value_group,
    "price.material": _Annual.price_material,
    "cover.material": _Annual.cover_material,
    "margin.stage": _Annual.margin_stage,
}


def _rows_of(c: Compiled, k: Kpi) -> IntArray:
    """The positions on ``k``'s axis that get a row in a run of ``c`` (the declaration's
    ``rows``)."""
    if k.name == "production.material":
        mask = np.zeros(len(c.material_ids), dtype=bool)
        mask[c.topology.outputs.material] = True
        return np.flatnonzero(mask)
    if k.name == "price.material":
        return np.flatnonzero((c.price_month > 0).any(axis=1))
    if k.name == "cover.material":
        return np.unique(c.topology.pool_material)
    if k.name == "imports.market":
        return np.flatnonzero(c.imp_cap_tpa > 0)
    if k.name == "exports.market":
        return np.flatnonzero(c.exp_cap_tpa > 0)
    if k.name == "margin.stage" and not c.scenario.markets_on:
        return np.zeros(0, dtype=np.int64)
    return np.arange(len(_axis(c, k)))


def _axis(c: Compiled, k: Kpi) -> list[str]:
    """Every key ``k`` may have in a run of ``c``, in axis order."""
    return {
        "stage": lambda: list(c.topology.stage_plants),
        "plant": lambda: c.plant_ids,
        "material": lambda: c.material_ids,
        "market": lambda: c.market_ids,
        "segment": lambda: c.segment_ids,
        "element": lambda: list(ELEMENTS),
        "group": lambda: list(VALUE_GROUPS),
        "none": lambda: [str(k.key)],
    }[k.per]()


def _main_material(c: Compiled) -> IntArray:
    """(P,) each plant's main output (the first output of its recipe: a lookup, not a
    search of the scenario's materials)."""
    out = c.topology.outputs
    return out.material[out.ptr[:-1]]


def _units(c: Compiled, k: Kpi, rows: IntArray) -> list[str]:
    """The ``unit`` of each of ``k``'s rows: the declared one, or its key's material's."""
    if k.unit is not None:
        return [k.unit] * len(rows)
    unit = np.asarray(c.material_unit, dtype=object)
    topo = c.topology
    if k.per == "stage":
        main = unit[_main_material(c)]
        stages = list(topo.stage_plants.values())
        return [u.pop() if len(u := set(main[stages[i]])) == 1 else "mixed" for i in rows]
    if k.per == "plant":
        material = _main_material(c)[rows]
    elif k.per == "material":
        material = rows
    elif k.per == "market":
        material = topo.market_material[rows]
    elif k.per == "segment":
        material = topo.segment_material[rows]
    else:  # the declaration refuses a KPI without a unit on another axis
        raise ValueError(f"KPI {k.name}: a KPI per {k.per} needs a declared unit")
    return [str(u) for u in unit[material]]


@dataclass(frozen=True, eq=False)
class _KpiLayout:
    """The rows of every run's KPI frame for one compiled scenario."""

    rows: list[IntArray]  # per declared KPI, the positions on its axis that get a row
    order: IntArray  # the KPIs' rows (concatenated in declaration order) in frame order
    kpi: list[str]  # the frame's columns: kpi, key, year, unit of each row and year
    key: list[str]
    year: IntArray
    unit: list[str]

    @cached_property
    def frame(self) -> pd.DataFrame:
        """``kpi, key, year, value, unit`` as a frame, ``value`` 0 (made on first use:
        pandas is not needed to run, only to hand out frames)."""
        import pandas as pd

        return pd.DataFrame({"kpi": self.kpi, "key": self.key, "year": self.year,
                             "value": np.zeros(len(self.year)), "unit": self.unit})

    @cached_property
    def columns(self) -> tuple[Any, tuple[str, ...], list[Any]]:
        """:attr:`frame`'s columns as :func:`_columns_of` gives them (``value`` 0)."""
        return _columns_of(self.frame)

    @cached_property
    def index(self) -> dict[tuple[str, str, int], int]:
        """The row of each (kpi, key, year) (the first, if repeated)."""
        index: dict[tuple[str, str, int], int] = {}
        for i, k in enumerate(zip(self.kpi, self.key, self.year.tolist(), strict=True)):
            index.setdefault(k, i)
        return index


#: Recent KPI layouts by what they are made of (:func:`_kpi_layout`): the compiled
#: scenarios of what-ifs on one model differ in numbers, rarely in rows.
_LAYOUTS: Kept[_KpiLayout] = Kept(max_items=8)


#: The small tables of runs (bottlenecks, binding shares, targets) by the columns their runs
#: share (:func:`_framed`), as the names and arrays of a frame: the replications and
#: what-ifs of one model repeat them.
_FRAMES: Kept[tuple[Any, tuple[str, ...], list[Any]]] = Kept(max_items=64)


def _framed(key: tuple[Any, ...], make: Callable[[], pd.DataFrame], **columns: np.ndarray
            ) -> pd.DataFrame:
    """The frame ``make()`` builds, with ``columns`` set to these values: built once per
    ``key`` (which must fix every other column, and the rows), its columns kept typed and
    put together again after (:func:`_frame_of`). A small frame takes pandas several times
    longer to build from rows, or to copy and set a column of, than to put together from
    columns whose types are known; the frame is the same, dtypes and all."""
    names, labels, arrays = _FRAMES.get_or_make(key, lambda: _columns_of(make()))
    return _frame_of(names, [columns.get(n, a) for n, a in zip(labels, arrays, strict=True)])


#: The column names and typed labels of tables made from arrays (:func:`_labels_of`).
_LABELS: Kept[tuple[Any, ...]] = Kept(max_items=16)


def _labels_of(key: tuple[Any, ...], columns: list[str], *labels: list[str]
               ) -> tuple[Any, ...]:
    """``columns`` as a frame's column names, then each list of ``labels`` as the array a
    frame would hold it in (pandas' strings), for indexing by position: made once per
    ``key``, which must fix them all."""
    def make() -> tuple[Any, ...]:
        import pandas as pd

        # each typed as a frame's column of these strings would be
        return (pd.Index(columns), *(_array_of(pd.DataFrame({"v": v}).v) for v in labels))

    return _LABELS.get_or_make(key, make)


def take(column: Any, positions: IntArray) -> Any:
    """``column.take(positions)`` for a frame's column as it holds it (:func:`_array_of`):
    pandas' Arrow-backed strings taken by pyarrow itself, which spares pandas' checks of
    the positions, most of the cost of a small take; the same array, dtype and all."""
    import pandas as pd

    if type(column) is pd.arrays.ArrowStringArray:
        import pyarrow as pa

        taken = column.__arrow_array__().take(pa.array(positions, type=pa.int64()))
        try:  # (a pandas before 3 takes no dtype, and has one string dtype of Arrow's)
            made = pd.arrays.ArrowStringArray(taken, dtype=column.dtype)  # type: ignore[call-arg]
        except TypeError:
            made = pd.arrays.ArrowStringArray(taken)
        if made.dtype == column.dtype:
            return made
    return column.take(positions)


def _columns_of(frame: pd.DataFrame) -> tuple[Any, tuple[str, ...], list[Any]]:
    """A frame's column names (its index of them, and as Python strings: going through
    pandas' index of strings name by name costs more than building a small frame), and its
    columns' arrays as it holds them (numpy arrays, or pandas' typed arrays such as its
    strings)."""
    labels = tuple(str(name) for name in frame.columns)
    return frame.columns, labels, [_array_of(frame[name]) for name in labels]


def _array_of(column: pd.Series) -> Any:
    """A column's values as the frame holds them: a numpy array, or pandas' typed array."""
    return column.to_numpy() if isinstance(column.dtype, np.dtype) else column.array


def _frame_of(names: Any, arrays: list[Any]) -> pd.DataFrame:
    """A frame of these columns as they are typed (nothing inferred), each its own: an
    Arrow-backed pandas array (pandas' strings) is a view, which a write into the frame
    replaces rather than changes (Arrow's arrays never change in place); any other column
    is copied."""
    import pandas as pd

    arrow = pd.arrays.ArrowExtensionArray
    own = [a.view() if isinstance(a, arrow) else a.copy() for a in arrays]
    make = getattr(pd.DataFrame, "_from_arrays", None)
    if make is None:  # a pandas without the constructor's own last step
        return pd.DataFrame(dict(zip(names, own, strict=True)), copy=False)
    return cast("pd.DataFrame", make(own, columns=names, index=pd.RangeIndex(len(own[0])),
                                     verify_integrity=False))


def _kpi_frame(c: Compiled, values: FloatArray) -> pd.DataFrame:
    """The KPI frame of a run of ``c`` with these values (a copy of them): its labels are
    shared by every run of ``c`` (:func:`_frame_of`)."""
    names, labels, arrays = _kpi_layout(c).columns
    return _frame_of(names, [values if n == "value" else a
                             for n, a in zip(labels, arrays, strict=True)])


def _kpi_layout(c: Compiled) -> _KpiLayout:
    """Kept in ``c.labels`` once made; families in declaration order; consecutive families
    on the same axis interleaved key by key.

    It depends only on each family's rows, their keys and units, and the years: a compiled
    scenario with the same ones (a what-if that changes numbers, not rows) shares the
    layout made for an earlier one, and its frame and index with it."""
    cached = c.labels.get("kpis")
    if cached is not None:
        return cast(_KpiLayout, cached[0])
    rows = [_rows_of(c, k) for k in KPIS]
    axes = [tuple(_axis(c, k)) for k in KPIS]
    units = [tuple(_units(c, k, r)) for k, r in zip(KPIS, rows, strict=True)]
    years = tuple(_years(c))
    made_of = (tuple((r.dtype.str, r.tobytes()) for r in rows), tuple(axes), tuple(units),
               years)
    layout = _LAYOUTS.get_or_make(made_of, lambda: _make_layout(rows, axes, units, years))
    c.labels["kpis"] = (layout, layout.kpi)
    return layout


def _make_layout(rows: list[IntArray], axes: list[tuple[str, ...]],
                 units: list[tuple[str, ...]], year_list: tuple[int, ...]) -> _KpiLayout:
    """The layout of :func:`_kpi_layout` from each family's rows, axis and row units."""
    names: list[str] = []
    keys: list[str] = []
    unit_col: list[str] = []
    order: list[np.ndarray] = []
    start = 0
    i = 0
    while i < len(KPIS):  # a run of consecutive families on one axis
        j = i
        while j + 1 < len(KPIS) and KPIS[j + 1].per == KPIS[i].per:
            j += 1
        pos = np.concatenate([rows[f] for f in range(i, j + 1)])
        fam = np.concatenate([np.full(len(rows[f]), f) for f in range(i, j + 1)])
        idx = np.lexsort((fam, pos))
        order.append(start + idx)
        start += len(pos)
        # each row's name, key and unit, in the order of ``pos`` and then of ``idx``
        fam_names = np.asarray([KPIS[f].name for f in range(i, j + 1)], dtype=object)
        fam_keys = np.concatenate([np.asarray(axes[f], dtype=object)[rows[f]]
                                   for f in range(i, j + 1)])
        fam_units = np.concatenate([np.asarray(units[f], dtype=object)
                                    for f in range(i, j + 1)])
        names += fam_names[fam[idx] - i].tolist()
        keys += fam_keys[idx].tolist()
        unit_col += fam_units[idx].tolist()
        i = j + 1
    years = np.array(year_list, dtype=np.int64)
    n_y = len(years)
    return _KpiLayout(rows, np.concatenate(order),
                      [n for n in names for _ in range(n_y)],
                      [k for k in keys for _ in range(n_y)],
                      np.tile(years, len(names)),
                      [u for u in unit_col for _ in range(n_y)])


def _stages_in(c: Compiled, stages: tuple[str, ...]) -> np.ndarray:
    """(P,) bool: the plants of these stages (made once per compiled scenario)."""
    name = "stages_in:" + ",".join(stages)
    cached = c.labels.get(name)
    if cached is None:
        mask = np.array([s in stages for s in c.plant_stage], dtype=bool)
        cached = c.labels[name] = (mask, mask)
    return cast(np.ndarray, cached[0])


def _kpi_index(c: Compiled) -> dict[tuple[str, str, int], int]:
    """The row of each (kpi, key, year) in the KPI frame of every run of ``c`` (the first, if
    repeated): made once per layout, from the rows its runs share."""
    return _kpi_layout(c).index


def kpi_labels(c: Compiled) -> tuple[list[str], list[str], IntArray, list[str]]:
    """The ``kpi, key, year, unit`` columns of the KPI frame of every run of ``c``, in the
    order of :attr:`RunResult.kpi_values` (made once per compiled scenario; do not change)."""
    layout = _kpi_layout(c)
    return layout.kpi, layout.key, layout.year, layout.unit


def paired_difference(whatif: Sequence[pd.DataFrame], baseline: Sequence[pd.DataFrame]
                      ) -> pd.DataFrame:
    """What-if − baseline per replication (common random numbers), then mean and
    p5/p50/p95 across replications (:func:`retwin.results.summarise`).

    Frame ``r`` of each list is replication ``r``; a KPI row only one of them has counts as
    0 in the other.
    """
    if len(whatif) != len(baseline):
        raise ValueError(f"a difference needs the baseline's replications ({len(whatif)} "
                         f"what-if, {len(baseline)} baseline)")
    diffs = []
    for a, b in zip(whatif, baseline, strict=True):
        m = a.merge(b, on=KPI_KEYS, how="outer", suffixes=("", "_base")).fillna(
            {"value": 0.0, "value_base": 0.0})
        m["value"] = m["value"] - m["value_base"]
        diffs.append(m.drop(columns="value_base"))
    return summarise(diffs)


def summarise(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean and p5/p50/p95 across replications of tidy KPI frames (same rows in each)."""
    import pandas as pd

    if not frames:
        raise ValueError("summarise needs at least one KPI frame")
    cols = ["kpi", "key", "year", "unit"]
    if all(len(f) == len(frames[0]) for f in frames) and all(
        f[cols].equals(frames[0][cols]) for f in frames[1:]
    ):
        keys = frames[0]
        values = np.stack([f.value.to_numpy() for f in frames])
    else:  # rows differ between runs: align on the keys, a missing row counts as 0
        wide = pd.concat([f.set_index(cols).value.rename(i) for i, f in enumerate(frames)],
                         axis=1).fillna(0.0)
        keys = wide.index.to_frame(index=False)
        values = wide.to_numpy().T
    # one constructor call: inserting the statistics column by column costs ~3x more
    columns: dict[str, Any] = {c: keys[c].array for c in cols}
    columns["mean"] = values.mean(axis=0)
    for q in (5, 50, 95):
        columns[f"p{q}"] = np.percentile(values, q, axis=0)
    columns["n"] = np.full(values.shape[1], len(frames), dtype=np.int64)
    return pd.DataFrame(columns)


class ReplicationSet:
    """Replications of one scenario: the first run in full, every run's KPI frame.

    The engine gives each run's KPI values (``kpi_values``, in the rows of the first run's
    :func:`kpi_labels`); the frames are made from them on first use, so reading the summary
    of a run (:meth:`kpi_cells`) needs no pandas. Frames may be given instead.
    """

    def __init__(self, first: RunResult, kpi_frames: Sequence[pd.DataFrame] | None = None,
                 seeds: Sequence[tuple[int, int]] = (), monthly_stack: np.ndarray | None = None,
                 *, kpi_values: Sequence[FloatArray] | None = None) -> None:
        if (kpi_frames is None) == (kpi_values is None):
            raise ValueError("a replication set needs either KPI frames or KPI values")
        self.first = first
        self.seeds = list(seeds)
        #: (replications, rows of first.monthly_values()); ``None``: the first run's alone
        self.monthly_stack = monthly_stack
        self._frames = None if kpi_frames is None else list(kpi_frames)
        self._values = None if kpi_values is None else list(kpi_values)

    def __repr__(self) -> str:
        return (f"ReplicationSet({self.first.compiled.scenario.name!r}, "
                f"{len(self.seeds) or len(self.kpi_frames)} replications)")

    @property
    def kpi_frames(self) -> list[pd.DataFrame]:
        """Every run's tidy KPI frame (``kpi, key, year, value, unit``)."""
        if self._frames is None:
            assert self._values is not None
            self._frames = [_kpi_frame(self.first.compiled, np.asarray(v, dtype=np.float64))
                            for v in self._values]
        return self._frames

    @cached_property
    def summary(self) -> pd.DataFrame:
        return summarise(self.kpi_frames)

    def kpi_cells(self) -> dict[tuple[str, str, int], tuple[float, float, float]]:
        """``(kpi, key, year)`` -> ``(mean, p5, p95)`` across the replications: the
        :attr:`summary` (the first row of a repeated key), as plain values."""
        if self._values is not None:
            kpi, key, year, _ = kpi_labels(self.first.compiled)
            values = np.stack(self._values)
            columns = [values.mean(axis=0), np.percentile(values, 5, axis=0),
                       np.percentile(values, 95, axis=0)]
            keys = zip(kpi, key, year.tolist(), strict=True)
        else:
            s = self.summary
            columns = [s[c].to_numpy() for c in ("mean", "p5", "p95")]
            keys = zip(s["kpi"].tolist(), s["key"].tolist(), s["year"].tolist(), strict=True)
        out: dict[tuple[str, str, int], tuple[float, float, float]] = {}
        for k, cell in zip(keys, zip(*(c.tolist() for c in columns), strict=True),
                           strict=True):
            out.setdefault(k, cell)
        return out

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

    @cached_property
    def stage_output(self) -> pd.DataFrame:
        """Monthly output per stage: ``month, stage, mean, p5, p50, p95`` of the
        replications' stage totals (:meth:`RunResult.stage_output`)."""
        return self.first.stage_output(self.monthly_stack)

    def difference(self, baseline: ReplicationSet) -> pd.DataFrame:
        """Paired differences to a baseline run with the same seeds (common random numbers)."""
        if self.seeds != baseline.seeds:
            raise ValueError("a difference needs the baseline's seeds and replications")
        return paired_difference(self.kpi_frames, baseline.kpi_frames)
