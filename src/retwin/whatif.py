"""What-ifs: a scenario with changes, run against its baseline under common random numbers.

The one pipeline behind ``retwin run --change``, the service's runs (:mod:`retwin_service`)
and the points of ``retwin sweep``:

1. :func:`resolve` — the model (a file, a reference model's name, or a scenario), its
   horizon moved to ``end`` if asked (:func:`with_end`), the changes applied once and
   validated once: a :class:`WhatIf`, holding the what-if scenario and its baseline;
2. :func:`run` — the baseline's and the what-if's replications with the same seeds (common
   random numbers), then their :func:`paired_difference`: a :class:`WhatIfResult`, with
   ``notes`` on the what-if's trade, quota and capacity changes that never bound
   (:func:`binding_notes`);
3. :func:`save` — a result directory (:func:`retwin.storage.save_result`: atomic).

A baseline computed earlier can stand in for step 2's baseline runs: pass its replication
set, or its KPI frames (:func:`kpi_frames` of a stored ``kpis`` table).

>>> from retwin import whatif
>>> w = whatif.resolve("tiny", [{"kind": "quota", "quota": "mining", "factor": 0.9}])
>>> res = whatif.run(w, replications=2, seed=1)
>>> res.difference.columns.tolist()
['kpi', 'key', 'year', 'unit', 'mean', 'p5', 'p50', 'p95', 'n']
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retwin.compiled import Compiled
from retwin.engine.run import run_replications
from retwin.errors import ScenarioError
from retwin.kernels.flow import BIND_CAPACITY, BIND_QUOTA
from retwin.results import KPI_KEYS, ReplicationSet, RunResult, paired_difference, take
from retwin.scenario.load import (
    CHANGE_ADAPTER,
    apply_changes,
    load_scenario,
    load_with_baseline,
    scenario_hash,
)
from retwin.scenario.schema import (
    CapacityChange,
    QuotaChange,
    Scenario,
    TradeChange,
)
from retwin.storage import Format, save_result

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "KPI_KEYS",
    "Progress",
    "WhatIf",
    "WhatIfResult",
    "binding_notes",
    "kpi_frames",
    "paired_difference",
    "resolve",
    "run",
    "save",
    "with_end",
]

#: ``progress(part, done, total)`` after every replication; ``part`` is ``baseline``,
#: ``whatif`` or (a scenario without a baseline) ``run``. It may raise to stop the runs.
Progress = Callable[[str, int, int], None]


def with_end(scenario: Scenario, end: dt.date | str | None) -> Scenario:
    """``scenario`` with its last simulated day moved to ``end`` (itself when ``end`` is
    ``None`` or its own end). A bad end raises :class:`~retwin.errors.ScenarioError` naming
    ``end``."""
    if end is None:
        return scenario
    value = end.isoformat() if isinstance(end, dt.date) else str(end)
    if value == scenario.end.isoformat():
        return scenario
    try:
        return apply_changes(scenario, [{"kind": "parameter", "path": "end", "value": value}])
    except ScenarioError as exc:
        raise ScenarioError([("end", m) for _, m in exc.problems]) from None


def _as_json(change: Any) -> Any:
    """A change as the mapping it is written as (typed changes are dumped by alias)."""
    dump = getattr(change, "model_dump", None)
    return dump(by_alias=True, mode="json") if dump is not None else change


@dataclass(frozen=True, eq=False)
class WhatIf:
    """A resolved what-if: the scenario to run, and the baseline it is compared with.

    ``baseline`` is ``None`` for a plain run (nothing to compare with). ``changes`` are the
    changes as given (mappings), for the record. Everything here is plain data: it travels
    to worker processes and clusters as it is, and is never validated again there.
    """

    scenario: Scenario
    baseline: Scenario | None = None
    changes: tuple[Any, ...] = ()

    @cached_property
    def scenario_hash(self) -> str:
        return scenario_hash(self.scenario)

    @cached_property
    def baseline_hash(self) -> str | None:
        return None if self.baseline is None else scenario_hash(self.baseline)

    def baseline_only(self) -> WhatIf:
        """The baseline as a plain run (to compute, or store, it alone)."""
        if self.baseline is None:
            raise ValueError("this what-if has no baseline")
        return WhatIf(self.baseline)


def resolve(source: str | Path | Scenario, changes: Iterable[Any] = (), *,
            end: dt.date | str | None = None) -> WhatIf:
    """Load the model, move its end, apply the changes: what :func:`run` runs.

    Parameters
    ----------
    source
        A scenario file, a reference model's name (``baotou-2024``), or a scenario.
    changes
        What-if changes (mappings or typed :data:`~retwin.scenario.Change`); with any, the
        baseline is the model without them.
    end
        The last simulated day of both the baseline and the what-if (default: the model's).

    A scenario *file* may hold ``changes:`` of its own: without other changes, it is
    compared with the same file without them. Raises :class:`~retwin.errors.ScenarioError`
    (one line per problem, naming the field) for a bad model, end or change.
    """
    given = tuple(_as_json(c) for c in changes)
    if isinstance(source, Scenario):
        base = with_end(source, end)
        plain = None
    elif given:
        base = with_end(load_scenario(source), end)
        plain = None
    else:  # the file read once, with its own changes and without them
        full, without = load_with_baseline(source)
        base = with_end(full, end)
        plain = None if without is None else with_end(without, end)
    if given:
        return WhatIf(apply_changes(base, given), base, given)
    if plain is not None and scenario_hash(plain) != scenario_hash(base):
        return WhatIf(base, plain)  # a what-if file: its own changes against the model
    return WhatIf(base)


def kpi_frames(kpis: pd.DataFrame, replications: int | None = None) -> list[pd.DataFrame]:
    """Split a tidy ``kpis`` table (``kpi, key, year, value, unit, replication``) into one
    KPI frame per replication; with ``replications``, exactly that many (an empty frame for
    a replication without rows)."""
    cols = ["kpi", "key", "year", "value", "unit"]
    groups = {int(r): g[cols].reset_index(drop=True)  # type: ignore[arg-type]  # stubs: any key
              for r, g in kpis.groupby("replication", sort=True)}
    if replications is None:
        return list(groups.values())
    empty = kpis[cols].iloc[:0].reset_index(drop=True)
    return [groups.get(r, empty) for r in range(replications)]


@dataclass(frozen=True, eq=False)
class WhatIfResult:
    """What :func:`run` computed.

    ``baseline`` is the baseline's replication set when it was run (or given) here, ``None``
    when only its KPI frames were given or there is no baseline; ``difference`` (what-if −
    baseline, paired) is ``None`` only without a baseline; ``notes`` say which of the
    what-if's changes did not bind (computed from the what-if's own runs, so a baseline
    given as KPI frames gets them too).
    """

    spec: WhatIf
    whatif: ReplicationSet
    baseline: ReplicationSet | None
    difference: pd.DataFrame | None
    #: Plain sentences about the answer: each trade, quota or capacity change of the
    #: what-if that bound on no day of any of its replications (:func:`binding_notes`).
    notes: tuple[str, ...] = ()

    @property
    def scenario_hash(self) -> str:
        return self.spec.scenario_hash

    @property
    def baseline_hash(self) -> str | None:
        return self.spec.baseline_hash

    def baseline_only(self) -> WhatIfResult | None:
        """The baseline's runs as a plain result (to store it alone), if they are here."""
        if self.baseline is None:
            return None
        return WhatIfResult(self.spec.baseline_only(), self.baseline, None, None)


