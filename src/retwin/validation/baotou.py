"""Baotou against its seeds: the structure of the 2024 reference model (the capacities the
seeds give), the 2022 figures of the seeds next to ``models/baotou-2022.yaml`` (2022 quotas and
prices) and the 2024 targets next to the 2024 run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from retwin.engine.run import run
from retwin.errors import ScenarioError
from retwin.scenario.data import formula_parameters
from retwin.scenario.load import load_scenario
from retwin.scenario.schema import Scenario
from retwin.validation.observables import BAOTOU_2022, BAOTOU_2024, SEED

__all__ = ["BaotouChecks", "baotou_checks"]


@dataclass
class BaotouChecks:
    """Baotou's structure, its 2022 figures and its 2024 targets against the model."""

    structure: pd.DataFrame
    year_2022: pd.DataFrame
    targets_2024: pd.DataFrame
    value_2022: pd.DataFrame  # output value by group, 2022 run


#: (label, plants or stage, the seeds' 2022 key, the seeds' 2024 key)
_STRUCTURE: tuple[tuple[str, str, str, str], ...] = (
    ("Magnet capacity (zone / city), t/a", "stage:magnet", "capacity.baotou_zone.magnet_tpa.2022",
     "target.baotou.magnet_capacity_tpa.2024"),
    ("JL Mag Baotou, t/a", "plant:jl_mag_baotou", "plant.jl_mag_baotou.capacity_tpa.2022",
     "plant.jl_mag_baotou.capacity_tpa"),
    ("Yunsheng Baotou, t/a", "plant:yunsheng_baotou", "plant.yunsheng_baotou.capacity_tpa.2022",
     "plant.yunsheng_baotou.capacity_tpa"),
    ("Smelting and separation capacity, t/a", "stage:separation", "",
     "target.baotou.separation_capacity_tpa.2024"),
    ("Scrap recycling capacity, t/a", "stage:recycling", "",
     "target.baotou.recycling_capacity_tpa.2024"),
    ("H2-storage materials, t/a", "plant:h2_storage_alloy_plant", "",
     "target.baotou.h2_storage_capacity_tpa.2024"),
    ("Polishing materials, t/a", "plant:polishing_powder_plant", "",
     "target.baotou.polishing_capacity_tpa.2024"),
    ("Catalytic materials and additives, t/a", "plant:catalyst_additive_plant", "",
     "target.baotou.catalyst_additive_capacity_tpa.2024"),
    ("Alloy materials, t/a", "plant:re_alloy_plant", "", "target.baotou.alloy_capacity_tpa.2024"),
)


def _capacity(sc: Scenario, what: str) -> float:
    kind, _, name = what.partition(":")
    plants = [p for p in sc.plants if (p.stage if kind == "stage" else p.id) == name]
    if not plants:
        raise ScenarioError([("plants", f"model {sc.name!r} has no {kind} {name!r}")])
    return float(sum(p.capacity_tpa for p in plants))


def baotou_checks() -> BaotouChecks:
    """Run ``baotou-2022`` and ``baotou-2024`` (seed :data:`SEED`) and set them next to the
    seeds: capacities, the 2022 figures (local conversion, output value), the 2024 targets."""
    params = formula_parameters()
    sc22, sc24 = load_scenario(BAOTOU_2022), load_scenario(BAOTOU_2024)
    r22, r24 = run(sc22, seed=SEED), run(sc24, seed=SEED)
    rows = []
    for label, what, k22, k24 in _STRUCTURE:
        rows.append({
            "item": label,
            "seeds_2022": params[k22].value if k22 else math.nan, "key_2022": k22,
            "model_2022": _capacity(sc22, what),
            "seeds_2024": params[k24].value, "key_2024": k24,
            "model_2024": _capacity(sc24, what),
        })
    structure = pd.DataFrame(rows)
    conv_key, value_key = "conversion.baotou_zone.local_frac.2022", \
        "output.baotou_zone.re_industry_yi_cny.2022"
    total = r22.kpi("value.group", "total", 2022)
    no_app = total - r22.kpi("value.group", "applications", 2022)
    conv = r22.kpi("local_conversion", "region", 2022)
    seeds_conv, seeds_value = params[conv_key].value, params[value_key].value
    year_2022 = pd.DataFrame([
        {"figure": "Local conversion of RE raw materials", "seeds": seeds_conv,
         "seeds_reads": "> 85 % (lower bound)", "key": conv_key, "model": conv,
         "model_reads": f"{conv:.1%}",
         "comparison": ("at or above the seeds' lower bound" if conv >= seeds_conv
                        else f"{seeds_conv - conv:.1%} below the seeds' lower bound"),
         "agrees": bool(conv >= seeds_conv)},
        {"figure": "RE industry output value, 亿元 (model: all three groups)",
         "seeds": seeds_value, "seeds_reads": "about 450 (expected)", "key": value_key,
         "model": total, "model_reads": f"{total:,.0f}",
         "comparison": f"model / seeds = {total / seeds_value:.2f}", "agrees": False},
        {"figure": "RE industry output value, 亿元 (model: raw + new materials only)",
         "seeds": seeds_value, "seeds_reads": "about 450 (expected)", "key": value_key,
         "model": no_app, "model_reads": f"{no_app:,.0f}",
         "comparison": f"model / seeds = {no_app / seeds_value:.2f}", "agrees": False},
    ])
    for i in (1, 2):  # "about 450": within a fifth of it counts as agreeing
        year_2022.loc[i, "agrees"] = bool(abs(year_2022.model[i] / seeds_value - 1) <= 0.2)
    kp = r22.kpis
    value_2022 = kp[(kp.kpi.isin(["value.group", "value.stage"])) & (kp.year == 2022)][
        ["kpi", "key", "value", "unit"]].reset_index(drop=True)
    return BaotouChecks(structure=structure, year_2022=year_2022,
                        targets_2024=r24.target_table, value_2022=value_2022)

