"""The scenario schema: the whole chain as validated data.

A scenario is a YAML file validated by these pydantic models (``extra="forbid"``, units in
field names). Cross-field rules (every plant's materials exist, every pool's material exists,
quotas name real plants, recipes never create rare-earth elements…) run in
:meth:`Scenario._check_references`, and each failure names the field path, the value and the
rule.

Every number is finite (``allow_inf_nan=False`` on every model) and lies in a physical range
stated by its type below (amounts, factors, prices, fractions, days, years, dates); the range
is also written into the field's description, so editors show it from the JSON Schema. Every
text field is :data:`Text`: valid UTF-8 (no lone surrogates) and at most
:data:`MAX_TEXT_CHARS` characters. These checks live in the schema, so the CLI, the Python API
and the HTTP service refuse the same input with the same message.
"""

# No ``from __future__ import annotations`` in this module: its annotations are evaluated as
# the classes are defined, where pydantic would otherwise parse each field's annotation from a
# string (a ``typing.ForwardRef`` compiled per field, ~5 ms of every process that loads the
# schema). Validators of a class return ``Self``.

import datetime as dt
import math
from typing import Annotated, Any, ClassVar, Literal, Self, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

__all__ = [
    "ELEMENTS",
    "STAGES",
    "STAGE_GROUP",
    "Availability",
    "CapacityChange",
    "Change",
    "DemandChange",
    "DemandSegment",
    "Economics",
    "ExportSpec",
    "ImportSpec",
    "Investment",
    "Market",
    "Material",
    "OutageChange",
    "ParameterChange",
    "Period",
    "Plant",
    "PlantChange",
    "Pool",
    "PriceChange",
    "PriceLink",
    "PricePoint",
    "PriceSpec",
    "Quota",
    "QuotaBatch",
    "QuotaChange",
    "Reaches",
    "Recipe",
    "ReserveChange",
    "Scenario",
    "Settings",
    "Target",
    "TradeChange",
]

#: Elements tracked individually; ``other`` lumps Ho–Lu (and Er, Tm, Yb, Lu, Sc).
ELEMENTS: tuple[str, ...] = ("La", "Ce", "Pr", "Nd", "Sm", "Eu", "Gd", "Tb", "Dy", "Y", "other")

#: Stages of a plant, upstream to downstream. The order is the order in which the daily
#: flow kernel serves plants (earlier stages deliver before later stages draw).
STAGES: tuple[str, ...] = (
    "mining",
    "recycling",
    "separation",
    "metal",
    "magnet",
    "materials",
    "motor",
    "end_product",
)

#: The seeds' three output-value groups (004: 原材料 / 新材料 / 应用).
STAGE_GROUP: dict[str, str] = {
    "mining": "raw_materials",
    "recycling": "raw_materials",
    "separation": "raw_materials",
    "metal": "raw_materials",
    "magnet": "new_materials",
    "materials": "new_materials",
    "motor": "applications",
    "end_product": "applications",
}

Element = Literal["La", "Ce", "Pr", "Nd", "Sm", "Eu", "Gd", "Tb", "Dy", "Y", "other"]
Stage = Literal[
    "mining", "recycling", "separation", "metal", "magnet", "materials", "motor", "end_product"
]
Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=64)]

# --- physical ranges ------------------------------------------------------------------------
# Validation limits, not data about the world: each is orders of magnitude beyond anything
# real (world rare-earth mining is ~4e5 t REO a year; the dearest material, Tb metal, costs
# ~1e7 CNY/t) yet far enough from float overflow that sums and products over a run stay finite.

#: Largest amount: tonnes, t REO, t/a, or activity units per year of one plant, pool or market.
MAX_AMOUNT = 1e9
#: Largest demand, in segment units per year (units can be small: motors, phones).
MAX_UNITS_PER_YEAR = 1e12
#: Largest price, CNY per unit of a material (a unit may be a whole product).
MAX_PRICE_CNY = 1e10
#: Largest multiplier of a what-if change or a market's price.
MAX_FACTOR = 1000.0
#: Largest recipe amount or demand intensity per unit of activity.
MAX_PER_UNIT = 1e6
#: Largest element content of one unit of a material, t REO (a whole product or MW).
MAX_CONTENT_T_REO = 1000.0
#: Largest magnitude of a KPI target or of a parameter change's number.
MAX_ABS_VALUE = 1e15
#: Years and dates a scenario may mention.
MIN_YEAR, MAX_YEAR = 1900, 2300
#: Longest text field (names, notes, sources, descriptions), in characters.
MAX_TEXT_CHARS = 2000


def _utf8(text: Any) -> Any:
    if not isinstance(text, str):
        return text  # not text: the str validation after this reports it
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"must be valid UTF-8 text; character {text[exc.start]!r} at position {exc.start} "
            "is a lone surrogate"
        ) from None
    return text


