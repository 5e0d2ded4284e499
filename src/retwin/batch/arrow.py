"""Arrow arrays built from their buffers, for the tables a study writes.

``pyarrow.array`` imports pandas the first time it is called, whatever it is given (to
recognise pandas objects): ~0.2 s of a study's process, taken from its workers on a machine
with as many cores as workers, for a library the study does not use. These helpers make the
same arrays (equal to ``pyarrow.array``'s, so the files written are the same) from numpy
buffers instead, and never load pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["array", "numbers", "repeated_strings", "strings"]

#: The largest string data an Arrow ``string`` array holds (32-bit offsets).
_MAX_STRING_BYTES = 2**31 - 1


def numbers(values: Any, type: pa.DataType) -> pa.Array:
    """An ``int64``, ``float64`` or ``bool`` array of ``values`` (a numpy array or a sequence
    of numbers, no ``None``)."""
    import pyarrow as pa

    if pa.types.is_boolean(type):
        flags = np.asarray(values, dtype=np.bool_).reshape(-1)
        bits = np.packbits(flags, bitorder="little")
        return pa.Array.from_buffers(type, len(flags), [None, pa.py_buffer(bits)])
    dtype = {pa.int64(): np.int64, pa.float64(): np.float64}.get(type)
    if dtype is None:
        raise TypeError(f"numbers() makes int64, float64 or bool arrays, not {type}")
    data = np.ascontiguousarray(np.asarray(values, dtype=dtype).reshape(-1))
    return pa.Array.from_buffers(type, len(data), [None, pa.py_buffer(data)])


def _validity(present: np.ndarray) -> tuple[Any, int]:
    import pyarrow as pa

    missing = int(len(present) - present.sum())
    if not missing:
        return None, 0
    return pa.py_buffer(np.packbits(present, bitorder="little")), missing


def strings(values: Sequence[str | None]) -> pa.Array:
    """A ``string`` array of ``values`` (``None`` is a null)."""
    return repeated_strings(values, 1)


def repeated_strings(values: Sequence[str | None], times: int) -> pa.Array:
    """A ``string`` array of ``values`` repeated ``times`` times, one after another (as
    ``strings(values).take(tile(arange(len(values)), times))``)."""
    import pyarrow as pa

    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    n = len(encoded)
    once = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=once[1:])
    size = int(once[-1])
    if size * times > _MAX_STRING_BYTES:  # past 32-bit offsets: pyarrow sorts it out
        return pa.array(list(values) * times, pa.string())
    offsets = np.empty(n * times + 1, np.int32)
    starts = once[:-1].astype(np.int32)
    shifts = size * np.arange(times, dtype=np.int32)
    np.add(starts[None, :], shifts[:, None], out=offsets[:-1].reshape(times, n))
    offsets[-1] = size * times
    bitmap, nulls = None, 0
    if any(v is None for v in values):
        present = np.fromiter((v is not None for v in values), dtype=np.bool_, count=n)
        bitmap, nulls = _validity(np.tile(present, times))
    return pa.Array.from_buffers(pa.string(), n * times,
                                 [bitmap, pa.py_buffer(offsets),
                                  pa.py_buffer(b"".join(encoded) * times)], null_count=nulls)


def array(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    """``pyarrow.array(values, type)`` for ``string`` (with ``None``), ``int64``, ``float64``
    and ``bool`` values."""
    import pyarrow as pa

    if pa.types.is_string(type):
        return strings(values)
    return numbers(values, type)