# --- changes that do not bind ---------------------------------------------------------------

#: A change whose binding :func:`binding_notes` checks.
Noted = TradeChange | QuotaChange | CapacityChange

#: Relative tolerance of "a flow reached its cap" (the kernel ships the cap exactly, up to
#: rounding of the contract and spot parts).
REACHED_RTOL = 1e-6


def _noted(w: WhatIf) -> list[tuple[int, Noted]]:
    """The what-if's own trade, quota and capacity changes, each with its index in the list
    it was given in (``changes``, or a what-if file's own ``changes`` when none were given).
    """
    if w.baseline is None:
        return []
    if w.changes:
        typed = [CHANGE_ADAPTER.validate_python(c) for c in w.changes]
    else:  # a what-if file: its changes are the what-if's beyond the baseline's
        typed = list(w.scenario.changes[len(w.baseline.changes):])
    return [(i, ch) for i, ch in enumerate(typed)
            if isinstance(ch, TradeChange | QuotaChange | CapacityChange)]


def _window(c: Compiled, ch: Noted, *, to_year_end: bool = False) -> slice:
    """The days of a run of ``c`` on which ``ch`` is in force (a quota change: through the
    end of the last year whose releases it changes)."""
    sc = c.scenario
    start = ch.start or sc.start
    end = ch.end or sc.end
    if to_year_end:
        end = end.replace(month=12, day=31)
    days = c.dates.astype("datetime64[D]")
    d0 = int(np.searchsorted(days, np.datetime64(start, "D")))
    d1 = int(np.searchsorted(days, np.datetime64(end, "D"), side="right"))
    return slice(d0, max(d0, d1))


