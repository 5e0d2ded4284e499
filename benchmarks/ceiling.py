"""The machine's own 1 -> 2 process speed-up, beside the batch's (``test_bench_batch``): a
loop of plain Python arithmetic that shares nothing, run once on one process, then twice at
once on two. On a machine whose 2 cores are not fully its own (a virtual machine's, shared
with other guests) even this stays under 2x; the batch's speed-up is read against it."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

#: Iterations of the loop: about a quarter of a second on one core.
SPIN = 2_000_000


def spin(n: int = SPIN) -> None:
    """``n`` turns of a loop that touches no memory but its own."""
    s = 0
    for i in range(n):
        s += i * i % 7


def speedup(pool: ProcessPoolExecutor, n: int = SPIN) -> float:
    """One ``spin`` on ``pool`` (2 processes, started), then two at once: the ratio of the
    work done per second, 2 x one's wall over both's."""
    t0 = time.perf_counter()
    pool.submit(spin, n).result()
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in [pool.submit(spin, n) for _ in range(2)]:
        f.result()
    return 2 * one / (time.perf_counter() - t0)
