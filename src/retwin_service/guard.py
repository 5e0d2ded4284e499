"""Open mode stays on this machine, however the app was started.

With no API token registered the service answers without one ("open mode"). That is safe
only for callers on this machine, and only if a web page elsewhere cannot reach it through
the user's browser. So, while the service is open, every request

- from a peer that is not a loopback address (127.0.0.0/8, ``::1``) is refused ``403``,
  whatever address the server was told to bind (``uvicorn --host 0.0.0.0`` included);
- whose ``Host`` header is not a loopback name (``localhost``, ``127.x.y.z``, ``[::1]``,
  with any port) is refused ``403``: a page on ``evil.example`` whose name resolves to
  127.0.0.1 (DNS rebinding) sends ``Host: evil.example``.

Once a token exists every request needs one and neither rule applies.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from retwin_service.settings import is_loopback

__all__ = ["OpenGuard", "host_is_loopback"]

#: How old a "no token exists" answer may be (tokens are made by the CLI, another process).
TOKEN_CHECK_AGE_S = 1.0


def host_is_loopback(host: str) -> bool:
    """Whether a ``Host`` header names this machine: ``localhost``, an address in
    127.0.0.0/8 or ``[::1]``, each with or without a port."""
    host = host.strip()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
        return ":" in name and is_loopback(name)
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return False
    return is_loopback(name) and ":" not in name


def _peer_is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:  # a Unix socket: only this machine can connect
        return True
    return is_loopback(str(client[0]))


class OpenGuard:
    """Refuse, while no token exists, requests from beyond loopback or to a non-loopback
    ``Host`` (see the module). Needs ``app.state.service`` (set by the lifespan)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = await self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": problem}).encode()
        await send({"type": "http.response.start", "status": 403, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def _problem(self, scope: Scope) -> str | None:
        peer_ok = _peer_is_loopback(scope)
        host = next((v.decode("latin-1") for k, v in scope.get("headers") or []
                     if k == b"host"), None)
        host_ok = host is None or host_is_loopback(host)
        if peer_ok and host_ok:
            return None
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        if service is None:
            return None  # not started: nothing to guard yet
        if await asyncio.to_thread(service.registry.has_tokens, TOKEN_CHECK_AGE_S):
            return None  # every request needs a token; the routes check it
        if not peer_ok:
            peer = str((scope.get("client") or ("?",))[0])
            return ("this service has no API token, so it answers only on this machine "
                    f"(a loopback address), not to {peer}; create a token with "
                    "'retwin token create NAME'")
        return ("this service has no API token, so it answers only to loopback names "
                f"(localhost, 127.0.0.1, [::1]), not to Host {(host or '')[:100]!r}; create "
                "a token with 'retwin token create NAME'")
