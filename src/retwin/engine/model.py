"""One run: a SimPy environment, the chain's state arrays, and the flow advance."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

import numpy as np
import simpy
from numpy.random.bit_generator import ISeedSequence

from retwin._kept import Kept
from retwin._typing import FloatArray
from retwin.compiled import Compiled, TimedChange
from retwin.config import CHAIN_KERNELS
from retwin.engine.markets import market_arrays
from retwin.kernels import contract, specialised, streams, trade
from retwin.kernels.flow import advance_packed, relabel_capacity
from retwin.processes import (
    EconomyProcess,
    EventLog,
    OutageCalendar,
    PolicyProcess,
    demand_paths,
    draw_outages,
    reference_paths,
)
from retwin.scenario.schema import (
    CapacityChange,
    OutageChange,
    ReserveChange,
    TradeChange,
)

__all__ = ["TIMED_HANDLERS", "ChainModel"]


class ChainModel:
    """All state of one run lives here (nothing global), so runs can go in parallel.

    Processes call :meth:`advance_to` before they change anything; it moves the flow from
    the last event day up to (not including) the given day with one kernel call.
    """

    def __init__(self, c: Compiled, seed: int) -> None:
        self.c = c
        self.seed = int(seed)
        self.env = simpy.Environment()
        self.n_days = c.n_days
        self.month_start_day = c.month_start_day
        n_p, n_m, n_t = len(c.plant_ids), len(c.material_ids), len(c.months)
        st = c.scenario.settings
        self._seed_words = np.array(streams.entropy_words(self.seed), np.int64)
        # Outages do not depend on the run's state: drawn now (or kept from a run that drew
        # the same), read by the kernel day by day (an outage costs no event, no kernel call).
        self.outages = KEPT_OUTAGES.get_or_make(
            (self.seed, *_outage_inputs(c), st.outages, c.n_days),
            lambda: _read_only(draw_outages(c.plant_ids, c.mtbf, c.mttr, c.planned,
                                            st.outages, c.n_days, self.rng)))
        self.price_rec = np.zeros((n_m, n_t))
        # Markets off: prices and demand follow their paths (with noise drawn now, as it does
        # not depend on the state either); the kernel sets them month by month. Markets on:
        # the economy sets them monthly, from the state.
        paths: dict[str, FloatArray] = {}
        economy: EconomyProcess | None = None
        if c.scenario.markets_on:
            economy = EconomyProcess(
                market_arrays(c), c.ramp, c.material_ids, c.segment_ids, c.month_start_day,
                c.price_month, c.volatility, c.reversion, st.price_noise, c.demand_month,
                c.demand_cv, st.demand_noise)
            kept = self._kept_paths(lambda: economy.paths(self))
            outside = (kept[0].copy(), kept[1].copy())  # the compiled month takes writable
        else:
            vol = c.volatility if st.price_noise else np.zeros_like(c.volatility)
            cv = c.demand_cv if st.demand_noise else np.zeros_like(c.demand_cv)
            kept = self._kept_paths(lambda: (
                reference_paths(self, c.material_ids, c.price_month, vol, c.reversion),
                demand_paths(self, c.segment_ids, c.demand_month, cv)))
            self.price_rec[:] = kept[0]
            paths = {"price_path": self.price_rec, "dem_path": kept[1]}  # copied into blobs
        # The kernel's arrays (retwin.kernels.contract): the compiled inputs, the state with
        # its starting values, everything else zero. The engine calls the packed kernel (a
        # third of the dispatch cost per event); the 1-D arrays are views into its blobs, so
        # events write straight into what the kernel reads.
        self.kernel = contract.allocate_packed(c.kernel_sizes, {
            **c.kernel_static,
            "cap_day": c.nameplate_tpa * c.utilisation / 365.0,  # x decision (1 at start)
            "avail": np.ones(n_p),
            "derate": np.ones(n_p),
            "cal_ptr": self.outages.ptr,
            "cal_day": self.outages.day,
            "cal_up": self.outages.up,
            "cal_at": self.outages.ptr[:-1].copy(),
            "reserve": c.reserve0,
            "imp_cap_day": c.imp_cap_tpa / 365.0,
            "exp_cap_day": c.exp_cap_tpa / 365.0,
            "price": c.price_month[:, 0],
            "stock": c.pool_initial,
            **paths,
        })
        #: Every kernel array by its declared name (also readable as ``model.<name>``).
        self.arrays = self.kernel.views
        #: The kernel's arguments after ``d0, d1``, in its order (for the named call).
        self._args = self.kernel.args
        self._packed = self.kernel.call
        #: The flow kernel this run calls: the one specialised to this chain's structure
        #: when it has been compiled (``retwin warmup``), else the general one.
        self._advance = chain_kernel(c) or advance_packed
        # the state events change, by name for the methods below and the processes
        a = self.arrays
        self.cap_day, self.avail, self.reserve = a["cap_day"], a["avail"], a["reserve"]
        self.derate, self.cal_at = a["derate"], a["cal_at"]
        self.imp_cap_day, self.exp_cap_day = a["imp_cap_day"], a["exp_cap_day"]
        self.exp_contract_day = a["exp_contract_day"]
        self.dem_rate, self.price = a["dem_rate"], a["price"]
        self.q_avail, self.q_year_left = a["q_avail"], a["q_year_left"]
        #: the ceiling of each plant per day (nameplate after capacity changes x utilisation
        #: ceiling); ``cap_day`` is this times the plant's decided share (``decision``)
        self.cap_max_day = c.nameplate_tpa * c.utilisation / 365.0
        self.decision = np.ones(n_p)
        #: The rate (per day) a plant decided to run flat out was asked for: a raised ceiling
        #: lifts it no further (unbounded until the first decision).
        self.want_day = np.full(n_p, np.inf)
        #: nameplate built so far, as a multiple of the scenario's (investment adds to it)
        self.built = np.ones(n_p)
        #: outside markets: the caps after trade changes, the share of the import cap on
        #: offer and the outside demand for exports (set monthly when markets are on)
        #: (K,) outside demand's growth since the start (markets' ``growth_frac_per_year``)
        self.exp_growth_fac = np.ones(len(c.exp_cap_tpa))
        n_k = len(c.market_ids)
        self._trade = np.empty((5, n_k))  # rows: retwin.kernels.trade
        self.imp_cap_base_tpa, self.exp_cap_base_tpa = (self._trade[trade.BASE_IMPORT],
                                                        self._trade[trade.BASE_EXPORT])
        self.imp_share, self.exp_demand_tpa, self.exp_contract_tpa = (
            self._trade[trade.IMPORT_SHARE], self._trade[trade.EXPORT_DEMAND],
            self._trade[trade.CONTRACT])
        self.imp_cap_base_tpa[:] = c.imp_cap_tpa
        self.exp_cap_base_tpa[:] = c.exp_cap_tpa
        self.imp_share[:] = 1.0
        self.exp_demand_tpa[:] = np.inf
        self.exp_contract_tpa[:] = 0.0
        self.day = 0
        self.kernel_calls = 0
        self.events: list[tuple[int, str, str]] = []
        self.capacity_log: list[tuple[int, int, float]] = []  # (day, plant, nameplate_tpa)
        self._weights: dict[int, tuple[TimedChange, float]] = {}
        # the state of day 0: the calendar's changes of that day (an empty kernel call)
        self._advance(0, 0, *self._packed)
        self.economy = economy
        if economy is not None:
            economy.start(self.env, self, outside)
        PolicyProcess(c.timed).start(self.env, self)

    def _kept_paths(self, draw: Callable[[], tuple[FloatArray, FloatArray]]
                    ) -> tuple[FloatArray, FloatArray]:
        """The outside price and demand paths ``draw`` makes from this run's streams, or
        those a run with the same seed and the same path inputs drew (:data:`KEPT_PATHS`):
        read-only, shared; a caller that changes them, or hands them to a compiled function
        that takes writable arrays, copies them."""
        c, st = self.c, self.c.scenario.settings
        return KEPT_PATHS.get_or_make(
            (self.seed, *_path_inputs(c), st.price_noise, st.demand_noise),
            lambda: _read_only_arrays(draw()))

    def __getattr__(self, name: str) -> np.ndarray:
        """Any kernel array by its declared name (``model.act_rec``, ``model.stock``…)."""
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- the Chain interface used by the processes ----------------------------------------

    def rng(self, stream: str) -> np.random.Generator:
        """An independent generator per named stream: the same name gets the same numbers in
        every run with this seed (common random numbers between a baseline and a what-if).

        The stream is ``PCG64(SeedSequence(seed, spawn_key=(crc32(name),)))``, its seed
        sequence hashed by a compiled copy of numpy's (:class:`_StreamSeed`)."""
        key = _stream_key(stream)
        # numpy takes any ISeedSequence (its stubs name only SeedSequence)
        seed_seq = cast(np.random.SeedSequence, _StreamSeed(self._seed_words, key))
        return np.random.Generator(np.random.PCG64(seed_seq))

    def advance_to(self, day: int) -> None:
        if day > self.day:
            if day > self.n_days:
                day = self.n_days
            self._advance(self.day, day, *self._packed)
            self.kernel_calls += 1
            self.day = day

    def log(self, day: int, kind: str, subject: str) -> None:
        self.events.append((day, kind, subject))

    def set_change_weight(self, timed: TimedChange, weight: float) -> None:
        if weight > 0:
            self._weights[timed.index] = (timed, weight)
        else:
            self._weights.pop(timed.index, None)
        getattr(self, TIMED_HANDLERS[timed.kind])(timed.change)

    def _on_capacity(self, ch: CapacityChange) -> None:
        c = self.c
        for p, pid in enumerate(c.plant_ids):
            if pid == ch.plant or c.plant_stage[p] == ch.stage:
                self._refresh_capacity(p)

    def _on_outage(self, ch: OutageChange) -> None:
        self._refresh_avail(self.c.plant_ids.index(ch.plant))

    def _on_trade(self, ch: TradeChange) -> None:
        self._refresh_trade(self.c.market_ids.index(ch.market))

    def _on_reserve(self, ch: ReserveChange) -> None:
        self._refresh_reserve(self.c.pool_keys.index((ch.region, ch.material)))

    # --- recomputing state from the base and the active changes ---------------------------

    def _active(self, kind: str) -> list[tuple[Any, float]]:
        return [(t.change, w) for i, (t, w) in sorted(self._weights.items()) if t.kind == kind]

    def _refresh_avail(self, p: int) -> None:
        """A plant's availability: what the what-if outages leave (``derate``) times what
        the drawn outages leave today (the calendar's last change point applied)."""
        forced = 1.0
        pid = self.c.plant_ids[p]
        for ch, w in self._active("outage"):
            if ch.plant == pid:
                forced = min(forced, 1.0 - w * (1.0 - ch.capacity_frac))
        self.derate[p] = forced
        k = int(self.cal_at[p])
        up = float(self.outages.up[k - 1]) if k > self.outages.ptr[p] else 1.0
        self.avail[p] = forced * up

    def add_capacity(self, plants: np.ndarray, share_of_nameplate: float) -> None:
        """New capacity built (investment): each plant gains that share of its nameplate."""
        for p in plants:
            self.built[p] += share_of_nameplate
            self._refresh_capacity(int(p))

    def _refresh_capacity(self, p: int) -> None:
        c = self.c
        value = float(c.nameplate_tpa[p]) * self.built[p]
        for ch, w in self._active("capacity"):
            if ch.plant != c.plant_ids[p] and ch.stage != c.plant_stage[p]:
                continue
            if ch.set_tpa is not None:
                new = ch.set_tpa
            elif ch.factor is not None:
                new = value * ch.factor
            else:
                new = value + ch.delta_tpa
            value += w * (new - value)
        value = max(0.0, value)
        self.cap_max_day[p] = value * c.utilisation[p] / 365.0
        # a producer's decided rate stands until its next decision: a new ceiling caps it,
        # and only a plant decided to run flat out follows a raised one, up to the rate its
        # customers asked for (a rate decided as a share of the old ceiling would move with
        # the ceiling, whatever was asked)
        if self.decision[p] >= 1.0 - 1e-9:
            self.cap_day[p] = min(self.cap_max_day[p], self.want_day[p])
        else:
            self.cap_day[p] = min(self.cap_max_day[p], self.cap_day[p])
        self.capacity_log.append((self.day, p, value))

    def set_decisions(self, utilisation: np.ndarray, want_day: np.ndarray) -> None:
        """Producers' decided share of their ceiling, and the rate a plant decided to run
        flat out would run at were its ceiling higher (the market process, monthly)."""
        trade.decide(utilisation, want_day, self.decision, self.want_day, self.cap_max_day,
                     self.cap_day)

    def hand_over(self, decide: bool, utilisation: np.ndarray, want_day: np.ndarray,
                  import_share: np.ndarray, export_demand_tpa: np.ndarray,
                  export_contract_tpa: np.ndarray, exp_asked: np.ndarray, days: int) -> None:
        """A month's decisions (as :meth:`set_decisions`, when ``decide``), the outside curves
        at its prices (the import share on offer, outside demand for exports, exports under
        contract, t a year: the daily trade caps follow) and what outside buyers ask over its
        ``days`` (``exp_asked``), in one compiled call (:func:`retwin.kernels.trade.hand_over`)."""
        trade.hand_over(decide, utilisation, want_day, self.decision, self.want_day,
                        self.cap_max_day, self.cap_day, import_share, export_demand_tpa,
                        export_contract_tpa, self._trade, self.imp_cap_day, self.exp_cap_day,
                        self.exp_contract_day, exp_asked, days)

    def hand_over_arrays(self) -> tuple[np.ndarray, ...]:
        """What :meth:`hand_over` writes besides the flow's caps, for a compiled caller that
        hands a month over itself (:func:`retwin.kernels.market.month`): the decided shares,
        the asked rates, the ``(5, K)`` trade state (rows :mod:`retwin.kernels.trade`), the
        daily import caps and the daily contracted exports."""
        return (self.decision, self.want_day, self._trade, self.imp_cap_day,
                self.exp_contract_day)

    def grow_exports(self, factor: FloatArray) -> None:
        """Outside demand's growth since the start, per market: the export caps follow (a
        trade change's factor scales the grown cap, its ``cap_tpa`` replaces it)."""
        self.exp_growth_fac[:] = factor
        for k in np.flatnonzero(self.c.exp_cap_tpa > 0):
            self._refresh_trade(int(k))

    def _refresh_trade(self, k: int) -> None:
        c = self.c
        caps = {"import": float(c.imp_cap_tpa[k]),
                "export": float(c.exp_cap_tpa[k] * self.exp_growth_fac[k])}
        for ch, w in self._active("trade"):
            if ch.market != c.market_ids[k]:
                continue
            old = caps[ch.side]
            new = ch.cap_tpa if ch.cap_tpa is not None else old * ch.factor
            caps[ch.side] = old + w * (new - old)
        self.imp_cap_base_tpa[k] = caps["import"]
        self.exp_cap_base_tpa[k] = caps["export"]
        self.imp_cap_day[k] = caps["import"] * self.imp_share[k] / 365.0
        self.exp_cap_day[k] = min(caps["export"], self.exp_demand_tpa[k]) / 365.0
        self.exp_contract_day[k] = min(caps["export"], self.exp_contract_tpa[k]) / 365.0

    def _refresh_reserve(self, s: int) -> None:
        value = float(self.c.reserve0[s])
        key = self.c.pool_keys[s]
        for ch, w in self._active("reserve"):
            if (ch.region, ch.material) != key:
                continue
            new = ch.reserve_t if ch.reserve_t is not None else value + ch.delta_t
            value += w * (new - value)
        self.reserve[s] = max(0.0, value)

    def run(self) -> None:
        """Play every event of the horizon, then advance the flow to its last day."""
        self.env.run(until=self.n_days)
        self.advance_to(self.n_days)
        # the drawn outages join the log in day order, when it is first read
        self.event_log = EventLog(self.events, self.outages, self.c.quota_log)
        if self.economy is not None:
            # days the kernel saw as capacity-bound while the plant ran below its ceiling by
            # its own decision: bound by the demand on its output, or by its margin
            relabel_capacity(self.code_rec, self.economy.reason_rec, self.month_start_day)

    def close(self) -> None:
        """Drop the simulation once its results are taken: the processes still waiting past
        the horizon hold the model in reference cycles (model, environment, processes), which
        would keep its arrays alive until the next full garbage collection."""
        self.env._queue.clear()
        del self.env


