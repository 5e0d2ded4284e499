"""retwin: a digital twin of the rare-earth industrial chain.

The public API is small: load a scenario, apply what-if changes, run it, read the result.

>>> import retwin
>>> sc = retwin.load_scenario("tiny")
>>> res = retwin.run(sc, seed=1)
>>> res.balance.closes
True

``import retwin`` itself loads almost nothing: each name below is imported on first use, so
a command that only validates a file never loads Numba, and nothing that only runs loads
pandas.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from retwin._version import __version__
from retwin.errors import DataError, MassBalanceError, OutputError, RetwinError, ScenarioError

if TYPE_CHECKING:
    from retwin.engine.run import prepare, run, run_replications, warmup
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

#: Where each lazily imported name lives.
_LAZY = {
    "run": "retwin.engine",
    "run_replications": "retwin.engine",
    "prepare": "retwin.engine.run",
    "warmup": "retwin.engine.run",
    "ReplicationSet": "retwin.results",
    "RunResult": "retwin.results",
    "Scenario": "retwin.scenario",
    "apply_changes": "retwin.scenario",
    "load_scenario": "retwin.scenario",
    "run_batch": "retwin.batch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retwin' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
