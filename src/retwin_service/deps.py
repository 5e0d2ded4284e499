"""Dependencies of the routes: the service, and the caller's identity from their token.

``Authorization: Bearer <token>``. With no token registered the service is open (every run
belongs to :data:`~retwin_service.registry.OPEN_OWNER`), but only for callers on this
machine (:mod:`retwin_service.guard`); once a token exists, every request to ``/api/v1``
except the health check needs one. A token's name is its owner; no token name can be the open owner.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from retwin_service.guard import TOKEN_CHECK_AGE_S
from retwin_service.registry import OPEN_OWNER
from retwin_service.service import Service

__all__ = ["OPEN_OWNER", "OwnerDep", "ServiceDep", "get_owner", "get_service"]

_bearer = HTTPBearer(auto_error=False, description=(
    "An API token: `retwin token create NAME`. Needed once any token exists; a service with "
    "no token answers without one, to callers on its own machine only."))


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def _unauthorized(msg: str) -> HTTPException:
    return HTTPException(status_code=401, detail=msg, headers={"WWW-Authenticate": "Bearer"})


async def get_owner(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller: the name of their token, or :data:`OPEN_OWNER` in open mode."""
    reg = service.registry
    if credentials is None or not credentials.credentials:
        known = reg.known_tokens(TOKEN_CHECK_AGE_S)  # a thread only to read the database
        if known if known is not None else await run_in_threadpool(reg.has_tokens,
                                                                   TOKEN_CHECK_AGE_S):
            raise _unauthorized("missing API token: send 'Authorization: Bearer <token>'")
        if not service.settings.loopback:
            raise _unauthorized("the service listens beyond loopback and has no API token; "
                                "create one with 'retwin token create NAME'")
        return OPEN_OWNER
    if len(credentials.credentials) > 512:
        raise _unauthorized("invalid or revoked API token")
    owner = await run_in_threadpool(reg.owner_of, credentials.credentials)
    if owner is None:
        raise _unauthorized("invalid or revoked API token")
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]
