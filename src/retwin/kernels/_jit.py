"""The one place that configures Numba: decorator options and cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

from retwin.config import NUMBA_CACHE

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """``numba.njit`` with the project's options: cached, no fastmath (sums stay exact in
    order, so golden results and the mass balance are reproducible bit for bit)."""
    compiled: Any = numba.njit(cache=NUMBA_CACHE, fastmath=False, nogil=True)(fn)
    return cast(F, compiled)