def _calendar_bytes(cal: OutageCalendar) -> int:
    return sum(a.nbytes for a in _calendar_arrays(cal))


def _calendar_arrays(cal: OutageCalendar) -> tuple[np.ndarray, ...]:
    return cal.ptr, cal.day, cal.up, cal.ev_day, cal.ev_kind, cal.ev_plant


#: The outage calendars this process drew lately, by what they follow from: the seed, the
#: plants' ids, MTBF, MTTR and planned outages, whether random outages are on, the horizon.
#: A baseline and its what-ifs share their seed, and a sweep's points their seeds
#: replication by replication (common random numbers): their runs take the calendar drawn
#: before (the same numbers) instead of drawing it again. A calendar is kept from the second
#: time its seed is asked for (a Monte Carlo's seeds, asked once each, keep nothing), within
#: 8 MiB: ~200 calendars of baotou-2024 (41 KB each), fewer of a larger chain.
KEPT_OUTAGES: Kept[OutageCalendar] = Kept(max_items=1024, max_bytes=8 << 20,
                                          size=_calendar_bytes, asked_twice=True)


#: The outside price and demand paths (with their noise, and with markets on the cost
#: pass-through between prices) this process drew lately, by what they follow from: the
#: seed, the noise settings, the materials' and segments' ids, the monthly price and demand
#: curves, volatilities, reversion speeds and coefficients of variation, and with markets
#: on the price links (:func:`_path_inputs`). Kept as :data:`KEPT_OUTAGES` keeps calendars:
#: from a seed's second ask, within 8 MiB (baotou-2024's paths take 17 KB).
KEPT_PATHS: Kept[tuple[FloatArray, FloatArray]] = Kept(
    max_items=1024, max_bytes=8 << 20, size=lambda v: v[0].nbytes + v[1].nbytes,
    asked_twice=True)


