"""The first run in a fresh process, with the kernel cache warm (DESIGN §5: <= 2 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = (
    "import retwin; r = retwin.run(retwin.load_scenario('baotou-2024'), seed=1); "
    "assert r.balance.closes"
)


@pytest.mark.benchmark(group="startup")
def test_first_run_fresh_process(benchmark) -> None:  # type: ignore[no-untyped-def]
    subprocess.run([sys.executable, "-c", "import retwin; retwin.warmup()"], check=True)

    def fresh() -> int:
        return subprocess.run([sys.executable, "-c", CODE], check=True).returncode

    rc = benchmark.pedantic(fresh, rounds=3, warmup_rounds=0)
    assert rc == 0
