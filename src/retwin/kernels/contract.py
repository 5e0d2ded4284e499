"""The flow kernel's contract: every array it takes, declared once.

:data:`FLOW_ARRAYS` lists the kernel's arrays in the order the kernel takes them (after the day
range ``d0, d1``), each with its dtype, its axes, its role and what it holds. Everything else
is derived from it: the kernel's packed call (:func:`pack`; the int64 and float64 arrays go
into two contiguous blobs, because a call's cost grows with its number of arguments), the
checks of the public wrapper (:func:`check`), the zero-filled state and records of a run
(:func:`allocate`), and the argument list of the reference implementation in the tests.

Adding an array to the kernel means adding it here, to the kernel body
(:func:`retwin.kernels.flow._flow`, whose parameters must follow this order; the module refuses
to import otherwise) and to the reference implementation; an input must also be computed by
the engine when it compiles a scenario.

Roles:

* ``input``: fixed when a scenario is compiled; the kernel only reads it;
* ``state``: set by events between calls (capacities, availability, prices…) or carried by the
  kernel from one call to the next (stock, shipments in transit); the kernel may write it;
* ``output``: records and totals the kernel writes; a run starts them at zero.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "AXES",
    "FLOW_ARRAYS",
    "INPUTS",
    "NAMES",
    "PACKED_2D",
    "PACKED_FLOATS",
    "PACKED_INTS",
    "STRUCTURE",
    "UNPACKED",
    "KernelArray",
    "Packed",
    "allocate",
    "allocate_packed",
    "check",
    "pack",
    "plan_words",
    "unpack_into",
    "zeros",
]

Role = Literal["input", "state", "output"]

#: The axes an array may have (see :mod:`retwin._typing` for the shared ones).
AXES: dict[str, str] = {
    "P": "plants",
    "P1": "plants + 1 (row pointers of a per-plant list)",
    "L1": "levels + 1 (row pointers of a per-level list)",
    "LP": "(level, pool) pairs: the pools each level draws on or delivers into",
    "I": "recipe inputs of all plants",
    "O": "recipe outputs of all plants",
    "S": "pools",
    "M": "materials",
    "K": "markets",
    "G": "demand segments",
    "Q": "quotas",
    "C": "change points of the outage calendar (all plants')",
    "C1": "change points + 1 (a position in the outage calendar, its end included)",
    "QC": "entries of the quota calendar (a year's start for each quota, each batch released)",
    "QC1": "entries of the quota calendar + 1 (a position in it, its end included)",
    "1": "one (a single value)",
    "D": "days",
    "T": "months",
    "R": "slots of the ring of shipments in transit (longer than the longest lead time)",
    "W": "words of the kernel's plan of the chain: 3 P + O + 4 L + 2 LP + 3 (L: levels)",
    "TP": "months of the replayed price and demand paths: T, or 0 when a process sets prices "
          "and demand between calls (markets on)",
    "6": "the six rows of the totals",
}
#: Axes whose size follows from another's: ``P1`` is ``P + 1``, ``C1`` is ``C + 1``.
_ONE_MORE: dict[str, str] = {"P1": "P", "C1": "C", "QC1": "QC"}
#: Axes of a fixed size.
_FIXED: dict[str, int] = {"6": 6, "1": 1}
#: Axes whose size, when not given, is this (no replayed paths: a process sets them).
_DEFAULT: dict[str, int] = {"TP": 0}


def plan_words(sizes: Mapping[str, int]) -> int:
    """The size of the kernel's plan (axis ``W``) of a chain of these sizes."""
    n_levels = sizes["L1"] - 1
    return 3 * sizes["P"] + sizes["O"] + 4 * n_levels + 2 * sizes["LP"] + 3


