"""retwin: a digital twin of the rare-earth industrial chain.

The public API is small: load a scenario, apply what-if changes, run it, read the result.

>>> import retwin
>>> sc = retwin.load_scenario("tiny")
>>> res = retwin.run(sc, seed=1)
>>> res.balance.closes
True
"""

from typing import TYPE_CHECKING, Any

from retwin._version import __version__
from retwin.engine import run, run_replications
from retwin.engine.run import prepare, warmup
from retwin.errors import DataError, MassBalanceError, OutputError, RetwinError, ScenarioError
from retwin.results import ReplicationSet, RunResult
from retwin.scenario import Scenario, apply_changes, load_scenario

if TYPE_CHECKING:
    from retwin.batch import run_batch

__all__ = [
    "DataError",
    "MassBalanceError",
    "OutputError",
    "ReplicationSet",
    "RetwinError",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "__version__",
    "apply_changes",
    "load_scenario",
    "prepare",
    "run",
    "run_batch",
    "run_replications",
    "warmup",
]


def __getattr__(name: str) -> Any:
    # Batch studies pull in pyarrow's dataset layer; load them on first use only.
    if name == "run_batch":
        from retwin.batch import run_batch

        return run_batch
    raise AttributeError(f"module 'retwin' has no attribute {name!r}")