def _trade_cap_day(c: Compiled, market: str, side: str) -> np.ndarray:
    """(D,) the market's cap on ``side`` per day (t/day) with every trade change of the
    scenario in force, in the order the engine applies them."""
    k = c.market_ids.index(market)
    cap = np.full(c.n_days, float((c.imp_cap_tpa if side == "import" else c.exp_cap_tpa)[k]))
    for ch in c.scenario.changes:
        if isinstance(ch, TradeChange) and ch.market == market and ch.side == side:
            win = _window(c, ch)
            cap[win] = ch.cap_tpa if ch.cap_tpa is not None else cap[win] * ch.factor
    return cap / 365.0


def _plants_of(c: Compiled, ch: QuotaChange | CapacityChange) -> np.ndarray:
    if isinstance(ch, QuotaChange):
        return np.flatnonzero(c.topology.plant_quota == c.quota_ids.index(ch.quota))
    return np.array([p for p, pid in enumerate(c.plant_ids)
                     if pid == ch.plant or c.plant_stage[p] == ch.stage], np.int64)


def _reach(r: RunResult, ch: Noted) -> tuple[bool, float]:
    """Whether ``ch`` bound on some day of run ``r``, and (trade) the largest share of the
    cap the flow reached while it was in force."""
    c = r.compiled
    if isinstance(ch, TradeChange):
        win = _window(c, ch)
        cap = _trade_cap_day(c, ch.market, ch.side)[win]
        flow = (r.imports if ch.side == "import" else r.exports)[c.market_ids.index(ch.market),
                                                                 win]
        if not len(cap):
            return False, 0.0
        bound = bool(np.any(flow >= cap * (1.0 - REACHED_RTOL)))
        ok = cap > 0
        peak = float(np.max(flow[ok] / cap[ok])) if ok.any() else 0.0
        return bound, peak
    if isinstance(ch, QuotaChange):
        win = _window(c, ch, to_year_end=True)
        return bool(np.any(r.binding[_plants_of(c, ch), win] == BIND_QUOTA)), 0.0
    win = _window(c, ch)
    plants = _plants_of(c, ch)
    # at its ceiling; or in service with no capacity left (a ceiling of 0 holds the plant
    # idle: the kernel calls those days idle, not capacity-bound)
    at_ceiling = r.binding[plants, win] == BIND_CAPACITY
    closed = (r.nameplate_days[plants, win] <= 0) & (c.ramp[plants, win] > 0)
    return bool(np.any(at_ceiling | closed)), 0.0


