"""Build a run from a scenario, play its events, advance the flow, record, check balance."""

from retwin.compiled import Compiled
from retwin.engine.build import compile_scenario
from retwin.engine.run import run, run_replications

__all__ = ["Compiled", "compile_scenario", "run", "run_replications"]