@dataclass(frozen=True)
class KernelArray:
    """One array of the flow kernel.

    ``values_in`` names the axis whose positions the values are (each value ``v`` must satisfy
    ``0 <= v < size``, or be ``-1`` for "none" when ``none`` is set); ``ptr_into`` marks an
    array of row pointers into that axis (rising from 0 to its size). The public wrapper checks
    both, because the compiled kernel does no bounds checks. ``derived`` marks an array that
    the kernel could compute from the others and keeps for speed (an index, a running total).
    """

    name: str
    dtype: type[np.generic]
    axes: tuple[str, ...]
    role: Role
    doc: str
    values_in: str | None = None
    none: bool = False
    ptr_into: str | None = None
    derived: bool = False

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The array's shape, given the size of each of its axes."""
        try:
            return tuple([_FIXED[ax] if ax in _FIXED
                          else sizes[ax] if ax in sizes
                          else plan_words(sizes) if ax == "W"
                          else _DEFAULT[ax] if ax in _DEFAULT
                          else sizes[ax] for ax in self.axes])
        except KeyError as e:
            raise KeyError(f"{self.name}: no size given for axis {e.args[0]}") from None

    @property
    def packed(self) -> bool:
        """Whether the array travels in a blob of the packed call (int64 or float64; a 2-D
        one with its shape in the packed call's ``shapes``)."""
        return self.dtype in (np.int64, np.float64)


def _a(name: str, dtype: type[np.generic], axes: str, role: Role, doc: str, *,
       values_in: str | None = None, none: bool = False, ptr_into: str | None = None,
       derived: bool = False) -> KernelArray:
    return KernelArray(name, dtype, tuple(axes.split()), role, doc, values_in=values_in,
                       none=none, ptr_into=ptr_into, derived=derived)


_I, _F, _B = np.int64, np.float64, np.int8