def _what(ch: Noted) -> str:
    """A change in a few words (``export cap on market magnet_out``)."""
    if isinstance(ch, TradeChange):
        return f"{ch.side} cap on market {ch.market}"
    if isinstance(ch, QuotaChange):
        return f"quota {ch.quota}"
    return f"capacity of plant {ch.plant}" if ch.plant else f"capacity of the {ch.stage} stage"


def _loosens(ch: Noted, base: Scenario | None) -> bool:
    """Whether ``ch`` raises the limit it changes (a cap, a quota, a capacity) rather than
    lowering it: its remaining room then says that part of the raise went unused, not that the
    change had no effect (the limit it replaced may well have bound)."""
    if ch.factor is not None:
        return ch.factor > 1.0
    if base is None:
        return False
    if isinstance(ch, TradeChange):
        k = next((m for m in base.markets if m.id == ch.market), None)
        side = None if k is None else (k.import_ if ch.side == "import" else k.export)
        return side is not None and ch.cap_tpa is not None and ch.cap_tpa > side.cap_tpa
    if isinstance(ch, QuotaChange):
        if ch.delta_t_reo is not None:
            return ch.delta_t_reo > 0
        q = next((q for q in base.quotas if q.id == ch.quota), None)
        return (q is not None and ch.set_t_reo is not None
                and ch.set_t_reo > max(q.amount_for(y) for y in range(base.start.year,
                                                                      base.end.year + 1)))
    if ch.delta_tpa is not None:
        return ch.delta_tpa > 0
    plants = [p for p in base.plants if p.id == ch.plant or p.stage == ch.stage]
    return bool(plants) and ch.set_tpa is not None and ch.set_tpa > max(
        p.capacity_tpa for p in plants)


def _note(i: int, ch: Noted, n_runs: int, peak: float, loosens: bool = False) -> str:
    runs = "the what-if's run" if n_runs == 1 else f"each of the what-if's {n_runs} replications"
    if loosens:  # a raise not used up: the old limit may have bound, the new one does not
        head = f"changes[{i}] ({_what(ch)}) is a raise not used up"
        limit = "the raised cap" if isinstance(ch, TradeChange) else "the raised limit"
    else:
        head = f"changes[{i}] ({_what(ch)}) does not bind"
        limit = "the cap"
    if isinstance(ch, TradeChange):
        flows = "exports" if ch.side == "export" else "imports"
        return (f"{head}: {flows} stayed below {limit} on every day it was in force, in "
                f"{runs} (at most {peak:.0%} of it).")
    if isinstance(ch, QuotaChange):
        return (f"{head}: no plant under the quota was held by it on any day of the years "
                f"it changes, in {runs}.")
    plants = f"plant {ch.plant}" if ch.plant else f"the {ch.stage} stage's plants"
    return (f"{head}: {plants} never reached the capacity ceiling while it was in force, "
            f"in {runs}.")


class _Binding:
    """Watches a what-if's runs (``see``) for whether each of its trade, quota and capacity
    changes bound; ``notes`` names those that never did."""

    def __init__(self, w: WhatIf) -> None:
        self.changes = _noted(w)
        self.loosens = [_loosens(ch, w.baseline) for _, ch in self.changes]
        self.bound = [False] * len(self.changes)
        self.peak = [0.0] * len(self.changes)
        self.runs = 0

    def see(self, r: RunResult) -> None:
        self.runs += 1
        for j, (_, ch) in enumerate(self.changes):
            if not self.bound[j]:
                bound, peak = _reach(r, ch)
                self.bound[j] = bound
                self.peak[j] = max(self.peak[j], peak)

    def notes(self) -> tuple[str, ...]:
        return tuple(_note(i, ch, self.runs, peak, loose) for (i, ch), bound, peak, loose
                     in zip(self.changes, self.bound, self.peak, self.loosens, strict=True)
                     if not bound)


