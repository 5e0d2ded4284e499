"""The daily flow kernel: moves material through the whole chain between two events.

Axes and units (see :mod:`retwin._typing`): plants ``P``, materials ``M``, pools ``S``,
markets ``K``, demand segments ``G``, quotas ``Q``, days ``D``, months ``T``. Quantities are in
each material's unit (t, units, MW); quotas in t REO; capacities in activity units per day.

One day, in order:

1. arrivals: production and imports whose lead time ends today reach their pools;
2. plants, level by level (levels follow the stage order, upstream first). Within a level
   each plant asks for ``capacity × availability × ramp``; plants under one quota share what
   the quota allows today (pro rata); then plants drawing on one pool share its free stock
   (stock above the strategic reserve, pro rata to their requests); plants delivering into a
   pool with a storage ceiling share its room. A plant's activity is the smallest of these
   limits, and the limit that bound is recorded;
3. demand segments draw their daily rate from their pools (pro rata when short);
4. exports take stock above ``reserve + target`` up to each market's daily cap;
5. imports order up to ``reserve + target`` (net of what is already in transit), up to each
   market's daily cap, arriving after the market's lead time.

Accounting (totals per material, records per day, output value per month) is done here, so
that the mass balance can be checked against independently summed quantities afterwards.
"""

from __future__ import annotations

import inspect

import numpy as np

from retwin._typing import FloatArray, Int8Array, IntArray
from retwin.kernels._jit import jit

__all__ = [
    "ARG_NAMES",
    "BIND_CAPACITY",
    "BIND_DEMAND",
    "BIND_IDLE",
    "BIND_INPUT",
    "BIND_MARGIN",
    "BIND_NAMES",
    "BIND_OUTAGE",
    "BIND_QUOTA",
    "BIND_STORAGE",
    "advance",
    "advance_packed",
    "advance_unchecked",
    "check_arrays",
    "pack",
]

BIND_CAPACITY, BIND_QUOTA, BIND_INPUT, BIND_OUTAGE, BIND_STORAGE, BIND_IDLE = 1, 2, 3, 4, 5, 6
#: Set by the engine, not the kernel: the plant ran below its ceiling by its own decision
#: (markets on), because the demand on its output asked for no more, or its margin allowed
#: no more. The kernel reports these days as capacity-bound; the engine relabels them.
BIND_DEMAND, BIND_MARGIN = 7, 8
BIND_NAMES = {
    0: "none",
    BIND_CAPACITY: "capacity",
    BIND_QUOTA: "quota",
    BIND_INPUT: "input",
    BIND_OUTAGE: "outage",
    BIND_STORAGE: "storage",
    BIND_IDLE: "idle",
    BIND_DEMAND: "demand",
    BIND_MARGIN: "margin",
}


#: Order of the 1-D int64 and 1-D float64 arguments inside the packed blobs (see
#: :func:`_advance_packed`); everything else is passed as it is.
PACKED_INTS: tuple[str, ...] = (
    "order", "lvl_ptr", "lvl_pool_ptr", "lvl_pools", "commission_day", "ramp_days",
    "retire_day", "lead", "plant_quota", "in_ptr", "in_pool", "in_mat", "out_ptr", "out_pool",
    "out_mat", "pool_mat", "mk_pool", "imp_lead", "dem_pool", "days_left", "month_of_day",
)
PACKED_FLOATS: tuple[str, ...] = (
    "qcoef", "in_amt", "out_amt", "target", "pool_max", "cap_day", "avail", "reserve",
    "imp_cap_day", "exp_cap_day", "dem_rate", "price", "q_avail", "q_year_left", "stock",
    "ipipe_sum", "pipe_sum",
)