#: Free text: valid UTF-8 (a lone surrogate cannot be stored) and bounded in length.
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), BeforeValidator(_utf8)]

Amount = Annotated[float, Field(ge=0, le=MAX_AMOUNT)]
PosAmount = Annotated[float, Field(gt=0, le=MAX_AMOUNT)]
Delta = Annotated[float, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
Factor = Annotated[float, Field(ge=0, le=MAX_FACTOR)]
Price = Annotated[float, Field(ge=0, le=MAX_PRICE_CNY)]
PerUnit = Annotated[float, Field(gt=0, le=MAX_PER_UNIT)]
Content = Annotated[float, Field(ge=0, le=MAX_CONTENT_T_REO)]
UnitsPerYear = Annotated[float, Field(ge=0, le=MAX_UNITS_PER_YEAR)]
Days = Annotated[int, Field(ge=0, le=3650)]
LeadDays = Annotated[int, Field(ge=0, le=365)]
MeanDays = Annotated[float, Field(gt=0, le=36500)]
Year = Annotated[int, Field(ge=MIN_YEAR, le=MAX_YEAR)]
Date = Annotated[dt.date, Field(ge=dt.date(MIN_YEAR, 1, 1), le=dt.date(MAX_YEAR, 12, 31))]


def _scalar(value: Any) -> Any:
    """A parameter change's value, checked before it is typed (one message, not one per
    member of the union): a finite number within ±MAX_ABS_VALUE, a bool, or :data:`Text`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):  # compared exactly: a huge int never becomes a float here
        if abs(value) > MAX_ABS_VALUE:
            digits = int(value.bit_length() * math.log10(2)) + 1
            raise ValueError(f"value (an integer of about {digits} digits) must be within "
                             f"±{MAX_ABS_VALUE:.0e}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            raise ValueError(f"value(={value:.6g}) must be a finite number within "
                             f"±{MAX_ABS_VALUE:.0e}")
        return value
    if isinstance(value, str):
        _utf8(value)
        if len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"value has {len(value)} characters; at most {MAX_TEXT_CHARS} "
                             "are allowed")
        return value
    raise ValueError(f"value must be a number, a bool or text (got {type(value).__name__})")


def _ranges_in_descriptions(schema: dict[str, Any]) -> None:
    """Append each numeric or date property's range to its description (editors show it)."""
    for prop in schema.get("properties", {}).values():
        text = _range_text(prop)
        if text:
            prop["description"] = f"{prop.get('description', '')} {text}".strip()


def _range_text(prop: dict[str, Any]) -> str:
    for sub in (prop, *prop.get("anyOf", ()), prop.get("items") or {},
                prop.get("additionalProperties") or {}):
        if not isinstance(sub, dict):
            continue
        if sub.get("format") == "date":  # every date of the schema is a `Date`
            return f"Range: {MIN_YEAR}-01-01 to {MAX_YEAR}-12-31."
        if sub.get("type") not in ("number", "integer"):
            continue
        lo = next(((op, sub[k]) for k, op in (("minimum", "≤"), ("exclusiveMinimum", "<"))
                   if k in sub), None)
        hi = next(((op, sub[k]) for k, op in (("maximum", "≤"), ("exclusiveMaximum", "<"))
                   if k in sub), None)
        if lo and hi:
            return f"Range: {_num(lo[1])} {lo[0]} x {hi[0]} {_num(hi[1])}."
    return ""


def _num(x: float) -> str:
    return f"{x:g}".replace("e+0", "e").replace("e+", "e")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,  # NaN and ±inf are refused in every float field
        json_schema_extra=_ranges_in_descriptions,
    )


class Period(_Model):
    """A closed date range ``[from, to]``."""

    start: Date = Field(alias="from")
    end: Date = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError(f"to(={self.end}) must not be before from(={self.start})")
        return self


class PricePoint(_Model):
    """The price from ``date`` on (until the next point)."""

    date: Date
    price_cny_per_unit: Price


class PriceLink(_Model):
    """An outside price that follows another's: ``share_frac`` of its relative change."""

    material: Id
    share_frac: Annotated[float, Field(ge=0, le=1)]


class PriceSpec(_Model):
    """A monthly price path with optional mean-reverting noise in log price."""

    base_cny_per_unit: Price = Field(description="Price before the first path point.")
    path: list[PricePoint] = Field(default_factory=list)
    volatility_per_year: Annotated[float, Field(ge=0, le=10)] = Field(
        0.0, description="Annualised sigma of log price.")
    mean_reversion_per_year: Annotated[float, Field(ge=0, le=365)] = Field(
        1.0, description="Speed at which log-price noise decays back to the path (1/yr)."
    )
    follows: PriceLink | None = Field(
        None, description="With economics on, the outside price passes on this share of the "
        "relative change of another material's outside price (cost pass-through: a metal "
        "follows its oxide, a magnet its RE metal).")

    @field_validator("path")
    @classmethod
    def _sorted(cls, v: list[PricePoint]) -> list[PricePoint]:
        dates = [p.date for p in v]
        if dates != sorted(dates):
            raise ValueError("path dates must be in increasing order")
        return v


