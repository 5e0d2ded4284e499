"""English and Chinese labels of stages, chain nodes, materials, elements, KPIs and chart
titles. KPI labels are those declared in :mod:`retwin.kpis`."""

from __future__ import annotations

from typing import Any, Literal

from retwin.kpis import KPIS

__all__ = ["LANGS", "Labels", "Lang"]

Lang = Literal["en", "zh"]
LANGS: tuple[str, ...] = ("en", "zh")

_FIXED: dict[str, tuple[str, str]] = {
    # stages
    "mining": ("Mining", "采选"),
    "recycling": ("Recycling", "回收"),
    "separation": ("Separation", "冶炼分离"),
    "metal": ("Metal", "金属冶炼"),
    "magnet": ("Magnets", "磁材"),
    "materials": ("Other materials", "其他功能材料"),
    "applications": ("Applications", "终端应用"),
    "motor": ("PM motors", "永磁电机"),
    "end_product": ("End products", "终端产品"),
    # chain nodes of the Sankey
    "ore_body": ("Ore body", "矿产资源"),
    "imports": ("Imports", "进口"),
    "exports": ("Exports", "出口"),
    "end_use": ("End use", "终端消费"),
    "losses": ("Losses", "损耗"),
    "stock_build": ("Stock build-up", "库存增加"),
    "stock_draw": ("Stock draw-down", "库存消耗"),
    # series kinds
    "activity": ("Output", "产量"),
    "capacity": ("Capacity", "产能"),
    "utilisation": ("Utilisation", "开工率"),
    "stock": ("Stocks", "库存"),
    "served": ("Demand served", "已满足需求"),
    "unmet": ("Unmet demand", "未满足需求"),
    "price": ("Prices", "价格"),
    # words of the charts
    "baseline": ("baseline", "基准"),
    "whatif": ("what-if", "情景"),
    "band": ("p5–p95", "p5–p95 区间"),
    "flows": ("Material flows", "物料流向"),
    "element_balance": ("Element balance: surplus (+) and shortfall (−)",
                        "元素平衡：过剩（+）与短缺（−）"),
    "bottlenecks": ("Bottleneck stage and binding constraint", "瓶颈环节与约束"),
    "kpis": ("Headline KPIs", "主要指标"),
    "tornado": ("Sensitivity", "敏感性分析"),
    "distributions": ("KPI distributions", "指标分布"),
    "year": ("Year", "年份"),
    "stage": ("Stage", "环节"),
    "constraint": ("Binding constraint", "约束"),
    "score": ("Score", "得分"),
    "kpi": ("KPI", "指标"),
    "key": ("Key", "对象"),
    "mean": ("Mean", "均值"),
    "difference": ("Δ vs baseline", "与基准之差"),
    "target": ("Target", "目标"),
    "attained": ("attained", "达成"),
    "missed": ("missed", "未达成"),
    "low": ("low", "下调"),
    "high": ("high", "上调"),
    "point": ("Point", "参数点"),
    "capacity_c": ("capacity", "产能"),
    "quota": ("quota", "配额"),
    "outage": ("outage", "停产"),
    "input": ("input", "原料"),
    "demand": ("demand", "需求"),
    "t_reo": ("t REO", "吨 REO"),
    # output value groups (the keys of value.group)
    "raw_materials": ("Raw materials", "原材料"),
    "new_materials": ("New materials", "新材料"),
    "total": ("Total", "合计"),
    # sweeps and the why
    "parameter": ("Parameter", "参数"),
    "base": ("base", "基准"),
    "over_years": ("mean over the years", "各年均值"),
    "cards": ("Headline cards", "主要指标卡"),
    "why": ("Why: the Δ of each card, change by change", "为何变化：各项变化对差值的贡献"),
    "interaction": ("interaction", "交互作用"),
    "alone": ("alone", "单独作用"),
    "added": ("added to the others", "在其他变化之上的增量"),
    "change": ("Change", "变化"),
    "total_delta": ("Δ of all changes", "全部变化之差"),
    "none_moved": ("The changes move no headline card in this year.",
                   "这些变化在该年未改变任何主要指标。"),
}


#: Every declared KPI's labels, by its name (``output.stage`` -> ("Output", "产量")).
_KPIS: dict[str, tuple[str, str]] = {k.name: (k.label, k.label_zh) for k in KPIS}
_LABELS: dict[str, tuple[str, str]] = {**_FIXED, **_KPIS}


class Labels:
    """Labels in one language; material and plant names come from the run's scenario
    (``name`` and ``name_zh``), falling back to the fixed table and then to the id."""

    def __init__(self, lang: str = "en", scenario: dict[str, Any] | None = None) -> None:
        self.lang: Lang = "zh" if lang == "zh" else "en"
        self.names: dict[str, str] = {}
        sc = scenario or {}
        for group in ("materials", "plants", "markets", "demand", "quotas"):
            for item in sc.get(group, []) or []:
                name = item.get("name") or item["id"]
                if self.lang == "zh" and item.get("name_zh"):
                    name = item["name_zh"]
                self.names[item["id"]] = str(name)

    def __call__(self, key: str) -> str:
        fixed = _LABELS.get(key)
        if fixed is not None:
            return fixed[1] if self.lang == "zh" else fixed[0]
        return self.names.get(key, key)

    def name(self, item_id: str) -> str:
        """A scenario item's name (material, plant, market…), else the fixed label."""
        if item_id in self.names:
            return self.names[item_id]
        return self(item_id)