@jit
def _advance_packed(
    d0: int,
    d1: int,
    si: IntArray,
    si_off: IntArray,
    sf: FloatArray,
    sf_off: IntArray,
    pipe: FloatArray,
    ipipe: FloatArray,
    act_rec: FloatArray,
    code_rec: Int8Array,
    stock_rec: FloatArray,
    imp_rec: FloatArray,
    exp_rec: FloatArray,
    served_rec: FloatArray,
    unmet_rec: FloatArray,
    val_month: FloatArray,
    tot: FloatArray,
) -> None:
    """The flow kernel: advance days ``[d0, d1)`` (see the module docstring).

    Its 1-D arrays come packed in two blobs (``si`` int64, ``sf`` float64), cut at the
    offsets ``si_off``/``sf_off`` in the order of :data:`PACKED_INTS` and
    :data:`PACKED_FLOATS`; :func:`_advance` takes them one by one. Packing matters because
    the engine calls the kernel once per event, and a call's cost grows with its arguments.
    Returns nothing: all outputs are written into the state, record and total arrays.

    ``tot`` has shape ``(6, M)``: rows are produced, drawn by plants, extracted from the
    ground, imported (ordered), exported, and drawn by demand, per material.
    """
    order = si[si_off[0]:si_off[1]]
    lvl_ptr = si[si_off[1]:si_off[2]]
    lvl_pool_ptr = si[si_off[2]:si_off[3]]
    lvl_pools = si[si_off[3]:si_off[4]]
    commission_day = si[si_off[4]:si_off[5]]
    ramp_days = si[si_off[5]:si_off[6]]
    retire_day = si[si_off[6]:si_off[7]]
    lead = si[si_off[7]:si_off[8]]
    plant_quota = si[si_off[8]:si_off[9]]
    in_ptr = si[si_off[9]:si_off[10]]
    in_pool = si[si_off[10]:si_off[11]]
    in_mat = si[si_off[11]:si_off[12]]
    out_ptr = si[si_off[12]:si_off[13]]
    out_pool = si[si_off[13]:si_off[14]]
    out_mat = si[si_off[14]:si_off[15]]
    pool_mat = si[si_off[15]:si_off[16]]
    mk_pool = si[si_off[16]:si_off[17]]
    imp_lead = si[si_off[17]:si_off[18]]
    dem_pool = si[si_off[18]:si_off[19]]
    days_left = si[si_off[19]:si_off[20]]
    month_of_day = si[si_off[20]:si_off[21]]
    qcoef = sf[sf_off[0]:sf_off[1]]
    in_amt = sf[sf_off[1]:sf_off[2]]
    out_amt = sf[sf_off[2]:sf_off[3]]
    target = sf[sf_off[3]:sf_off[4]]
    pool_max = sf[sf_off[4]:sf_off[5]]
    cap_day = sf[sf_off[5]:sf_off[6]]
    avail = sf[sf_off[6]:sf_off[7]]
    reserve = sf[sf_off[7]:sf_off[8]]
    imp_cap_day = sf[sf_off[8]:sf_off[9]]
    exp_cap_day = sf[sf_off[9]:sf_off[10]]
    dem_rate = sf[sf_off[10]:sf_off[11]]
    price = sf[sf_off[11]:sf_off[12]]
    q_avail = sf[sf_off[12]:sf_off[13]]
    q_year_left = sf[sf_off[13]:sf_off[14]]
    stock = sf[sf_off[14]:sf_off[15]]
    ipipe_sum = sf[sf_off[15]:sf_off[16]]
    pipe_sum = sf[sf_off[16]:sf_off[17]]
    n_pools = stock.shape[0]
    n_quota = q_avail.shape[0]
    ring = pipe.shape[1]
    n_levels = lvl_ptr.shape[0] - 1
    n_plants = order.shape[0]
    nq = max(n_quota, 1)
    scratch = np.empty(n_plants + 4 * n_pools + 2 * nq)  # one allocation per call
    want = scratch[:n_plants]
    req_pool = scratch[n_plants:n_plants + n_pools]
    room_req = scratch[n_plants + n_pools:n_plants + 2 * n_pools]
    ratio_pool = scratch[n_plants + 2 * n_pools:n_plants + 3 * n_pools]
    room_ratio = scratch[n_plants + 3 * n_pools:n_plants + 4 * n_pools]
    req_q = scratch[n_plants + 4 * n_pools:n_plants + 4 * n_pools + nq]
    ratio_q = scratch[n_plants + 4 * n_pools + nq:]
    req_pool[:] = 0.0
    room_req[:] = 0.0
    codes = np.zeros(n_plants, dtype=np.int8)

    for d in range(d0, d1):
        slot = d % ring
        mon = month_of_day[d]
        # 1. arrivals
        for s in range(n_pools):
            if pipe[s, slot] != 0.0 or ipipe[s, slot] != 0.0:
                stock[s] += pipe[s, slot] + ipipe[s, slot]
                ipipe_sum[s] -= ipipe[s, slot]
                pipe_sum[s] -= pipe[s, slot]
                pipe[s, slot] = 0.0
                ipipe[s, slot] = 0.0

        # 2. plants, level by level
        for lv in range(n_levels):
            lo = lvl_ptr[lv]
            hi = lvl_ptr[lv + 1]
            for q in range(n_quota):
                req_q[q] = 0.0
            # 2a. what each plant could do on capacity alone
            for i in range(lo, hi):
                p = order[i]
                if d < commission_day[p] or d >= retire_day[p]:
                    ramp = 0.0
                elif ramp_days[p] > 0:
                    ramp = min(1.0, (d - commission_day[p] + 1) / ramp_days[p])
                else:
                    ramp = 1.0
                x = cap_day[p] * ramp * avail[p]
                if ramp == 0.0 or cap_day[p] == 0.0:
                    codes[p] = BIND_IDLE
                elif avail[p] < 1.0:
                    codes[p] = BIND_OUTAGE
                else:
                    codes[p] = BIND_CAPACITY
                want[p] = x
                q = plant_quota[p]
                if q >= 0:
                    req_q[q] += x * qcoef[p]
            # 2b. quota shares
            for q in range(n_quota):
                if req_q[q] > 0.0:
                    allow = q_avail[q]
                    dl = days_left[d]
                    paced = q_year_left[q] / dl if dl > 0 else q_year_left[q]
                    if paced < allow:
                        allow = paced
                    if allow < 0.0:
                        allow = 0.0
                    ratio_q[q] = allow / req_q[q] if allow < req_q[q] else 1.0
                else:
                    ratio_q[q] = 1.0
            for j in range(lvl_pool_ptr[lv], lvl_pool_ptr[lv + 1]):
                req_pool[lvl_pools[j]] = 0.0
                room_req[lvl_pools[j]] = 0.0
            for i in range(lo, hi):
                p = order[i]
                q = plant_quota[p]
                if q >= 0 and ratio_q[q] < 1.0 and want[p] > 0.0:
                    want[p] *= ratio_q[q]
                    codes[p] = BIND_QUOTA
                x = want[p]
                for j in range(in_ptr[p], in_ptr[p + 1]):
                    if in_pool[j] >= 0:
                        req_pool[in_pool[j]] += x * in_amt[j]
                for j in range(out_ptr[p], out_ptr[p + 1]):
                    room_req[out_pool[j]] += x * out_amt[j]
            # 2c. pool shares (inputs) and storage room (outputs) of the pools this level uses
            for jj in range(lvl_pool_ptr[lv], lvl_pool_ptr[lv + 1]):
                s = lvl_pools[jj]
                free = stock[s] - reserve[s]
                if free < 0.0:
                    free = 0.0
                ratio_pool[s] = free / req_pool[s] if req_pool[s] > free else 1.0
                room_ratio[s] = 1.0
                if pool_max[s] < np.inf and room_req[s] > 0.0:
                    room = pool_max[s] - stock[s] - pipe_sum[s] - ipipe_sum[s]
                    if room < 0.0:
                        room = 0.0
                    if room < room_req[s]:
                        room_ratio[s] = room / room_req[s]
            # 2d. run: draw inputs, deliver outputs, account
            for i in range(lo, hi):
                p = order[i]
                x = want[p]
                r_in = 1.0
                for j in range(in_ptr[p], in_ptr[p + 1]):
                    if in_pool[j] >= 0 and ratio_pool[in_pool[j]] < r_in:
                        r_in = ratio_pool[in_pool[j]]
                r_out = 1.0
                for j in range(out_ptr[p], out_ptr[p + 1]):
                    if room_ratio[out_pool[j]] < r_out:
                        r_out = room_ratio[out_pool[j]]
                if x > 0.0:
                    if r_in < 1.0 and r_in <= r_out:
                        x *= r_in
                        codes[p] = BIND_INPUT
                    elif r_out < 1.0:
                        x *= r_out
                        codes[p] = BIND_STORAGE
                for j in range(in_ptr[p], in_ptr[p + 1]):
                    amt = x * in_amt[j]
                    if in_pool[j] >= 0:
                        stock[in_pool[j]] -= amt
                        tot[1, in_mat[j]] += amt
                    else:
                        tot[2, in_mat[j]] += amt
                unit_value = 0.0
                for j in range(out_ptr[p], out_ptr[p + 1]):
                    amt = x * out_amt[j]
                    s = out_pool[j]
                    if lead[p] == 0:
                        stock[s] += amt
                    else:
                        t = slot + lead[p]  # == (d + lead) % ring, as lead < ring
                        if t >= ring:
                            t -= ring
                        pipe[s, t] += amt
                        pipe_sum[s] += amt
                    tot[0, out_mat[j]] += amt
                    unit_value += out_amt[j] * price[out_mat[j]]
                q = plant_quota[p]
                if q >= 0:
                    q_avail[q] -= x * qcoef[p]
                    q_year_left[q] -= x * qcoef[p]
                val_month[p, mon] += x * unit_value
                act_rec[p, d] = x
                code_rec[p, d] = codes[p]

        # 3. demand
        for s in range(n_pools):
            req_pool[s] = 0.0
        for g in range(dem_pool.shape[0]):
            req_pool[dem_pool[g]] += dem_rate[g]
        for s in range(n_pools):
            free = stock[s] - reserve[s]
            if free < 0.0:
                free = 0.0
            ratio_pool[s] = free / req_pool[s] if req_pool[s] > free else 1.0
        for g in range(dem_pool.shape[0]):
            s = dem_pool[g]
            served = dem_rate[g] * ratio_pool[s]
            stock[s] -= served
            tot[5, pool_mat[s]] += served
            served_rec[g, d] = served
            unmet_rec[g, d] = dem_rate[g] - served

        # 4. exports, 5. imports
        for k in range(mk_pool.shape[0]):
            s = mk_pool[k]
            if exp_cap_day[k] > 0.0:
                surplus = stock[s] - reserve[s] - target[s]
                if surplus > 0.0:
                    amt = surplus if surplus < exp_cap_day[k] else exp_cap_day[k]
                    stock[s] -= amt
                    tot[4, pool_mat[s]] += amt
                    exp_rec[k, d] = amt
            if imp_cap_day[k] > 0.0:
                need = reserve[s] + target[s] - stock[s] - ipipe_sum[s]
                if need > 0.0:
                    amt = need if need < imp_cap_day[k] else imp_cap_day[k]
                    if imp_lead[k] == 0:
                        stock[s] += amt
                    else:
                        t = slot + imp_lead[k]
                        if t >= ring:
                            t -= ring
                        ipipe[s, t] += amt
                        ipipe_sum[s] += amt
                    tot[3, pool_mat[s]] += amt
                    imp_rec[k, d] = amt

        for s in range(n_pools):
            stock_rec[s, d] = stock[s]


