"""The KPIs a run reports, declared once: name, unit, group, labels (English and Chinese).

Every annual KPI of :attr:`retwin.results.RunResult.kpis` is one family of :data:`KPIS`
(``output.stage``, ``fill_rate.segment``, …): a row per key of the family's axis (``per``)
and year. The KPI frame's ``unit`` column, the command line's KPI table, the reports' labels
and the service's KPI metadata all read this declaration; how each family is computed is in
:mod:`retwin.results` (one function per declared name, checked against this list).

The order of :data:`KPIS` is the order of a run's KPI rows: families in this order, and
consecutive families on the same axis interleaved key by key (a stage's output, utilisation
and capacity together; a market's imports, then its exports).

Across replications every KPI is summarised alike (mean and p5/p50/p95 of the
replications' values, :func:`retwin.results.summarise`; differences to a baseline are paired
by replication). ``kind`` says how a KPI combines beyond that: an ``amount`` (a flow in the
year) adds up across years, and across keys of one unit; a ``share`` (a ratio of two
amounts, 0 to 1) never adds up; a ``level`` (a value on the year's last day) does not add up
across years; a ``mean`` (an average over the year's months, such as a price) never adds up.

This module imports nothing of the run, so every layer (results, command line, reports,
the service) may read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["GROUPS", "KPIS", "NAMES", "PER", "VALUE_GROUPS", "Kpi", "catalogue", "get"]

#: What a KPI's keys are: the ids of the run's stages (those with plants), plants,
#: materials, markets or demand segments; elements (``La`` … ``other``); the seeds' output
#: value groups (``raw_materials``, ``new_materials``, ``applications`` and ``total``); or
#: ``none``: one fixed key (:attr:`Kpi.key`).
Per = Literal["stage", "plant", "material", "market", "segment", "element", "group", "none"]
PER: tuple[str, ...] = ("stage", "plant", "material", "market", "segment", "element", "group",
                        "none")

Kind = Literal["amount", "share", "level", "mean"]

#: The keys of a ``per="group"`` KPI: the seeds' three output value groups (each stage
#: belongs to one, :data:`retwin.scenario.schema.STAGE_GROUP`) and their total.
VALUE_GROUPS: tuple[str, ...] = ("raw_materials", "new_materials", "applications", "total")

#: Display groups, in display order: name -> (English label, Chinese label).
GROUPS: dict[str, tuple[str, str]] = {
    "production": ("Production", "生产"),
    "utilisation": ("Capacity and utilisation", "产能与开工率"),
    "trade": ("Trade and local conversion", "贸易与就地转化"),
    "elements": ("Element balance", "元素平衡"),
    "demand": ("End-use demand", "终端需求"),
    "value": ("Output value", "产值"),
    "markets": ("Prices and stocks", "价格与库存"),
}


@dataclass(frozen=True)
class Kpi:
    """One KPI family.

    Attributes
    ----------
    name
        The ``kpi`` column of the KPI frame, ``what.per`` (``output.stage``).
    per
        What its keys are (:data:`Per`).
    unit
        The unit of every row; ``None``: each row is in the unit of the material its key is
        about (``t``, ``unit``, ``MW``…: a plant's main output, a market's or a demand
        segment's material, the material itself). A stage whose plants' main outputs have
        different units says ``mixed``.
    kind
        ``amount``, ``share`` or ``level`` (see the module's docstring).
    group
        Its display group (:data:`GROUPS`).
    label, label_zh
        English and Chinese labels (unique within the declaration).
    description
        What is computed, and how (English).
    rows
        Which keys get a row in a run.
    fmt
        How the command line formats a value (a :func:`format` spec).
    key
        The fixed key of a ``per="none"`` KPI.
    optional
        Empty when every reference model reports it; else why one may not.
    """

    name: str
    per: Per
    unit: str | None
    kind: Kind
    group: str
    label: str
    label_zh: str
    description: str
    rows: str
    fmt: str
    key: str | None = None
    optional: str = ""

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise ValueError(f"KPI {self.name}: per={self.per!r} must be one of {PER}")
        if self.group not in GROUPS:
            raise ValueError(f"KPI {self.name}: group={self.group!r} must be one of "
                             f"{tuple(GROUPS)}")
        if self.unit is None and self.per not in ("stage", "plant", "material", "market",
                                                  "segment"):
            raise ValueError(f"KPI {self.name}: unit=None (its material's) needs keys that "
                             f"have a material, not per={self.per!r}")
        if (self.per == "none") != (self.key is not None):
            raise ValueError(f"KPI {self.name}: key={self.key!r} must be given exactly when "
                             f"per is 'none' (per={self.per!r})")


_AMOUNT = ",.0f"
_SHARE = ".1%"

#: Every KPI a run reports, in the order of the KPI frame's rows.
KPIS: tuple[Kpi, ...] = (
    Kpi("output.stage", "stage", None, "amount", "production", "Output", "产量",
        "Activity of the stage's plants in the year, summed (units of their main outputs).",
        "every stage that has plants", _AMOUNT),
    Kpi("utilisation.stage", "stage", "fraction", "share", "utilisation", "Utilisation",
        "开工率",
        "The stage's output over the nameplate activity its plants had in the year "
        "(commissioned, ramped, not retired); 0 when it had none.",
        "every stage that has plants", ".0%"),
    Kpi("capacity.stage", "stage", "per year", "level", "utilisation",
        "Capacity at year end", "年末产能",
        "Nameplate capacity per year (activity units) of the stage's plants in force on the "
        "year's last day, capacity changes and ramps included.",
        "every stage that has plants", _AMOUNT),
    Kpi("output.plant", "plant", None, "amount", "production", "Plant output", "工厂产量",
        "The plant's activity in the year (units of its main output).",
        "every plant", _AMOUNT),
    Kpi("utilisation.plant", "plant", "fraction", "share", "utilisation",
        "Plant utilisation", "工厂开工率",
        "The plant's output over the nameplate activity it had in the year; 0 when it had "
        "none.", "every plant", ".0%"),
    Kpi("production.material", "material", None, "amount", "production", "Production",
        "物料产量",
        "Made in the year: every plant's activity times its recipe's output of the material "
        "(co-products included).",
        "every material some plant makes", _AMOUNT),
    Kpi("imports.market", "market", None, "amount", "trade", "Imports", "进口量",
        "Ordered from the market in the year (the market's material).",
        "every market with an import cap above 0", _AMOUNT),
    Kpi("exports.market", "market", None, "amount", "trade", "Exports", "出口量",
        "Sold to the market in the year (the market's material).",
        "every market with an export cap above 0", _AMOUNT),
    Kpi("element.surplus", "element", "t REO", "amount", "elements", "Element surplus",
        "元素过剩量",
        "Of the region's raw materials (outputs of mining, recycling, separation and metal "
        "plants): the element's stock build-up plus exports minus imports in the year; "
        "negative is a shortfall.", "every element", _AMOUNT),
    Kpi("element.la_ce_surplus", "none", "t REO", "amount", "elements", "La+Ce surplus",
        "镧铈过剩量", "The La and Ce surpluses, summed.", "one", _AMOUNT, key="La+Ce"),
    Kpi("element.dy_tb_deficit", "none", "t REO", "amount", "elements", "Dy+Tb deficit",
        "镝铽缺口", "Minus the Dy and Tb surpluses, summed.", "one", ",.1f", key="Dy+Tb"),
    Kpi("local_conversion", "none", "fraction", "share", "trade", "Local conversion rate",
        "就地转化率",
        "Share of the region's separated output (separation and recycling plants, t REO) "
        "that the region's plants draw in the year. Each separated material's supply "
        "(made, imported, drawn from stock) is shared pro rata among its uses (drawn by "
        "plants, served to demand, exported, stock build-up), so neither exports nor stock "
        "build-up count as conversion (NaN without such output).",
        "one", _SHARE, key="region"),
    Kpi("fill_rate.segment", "segment", "fraction", "share", "demand", "Fill rate",
        "需求满足率",
        "Demand served over demand (served + unmet) in the year; 1 without demand.",
        "every demand segment", _SHARE),
    Kpi("unmet.segment", "segment", None, "amount", "demand", "Unmet demand", "未满足需求量",
        "Demand not served in the year (the segment's material).",
        "every demand segment", _AMOUNT),
    Kpi("value.stage", "stage", "亿元", "amount", "value", "Stage output value", "环节产值",
        "Output value (产值) of the stage's plants in the year: output sold times price. "
        "What stays in stock is not sold: a pool's build-up over the year (at most what "
        "flowed in) is taken pro rata from what flowed in (made and imported), and its "
        "value is reported apart (unsold_value.stage).",
        "every stage that has plants", ",.1f"),
    Kpi("unsold_value.stage", "stage", "亿元", "amount", "value", "Stage unsold stock value",
        "环节未售库存产值",
        "Value of the stage's output that stayed in stock in the year: each output's value "
        "times the share of its pool's inflow (made and imported) the pool built up in the "
        "year; 0 where the pool drew down. Output value plus this is the value of all output.",
        "every stage that has plants", ",.1f"),
    Kpi("value.group", "group", "亿元", "amount", "value", "Output value", "产值",
        "Output value of the seeds' three groups (stages: raw materials = mining, "
        "recycling, separation, metal; new materials = magnet, materials; applications = "
        "motor, end product) and their total.",
        "raw_materials, new_materials, applications and total", ",.1f"),
    Kpi("unsold_value.group", "group", "亿元", "amount", "value", "Unsold stock value",
        "未售库存产值",
        "Unsold stock value (unsold_value.stage) of the seeds' three groups and their total: "
        "output that went into stock, not sold, kept out of the output value.",
        "raw_materials, new_materials, applications and total", ",.1f"),
    Kpi("price.material", "material", "CNY per unit", "mean", "markets", "Price", "价格",
        "The material's price averaged over the year's months: formed by the region's "
        "market when the scenario has economics, else its path (with shocks and noise).",
        "every material with a price above 0", ",.0f"),
    Kpi("cover.material", "material", "days", "level", "markets", "Stock cover",
        "库存可用天数",
        "Stock of the material's pools above their reserve on the year's last day, in days "
        "of the year's average use (drawn by plants, served to demand, exported); NaN "
        "without use.", "every material with a pool", ",.0f"),
    Kpi("margin.stage", "stage", "fraction", "mean", "markets", "Margin", "利润率",
        "The margin the producers' decisions read, as a share of output value: output "
        "value at the month's prices less inputs bought at those prices and the processing "
        "cash cost, over output value; the stage's plants weighted by their output value at "
        "capacity, averaged over the year's months (NaN in a year without capacity).",
        "every stage that has plants, when markets are on", ".1%",
        optional="needs markets on (economics and price_mode market)"),
)

NAMES: tuple[str, ...] = tuple(k.name for k in KPIS)
_BY_NAME: dict[str, Kpi] = {k.name: k for k in KPIS}


def get(name: str) -> Kpi:
    """The declared KPI ``name``; ``KeyError`` naming the known ones if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"KPI {name!r} is not declared (known: {', '.join(NAMES)})") from None


def catalogue() -> list[dict[str, Any]]:
    """The declaration as JSON-ready dicts, one per KPI in row order: ``name, per, key,
    unit, unit_from, kind, group, group_label, group_label_zh, label, label_zh,
    description, rows, optional`` (``unit`` is null and ``unit_from`` is ``"material"`` when
    each row is in its material's unit)."""
    out = []
    for k in KPIS:
        d = asdict(k)
        d.pop("fmt")
        g_en, g_zh = GROUPS[k.group]
        d.update(unit_from="material" if k.unit is None else None, group_label=g_en,
                 group_label_zh=g_zh)
        out.append(d)
    return out