def _path_inputs(c: Compiled) -> tuple[Hashable, ...]:
    """What a compiled scenario's outside price and demand paths follow from, besides the
    seed and the noise settings (kept on ``c``)."""
    inputs = c.__dict__.get("_path_inputs")
    if inputs is None:
        arrays: list[np.ndarray] = [c.price_month, c.volatility, c.reversion, c.demand_month,
                                    c.demand_cv]
        if c.scenario.markets_on:
            a = market_arrays(c)
            arrays += [a.ref_price_month, a.link_from, a.link_share]
        inputs = (c.scenario.markets_on, tuple(c.material_ids), tuple(c.segment_ids),
                  *((str(x.dtype), x.shape, np.ascontiguousarray(x).tobytes())
                    for x in arrays))
        c.__dict__["_path_inputs"] = inputs
    return inputs


def _structure_key(c: Compiled) -> str:
    """The key of the chain's specialised flow kernel (kept on ``c``)."""
    key = c.__dict__.get("_structure_key")
    if key is None:  # (the structure is data: the compiled data's key, where there is one)
        key = c.__dict__["_structure_key"] = (
            _structure_key(c.data) if c.data is not None
            else specialised.structure_key(c.kernel_static, c.kernel_sizes))
    return cast(str, key)


def chain_kernel(c: Compiled) -> Callable[..., None] | None:
    """The flow kernel specialised to ``c``'s chain, when it has been compiled (in this
    process, or into the on-disk cache by an earlier :func:`specialise_chain`); else
    ``None`` (also when ``RETWIN_CHAIN_KERNELS=0``). Compiles nothing."""
    if not CHAIN_KERNELS:
        return None
    return specialised.kernel_for(_structure_key(c), c.kernel_static, c.kernel_sizes)