def binding_notes(w: WhatIf, runs: Iterable[RunResult]) -> tuple[str, ...]:
    """A plain sentence for each trade (import or export cap), quota or capacity change of
    ``w`` that bound on no day of any of ``runs`` (the what-if's runs):

    * a trade change binds on a day its market's flow on that side reaches the cap then in
      force (every trade change of the scenario applied);
    * a quota change binds on a day one of the quota's plants is held by the quota (its
      binding constraint), from its start to the end of the last year it changes;
    * a capacity change binds on a day one of its plants runs at its capacity ceiling (the
      binding constraint ``capacity``: not below it by its own decision, markets on), or is
      in service with a ceiling of 0.

    Where changes of one kind overlap on one market or plant, each is judged by the cap or
    ceiling then in force (all of them applied).

    Each note names the change as ``changes[i]``, its index in the changes given (or in a
    what-if file's own changes).
    """
    b = _Binding(w)
    for r in runs:
        b.see(r)
    return b.notes()


#: Sorted key columns of recent baseline KPI frames (every what-if on one model is paired
#: with the same stored baseline): ``id(frame)`` -> (the frame, weakly; its key columns as
#: :func:`_key_columns` gives them; the order that sorts them).
_KEY_ORDERS: dict[int, tuple[weakref.ref[Any], list[Any], np.ndarray]] = {}
_KEY_ORDERS_KEPT = 8


def _key_columns(f: pd.DataFrame) -> list[Any]:
    """``f``'s KPI key columns, each as the Arrow data pandas holds it in (text) or as
    numpy (numbers): two frames' keys are compared without making a Python string of each
    (:func:`_equal_keys`)."""
    out: list[Any] = []
    for c in KPI_KEYS:
        a = f[c].array
        arrow = getattr(a, "__arrow_array__", None)
        out.append(a.to_numpy() if arrow is None else arrow())
    return out


def _key_order(f: pd.DataFrame) -> tuple[list[Any], np.ndarray] | None:
    """The KPI key columns of frame ``f`` (:func:`_key_columns`) and the order that sorts
    them as :func:`paired_difference`'s outer merge does; ``None`` when a key is missing or
    repeated (then the merge's own rules apply)."""
    hit = _KEY_ORDERS.get(id(f))
    if hit is not None and hit[0]() is f and _equal_keys(f, hit[1]):
        return hit[1], hit[2]
    if bool(f[KPI_KEYS].isna().to_numpy().any()):
        return None
    keys = [f[c].to_numpy() for c in KPI_KEYS]
    order = np.lexsort(keys[::-1])
    if len(order) > 1 and not np.column_stack(
            [k[order][1:] != k[order][:-1] for k in keys]).any(axis=1).all():
        return None
    if len(_KEY_ORDERS) >= _KEY_ORDERS_KEPT:
        _KEY_ORDERS.clear()
    columns = _key_columns(f)
    _KEY_ORDERS[id(f)] = (weakref.ref(f), columns, order)
    return columns, order


def _aligned_order(whatif: Sequence[pd.DataFrame], baseline: Sequence[pd.DataFrame]
                   ) -> np.ndarray | None:
    """The row order of :func:`paired_difference` (its outer merge sorts the keys) when
    every frame has the same KPI rows in the same order, each key once; else ``None``."""
    if not whatif or len(whatif) != len(baseline):
        return None
    known = _key_order(baseline[0])
    if known is None:
        return None
    keys, order = known
    for f in (*whatif, *baseline[1:]):
        if len(f) != len(order) or not _equal_keys(f, keys):
            return None
    return order


def _equal_keys(f: pd.DataFrame, keys: list[Any]) -> bool:
    """Whether ``f``'s KPI key columns hold ``keys`` (:func:`_key_columns` of a frame
    with no missing key): the same values of the same types."""
    for a, b in zip(_key_columns(f), keys, strict=True):
        if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
            return False
        if isinstance(a, np.ndarray):
            try:
                if a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
            except TypeError:  # pd.NA compared: a key is missing
                return False
        elif not a.equals(b):  # Arrow: a missing value equals no value
            return False
    return True