class Material(_Model):
    """A material, its unit, its element content and its price."""

    id: Id
    name: Text
    name_zh: Text = ""
    unit: Literal["t", "unit", "MW"] = "t"
    composition_t_reo_per_unit: dict[Element, Content] = Field(
        default_factory=dict,
        description="Oxide-equivalent tonnes of each element in one unit of the material.",
    )
    price: PriceSpec = Field(default_factory=lambda: PriceSpec(base_cny_per_unit=0.0))
    source: Text = ""

    @model_validator(mode="after")
    def _mass_fraction(self) -> Self:
        total = sum(self.composition_t_reo_per_unit.values())
        # A tonne of metal holds more than a tonne of oxide-equivalent (1/0.85), so allow up
        # to 1.25 t REO per t for metals; anything above is a unit mistake.
        if self.unit == "t" and total > 1.25:
            raise ValueError(
                f"composition_t_reo_per_unit sums to {total:.4g} t REO per t; "
                "must be <= 1.25 for a material measured in t"
            )
        return self

    @property
    def reo_per_unit(self) -> float:
        return float(sum(self.composition_t_reo_per_unit.values()))


class Availability(_Model):
    """Random outages (exponential up and down times) and planned outages."""

    mtbf_days: MeanDays | None = None
    mttr_days: MeanDays | None = None
    planned_outages: list[Period] = Field(default_factory=list)

    @model_validator(mode="after")
    def _both(self) -> Self:
        if (self.mtbf_days is None) != (self.mttr_days is None):
            raise ValueError("mtbf_days and mttr_days must be given together")
        return self


class Recipe(_Model):
    """A linear (Leontief) recipe per unit of activity.

    ``outputs`` lists what one unit of activity delivers; the first entry is the main
    product (capacity and utilisation are measured in activity units, which equal units of
    the main product when its amount is 1). ``inputs`` lists what one unit of activity draws.
    Yields live here: a 0.92 recovery is an input of 1/0.92 per unit of output.
    """

    outputs: dict[Id, PerUnit]
    inputs: dict[Id, PerUnit] = Field(default_factory=dict)

    @field_validator("outputs")
    @classmethod
    def _non_empty(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("a recipe needs at least one output")
        return v

    @property
    def main_output(self) -> str:
        return next(iter(self.outputs))


class Plant(_Model):
    """A plant: where material is transformed, with a capacity and a recipe."""

    id: Id
    name: Text
    name_zh: Text = ""
    company: Text = ""
    region: Id = "baotou"
    stage: Stage
    capacity_tpa: Amount = Field(description="Nameplate activity units per year.")
    utilisation_max_frac: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Share of nameplate the plant runs at when nothing else binds."
    )
    commissioning: Date | None = Field(None, description="First day of output; None: running.")
    ramp_days: Days = 0
    retirement: Date | None = None
    lead_time_days: LeadDays = 0
    extracts: bool = Field(
        False, description="Inputs come from the ground (a mine), not from a pool."
    )
    availability: Availability = Field(default_factory=Availability)
    recipe: Recipe
    planned: bool = Field(
        False, description="With economics on, the plant runs to its ceiling (capacity, "
        "quota) whatever the demand on its output, slowing only for its margin or a full "
        "store: state-planned output, such as China's quota holders, who mined and separated "
        "their full quotas in 2021-2024 while prices fell. False: it is paced by the demand "
        "on its main outputs.")
    cash_cost_cny_per_unit: Price | None = Field(
        None, description="Processing cash cost per unit of activity (besides its inputs); "
        "with economics on, the plant slows down when its margin turns negative. None: the "
        "stage's share of output value from economics.cash_cost_share_frac.",
    )
    source: Text = ""


class Pool(_Model):
    """Stock of one material in one region, between the plants that make and use it."""

    region: Id = "baotou"
    material: Id
    initial_t: Amount = 0.0
    reserve_t: Amount = Field(0.0, description="Strategic reserve: never drawn or exported.")
    target_t: Amount = Field(
        0.0, description="Working stock: imports top up to reserve+target; exports leave it."
    )
    max_t: PosAmount | None = Field(None, description="Storage ceiling; producers throttle at it.")

    @property
    def key(self) -> tuple[str, str]:
        return (self.region, self.material)