def specialise_chain(c: Compiled) -> Callable[..., None]:
    """Compile the flow kernel specialised to ``c``'s chain (seconds; loaded from the
    on-disk cache when it is there), for this process and the next ones."""
    model = ChainModel(c, seed=0)  # a run's arguments: the types it is compiled for
    try:
        return specialised.specialise(_structure_key(c), c.kernel_static, c.kernel_sizes,
                                      model._packed)
    finally:
        model.close()


_Arrays = TypeVar("_Arrays", bound=tuple[np.ndarray, ...])


def _read_only_arrays(arrays: _Arrays) -> _Arrays:
    """``arrays`` made read-only: they are kept (:data:`KEPT_OUTAGES`, :data:`KEPT_PATHS`)
    and shared by the runs that draw the same."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


_OutageInputs = tuple[tuple[str, ...], bytes, bytes, tuple[tuple[tuple[int, int], ...], ...]]


def _outage_inputs(c: Compiled) -> _OutageInputs:
    """What a compiled scenario's outage calendars follow from, besides the seed and the
    settings: its plants' ids, MTBF, MTTR and planned outages (kept on ``c``)."""
    inputs = c.__dict__.get("_outage_inputs")
    if inputs is None and c.data is not None:
        inputs = c.__dict__["_outage_inputs"] = _outage_inputs(c.data)  # (data alone)
    if inputs is None:
        inputs = (tuple(c.plant_ids), np.ascontiguousarray(c.mtbf, np.float64).tobytes(),
                  np.ascontiguousarray(c.mttr, np.float64).tobytes(),
                  tuple(tuple((int(a), int(b)) for a, b in w) for w in c.planned))
        c.__dict__["_outage_inputs"] = inputs
    return inputs