#: The flow kernel's arrays, in the order it takes them after ``d0, d1``.
FLOW_ARRAYS: tuple[KernelArray, ...] = (
    # plants (fixed)
    _a("order", _I, "P", "input", "plants level by level (stage order, then as listed)",
       values_in="P"),
    _a("lvl_ptr", _I, "L1", "input", "level l's plants are order[lvl_ptr[l]:lvl_ptr[l+1]]",
       ptr_into="P"),
    _a("lvl_pool_ptr", _I, "L1", "input",
       "level l's pools are lvl_pools[lvl_pool_ptr[l]:lvl_pool_ptr[l+1]]", ptr_into="LP",
       derived=True),
    _a("lvl_pools", _I, "LP", "input", "pools a level's plants draw on or deliver into",
       values_in="S", derived=True),
    _a("commission_day", _I, "P", "input", "first day a plant may run (its ramp starts)"),
    _a("ramp_days", _I, "P", "input", "days from commissioning to full capacity (0: at once)"),
    _a("retire_day", _I, "P", "input", "first day a plant no longer runs"),
    _a("lead", _I, "P", "input", "days from production to arrival in the output pools",
       values_in="R"),
    _a("plant_quota", _I, "P", "input", "the quota a plant's output counts against (-1: none)",
       values_in="Q", none=True),
    _a("qcoef", _F, "P", "input", "t REO counted against the quota per unit of activity"),
    _a("qshare", _F, "P", "input", "licence share of the plant in its quota (relative weight)"),
    _a("in_ptr", _I, "P1", "input", "plant p's inputs are entries in_ptr[p]:in_ptr[p+1]",
       ptr_into="I"),
    _a("in_pool", _I, "I", "input", "pool an input is drawn from (-1: from the ground)",
       values_in="S", none=True),
    _a("in_mat", _I, "I", "input", "material of an input", values_in="M"),
    _a("in_amt", _F, "I", "input", "units of an input per unit of activity"),
    _a("out_ptr", _I, "P1", "input", "plant p's outputs are entries out_ptr[p]:out_ptr[p+1]",
       ptr_into="O"),
    _a("out_pool", _I, "O", "input", "pool an output is delivered into", values_in="S"),
    _a("out_mat", _I, "O", "input", "material of an output", values_in="M"),
    _a("out_amt", _F, "O", "input", "units of an output per unit of activity"),
    # pools, markets, demand (fixed)
    _a("pool_mat", _I, "S", "input", "material a pool holds", values_in="M"),
    _a("target", _F, "S", "input", "stock above the reserve that trade aims to keep"),
    _a("pool_max", _F, "S", "input", "storage ceiling (inf: none)"),
    _a("mk_pool", _I, "K", "input", "pool a market trades with", values_in="S"),
    _a("imp_lead", _I, "K", "input", "days from an import order to its arrival",
       values_in="R"),
    _a("dem_pool", _I, "G", "input", "pool a demand segment draws on", values_in="S"),
    # calendar (fixed)
    _a("days_left", _I, "D", "input", "days left in the calendar year, this day included"),
    _a("month_of_day", _I, "D", "input", "month of each day", values_in="T"),
    # the quota calendar (fixed): on entry i's day (rising), quota qcal_q[i] either starts a
    # year (qcal_year 1: q_year_left and q_avail are set to qcal_left and qcal_avail) or
    # has a batch released (qcal_year 0: qcal_avail is added to q_avail)
    _a("qcal_day", _I, "QC", "input", "day of a quota calendar entry (rising)"),
    _a("qcal_q", _I, "QC", "input", "the quota of the entry", values_in="Q"),
    _a("qcal_year", _I, "QC", "input", "1: the quota's year starts; 0: a batch is released"),
    _a("qcal_left", _F, "QC", "input", "a year's start: the year's ceiling (t REO)"),
    _a("qcal_avail", _F, "QC", "input", "a year's start: what is released at once (t REO); "
       "a batch: what it adds"),
    # state set by events between calls
    _a("cap_day", _F, "P", "state", "capacity in activity units per day (with utilisation)"),
    _a("avail", _F, "P", "state", "share of capacity available (0: down); the kernel sets it "
       "to derate x cal_up at each change point of the outage calendar"),
    _a("derate", _F, "P", "state", "share of capacity what-if outages leave (1: all)"),
    # the outage calendar, drawn when a run starts (its times do not depend on the state)
    _a("cal_ptr", _I, "P1", "state",
       "plant p's change points are entries cal_ptr[p]:cal_ptr[p+1]", ptr_into="C"),
    _a("cal_day", _I, "C", "state", "day of a change point (rising within a plant)"),
    _a("cal_up", _F, "C", "state", "share of capacity the drawn outages leave from that day"),
    _a("cal_at", _I, "P", "state", "each plant's next change point not yet applied",
       values_in="C1", derived=True),
    _a("qcal_at", _I, "1", "state", "the quota calendar's next entry not yet applied",
       values_in="QC1", derived=True),
    _a("reserve", _F, "S", "state", "strategic reserve nobody draws on"),
    _a("imp_cap_day", _F, "K", "state", "import cap per day (0: no imports)"),
    _a("exp_cap_day", _F, "K", "state", "export cap per day (0: no exports)"),
    _a("exp_contract_day", _F, "K", "state",
       "exports per day under contract, shipped before the region's plants draw"),
    _a("dem_rate", _F, "G", "state", "demand per day"),
    _a("price", _F, "M", "state", "price per unit of each material"),
    # paths drawn when a run starts (markets off: prices and demand do not depend on the state)
    _a("dem_path", _F, "G TP", "state", "demand per day of each segment and month: the kernel "
       "sets dem_rate from it on each month's first day (no months: it does not)"),
    _a("price_path", _F, "M TP", "state", "price of each material and month: the kernel sets "
       "price from it on each month's first day (no months: it does not)"),
    _a("q_avail", _F, "Q", "state", "t REO released and not yet used (drawn down by the kernel)"),
    _a("q_year_left", _F, "Q", "state", "t REO left of the year's ceiling (drawn down likewise)"),
    # state carried by the kernel
    _a("stock", _F, "S", "state", "stock at the end of the last day advanced"),
    _a("pipe", _F, "S R", "state", "production in transit, by pool and arrival day mod R"),
    _a("ipipe", _F, "S R", "state", "imports in transit, by pool and arrival day mod R"),
    _a("ipipe_sum", _F, "S", "state", "imports in transit per pool (row sums of ipipe)",
       derived=True),
    _a("pipe_sum", _F, "S", "state", "production in transit per pool (row sums of pipe)",
       derived=True),
    _a("plan", _I, "W", "state", "what the kernel works out from the inputs alone (which "
       "plants share pools, where storage can bind…), by a run's first call: 0 in its first "
       "word until then; the checked wrapper has it worked out again", derived=True),
    # records and totals
    _a("act_rec", _F, "P D", "output", "activity per plant and day"),
    _a("code_rec", _B, "P D", "output", "binding constraint per plant and day (BIND_*)"),
    _a("stock_rec", _F, "S D", "output", "end-of-day stock"),
    _a("imp_rec", _F, "K D", "output", "imports ordered per day"),
    _a("exp_rec", _F, "K D", "output", "exports per day"),
    _a("served_rec", _F, "G D", "output", "demand served per day"),
    _a("unmet_rec", _F, "G D", "output", "demand not served per day"),
    _a("short_sum", _F, "S", "output", "plants' requests on a pool beyond its free stock, "
       "summed over the days advanced (what they asked for and could not draw)"),
    _a("val_month", _F, "P T", "output", "output value per plant and month (CNY)"),
    _a("tot", _F, "6 M", "output", "per material: produced, drawn by plants, extracted, "
       "imported, exported, drawn by demand"),
)

