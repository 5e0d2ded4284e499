"""``GET /api/v1/health``: is the service up (no token needed; for load balancers)."""

from __future__ import annotations

from fastapi import APIRouter

import retwin
from api.deps import ServiceDep
from api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
async def read_health(service: ServiceDep) -> HealthPublic:
    """Liveness and a little state: executor kind, workers, computations in flight."""
    return HealthPublic(status="ok", version=retwin.__version__, executor=service.jobs.kind,
                        workers=service.settings.workers, in_flight=service.jobs.in_flight)
