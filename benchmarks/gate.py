"""The regression gate: the working tree against a previous commit, on a noisy machine.

``python benchmarks/gate.py [--base REV]`` (``make bench-gate``) exports ``REV`` (default
``HEAD~1``) with ``git archive`` into a cache folder, gives it its own virtual environment
(pip's cache makes that a minute or so; it is kept per commit for the next gate), readies
both trees by the same commands (their bytecode written, their kernels in the on-disk cache:
see ``_ready_tree``), and starts one long-lived probe process per tree
(``benchmarks/gate_probe.py``, the same measuring code for both). Then, round after round,
it times each core benchmark on the base tree and on the working tree back to back,
alternating which goes first (A B, B A, ...; a side's figure is the fastest of a few calls;
CPU time where the work runs in the probe process tree, see ``CLOCK``), and takes the ratio
working/base *within the round*. Load from other processes that comes and goes shifts both
sides of a round alike and cancels in the ratio; the median over many short rounds ignores
the rounds it did not cancel in.

A benchmark whose median ratio is above the limit (``--limit``, default 1.15: 15 % slower)
gets as many rounds again, and fails only if the median over all its rounds is still above.
Exit status: 0 pass, 1 a regression, 0 with a line saying why when there is nothing to
compare (no previous commit, or it has no benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from gate_probe import BENCHES  # noqa: E402

#: Timed calls per side and round. The round's figure of a side is the fastest of them: a
#: deterministic computation is never faster than its cost, and whatever else the machine
#: does only adds time.
CALLS = {"warm_run": 10, "kernel": 10, "results": 6, "replications_100": 1, "whatif_http": 3,
         "cold_start": 1}
#: What is compared: CPU time of the probe's process tree (its own, its children's, the
#: service's worker processes'): another process's load delays a computation but does not
#: make it use more CPU. Wall time is printed alongside.
CLOCK = {b: "cpu" for b in CALLS}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retwin-bench-gate"


def _build(sha: str, python: str) -> Path:
    """The base tree exported and installed in its own venv (made once per commit)."""
    root = _cache_root()
    tree = root / sha
    stamp = tree / ".gate-ready"
    if stamp.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    venv = tree / ".venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    # the service extra and httpx (the in-process client of the what-if benchmark)
    done = subprocess.run([*pip, "-e", f"{tree}[api]", "httpx"], capture_output=True,
                          text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"bench-gate: could not install {sha[:10]} in its own environment")
    stamp.touch()
    # keep the three most recent base trees
    olds = sorted((p for p in root.iterdir() if (p / ".gate-ready").exists()),
                  key=lambda p: (p / ".gate-ready").stat().st_mtime)
    for p in olds[:-3]:
        shutil.rmtree(p, ignore_errors=True)
    return tree


def _ready_tree(name: str, python: Path, tree: Path) -> None:
    """Make both trees start alike: the bytecode of their packages written and the compiled
    kernels in their on-disk cache, by the same commands for either side.

    A tree whose modules compile from source at every import (a fresh export, where
    ``PYTHONDONTWRITEBYTECODE`` is set) or whose kernels compile inside its probe measures
    slower for that alone -- 5-10 % on the cold start, the what-if over HTTP (whose worker
    processes import the packages) and the warm run, with identical code on both sides.
    """
    t0 = time.perf_counter()
    subprocess.run([str(python), "-m", "compileall", "-q", "-j", "1", str(tree / "src")],
                   cwd=tree, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    warm = subprocess.run([str(python), "-m", "retwin.cli", "warmup"], cwd=tree,
                          capture_output=True, text=True)
    if warm.returncode:  # an older tree without the command: its probe compiles what it uses
        print(f"  {name}: no `retwin warmup` ({warm.stderr.strip()[-120:]})", flush=True)
    print(f"  {name} tree ready in {time.perf_counter() - t0:.0f} s (bytecode, kernel cache)",
          flush=True)


class _Side:
    """A probe process of one tree."""

    def __init__(self, name: str, python: Path, tree: Path) -> None:
        self.name = name
        self.tail: deque[str] = deque(maxlen=40)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
        env.pop("PYTHONPATH", None)
        # one BLAS / OpenMP thread: the two sides never run at once, and helper threads
        # spinning after a call would be charged to whichever side runs next
        env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
        self.proc = subprocess.Popen([str(python), str(HERE / "gate_probe.py")], cwd=tree,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        _drain_stderr(self)
        hello = self._read()
        self.where = hello["path"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            time.sleep(0.5)  # the last lines of its stderr
            raise RuntimeError(f"the {self.name} probe stopped:\n" + "".join(self.tail))
        return dict(json.loads(line))

    def ask(self, **req: Any) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(req) + "\n")
        stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()


def _drain_stderr(side: _Side) -> None:
    """A probe's stderr is read by a thread that keeps its last lines (a full pipe would
    block the probe)."""

    def pump() -> None:
        assert side.proc.stderr is not None
        for line in side.proc.stderr:
            side.tail.append(line)
            if os.environ.get("BENCH_GATE_VERBOSE"):
                sys.stderr.write(f"[{side.name}] {line}")
    threading.Thread(target=pump, daemon=True).start()


def _round(base: _Side, work: _Side, bench: str, i: int
           ) -> tuple[float, float, float, float]:
    """One round: both sides back to back (order alternating); working/base of the clock,
    each side's figure, working/base of wall time."""
    n = CALLS[bench]
    order = (base, work) if i % 2 == 0 else (work, base)
    best, walls = {}, {}
    for side in order:
        got = side.ask(op="time", bench=bench, n=n)
        best[side.name] = min(got[CLOCK[bench]])
        walls[side.name] = min(got["wall"])
    return (best["work"] / best["base"], best["base"], best["work"],
            walls["work"] / walls["base"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=os.environ.get("BENCH_BASE", "HEAD~1"),
                    help="the commit to compare against (default HEAD~1)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "9")))
    ap.add_argument("--limit", type=float, default=1.15,
                    help="fail when working/base is above this (default 1.15)")
    ap.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError:
        print(f"bench-gate: skipped: there is no commit {args.base} to compare against")
        return 0
    listing = _git("ls-tree", "--name-only", sha)
    if "benchmarks" not in listing.split():
        print(f"bench-gate: skipped: {args.base} ({sha[:10]}) has no benchmarks folder")
        return 0
    print(f"bench-gate: working tree against {args.base} ({sha[:10]}): "
          f"{_git('log', '-1', '--format=%s', sha)[:70]}", flush=True)
    python = os.environ.get("BENCH_GATE_PYTHON") or shutil.which("python3") or sys.executable
    t0 = time.perf_counter()
    tree = _build(sha, python)
    print(f"  base environment ready in {time.perf_counter() - t0:.0f} s ({tree})", flush=True)

    sides = (("base", tree / ".venv" / "bin" / "python", tree),
             ("work", Path(sys.executable), REPO))
    for name, py, where in sides:
        _ready_tree(name, py, where)
    base = _Side(*sides[0])
    work = _Side(*sides[1])
    try:
        benches: list[str] = []
        for bench in args.only:
            t0 = time.perf_counter()
            ok = [s.ask(op="setup", bench=bench) for s in (base, work)]
            if not all(o["ok"] for o in ok):
                why = "; ".join(f"{s.name}: {o['why']}" for s, o in zip((base, work), ok,
                                                                         strict=True)
                                if not o["ok"])
                print(f"  {bench}: skipped, not runnable on both trees ({why})")
                continue
            print(f"  {bench}: set up in {time.perf_counter() - t0:.1f} s", flush=True)
            benches.append(bench)
        ratios: dict[str, list[float]] = {b: [] for b in benches}
        secs: dict[str, list[tuple[float, float]]] = {b: [] for b in benches}
        wall_ratios: dict[str, list[float]] = {b: [] for b in benches}

        def rounds(which: list[str], n: int, offset: int) -> None:
            for i in range(n):
                for b in which:
                    r, a, w, rw = _round(base, work, b, offset + i)
                    ratios[b].append(r)
                    wall_ratios[b].append(rw)
                    secs[b].append((a, w))
                print(f"  round {offset + i + 1}: " + "  ".join(
                    f"{b} {ratios[b][-1]:.3f}" for b in which), flush=True)

        rounds(benches, args.rounds, 0)
        suspect = [b for b in benches if statistics.median(ratios[b]) > args.limit]
        if suspect:
            print(f"  above {args.limit:.2f} after {args.rounds} rounds: "
                  f"{', '.join(suspect)}; {args.rounds} more rounds of those", flush=True)
            rounds(suspect, args.rounds, args.rounds)
    finally:
        base.close()
        work.close()

    failed = []
    print()
    print(f"{'benchmark':<18}{'base ms':>10}{'work ms':>10}{'ratio':>8}{'q1-q3':>14}"
          f"{'wall ratio':>12}{'rounds':>8}  verdict")
    for b in benches:
        r = sorted(ratios[b])
        med = statistics.median(r)
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
        a = statistics.median(x for x, _ in secs[b]) * 1000
        w = statistics.median(y for _, y in secs[b]) * 1000
        bad = med > args.limit
        failed += [b] if bad else []
        print(f"{b:<18}{a:>10.2f}{w:>10.2f}{med:>8.3f}{q[0]:>7.3f}-{q[2]:<6.3f}"
              f"{statistics.median(wall_ratios[b]):>12.3f}{len(r):>8}  "
              f"{'SLOWER' if bad else 'ok'}")
    print(f"\nbench-gate: {time.perf_counter() - t_start:.0f} s; ms: CPU time of the probe's "
          f"process tree, the median of each round's fastest call; ratio = working / base, the "
          f"median over rounds of each round's ratio; limit {args.limit:.2f}")
    if failed:
        print(f"bench-gate: FAILED: {', '.join(failed)} more than "
              f"{(args.limit - 1) * 100:.0f} % slower than {args.base}")
        return 1
    print("bench-gate: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
