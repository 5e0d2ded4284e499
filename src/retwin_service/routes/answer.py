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
import datetime as dt
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, HTTPException, Response
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from retwin.kpis import get as kpi_decl
from retwin_service import tables
from retwin_service.deps import OwnerDep, ServiceDep
from retwin_service.render import dumps
from retwin_service.routes.runs import Wait, _summary, _wait
from retwin_service.schemas import ErrorPublic, ValidationErrorPublic

__all__ = ["CARDS", "Card", "cards", "focus_year", "router"]

router = APIRouter(tags=["page"], responses={
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API token."},
    403: {"model": ErrorPublic, "description": (
        "The service has no API token and the caller is not on its machine.")},
    404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 410: {"model": ErrorPublic},
    422: {"model": ValidationErrorPublic, "description": "The request does not validate."}})

RunId = Annotated[str, PathParam(min_length=1, max_length=64)]


@dataclass(frozen=True)
class Card:
    """A headline card: one KPI row (``keys`` of one key), or the sum of several rows measured
    in ``unit`` (``keys`` empty: every key of that unit), summed per replication."""

    id: str
    kpi: str
    keys: tuple[str, ...]
    label: str
    label_zh: str
    unit: str | None = None  # for a sum: the unit of the rows summed


CARDS: tuple[Card, ...] = (
    Card("magnet", "output.stage", ("magnet",), "Magnet output", "磁材产量"),
    Card("separation", "output.stage", ("separation",), "Separated output", "冶炼分离产量"),
    Card("prnd_price", "price.material", ("prnd_oxide",), "PrNd oxide price", "氧化镨钕价格"),
    Card("local_conversion", "local_conversion", ("region",), "Local conversion", "就地转化率"),
    Card("value_total", "value.group", ("total",), "Output value, total", "产值：合计"),
    Card("value_raw", "value.group", ("raw_materials",), "Output value, raw materials",
         "产值：原材料"),
    Card("value_new", "value.group", ("new_materials",), "Output value, new materials",
         "产值：新材料"),
    Card("value_app", "value.group", ("applications",), "Output value, applications",
         "产值：应用"),
    Card("unmet", "unmet.segment", (), "Unmet demand (t)", "未满足需求（吨）", unit="t"),
    Card("imports", "imports.market", (), "Imports (t)", "进口量（吨）", unit="t"),
    Card("exports", "exports.market", (), "Exports (t)", "出口量（吨）", unit="t"),
)