class ImportSpec(_Model):
    """An import source. With economics on it is a supply curve: ``base_tpa`` is on offer
    while the region's price is at the outside price times ``1 + premium_frac``; the volume
    on offer rises linearly with the price, by ``cap_tpa`` per ``slope_frac`` of the outside
    price, between nothing and ``cap_tpa``."""

    cap_tpa: Amount
    base_tpa: Amount | None = Field(
        None, description="Volume on offer at the outside price (None: nothing).")
    lead_time_days: LeadDays = 0
    price_factor: Factor = 1.0
    premium_frac: Annotated[float, Field(ge=0, le=10)] | None = Field(
        None, description="Landed premium over the outside price before any import "
        "(None: economics.import_premium_frac).")
    slope_frac: Annotated[float, Field(gt=0, le=10)] | None = Field(
        None, description="Further premium at which the whole cap is on offer "
        "(None: economics.import_slope_frac).")


class ExportSpec(_Model):
    """An export sink (another region or the world). With economics on its demand is finite:
    ``base_tpa`` at the outside price, and a share of ``cap_tpa`` more (or less) per
    ``slope_frac`` of the outside price the region sells below (or above) it, never below
    nothing nor above ``cap_tpa`` (the licence or control cap)."""

    cap_tpa: Amount
    price_factor: Factor = 1.0
    base_tpa: Amount | None = Field(
        None, description="Outside demand at the outside price (None: nothing).")
    slope_frac: Annotated[float, Field(gt=0, le=10)] | None = Field(
        None, description="Discount below the outside price at which outside buyers take the "
        "whole cap (None: economics.export_slope_frac).")
    contract_frac: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="Share of base_tpa sold under long-term contracts: with economics on "
        "it leaves before the region's plants draw, whatever the price (within the cap).")
    growth_frac_per_year: Annotated[float, Field(ge=-0.5, le=1)] = Field(
        0.0, description="With economics on, outside demand grows by this share each calendar "
        "year after the start's (compounding): base_tpa, its contracted share and cap_tpa "
        "together, so the licensed volume keeps pace with demand unless a trade change caps "
        "it (a change's factor scales the grown cap; its cap_tpa replaces it).")


class Market(_Model):
    """The outside world for one material of one region: an import source and/or export sink."""

    id: Id
    name: Text = ""
    region: Id = "baotou"
    material: Id
    import_: ImportSpec | None = Field(None, alias="import")
    export: ExportSpec | None = None
    source: Text = ""

    @model_validator(mode="after")
    def _some_side(self) -> Self:
        if self.import_ is None and self.export is None:
            raise ValueError("a market needs an import side, an export side, or both")
        return self


class QuotaBatch(_Model):
    """One release of a year's quota: on ``month``/``day`` each year, ``share_frac`` of it."""

    month: Annotated[int, Field(ge=1, le=12)]
    day: Annotated[int, Field(ge=1, le=28)] = 1
    share_frac: Annotated[float, Field(gt=0, le=1)]


class Quota(_Model):
    """An annual ceiling in t REO on the output of a set of plants (total-quantity control).

    Each unit of a covered plant's activity uses the REO content of its outputs. When the
    quota cannot meet what its plants ask for, it is shared by their licence shares (``shares``,
    or their nameplate REO capacity), and what a plant leaves goes to the others. Plants pace
    their use evenly over the year and never use more than has been released so far — unless
    ``produce_ahead`` is set: then they produce from January against the year's total (the
    sum of its batches, after any quota change), as firms do when the first batch is
    published weeks into the year.
    """

    id: Id
    name: Text = ""
    plants: list[Id]
    annual_t_reo: dict[Year, Amount] = Field(
        description="Year -> ceiling; a year not listed repeats the last listed year before it."
    )
    batches: list[QuotaBatch] = Field(
        default_factory=lambda: [QuotaBatch(month=1, day=1, share_frac=1.0)]
    )
    produce_ahead: bool = Field(
        False, description="Produce ahead of a batch's release, up to the year's total."
    )
    shares: dict[Id, Amount] | None = Field(
        None, description="Licence shares by plant (relative weights): when the quota cannot "
        "meet every plant's request it is shared by these, and what a plant leaves goes to "
        "the others. None: each plant's nameplate REO capacity as the scenario states it.")
    source: Text = ""

    @model_validator(mode="after")
    def _shares(self) -> Self:
        total = sum(b.share_frac for b in self.batches)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"batches share_frac sums to {total:.6g}; must sum to 1")
        if not self.plants:
            raise ValueError("a quota must cover at least one plant")
        if not self.annual_t_reo:
            raise ValueError("annual_t_reo needs at least one year")
        if self.shares is not None:
            extra = sorted(set(self.shares) - set(self.plants))
            if extra:
                raise ValueError(f"shares names plants the quota does not cover: {extra}")
        return self

    def amount_for(self, year: int) -> float:
        """The ceiling of ``year`` (the last listed year at or before it; else the first)."""
        years = sorted(self.annual_t_reo)
        past = [y for y in years if y <= year]
        return float(self.annual_t_reo[past[-1] if past else years[0]])


