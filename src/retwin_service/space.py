"""Room in the data folder: telling a full disk from other failures, and remembering one.

With the data folder full, SQLite answers ``database or disk is full`` and Parquet or JSON
writes fail with ``ENOSPC``. The service answers those ``507`` ("no space left in the data
folder"), refuses new runs while the folder has less than ``RETWIN_MIN_FREE_MB`` free, and
its health check reports ``degraded`` with the reason until space returns. Nothing needs a
restart: the next write after space returns simply works.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["NO_SPACE", "Space", "is_no_space"]

log = logging.getLogger("retwin.api")

#: The message of every answer and run failure caused by a full data folder.
NO_SPACE = "no space left in the data folder"

_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")

#: How long a write that failed for lack of space keeps the health check degraded, unless
#: the folder has gained room since.
REMEMBER_S = 300.0


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and a database driver's original error."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is x for x in out) or len(out) > 20:
            continue
        out.append(e)
        todo.extend([e.__cause__, e.__context__])
        orig = getattr(e, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)
    return out


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a write refused for lack of space."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if getattr(e, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if any(t in str(e).lower() for t in _TEXTS):
            return True
    return False


def _is_io_error(exc: BaseException) -> bool:
    return any(isinstance(e, sqlite3.Error) and "disk i/o error" in str(e).lower()
               for e in _chain(exc))


class Space:
    """The free space of one data folder, and the last write it refused.

    Parameters
    ----------
    folder
        The data folder (``RETWIN_DATA_DIR``).
    min_free_bytes
        Below this the folder counts as full: new runs are refused (their results would
        not fit) and the health check is degraded.
    """

    def __init__(self, folder: Path, min_free_bytes: int) -> None:
        self.folder = Path(folder)
        self.min_free_bytes = int(min_free_bytes)
        self._lock = threading.Lock()
        self._refused: tuple[float, int] | None = None  # (monotonic time, free bytes then)

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still use there (``None`` if unknown)."""
        try:
            st = os.statvfs(self.folder)
        except (OSError, AttributeError):
            return None
        return int(st.f_bavail * st.f_frsize)

    def refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a write refused for lack of space; if so, remember it (for the
        health check). A SQLite "disk I/O error" counts when the folder is (nearly) full."""
        full = is_no_space(exc)
        free = self.free_bytes()
        if not full and _is_io_error(exc):
            full = free is not None and free < self.min_free_bytes
        if full:
            with self._lock:
                self._refused = (time.monotonic(), -1 if free is None else free)
            log.warning("%s (%s free): %s", NO_SPACE, _size(free), exc)
        return full

    def low(self, free: int | None = None) -> str | None:
        """Why the data folder is too full for a new run (less than ``min_free_bytes``
        free), or ``None``."""
        free = self.free_bytes() if free is None else free
        if free is not None and free < self.min_free_bytes:
            return (f"{NO_SPACE} ({_size(free)} free, the service needs at least "
                    f"{_size(self.min_free_bytes)})")
        return None

    def problem(self) -> str | None:
        """Why the data folder cannot take writes now (too little free, or a write was
        refused and no room has been made since), or ``None`` while it can."""
        free = self.free_bytes()
        low = self.low(free)
        if low is not None:
            return low
        with self._lock:
            refused = self._refused
            if refused is not None:
                at, free_then = refused
                grown = free is not None and free > free_then + max(self.min_free_bytes,
                                                                     1 << 20)
                if grown or time.monotonic() - at > REMEMBER_S:
                    self._refused = refused = None
        if refused is not None:
            return f"{NO_SPACE}: a write was refused {time.monotonic() - refused[0]:.0f} s ago"
        return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    x, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB"):
        if x < 1024:
            break
        x, unit = x / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{x:.1f} {unit}"
