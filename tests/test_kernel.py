"""The flow kernel against the slow reference (tests/reference.py), on hand-picked cases.

Each case builds a small scenario, compiles it, takes the un-run model's kernel arguments,
sets the event-driven state by hand (quota, demand...), and runs the checked wrapper
``retwin.kernels.flow.advance`` and ``reference.advance`` on copies of the same arrays. Every
array must agree; each case also asserts the facts it is about, so the two cannot agree on a
wrong answer unnoticed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference
import retwin
from conftest import assert_same_run, chain_model, make_scenario, make_tree, mat, plant
from reference import ARG_NAMES, CAPACITY, IDLE, INPUT, OUTAGE, QUOTA, STORAGE
from retwin.engine import model as engine_model
from retwin.engine.model import ChainModel
from retwin.kernels import contract, flow
from retwin.kernels._jit import indices_as_given
from test_change_kinds import EXAMPLES as CHANGE_EXAMPLES

Args = dict[str, np.ndarray]


def by_hand(a: Args) -> None:
    """The quotas' state is set by hand (``q_avail``, ``q_year_left``, from 0): the scenario's
    quota calendar, which the kernel applies from day 0, is emptied."""
    for name in ("qcal_day", "qcal_q", "qcal_year"):
        a[name] = np.zeros(0, np.int64)
    for name in ("qcal_left", "qcal_avail"):
        a[name] = np.zeros(0)
    a["qcal_at"][:] = 0
    a["q_avail"][:] = a["q_year_left"][:] = 0.0


def set_demand(a: Args, rates: Any) -> None:
    """Each segment's demand per day for the whole run: the rate, and its monthly path (which
    the kernel replays on each month's first day, and on the first day of a call)."""
    a["dem_rate"][:] = rates
    a["dem_path"][:] = np.asarray(rates, np.float64).reshape(-1, 1)
Segment = tuple[int, int] | tuple[int, int, Callable[[Args], None]]

FLOAT_RTOL = 1e-12
FLOAT_ATOL = 1e-9


