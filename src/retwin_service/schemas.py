"""Request and response bodies of the HTTP API (two families: what comes in, what goes out).

The changes of a what-if are :data:`retwin.scenario.Change`, the same typed schema the CLI
and the Python API use, so an HTTP body and a ``--change`` file are interchangeable.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from retwin.scenario import Change

__all__ = [
    "BottleneckRow",
    "ComparePublic",
    "CompareRow",
    "ErrorItem",
    "ErrorPublic",
    "HealthPublic",
    "KpiRow",
    "ModelDetail",
    "ModelPublic",
    "ModelsPublic",
    "RunAccepted",
    "RunPublic",
    "RunResultPublic",
    "RunSummary",
    "RunsPublic",
    "TablePublic",
    "TargetRow",
    "ValidationErrorPublic",
    "WhatIfRequest",
]

RunStatus = Literal["queued", "running", "done", "failed", "cancelled"]
MAX_SEED = 2**63 - 1


class WhatIfRequest(BaseModel):
    """A what-if: a reference model, typed changes, replications and a seed.

    The answer reports the what-if's KPIs and their difference to the baseline: the same
    model, seed and replications without the changes (common random numbers).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "model": "baotou-2024",
            "changes": [{"kind": "quota", "quota": "mining", "factor": 0.9,
                         "from": "2025-01-01"}],
            "replications": 100,
            "seed": 1,
        }]},
    )

    model: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                       description="A reference model (GET /api/v1/models).")
    changes: list[Change] = Field(default_factory=list,
                                  description="Typed what-if changes (GET /api/v1/schema/changes).")
    replications: int = Field(1, ge=1, description="Seeded replications (the service sets "
                                                   "an upper limit).")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    end: dt.date | None = Field(None, description="Last simulated day; default: the model's. "
                                                  "The horizon is limited by the service.")
    label: str = Field("", max_length=200, description="A free label, shown in run lists; "
                                                       "not part of the computation.")


class Links(BaseModel):
    """Where a run's parts are: ``full`` is the run with every KPI row
    (``?detail=full``), ``summary`` what the planner's page shows first, ``kpis`` and
    ``difference`` the KPI tables (every KPI, key and year; filtered and paged),
    ``series`` and ``flows`` the daily series and monthly flows."""

    self: str
    full: str
    summary: str
    kpis: str
    difference: str
    series: str
    flows: str
    cancel: str


class RunAccepted(BaseModel):
    """A run was accepted (and stored); poll ``links.self`` for its status and result."""

    id: str
    status: RunStatus
    progress: float
    created_at: dt.datetime
    links: Links


class KpiRow(BaseModel):
    """One KPI in one year across replications: mean and the p5/p50/p95 band."""

    kpi: str
    key: str
    year: int
    unit: str
    mean: float | None
    p5: float | None
    p50: float | None
    p95: float | None
    n: int


class TargetRow(BaseModel):
    target: str
    name: str
    year: int
    goal: float | None
    value: float | None
    unit: str
    attained: bool


class BottleneckRow(BaseModel):
    year: int
    stage: str
    constraint: str
    score: float | None


class RunResultPublic(BaseModel):
    """What a finished run computed (the first replication's targets and bottlenecks)."""

    scenario: str
    scenario_hash: str
    start: dt.date
    end: dt.date
    seed: int
    replications: int
    mass_balance_closes: bool
    detail: Literal["headline", "full"] = Field(description=(
        "headline: `kpis` and `difference` hold the headline KPIs (output per stage, output "
        "value per group, local conversion, La+Ce surplus, Dy+Tb deficit, PrNd oxide price) "
        "per year; full: every KPI, key and year. The tables at `links.kpis` and "
        "`links.difference` hold every row either way."))
    kpis: list[KpiRow]
    difference: list[KpiRow] | None = Field(
        description="What-if − baseline, paired by replication, on the rows of `kpis`; null "
                    "for a baseline run.")
    targets: list[TargetRow]
    bottlenecks: list[BottleneckRow]
    notes: list[str] = Field(
        default_factory=list,
        description="Plain sentences about the answer: each trade (import or export cap), "
        "quota or capacity change of the what-if that bound on no day of its replications, "
        "named changes[i].")


class RunSummary(BaseModel):
    id: str
    status: RunStatus
    progress: float
    model: str
    label: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    links: Links


class RunPublic(RunSummary):
    """A run: its request, status and progress, and when done its headline KPIs and their
    difference (``?detail=full``: every KPI)."""

    request: dict[str, Any]
    error: str | None
    result: RunResultPublic | None


class RunsPublic(BaseModel):
    data: list[RunSummary]
    count: int = Field(description="Runs matching the filters (all pages).")
    limit: int
    offset: int


class ModelPublic(BaseModel):
    name: str
    description: str
    start: dt.date
    end: dt.date
    plants: int
    materials: int
    stages: list[str]
    scenario_hash: str


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class ModelDetail(ModelPublic):
    """A reference model: the ids a change may name, and the whole scenario."""

    plant_ids: list[str]
    material_ids: list[str]
    quota_ids: list[str]
    market_ids: list[str]
    segment_ids: list[str]
    scenario: dict[str, Any]


class TablePublic(BaseModel):
    """One page of a result table's rows, filtered; ``total`` counts every matching row,
    ``next`` links the next page (``null`` on the last)."""

    run: str
    table: str
    total: int
    offset: int
    limit: int = Field(description="Rows a page holds (the one asked for, at most the "
                                   "service's maximum).")
    next: str | None = Field(description="Path and query of the next page, or null.")
    columns: list[str]
    rows: list[dict[str, Any]]


class CompareRow(BaseModel):
    kpi: str
    key: str
    year: int
    unit: str
    a_mean: float | None
    b_mean: float | None
    mean: float | None = Field(description="a − b")
    p5: float | None
    p50: float | None
    p95: float | None
    n: int


class ComparePublic(BaseModel):
    """KPI differences of two runs; paired by replication when both used the same seed and
    replications (then the bands are those of the paired difference)."""

    a: str
    b: str
    paired: bool
    total: int
    rows: list[CompareRow]


class HealthPublic(BaseModel):
    """``ok``, or ``degraded`` with the reasons (the data folder is full: new runs are
    refused with 507 until there is room again)."""

    status: Literal["ok", "degraded"]
    reasons: list[str] = Field(default_factory=list)
    version: str
    executor: str
    workers: int
    in_flight: int
    data_free_bytes: int | None = Field(None, description="Free space in the data folder.")


class ErrorPublic(BaseModel):
    """Every error except a validation error: one clear message."""

    detail: str


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: body, then the field path.")
    msg: str
    type: str


class ValidationErrorPublic(BaseModel):
    """A request that does not validate: one item per problem, naming the field."""

    detail: list[ErrorItem]