def _difference(whatif: Sequence[pd.DataFrame], baseline: Sequence[pd.DataFrame]
                ) -> pd.DataFrame:
    """:func:`paired_difference`, the same frame, without a merge when the what-if's and
    the baseline's KPI frames have the same rows (the usual case: one model, other
    numbers). A missing value counts as 0, as there."""
    import pandas as pd

    order = _aligned_order(whatif, baseline)
    if order is None:
        return paired_difference(whatif, baseline)

    def values(f: pd.DataFrame) -> np.ndarray:
        v = f["value"].to_numpy(dtype=np.float64)[order]
        return np.where(np.isnan(v), 0.0, v)

    diffs = np.stack([values(a) - values(b) for a, b in zip(whatif, baseline, strict=True)])
    first = whatif[0]
    cols: dict[str, Any] = {c: take(first[c].array, order) for c in KPI_KEYS}
    cols["mean"] = diffs.mean(axis=0)
    for q in (5, 50, 95):
        cols[f"p{q}"] = np.percentile(diffs, q, axis=0)
    cols["n"] = np.full(len(order), len(diffs), dtype=np.int64)
    return pd.DataFrame(cols)


def _replications(sc: Scenario, n: int, seed: int, progress: Progress | None,
                  part: str, each: Callable[[RunResult], None] | None = None
                  ) -> ReplicationSet:
    if progress is None:
        return run_replications(sc, n, seed=seed, each=each)
    return run_replications(sc, n, seed=seed, each=each,
                            progress=lambda i, total: progress(part, i, total))


def run(w: WhatIf, *, replications: int = 1, seed: int = 0,
        baseline: ReplicationSet | Sequence[pd.DataFrame] | None = None,
        progress: Progress | None = None) -> WhatIfResult:
    """Run the baseline (unless given) and the what-if, ``replications`` each with the same
    seeds, and their paired difference.

    ``baseline``, when given, must come from the same baseline scenario, seed and
    replications (a stored result of :func:`run` on :meth:`WhatIf.baseline_only`).
    """
    if baseline is not None and w.baseline is None:
        raise ValueError("a baseline was given for a what-if without one")
    base_set: ReplicationSet | None = None
    base_frames: list[pd.DataFrame] | None = None
    if isinstance(baseline, ReplicationSet):
        base_set, base_frames = baseline, baseline.kpi_frames
    elif baseline is not None:
        base_frames = list(baseline)
    if w.baseline is not None and base_frames is None:
        base_set = _replications(w.baseline, replications, seed, progress, "baseline")
        base_frames = base_set.kpi_frames
    part = "run" if w.baseline is None else "whatif"
    binding = _Binding(w)
    res = _replications(w.scenario, replications, seed, progress, part, binding.see)
    if base_set is not None and base_set.seeds != res.seeds:
        raise ValueError("a difference needs the baseline's seeds and replications")
    diff = None if base_frames is None else _difference(res.kpi_frames, base_frames)
    return WhatIfResult(w, res, base_set, diff, binding.notes())


def save(result: WhatIfResult, out_dir: str | Path, *, fmt: Format = "parquet",
         overwrite: bool = True, baseline_ref: str | None = None,
         defer: Iterable[str] = ()) -> Path:
    """Write the what-if's result directory: its tables, the difference, and a manifest
    naming the changes, the baseline (``baseline_ref``, default the baseline scenario's
    hash) and the notes; the tables named in ``defer`` are left for later. See
    :func:`retwin.storage.save_result`."""
    ref = baseline_ref if baseline_ref is not None else result.baseline_hash
    return save_result(result.whatif, out_dir, fmt=fmt, difference=result.difference,
                       baseline_hash=ref, changes=list(result.spec.changes),
                       overwrite=overwrite, notes=list(result.notes), defer=defer)