def _f(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


def _unit(card: Card, unit: str, materials: dict[str, dict[str, Any]]) -> str:
    if card.kpi == "price.material" and card.keys:
        return f"CNY/{materials.get(card.keys[0], {}).get('unit', 'unit')}"
    return unit


def _quantiles(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("year")["value"]
    out = pd.DataFrame({"mean": g.mean(), "p5": g.quantile(0.05), "p95": g.quantile(0.95)})
    return out


def _sum_rows(reps: pd.DataFrame, card: Card) -> pd.DataFrame:
    rows = reps[(reps["kpi"] == card.kpi) & (reps["unit"] == card.unit)]
    return pd.DataFrame(rows.groupby(["replication", "year"], as_index=False)["value"].sum())


def cards(root: Path, key: str, base_key: str | None,
          scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline cards of a stored result (and its baseline's, for the difference).

    A card of one KPI row takes its numbers from the result's summary and difference tables,
    so they are the numbers of ``GET /runs/{id}`` exactly. A sum is taken per replication
    from both runs' replication tables and paired by replication (common random numbers)."""
    summary = tables.read(root, key, "summary")
    files = tables.manifest(root, key).get("files", [])
    diff = tables.read(root, key, "difference") if "difference.parquet" in files else None
    materials = {m["id"]: m for m in scenario.get("materials", [])}
    targets = scenario.get("targets", [])
    years = sorted(int(y) for y in summary["year"].unique())
    out: list[dict[str, Any]] = []
    for card in CARDS:
        if card.keys:
            rows = summary[(summary["kpi"] == card.kpi) & (summary["key"] == card.keys[0])]
            if rows.empty:
                continue
            what = rows.set_index("year")[["mean", "p5", "p95"]]
            unit = str(rows["unit"].iloc[0])
            delta = None
            if diff is not None:
                d = diff[(diff["kpi"] == card.kpi) & (diff["key"] == card.keys[0])]
                delta = d.set_index("year")[["mean", "p5", "p95"]]
        else:
            reps = tables.read(root, key, "kpis")
            s = _sum_rows(reps, card)
            if s.empty:
                continue
            what = _quantiles(s)
            unit = card.unit or ""
            delta = None
            if base_key is not None:
                b = _sum_rows(tables.read(root, base_key, "kpis"), card)
                paired = s.merge(b, on=["replication", "year"], suffixes=("", "_b"))
                paired["value"] = paired["value"] - paired["value_b"]
                delta = _quantiles(paired)
        series: dict[str, list[float | None]] = {n: [] for n in (
            "mean", "p5", "p95", "base", "delta", "delta_p5", "delta_p95", "delta_pct")}
        for y in years:
            w = what.loc[y] if y in what.index else None
            dy = delta.loc[y] if delta is not None and y in delta.index else None
            m = None if w is None else _f(w["mean"])
            series["mean"].append(m)
            series["p5"].append(None if w is None else _f(w["p5"]))
            series["p95"].append(None if w is None else _f(w["p95"]))
            dm = None if dy is None else _f(dy["mean"])
            base = None if m is None or dm is None else m - dm
            series["delta"].append(dm)
            series["delta_p5"].append(None if dy is None else _f(dy["p5"]))
            series["delta_p95"].append(None if dy is None else _f(dy["p95"]))
            series["base"].append(base if dy is not None else None)
            series["delta_pct"].append(
                None if dm is None or not base else 100.0 * dm / abs(base))
        path = f"{card.kpi}.{card.keys[0]}" if card.keys else ""
        goals = [{"year": int(g["year"]), "goal": _f(g["value"]),
                  "kind": g.get("kind", "at_least"), "name": g.get("name", ""),
                  "name_zh": g.get("name_zh", "")}
                 for g in targets if path and g.get("kpi") == path]
        decl = kpi_decl(card.kpi)
        out.append({"id": card.id, "kpi": card.kpi, "key": card.keys[0] if card.keys else None,
                    "sum_of": None if card.keys else card.unit, "label": card.label,
                    "label_zh": card.label_zh, "unit": _unit(card, unit, materials),
                    "kind": decl.kind, "years": years, **series, "targets": goals})
    return out


def _start(ch: dict[str, Any]) -> dt.date | None:
    """The day a change starts acting: its ``from``, or an added plant's commissioning."""
    day = ch.get("from")
    plant = ch.get("plant")
    if not day and isinstance(plant, dict):
        day = plant.get("commissioning")
    return dt.date.fromisoformat(str(day)) if day else None


def focus_year(changes: list[dict[str, Any]], years: list[int]) -> int | None:
    """The first year of the run in which a change acts (a change without a start acts from
    the first year); the first year when there is no change."""
    if not years:
        return None
    starts = [(d.year if (d := _start(ch)) else years[0]) for ch in changes]
    y = min(starts) if starts else years[0]
    return min(max(y, years[0]), years[-1])


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


def page_result(root: Path, key: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
    """What the first screen of a finished run draws."""
    m = tables.manifest(root, key)
    base_key = m.get("baseline_hash")
    if base_key and not (root / str(base_key) / "manifest.json").is_file():
        base_key = None
    scenario = json.loads((root / key / "scenario.json").read_text(encoding="utf-8"))
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
    rec = await run_in_threadpool(service.registry.get_run, run_id, owner)
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


def _round(values: Iterable[Any]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        f = _f(v)
        out.append(None if f is None else float(f"{f:.{DIGITS}g}"))
    return out


def _monthly(root: Path, key: str) -> pd.DataFrame:
    return tables.read(root, key, "monthly")


def _stage_series(root: Path, key: str, plants: dict[str, str]) -> dict[str, Any]:
    mon = _monthly(root, key)
    act = mon[mon["kind"] == "activity"].copy()
    act["stage"] = act["id"].astype(str).map(plants)
    g = act.groupby(["stage", "month"], observed=True)["mean"].sum()
    out: dict[str, Any] = {}
    for stage, s in g.groupby(level=0):
        out[str(stage)] = _round(s.to_numpy())
    return out


def _months(root: Path, key: str) -> list[str]:
    mon = _monthly(root, key)
    return [pd.Timestamp(m).strftime("%Y-%m") for m in sorted(mon["month"].unique())]


def panel(root: Path, key: str, name: str) -> dict[str, Any]:
    """A panel's monthly series: the what-if's and the baseline's."""
    m = tables.manifest(root, key)
    base_key = m.get("baseline_hash")
    if base_key and not (root / str(base_key) / "manifest.json").is_file():
        base_key = None
    scenario = json.loads((root / key / "scenario.json").read_text(encoding="utf-8"))
    body: dict[str, Any] = {"name": name, "months": _months(root, key),
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
        body["whatif"] = _stage_series(root, key, stages)
        body["base"] = _stage_series(root, base_key, stages) if base_key else None
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
            out[str(mid)] = {"mean": _round(s["mean"])}
            if bands:  # the what-if's band is drawn; the baseline is a dashed mean
                out[str(mid)].update(p5=_round(s["p5"]), p95=_round(s["p95"]))
        return out

    def annual(k: str, kpi: str) -> dict[str, Any]:
        s = tables.read(root, k, "summary")
        s = s[s["kpi"] == kpi]
        out: dict[str, Any] = {}
        for key_, r in s.groupby("key", observed=True):
            out[str(key_)] = {"mean": _round(r.sort_values("year")["mean"])}
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
    ``stages`` (output per stage, each in its unit) or ``markets`` (prices with p5–p95, margin
    per stage, stock cover). Numbers are kept to 4 significant digits."""
    rec = await run_in_threadpool(service.registry.get_run, run_id, owner)
    if rec.status != "done":
        raise HTTPException(409, f"run {run_id!r} is {rec.status}; its charts exist once it "
                                 "is done")
    root = Path(service.settings.results_dir)

    def build() -> Response:
        try:
            body = panel(root, rec.request_hash, name)
        except tables.ResultMissing:
            raise HTTPException(410, f"the result of run {run_id!r} is gone") from None
        return Response(dumps(body), media_type="application/json")

    return await run_in_threadpool(build)


# --- why: the difference of each headline card, change by change ----------------------------

#: Most changes a "why" takes apart (each needs one or two runs of its own).
WHY_MAX_CHANGES = 8


def _part_bodies(request: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """The runs a "why" needs: each change alone (``one``) and, with three changes or more,
    every change but one (``without``); the same model, horizon, seed and replications, so
    every part is paired with the same baseline (common random numbers)."""
    changes = list(request.get("changes") or [])
    common = {k: request[k] for k in ("model", "seed", "replications", "end") if k in request}
    parts = [("one", i, {**common, "changes": [c]}) for i, c in enumerate(changes)]
    if len(changes) >= 3:
        parts += [("without", i, {**common, "changes": changes[:i] + changes[i + 1:]})
                  for i in range(len(changes))]
    return parts


def why(root: Path, key: str, parts: list[tuple[str, int, str]],
        n_changes: int) -> list[dict[str, Any]]:
    """Attribute each headline card's Δ to the changes.

    ``one[i]`` is the Δ of change ``i`` alone; ``marginal[i]`` is the Δ it adds to all the
    others (the whole Δ less the Δ without it; with two changes, the whole less the other
    alone); ``interaction`` is what the changes do together beyond the sum of their ``one``.
    All of it per year, every run paired with the same baseline."""
    m = tables.manifest(root, key)
    base_key = m.get("baseline_hash")
    scenario = json.loads((root / key / "scenario.json").read_text(encoding="utf-8"))
    whole = {c["id"]: c for c in cards(root, key, base_key, scenario)}
    got: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for kind, i, part_key in parts:
        sc = json.loads((root / part_key / "scenario.json").read_text(encoding="utf-8"))
        pm = tables.manifest(root, part_key)
        got[(kind, i)] = {c["id"]: c for c in cards(root, part_key, pm.get("baseline_hash"), sc)}
    out = []
    for cid, c in whole.items():
        years = c["years"]

        def delta(kind: str, i: int, cid: str = cid, years: list[int] = years
                  ) -> list[float | None]:
            part = got.get((kind, i), {}).get(cid)
            return part["delta"] if part else [None] * len(years)

        one = [delta("one", i) for i in range(n_changes)]
        if n_changes == 1:
            without: list[list[float | None]] = [[0.0] * len(years)]
        elif n_changes == 2:
            without = [one[1], one[0]]
        else:
            without = [delta("without", i) for i in range(n_changes)]
        total = c["delta"]
        marginal = [[None if t is None or w is None else t - w for t, w in zip(total, wo,
                                                                                 strict=True)]
                    for wo in without]
        interaction = []
        for k in range(len(years)):
            vals = [o[k] for o in one]
            interaction.append(None if total[k] is None or any(v is None for v in vals)
                               else total[k] - sum(v for v in vals if v is not None))
        out.append({"id": cid, "label": c["label"], "label_zh": c["label_zh"],
                    "unit": c["unit"], "years": years, "base": c["base"], "mean": c["mean"],
                    "total": total, "one": one, "marginal": marginal,
                    "interaction": interaction})
    return out


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

    rec = await run_in_threadpool(service.registry.get_run, run_id, owner)
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
