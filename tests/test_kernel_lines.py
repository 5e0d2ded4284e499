"""The kernel's line profiler (``benchmarks/kernel_lines.py``): instructions put on their
source lines from ``objdump -dl``, samples counted on the line of the instruction they
fell on."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kernel_lines", ROOT / "benchmarks" / "kernel_lines.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: ``objdump -dl`` of two functions: the first compiled from flow.py (and an inlined helper
#: of another file), the second not asked for.
DUMP = textwrap.dedent("""\

    kernel.o:     file format elf64-x86-64


    Disassembly of section .text:

    0000000000000040 <other>:
    other():
    /src/retwin/kernels/flow.py:7
          40:\tpush   %rbp
          41:\tret

    0000000000000100 <kernel>:
    kernel():
    /src/retwin/kernels/flow.py:100
         100:\tpush   %rbp
         101:\tmov    %rsp,%rbp
    /src/retwin/kernels/flow.py:412 (discriminator 3)
         104:\tadd    $0x1,%rax
    /usr/lib/python3/numpy/helper.py:9
         108:\tvaddsd %xmm0,%xmm1,%xmm1
    /src/retwin/kernels/flow.py:600
         10c:\tvmovsd %xmm1,(%rdi)
         110:\tret

    0000000000000120 <after>:
    /src/retwin/kernels/flow.py:5
         120:\tret
    """)


def test_instructions_are_put_on_their_lines_of_the_kernel_only() -> None:
    kl = _tool()
    offsets, lines = kl.line_table(DUMP, "kernel", "flow.py")
    assert offsets == [0x0, 0x1, 0x4, 0x8, 0xC, 0x10]  # from the symbol's start
    assert lines == [100, 100, 412, None, 600, 600]  # another file's line: None
    with pytest.raises(ValueError, match="'absent' is not in the disassembly"):
        kl.line_table(DUMP, "absent", "flow.py")


def test_samples_are_counted_on_the_line_of_their_instruction() -> None:
    kl = _tool()
    offsets, lines = kl.line_table(DUMP, "kernel", "flow.py")
    start = 0x7F00_0000_0000  # where the function was loaded
    ips = [start - 1,  # before it: not counted
           start, start + 0x1,  # line 100
           start + 0x4, start + 0x6, start + 0x7,  # inside the instruction at 0x4: line 412
           start + 0x8,  # the helper's line
           start + 0xC, start + 0x10,  # line 600
           start + 0x10 + 16]  # past its last instruction: not counted
    counts = kl.attribute(ips, start, offsets, lines)
    assert counts == {100: 2, 412: 3, None: 1, 600: 2}
    assert kl.attribute(ips, start, [], []) == {}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_a_compiled_function_is_put_on_its_own_lines(tmp_path: Path) -> None:
    """A function compiled as the tool compiles the kernel (line information on, bounds
    checks off): every instruction of the loop's body is put on a line of its source."""
    numba = pytest.importorskip("numba")
    from numba.core import config

    if config.DISABLE_JIT:
        pytest.skip("needs compiled code (NUMBA_DISABLE_JIT is set)")
    src = tmp_path / "summed.py"
    src.write_text(textwrap.dedent("""\
        def summed(a):
            s = 0.0
            for i in range(a.shape[0]):
                s += a[i] * 2.0
            return s
        """))
    scope: dict[str, object] = {}
    exec(compile(src.read_text(), str(src), "exec"), scope)
    fn = numba.njit(debug=True, boundscheck=False)(scope["summed"])
    assert fn(np.arange(4.0)) == 12.0
    cres = fn.overloads[fn.signatures[0]]
    lib, name = cres.library, cres.fndesc.llvm_func_name
    obj = tmp_path / "summed.o"
    obj.write_bytes(lib._codegen._tm.emit_object(lib._final_module))
    dump = subprocess.run(["objdump", "-dl", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True).stdout
    offsets, lines = _tool().line_table(dump, name, "summed.py")
    assert offsets and offsets[0] == 0 and offsets == sorted(offsets), dump
    placed = {n for n in lines if n is not None}
    assert placed and placed <= {1, 2, 3, 4, 5}, placed  # lines of summed.py only
    assert 4 in placed  # the loop's body
