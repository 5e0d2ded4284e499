"""Scenario schema, loading, overlays, formulas and what-if changes."""

from retwin.scenario.data import load_parameters, reference_dir
from retwin.scenario.load import (
    apply_changes,
    available_models,
    load_scenario,
    parse_changes,
    scenario_hash,
)
from retwin.scenario.schema import ELEMENTS, STAGE_GROUP, STAGES, Change, Scenario

__all__ = [
    "ELEMENTS",
    "STAGES",
    "STAGE_GROUP",
    "Change",
    "Scenario",
    "apply_changes",
    "available_models",
    "load_parameters",
    "load_scenario",
    "parse_changes",
    "reference_dir",
    "scenario_hash",
]