class DemandSegment(_Model):
    """End-use demand drawn from a pool: units per year times material per unit."""

    id: Id
    name: Text
    name_zh: Text = ""
    region: Id = "baotou"
    material: Id = Field(description="What the segment draws from the region's pool.")
    base_units_per_year: UnitsPerYear = Field(
        description="Segment units per year at the start.")
    intensity_per_unit: Annotated[float, Field(ge=0, le=MAX_PER_UNIT)] = Field(
        1.0, description="Material drawn per segment unit.")
    growth_frac_per_year: Annotated[float, Field(ge=-0.9, le=5)] = 0.0
    seasonality: list[Annotated[float, Field(ge=0, le=12)]] = Field(
        default_factory=lambda: [1.0] * 12, description="12 monthly multipliers, mean 1."
    )
    noise_cv: Annotated[float, Field(ge=0, le=2)] = 0.0
    price_elasticity: Annotated[float, Field(ge=-5, le=0)] | None = Field(
        None, description="Short-run elasticity of the segment's draw to the price of "
        "price_material (thrifting, substitution; None: economics.demand_elasticity).")
    price_material: Id | None = Field(
        None, description="The material whose price the segment responds to (None: material).")
    source: Text = ""

    @field_validator("seasonality")
    @classmethod
    def _twelve(cls, v: list[float]) -> list[float]:
        if len(v) != 12:
            raise ValueError(f"seasonality has {len(v)} values; must have 12 (one per month)")
        mean = sum(v) / 12
        if abs(mean - 1.0) > 1e-3:
            raise ValueError(f"seasonality has mean {mean:.4g}; must have mean 1")
        return v


class Target(_Model):
    """A named KPI target (the seeds' 2024 targets), reported as attained or not."""

    id: Id
    name: Text
    name_zh: Text = ""
    year: Year
    kpi: Text = Field(description="KPI path, e.g. value.total_yi_cny or output.stage.magnet_t.")
    value: Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
    unit: Text = ""
    kind: Literal["at_least", "at_most"] = "at_least"
    source: Text = ""


class Settings(_Model):
    """Switches for the random streams (each can be turned off for a deterministic run), and
    for how prices come about when the scenario has ``economics``."""

    outages: bool = True
    price_noise: bool = True
    demand_noise: bool = True
    investment: bool = Field(
        True, description="With economics.investment given: let sustained margins build new "
        "capacity (false: today's nameplate only).")
    price_mode: Literal["market", "path"] = Field(
        "market", description="market: prices are formed from stock cover around the outside "
        "(path) price; path: the paths are replayed and move nothing (no economics).")


class Investment(_Model):
    """New capacity triggered by sustained margins (with economics on, ``settings.investment``
    on): when a stage's plants have run at ``utilisation_threshold_frac`` or more of their
    ceiling with a margin of ``margin_threshold_frac`` or more, on average over the last
    ``window_months``, the stage starts a project that adds ``step_frac`` of each plant's
    nameplate after ``build_years``; one project at a time per stage."""

    margin_threshold_frac: Annotated[float, Field(ge=0, le=5)]
    utilisation_threshold_frac: Annotated[float, Field(gt=0, le=1)]
    window_months: Annotated[int, Field(ge=1, le=120)]
    step_frac: Annotated[float, Field(gt=0, le=5)]
    build_years: dict[Stage, Annotated[float, Field(ge=0, le=30)]] = Field(
        description="The stages that invest, and how long a project takes to build.")


