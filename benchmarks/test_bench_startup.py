"""The first run in a fresh process, with the kernel cache warm (DESIGN §5: <= 2 s), and the
``retwin run`` command as a whole process (target: <= 0.6 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CODE = (
    "import retwin; r = retwin.run(retwin.load_scenario('baotou-2024'), seed=1); "
    "assert r.balance.closes"
)

#: What the command needs and no more: a command that does not need one of these libraries
#: must not import it (tests/test_cli.py checks which; this times the whole).
RETWIN = Path(sys.executable).with_name("retwin")


def _warm() -> None:
    subprocess.run([sys.executable, "-c", "import retwin; retwin.warmup()"], check=True)


@pytest.mark.benchmark(group="startup")
def test_first_run_fresh_process(benchmark) -> None:  # type: ignore[no-untyped-def]
    _warm()

    def fresh() -> int:
        return subprocess.run([sys.executable, "-c", CODE], check=True).returncode

    rc = benchmark.pedantic(fresh, rounds=3, warmup_rounds=0)
    assert rc == 0


@pytest.mark.benchmark(group="startup")
def test_retwin_run_command(benchmark) -> None:  # type: ignore[no-untyped-def]
    """``retwin run baotou-2024`` from start to exit: imports, the model read and validated
    once, the cached kernel loaded, the run, the tables printed."""
    _warm()
    cmd = [str(RETWIN)] if RETWIN.exists() else [sys.executable, "-m", "retwin.cli"]

    def command() -> str:
        return subprocess.run([*cmd, "run", "baotou-2024"], check=True, capture_output=True,
                              text=True).stdout

    text = benchmark.pedantic(command, rounds=5, warmup_rounds=1)
    assert "Mass balance closes" in text and "bottleneck" in text
