"""A planner's table: several what-ifs on one model, each against the same baseline.

    python examples/whatif_table.py [MODEL] [REPLICATIONS] [YEAR]

Runs the baseline once and each what-if below with the same seeds (common random numbers),
and prints, for YEAR, the paired differences (mean and p5–p95 across replications) of the
magnet and separated output, the PrNd oxide price, PrNd oxide net imports (Baotou trades PrNd
oxide with the rest of China; the national model imports feed, not oxide: "–"), magnet
exports and the PrNd oxide stock cover (days of use held at the year's end), with the notes
on changes that did not bind. Defaults: baotou-2024, 20 replications, 2027. A ``china-*``
model gets the national what-ifs (its quota, market and segment ids).
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd

from retwin import whatif

WHATIFS: list[tuple[str, dict[str, Any]]] = [
    ("mining quota x0.7 from 2025",
     {"kind": "quota", "quota": "mining", "factor": 0.7, "from": "2025-01-01"}),
    ("mining quota x0 from 2025",
     {"kind": "quota", "quota": "mining", "factor": 0.0, "from": "2025-01-01"}),
    ("PrNd oxide price x1.5 from 2025",
     {"kind": "price", "material": "prnd_oxide", "factor": 1.5, "from": "2025-01-01"}),
    ("PrNd oxide price x0.6 from 2025",
     {"kind": "price", "material": "prnd_oxide", "factor": 0.6, "from": "2025-01-01"}),
    ("NEV demand x1.3 from 2026",
     {"kind": "demand", "segment": "nev", "factor": 1.3, "from": "2026-01-01"}),
    ("magnet exports to the world x0.25 from 2025",
     {"kind": "trade", "market": "magnet_export_world", "side": "export", "factor": 0.25,
      "from": "2025-01-01"}),
    ("magnet exports to the world x0.5 from 2025",
     {"kind": "trade", "market": "magnet_export_world", "side": "export", "factor": 0.5,
      "from": "2025-01-01"}),
    ("separation capacity x1.5 from 2025",
     {"kind": "capacity", "stage": "separation", "factor": 1.5, "from": "2025-01-01"}),
]


CHINA_WHATIFS: list[tuple[str, dict[str, Any]]] = [
    ("smelting quota x0.7 from 2025",
     {"kind": "quota", "quota": "smelting", "factor": 0.7, "from": "2025-01-01"}),
    ("rock mining quota x0 from 2025",
     {"kind": "quota", "quota": "mining_rock", "factor": 0.0, "from": "2025-01-01"}),
    ("PrNd oxide price x1.5 from 2025",
     {"kind": "price", "material": "prnd_oxide", "factor": 1.5, "from": "2025-01-01"}),
    ("PrNd oxide price x0.6 from 2025",
     {"kind": "price", "material": "prnd_oxide", "factor": 0.6, "from": "2025-01-01"}),
    ("NEV demand x1.3 from 2026",
     {"kind": "demand", "segment": "nev", "factor": 1.3, "from": "2026-01-01"}),
    ("magnet exports x0.25 from 2025",
     {"kind": "trade", "market": "magnet_exports", "side": "export", "factor": 0.25,
      "from": "2025-01-01"}),
    ("ionic separation (sep_ionic) capacity x1.5 from 2025",
     {"kind": "capacity", "plant": "sep_ionic", "factor": 1.5, "from": "2025-01-01"}),
]


def _value(d: pd.DataFrame, year: int, kpi: str, key: str, col: str = "mean") -> float:
    rows = d[(d.year == year) & (d.kpi == kpi) & (d.key == key)]
    return float(rows[col].sum())


def main(model: str = "baotou-2024", replications: int = 20, year: int = 2027) -> None:
    out = sys.stdout.write
    out(f"| what-if on {model} ({replications} paired replications, {year}) "
        "| Δ magnets t [p5, p95] | Δ separation t | Δ PrNd oxide CNY/t "
        "| Δ PrNd oxide net imports t | Δ magnet exports t | Δ PrNd oxide cover days | notes |\n")
    out("|---|---|---|---|---|---|---|---|\n")
    baseline = None
    for label, change in (CHINA_WHATIFS if model.startswith("china") else WHATIFS):
        res = whatif.run(whatif.resolve(model, [change]), replications=replications, seed=0,
                         baseline=baseline)
        baseline = baseline or res.baseline
        d = res.difference
        assert d is not None
        magnet_markets = [k for k in d[d.kpi == "exports.market"].key.unique() if "magnet" in k]
        cells = [
            f"{_value(d, year, 'output.stage', 'magnet'):+,.0f} "
            f"[{_value(d, year, 'output.stage', 'magnet', 'p5'):+,.0f}, "
            f"{_value(d, year, 'output.stage', 'magnet', 'p95'):+,.0f}]",
            f"{_value(d, year, 'output.stage', 'separation'):+,.0f}",
            f"{_value(d, year, 'price.material', 'prnd_oxide'):+,.0f}",
            (f"{_value(d, year, 'imports.market', 'prnd_oxide_trade') - _value(d, year, 'exports.market', 'prnd_oxide_trade'):+,.0f}"  # noqa: E501
             if "prnd_oxide_trade" in set(d[d.kpi == "imports.market"].key) else "–"),
            f"{sum(_value(d, year, 'exports.market', k) for k in magnet_markets):+,.0f}",
            f"{_value(d, year, 'cover.material', 'prnd_oxide'):+,.1f}",
            " ".join(res.notes),
        ]
        out(f"| {label} | " + " | ".join(cells) + " |\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "baotou-2024", int(args[1]) if len(args) > 1 else 20,
         int(args[2]) if len(args) > 2 else 2027)
