"""The flow kernel specialised to one chain's structure.

The general kernel (:func:`retwin.kernels.flow.advance_packed`) reads the chain's shape --
which plant draws on and delivers into which pool, the levels, the lead times, the quotas
(:data:`retwin.kernels.contract.STRUCTURE`) -- from its arguments, like everything else.
Compiled for one chain, the same body takes those integer arrays as constants: the compiler
then knows they never change and never overlap the arrays the kernel writes, so it keeps
them out of the loop's loads. The numbers are the same, bit for bit (same statements, same
order, no fast-math); a run is faster (the peer chain's kernel about a third, baotou-2024's
warm run about a tenth).

Compiling one takes seconds (about 10-15 s on two cores), so it is never done on a run's
path: :func:`specialise` compiles it (``retwin warmup`` does, for the reference model and
the scenarios it is given) into Numba's on-disk cache and leaves a mark beside it;
:func:`kernel_for` gives a run the specialised kernel when this process has it or the mark
says the cache holds it, and otherwise nothing (the run takes the general kernel). The key
of a chain is a digest of its structure arrays and of the kernel's code (this file, the
kernel's, the decorator's, Numba's version), so a changed kernel or chain is a new key.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.core import config as numba_config

from retwin.kernels import contract, flow
from retwin.kernels._jit import _write_whole, generated_code, jit, kernel_cache_dir

__all__ = ["kernel_for", "specialise", "structure_key"]

#: Specialised kernels this process has, by key.
_KERNELS: dict[str, Callable[..., None]] = {}
#: Keys this process found no specialised kernel for (looked up once per process; forgotten
#: past :data:`_ABSENT_MAX`, as a service sees a new structure with each new-plant what-if).
_ABSENT: set[str] = set()
_ABSENT_MAX = 4096
_CODE_DIGEST: bytes | None = None


def _jit_off() -> bool:
    """Whether Numba runs kernels as plain Python (``NUMBA_DISABLE_JIT=1``)."""
    return bool(getattr(numba_config, "DISABLE_JIT", False))


def _code_digest() -> bytes:
    """A digest of everything the compiled code follows from besides the chain."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        h = hashlib.sha256()
        for f in (flow._FILENAME, __file__, sys.modules[jit.__module__].__file__):
            h.update(Path(str(f)).read_bytes())
        h.update(repr((numba.__version__, sys.implementation.cache_tag, contract.STRUCTURE,
                       contract.PACKED_INTS, contract.PACKED_FLOATS, contract.PACKED_2D,
                       contract.UNPACKED)).encode())
        _CODE_DIGEST = h.digest()
    return _CODE_DIGEST


def structure_key(static: Mapping[str, np.ndarray]) -> str:
    """The key of a chain's specialised kernel: a digest of its structure arrays (in
    ``static``, a compiled scenario's kernel inputs) and of the kernel's code."""
    h = hashlib.sha256(_code_digest())
    for n in contract.STRUCTURE:
        a = np.ascontiguousarray(static[n], dtype=np.int64)
        h.update(f"{n}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _name(key: str) -> str:
    return f"_advance_{key}"


def _mark(key: str) -> Path | None:
    """The file that says Numba's on-disk cache holds the kernel of ``key``."""
    cache_dir = kernel_cache_dir(flow._flow)
    return None if cache_dir is None else cache_dir / f"flow.{_name(key)}.ready"


def _stamp() -> bytes:
    """What the mark holds: the kernel file's modification time and size, which Numba's
    cache checks before it loads a kernel compiled from it. A file touched since (its text
    the same, so the key the same) would have the kernel compiled again on its first call:
    such a mark is not taken."""
    st = Path(flow._FILENAME).stat()
    return f"{st.st_mtime!r} {st.st_size}".encode()


def _build(key: str, static: Mapping[str, np.ndarray]) -> Callable[..., None]:
    """The specialised kernel of ``key`` as a (not yet compiled) dispatcher: the generated
    entry point of :mod:`retwin.kernels.flow` with the structure arrays as its globals."""
    name = _name(key)
    source = Path(flow._FILENAME).read_text(encoding="utf-8")
    code = generated_code(
        flow._FILENAME, source,
        lambda s: flow._entry_source(s, frozen=contract.STRUCTURE, name=name),
        kernel_cache_dir(flow._flow), name=f"flow.{name}",
        layout=repr((contract.STRUCTURE, contract.PACKED_INTS, contract.PACKED_FLOATS,
                     contract.PACKED_2D, contract.UNPACKED)))
    scope: dict[str, Any] = {**vars(flow), "__name__": flow.__name__}
    for n in contract.STRUCTURE:
        a = np.array(static[n], dtype=np.int64)  # its own copy, compiled in as a constant
        a.setflags(write=False)
        scope[n] = a
    exec(code, scope)
    compiled: Callable[..., None] = jit(scope[name], wraparound=False)  # as the general one
    return compiled


def kernel_for(key: str, static: Mapping[str, np.ndarray]) -> Callable[..., None] | None:
    """The specialised kernel of the chain whose structure key is ``key`` (and whose kernel
    inputs are ``static``) when this process has it or the on-disk cache holds it (loaded on
    its first call); ``None`` otherwise: the run takes the general kernel. Compiles nothing."""
    kernel = _KERNELS.get(key)
    if kernel is not None or key in _ABSENT:
        return kernel
    mark = _mark(key)
    try:
        ready = not _jit_off() and mark is not None and mark.read_bytes() == _stamp()
    except OSError:  # no mark
        ready = False
    if not ready:
        if len(_ABSENT) >= _ABSENT_MAX:
            _ABSENT.clear()  # looked up again: a stat of the mark each
        _ABSENT.add(key)
        return None
    kernel = _KERNELS[key] = _build(key, static)
    return kernel


def specialise(key: str, static: Mapping[str, np.ndarray], call: tuple[Any, ...]
               ) -> Callable[..., None]:
    """Compile the specialised kernel of ``key`` (or load it from the on-disk cache), keep
    it for this process and mark it in the cache for the next ones. ``call`` is a packed call
    of this chain (:attr:`retwin.kernels.contract.Packed.call`): the argument types it is
    compiled for. With ``NUMBA_DISABLE_JIT=1`` the kernel is plain Python, kept for this
    process only."""
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _build(key, static)
    if not _jit_off():
        signature = (numba.types.int64, numba.types.int64, *map(numba.typeof, call))
        kernel.compile(signature)  # type: ignore[attr-defined]
        mark = _mark(key)
        if mark is not None:
            _write_whole(mark, _stamp())
    _KERNELS[key] = kernel
    _ABSENT.discard(key)
    return kernel
