"""The flow kernel specialised to one chain's structure.

The general kernel (:func:`retwin.kernels.flow.advance_packed`) reads the chain's shape --
which plant draws on and delivers into which pool, the levels, the lead times, the quotas
(:data:`retwin.kernels.contract.STRUCTURE`) -- from its arguments, like everything else, and
works out on a run's first call what follows from it alone (its ``plan``: which plants are
alone at their pools, where storage can bind). Compiled for one chain, the same body has
both put in before it is compiled (:mod:`retwin.kernels.unroll`): its pass over levels,
plants, inputs and outputs is unrolled, every index the structure fixes is a number, every
branch it decides is taken. A plant-day is then the day's arithmetic, without the loads,
loop bounds and branches that find its pools. The numbers are the same, bit for bit (the
same statements in the same order, no fast-math; the tests compare every array a run
records); the flow kernel takes about half the time (baotou-2024 over its whole horizon,
the peers' chain: see the benchmarks).

Compiling one takes seconds (about 5 s for the peers' five plants, 20-25 s for
baotou-2024's 26 on two cores; the time grows faster than the code). A chain whose plant
pass would become more than :data:`MAX_UNROLLED` statements (about 45 plants) keeps it as
loops, with its structure and plan still put in: unrolled, 60 plants took a minute to
compile and 120 failed in the compiler. It is never compiled on a run's path: :func:`specialise`
compiles it (``retwin warmup`` does, for the reference model and the scenarios it is given)
into Numba's on-disk cache and leaves a mark beside it; :func:`kernel_for` gives a run the
specialised kernel when this process has it or the mark says the cache holds it, and
otherwise nothing (the run takes the general kernel). The key of a chain is a digest of
what is compiled in -- its structure arrays, the sizes of the axes it is compiled for, which
pools have a storage ceiling -- and of the kernel's code (this file, the kernel's, the
rewriting's, the decorator's, Numba's version), so a changed kernel or chain is a new key.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.core import config as numba_config

from retwin.kernels import contract, flow, unroll
from retwin.kernels._jit import _write_whole, generated_code, jit, kernel_cache_dir

__all__ = ["SIZED", "chain_constants", "kernel_for", "specialise", "structure_key", "unrolled"]

#: The most statements a chain's plant pass may become unrolled (baotou-2024's: ~1,950).
MAX_UNROLLED = 2500

#: The axes whose sizes a specialised kernel is compiled for (its loops over them are
#: unrolled): not days, months or calendar entries, which vary among a chain's what-ifs.
SIZED: tuple[str, ...] = ("P", "P1", "L1", "LP", "I", "O", "S", "M", "K", "G", "Q", "R",
                          "6", "1")

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
        for f in (flow._FILENAME, __file__, sys.modules[jit.__module__].__file__,
                  unroll.__file__):
            h.update(Path(str(f)).read_bytes())
        h.update(repr((numba.__version__, sys.implementation.cache_tag, contract.STRUCTURE,
                       contract.PACKED_INTS, contract.PACKED_FLOATS, contract.PACKED_2D,
                       contract.UNPACKED)).encode())
        _CODE_DIGEST = h.digest()
    return _CODE_DIGEST


def structure_key(static: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> str:
    """The key of a chain's specialised kernel: a digest of its structure arrays, of the
    sizes of the axes it is compiled for (:data:`SIZED`), of which pools have a storage
    ceiling (with the structure, what the kernel's plan follows from) -- all in ``static``
    and ``sizes``, a compiled scenario's kernel inputs and sizes -- and of the kernel's
    code."""
    h = hashlib.sha256(_code_digest())
    for n in contract.STRUCTURE:
        a = np.ascontiguousarray(static[n], dtype=np.int64)
        h.update(f"{n}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(repr([(ax, int(sizes[ax])) for ax in SIZED if ax in sizes]).encode())
    h.update(np.isfinite(np.asarray(static["pool_max"], dtype=np.float64)).tobytes())
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


def _plan(static: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> np.ndarray:
    """The chain's plan (the kernel's ``plan``, worked out as a run's first call does)."""
    plan = np.zeros(contract.plan_words(sizes), dtype=np.int64)
    flow._work_out_plan(plan, *(np.ascontiguousarray(static[n], dtype=np.int64) for n in (
        "order", "lvl_ptr", "lvl_pool_ptr", "lvl_pools", "plant_quota", "in_ptr", "in_pool",
        "out_ptr", "out_pool")), np.ascontiguousarray(static["pool_max"], dtype=np.float64))
    return plan


def chain_constants(static: Mapping[str, np.ndarray], sizes: Mapping[str, int]
                    ) -> dict[str, np.ndarray]:
    """What a chain's kernel has compiled in: its structure arrays (of ``static``, a compiled
    scenario's kernel inputs) and its plan, each a read-only copy of its own."""
    constants: dict[str, np.ndarray] = {}
    for n in contract.STRUCTURE:
        constants[n] = np.array(static[n], dtype=np.int64)
    constants["plan"] = _plan(static, sizes)
    for a in constants.values():
        a.setflags(write=False)
    return constants


def unrolled(source: str, name: str, constants: Mapping[str, np.ndarray],
              sizes: Mapping[str, int]) -> ast.Module:
    """The generated entry point of :mod:`retwin.kernels.flow` (``source``, the file's
    text), named ``name``, with ``constants`` (the structure arrays and the plan, read as
    globals) put in: :class:`retwin.kernels.unroll.Unroll` unrolls its loops over them."""
    frozen = tuple(constants)
    fn = ast.parse(flow._entry_source(source, frozen=frozen, name=name)).body[0]
    assert isinstance(fn, ast.FunctionDef)
    shapes = {a.name: a.shape({**sizes, "W": len(constants["plan"])})
              for a in contract.FLOW_ARRAYS
              if a.name not in constants and all(ax in SIZED or ax == "W" for ax in a.axes)}
    parts = getattr(flow._plan_parts, "py_func", flow._plan_parts)
    rewritten = unroll.Unroll(constants, shapes=shapes, functions={"_plan_parts": parts},
                              within="lv", max_statements=MAX_UNROLLED).function(fn)
    # the plan is also left in the state, as the general kernel leaves it
    i = contract.PACKED_INTS.index("plan")
    keep = ast.parse(f"si[si_off[{i}]:si_off[{i + 1}]] = plan").body[0]
    for node in ast.walk(keep):
        ast.copy_location(node, rewritten.body[0])
    rewritten.body.insert(0, keep)
    return ast.fix_missing_locations(ast.Module(body=[rewritten], type_ignores=[]))


def _build(key: str, static: Mapping[str, np.ndarray], sizes: Mapping[str, int]
           ) -> Callable[..., None]:
    """The specialised kernel of ``key`` as a (not yet compiled) dispatcher: the generated
    entry point of :mod:`retwin.kernels.flow` with the structure arrays and the chain's
    plan put in (:func:`unrolled`), and read as its globals where they are still read."""
    name = _name(key)
    constants = chain_constants(static, sizes)
    source = Path(flow._FILENAME).read_text(encoding="utf-8")
    code = generated_code(
        flow._FILENAME, source, lambda s: unrolled(s, name, constants, sizes),
        kernel_cache_dir(flow._flow), name=f"flow.{name}",
        layout=repr((key, contract.STRUCTURE, contract.PACKED_INTS, contract.PACKED_FLOATS,
                     contract.PACKED_2D, contract.UNPACKED)))
    scope: dict[str, Any] = {**vars(flow), "__name__": flow.__name__, **constants}
    exec(code, scope)
    compiled: Callable[..., None] = jit(scope[name], wraparound=False)  # as the general one
    return compiled


def kernel_for(key: str, static: Mapping[str, np.ndarray], sizes: Mapping[str, int]
               ) -> Callable[..., None] | None:
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
    kernel = _KERNELS[key] = _build(key, static, sizes)
    return kernel


def specialise(key: str, static: Mapping[str, np.ndarray], sizes: Mapping[str, int],
               call: tuple[Any, ...]) -> Callable[..., None]:
    """Compile the specialised kernel of ``key`` (or load it from the on-disk cache), keep
    it for this process and mark it in the cache for the next ones. ``call`` is a packed call
    of this chain (:attr:`retwin.kernels.contract.Packed.call`): the argument types it is
    compiled for. With ``NUMBA_DISABLE_JIT=1`` the kernel is plain Python, kept for this
    process only."""
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _build(key, static, sizes)
    if not _jit_off():
        signature = (numba.types.int64, numba.types.int64, *map(numba.typeof, call))
        kernel.compile(signature)  # type: ignore[attr-defined]
        mark = _mark(key)
        if mark is not None:
            _write_whole(mark, _stamp())
    _KERNELS[key] = kernel
    _ABSENT.discard(key)
    return kernel
