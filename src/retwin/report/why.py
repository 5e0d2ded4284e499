"""A result directory's headline cards and, for a what-if of several changes, their "why".

The cards of a result directory are :func:`retwin.report.cards.card_values` of its own
tables (``summary``, ``difference``, ``kpis``; the baseline directory's ``kpis`` pairs the
sums by replication). The why is computed, not read: :func:`explain` runs each change alone
(and, with three or more, all but each) through :mod:`retwin.whatif` from the baseline
directory's scenario, with the stored result's seed and replications, and pairs every part
with the baseline's stored replications (common random numbers, no baseline run again).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from retwin.report.cards import attribute, card_values, part_changes
from retwin.storage import read_table

__all__ = ["WhyError", "explain", "result_cards"]

#: ``progress(part, done, total)`` after every replication of every part.
Progress = Callable[[str, int, int], None]


class WhyError(ValueError):
    """The result cannot be taken apart (no baseline directory, or not its baseline)."""


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _maybe(run_dir: Path, kind: str) -> pd.DataFrame | None:
    try:
        return read_table(run_dir, kind)
    except FileNotFoundError:
        return None


def _summary(run_dir: Path) -> pd.DataFrame:
    s = _maybe(run_dir, "summary")
    if s is not None:
        return s
    from retwin.report.figures import _summary as from_kpis

    return from_kpis(run_dir)


def _pairs(run_dir: Path, baseline_dir: Path) -> bool:
    """Whether ``baseline_dir`` is the result's own baseline, run with its seeds."""
    m, bm = _json(run_dir / "manifest.json"), _json(baseline_dir / "manifest.json")
    return (m.get("baseline_hash") is not None
            and m.get("baseline_hash") == bm.get("scenario_hash")
            and all(m.get(k) == bm.get(k) for k in ("seed", "replications")))


def result_cards(run_dir: str | Path, baseline_dir: str | Path | None = None
                 ) -> list[dict[str, Any]]:
    """The headline cards of a result directory (:func:`retwin.report.cards.card_values`),
    paired with ``baseline_dir``'s replications for the sums when it is given."""
    d = Path(run_dir)
    b = None if baseline_dir is None else Path(baseline_dir)
    if b is not None and not _pairs(d, b):
        b = None  # another run: its sums are not paired; the difference table stands in
    return card_values(_summary(d), _maybe(d, "difference"), lambda: read_table(d, "kpis"),
                       None if b is None else (lambda: read_table(b, "kpis")),
                       _json(d / "scenario.json"))


def check(run_dir: str | Path, baseline_dir: str | Path | None) -> tuple[list[Any], int]:
    """The changes of ``run_dir`` and the number of part runs its why takes; raises
    :class:`WhyError` (one line naming the option) when it cannot be taken apart."""
    d = Path(run_dir)
    m = _json(d / "manifest.json")
    changes = list(m.get("changes") or [])
    if not changes:
        raise WhyError(f"--why: {d} has no changes (manifest.json changes is empty): there is "
                       "nothing to attribute")
    if baseline_dir is None:
        raise WhyError("--why needs --baseline DIR: the baseline's result directory, whose "
                       "scenario the changes are applied to one at a time")
    b = Path(baseline_dir)
    bm = _json(b / "manifest.json")
    if m.get("baseline_hash") != bm.get("scenario_hash"):
        raise WhyError(f"--baseline(={b}) is not the baseline of {d}: its scenario_hash "
                       f"{bm.get('scenario_hash')} must equal the result's baseline_hash "
                       f"{m.get('baseline_hash')}")
    for k in ("seed", "replications"):
        if m.get(k) != bm.get(k):
            raise WhyError(f"--baseline(={b}) has {k} {bm.get(k)}; the why pairs by "
                           f"replication, so it must equal the result's {k} {m.get(k)}")
    return changes, 0 if len(changes) == 1 else len(part_changes(changes))


def _relabel(progress: Progress, name: str, _part: str, done: int, total: int) -> None:
    progress(name, done, total)


def explain(run_dir: str | Path, baseline_dir: str | Path | None, *,
            progress: Progress | None = None) -> dict[str, Any]:
    """Take each headline card's Δ apart over the result's changes.

    Returns ``changes`` (as stored) and ``cards`` (:func:`retwin.report.cards.attribute`:
    per card and year ``total``, ``one``, ``marginal``, ``interaction``, ``base``,
    ``mean``). A single change needs no run: its Δ alone is the whole Δ."""
    from retwin import whatif
    from retwin.scenario.load import scenario_hash
    from retwin.scenario.schema import Scenario

    d = Path(run_dir)
    changes, _ = check(d, baseline_dir)
    b = Path(str(baseline_dir))
    m = _json(d / "manifest.json")
    whole = result_cards(d, b)
    if len(changes) == 1:
        return {"changes": changes, "cards": attribute(whole, {("one", 0): whole}, 1)}
    base = Scenario.model_validate(_json(b / "scenario.json"))
    if scenario_hash(base) != m.get("baseline_hash"):  # the stored scenario reads back
        raise WhyError(f"--baseline(={b}): its scenario.json does not read back to the "
                       f"scenario it was run with (hash {scenario_hash(base)})")
    n, seed = int(m["replications"]), int(m["seed"])
    base_kpis = read_table(b, "kpis")
    frames = whatif.kpi_frames(base_kpis, n)
    parts: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for kind, i, subset in part_changes(changes):
        w = whatif.resolve(base, subset)
        name = (f"change {i + 1} alone" if kind == "one" else f"all but change {i + 1}")
        step: whatif.Progress | None = None
        if progress is not None:
            step = functools.partial(_relabel, progress, name)
        res = whatif.run(w, replications=n, seed=seed, baseline=frames, progress=step)
        kpis = pd.concat([f.assign(replication=r) for r, f in enumerate(res.whatif.kpi_frames)],
                         ignore_index=True)
        sc = w.scenario.model_dump(mode="json", by_alias=True)
        parts[(kind, i)] = card_values(res.whatif.summary, res.difference, kpis, base_kpis, sc)
    return {"changes": changes, "cards": attribute(whole, parts, len(changes))}
