"""Synthetic chains of any size, for the scaling benchmarks.

``chain(n_plants, years)`` builds ``n_plants // 4`` parallel four-stage chains (mine →
separation → metal → magnet) sharing no pools, with random outages on every plant, so the
cost of a run can be measured against plants × days.
"""

from __future__ import annotations

from typing import Any

from retwin.scenario import load_scenario
from retwin.scenario.schema import Scenario


def chain(n_plants: int, years: int = 1) -> Scenario:
    n_chains = max(1, n_plants // 4)
    materials: list[dict[str, Any]] = [
        {"id": "ore", "name": "Ore", "composition_t_reo_per_unit": {"La": 0.02, "Nd": 0.01}},
    ]
    plants: list[dict[str, Any]] = []
    pools: list[dict[str, Any]] = []
    markets: list[dict[str, Any]] = []
    for i in range(n_chains):
        conc, oxide, metal, magnet = (f"conc{i}", f"oxide{i}", f"metal{i}", f"magnet{i}")
        materials += [
            {"id": conc, "name": conc, "composition_t_reo_per_unit": {"La": 0.2, "Nd": 0.1},
             "price": {"base_cny_per_unit": 20000, "volatility_per_year": 0.1}},
            {"id": oxide, "name": oxide, "composition_t_reo_per_unit": {"La": 0.6, "Nd": 0.3},
             "price": {"base_cny_per_unit": 100000}},
            {"id": metal, "name": metal, "composition_t_reo_per_unit": {"Nd": 1.0},
             "price": {"base_cny_per_unit": 500000}},
            {"id": magnet, "name": magnet, "composition_t_reo_per_unit": {"Nd": 0.3},
             "price": {"base_cny_per_unit": 300000}},
        ]
        avail = {"mtbf_days": 180, "mttr_days": 3}
        plants += [
            {"id": f"mine{i}", "name": "mine", "stage": "mining", "capacity_tpa": 30000,
             "extracts": True, "availability": avail,
             "recipe": {"outputs": {conc: 1}, "inputs": {"ore": 10}}},
            {"id": f"sep{i}", "name": "sep", "stage": "separation", "capacity_tpa": 9000,
             "lead_time_days": 10, "availability": avail,
             "recipe": {"outputs": {oxide: 1}, "inputs": {conc: 3.2}}},
            {"id": f"metal{i}", "name": "metal", "stage": "metal", "capacity_tpa": 2500,
             "availability": avail, "recipe": {"outputs": {metal: 1}, "inputs": {oxide: 3.5}}},
            {"id": f"mag{i}", "name": "magnet", "stage": "magnet", "capacity_tpa": 8000,
             "lead_time_days": 5, "availability": avail,
             "recipe": {"outputs": {magnet: 1}, "inputs": {metal: 0.31}}},
        ]
        pools += [{"material": m} for m in (conc, oxide, metal, magnet)]
        markets += [
            {"id": f"out{i}", "material": magnet, "export": {"cap_tpa": 1e9}},
            {"id": f"ox{i}", "material": oxide, "export": {"cap_tpa": 1e9}},
        ]
    return load_scenario({
        "name": f"synthetic-{n_plants}",
        "start": "2024-01-01",
        "end": f"{2023 + years}-12-31",
        "materials": materials,
        "plants": plants,
        "pools": pools,
        "markets": markets,
    })
