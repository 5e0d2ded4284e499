"""JSON answers that always render.

Requests are checked before they are stored (text must be valid Unicode, numbers finite), so
what the service answers normally renders as strict UTF-8 JSON. What still does not (a row
stored by an older version with a lone surrogate in a label, a field name echoed in a
validation error) is answered with the offending characters replaced by U+FFFD and
non-finite numbers by ``null``, never with an error that would repeat on every read.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from retwin_service.encode import dumps, sanitise

__all__ = ["JSONBody", "dumps", "sanitise"]


class JSONBody(JSONResponse):
    """A JSON response rendered by :func:`dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