class Economics(_Model):
    """Markets and decisions (DESIGN §2.4). Every month each pooled material's price moves
    with its stock against the working stock it should hold, bounded per step and pulled
    toward the outside price; imports follow supply curves and exports meet finite demand;
    plants set their utilisation from downstream stock and margin; demand responds to price
    with a delay. Parameters come from data/ (estimates where no source exists)."""

    price_adjust_per_month: Annotated[float, Field(ge=0, le=5)] = Field(
        description="Change in log price per month for a stock gap of one whole working stock.")
    price_max_step_frac: Annotated[float, Field(gt=0, le=1)] = Field(
        description="Largest change of log price in one month.")
    reference_pull_per_month: Annotated[float, Field(ge=0, le=1)] = Field(
        description="Share of the gap to the outside price closed per month.")
    cover_target_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        description="Working stock in days of use, for pools without target_t.")
    inventory_adjust_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        description="Producers close the gap to their working stock over this many days.")
    margin_band_frac: Annotated[float, Field(gt=0, le=5)] = Field(
        description="A plant at this negative margin (share of output value) is at its minimum.")
    min_utilisation_frac: Annotated[float, Field(ge=0, le=1)] = Field(
        description="Utilisation a plant keeps however poor its margin or full its stock.")
    main_output_value_share_frac: Annotated[float, Field(gt=0, le=1)] = Field(
        description="An output carrying at least this share of a joint producer's output "
        "value (at the start's prices) is one of its main outputs: the shortest of their "
        "pools paces the plant (its most valuable output always does).")
    cash_cost_share_frac: dict[Stage, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Processing cash cost per stage, as a share of the "
        "output value at the start's prices, for plants without cash_cost_cny_per_unit.")
    import_premium_frac: Annotated[float, Field(ge=0, le=10)] = 0.0
    import_slope_frac: Annotated[float, Field(gt=0, le=10)] = Field(
        description="Premium over the outside price at which an import cap is fully on offer.")
    export_slope_frac: Annotated[float, Field(gt=0, le=10)] = Field(
        description="Discount below the outside price at which an export cap is fully taken.")
    demand_elasticity: Annotated[float, Field(ge=-5, le=0)] = Field(
        description="Default short-run price elasticity of demand segments.")
    demand_response_months: Annotated[float, Field(ge=0, le=120)] = Field(
        description="Delay (months, first-order) with which demand sees a price change.")
    investment: Investment | None = Field(
        None, description="New capacity from sustained margins (None: no investment).")


# --- what-if changes (DESIGN §2.5): one schema for the CLI, Python and HTTP -----------------


#: How a change kind reaches a run: ``data`` rewrites the scenario when the change is applied;
#: ``path`` is compiled into a base path (prices, demand, quota releases); ``timed`` acts on run
#: state from its date to its end. ``retwin.scenario.kinds`` lists every kind with its checks.
Reaches = Literal["data", "path", "timed"]


class _Change(_Model):
    reaches: ClassVar[Reaches]
    start: Date | None = Field(None, alias="from", description="First day (default: start).")
    end: Date | None = Field(None, alias="to", description="Last day (default: end).")
    note: Text = ""

    @model_validator(mode="after")
    def _dates(self) -> Self:
        if self.start and self.end and self.end < self.start:
            raise ValueError(f"to(={self.end}) must not be before from(={self.start})")
        return self


def _exactly_one(obj: BaseModel, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(obj, n) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)} (got {len(given)})")


class QuotaChange(_Change):
    """Set, scale or shift a quota's releases dated inside ``[from, to]``."""

    kind: Literal["quota"] = "quota"
    reaches: ClassVar[Reaches] = "path"
    quota: Id
    set_t_reo: Amount | None = Field(None, description="New annual ceiling for affected years.")
    factor: Factor | None = None
    delta_t_reo: Delta | None = Field(None, description="Added to each affected year's ceiling.")
    batch: Annotated[int, Field(ge=1, le=366)] | None = Field(
        None, description="Only this batch (1-based)."
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("set_t_reo", "factor", "delta_t_reo"))
        return self


class PriceChange(_Change):
    """A shock to a material's price path over ``[from, to]``, reached after ``ramp_days``."""

    kind: Literal["price"] = "price"
    reaches: ClassVar[Reaches] = "path"
    material: Id
    factor: Factor | None = None
    value_cny_per_unit: Price | None = None
    ramp_days: Days = 0

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("factor", "value_cny_per_unit"))
        return self


class CapacityChange(_Change):
    """Set, scale or shift the capacity of a plant or of every plant of a stage."""

    kind: Literal["capacity"] = "capacity"
    reaches: ClassVar[Reaches] = "timed"
    plant: Id | None = None
    stage: Stage | None = None
    set_tpa: Amount | None = None
    factor: Factor | None = None
    delta_tpa: Delta | None = None
    ramp_days: Days = 0

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("plant", "stage"))
        _exactly_one(self, ("set_tpa", "factor", "delta_tpa"))
        return self


class PlantChange(_Change):
    """Add a plant (commissioned on ``from``) or retire one (on ``from``)."""

    kind: Literal["plant"] = "plant"
    reaches: ClassVar[Reaches] = "data"
    action: Literal["add", "retire"]
    plant: Plant | None = Field(None, description="The new plant (action add).")
    plant_id: Id | None = Field(None, description="The plant to retire (action retire).")

    @model_validator(mode="after")
    def _fields(self) -> Self:
        if self.action == "add" and self.plant is None:
            raise ValueError("action add needs plant")
        if self.action == "retire" and self.plant_id is None:
            raise ValueError("action retire needs plant_id")
        return self


