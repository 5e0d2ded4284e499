"""The planner's page's compact answers: what the first screen of a run draws, and no more.

``GET /api/v1/runs/{id}/summary`` is a run's status and, once it is done, its headline cards
(the handful of KPIs a planner reads, each with the what-if value, Δ and Δ % against the
baseline, the p5–p95 band, the unit and one value a year for a sparkline), its notes, its
targets beside the baseline's, the bottleneck per stage and year of both, and the first year a
change acts. ``GET /api/v1/runs/{id}/panels/{name}`` holds the monthly series of one panel of
charts (``stages``: output per stage; ``markets``: prices, margins and stock cover). The full
tables stay where they are (``/kpis``, ``/series``, ``/flows``) and the page asks for them only
when the planner opens them.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from fastapi import APIRouter, HTTPException, Response
from starlette.concurrency import run_in_threadpool

from retwin.report.cards import (
    CARDS,
    Card,
    attribute,
    card_values,
    focus_year,
    part_changes,
)
from retwin_service import tables
from retwin_service.deps import OwnerDep, ServiceDep
from retwin_service.render import dumps
from retwin_service.routes.runs import (
    RunId,
    Wait,
    _done_run,
    _settled,
    _summary,
    _wait,
    complete_tables,
)
from retwin_service.schemas import ErrorPublic, ValidationErrorPublic

__all__ = ["CARDS", "Card", "cards", "focus_year", "router"]

router = APIRouter(tags=["page"], responses={
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API token."},
    403: {"model": ErrorPublic, "description": (
        "The service has no API token and the caller is not on its machine.")},
    404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 410: {"model": ErrorPublic},
    422: {"model": ValidationErrorPublic, "description": "The request does not validate."}})



async def result_answer(run_id: str, body: Callable[[], Any]) -> Response:
    """``body()`` computed in a worker thread and sent as JSON; a stored result gone from the
    data folder (:class:`~retwin_service.tables.ResultMissing`) is a 410."""
    def build() -> Response:
        try:
            return Response(dumps(body()), media_type="application/json")
        except tables.ResultMissing:
            raise HTTPException(410, f"the result of run {run_id!r} is gone") from None

    return await run_in_threadpool(build)


def _f(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


def cards(root: Path, key: str, base_key: str | None,
          scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline cards of a stored result (and its baseline's, for the difference):
    :func:`retwin.report.cards.card_values` of its tables, the cards ``retwin report`` shows.

    A card of one KPI row takes its numbers from the result's summary and difference tables,
    so they are the numbers of ``GET /runs/{id}`` exactly. A sum is taken per replication
    from both runs' replication tables and paired by replication (common random numbers)."""
    files = tables.manifest(root, key).get("files", [])
    diff = tables.read(root, key, "difference") if "difference.parquet" in files else None
    return card_values(
        tables.read(root, key, "summary"), diff, lambda: tables.read(root, key, "kpis"),
        None if base_key is None else (lambda: tables.read(root, base_key, "kpis")), scenario)


def _bottlenecks(root: Path, key: str) -> list[dict[str, Any]]:
    return tables.records(tables.read(root, key, "bottlenecks"))


def _targets(root: Path, key: str, base_key: str | None) -> list[dict[str, Any]]:
    rows = tables.records(tables.read(root, key, "targets"))
    base = ({(r["target"], r["year"]): r for r in
             tables.records(tables.read(root, base_key, "targets"))} if base_key else {})
    for r in rows:
        b = base.get((r["target"], r["year"]))
        r["baseline_value"] = None if b is None else b["value"]
        r["baseline_attained"] = None if b is None else b["attained"]
    return rows


def stored(root: Path, key: str) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """A stored result's manifest, its baseline's key (``None`` when it has none, or the
    baseline's result is gone) and its scenario."""
    m = tables.manifest(root, key)
    base_key = m.get("baseline_hash")
    if base_key and not (root / str(base_key) / "manifest.json").is_file():
        base_key = None
    scenario = json.loads((root / key / "scenario.json").read_text(encoding="utf-8"))
    return m, (str(base_key) if base_key else None), scenario


