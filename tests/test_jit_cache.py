"""Kernels loaded from Numba's on-disk cache without parsing their linking module
(:func:`retwin.kernels._jit._link_modules_when_needed`): the names a loaded kernel defines
are read from its machine code, and its module is parsed only when a compilation links it.
Each check runs in a fresh process, where the kernels come from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from numba.core import config as numba_config

from retwin.kernels._jit import elf_defined_symbols

pytestmark = pytest.mark.skipif(bool(getattr(numba_config, "DISABLE_JIT", False)),
                                reason="no kernels are compiled with the JIT off")

#: In a fresh process: a run (its kernels loaded from the cache), then, for every loaded
#: kernel, the names its machine code defines against those its module defines, and
#: whether the engine knows them; then a function compiled here that calls a loaded kernel.
_CHECK = r"""
import json, sys
import numba, numpy as np
import retwin
from retwin.kernels import streams
from retwin.kernels._jit import elf_defined_symbols
from numba.core import codegen
from numba.core.registry import cpu_target

objects = {}  # each library loaded, with the machine code it was loaded from
patched = codegen.CPUCodeLibrary._unserialize.__func__

def recorded(cls, cg, state):
    lib = patched(cls, cg, state)
    objects[id(lib)] = state[2][0]
    return lib

codegen.CPUCodeLibrary._unserialize = classmethod(recorded)
sc = retwin.load_scenario(sys.argv[1])
retwin.run(retwin.prepare(sc), seed=1)
engine = cpu_target.target_context.codegen()._engine
libs = []
for mod in [m for name, m in sorted(sys.modules.items()) if name.startswith("retwin.")]:
    for obj in vars(mod).values():
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            libs += [(obj.py_func.__qualname__, cres.library)
                     for cres in obj.overloads.values()]
lazy = [lib for _, lib in libs if "_retwin_bitcode" in lib.__dict__]
from numba.core.runtime import nrt
runtime_cached = "_retwin_bitcode" in nrt.rtsys.library.__dict__
kernel = next(iter(streams._generate64.overloads.values())).library
was_lazy = "_retwin_bitcode" in kernel.__dict__

@numba.njit(cache=False)
def outer(words, key, out):
    streams._generate64(words, key, out)

words = np.array(streams.entropy_words(20261202), dtype=np.int64)
direct, linked = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
streams._generate64(words, 7, direct)
outer(words, 7, linked)
same = []
for lib in lazy:
    module = lib._get_module_for_linking()  # parsed now (the one linked: before)
    names = {g.name for gs in (module.functions, module.global_variables) for g in gs
             if not g.is_declaration}
    same.append(names == elf_defined_symbols(objects[id(lib)])
                and all(engine.is_symbol_defined(x) for x in names))

print(json.dumps({"loaded": len(libs), "lazy": len(lazy), "same": same,
                  "kernel_was_lazy": was_lazy, "runtime_cached": runtime_cached,
                  "linked": bool(np.array_equal(direct, linked)) and
                            "_retwin_bitcode" not in kernel.__dict__}))
"""


def test_cached_kernels_load_without_their_module_and_still_link() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    runs = [subprocess.run([sys.executable, "-c", _CHECK, "baotou-2024"], capture_output=True,
                           text=True, env=env, timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(runs[1].stdout.strip().splitlines()[-1])  # the second: from the cache
    assert got["lazy"] >= 10 and got["lazy"] == got["loaded"], got
    assert got["same"] == [True] * got["lazy"], got
    assert got["kernel_was_lazy"] and got["linked"], got
    assert got["runtime_cached"], got  # Numba's runtime too, linked into `outer` as well


def test_a_damaged_runtime_cache_is_compiled_again() -> None:
    """A runtime file that does not check out is ignored, the runtime compiled as Numba does
    and the file written anew."""
    from retwin.kernels._jit import jit, kernel_cache_dir

    folder = kernel_cache_dir(jit)
    assert folder is not None
    path = folder / f"numba_runtime.{sys.implementation.cache_tag}.nbo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    code = ("import retwin; r = retwin.run(retwin.prepare(retwin.load_scenario('tiny')), "
            "seed=1); assert r.balance.closes; from numba.core.runtime import nrt; "
            "print('_retwin_bitcode' in nrt.rtsys.library.__dict__)")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600,
                   capture_output=True)
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-7])  # cut short
        first = subprocess.run([sys.executable, "-c", code], env=env, timeout=600,
                               capture_output=True, text=True)
        assert first.returncode == 0, first.stderr[-2000:]
        assert first.stdout.split() == ["False"]  # compiled
        assert path.read_bytes() != good[:-7]  # and written again
        again = subprocess.run([sys.executable, "-c", code], env=env, timeout=600,
                               capture_output=True, text=True)
        assert again.stdout.split() == ["True"]  # loaded
    finally:
        path.write_bytes(good)


def test_only_elf_objects_are_read() -> None:
    assert elf_defined_symbols(b"\xcf\xfa\xed\xfe" + bytes(60)) is None  # Mach-O
    assert elf_defined_symbols(b"\x7fELF\x01\x01" + bytes(58)) is None  # 32-bit ELF
    assert elf_defined_symbols(b"\x7fELF\x02\x01" + bytes(10)) is None  # cut short