def compare(kernel: Args, ref: Args, ties: set[tuple[int, int]] | None = None) -> None:
    for name in ARG_NAMES:
        k, r = kernel[name], ref[name]
        if name == "code_rec" and ties:
            # a code decided by limits equal within round-off may go either way
            k = k.copy()
            for p, d in ties:
                k[p, d] = r[p, d]
        if k.dtype.kind == "f":
            # absolute round-off scales with the array's largest entry (a share of a room or a
            # stock computed as a difference of larger numbers)
            finite = np.abs(r[np.isfinite(r)])
            atol = max(FLOAT_ATOL, FLOAT_RTOL * float(finite.max(initial=0.0)))
            np.testing.assert_allclose(k, r, rtol=FLOAT_RTOL, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(k, r, err_msg=name)


def both(sc: retwin.Scenario, *segments: Segment, setup: Callable[[Args], None] | None = None
         ) -> Args:
    """Run kernel and reference over ``segments`` (``(d0, d1)`` or ``(d0, d1, mutate)``, the
    mutation applied to both sides before the segment); assert they agree; return the
    kernel's arrays by name."""
    model = chain_model(sc)
    base = {n: a.copy() for n, a in zip(ARG_NAMES, model._args, strict=True)}
    if setup is not None:
        setup(base)
    k = {n: a.copy() for n, a in base.items()}
    r = {n: a.copy() for n, a in base.items()}
    ties: set[tuple[int, int]] = set()
    for seg in segments or ((0, sc.horizon_days),):
        d0, d1 = seg[0], seg[1]
        if len(seg) == 3:
            seg[2](k)
            seg[2](r)
        flow.advance(d0, d1, *(k[n] for n in ARG_NAMES))
        ties |= reference.advance(d0, d1, *(r[n] for n in ARG_NAMES))
    compare(k, r, ties)
    return k


# --- the declaration (retwin.kernels.contract) binds the kernel, the reference and the engine --


class _Recording(Mapping[str, np.ndarray]):
    """The kernel's arrays by name, remembering which names were asked for."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> np.ndarray:
        self.asked.add(name)
        return self.arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def every_part(days: int = 30) -> retwin.Scenario:
    """A chain with one of everything the kernel handles: a quota, a lead time, markets both
    ways, demand, an outage."""
    quota = {"id": "q", "plants": ["mine"], "annual_t_reo": {2024: 100000}}
    outage = {"planned_outages": [{"from": "2024-01-04", "to": "2024-01-05"}]}
    return make_scenario(
        [ORE, CONC, OXIDE],
        [mine(capacity_tpa=36500, lead_time_days=2), separator(availability=outage)],
        days=days, quotas=[quota], pools=[{"material": "oxide", "target_t": 50}],
        markets=[{"id": "conc-out", "material": "conc", "export": {"cap_tpa": 365}},
                 {"id": "ox-in", "material": "oxide",
                  "import": {"cap_tpa": 365, "lead_time_days": 3}}],
        demand=[{"id": "use", "name": "use", "material": "oxide", "base_units_per_year": 1}],
    )


def test_reference_uses_every_declared_array_but_the_derived_ones() -> None:
    """A new kernel array the reference does not read would leave the kernel's use of it
    untested: the reference must read every array the declaration does not mark derived."""
    arrays = {n: x.copy() for n, x in zip(ARG_NAMES, chain_model(every_part(10))._args,
                                          strict=True)}
    by_hand(arrays)
    arrays["q_avail"][:] = arrays["q_year_left"][:] = 1e5  # the chain runs: a quota is
    set_demand(arrays, 1.0)  # released, demand draws, trade moves
    a = _Recording(arrays)
    reference.advance_named(0, 10, a)
    for name in ("act_rec", "served_rec"):
        assert np.all(arrays[name].max(axis=1) > 0), name  # every plant and segment
    assert arrays["exp_rec"][0].max() > 0.5 and arrays["imp_rec"][1].max() > 0.5
    needed = {x.name for x in contract.FLOW_ARRAYS if not x.derived}
    assert needed - a.asked == set()
    assert a.asked <= set(contract.NAMES)


def test_kernel_body_must_follow_the_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """flow.py refuses to import when the body's parameters drift from the declaration."""
    assert flow._signature_errors() == []

    def swapped(d0: int, d1: int, lvl_ptr: Any, order: Any) -> None: ...

    monkeypatch.setattr(flow, "_flow", swapped)
    errors = flow._signature_errors()
    assert errors and "the kernel body takes ('lvl_ptr', 'order')" in errors[0]


def test_packed_call_shares_the_state_the_events_write() -> None:
    """Every array of a run is what its packed call passes: the int64 and float64 ones (1-D
    and 2-D) are views into the blobs (an event writing ``avail`` writes what the kernel
    reads), the others the arrays; the call carries the 2-D ones' shapes."""
    sc = make_scenario([ORE, CONC, OXIDE], [mine(), separator()], days=10)
    m = chain_model(sc)
    si, _, sf, _, *rest = m._packed
    for name in contract.NAMES:
        blob = si if name in contract.PACKED_INTS else sf if name in contract.PACKED_FLOATS \
            else None
        a = m.arrays[name]
        assert a.dtype == contract.FLOW_ARRAYS[contract.NAMES.index(name)].dtype, name
        if blob is None:
            assert any(a is r for r in rest), name
        else:
            assert a.base is blob, name
    assert [id(a) for a in m._args] == [id(m.arrays[n]) for n in ARG_NAMES]
    m.avail[1] = 0.25  # what an outage does
    sf_off, shapes = m._packed[3], m._packed[4]
    assert sf[sf_off[contract.PACKED_FLOATS.index("avail")] + 1] == 0.25
    assert contract.PACKED_2D and shapes.tolist() == [
        d for n in contract.PACKED_2D for d in m.arrays[n].shape]
    m.act_rec[1, 3] = 7.0
    i = contract.PACKED_FLOATS.index("act_rec")
    assert sf[sf_off[i] + m.act_rec.shape[1] + 3] == 7.0


# --- indices taken as they are --------------------------------------------------------------

JIT = not numba.config.DISABLE_JIT


def _item(a: np.ndarray, i: int) -> float:
    return float(a[i])


@pytest.mark.skipif(not JIT, reason="indices are Python's with NUMBA_DISABLE_JIT")
def test_indices_as_given_takes_a_negative_index_as_it_is() -> None:
    """Compiled with indices as given, a negative index is not wrapped: with bounds checks it
    raises IndexError (how the flow kernel is checked below); compiled as usual before and
    after, it is Python's ``a[-1]``."""
    a = np.arange(3.0)
    assert numba.njit(boundscheck=True)(_item)(a, -1) == 2.0
    with indices_as_given():
        given = numba.njit(boundscheck=True)(_item)
        with pytest.raises(IndexError):
            given(a, -1)
        assert given(a, 1) == 1.0
    assert numba.njit(boundscheck=True)(_item)(a, -1) == 2.0


#: Runs that take the flow kernel through its paths: markets on and off, random outages,
#: quotas with calendars, trade and contracts, lead times, storage ceilings, and a change of
#: each kind (``tiny``), on the shipped models.
_INDEX_RUNS: list[tuple[str, list[dict[str, Any]]]] = [
    ("baotou-2024", []),
    ("baotou-2024", [
        {"kind": "quota", "quota": "mining", "factor": 0.3, "from": "2025-01-01"},
        {"kind": "trade", "market": "magnet_export_world", "side": "export", "factor": 0.25,
         "from": "2025-01-01"},
        {"kind": "capacity", "stage": "separation", "factor": 1.5, "from": "2026-01-01"}]),
    ("china-2024", []),
    ("tiny", [change for change, _ in CHANGE_EXAMPLES.values()]),
    ("tiny-markets", [change for change, _ in CHANGE_EXAMPLES.values()]),
]


@pytest.mark.slow
@pytest.mark.skipif(not JIT, reason="bounds checks are compiled code's")
def test_the_flow_kernel_indexes_nothing_below_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow kernel is compiled with its indices as given (no wraparound of negative
    ones): it must never index below zero. Compiled that way with bounds checks, which
    raise IndexError at any index out of range, it runs the shipped models through their
    paths and what-ifs, and gives the numbers the kernel runs give, bit for bit."""
    code = flow._entry_code(FLOW_SOURCE, None)
    scope: dict[str, Any] = {**vars(flow), "__name__": flow.__name__}
    exec(code, scope)
    checked = numba.njit(boundscheck=True, error_model="numpy", nogil=True)(
        scope["_advance_packed"])
    m = ChainModel(retwin.prepare(retwin.load_scenario("tiny")), 1)
    with indices_as_given():
        checked.compile((numba.types.int64, numba.types.int64, *map(numba.typeof, m._packed)))
    monkeypatch.setattr(engine_model, "CHAIN_KERNELS", False)  # the general kernel, checked
    for name, changes in _INDEX_RUNS:
        sc = retwin.apply_changes(retwin.load_scenario(name), changes)
        monkeypatch.setattr(engine_model, "advance_packed", checked)
        got = retwin.run(sc, seed=2)
        monkeypatch.setattr(engine_model, "advance_packed", flow.advance_packed)
        assert_same_run(got, retwin.run(sc, seed=2))


# --- the packed entry point, generated from the body and kept next to Numba's cache ----------


FLOW_SOURCE = Path(flow._FILENAME).read_bytes()


def _no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(source: str) -> str:
        raise AssertionError("the entry point was generated again")

    monkeypatch.setattr(flow, "_entry_source", refuse)


def test_the_generated_entry_point_is_read_from_its_cache_while_fresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = flow._entry_code(FLOW_SOURCE, None)
    assert flow._entry_code(FLOW_SOURCE, tmp_path) == fresh  # generated, and written
    assert [p.suffix for p in tmp_path.iterdir()] == [".code"]  # whole: no temporary left
    _no_generation(monkeypatch)
    assert flow._entry_code(FLOW_SOURCE, tmp_path) == fresh
    scope: dict[str, Any] = {**vars(flow)}
    exec(fresh, scope)
    entry = scope["_advance_packed"]
    assert entry.__code__.co_filename == flow._FILENAME  # errors point into the body:
    body_first = flow._flow.__code__.co_firstlineno  # its statements keep their lines
    assert entry.__code__.co_firstlineno == body_first
    assert {line for *_, line in entry.__code__.co_lines() if line} \
        - {line for *_, line in flow._flow.__code__.co_lines() if line} == {body_first + 1}


def _changed_body(source: bytes) -> bytes:
    old = b"    n_pools = stock.shape[0]\n"
    assert source.count(old) == 1
    return source.replace(old, b"    n_pools = stock.shape[0] + 0\n")


def _changed_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contract, "UNPACKED", (*contract.UNPACKED, "extra"))


def _other_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "MAGIC_NUMBER", b"\0\0\r\n")


@pytest.mark.parametrize("change", ["body", "layout", "python", "damaged", "cut short",
                                    "empty"])
def test_the_generated_entry_point_is_generated_again_when_stale(
        change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything the entry point follows from (the body, the packed layout, the Python
    bytecode's version) or a damaged cache file makes it generated again, and the file
    rewritten: it is never taken for what it is not."""
    before = flow._entry_code(FLOW_SOURCE, tmp_path)
    (cached,) = tmp_path.iterdir()
    source = FLOW_SOURCE
    if change == "body":
        source = _changed_body(FLOW_SOURCE)
    elif change == "layout":
        _changed_layout(monkeypatch)
    elif change == "python":
        _other_python(monkeypatch)
    else:
        data = cached.read_bytes()
        cached.write_bytes({"damaged": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:],
                            "cut short": data[:-1], "empty": b""}[change])
    expected = flow._entry_code(source, None)
    assert flow._entry_code(source, tmp_path) == expected
    if change in ("body", "layout"):
        assert expected != before
    _no_generation(monkeypatch)
    assert flow._entry_code(source, tmp_path) == expected  # the file holds the new one