class OutageChange(_Change):
    """A plant down (or derated to ``capacity_frac``) over ``[from, to]``."""

    kind: Literal["outage"] = "outage"
    reaches: ClassVar[Reaches] = "timed"
    plant: Id
    capacity_frac: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _dated(self) -> Self:
        if self.start is None or self.end is None:
            raise ValueError("an outage needs both from and to")
        return self


class DemandChange(_Change):
    """Scale a demand segment, or change its growth, over ``[from, to]``."""

    kind: Literal["demand"] = "demand"
    reaches: ClassVar[Reaches] = "path"
    segment: Id
    factor: Factor | None = None
    growth_frac_per_year: Annotated[float, Field(ge=-0.9, le=5)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("factor", "growth_frac_per_year"))
        return self


class TradeChange(_Change):
    """Cap or scale a market's import or export side (export controls, disruptions)."""

    kind: Literal["trade"] = "trade"
    reaches: ClassVar[Reaches] = "timed"
    market: Id
    side: Literal["import", "export"]
    cap_tpa: Amount | None = None
    factor: Factor | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("cap_tpa", "factor"))
        return self


class ReserveChange(_Change):
    """Build (raise) or release (lower) a pool's strategic reserve from ``from`` to ``to``."""

    kind: Literal["reserve"] = "reserve"
    reaches: ClassVar[Reaches] = "timed"
    material: Id
    region: Id = "baotou"
    reserve_t: Amount | None = None
    delta_t: Delta | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("reserve_t", "delta_t"))
        return self


class ParameterChange(_Change):
    """Set any scalar field by path, e.g. ``plants.jl_mag.utilisation_max_frac``.

    Paths address list items by id (``plants.<id>``, ``materials.<id>``, ``pools.<region>/<m>``)
    and the result is validated again, so a bad value is reported like any other. The change
    applies to the whole horizon; ``from``/``to`` are not allowed.
    """

    kind: Literal["parameter"] = "parameter"
    reaches: ClassVar[Reaches] = "data"
    path: Annotated[Text, Field(min_length=1, max_length=300)]
    value: Annotated[float | int | bool | Text, BeforeValidator(_scalar)] = Field(
        description=f"A number (finite, within ±{MAX_ABS_VALUE:.0e}), a bool or text; the "
        "scenario is validated again with it, under the field's own range.")

    @model_validator(mode="after")
    def _undated(self) -> Self:
        if self.start is not None or self.end is not None:
            raise ValueError("a parameter change applies to the whole run; remove from/to")
        return self


Change = Annotated[
    QuotaChange
    | PriceChange
    | CapacityChange
    | PlantChange
    | OutageChange
    | DemandChange
    | TradeChange
    | ReserveChange
    | ParameterChange,
    Field(discriminator="kind"),
]


