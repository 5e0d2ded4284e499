"""Where the flow kernel spends its time, line by line: a sampling profile of the kernel
specialised to one chain, each sample put on the line of ``retwin/kernels/flow.py`` that its
instruction was compiled from.

    python benchmarks/kernel_lines.py [MODEL] [--seconds S] [--calls C] [--top N]

The kernel is compiled as the specialised one is (:mod:`retwin.kernels.specialised`: the
chain's structure and plan put in, its plant pass unrolled, indices as given, no bounds
checks; each unrolled statement keeps the line it comes from), with line
information added (Numba's ``debug=True``), and its machine code is written out as an object
file, whose ``objdump -dl`` (binutils) gives each instruction's offset and line. The kernel
then runs the chain's whole horizon again and again, in ``--calls`` calls (a baotou-2024 run
makes about 85, one a month), each time from the state a model had after its first day,
under ``perf record`` (Debian: ``linux-perf``). Each sample that falls in the kernel's code
is put on its line; the table gives each line's share of those samples.

Lines are as the compiler left them: an optimised instruction serves several statements and
is put on one, so read neighbouring lines together. Only the samples that fall in the
kernel's code are counted (the state put back before each pass takes some of the others).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: ``objdump -dl`` lines: a source position, or an instruction at an offset.
_SOURCE = re.compile(r"^(/\S+?):(\d+)(?: \(discriminator \d+\))?$")
_INSN = re.compile(r"^\s+([0-9a-f]+):\s")
_SYMBOL = re.compile(r"^([0-9a-f]+) <(\S+)>:$")


def line_table(dump: str, symbol: str, source: str
               ) -> tuple[list[int], list[int | None]]:
    """The instructions of ``symbol`` in ``objdump -dl`` output ``dump``: their offsets from
    the symbol's start, in order, and the line of ``source`` (a file name) each was compiled
    from (``None``: a line of another file, or none)."""
    offsets: list[int] = []
    lines: list[int | None] = []
    start: int | None = None
    line: int | None = None
    for text in dump.splitlines():
        sym = _SYMBOL.match(text)
        if sym:
            if start is not None:
                break  # the next function
            if sym.group(2) == symbol:
                start = int(sym.group(1), 16)
            continue
        if start is None:
            continue
        pos = _SOURCE.match(text)
        if pos:
            line = int(pos.group(2)) if Path(pos.group(1)).name == source else None
            continue
        insn = _INSN.match(text)
        if insn:
            offsets.append(int(insn.group(1), 16) - start)
            lines.append(line)
    if start is None:
        raise ValueError(f"symbol {symbol!r} is not in the disassembly")
    return offsets, lines


def attribute(ips: list[int], start: int, offsets: list[int], lines: list[int | None]
              ) -> collections.Counter[int | None]:
    """How many of the sampled instruction addresses ``ips`` fall on each line, for a
    function loaded at ``start`` whose instructions are ``offsets`` and ``lines``
    (:func:`line_table`); addresses outside it are not counted."""
    counts: collections.Counter[int | None] = collections.Counter()
    if not offsets:
        return counts
    end = start + offsets[-1] + 16  # (the last instruction is at most 15 bytes)
    for ip in ips:
        if start <= ip < end:
            counts[lines[bisect.bisect_right(offsets, ip - start) - 1]] += 1
    return counts


def _child(model: str, seconds: float, calls: int, out: Path) -> None:
    """Compile the chain's kernel with line information, write its object code and where it
    is loaded into ``out``, then run it for ``seconds``."""
    import numba
    import numpy as np

    import retwin
    from retwin.engine.model import ChainModel
    from retwin.kernels import flow, specialised
    from retwin.kernels._jit import indices_as_given

    c = retwin.prepare(retwin.load_scenario(model))
    constants = specialised.chain_constants(c.kernel_static, c.kernel_sizes)
    code = specialised.unrolled(Path(flow._FILENAME).read_text(encoding="utf-8"),
                                "_advance_lines", constants, c.kernel_sizes)
    scope = {**vars(flow), "__name__": flow.__name__, **constants}
    exec(compile(code, flow._FILENAME, "exec"), scope)
    kernel = numba.njit(fastmath=False, nogil=True, error_model="numpy", debug=True,
                        boundscheck=False)(scope["_advance_lines"])
    model0 = ChainModel(c, seed=0)
    with indices_as_given():
        kernel.compile((numba.types.int64, numba.types.int64,
                        *map(numba.typeof, model0._packed)))
    model0.close()
    cres = kernel.overloads[kernel.signatures[0]]
    lib, name = cres.library, cres.fndesc.llvm_func_name
    (out / "kernel.o").write_bytes(lib._codegen._tm.emit_object(lib._final_module))
    (out / "kernel.at").write_text(f"{lib.get_pointer_to_function(name):x} {name}\n")
    # one model's state after its first day, put back before each pass over the horizon
    m = ChainModel(c, seed=1)
    m.env.run(until=1)
    state = m._packed
    first = [a.copy() for a in state]
    bounds = [int(b) for b in np.linspace(1, c.n_days, calls + 1)]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a, a0 in zip(state, first, strict=True):
            np.copyto(a, a0)
        for d0, d1 in itertools.pairwise(bounds):
            kernel(d0, d1, *state)
    m.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="baotou-2024",
                   help="a reference model's name or a scenario file (default: baotou-2024)")
    p.add_argument("--seconds", type=float, default=8.0, help="how long to sample (8)")
    p.add_argument("--calls", type=int, default=85,
                   help="kernel calls the horizon is split into (85, as a baotou-2024 run)")
    p.add_argument("--top", type=int, default=40, help="lines to list (40)")
    p.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.calls < 1 or a.top < 1:
        p.error(f"--seconds(={a.seconds}) must be > 0, --calls(={a.calls}) and "
                f"--top(={a.top}) >= 1")
    if a.child:
        _child(a.model, a.seconds, a.calls, Path(a.child))
        return 0
    missing = [t for t in ("perf", "objdump") if shutil.which(t) is None]
    if missing:
        print(f"{' and '.join(missing)} not found: install linux-perf and binutils "
              "(Debian)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="retwin-kernel-lines-") as tmp:
        out = Path(tmp)
        data = out / "perf.data"
        rec = subprocess.run(
            ["perf", "record", "-q", "-F", "4999", "-o", str(data), "--", sys.executable,
             __file__, a.model, "--seconds", str(a.seconds), "--calls", str(a.calls),
             "--child", tmp], env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if rec.returncode != 0 or not (out / "kernel.at").exists():
            print(f"perf record failed (exit {rec.returncode}); see above", file=sys.stderr)
            return 1
        start_hex, symbol = (out / "kernel.at").read_text().split()
        script = subprocess.run(["perf", "script", "-F", "ip", "-i", str(data)],
                                capture_output=True, text=True, check=True)
        ips = [int(x, 16) for x in script.stdout.split()]
        dump = subprocess.run(["objdump", "-dl", "--no-show-raw-insn", str(out / "kernel.o")],
                              capture_output=True, text=True, check=True).stdout
    from retwin.kernels import flow

    offsets, lines = line_table(dump, symbol, Path(flow._FILENAME).name)
    counts = attribute(ips, int(start_hex, 16), offsets, lines)
    total = sum(counts.values())
    if total == 0:
        print("no sample fell in the kernel: sample longer (--seconds)", file=sys.stderr)
        return 1
    text = Path(flow._FILENAME).read_text(encoding="utf-8").splitlines()
    print(f"{total:,} samples in the kernel, of {len(ips):,} (its compilation's "
          f"included); {a.model}, {a.calls} calls over the horizon")
    print(" share  line  flow.py")
    for line, n in counts.most_common(a.top):
        src = text[line - 1].strip() if line is not None and 0 < line <= len(text) else ""
        print(f"{n / total:6.1%} {line if line is not None else '-':>5}  {src[:88]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
