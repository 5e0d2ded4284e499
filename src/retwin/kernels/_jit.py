"""The one place that configures Numba: decorator options and cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

from retwin.config import NUMBA_CACHE

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F | None = None, *, inline: bool = False) -> Any:
    """``numba.njit`` with the project's options: cached; no fastmath (sums stay exact in
    order, so golden results and the mass balance are reproducible bit for bit); numpy's
    error model (a float division by zero gives inf rather than a branch to raise).

    ``inline=True`` inlines the kernel into compiled callers (it stays callable from Python).
    """

    def wrap(f: F) -> F:
        compiled: Any = numba.njit(cache=NUMBA_CACHE, fastmath=False, nogil=True,
                                   error_model="numpy",
                                   inline="always" if inline else "never")(f)
        return cast(F, compiled)

    return wrap(fn) if fn is not None else wrap