def _read_only(cal: OutageCalendar) -> OutageCalendar:
    """``cal`` with its arrays made read-only (:func:`_read_only_arrays`)."""
    _read_only_arrays(_calendar_arrays(cal))
    return cal


@functools.lru_cache(maxsize=4096)
def _stream_key(stream: str) -> int:
    """The spawn key of a named stream (the same names come back in every run)."""
    return zlib.crc32(stream.encode())


class _StreamSeed(ISeedSequence):
    """``np.random.SeedSequence(seed, spawn_key=(key,))`` as a ``PCG64`` reads it: its
    ``generate_state``, computed by :func:`retwin.kernels.streams.generate_state` (numpy
    builds its seed sequence in Python-level code, at several times the cost of drawing a
    stream's numbers)."""

    def __init__(self, seed_words: np.ndarray, key: int) -> None:
        self._seed_words, self._key = seed_words, key

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        return streams.generate_state(self._seed_words, self._key, n_words, dtype)


#: The ``timed`` change kinds (``retwin.scenario.kinds``), each with the method that puts its
#: current weight into run state when the policy process starts, ramps or ends it.
TIMED_HANDLERS: dict[str, str] = {
    "capacity": "_on_capacity", "outage": "_on_outage", "trade": "_on_trade",
    "reserve": "_on_reserve"}

