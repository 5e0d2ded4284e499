"""A process's small memory of values it made lately: most recently used kept, within a count
and a size, safe across threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Kept(Generic[V]):
    """Values by key, the least recently used dropped first once there are more than
    ``max_items`` of them or their sizes (``size(value)``, bytes) add up to more than
    ``max_bytes``. A value larger than ``max_bytes`` alone is made and not kept.

    ``get_or_make`` makes a value outside the lock (two threads may then make the same value
    once each; the second is kept). Kept values are shared by everyone who asks for them:
    keep only values no one changes.

    ``asked_twice=True``: ``get_or_make`` keeps a value only when its key was asked for
    before (it remembers the last ``4 * max_items`` keys asked for, not their values). Keys
    that never come back (a Monte Carlo's seeds) then cost no memory and push out nothing.
    """

    def __init__(self, *, max_items: int, max_bytes: int | None = None,
                 size: Callable[[V], int] | None = None, asked_twice: bool = False) -> None:
        if max_items < 1:
            raise ValueError(f"max_items(={max_items}) must be >= 1")
        if (max_bytes is None) != (size is None):
            raise ValueError("max_bytes and size go together")
        self.max_items, self.max_bytes, self._size = max_items, max_bytes, size
        self._values: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._asked: OrderedDict[Hashable, None] | None = OrderedDict() if asked_twice else None
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def nbytes(self) -> int:
        """The sizes of the values kept, added up (0 without ``size``)."""
        return self._bytes

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            held = self._values.get(key)
            if held is None:
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return held[0]

    def put(self, key: Hashable, value: V) -> None:
        n = self._size(value) if self._size is not None else 0
        if self.max_bytes is not None and n > self.max_bytes:
            return
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._values[key] = (value, n)
            self._bytes += n
            while len(self._values) > self.max_items or (
                    self.max_bytes is not None and self._bytes > self.max_bytes):
                _, (_, dropped) = self._values.popitem(last=False)
                self._bytes -= dropped

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            with self._lock:
                self.misses += 1
                keep = self._asked_before(key)
            value = make()
            if keep:
                self.put(key, value)
        return value

    def _asked_before(self, key: Hashable) -> bool:
        asked = self._asked
        if asked is None:
            return True
        if key in asked:
            del asked[key]
            return True
        asked[key] = None
        if len(asked) > 4 * self.max_items:
            asked.popitem(last=False)
        return False

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._bytes = 0
            self.hits = self.misses = 0
            if self._asked is not None:
                self._asked.clear()