#: Names of the kernel's arrays, in order.
NAMES: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS)
_BY_NAME: dict[str, KernelArray] = {a.name: a for a in FLOW_ARRAYS}
#: Names of the arrays fixed when a scenario is compiled.
INPUTS: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS if a.role == "input")
_NAME_SET, _INPUT_SET = frozenset(NAMES), frozenset(INPUTS)
#: The int64 blob's arrays, in order.
PACKED_INTS: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS
                                     if a.packed and a.dtype is np.int64)
#: The float64 blob's arrays, in order.
PACKED_FLOATS: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS
                                       if a.packed and a.dtype is np.float64)
#: The packed arrays of two dimensions, in order: the packed call's ``shapes`` holds their
#: rows and columns (``shapes[2 * i]``, ``shapes[2 * i + 1]``).
PACKED_2D: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS if a.packed and len(a.axes) == 2)
#: The arrays the packed call takes as they are (after the blobs), in order.
UNPACKED: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS if not a.packed)
#: The inputs that give a chain its shape, integer indices all: the plants' order and levels,
#: which pools each plant draws on and delivers into (and their materials), its lead time and
#: its quota, the material of each pool, and the pool each market and demand segment trades
#: with. A kernel specialised to one chain (:mod:`retwin.kernels.specialised`) holds them
#: as constants; capacities, amounts, prices, calendars and the state stay arguments.
STRUCTURE: tuple[str, ...] = (
    "order", "lvl_ptr", "lvl_pool_ptr", "lvl_pools", "lead", "plant_quota", "in_ptr",
    "in_pool", "in_mat", "out_ptr", "out_pool", "out_mat", "pool_mat", "mk_pool", "imp_lead",
    "dem_pool")
#: Packed arrays the kernel may write: copied back by a caller that packed its own arrays.
_WRITABLE_PACKED: tuple[str, ...] = tuple(a.name for a in FLOW_ARRAYS
                                          if a.packed and a.role != "input")


def _declaration_errors() -> list[str]:
    errors = [f"{a.name}: unknown axis {ax!r}" for a in FLOW_ARRAYS for ax in a.axes
              if ax not in AXES]
    errors += [f"{a.name}: values_in/ptr_into {ax!r} is not an axis" for a in FLOW_ARRAYS
               for ax in (a.values_in, a.ptr_into) if ax is not None and ax not in AXES]
    errors += [f"{a.name}: dtype {a.dtype.__name__} is not int64, float64 or int8"
               for a in FLOW_ARRAYS if a.dtype not in (np.int64, np.float64, np.int8)]
    errors += [f"{a.name}: role {a.role!r}" for a in FLOW_ARRAYS
               if a.role not in ("input", "state", "output")]
    if len(_BY_NAME) != len(FLOW_ARRAYS):
        errors.append("array names repeat")
    errors += [f"structure {n!r} is not a packed int64 input" for n in STRUCTURE
               if n not in PACKED_INTS or _BY_NAME[n].role != "input"]
    return errors


if _declaration_errors():
    raise TypeError("bad kernel declaration: " + "; ".join(_declaration_errors()))


@dataclass(frozen=True)
class Packed:
    """The kernel's arguments, packed for its cheap call.

    ``call`` is what :func:`retwin.kernels.flow.advance_packed` takes after ``d0, d1``: the
    int64 blob and its offsets, the float64 blob and its offsets, the shapes of the 2-D
    arrays in the blobs (:data:`PACKED_2D`), then the arrays of :data:`UNPACKED`. ``views``
    holds every kernel array by name: a packed one as its view inside a blob (so whoever
    writes into it between calls writes what the kernel reads), the others as given.
    """

    call: tuple[np.ndarray, ...]
    views: dict[str, np.ndarray]

    @property
    def args(self) -> tuple[np.ndarray, ...]:
        """Every kernel array in the kernel's order (the named call's arguments)."""
        return tuple(self.views[n] for n in NAMES)


