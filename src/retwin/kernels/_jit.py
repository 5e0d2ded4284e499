"""The one place that configures Numba: decorator options and cache."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import marshal
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any, TypeVar, cast

import numba

from retwin.config import NUMBA_CACHE


def _skip_numba_blas_probe() -> None:
    """Load Numba's array-math registry without its BLAS probe.

    When Numba's CPU target first loads (the first compile, or the first load from the
    on-disk cache) it imports ``numba.np.arraymath``, which imports ``scipy.linalg`` only to
    see whether BLAS is there: ~150 ms, half of loading our cached kernel in a fresh process,
    for kernels that use no linear algebra. The probe is answered here from whether scipy is
    installed, as it would be; functions that do use BLAS (``np.dot``) still import
    ``scipy.linalg`` when they are compiled (Numba's ``ensure_blas``).
    """
    if "numba.np.arraymath" in sys.modules:
        return
    probe = "scipy.linalg.cython_blas"
    blocked = probe not in sys.modules
    if blocked:
        sys.modules[probe] = None  # type: ignore[assignment]  # the import fails at once
    try:
        import numba.np.arraymath as arraymath
    finally:
        if blocked and sys.modules.get(probe, False) is None:
            del sys.modules[probe]
    arraymath._HAVE_BLAS = importlib.util.find_spec("scipy") is not None


_skip_numba_blas_probe()


def _load_cached_without_refresh() -> None:
    """Load a kernel from the on-disk cache without first loading Numba's whole registry.

    Numba's cache refreshes the target context before it loads a cached function: it
    imports and installs every typing and lowering registry (~100 ms, most of loading our
    cached kernels in a fresh process) that only a compilation reads. A loaded function
    needs the runtime (NRT) alone; a compilation refreshes the contexts itself (Numba's
    ``CompilerBase``), so a cache miss still sees every registry.
    """
    from numba.core.caching import Cache
    from numba.core.runtime import rtsys

    if getattr(Cache.load_overload, "_retwin", False):
        return

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload._retwin = True  # type: ignore[attr-defined]
    Cache.load_overload = load_overload  # type: ignore[method-assign]


_load_cached_without_refresh()

#: An ELF symbol table entry (``Elf64_Sym``, little-endian).
_ELF_SYM = [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
            ("value", "<u8"), ("size", "<u8")]


def elf_defined_symbols(obj: bytes) -> set[str] | None:
    """The names of the functions and data an ELF64 little-endian object file defines (its
    symbol table's entries with a section, less section and file entries); ``None`` for any
    other object format, or an object it cannot read."""
    import struct

    if obj[:4] != b"\x7fELF" or obj[4:6] != b"\x02\x01":
        return None
    try:
        return _elf_symbols(obj)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


def _elf_symbols(obj: bytes) -> set[str]:
    import struct

    import numpy as np

    (shoff,) = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize)
             for i in range(shnum)]
    names: set[str] = set()
    for _, sh_type, _, _, offset, size, link, _, _, _ in heads:
        if sh_type != 2:  # SHT_SYMTAB
            continue
        strtab = heads[link][4]
        syms = np.frombuffer(obj, dtype=np.dtype(_ELF_SYM), count=size // 24, offset=offset)
        for name, info, shndx in zip(syms["name"].tolist(), syms["info"].tolist(),
                                     syms["shndx"].tolist(), strict=True):
            if shndx == 0 or name == 0 or info & 0xF in (3, 4):  # undefined, section, file
                continue
            start = strtab + name
            names.add(obj[start:obj.index(b"\0", start)].decode())
    return names


def _link_modules_when_needed() -> None:
    """Load a kernel from the on-disk cache without parsing its linking module.

    A cached kernel is its machine code and the LLVM bitcode of its module; Numba parses the
    bitcode as it loads the kernel, for two things: the names the code defines (which it
    records, to look up only symbols that exist), and linking the kernel into a function
    compiled later that calls it. Parsing was 40-60 ms of a fresh process's first run of
    ``baotou-2024`` (its 14 kernels). The names are read here from the machine code's symbol
    table instead (the same set: checked on every kernel of the package), and the bitcode is
    parsed only when a compilation links the kernel. Code in another format than ELF is
    loaded as Numba loads it."""
    from numba.core import codegen as cg

    lib = cg.CPUCodeLibrary
    if getattr(lib._unserialize, "_retwin", False):
        return
    if not all(hasattr(lib, a) for a in ("_unserialize", "_get_module_for_linking",
                                         "enable_object_caching", "_set_compiled_object",
                                         "_finalize_final_module")):
        return  # another Numba: leave its loading alone
    unserialize = lib._unserialize.__func__  # type: ignore[attr-defined]
    for_linking = lib._get_module_for_linking

    def _unserialize(cls: Any, codegen: Any, state: Any) -> Any:
        name, kind, data = state
        names = elf_defined_symbols(data[0]) if kind == "object" else None
        defined = getattr(getattr(codegen, "_engine", None), "_defined_symbols", None)
        if names is None or not isinstance(defined, set):
            return unserialize(cls, codegen, state)
        self = codegen.create_library(name)
        self.enable_object_caching()
        self._set_compiled_object(data[0])
        self._retwin_bitcode = data[1]  # parsed by _get_module_for_linking, if ever
        self._finalize_final_module()
        defined |= names
        return self

    def _get_module_for_linking(self: Any) -> Any:
        bitcode = self.__dict__.pop("_retwin_bitcode", None)
        if bitcode is not None and self._shared_module is None:
            import llvmlite.binding as ll

            self._shared_module = ll.parse_bitcode(bitcode)
        return for_linking(self)

    _unserialize._retwin = True  # type: ignore[attr-defined]
    lib._unserialize = classmethod(_unserialize)  # type: ignore[assignment,method-assign]
    lib._get_module_for_linking = _get_module_for_linking  # type: ignore[method-assign]


_link_modules_when_needed()

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def indices_as_given() -> Iterator[None]:
    """Compile with integer indices taken as they are: no wraparound of negative ones.

    Numba gives a negative index Python's meaning (the axis length is added to it): a
    compare and a select on every array access, which the compiler can seldom prove
    unneeded in a kernel whose indices come from other arrays (``stock[in_pool[j]]``).
    In the flow kernel that was about a seventh of its time on baotou-2024 (an eleventh on
    the peer chain). Only for code whose indices are never negative: there a negative index
    reads outside the array instead of from its end (as one past the end already does
    without bounds checks). Compiled with ``boundscheck=True`` too, such code raises
    IndexError on a negative index, as on any other out of range (how the tests check it).

    Holds Numba's compiler lock, so no other compilation sees the change; under another
    Numba that does not lower indices through ``fix_integer_index``, compiles as usual.
    """
    from numba.core import types
    from numba.core.compiler_lock import global_compiler_lock
    from numba.np import arrayobj

    given = getattr(arrayobj, "fix_integer_index", None)
    if given is None:
        yield
        return

    def as_given(context: Any, builder: Any, idxty: Any, idx: Any, size: Any) -> Any:
        if idxty.signed:
            return context.cast(builder, idx, idxty, types.intp)
        return given(context, builder, idxty, idx, size)

    with global_compiler_lock:
        arrayobj.fix_integer_index = as_given
        try:
            yield
        finally:
            arrayobj.fix_integer_index = given


def jit(fn: F | None = None, *, inline: bool = False, wraparound: bool = True) -> Any:
    """``numba.njit`` with the project's options: cached; no fastmath (sums stay exact in
    order, so golden results and the mass balance are reproducible bit for bit); numpy's
    error model (a float division by zero gives inf rather than a branch to raise).

    ``inline=True`` inlines the kernel into compiled callers (it stays callable from Python).
    ``wraparound=False`` compiles it with its integer indices taken as they are
    (:func:`indices_as_given`): for a kernel whose indices are never negative.
    """

    def wrap(f: F) -> F:
        compiled: Any = numba.njit(cache=NUMBA_CACHE, fastmath=False, nogil=True,
                                   error_model="numpy",
                                   inline="always" if inline else "never")(f)
        if not wraparound and hasattr(compiled, "compile"):  # (not NUMBA_DISABLE_JIT)
            compile_for = compiled.compile

            def compile(sig: Any) -> Any:
                with indices_as_given():
                    return compile_for(sig)

            compiled.compile = compile  # where the dispatcher compiles (or loads) a signature
        return cast(F, compiled)

    return wrap(fn) if fn is not None else wrap


def kernel_cache_dir(fn: Callable[..., Any]) -> Path | None:
    """The folder of Numba's on-disk cache for the kernels of ``fn``'s file (``__pycache__``
    beside it, ``NUMBA_CACHE_DIR``, or the user's cache where that cannot be written), or
    ``None`` when kernels are not cached (``RETWIN_NUMBA_CACHE=0``) or nowhere can be
    written."""
    if not NUMBA_CACHE:
        return None
    from numba.core.caching import FunctionCache

    try:
        return Path(FunctionCache(fn).cache_path)
    except RuntimeError:  # no writable place
        return None


def generated_code(filename: str, source: str, generate: Callable[[str], str | ast.Module],
                   cache_dir: Path | None, *, name: str, layout: str = "") -> CodeType:
    """``compile(generate(source), filename, "exec")`` (with no ``__future__`` flags of the
    caller's), kept in ``cache_dir`` under ``name``.

    For code generated from a module's own text (a kernel's entry point). The cache file
    holds a key of everything the code follows from (Python's bytecode version, ``filename``,
    ``layout``: whatever else ``generate`` reads, and ``source``), a digest of the code, and
    the code (``marshal``). It is used only when both match; otherwise the code is generated
    and the file written anew, whole or not at all (a reader sees the old file or the new
    one). A folder that cannot be written leaves the code uncached.
    """
    key = hashlib.sha256(b"\0".join((
        importlib.util.MAGIC_NUMBER, Path(__file__).read_bytes(),
        *(part.encode("utf-8", "surrogatepass") for part in (filename, layout, source))))
    ).digest()
    path = None if cache_dir is None else \
        cache_dir / f"{name}.{sys.implementation.cache_tag}.code"
    body = _read_keyed(path, key)
    if body is not None:
        try:
            code = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            code = None
        if isinstance(code, CodeType):
            return code
    code = compile(generate(source), filename, "exec", dont_inherit=True)
    _write_keyed(path, key, marshal.dumps(code))
    return code


def _read_keyed(path: Path | None, key: bytes) -> bytes | None:
    """The body of cache file ``path`` (``key``, a digest of the body, the body), or
    ``None`` when there is none, it was written under another key or it does not check
    out."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    body = data[64:]
    if data[:32] == key and data[32:64] == hashlib.sha256(body).digest():
        return body
    return None


def _write_keyed(path: Path | None, key: bytes, body: bytes) -> None:
    """Write cache file ``path`` as :func:`_read_keyed` reads it (nothing when ``None``)."""
    if path is not None:
        _write_whole(path, key + hashlib.sha256(body).digest() + body)


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a new file beside it, replaced into place (with
    the permissions a new file gets, as Numba's cache files); on any failure nothing is left
    behind and ``path`` is as it was."""
    import uuid

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _runtime_from_cache() -> None:
    """Numba's runtime functions (NRT), compiled once into the kernels' cache folder.

    Numba compiles its runtime's LLVM functions in every process, before the first kernel
    runs: 18-26 ms of a fresh process's first run. Their machine code is kept here beside
    the kernels', under a key of their LLVM text, Numba's and llvmlite's versions and the
    machine's target (its CPU and features), and later processes load it as they load a
    kernel (:func:`_link_modules_when_needed`). Anything unexpected compiles as Numba does.
    """
    from numba.core.runtime import nrtdynmod

    if getattr(nrtdynmod.compile_nrt_functions, "_retwin", False) or not NUMBA_CACHE:
        return
    compile_runtime = nrtdynmod.compile_nrt_functions

    def compile_nrt_functions(ctx: Any) -> Any:
        try:
            import llvmlite

            ir_mod, library = nrtdynmod.create_nrt_module(ctx)
            codegen = ctx.codegen()
            key = hashlib.sha256(repr((str(ir_mod), numba.__version__, llvmlite.__version__,
                                       codegen.magic_tuple())).encode()).digest()
            folder = kernel_cache_dir(jit)
        except Exception:  # another Numba: its own way
            return compile_runtime(ctx)
        path = None if folder is None else \
            folder / f"numba_runtime.{sys.implementation.cache_tag}.nbo"
        body = _read_keyed(path, key)
        if body is not None:
            n = int.from_bytes(body[:8], "little")
            return codegen.unserialize_library(
                (library.name, "object", (body[8:8 + n], body[8 + n:])))
        library.enable_object_caching()
        library.add_ir_module(ir_mod)
        library.finalize()
        if path is not None:
            with contextlib.suppress(Exception):  # uncached, it is only compiled again
                _, kind, (obj, bitcode) = library.serialize_using_object_code()
                if kind == "object":
                    _write_keyed(path, key, len(obj).to_bytes(8, "little") + bytes(obj)
                                 + bytes(bitcode))
        return library

    compile_nrt_functions._retwin = True  # type: ignore[attr-defined]
    nrtdynmod.compile_nrt_functions = compile_nrt_functions


_runtime_from_cache()