def page_result(root: Path, key: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
    """What the first screen of a finished run draws."""
    m, base_key, scenario = stored(root, key)
    cs = cards(root, key, base_key, scenario)
    years = cs[0]["years"] if cs else sorted(
        int(y) for y in tables.read(root, key, "summary")["year"].unique())
    return {
        "scenario": m["scenario"], "start": m["start"], "end": m["end"], "seed": m["seed"],
        "replications": m["replications"],
        "mass_balance_closes": bool(m.get("mass_balance_closes", True)),
        "notes": list(m.get("notes", [])), "years": years,
        "focus_year": focus_year(changes, years), "baseline": base_key is not None,
        "cards": cs, "targets": _targets(root, key, base_key),
        "bottlenecks": _bottlenecks(root, key),
        "baseline_bottlenecks": _bottlenecks(root, base_key) if base_key else None,
    }


@router.get("/runs/{run_id}/summary", response_model=dict[str, Any])
async def read_run_summary(run_id: RunId, service: ServiceDep, owner: OwnerDep,
                           wait: Wait = 0.0) -> Response:
    """A run's status and, once done, what the planner's page shows first: the headline
    cards (what-if value, Δ and Δ % against the baseline, p5–p95, unit, one value a year),
    the notes, the targets beside the baseline's, the bottlenecks of both, and ``focus_year``,
    the first year a change acts. A few kilobytes, where ``GET /runs/{id}`` holds every KPI."""
    rec = await _settled(service, await run_in_threadpool(service.registry.get_run, run_id,
                                                          owner))
    rec = await _wait(service, rec, wait)
    root = Path(service.settings.results_dir)

    def build() -> Response:
        result = None
        if rec.status == "done":
            try:
                result = page_result(root, rec.request_hash,
                                     list(rec.request.get("changes") or []))
            except tables.ResultMissing:
                raise HTTPException(410, f"the result of run {run_id!r} is gone") from None
        body = {**_summary(rec), "request": rec.request, "error": rec.error, "result": result}
        return Response(dumps(body), media_type="application/json")

    return await run_in_threadpool(build)


# --- panels of monthly series ----------------------------------------------------------------

PanelName = Literal["stages", "markets"]

#: Significant digits kept in a panel's numbers: a chart needs no more, and the answer stays
#: small (a finished run's first screen is under 100 KB).
DIGITS = 4


def round_digits(values: Iterable[Any]) -> list[float | None]:
    """``values`` to :data:`DIGITS` significant digits, a missing one as ``None``."""
    out: list[float | None] = []
    for v in values:
        f = _f(v)
        out.append(None if f is None else float(f"{f:.{DIGITS}g}"))
    return out


def _monthly(root: Path, key: str) -> pd.DataFrame:
    return tables.read(root, key, "monthly")


def _stage_series(root: Path, key: str, plants: dict[str, str],
                  bands: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Each stage's monthly mean output, and (with ``bands``) its p5–p95 band across the
    replications' stage totals (:func:`retwin_service.tables.stage_output`; ``None`` for
    one replication, or a result stored without that band)."""
    df = tables.stage_output(root, key, plants)
    bands = (bands and int(tables.manifest(root, key).get("replications", 1)) > 1
             and bool(df["p5"].notna().all()))
    means, band = grouped_series(df, "stage", bands)
    return means, band if bands else None


def grouped_series(df: pd.DataFrame, by: str, bands: bool
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each group's (``by``: stage, plant id) monthly ``mean`` and, with ``bands``, its
    ``p5``/``p95``, rounded to :data:`DIGITS` significant digits."""
    means: dict[str, Any] = {}
    band: dict[str, Any] = {}
    for name, s in df.groupby(by, sort=False):
        means[str(name)] = round_digits(s["mean"])
        if bands:
            band[str(name)] = {"p5": round_digits(s["p5"]), "p95": round_digits(s["p95"])}
    return means, band


def result_months(root: Path, key: str) -> list[str]:
    """The months (``YYYY-MM``) of a stored result's monthly series."""
    mon = _monthly(root, key)
    return [pd.Timestamp(m).strftime("%Y-%m") for m in sorted(mon["month"].unique())]


def panel(root: Path, key: str, name: str) -> dict[str, Any]:
    """A panel's monthly series: the what-if's and the baseline's."""
    _, base_key, scenario = stored(root, key)
    body: dict[str, Any] = {"name": name, "months": result_months(root, key),
                            "baseline": base_key is not None}
    if name == "stages":
        stages = {p["id"]: p["stage"] for p in scenario["plants"]}
        units: dict[str, str] = {}
        mats = {x["id"]: x for x in scenario["materials"]}
        for p in scenario["plants"]:
            unit = mats.get(next(iter(p["recipe"]["outputs"])), {}).get("unit", "t")
            units[p["stage"]] = unit if units.get(p["stage"], unit) == unit else "mixed"
        body["stages"] = list(dict.fromkeys(p["stage"] for p in scenario["plants"]))
        body["units"] = units
        body["whatif"], body["bands"] = _stage_series(root, key, stages)
        body["base"] = (_stage_series(root, base_key, stages, bands=False)[0] if base_key
                        else None)
        return body
    # markets: monthly prices (with bands) of the materials a planner watches, and the
    # annual margin per stage and stock cover per material from the KPIs
    mats = {x["id"]: x for x in scenario["materials"]}
    watch = [mid for mid in ("prnd_oxide", "prnd_metal", "dy_oxide", "tb_oxide",
                             "ndfeb_magnet", "la_oxide", "ce_oxide") if mid in mats]

    def prices(k: str, bands: bool) -> dict[str, Any]:
        mon = _monthly(root, k)
        pr = mon[(mon["kind"] == "price") & mon["id"].astype(str).isin(watch)]
        out: dict[str, Any] = {}
        for mid, s in pr.groupby(pr["id"].astype(str)):
            s = s.sort_values("month")
            out[str(mid)] = {"mean": round_digits(s["mean"])}
            if bands:  # the what-if's band is drawn; the baseline is a dashed mean
                out[str(mid)].update(p5=round_digits(s["p5"]), p95=round_digits(s["p95"]))
        return out

    def annual(k: str, kpi: str) -> dict[str, Any]:
        s = tables.read(root, k, "summary")
        s = s[s["kpi"] == kpi]
        out: dict[str, Any] = {}
        for key_, r in s.groupby("key", observed=True):
            out[str(key_)] = {"mean": round_digits(r.sort_values("year")["mean"])}
        return out

    summ = tables.read(root, key, "summary")
    body["years"] = sorted(int(y) for y in summ["year"].unique())
    body["materials"] = {mid: {"name": mats[mid].get("name", mid),
                               "name_zh": mats[mid].get("name_zh", ""),
                               "unit": f"CNY/{mats[mid].get('unit', 'unit')}"} for mid in watch}
    body["whatif"] = {"price": prices(key, True), "margin": annual(key, "margin.stage"),
                      "cover": {k: v for k, v in annual(key, "cover.material").items()
                                if k in watch}}
    if base_key:
        body["base"] = {"price": prices(base_key, False),
                        "margin": annual(base_key, "margin.stage"),
                        "cover": {k: v for k, v in annual(base_key, "cover.material").items()
                                  if k in watch}}
    else:
        body["base"] = None
    return body


@router.get("/runs/{run_id}/panels/{name}", response_model=dict[str, Any])
async def read_run_panel(run_id: RunId, name: PanelName, service: ServiceDep,
                         owner: OwnerDep) -> Response:
    """Monthly series of one chart panel of a finished run, the baseline's beside:
    ``stages`` (output per stage, each in its unit, with ``bands``: the what-if's p5–p95
    across the replications' stage totals, ``null`` for one replication) or ``markets``
    (prices with p5–p95, margin per stage, stock cover). Numbers are kept to 4 significant
    digits."""
    rec = await _done_run(service, run_id, owner, "charts")
    root = Path(service.settings.results_dir)
    await complete_tables(service, rec.request_hash, baseline=True)
    return await result_answer(run_id, lambda: panel(root, rec.request_hash, name))


# --- why: the difference of each headline card, change by change ----------------------------

#: Most changes a "why" takes apart (each needs one or two runs of its own).
WHY_MAX_CHANGES = 8


def _part_bodies(request: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """The runs a "why" needs (:func:`retwin.report.cards.part_changes`): each change alone
    (``one``) and, with three changes or more, every change but one (``without``); the same
    model, horizon, seed and replications, so every part is paired with the same baseline
    (common random numbers)."""
    common: dict[str, Any] = {k: request[k] for k in ("model", "seed", "replications", "end")
                              if k in request}
    return [(kind, i, {**common, "changes": ch})
            for kind, i, ch in part_changes(request.get("changes") or [])]


def why(root: Path, key: str, parts: list[tuple[str, int, str]],
        n_changes: int) -> list[dict[str, Any]]:
    """Attribute each headline card's Δ to the changes
    (:func:`retwin.report.cards.attribute`): ``one[i]`` is the Δ of change ``i`` alone;
    ``marginal[i]`` is the Δ it adds to all the others; ``interaction`` is what the changes
    do together beyond the sum of their ``one``. All of it per year, every run paired with
    the same baseline."""
    m = tables.manifest(root, key)
    scenario = json.loads((root / key / "scenario.json").read_text(encoding="utf-8"))
    whole = cards(root, key, m.get("baseline_hash"), scenario)
    got: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for kind, i, part_key in parts:
        sc = json.loads((root / part_key / "scenario.json").read_text(encoding="utf-8"))
        pm = tables.manifest(root, part_key)
        got[(kind, i)] = cards(root, part_key, pm.get("baseline_hash"), sc)
    return attribute(whole, got, n_changes)


@router.post("/runs/{run_id}/why", response_model=dict[str, Any],
             responses={429: {"model": ErrorPublic}})
async def explain_run(run_id: RunId, service: ServiceDep, owner: OwnerDep,
                      wait: Wait = 0.0) -> Response:
    """Why the headline cards moved: the what-if's changes taken one at a time (and, with
    three or more, all but one), each a run of its own with the same seed and replications
    (stored, and reused when asked again), computed like any run through ``retwin.whatif``
    with common random numbers. ``status`` is ``running`` until every part is done (ask again,
    or wait up to ``wait`` seconds); then ``cards`` holds, per headline card and year, the
    whole Δ, each change's Δ alone (``one``), what it adds to the others (``marginal``) and
    the ``interaction`` (the whole Δ less the sum of ``one``)."""
    from retwin_service.routes.runs import create_run
    from retwin_service.schemas import WhatIfRequest

    rec = await _settled(service, await run_in_threadpool(service.registry.get_run, run_id,
                                                          owner))
    if rec.status != "done":
        raise HTTPException(409, f"run {run_id!r} is {rec.status}; it can be explained once "
                                 "it is done")
    changes = list(rec.request.get("changes") or [])
    if not changes:
        raise HTTPException(409, f"run {run_id!r} has no changes: there is nothing to "
                                 "attribute")
    if len(changes) > WHY_MAX_CHANGES:
        raise HTTPException(409, f"run {run_id!r} has {len(changes)} changes; a why takes "
                                 f"at most {WHY_MAX_CHANGES} apart")
    root = Path(service.settings.results_dir)
    deadline = asyncio.get_running_loop().time() + min(wait, service.settings.wait_max_seconds)
    parts: list[tuple[str, int, str]] = []
    status: list[dict[str, Any]] = []
    active = await run_in_threadpool(service.registry.active_keys)
    waiting: list[tuple[int, str]] = []
    for kind, i, body in _part_bodies(rec.request):
        what = "only" if kind == "one" else "all but"
        req = WhatIfRequest(**body, label=f"why {run_id}: {what} change {i + 1}")
        prep = await run_in_threadpool(service.prepare, req)
        part_key = prep.task.key
        part_id = None
        if not service.jobs.stored(part_key):
            # a part asked for before and still running is followed, not submitted again
            mine = [r for r in active.get(part_key, []) if r.owner == owner]
            if mine:
                part_id = mine[0].id
            else:
                answer = await create_run(req, service, owner, 0.0)
                if answer.status_code not in (200, 202):
                    return answer  # refused (a full queue, a full disk): said as it was
                part_id = json.loads(bytes(answer.body))["id"]
            waiting.append((len(status), part_id))
        parts.append((kind, i, part_key))
        status.append({"part": kind, "change": i, "run": part_id, "status": "done"})
    for at, part_id in waiting:  # every part submitted first, so they run side by side
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        part = await _wait(service, await run_in_threadpool(
            service.registry.get_run, part_id, owner), left)
        if part.status in ("failed", "cancelled"):
            raise HTTPException(409, f"part {part_id!r} of the why is {part.status}: "
                                     f"{part.error or ''}")
        status[at]["status"] = part.status
    done = all(s["status"] == "done" for s in status)

    def build() -> Response:
        body: dict[str, Any] = {"run": run_id, "status": "done" if done else "running",
                                "changes": changes, "parts": status, "cards": None}
        if done:
            body["cards"] = why(root, rec.request_hash, parts, len(changes))
        return Response(dumps(body), media_type="application/json")

    return await run_in_threadpool(build)