def _packed(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, np.ndarray]) -> Packed:
    """Blobs of zeros for arrays of these shapes, with the ``given`` arrays copied in."""

    def blob(names: tuple[str, ...], dtype: type) -> tuple[np.ndarray, list[int]]:
        off = list(itertools.accumulate((math.prod(shapes[n]) for n in names), initial=0))
        return np.zeros(off[-1], dtype), off

    si, si_off = blob(PACKED_INTS, np.int64)
    sf, sf_off = blob(PACKED_FLOATS, np.float64)
    views: dict[str, np.ndarray] = {}
    for names, b, off in ((PACKED_INTS, si, si_off), (PACKED_FLOATS, sf, sf_off)):
        for i, n in enumerate(names):
            shape = shapes[n]
            view = b[off[i]:off[i + 1]]
            views[n] = view = view if len(shape) == 1 else view.reshape(shape)
            if n in given:
                view[...] = given[n]
    shp = np.array([d for n in PACKED_2D for d in shapes[n]], np.int64)
    views.update({n: given[n] if n in given else np.zeros(shapes[n], _BY_NAME[n].dtype)
                  for n in UNPACKED})
    return Packed((si, np.array(si_off, np.int64), sf, np.array(sf_off, np.int64), shp,
                   *(views[n] for n in UNPACKED)), views)


def pack(named: Mapping[str, np.ndarray]) -> Packed:
    """Copy the int64 and float64 arrays of ``named`` (every kernel array) into two blobs
    (see :class:`Packed`)."""
    return _packed({n: named[n].shape for n in NAMES}, named)


def allocate_packed(sizes: Mapping[str, int], given: Mapping[str, np.ndarray]) -> Packed:
    """:func:`pack` of :func:`allocate`, without copying the arrays that start at zero."""
    _check_given(given)
    shapes = dict(_shapes(tuple(sizes.items()), frozenset(given)))
    for n, a in given.items():
        shapes[n] = a.shape
    return _packed(shapes, given)


@functools.lru_cache(maxsize=64)
def _shapes(sizes: tuple[tuple[str, int], ...], given: frozenset[str]
            ) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The shape of every array not given, for these axis sizes (the same come back run after
    run)."""
    by_axis = dict(sizes)
    return tuple((a.name, a.shape(by_axis)) for a in FLOW_ARRAYS if a.name not in given)


def unpack_into(named: Mapping[str, np.ndarray], packed: Packed) -> None:
    """Copy what the kernel wrote into the blobs back into the arrays ``packed`` came from."""
    for n in _WRITABLE_PACKED:
        named[n][:] = packed.views[n]


def zeros(sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Every kernel array, zero-filled, in the shapes ``sizes`` gives its axes."""
    return {a.name: np.zeros(a.shape(sizes), a.dtype) for a in FLOW_ARRAYS}