def test_a_process_takes_the_entry_point_from_the_cache() -> None:
    """Once a process has written it (``retwin warmup`` does), the next compiles nothing to
    make the entry point, and the kernel runs."""
    code = ("import sys\n"
            "generated = []\n"
            "def hook(event, args):\n"
            "    if event == 'compile' and isinstance(args[0], (str, bytes)):\n"
            "        text = args[0] if isinstance(args[0], str) \\\n"
            "            else args[0].decode('utf-8', 'replace')\n"
            "        if text.lstrip('\\n').startswith('def _advance_packed('):\n"
            "            generated.append(args[1])\n"
            "sys.addaudithook(hook)\n"
            "import retwin.kernels\n"
            "retwin.kernels.warmup()\n"
            "print(len(generated))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert runs[1].stdout.split() == ["0"]


def test_a_run_allocates_its_arrays_from_the_declaration() -> None:
    sc = make_scenario([ORE, CONC, OXIDE], [mine(), separator()], days=10)
    c = retwin.prepare(sc)
    arrays = chain_model(sc).arrays
    # the outage calendar is drawn per run: its length is the run's
    sizes = {**c.kernel_sizes, "C": arrays["cal_day"].size}
    for spec in contract.FLOW_ARRAYS:
        assert arrays[spec.name].shape == spec.shape(sizes), spec.name
    with pytest.raises(KeyError, match="kernel inputs not given: order"):
        contract.allocate(c.kernel_sizes, {n: a for n, a in c.kernel_static.items()
                                           if n != "order"})
    with pytest.raises(KeyError, match="not kernel arrays: stocks"):
        contract.allocate(c.kernel_sizes, {**c.kernel_static, "stocks": np.zeros(2)})


# --- building blocks of the cases -----------------------------------------------------------

ORE = mat("ore", 0.05)
CONC = mat("conc", 0.5, price=2000.0)
OXIDE = mat("oxide", 1.0, price=10000.0)


def mine(id: str = "mine", capacity_tpa: float = 3650.0, **kw: Any) -> dict[str, Any]:
    """Extracts 10 t ore per t of concentrate; 3650 t/a is 10 t a day."""
    return plant(id, "mining", capacity_tpa, {"conc": 1}, {"ore": 10}, extracts=True, **kw)


def separator(id: str = "sep", capacity_tpa: float = 3650.0, yield_frac: float = 0.8,
              **kw: Any) -> dict[str, Any]:
    """Turns concentrate (0.5 t REO/t) into oxide (1 t REO/t) at ``yield_frac`` recovery."""
    return plant(id, "separation", capacity_tpa, {"oxide": 1}, {"conc": 2 / yield_frac}, **kw)


# --- hand-picked cases ----------------------------------------------------------------------


def test_zero_capacity_is_idle_and_does_nothing() -> None:
    sc = make_scenario([ORE, CONC, OXIDE], [mine(capacity_tpa=0), separator()],
                       pools=[{"material": "conc", "initial_t": 100}], days=20)
    k = both(sc, (0, 20))
    assert np.all(k["act_rec"][0] == 0.0)
    assert np.all(k["code_rec"][0] == IDLE)
    # the separator still runs on the initial stock: 10 a day at 2.5 t concentrate each
    np.testing.assert_allclose(k["act_rec"][1, :4], 10.0)
    assert k["code_rec"][1, 0] == CAPACITY
    assert k["tot"][2].sum() == 0.0  # nothing extracted


def test_zero_quota_stops_the_plants_under_it() -> None:
    quota = {"id": "q", "plants": ["mine"], "annual_t_reo": {2024: 0}}
    sc = make_scenario([ORE, CONC], [mine()], quotas=[quota])
    k = both(sc, (0, 30))  # q_avail and q_year_left start at 0: nothing released
    assert np.all(k["act_rec"][0, :30] == 0.0)
    assert np.all(k["code_rec"][0, :30] == QUOTA)


@pytest.mark.parametrize("ahead", [False, True])
def test_the_quota_calendar_opens_years_and_releases_batches(ahead: bool) -> None:
    """The quota calendar, compiled with the scenario, needs no event: a horizon from
    2024-07-01 gets half of 2024 (184 of 366 days) of its ceiling and of its January batch
    (released on its first day), its September batch whole; unused quota lapses on
    2025-01-01 and 2025 opens with its January batch. Producing ahead, each year's total is
    there from its start.
    Calls that start and end between the entries see the same (kernel and reference)."""
    batches = [{"month": 1, "share_frac": 0.4}, {"month": 9, "share_frac": 0.6}]
    quota = {"id": "q", "plants": ["mine"], "annual_t_reo": {2024: 1000, 2025: 2000},
             "batches": batches, "produce_ahead": ahead}
    sc = make_scenario([ORE, CONC], [mine(capacity_tpa=36.5)], quotas=[quota],
                       start="2024-07-01", days=365)
    sept, jan = 62, 184  # 2024-09-01 and 2025-01-01
    seen: dict[int, tuple[float, float]] = {}

    def look(day: int) -> Callable[[Args], None]:
        def at(a: Args) -> None:
            seen.setdefault(day, (float(a["q_avail"][0]), float(a["q_year_left"][0])))
        return at

    k = both(sc, (0, 30), (30, sept, look(30)), (sept, jan, look(sept)), (jan, 365, look(jan)))
    half = 184 / 366
    left = {30: half * 1000 - 30 * 0.05, sept: half * 1000 - sept * 0.05, jan: 2000.0}
    avail = ({30: half * 1000 - 30 * 0.05, sept: half * 1000 - sept * 0.05, jan: 2000.0}
             if ahead else
             {30: half * 400 - 30 * 0.05, sept: half * 400 + 600 - sept * 0.05, jan: 800.0})
    for day in (30, sept, jan):  # the mine draws 0.05 t REO a day (0.1 t at 0.5 t REO/t)
        np.testing.assert_allclose(seen[day], (avail[day], left[day]), rtol=1e-12)
    assert k["qcal_at"][0] == len(k["qcal_day"])  # every entry applied
    assert np.all(k["act_rec"][0] > 0)  # never short of quota


def test_quota_released_later_in_the_year() -> None:
    quota = {"id": "q", "plants": ["mine", "mine2"], "annual_t_reo": {2024: 1000}}
    sc = make_scenario([ORE, CONC], [mine(), mine("mine2", capacity_tpa=7300)], quotas=[quota],
                       days=120)

    def year(a: Args) -> None:
        by_hand(a)
        a["q_year_left"][0] = 1000.0  # the year's ceiling, nothing released yet

    def release(a: Args) -> None:
        a["q_avail"][0] += 60.0  # a batch of 60 t REO on day 10

    k = both(sc, (0, 10), (10, 40, release), (40, 120), setup=year)
    act = k["act_rec"]
    assert np.all(act[:, :10] == 0.0)
    assert np.all(k["code_rec"][:, :10] == QUOTA)
    used = act[:, 10:].sum() * 0.5  # t REO: 0.5 per t of concentrate
    np.testing.assert_allclose(used, 60.0, rtol=1e-12)  # the whole batch, no more
    # the two mines share the quota pro rata to their capacities (1 : 2)
    np.testing.assert_allclose(act[1, 10:].sum(), 2 * act[0, 10:].sum(), rtol=1e-12)
    # pacing: a day never uses more than the year's remainder over the days left
    days_left = k["days_left"]
    left = 1000.0 - np.cumsum(act.sum(axis=0) * 0.5)
    paced = np.concatenate([[1000.0], left[:-1]]) / days_left[:120]
    assert np.all(act.sum(axis=0) * 0.5 <= paced + 1e-12)


def test_a_short_quota_is_shared_by_licence_shares() -> None:
    """Shares 1 : 3 of a quota that meets neither request in full: the smaller licensee gets
    its quarter; the larger, three quarters."""
    quota = {"id": "q", "plants": ["mine", "mine2"], "annual_t_reo": {2024: 3660},
             "shares": {"mine": 1.0, "mine2": 3.0}}
    sc = make_scenario([ORE, CONC], [mine(capacity_tpa=36500), mine("mine2", capacity_tpa=36500)],
                       quotas=[quota], days=10)

    def year(a: Args) -> None:
        by_hand(a)
        a["q_year_left"][0] = a["q_avail"][0] = 366 * 10.0  # 10 t REO a day, paced

    k = both(sc, (0, 10), setup=year)
    act = k["act_rec"][:, :10]  # t of concentrate a day; 0.5 t REO each
    np.testing.assert_allclose(act[0] * 0.5, 2.5, rtol=1e-9)
    np.testing.assert_allclose(act[1] * 0.5, 7.5, rtol=1e-9)
    assert np.all(k["code_rec"][:, :10] == QUOTA)


def test_what_one_licensee_leaves_goes_to_the_others() -> None:
    """Equal shares, but one plant can use only 2 t REO a day of its 5: the other gets 8."""
    quota = {"id": "q", "plants": ["mine", "mine2"], "annual_t_reo": {2024: 3660},
             "shares": {"mine": 1.0, "mine2": 1.0}}
    sc = make_scenario([ORE, CONC], [mine(capacity_tpa=4 * 365),
                                     mine("mine2", capacity_tpa=36500)],
                       quotas=[quota], days=10)

    def year(a: Args) -> None:
        by_hand(a)
        a["q_year_left"][0] = a["q_avail"][0] = 366 * 10.0

    k = both(sc, (0, 10), setup=year)
    act = k["act_rec"][:, :10]
    np.testing.assert_allclose(act[0] * 0.5, 2.0, rtol=1e-9)  # its whole request
    np.testing.assert_allclose(act[1] * 0.5, 8.0, rtol=1e-9)  # its part and the leftover
    assert np.all(k["code_rec"][0, :10] == CAPACITY)
    assert np.all(k["code_rec"][1, :10] == QUOTA)


def test_more_capacity_for_one_licensee_takes_nothing_from_another() -> None:
    """The capacity-proportional sharing this replaces let a plant's expansion cut another's
    output; by licence shares it only takes what the others leave."""
    quota = {"id": "q", "plants": ["mine", "mine2"], "annual_t_reo": {2024: 3660}}
    plants = [mine(capacity_tpa=7300), mine("mine2", capacity_tpa=7300)]
    sc = make_scenario([ORE, CONC], plants, quotas=[quota], days=10)

    def year(a: Args) -> None:
        by_hand(a)
        a["q_year_left"][0] = a["q_avail"][0] = 366 * 10.0

    before = both(sc, (0, 10), setup=year)["act_rec"][0, :10].copy()

    def bigger(a: Args) -> None:
        year(a)
        a["cap_day"][1] *= 3  # mine2 triples (an event), its licence share does not change

    after = both(sc, (0, 10), setup=bigger)["act_rec"][0, :10]
    np.testing.assert_allclose(after, before, rtol=1e-12)


def test_contracted_exports_leave_before_the_plants_draw() -> None:
    """A pool of 100 t with a contract of 30 t a day and a plant asking 100 t a day: the
    contract is shipped first; the plant gets what is left."""
    sc = make_scenario([CONC, OXIDE], [separator(capacity_tpa=100 * 365, yield_frac=1.0)],
                       pools=[{"material": "conc", "initial_t": 100}, {"material": "oxide"}],
                       markets=[{"id": "out", "material": "conc",
                                 "export": {"cap_tpa": 50 * 365}}], days=3)

    def contract(a: Args) -> None:
        a["exp_contract_day"][0] = 30.0
        a["exp_cap_day"][0] = 50.0

    k = both(sc, (0, 3), setup=contract)
    np.testing.assert_allclose(k["exp_rec"][0], [30.0, 0.0, 0.0])
    np.testing.assert_allclose(k["act_rec"][0, :1] * 2.0, 70.0)  # 2 t of conc per t of oxide
    assert k["code_rec"][0, 0] == INPUT


def test_quota_pacing_when_plenty_is_released() -> None:
    quota = {"id": "q", "plants": ["mine"], "annual_t_reo": {2024: 365}}
    sc = make_scenario([ORE, CONC], [mine()], quotas=[quota], days=30)

    def setup(a: Args) -> None:
        by_hand(a)
        a["q_avail"][0] = 365.0
        a["q_year_left"][0] = 365.0

    k = both(sc, (0, 30), setup=setup)
    # 365 t REO over the 366 days of 2024: just under 1 t REO (2 t concentrate) a day
    np.testing.assert_allclose(k["act_rec"][0, 0], 2 * 365 / 366, rtol=1e-12)
    assert np.all(k["code_rec"][0, :30] == QUOTA)


def test_yield_one_output_equals_input() -> None:
    a, b = mat("a", 0.5), mat("b", 0.5)
    sc = make_scenario([a, b], [plant("conv", "metal", 3650, {"b": 1}, {"a": 1})],
                       pools=[{"material": "a", "initial_t": 55}])
    k = both(sc, (0, 10))
    assert np.all(k["act_rec"][0, :5] == 10.0)
    np.testing.assert_allclose(k["act_rec"][0, 5], 5.0)
    assert k["code_rec"][0, 5] == INPUT
    ia, ib = 0, 1
    assert k["tot"][1, ia] == k["tot"][0, ib] == 55.0  # drawn a == produced b
    assert k["stock"][0] == 0.0 and k["stock"][1] == 55.0


def test_empty_plant_list() -> None:
    sc = make_scenario(
        [OXIDE], [],
        pools=[{"material": "oxide", "initial_t": 50, "target_t": 20}],
        markets=[{"id": "out", "material": "oxide", "export": {"cap_tpa": 3650}},
                 {"id": "in", "material": "oxide", "import": {"cap_tpa": 730,
                                                             "lead_time_days": 3}}],
        demand=[{"id": "use", "name": "use", "material": "oxide", "base_units_per_year": 1}],
    )

    def demand(a: Args) -> None:
        set_demand(a, [4.0])

    k = both(sc, (0, 40), setup=demand)
    assert k["act_rec"].shape[0] == 0
    assert k["tot"][4].sum() > 0 and k["tot"][3].sum() > 0 and k["tot"][5].sum() > 0
    np.testing.assert_allclose(k["exp_rec"][0, 0], 10.0)  # 50 - 4 - 20 = 26, capped at 10


def test_reserve_is_never_drawn() -> None:
    sc = make_scenario([ORE, CONC, OXIDE], [separator(capacity_tpa=36500)],
                       pools=[{"material": "conc", "initial_t": 300, "reserve_t": 220}])
    k = both(sc, (0, 10))
    # 100 a day would need 250 t; 80 t are free above the reserve
    np.testing.assert_allclose(k["act_rec"][0, 0], 80 / 2.5)
    assert k["code_rec"][0, 0] == INPUT
    assert np.all(k["act_rec"][0, 1:10] == 0.0)
    np.testing.assert_allclose(k["stock_rec"][0, :10], 220.0)


def test_storage_ceiling_binds() -> None:
    sc = make_scenario([ORE, CONC], [mine()], pools=[{"material": "conc", "max_t": 35}])
    k = both(sc, (0, 10))
    np.testing.assert_allclose(k["act_rec"][0, :4], [10, 10, 10, 5])
    assert list(k["code_rec"][0, :5]) == [CAPACITY] * 3 + [STORAGE] * 2
    assert k["stock_rec"][0].max() <= 35.0


def test_storage_ceiling_counts_what_is_on_its_way() -> None:
    sc = make_scenario([ORE, CONC], [mine(lead_time_days=5)],
                       pools=[{"material": "conc", "max_t": 35}])
    k = both(sc, (0, 12))
    np.testing.assert_allclose(k["act_rec"][0, :5], [10, 10, 10, 5, 0])
    assert k["stock_rec"][0].max() <= 35.0


def test_two_plants_share_a_short_pool_pro_rata() -> None:
    sc = make_scenario(
        [ORE, CONC, OXIDE],
        [separator("s1", capacity_tpa=3650), separator("s2", capacity_tpa=3 * 3650)],
        pools=[{"material": "conc", "initial_t": 60}],
    )
    k = both(sc, (0, 3))
    # asked 25 + 75 = 100 t, 60 there: each gets 60 %
    np.testing.assert_allclose(k["act_rec"][:, 0], [6.0, 18.0])
    assert list(k["code_rec"][:, 0]) == [INPUT, INPUT]
    np.testing.assert_allclose(k["act_rec"][:, 1], 0.0)
    # what the plants could not draw is summed per pool (the markets read it as shortage):
    # asked 100 t a day: 40 t short on day 0, 100 t on days 1 and 2; no other pool is short
    short = k["short_sum"]
    assert np.count_nonzero(short) == 1
    assert short.max() == pytest.approx(240.0)


def test_two_inputs_the_scarcer_binds() -> None:
    x, y, z = mat("x", 0.2), mat("y", 0.2), mat("z", 0.2)
    sc = make_scenario(
        [x, y, z], [plant("mix", "metal", 3650, {"z": 1}, {"x": 1, "y": 1})],
        pools=[{"material": "x", "initial_t": 100}, {"material": "y", "initial_t": 4}], days=3,
    )
    k = both(sc, (0, 3))
    np.testing.assert_allclose(k["act_rec"][0], [4.0, 0.0, 0.0])
    np.testing.assert_allclose(k["stock"][:2], [96.0, 0.0])


def test_production_lead_time_is_a_pipeline() -> None:
    sc = make_scenario([ORE, CONC], [mine(lead_time_days=7)], days=20)
    k = both(sc, (0, 9))
    stock = k["stock_rec"][0]
    assert np.all(stock[:7] == 0.0)
    np.testing.assert_allclose(stock[7:9], [10.0, 20.0])
    np.testing.assert_allclose(k["pipe"].sum(), 70.0)  # days 2..8 still on their way


def test_pipeline_across_calls_matches_one_call() -> None:
    sc = make_scenario([ORE, CONC, OXIDE], [mine(lead_time_days=4), separator(lead_time_days=9)],
                       days=60)
    one = both(sc, (0, 60))
    split = both(sc, (0, 13), (13, 14), (14, 31), (31, 60))
    for name in ARG_NAMES:
        np.testing.assert_array_equal(one[name], split[name], err_msg=name)


def test_import_with_lead_time() -> None:
    sc = make_scenario(
        [OXIDE], [], pools=[{"material": "oxide", "target_t": 100}],
        markets=[{"id": "in", "material": "oxide",
                  "import": {"cap_tpa": 40 * 365, "lead_time_days": 10}}],
    )
    k = both(sc, (0, 20))
    imp = k["imp_rec"][0]
    # orders 40, 40, 20 (up to the target net of what is on its way), then nothing
    np.testing.assert_allclose(imp[:4], [40, 40, 20, 0])
    assert np.all(imp[3:] == 0.0)
    stock = k["stock_rec"][0]
    assert np.all(stock[:10] == 0.0)
    np.testing.assert_allclose(stock[10:13], [40, 80, 100])
    assert k["ipipe_sum"][0] == 0.0


def test_export_cap() -> None:
    sc = make_scenario([ORE, CONC], [mine(capacity_tpa=36500)],
                       pools=[{"material": "conc", "target_t": 5}],
                       markets=[{"id": "out", "material": "conc",
                                 "export": {"cap_tpa": 30 * 365}}])
    k = both(sc, (0, 10))
    exp = k["exp_rec"][0]
    np.testing.assert_allclose(exp[:10], 30.0)  # 100 a day produced, 30 a day may leave
    np.testing.assert_allclose(k["stock_rec"][0, :3], [70, 140, 210])


def test_export_leaves_reserve_and_target() -> None:
    sc = make_scenario([CONC], [],
                       pools=[{"material": "conc", "initial_t": 100, "reserve_t": 30,
                               "target_t": 20}],
                       markets=[{"id": "out", "material": "conc",
                                 "export": {"cap_tpa": 1e6}}], days=5)
    k = both(sc, (0, 5))
    np.testing.assert_allclose(k["exp_rec"][0], [50, 0, 0, 0, 0])
    np.testing.assert_allclose(k["stock_rec"][0], 50.0)


def test_replayed_paths_set_demand_and_price_on_each_months_first_day() -> None:
    """Markets off, the month's demand and prices come from paths drawn when the run starts;
    the kernel sets them on each month's first day (and on a call's first), so calls that
    start and end mid-month see the same months (January 31 days, February 29)."""
    sc = make_scenario([ORE, CONC], [mine()], days=60,
                       pools=[{"material": "conc", "initial_t": 1000}],
                       demand=[{"id": "g", "name": "g", "material": "conc",
                                "base_units_per_year": 1}])

    def paths(a: Args) -> None:
        assert a["dem_path"].shape == (1, 2) and a["price_path"].shape == (2, 2)
        a["dem_path"][0] = [3.0, 5.0]
        a["price_path"][:] = [[0.0, 0.0], [1.0, 2.0]]  # ore, conc in January, February

    k = both(sc, (0, 20), (20, 45), (45, 60), setup=paths)
    np.testing.assert_array_equal(k["served_rec"][0, :31], 3.0)
    np.testing.assert_array_equal(k["served_rec"][0, 31:], 5.0)
    np.testing.assert_allclose(k["val_month"][0], [31 * 10 * 1.0, 29 * 10 * 2.0])
    assert k["dem_rate"][0] == 5.0 and k["price"][1] == 2.0  # February's, as the run ends


def test_demand_short_is_shared_pro_rata() -> None:
    seg = {"name": "g", "material": "conc", "base_units_per_year": 1}
    sc = make_scenario([CONC], [], pools=[{"material": "conc", "initial_t": 30,
                                           "reserve_t": 6}],
                       demand=[{"id": "g1", **seg}, {"id": "g2", **seg}])

    def rates(a: Args) -> None:
        set_demand(a, [10.0, 20.0])

    k = both(sc, (0, 3), setup=rates)
    np.testing.assert_allclose(k["served_rec"][:, 0], [8.0, 16.0])
    np.testing.assert_allclose(k["unmet_rec"][:, 0], [2.0, 4.0])
    np.testing.assert_allclose(k["served_rec"][:, 1], 0.0)
    np.testing.assert_allclose(k["unmet_rec"][:, 1], [10.0, 20.0])
    np.testing.assert_allclose(k["tot"][5, 0], 24.0)


def test_commissioning_ramp_and_retirement() -> None:
    sc = make_scenario([ORE, CONC], [mine(commissioning="2024-01-06", ramp_days=4,
                                          retirement="2024-01-16")], days=20)
    k = both(sc, (0, 20))
    act = k["act_rec"][0]
    np.testing.assert_allclose(act[:5], 0.0)
    np.testing.assert_allclose(act[5:9], [2.5, 5.0, 7.5, 10.0])
    np.testing.assert_allclose(act[9:15], 10.0)
    np.testing.assert_allclose(act[15:], 0.0)
    assert list(k["code_rec"][0, [0, 5, 9, 15]]) == [IDLE, CAPACITY, CAPACITY, IDLE]


def test_outage_records_outage() -> None:
    sc = make_scenario([ORE, CONC], [mine(), mine("mine2")], days=10)

    def down(a: Args) -> None:
        a["avail"][:] = [0.0, 0.4]

    k = both(sc, (0, 10), setup=down)
    np.testing.assert_allclose(k["act_rec"][:, 0], [0.0, 4.0])
    assert list(k["code_rec"][:, 0]) == [OUTAGE, OUTAGE]


def test_derated_plant_bound_by_quota_records_quota() -> None:
    """A plant at 50 % availability whose quota share is smaller still: the quota is the
    smallest limit, so the quota is what bound (module docstring, step 2)."""
    quota = {"id": "q", "plants": ["mine"], "annual_t_reo": {2024: 366}}
    sc = make_scenario([ORE, CONC], [mine()], quotas=[quota], days=5)

    def setup(a: Args) -> None:
        by_hand(a)
        a["avail"][0] = 0.5  # could do 5 t a day = 2.5 t REO
        a["q_avail"][0] = 366.0
        a["q_year_left"][0] = 366.0  # paced: 1 t REO a day = 2 t concentrate

    k = both(sc, (0, 5), setup=setup)
    np.testing.assert_allclose(k["act_rec"][0], 2.0)
    assert np.all(k["code_rec"][0] == QUOTA)


def test_storage_binds_before_input_when_smaller() -> None:
    sc = make_scenario([ORE, CONC, OXIDE], [separator(capacity_tpa=3650)],
                       pools=[{"material": "conc", "initial_t": 20},
                              {"material": "oxide", "max_t": 3}], days=2)
    k = both(sc, (0, 2))
    # input allows 8 (20 t / 2.5), room allows 3: storage binds
    np.testing.assert_allclose(k["act_rec"][0], [3.0, 0.0])
    assert list(k["code_rec"][0]) == [STORAGE, STORAGE]


def test_a_plant_alone_at_its_pools_runs_as_one_sharing_them_with_an_idle_twin() -> None:
    """A plant that no other plant of its level shares a pool with has its shares computed as
    it runs rather than gathered for the level first: the same numbers, to the last bit, as
    when an idle twin (asking for nothing) shares its pools. Storage and input both bind."""

    def chain(twins: bool) -> retwin.Scenario:
        plants = [mine(capacity_tpa=7300), separator(capacity_tpa=7300)]
        if twins:
            plants += [mine("mine2", capacity_tpa=0), separator("sep2", capacity_tpa=0)]
        return make_scenario([ORE, CONC, OXIDE], plants, days=40,
                             pools=[{"material": "conc", "initial_t": 5, "max_t": 30},
                                    {"material": "oxide", "max_t": 12}],
                             demand=[{"id": "g", "name": "g", "material": "oxide",
                                      "base_units_per_year": 1}])

    def demand(a: Args) -> None:
        set_demand(a, [3.0])

    alone, shared = both(chain(False), (0, 40), setup=demand), both(chain(True), (0, 40),
                                                                       setup=demand)
    codes = set(alone["code_rec"].ravel().tolist())
    assert {STORAGE, INPUT} <= codes, codes
    for name in ("act_rec", "code_rec"):
        np.testing.assert_array_equal(alone[name], shared[name][:2])
    for name in ("stock_rec", "short_sum", "served_rec", "tot"):
        np.testing.assert_array_equal(alone[name], shared[name])


def test_levels_run_upstream_first_and_value_is_accounted() -> None:
    sc = make_scenario([ORE, CONC, OXIDE], [separator(), mine()], days=40)  # listed downstream
    k = both(sc, (0, 40))
    sep, mn = 0, 1
    # the mine's output of a day is there for the separator the same day: 10 t conc -> 4 oxide
    np.testing.assert_allclose(k["act_rec"][sep, 0], 4.0)
    assert k["code_rec"][sep, 0] == INPUT
    # value: activity × price of the outputs, per month (Jan has 31 days)
    np.testing.assert_allclose(k["val_month"][mn, 0], 31 * 10 * 2000.0)
    np.testing.assert_allclose(k["val_month"][sep, 0], 31 * 4 * 10000.0)


def test_quota_spans_two_levels() -> None:
    quota = {"id": "q", "plants": ["mine", "sep"], "annual_t_reo": {2024: 366 * 3}}
    sc = make_scenario([ORE, CONC, OXIDE], [mine(), separator()], quotas=[quota], days=10)

    def setup(a: Args) -> None:
        by_hand(a)
        a["q_avail"][0] = 50.0
        a["q_year_left"][0] = 366 * 3.0

    k = both(sc, (0, 10), setup=setup)
    used = (k["act_rec"] * k["qcoef"][:, None]).sum()
    np.testing.assert_allclose(used, 50.0)
    np.testing.assert_allclose(k["q_avail"][0], 0.0, atol=1e-9)


def test_tiny_model_a_year_with_events_state() -> None:
    sc = retwin.load_scenario("tiny")

    def setup(a: Args) -> None:
        by_hand(a)
        a["q_avail"][0] = 7500.0
        a["q_year_left"][0] = 15000.0
        set_demand(a, [5.5])

    def second_batch(a: Args) -> None:
        a["q_avail"][0] += 7500.0
        a["avail"][1] = 0.0  # the separator fails

    def repair(a: Args) -> None:
        a["avail"][1] = 1.0

    k = both(sc, (0, 182), (182, 190, second_batch), (190, 366, repair), setup=setup)
    assert k["act_rec"][1, 182:190].sum() == 0.0
    assert (k["code_rec"] == INPUT).any() and (k["code_rec"] == QUOTA).any()


# --- random small chains: the reference agrees everywhere -------------------------------------


@st.composite
def kernel_case(draw: st.DrawFn) -> tuple[retwin.Scenario, dict[str, Any]]:
    n_mines = draw(st.integers(1, 2))
    n_seps = draw(st.integers(0, 2))
    plants = [mine(f"m{i}", draw(st.floats(0, 20000)), lead_time_days=draw(st.integers(0, 5)))
              for i in range(n_mines)]
    plants += [separator(f"s{i}", draw(st.floats(0, 8000)), draw(st.floats(0.3, 1.0)),
                         lead_time_days=draw(st.integers(0, 12)))
               for i in range(n_seps)]
    pools = [
        {"material": "conc", "initial_t": draw(st.floats(0, 500)),
         "reserve_t": draw(st.floats(0, 100)), "target_t": draw(st.floats(0, 100))},
        {"material": "oxide", "initial_t": draw(st.floats(0, 50)),
         "target_t": draw(st.floats(0, 50))},
    ]
    if draw(st.booleans()):
        pools[1]["max_t"] = pools[1]["initial_t"] + draw(st.floats(1, 300))
    markets = [
        {"id": "conc-out", "material": "conc", "export": {"cap_tpa": draw(st.floats(0, 5000))}},
        {"id": "ox-in", "material": "oxide",
         "import": {"cap_tpa": draw(st.floats(0, 5000)),
                    "lead_time_days": draw(st.integers(0, 15))}},
    ]
    demand = [{"id": "use", "name": "use", "material": "oxide", "base_units_per_year": 1}]
    quotas = []
    if draw(st.booleans()):
        quotas = [{"id": "q", "plants": [f"m{i}" for i in range(n_mines)],
                   "annual_t_reo": {2024: 1000}}]
    sc = retwin.load_scenario(make_tree([ORE, CONC, OXIDE], plants, pools=pools,
                                        markets=markets, demand=demand, quotas=quotas,
                                        days=draw(st.integers(5, 90))))
    # Availability below 1 under a binding quota is in: the quota is then the smaller limit and
    # is recorded (test_derated_plant_bound_by_quota_records_quota, module docstring step 2).
    state = {
        "avail": [draw(st.sampled_from([0.0, 0.5, 1.0])) for _ in plants],
        "q_avail": draw(st.floats(0, 400)),
        "q_year_left": draw(st.floats(0, 2000)),
        "dem_rate": draw(st.floats(0, 30)),
        # paths replayed by the kernel (markets off), or set between calls (markets on)
        "replay": draw(st.booleans()),
        "split": draw(st.integers(0, 4)),
    }
    return sc, state


@given(kernel_case())
def test_kernel_matches_reference_on_random_chains(case: tuple[retwin.Scenario, dict[str, Any]]
                                                   ) -> None:
    sc, state = case

    def setup(a: Args) -> None:
        by_hand(a)
        a["avail"][:] = state["avail"]
        set_demand(a, state["dem_rate"])
        if not state["replay"]:
            for name in ("dem_path", "price_path"):
                a[name] = np.zeros((a[name].shape[0], 0))
        if a["q_avail"].size:
            a["q_avail"][0] = state["q_avail"]
            a["q_year_left"][0] = state["q_year_left"]

    n = sc.horizon_days
    cut = min(n, state["split"])
    both(sc, (0, cut), (cut, n), setup=setup)


def _argument_types(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The Numba types of a call's arguments: what the compiled kernel is specialised on."""
    return tuple(numba.typeof(a) for a in args)


def test_warmup_compiles_the_kernel_the_engine_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up must call the packed kernel with the argument types of the engine's calls, so
    that a run after warm-up compiles nothing; compiled, that is one signature, and a run
    adds none (warm-up's own market run calls it with those types too)."""
    calls: dict[str, list[tuple[Any, ...]]] = {"warmup": [], "engine": []}
    real = flow._advance_packed

    def spy(who: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            calls[who].append(_argument_types(args))
            real(*args)
        return call

    monkeypatch.setattr(flow, "_advance_packed", spy("warmup"))
    retwin.warmup()
    monkeypatch.setattr(engine_model, "advance_packed", spy("engine"))
    retwin.run(make_scenario([ORE, CONC, OXIDE], [mine(), separator()], days=30))
    assert len(set(calls["warmup"])) == 1 and calls["engine"]
    assert set(calls["engine"]) == set(calls["warmup"])
    signatures = getattr(real, "signatures", None)
    if signatures is not None:  # compiled (with NUMBA_DISABLE_JIT=1 the kernel is Python)
        assert calls["warmup"][0] in signatures
        n = len(signatures)
        retwin.run(retwin.load_scenario("tiny"), seed=2)
        assert len(real.signatures) == n


# --- the checked wrapper's errors -------------------------------------------------------------


@pytest.fixture
def kernel_args() -> list[np.ndarray]:
    return [a.copy() for a in chain_model(every_part(30))._args]


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper must refuse before the kernel runs (a compiled kernel does not check
    bounds, so a bad call could write anywhere)."""

    def refuse(*args: Any) -> None:
        raise AssertionError("the kernel was called with arguments the wrapper should refuse")

    monkeypatch.setattr(flow, "_advance_packed", refuse)


def _at(name: str) -> int:
    return ARG_NAMES.index(name)


@pytest.mark.usefixtures("no_kernel")
def test_wrapper_refuses_non_contiguous_array(kernel_args: list[np.ndarray]) -> None:
    i = _at("stock_rec")
    kernel_args[i] = np.asfortranarray(np.zeros((kernel_args[i].shape[0], 30, 2)))[:, :, 0]
    assert not kernel_args[i].flags.c_contiguous
    with pytest.raises(ValueError, match=rf"stock_rec \(argument {i + 2}\) must be C-contiguous"):
        flow.advance(0, 30, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
def test_wrapper_refuses_wrong_dtype(kernel_args: list[np.ndarray]) -> None:
    i = _at("cap_day")
    kernel_args[i] = kernel_args[i].astype(np.float32)
    with pytest.raises(TypeError, match=rf"cap_day \(argument {i + 2}\) has dtype float32"):
        flow.advance(0, 30, *kernel_args)
    kernel_args[i] = kernel_args[i].astype(np.float64)
    j = _at("order")
    kernel_args[j] = kernel_args[j].astype(np.int32)
    with pytest.raises(TypeError, match="dtype int32"):
        flow.advance(0, 30, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
def test_wrapper_refuses_a_list(kernel_args: list[Any]) -> None:
    i = _at("price")
    kernel_args[i] = kernel_args[i].tolist()
    with pytest.raises(TypeError, match=r"price \(argument \d+\) must be a numpy array, got list"):
        flow.advance(0, 30, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
@pytest.mark.parametrize(("d0", "d1"), [(-1, 5), (6, 5)])
def test_wrapper_refuses_bad_day_range(kernel_args: list[np.ndarray], d0: int, d1: int) -> None:
    with pytest.raises(ValueError, match=r"day range \[.*\) must satisfy"):
        flow.advance(d0, d1, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
def test_wrapper_refuses_days_beyond_the_records(kernel_args: list[np.ndarray]) -> None:
    """d1 past the calendar (30 days here) would index past every per-day array."""
    with pytest.raises(ValueError, match="day"):
        flow.advance(0, 31, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
def test_wrapper_refuses_mismatched_shapes(kernel_args: list[np.ndarray]) -> None:
    """A state array shorter than its axis (one pool of two) would be read out of bounds."""
    i = _at("stock")
    kernel_args[i] = kernel_args[i][:1].copy()
    with pytest.raises(ValueError, match=r"^stock has 1 along axis S \(pools\) where "):
        flow.advance(0, 30, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
@pytest.mark.parametrize("spec", contract.FLOW_ARRAYS, ids=lambda s: s.name)
def test_wrapper_refuses_any_array_one_entry_short(kernel_args: list[np.ndarray],
                                                   spec: contract.KernelArray) -> None:
    """Whatever array is too short, the kernel would read or write past it: its axis
    disagrees with another array's, or with what indexes or points into it."""
    i = _at(spec.name)
    assert kernel_args[i].shape[0] > 0, f"the test chain has no {spec.name}: give it one"
    kernel_args[i] = np.ascontiguousarray(kernel_args[i][:-1])
    with pytest.raises(ValueError, match=r"along axis|outside|row pointers|one more than"):
        flow.advance(0, 30, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
@pytest.mark.parametrize("spec", contract.FLOW_ARRAYS, ids=lambda s: s.name)
def test_wrapper_refuses_any_other_dtype(kernel_args: list[np.ndarray],
                                         spec: contract.KernelArray) -> None:
    """Each array must have its declared dtype: any other would be converted when packed (a
    float stock written back into an int array, say) or compile another kernel."""
    i = _at(spec.name)
    other = np.float64 if spec.dtype is not np.float64 else np.int64
    kernel_args[i] = np.zeros(kernel_args[i].shape, other)
    with pytest.raises(TypeError, match=rf"^{spec.name} \(argument {i + 2}\) has dtype "):
        flow.advance(0, 30, *kernel_args)


def _out_of_range(spec: contract.KernelArray, sizes: dict[str, int]) -> list[int]:
    """Values that would send the kernel outside an array."""
    assert spec.values_in is not None
    return [sizes[spec.values_in], -2 if spec.none else -1]


INDEXES = [s for s in contract.FLOW_ARRAYS if s.values_in is not None]
POINTERS = [s for s in contract.FLOW_ARRAYS if s.ptr_into is not None]


@pytest.fixture
def kernel_sizes(kernel_args: list[np.ndarray]) -> dict[str, int]:
    """The size of every axis (those of a run, like the outage calendar's, included)."""
    return contract.check(dict(zip(ARG_NAMES, kernel_args, strict=True)))


@pytest.mark.usefixtures("no_kernel")
@pytest.mark.parametrize("spec", INDEXES, ids=lambda s: s.name)
def test_wrapper_refuses_any_index_out_of_range(kernel_args: list[np.ndarray],
                                                kernel_sizes: dict[str, int],
                                                spec: contract.KernelArray) -> None:
    """The compiled kernel does no bounds checks: every array whose values are positions
    (a pool, a material, a ring slot…) must hold only positions that exist."""
    i = _at(spec.name)
    assert kernel_args[i].size, f"the test chain has no {spec.name}: give it one"
    for bad in _out_of_range(spec, kernel_sizes):
        args = [a.copy() for a in kernel_args]
        args[i][0] = bad
        with pytest.raises(ValueError, match=rf"^{spec.name} holds {bad}, outside "):
            flow.advance(0, 30, *args)


@pytest.mark.usefixtures("no_kernel")
@pytest.mark.parametrize("spec", POINTERS, ids=lambda s: s.name)
@pytest.mark.parametrize("where", ["first", "last", "falling"])
def test_wrapper_refuses_row_pointers_past_their_entries(kernel_args: list[np.ndarray],
                                                         spec: contract.KernelArray,
                                                         where: str) -> None:
    i = _at(spec.name)
    ptr = kernel_args[i]
    assert ptr.size >= 3 and ptr[-1] > 0, "the test chain needs two plants with entries"
    if where == "first":
        ptr[0] = 1
    elif where == "last":
        ptr[-1] += 1
    else:
        ptr[1] = ptr[-1] + 1
    with pytest.raises(ValueError, match=rf"^{spec.name} holds .*; row pointers must rise"):
        flow.advance(0, 30, *kernel_args)


@pytest.mark.usefixtures("no_kernel")
def test_wrapper_refuses_a_wrong_number_of_arrays(kernel_args: list[np.ndarray]) -> None:
    with pytest.raises(TypeError, match=rf"takes {len(ARG_NAMES)} arrays after d0, d1; got "):
        flow.advance(0, 30, *kernel_args[:-1])


def test_wrapper_empty_range_changes_nothing(kernel_args: list[np.ndarray]) -> None:
    """An empty range at the state's day (an un-run model's is day 0) changes nothing; at a
    later day it only applies the outage calendar's changes due by then, as the reference
    does (the separator is down on days 3 and 4)."""
    before = [a.copy() for a in kernel_args]
    flow.advance(0, 0, *kernel_args)
    for a, b in zip(kernel_args, before, strict=True):
        np.testing.assert_array_equal(a, b)
    ref = [a.copy() for a in kernel_args]
    flow.advance(7, 7, *kernel_args)
    reference.advance(7, 7, *ref)
    for name, a, b, r in zip(ARG_NAMES, kernel_args, before, ref, strict=True):
        np.testing.assert_array_equal(a, r, err_msg=name)
        if name not in ("avail", "cal_at"):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert kernel_args[_at("cal_at")][1] == kernel_args[_at("cal_ptr")][2]  # both applied
    assert kernel_args[_at("avail")][1] == 1.0  # up again


# --- relabelling the days a plant held back by its own decision -----------------------------


@given(st.integers(0, 2**32 - 1), st.integers(0, 4), st.integers(1, 5))
def test_relabel_capacity_is_the_per_day_rule(seed: int, n_plants: int, n_months: int) -> None:
    """A capacity-bound day takes its plant-month's reason when that is not 0; every other
    day keeps its code (the rule written per day, with each day's month)."""
    rng = np.random.default_rng(seed)
    month_start = np.concatenate([[0], np.cumsum(rng.integers(0, 4, n_months - 1))])
    n_days = int(month_start[-1]) + int(rng.integers(0, 4))
    month_of_day = np.searchsorted(month_start, np.arange(n_days), side="right") - 1
    code = rng.integers(0, 7, (n_plants, n_days)).astype(np.int8)
    reason = rng.choice(np.array([0, flow.BIND_DEMAND, flow.BIND_MARGIN], np.int8),
                        (n_plants, n_months))
    expected = code.copy()
    for p in range(n_plants):
        for d in range(n_days):
            r = reason[p, month_of_day[d]]
            if r != 0 and code[p, d] == CAPACITY:
                expected[p, d] = r
    flow.relabel_capacity(code, reason, month_start.astype(np.int64))
    np.testing.assert_array_equal(code, expected)
    with pytest.raises(ValueError, match="reason_rec has shape"):
        flow.relabel_capacity(code, reason[:, :-1], month_start.astype(np.int64))
