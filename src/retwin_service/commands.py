"""What ``retwin serve`` and ``retwin token`` do; the CLI (:mod:`retwin.cli`) prints.

The CLI imports this module only when one of those commands runs, so retwin works without
the service's packages; importing it needs all of them (the ``api`` extra), and fails with
:class:`ModuleNotFoundError` naming the first one missing.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from pydantic import ValidationError

import retwin
from retwin_service.main import create_app
from retwin_service.observe import configure_logging
from retwin_service.registry import Registry, RegistryError, TokenRecord
from retwin_service.settings import Settings, is_loopback

__all__ = ["Registry", "RegistryError", "TokenRecord", "open_registry", "public_without_token",
           "serve", "settings", "url"]


def settings(**overrides: Any) -> Settings:
    """The service's settings: the ``RETWIN_…`` environment, with ``overrides`` that are not
    ``None``. A bad value raises :class:`~retwin.ScenarioError` naming its variable."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = [(f"RETWIN_{'_'.join(map(str, e['loc'])).upper()}", e["msg"])
                    for e in exc.errors(include_url=False)]
        raise retwin.ScenarioError(problems) from None


def open_registry(s: Settings) -> Registry:
    """The run and token registry of the service with settings ``s`` (close it after)."""
    return Registry(s.database_url)


def public_without_token(s: Settings) -> str | None:
    """Why the service must not start: it would listen beyond loopback with no API token
    (none registered, no bootstrap token); ``None`` when it may."""
    if is_loopback(s.host) or s.bootstrap_token is not None:
        return None
    reg = open_registry(s)
    try:
        if reg.has_tokens():
            return None
    finally:
        reg.close()
    return (f"refusing to serve on {s.host}: beyond loopback every request needs an API "
            "token and none exists; create one with 'retwin token create NAME' (or set "
            "RETWIN_BOOTSTRAP_TOKEN)")


def url(s: Settings) -> str:
    """Where the service answers."""
    host = f"[{s.host}]" if ":" in s.host else s.host
    return f"http://{host}:{s.port}"


def serve(s: Settings) -> None:
    """Run the service until Ctrl-C or SIGTERM (uvicorn stops it gracefully)."""
    configure_logging(s.log_level, s.log_format)
    json_logs = s.log_format == "json"
    # JSON logs: uvicorn keeps the logging set up here, and the service writes one line per
    # request itself (with its request id) instead of uvicorn's access line
    uvicorn.run(create_app(s, own_process=True), host=s.host, port=s.port, log_level=s.log_level,
                timeout_graceful_shutdown=5, server_header=False,
                log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
                access_log=not json_logs)