def allocate(sizes: Mapping[str, int], given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The kernel's arrays for a run: ``given`` (every input, and any state with a starting
    value), the rest zero-filled in the shapes ``sizes`` gives their axes."""
    _check_given(given)
    return {a.name: given[a.name] if a.name in given else np.zeros(a.shape(sizes), a.dtype)
            for a in FLOW_ARRAYS}


def _check_given(given: Mapping[str, np.ndarray]) -> None:
    if given.keys() - _NAME_SET:
        raise KeyError(f"not kernel arrays: {', '.join(sorted(given.keys() - _NAME_SET))}")
    if _INPUT_SET - given.keys():
        raise KeyError("kernel inputs not given: "
                       + ", ".join(n for n in INPUTS if n not in given))


def _where(name: str) -> str:
    """How an error names an array: by name, and by position for a positional caller."""
    return f"{name} (argument {NAMES.index(name) + 2})"


def check(arrays: Mapping[str, object], *, d1: int | None = None,
          sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """Check kernel arrays against their declaration; return the size of every axis seen.

    ``arrays`` holds either every kernel array or only the inputs. Each must be a C-contiguous
    numpy array of its declared dtype and number of dimensions; arrays sharing an axis must
    agree on its size (and with ``sizes``, the sizes of axes known otherwise); every value
    that is a position along an axis must be in range, row pointers must rise from 0 to the
    size of what they point into, and the day range must end within the days. Raises
    ``TypeError`` or ``ValueError`` with one line naming the array, its value and the rule.
    """
    names = set(arrays)
    if names != _NAME_SET and names != _INPUT_SET:
        missing = sorted(_INPUT_SET - names) or sorted(_NAME_SET - names)
        extra = sorted(names - _NAME_SET)
        raise TypeError("kernel arrays: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unknown {', '.join(extra)}"] if extra else [])))
    checked: dict[str, np.ndarray] = {}
    for spec in FLOW_ARRAYS:
        if spec.name not in arrays:
            continue
        a = arrays[spec.name]
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{_where(spec.name)} must be a numpy array, got {type(a).__name__}")
        if a.dtype != spec.dtype:
            raise TypeError(f"{_where(spec.name)} has dtype {a.dtype}; the kernel takes "
                            f"{np.dtype(spec.dtype)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{_where(spec.name)} must be C-contiguous")
        if a.ndim != len(spec.axes):
            raise ValueError(f"{_where(spec.name)} must have {len(spec.axes)} dimension(s) "
                             f"({', '.join(spec.axes)}), has {a.ndim}")
        checked[spec.name] = a
    seen: dict[str, int] = dict(_FIXED)
    seen.update(sizes or {})
    where: dict[str, str] = {ax: "the kernel" if ax in _FIXED else "the caller" for ax in seen}
    for name, a in checked.items():
        for ax, n in zip(_BY_NAME[name].axes, a.shape, strict=True):
            if seen.setdefault(ax, n) != n:
                raise ValueError(f"{name} has {n} along axis {ax} ({AXES[ax]}) where "
                                 f"{where[ax]} has {seen[ax]}")
            where.setdefault(ax, name)
    for ax, base in _ONE_MORE.items():
        if ax in seen and base in seen and seen[ax] != seen[base] + 1:
            raise ValueError(f"{where[ax]} has {seen[ax]} entries; it must have one more than "
                             f"the {seen[base]} {AXES[base]}")
        if base in seen:
            seen.setdefault(ax, seen[base] + 1)
    if seen.get("TP", 0) not in (0, seen.get("T", 0)):
        raise ValueError(f"{where['TP']} has {seen['TP']} months of paths; it must have the "
                         f"{seen.get('T', 0)} months of the run ({AXES['T']}) or none")
    if d1 is not None and "D" in seen and d1 > seen["D"]:
        raise ValueError(f"day range ends at {d1}, past the {seen['D']} days of the records")
    unknown = sorted({ax for name in checked for ax in (_BY_NAME[name].values_in,
                                                        _BY_NAME[name].ptr_into)
                      if ax is not None and ax not in seen})
    if unknown:
        raise TypeError(f"no size for axis {', '.join(unknown)}: give it in sizes")
    for name, a in checked.items():
        spec = _BY_NAME[name]
        if spec.values_in is not None and a.size:
            n, lo = seen[spec.values_in], -1 if spec.none else 0
            bad = a[(a < lo) | (a >= n)]
            if bad.size:
                raise ValueError(f"{name} holds {int(bad[0])}, outside {lo}..{n - 1} "
                                 f"({AXES[spec.values_in]})")
        if spec.ptr_into is not None:
            n = seen[spec.ptr_into]
            if a.size == 0 or a[0] != 0 or a[-1] != n or np.any(np.diff(a) < 0):
                raise ValueError(f"{name} holds {a[:8].tolist()}; row pointers must rise "
                                 f"from 0 to {n} ({AXES[spec.ptr_into]})")
    if "W" in seen and all(ax in seen for ax in ("P", "O", "L1", "LP")) \
            and seen["W"] != plan_words(seen):
        raise ValueError(f"{where['W']} has {seen['W']} along axis W ({AXES['W']}) where a "
                         f"chain of these sizes has {plan_words(seen)}")
    return seen
