"""A slow, obviously correct pure-Python reference of the daily flow kernel.

Written from the *specification* in the docstring of :mod:`retwin.kernels.flow` (and the
:class:`~retwin.scenario.schema.Quota` and :class:`~retwin.scenario.schema.Pool` docstrings),
not from the kernel's code. It takes exactly the kernel's arguments (those declared in
:mod:`retwin.kernels.contract`), so a test can run both on copies of the same arrays, but it
converts them into plain Python objects first, keeps the shipments in transit as a plain list
of ``(arrival day, pool, amount, is_import)`` instead of a ring buffer, and writes its results
back into the arrays at the end. It ignores the arrays the declaration marks ``derived``
(indexes and running totals the kernel keeps for speed) except to write them back.

One day, in order:

0. outages: a plant whose outage calendar has change points not yet applied on or before
   today takes ``derate × cal_up`` of the last of them as its availability (also on the day
   after the last, ``d1``: the state left is that of the start of that day); the quota
   calendar's entries of today not yet applied (also on ``d1``) set a quota's year (its
   ceiling, and what is released at once) or add a released batch; when the price
   and demand paths have months, each segment's demand and each material's price are those
   of today's month (also on ``d1``, when it is a day of the records);
1. arrivals: production and imports whose lead time ends today reach their pools; then each
   market's contracted exports leave, from stock above the reserve;
2. plants, level by level (upstream first). Each plant asks for
   ``capacity × availability × ramp``; plants under one quota share what the quota allows
   today (the smaller of what has been released and not used, and an even pace of what is
   left of the year) by their licence shares, what one leaves going to the others; plants
   drawing on one pool share its free stock (above the
   strategic reserve) pro rata to their requests; plants delivering into a pool with a storage
   ceiling share its room (ceiling minus stock minus what is already on its way to it). The
   activity is the smallest of these limits; the limit recorded is the one that bound (the
   smallest; on a tie the earlier one in that list);
3. demand segments draw their daily rate from their pools (pro rata when short);
4. exports take stock above ``reserve + target`` up to what the contract left of each
   market's daily cap;
5. imports order up to ``reserve + target`` net of imports already in transit, up to each
   market's daily cap, arriving after the market's lead time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retwin.kernels.contract import NAMES

#: The kernel's arrays after ``d0, d1``, in order: the declaration's.
ARG_NAMES: tuple[str, ...] = NAMES

# Binding-constraint codes (their meaning is part of the interface: retwin.kernels.BIND_NAMES).
CAPACITY, QUOTA, INPUT, OUTAGE, STORAGE, IDLE = 1, 2, 3, 4, 5, 6

#: Two limits this close (relative) are a tie decided by round-off.
TIE_RTOL = 1e-9

# Rows of ``tot``.
PRODUCED, DRAWN, EXTRACTED, IMPORTED, EXPORTED, DEMANDED = range(6)


@dataclass
class Plant:
    index: int
    commission: int
    ramp_days: int
    retire: int
    lead: int
    quota: int | None
    quota_per_activity: float
    licence_share: float
    inputs: list[tuple[int | None, int, float]]  # (pool or None: from the ground, material, amt)
    outputs: list[tuple[int, int, float]]  # (pool, material, amount)

    def ramp(self, day: int) -> float:
        if day < self.commission or day >= self.retire:
            return 0.0
        if self.ramp_days > 0:
            return min(1.0, (day - self.commission + 1) / self.ramp_days)
        return 1.0


@dataclass
class Shipment:
    arrival: int
    pool: int
    amount: float
    is_import: bool


@dataclass
class World:
    levels: list[list[Plant]]
    pool_material: list[int]
    target: list[float]
    ceiling: list[float | None]
    market_pool: list[int]
    import_lead: list[int]
    segment_pool: list[int]
    days_left: list[int]
    month_of_day: list[int]
    # state set by events
    cap_day: list[float]
    avail: list[float]
    derate: list[float]
    #: per plant, its outage calendar's change points not yet applied: (day, share up)
    calendar: list[list[tuple[int, float]]]
    #: the quota calendar's entries not yet applied: (day, quota, starts a year, left, avail)
    quota_calendar: list[tuple[int, int, bool, float, float]]
    reserve: list[float]
    import_cap: list[float]
    export_cap: list[float]
    export_contract: list[float]
    demand_rate: list[float]
    price: list[float]
    #: per segment (material), its demand (price) in each month; no months: not replayed
    path_months: int
    demand_path: list[list[float]]
    price_path: list[list[float]]
    quota_released: list[float]
    quota_year_left: list[float]
    # state moved by the flow
    stock: list[float]
    in_transit: list[Shipment]
    # accumulators and records
    value_month: list[list[float]]
    totals: list[list[float]]
    activity: dict[tuple[int, int], float] = field(default_factory=dict)
    code: dict[tuple[int, int], int] = field(default_factory=dict)
    stock_rec: dict[tuple[int, int], float] = field(default_factory=dict)
    import_rec: dict[tuple[int, int], float] = field(default_factory=dict)
    export_rec: dict[tuple[int, int], float] = field(default_factory=dict)
    served: dict[tuple[int, int], float] = field(default_factory=dict)
    unmet: dict[tuple[int, int], float] = field(default_factory=dict)
    #: per pool, plants' requests beyond its free stock, summed over the days advanced
    short: list[float] = field(default_factory=list)
    #: (plant, day) whose binding constraint was decided by a tie within round-off
    ties: set[tuple[int, int]] = field(default_factory=set)


def _ints(a: np.ndarray) -> list[int]:
    return [int(x) for x in a.tolist()]


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in a.tolist()]


def _world(a: Mapping[str, np.ndarray], d0: int) -> World:
    n_plants = a["order"].shape[0]
    plants: list[Plant] = []
    for p in range(n_plants):
        inputs = []
        for j in range(int(a["in_ptr"][p]), int(a["in_ptr"][p + 1])):
            pool = int(a["in_pool"][j])
            inputs.append((pool if pool >= 0 else None, int(a["in_mat"][j]),
                           float(a["in_amt"][j])))
        outputs = []
        for j in range(int(a["out_ptr"][p]), int(a["out_ptr"][p + 1])):
            outputs.append((int(a["out_pool"][j]), int(a["out_mat"][j]), float(a["out_amt"][j])))
        q = int(a["plant_quota"][p])
        plants.append(Plant(
            index=p,
            commission=int(a["commission_day"][p]),
            ramp_days=int(a["ramp_days"][p]),
            retire=int(a["retire_day"][p]),
            lead=int(a["lead"][p]),
            quota=q if q >= 0 else None,
            quota_per_activity=float(a["qcoef"][p]),
            licence_share=float(a["qshare"][p]),
            inputs=inputs,
            outputs=outputs,
        ))
    order = _ints(a["order"])
    ptr = _ints(a["lvl_ptr"])
    levels = [[plants[order[i]] for i in range(ptr[k], ptr[k + 1])] for k in range(len(ptr) - 1)]

    # Shipments in transit: the kernel keeps them in a ring of ``ring`` day slots; a slot
    # holds what arrives on the next day (from d0 on) whose number is the slot modulo ring.
    ring = a["pipe"].shape[1]
    transit: list[Shipment] = []
    for name, is_import in (("pipe", False), ("ipipe", True)):
        for s, row in enumerate(a[name].tolist()):
            for slot, amount in enumerate(row):
                if amount != 0.0:
                    transit.append(Shipment(d0 + (slot - d0) % ring, s, float(amount), is_import))

    ceiling = [None if not np.isfinite(x) else float(x) for x in a["pool_max"].tolist()]
    return World(
        levels=levels,
        pool_material=_ints(a["pool_mat"]),
        target=_floats(a["target"]),
        ceiling=ceiling,
        market_pool=_ints(a["mk_pool"]),
        import_lead=_ints(a["imp_lead"]),
        segment_pool=_ints(a["dem_pool"]),
        days_left=_ints(a["days_left"]),
        month_of_day=_ints(a["month_of_day"]),
        cap_day=_floats(a["cap_day"]),
        avail=_floats(a["avail"]),
        derate=_floats(a["derate"]),
        calendar=[list(zip(_ints(a["cal_day"][at:end]), _floats(a["cal_up"][at:end]),
                           strict=True))
                  for at, end in zip(_ints(a["cal_at"]), _ints(a["cal_ptr"][1:]), strict=True)],
        quota_calendar=list(zip(_ints(a["qcal_day"]), _ints(a["qcal_q"]),
                                [bool(x) for x in _ints(a["qcal_year"])],
                                _floats(a["qcal_left"]), _floats(a["qcal_avail"]),
                                strict=True))[int(a["qcal_at"][0]):],
        reserve=_floats(a["reserve"]),
        import_cap=_floats(a["imp_cap_day"]),
        export_cap=_floats(a["exp_cap_day"]),
        export_contract=_floats(a["exp_contract_day"]),
        demand_rate=_floats(a["dem_rate"]),
        price=_floats(a["price"]),
        path_months=int(a["price_path"].shape[1]),
        demand_path=[_floats(r) for r in a["dem_path"]],
        price_path=[_floats(r) for r in a["price_path"]],
        quota_released=_floats(a["q_avail"]),
        quota_year_left=_floats(a["q_year_left"]),
        stock=_floats(a["stock"]),
        in_transit=transit,
        value_month=[_floats(r) for r in a["val_month"]],
        short=_floats(a["short_sum"]),
        totals=[_floats(r) for r in a["tot"]],
    )


def _free(w: World, pool: int) -> float:
    """Stock a consumer may take: what lies above the strategic reserve."""
    return max(0.0, w.stock[pool] - w.reserve[pool])


def _share(available: float, asked: float) -> float:
    """The fraction of a request that can be met when ``asked`` competes for ``available``."""
    if asked <= available:
        return 1.0
    return available / asked


def _near(a: float, b: float) -> bool:
    """Equal within round-off: which of two such limits "bound" is an arbitrary choice."""
    return abs(a - b) <= TIE_RTOL * max(1.0, abs(a), abs(b))


def _run_level(w: World, level: list[Plant], d: int) -> None:
    want: dict[int, float] = {}
    code: dict[int, int] = {}
    tie: set[int] = set()
    # capacity × availability × ramp
    for pl in level:
        ramp = pl.ramp(d)
        want[pl.index] = w.cap_day[pl.index] * ramp * w.avail[pl.index]
        if ramp == 0.0 or w.cap_day[pl.index] == 0.0:
            code[pl.index] = IDLE
        elif w.avail[pl.index] < 1.0:
            code[pl.index] = OUTAGE
        else:
            code[pl.index] = CAPACITY

    # quota: the plants under one quota share what it allows today, pro rata
    quotas = sorted({pl.quota for pl in level if pl.quota is not None})
    for q in quotas:
        members = [pl for pl in level if pl.quota == q]
        asked = sum(want[pl.index] * pl.quota_per_activity for pl in members)
        if asked <= 0.0:
            continue
        days_left = w.days_left[d]
        paced = w.quota_year_left[q] / days_left if days_left > 0 else w.quota_year_left[q]
        allowed = max(0.0, min(w.quota_released[q], paced))
        if _near(allowed, asked):
            tie.update(pl.index for pl in members)
        if allowed < asked:
            # licence shares, water-filled: in order of request per share, each plant whose
            # request fits its part of what is left (by shares) gets it in full; the first
            # that does not, and all after it, get their parts of what is left
            askers = sorted((pl for pl in members if want[pl.index] > 0.0),
                            key=lambda pl: (want[pl.index] * pl.quota_per_activity
                                            / pl.licence_share if pl.licence_share > 0
                                            else float("inf")))
            left = allowed
            for i, pl in enumerate(askers):
                rest = askers[i:]
                shares = sum(r.licence_share for r in rest)
                need = want[pl.index] * pl.quota_per_activity
                if shares > 0:
                    part = left * pl.licence_share / shares
                else:  # no plant left holds a share: what is left goes by requests
                    part = left * need / sum(r.quota_per_activity * want[r.index] for r in rest)
                if need <= part:
                    left -= need
                    continue
                for r in rest:
                    r_need = want[r.index] * r.quota_per_activity
                    r_part = (left * r.licence_share / shares if shares > 0
                              else left * r_need / sum(x.quota_per_activity * want[x.index]
                                                       for x in rest))
                    if _near(r_part, r_need):
                        tie.add(r.index)
                    want[r.index] = r_part / r.quota_per_activity
                    code[r.index] = QUOTA
                break

    # pools: consumers share the free stock pro rata; producers share a ceiling's room
    asked_stock: dict[int, float] = {}
    asked_room: dict[int, float] = {}
    for pl in level:
        for pool, _mat, amt in pl.inputs:
            if pool is not None:
                asked_stock[pool] = asked_stock.get(pool, 0.0) + want[pl.index] * amt
        for pool, _mat, amt in pl.outputs:
            asked_room[pool] = asked_room.get(pool, 0.0) + want[pl.index] * amt
    stock_share = {pool: _share(_free(w, pool), asked) for pool, asked in asked_stock.items()}
    for pool, asked in asked_stock.items():
        if asked > _free(w, pool):
            w.short[pool] += asked - _free(w, pool)
    room_share: dict[int, float] = {}
    for pool, asked in asked_room.items():
        ceiling = w.ceiling[pool]
        if ceiling is None or asked == 0.0:
            room_share[pool] = 1.0
            continue
        on_the_way = sum(sh.amount for sh in w.in_transit if sh.pool == pool)
        room = max(0.0, ceiling - w.stock[pool] - on_the_way)
        room_share[pool] = _share(room, asked)

    # run each plant at the smallest limit and account for it
    for pl in level:
        p = pl.index
        x = want[p]
        r_in = min([stock_share[pool] for pool, _, _ in pl.inputs if pool is not None],
                   default=1.0)
        r_out = min([room_share[pool] for pool, _, _ in pl.outputs], default=1.0)
        if x > 0.0 and (_near(min(r_in, r_out), 1.0) or
                        (min(r_in, r_out) < 1.0 and _near(r_in, r_out))):
            tie.add(p)
        if x > 0.0 and min(r_in, r_out) < 1.0:
            if r_in <= r_out:
                x = x * r_in
                code[p] = INPUT
            else:
                x = x * r_out
                code[p] = STORAGE
        for pool, mat, amt in pl.inputs:
            if pool is None:
                w.totals[EXTRACTED][mat] += x * amt
            else:
                w.stock[pool] -= x * amt
                w.totals[DRAWN][mat] += x * amt
        for pool, mat, amt in pl.outputs:
            if pl.lead == 0:
                w.stock[pool] += x * amt
            else:
                w.in_transit.append(Shipment(d + pl.lead, pool, x * amt, False))
            w.totals[PRODUCED][mat] += x * amt
            w.value_month[p][w.month_of_day[d]] += x * amt * w.price[mat]
        if pl.quota is not None:
            w.quota_released[pl.quota] -= x * pl.quota_per_activity
            w.quota_year_left[pl.quota] -= x * pl.quota_per_activity
        w.activity[(p, d)] = x
        w.code[(p, d)] = code[p]
        if p in tie:
            w.ties.add((p, d))


def _outages(w: World, d: int) -> None:
    for p, points in enumerate(w.calendar):
        due = [up for day, up in points if day <= d]
        if due:
            w.avail[p] = w.derate[p] * due[-1]
            w.calendar[p] = points[len(due):]


def _quotas(w: World, d: int) -> None:
    while w.quota_calendar and w.quota_calendar[0][0] <= d:
        _, q, year, left, avail = w.quota_calendar.pop(0)
        if year:
            w.quota_year_left[q] = left
            w.quota_released[q] = avail
        else:
            w.quota_released[q] += avail


def _paths(w: World, d: int) -> None:
    if w.path_months and d < len(w.month_of_day):
        t = w.month_of_day[d]
        w.demand_rate = [row[t] for row in w.demand_path]
        w.price = [row[t] for row in w.price_path]


def _one_day(w: World, d: int) -> None:
    # 0. outages, the quota calendar, and the month's prices and demand
    _outages(w, d)
    _quotas(w, d)
    _paths(w, d)
    # 1. arrivals
    staying = []
    for sh in w.in_transit:
        if sh.arrival == d:
            w.stock[sh.pool] += sh.amount
        else:
            assert sh.arrival > d, "a shipment was left behind"
            staying.append(sh)
    w.in_transit = staying
    contracted: dict[int, float] = {}
    for k, pool in enumerate(w.market_pool):
        if w.export_contract[k] > 0.0:
            amount = min(_free(w, pool), w.export_contract[k])
            w.stock[pool] -= amount
            w.totals[EXPORTED][w.pool_material[pool]] += amount
            contracted[k] = amount

    # 2. plants, upstream first
    for level in w.levels:
        _run_level(w, level, d)

    # 3. demand, pro rata per pool when short
    asked: dict[int, float] = {}
    for g, pool in enumerate(w.segment_pool):
        asked[pool] = asked.get(pool, 0.0) + w.demand_rate[g]
    share = {pool: _share(_free(w, pool), a) for pool, a in asked.items()}
    for g, pool in enumerate(w.segment_pool):
        served = w.demand_rate[g] * share[pool]
        w.stock[pool] -= served
        w.totals[DEMANDED][w.pool_material[pool]] += served
        w.served[(g, d)] = served
        w.unmet[(g, d)] = w.demand_rate[g] - served

    # 4. exports: stock above reserve + target, up to the daily cap, market by market
    for k, pool in enumerate(w.market_pool):
        amount = 0.0
        spot = w.export_cap[k] - contracted.get(k, 0.0)
        if spot > 0.0:
            surplus = w.stock[pool] - w.reserve[pool] - w.target[pool]
            amount = max(0.0, min(surplus, spot))
            w.stock[pool] -= amount
            w.totals[EXPORTED][w.pool_material[pool]] += amount
        w.export_rec[(k, d)] = contracted.get(k, 0.0) + amount

    # 5. imports: order up to reserve + target, net of imports on their way
    for k, pool in enumerate(w.market_pool):
        amount = 0.0
        if w.import_cap[k] > 0.0:
            ordered = sum(sh.amount for sh in w.in_transit if sh.pool == pool and sh.is_import)
            need = w.reserve[pool] + w.target[pool] - w.stock[pool] - ordered
            amount = max(0.0, min(need, w.import_cap[k]))
            if amount > 0.0:
                if w.import_lead[k] == 0:
                    w.stock[pool] += amount
                else:
                    w.in_transit.append(Shipment(d + w.import_lead[k], pool, amount, True))
            w.totals[IMPORTED][w.pool_material[pool]] += amount
        w.import_rec[(k, d)] = amount

    for s, level in enumerate(w.stock):
        w.stock_rec[(s, d)] = level


def _write_back(w: World, a: Mapping[str, np.ndarray]) -> None:
    for name, values in (("q_avail", w.quota_released), ("q_year_left", w.quota_year_left),
                         ("stock", w.stock), ("avail", w.avail), ("short_sum", w.short),
                         ("dem_rate", w.demand_rate), ("price", w.price)):
        for i, v in enumerate(values):
            a[name][i] = v
    a["qcal_at"][0] = len(a["qcal_day"]) - len(w.quota_calendar)
    ends = a["cal_ptr"][1:]
    for p, points in enumerate(w.calendar):
        a["cal_at"][p] = int(ends[p]) - len(points)
    ring = a["pipe"].shape[1]
    for name in ("pipe", "ipipe", "pipe_sum", "ipipe_sum"):
        a[name][:] = 0.0
    for sh in w.in_transit:
        a["ipipe" if sh.is_import else "pipe"][sh.pool, sh.arrival % ring] += sh.amount
        a["ipipe_sum" if sh.is_import else "pipe_sum"][sh.pool] += sh.amount
    for name, rec in (("act_rec", w.activity), ("code_rec", w.code), ("stock_rec", w.stock_rec),
                      ("imp_rec", w.import_rec), ("exp_rec", w.export_rec),
                      ("served_rec", w.served), ("unmet_rec", w.unmet)):
        for (i, d), v in rec.items():
            a[name][i, d] = v
    for p, row in enumerate(w.value_month):
        for t, v in enumerate(row):
            a["val_month"][p, t] = v
    for r, row in enumerate(w.totals):
        for m, v in enumerate(row):
            a["tot"][r, m] = v


def advance(d0: int, d1: int, *arrays: Any) -> set[tuple[int, int]]:
    """Advance days ``[d0, d1)`` like the kernel, writing into the same arrays (given in the
    kernel's order, :data:`ARG_NAMES`).

    Returns the ``(plant, day)`` pairs whose binding-constraint code was decided by limits
    equal within round-off (the activity is right either way; the code is a coin toss).
    """
    return advance_named(d0, d1, dict(zip(ARG_NAMES, arrays, strict=True)))


def advance_named(d0: int, d1: int, a: Mapping[str, np.ndarray]) -> set[tuple[int, int]]:
    """:func:`advance` with the arrays by name."""
    w = _world(a, d0)
    for d in range(d0, d1):
        _one_day(w, d)
    _outages(w, d1)
    _quotas(w, d1)
    _paths(w, d1)
    _write_back(w, a)
    return w.ties
