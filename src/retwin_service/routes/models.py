"""Reference models, the schema of what-if changes and the KPIs a run reports."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import TypeAdapter

import retwin
from retwin.kpis import catalogue
from retwin.scenario import Change
from retwin_service.deps import OwnerDep, ServiceDep
from retwin_service.schemas import ErrorPublic, ModelDetail, ModelPublic, ModelsPublic

router = APIRouter(tags=["models"], responses={
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked API token."},
    403: {"model": ErrorPublic, "description": (
        "The service has no API token and the caller is not on its machine.")}})

_CHANGES: TypeAdapter[list[Change]] = TypeAdapter(list[Change])


def _public(name: str, sc: retwin.Scenario, digest: str) -> dict[str, Any]:
    return {"name": name, "description": sc.description, "start": sc.start, "end": sc.end,
            "plants": len(sc.plants), "materials": len(sc.materials),
            "stages": list(dict.fromkeys(p.stage for p in sc.plants)), "scenario_hash": digest}


@router.get("/models", response_model=ModelsPublic)
async def list_models(service: ServiceDep, _owner: OwnerDep) -> ModelsPublic:
    """The reference models a what-if can start from."""
    cat = service.catalog
    data = [ModelPublic(**_public(n, cat.models[n], cat.hashes[n])) for n in cat.names()]
    return ModelsPublic(data=data, count=len(data))


@router.get("/models/{name}", response_model=ModelDetail,
            responses={404: {"model": ErrorPublic}})
async def read_model(name: Annotated[str, Path(max_length=64)], service: ServiceDep,
                     _owner: OwnerDep) -> ModelDetail:
    """One reference model: the ids of what a change may name, and the whole scenario."""
    cat = service.catalog
    if name not in cat.models:
        raise HTTPException(404, f"model {name!r} not found (known: {', '.join(cat.names())})")
    sc = cat.models[name]
    return ModelDetail(
        **_public(name, sc, cat.hashes[name]),
        plant_ids=[p.id for p in sc.plants], material_ids=[m.id for m in sc.materials],
        quota_ids=[q.id for q in sc.quotas], market_ids=[k.id for k in sc.markets],
        segment_ids=[g.id for g in sc.demand],
        scenario=sc.model_dump(mode="json", by_alias=True),
    )


@router.get("/schema/changes", response_model=dict[str, Any])
async def read_change_schema(_owner: OwnerDep) -> dict[str, Any]:
    """JSON Schema of a what-if's ``changes`` list (the same for the CLI and Python)."""
    return _CHANGES.json_schema(by_alias=True)


@router.get("/kpis", response_model=list[dict[str, Any]])
async def list_kpis(_owner: OwnerDep) -> list[dict[str, Any]]:
    """Every KPI a run reports, in the order of its rows: name, what its keys are, unit,
    display group, English and Chinese labels, what is computed and which keys get a row."""
    return catalogue()