def _advance(
    d0: int,
    d1: int,
    # plants (static)
    order: IntArray,
    lvl_ptr: IntArray,
    lvl_pool_ptr: IntArray,
    lvl_pools: IntArray,
    commission_day: IntArray,
    ramp_days: IntArray,
    retire_day: IntArray,
    lead: IntArray,
    plant_quota: IntArray,
    qcoef: FloatArray,
    in_ptr: IntArray,
    in_pool: IntArray,
    in_mat: IntArray,
    in_amt: FloatArray,
    out_ptr: IntArray,
    out_pool: IntArray,
    out_mat: IntArray,
    out_amt: FloatArray,
    # pools, markets, demand (static)
    pool_mat: IntArray,
    target: FloatArray,
    pool_max: FloatArray,
    mk_pool: IntArray,
    imp_lead: IntArray,
    dem_pool: IntArray,
    # calendar
    days_left: IntArray,
    month_of_day: IntArray,
    # state, changed by events between calls
    cap_day: FloatArray,
    avail: FloatArray,
    reserve: FloatArray,
    imp_cap_day: FloatArray,
    exp_cap_day: FloatArray,
    dem_rate: FloatArray,
    price: FloatArray,
    q_avail: FloatArray,
    q_year_left: FloatArray,
    # state, changed by the kernel
    stock: FloatArray,
    pipe: FloatArray,
    ipipe: FloatArray,
    ipipe_sum: FloatArray,
    pipe_sum: FloatArray,
    # records
    act_rec: FloatArray,
    code_rec: Int8Array,
    stock_rec: FloatArray,
    imp_rec: FloatArray,
    exp_rec: FloatArray,
    served_rec: FloatArray,
    unmet_rec: FloatArray,
    val_month: FloatArray,
    tot: FloatArray,
) -> None:
    """The flow kernel with every array named: packs the 1-D arrays, runs
    :func:`_advance_packed` and writes the state back. Slower per call than the packed form
    (it copies); for tests and one-off callers. Same arguments as :data:`ARG_NAMES`.
    """
    named: dict[str, np.ndarray] = dict(zip(ARG_NAMES, (
        order, lvl_ptr, lvl_pool_ptr, lvl_pools, commission_day, ramp_days, retire_day, lead,
        plant_quota, qcoef, in_ptr, in_pool, in_mat, in_amt, out_ptr, out_pool, out_mat,
        out_amt, pool_mat, target, pool_max, mk_pool, imp_lead, dem_pool, days_left,
        month_of_day, cap_day, avail, reserve, imp_cap_day, exp_cap_day, dem_rate, price,
        q_avail, q_year_left, stock, pipe, ipipe, ipipe_sum, pipe_sum, act_rec, code_rec,
        stock_rec, imp_rec, exp_rec, served_rec, unmet_rec, val_month, tot,
    ), strict=True))
    si, si_off, sf, sf_off, views = pack(named)
    _advance_packed(d0, d1, si, si_off, sf, sf_off, pipe, ipipe, act_rec, code_rec, stock_rec,
                    imp_rec, exp_rec, served_rec, unmet_rec, val_month, tot)
    for name in PACKED_FLOATS:
        named[name][:] = views[name]


