"""``GET /api/v1/health``: is the service up (no token needed; for load balancers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

import retwin
from retwin_service.deps import ServiceDep
from retwin_service.schemas import ErrorPublic, HealthPublic

router = APIRouter(tags=["health"], responses={403: {"model": ErrorPublic, "description": (
    "The service has no API token and the caller is not on its machine.")}})


@router.get("/health", response_model=HealthPublic)
async def read_health(service: ServiceDep) -> HealthPublic:
    """Liveness and a little state: executor kind, workers, computations in flight, and
    whether the data folder can take writes (``degraded`` with the reason when not)."""
    space = service.space
    problem, free = await asyncio.to_thread(lambda: (space.problem(), space.free_bytes()))
    return HealthPublic(status="ok" if problem is None else "degraded",
                        reasons=[] if problem is None else [problem],
                        version=retwin.__version__, executor=service.jobs.kind,
                        workers=service.settings.workers, in_flight=service.jobs.in_flight,
                        data_free_bytes=free)