class Scenario(_Model):
    """A whole chain: materials, plants, pools, markets, quotas, demand, targets, changes."""

    name: Text
    description: Text = ""
    start: Date
    end: Date
    materials: list[Material]
    plants: list[Plant]
    pools: list[Pool] = Field(default_factory=list)
    markets: list[Market] = Field(default_factory=list)
    quotas: list[Quota] = Field(default_factory=list)
    demand: list[DemandSegment] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)
    settings: Settings = Field(default_factory=Settings)
    economics: Economics | None = Field(
        None, description="Markets and decisions; without it prices replay their paths and "
        "plants run at their utilisation ceiling (the chain is pushed).")

    @property
    def markets_on(self) -> bool:
        """Prices formed and decisions taken (economics given, price_mode market)."""
        return self.economics is not None and self.settings.price_mode == "market"

    @property
    def horizon_days(self) -> int:
        return (self.end - self.start).days + 1

    def material(self, material_id: str) -> Material:
        for m in self.materials:
            if m.id == material_id:
                return m
        raise KeyError(material_id)

    def plant(self, plant_id: str) -> Plant:
        for p in self.plants:
            if p.id == plant_id:
                return p
        raise KeyError(plant_id)

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        from retwin.config import MAX_HORIZON_DAYS

        problems: list[str] = []
        if self.end < self.start:
            problems.append(f"end(={self.end}) must not be before start(={self.start})")
        elif self.horizon_days > MAX_HORIZON_DAYS:
            problems.append(
                f"end: horizon of {self.horizon_days} days exceeds the limit {MAX_HORIZON_DAYS}"
            )
        mats = {m.id: m for m in self.materials}
        _dupes("materials", [m.id for m in self.materials], problems)
        _dupes("plants", [p.id for p in self.plants], problems)
        _dupes("markets", [k.id for k in self.markets], problems)
        _dupes("quotas", [q.id for q in self.quotas], problems)
        _dupes("demand", [g.id for g in self.demand], problems)
        _dupes("pools", [f"{p.region}/{p.material}" for p in self.pools], problems)
        pools = {p.key for p in self.pools}
        for i, p in enumerate(self.plants):
            for side in ("inputs", "outputs"):
                for m in getattr(p.recipe, side):
                    where = f"plants[{i}].recipe.{side}.{m}"
                    if m not in mats:
                        problems.append(f"{where}: unknown material {m!r} (plant {p.id!r})")
                    elif (side == "outputs" or not p.extracts) and (p.region, m) not in pools:
                        problems.append(
                            f"{where}: no pool for material {m!r} in region {p.region!r}"
                        )
            if p.retirement and p.commissioning and p.retirement <= p.commissioning:
                problems.append(
                    f"plants[{i}].retirement(={p.retirement}) must be after "
                    f"commissioning(={p.commissioning})"
                )
            if all(m in mats for m in (*p.recipe.inputs, *p.recipe.outputs)):
                _check_no_creation(i, p, mats, problems)
        for i, m in enumerate(self.materials):
            link = m.price.follows
            if link is not None and (link.material not in mats or link.material == m.id):
                problems.append(f"materials[{i}].price.follows.material: {link.material!r} "
                                "must be another material of the scenario")
        leader = {m.id: m.price.follows.material for m in self.materials
                  if m.price.follows is not None}
        for i, m in enumerate(self.materials):
            seen, cur = {m.id}, leader.get(m.id)
            while cur is not None and cur not in seen:
                seen.add(cur)
                cur = leader.get(cur)
            if cur == m.id and leader.get(m.id) != m.id:
                problems.append(f"materials[{i}].price.follows: {m.id!r} follows itself "
                                "through a cycle of follows links; a chain of followers must "
                                "end at a material that follows none")
        for i, pool in enumerate(self.pools):
            if pool.material not in mats:
                problems.append(f"pools[{i}].material: unknown material {pool.material!r}")
            if pool.max_t is not None and pool.initial_t > pool.max_t:
                problems.append(
                    f"pools[{i}].initial_t(={pool.initial_t}) must be <= max_t(={pool.max_t})"
                )
        for i, k in enumerate(self.markets):
            if (k.region, k.material) not in pools:
                problems.append(
                    f"markets[{i}].material: no pool for {k.material!r} in region {k.region!r}"
                )
        plant_ids = {p.id for p in self.plants}
        covered: dict[str, str] = {}
        for i, q in enumerate(self.quotas):
            for j, pid in enumerate(q.plants):
                if pid not in plant_ids:
                    problems.append(f"quotas[{i}].plants[{j}]: unknown plant {pid!r}")
                elif pid in covered:
                    problems.append(
                        f"quotas[{i}].plants[{j}]: plant {pid!r} is already under quota "
                        f"{covered[pid]!r}; a plant may be under one quota only"
                    )
                else:
                    covered[pid] = q.id
        for i, g in enumerate(self.demand):
            if (g.region, g.material) not in pools:
                problems.append(
                    f"demand[{i}].material: no pool for {g.material!r} in region {g.region!r}"
                )
            if g.price_material is not None and g.price_material not in mats:
                problems.append(
                    f"demand[{i}].price_material: unknown material {g.price_material!r}")
        for i, ch in enumerate(self.changes):
            if ch.reaches == "data":
                problems.append(
                    f"changes[{i}]: a {ch.kind} change rewrites the scenario; "
                    "apply it with apply_changes (load_scenario does) rather than listing it"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _dupes(field: str, ids: list[str], problems: list[str]) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            problems.append(f"{field}[{i}].id: duplicate id {x!r}")
        seen.add(x)


def _check_no_creation(i: int, p: Plant, mats: dict[str, Material], problems: list[str]) -> None:
    """A recipe may lose rare earths but never create them (per element, t REO)."""
    outputs = [(a, mats[m].composition_t_reo_per_unit) for m, a in p.recipe.outputs.items()]
    inputs = [(a, mats[m].composition_t_reo_per_unit) for m, a in p.recipe.inputs.items()]
    made = {el for _, comp in outputs for el in comp}  # amounts > 0, contents >= 0: an
    for el in cast("tuple[Element, ...]", ELEMENTS):  # element no output holds is not made
        if el not in made:
            continue
        out = sum(a * float(comp.get(el, 0.0)) for a, comp in outputs)
        inn = sum(a * float(comp.get(el, 0.0)) for a, comp in inputs)
        if out > inn * (1 + 1e-9) + 1e-12:
            problems.append(
                f"plants[{i}].recipe: plant {p.id!r} creates {el} "
                f"(outputs hold {out:.6g} t REO per unit of activity, inputs {inn:.6g}); "
                "a recipe must not create rare-earth elements"
            )