def pack(
    named: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Copy the 1-D arguments into the two blobs of :func:`_advance_packed`.

    Returns ``si, si_off, sf, sf_off, views``: ``views`` maps each packed name to its view
    inside a blob, so a caller that mutates state between calls writes into the blob.
    """

    def blob(names: tuple[str, ...], dtype: type) -> tuple[np.ndarray, np.ndarray]:
        parts: list[np.ndarray] = [np.ascontiguousarray(named[n], dtype=dtype) for n in names]
        off = np.zeros(len(parts) + 1, np.int64)
        off[1:] = np.cumsum([p.size for p in parts])
        return np.concatenate(parts).astype(dtype), off

    si, si_off = blob(PACKED_INTS, np.int64)
    sf, sf_off = blob(PACKED_FLOATS, np.float64)
    views = {n: si[si_off[i]:si_off[i + 1]] for i, n in enumerate(PACKED_INTS)}
    views.update({n: sf[sf_off[i]:sf_off[i + 1]] for i, n in enumerate(PACKED_FLOATS)})
    return si, si_off, sf, sf_off, views


#: The packed kernel, for the engine's hot path (arrays checked once when a run is built).
advance_packed = _advance_packed
#: The named kernel, for a caller that checked its arrays once.
advance_unchecked = _advance


def check_arrays(*arrays: np.ndarray) -> None:
    """Raise unless every array is a C-contiguous numpy array of a kernel dtype."""
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"argument {i + 2} must be a numpy array, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            raise ValueError(f"argument {i + 2} must be C-contiguous")
        if a.dtype not in (np.float64, np.int64, np.int8):
            raise TypeError(f"argument {i + 2} has dtype {a.dtype}; use float64, int64 or int8")


#: Each array argument's expected shape, by axis name: P plants, S pools, M materials,
#: K markets, G demand segments, Q quotas, D days, T months, R ring slots, I/O recipe entries.
_SHAPES: dict[str, tuple[str, ...]] = {
    "order": ("P",), "lvl_ptr": ("L1",), "lvl_pool_ptr": ("L1",), "lvl_pools": ("LP",),
    "commission_day": ("P",), "ramp_days": ("P",), "retire_day": ("P",), "lead": ("P",),
    "plant_quota": ("P",), "qcoef": ("P",), "in_ptr": ("P1",), "in_pool": ("I",),
    "in_mat": ("I",), "in_amt": ("I",), "out_ptr": ("P1",), "out_pool": ("O",),
    "out_mat": ("O",), "out_amt": ("O",), "pool_mat": ("S",), "target": ("S",),
    "pool_max": ("S",), "mk_pool": ("K",), "imp_lead": ("K",), "dem_pool": ("G",),
    "days_left": ("D",), "month_of_day": ("D",), "cap_day": ("P",), "avail": ("P",),
    "reserve": ("S",), "imp_cap_day": ("K",), "exp_cap_day": ("K",), "dem_rate": ("G",),
    "price": ("M",), "q_avail": ("Q",), "q_year_left": ("Q",), "stock": ("S",),
    "pipe": ("S", "R"), "ipipe": ("S", "R"), "ipipe_sum": ("S",), "pipe_sum": ("S",),
    "act_rec": ("P", "D"),
    "code_rec": ("P", "D"), "stock_rec": ("S", "D"), "imp_rec": ("K", "D"),
    "exp_rec": ("K", "D"), "served_rec": ("G", "D"), "unmet_rec": ("G", "D"),
    "val_month": ("P", "T"), "tot": ("6", "M"),
}


def _check_shapes(d1: int, named: dict[str, np.ndarray]) -> None:
    sizes: dict[str, int] = {"6": 6}
    for name, axes in _SHAPES.items():
        a = named[name]
        if a.ndim != len(axes):
            raise ValueError(f"{name} must have {len(axes)} dimension(s), has {a.ndim}")
        for ax, n in zip(axes, a.shape, strict=True):
            if sizes.setdefault(ax, n) != n:
                raise ValueError(
                    f"{name} has {n} along axis {ax} where the other arrays have {sizes[ax]}"
                )
    if sizes["P1"] != sizes["P"] + 1:
        raise ValueError("in_ptr and out_ptr must have one entry more than there are plants")
    if d1 > sizes["D"]:
        raise ValueError(f"day range ends at {d1}, past the {sizes['D']} days of the records")
    bounds = (("in_pool", "S", -1), ("out_pool", "S", 0), ("mk_pool", "S", 0),
              ("dem_pool", "S", 0), ("pool_mat", "M", 0), ("in_mat", "M", 0),
              ("out_mat", "M", 0), ("order", "P", 0), ("lvl_pools", "S", 0),
              ("plant_quota", "Q", -1), ("month_of_day", "T", 0))
    for name, ax, lo in bounds:
        a = named[name]
        if a.size and (a.min() < lo or a.max() >= sizes[ax]):
            raise ValueError(f"{name} holds an index outside 0..{sizes[ax] - 1}")


def advance(d0: int, d1: int, *arrays: np.ndarray) -> None:
    """Checked wrapper of the flow kernel: same arguments as ``_advance``.

    Checks the day range, that every array is C-contiguous and of a kernel dtype, that the
    arrays agree in shape, and that every index they hold is in range — the compiled kernel
    does no bounds checks. The engine checks its arrays once when it builds a run
    (:func:`check_arrays`) and then calls the kernel directly on its hot path.
    """
    if not 0 <= d0 <= d1:
        raise ValueError(f"day range [{d0}, {d1}) must satisfy 0 <= d0 <= d1")
    check_arrays(*arrays)
    names = ARG_NAMES
    if len(arrays) != len(names):
        raise TypeError(f"the kernel takes {len(names)} arrays after d0, d1; got {len(arrays)}")
    _check_shapes(d1, dict(zip(names, arrays, strict=True)))
    _advance(d0, d1, *arrays)


#: The kernel's array arguments in order (after ``d0, d1``), read from its signature.
ARG_NAMES: tuple[str, ...] = tuple(inspect.signature(_advance).parameters)[2:]
