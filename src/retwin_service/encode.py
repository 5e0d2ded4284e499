"""JSON that always renders, as bytes, without the web framework (a worker encodes the
answer it hands over with it; :mod:`retwin_service.render` answers with it).

What does not encode as strict UTF-8 JSON (a lone surrogate in a label, a non-finite number)
is sent with U+FFFD and ``null`` in its place, never with an error that would repeat on every
read.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

__all__ = ["dumps", "sanitise"]

log = logging.getLogger("retwin.api")


def sanitise(x: Any) -> Any:
    """``x`` with lone surrogates in strings (values and keys) replaced by U+FFFD and NaN or
    infinities by ``None``."""
    if isinstance(x, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in x) \
            if _bad_text(x) else x
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {sanitise(k): sanitise(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [sanitise(v) for v in x]
    return x


def _bad_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def dumps(content: Any) -> bytes:
    """Strict JSON as UTF-8 bytes; what cannot be encoded is sanitised (and logged)."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        log.warning("an answer held text or numbers JSON cannot carry (%s); sent with "
                    "U+FFFD and null in their place", exc)
        return json.dumps(sanitise(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"), default=str).encode("utf-8")
