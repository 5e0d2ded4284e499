"""Build data/parameters.csv: the reference-data table of retwin.

Every row is transcribed from ../shared/seeds/seed_facts.csv (flag ``seed``) or from
../shared/reference/domain_data.md (flags A/B/C, ``derived``, ``estimate``), or is derived
from other rows here (flag ``derived``, formula and keys in ``basis``), or is an explicit
``estimate`` with its reasoning.  A row computed from other rows is written once, as its
formula (:func:`derived`): the basis reads ``= formula; note`` and the value is that formula
evaluated by the loader's evaluator (``retwin.scenario.data.evaluate_formula``), so the two
cannot disagree.  Run it with the project's environment to rewrite parameters.csv (sorted by
key, byte-identical on every run), or to write the table elsewhere:

    .venv/bin/python data/build_parameters.py [OUT.csv]

then `retwin data --write-manifest`.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

# The evaluator of the checkout this script belongs to, not of another installed retwin.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from retwin.scenario.data import Parameter, evaluate_formula

OUT = Path(__file__).with_name("parameters.csv")
COLUMNS = ["key", "value", "unit", "year", "flag", "source", "basis"]
FLAGS = {"A", "B", "C", "seed", "derived", "estimate"}
KEY_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")

# Seed files (seed_facts.csv names them this way).
S0 = "000_c079a3b12926ef4b.txt"
S1 = "001_9b0c7176cb642d6b.txt"
S34 = "003_6dbfd2b412d98389.txt;004_663c130e556c88d2.txt"
S4 = "004_663c130e556c88d2.txt"

ROWS: list[dict[str, str]] = []
VALUES: dict[str, float] = {}


def _fmt(value: float) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return format(float(value), ".12g")


def row(key, value, unit, year, flag, source, basis):
    if key in VALUES:
        raise ValueError(f"duplicate key {key!r}")
    if not KEY_RE.match(key):
        raise ValueError(f"bad key {key!r}")
    if flag not in FLAGS:
        raise ValueError(f"bad flag {flag!r} for {key}")
    if not math.isfinite(float(value)):
        raise ValueError(f"bad value for {key}")
    VALUES[key] = float(value)
    ROWS.append(
        {
            "key": key,
            "value": _fmt(value),
            "unit": unit,
            "year": str(year),
            "flag": flag,
            "source": source,
            "basis": basis,
        }
    )


def v(key: str) -> float:
    return VALUES[key]


def rounded(expr: str, digits: int) -> str:
    """``expr`` rounded to ``digits`` decimals, as a formula: ``round(x * 1eN) / 1eN``, because
    the loader's evaluator makes every number a float, which ``round`` refuses as its digits.
    For every row here it is the same number as Python's ``round(x, N)`` (the values did not
    change when the formulas took over; tests/test_data.py checks each value against its basis)."""
    depth, top_level_sum = 0, False
    for i, ch in enumerate(expr):
        depth += (ch == "(") - (ch == ")")
        top_level_sum |= depth == 0 and ch in "+-" and expr[i - 1: i + 2] in (" + ", " - ")
    return f"round({f'({expr})' if top_level_sum else expr} * 1e{digits}) / 1e{digits}"


def derived(key, formula, unit, year, source, note="", flag="derived"):
    """A row computed from other rows: ``formula`` (the loader's syntax: ``{key}``, numbers,
    + - * / ** and min/max/round) is evaluated over the rows written so far and stated as the
    basis, ``= formula; note``."""
    if ";" in formula:
        raise ValueError(f"formula of {key} must not contain ';' (it ends the formula)")
    params = {k: Parameter(k, val, "", "", "", "", "") for k, val in VALUES.items()}
    try:
        value = evaluate_formula(formula, params)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    row(key, value, unit, year, flag, source, f"= {formula}" + (f"; {note}" if note else ""))


def dd(section: str, name: str) -> str:
    return f"domain_data.md §{section}: {name}"


def seed(key, value, unit, year, seed_file, quote):
    row(key, value, unit, year, "seed", seed_file, quote)


# ---------------------------------------------------------------------------------------------
# 1. Ore, resource, concentrate
# ---------------------------------------------------------------------------------------------
KYN = dd("2", "Kynický et al. 2012, Geoscience Research Reports 45 (geology.cz)")
row("ore.bayan_obo.grade_frac", 0.06, "fraction (wt REO in ore)", 2011, "A", KYN,
    "Bayan Obo average ore grade 6 wt % RE2O3 (c.2011); §9 default 6.0 %; use ore.bayan_obo_east_mine.grade_frac (0.05) for sensitivity")
row("ore.bayan_obo_east_mine.grade_frac", 0.05, "fraction (wt REO in ore)", "", "C",
    dd("2", "plnmw.com/PatentApplication"), "East Mine: Fe ~34 %, RE ~5 % REO")
row("ore.bayan_obo.fe_grade_frac", 0.35, "fraction (wt Fe in ore)", 2011, "A", KYN,
    "Bayan Obo iron grade 35 wt % Fe")
row("ore.bayan_obo.nb2o5_grade_frac", 0.0021, "fraction (wt Nb2O5 in ore)", 2011, "A", KYN,
    "Bayan Obo Nb2O5 grade 0.21 wt %")
row("ore.bayan_obo.historic_utilisation_frac", 0.10, "fraction of co-mined REO used", "", "B",
    dd("2", "wsygm.com; plnmw.com"),
    "Baotou mining + dressing utilisation ~10 % (2010s); §9: model as a separate co-mined → tailings flow, not as the beneficiation recovery")
row("ore.bayan_obo.co_mined_reo_tpa.2006", 500000, "t REO/a", 2006, "B",
    dd("2", "lemofix.com (Economic Information Daily)"),
    "In 2006 ~500 kt REO/a was co-mined with the iron ore but only ~50 kt used")
row("ore.bayan_obo.used_reo_tpa.2006", 50000, "t REO/a", 2006, "B",
    dd("2", "lemofix.com (Economic Information Daily)"),
    "In 2006 ~500 kt REO/a was co-mined with the iron ore but only ~50 kt used")
row("ore.baotou_steel_tailings.reo_t.2022", 12800000, "t REO", 2022, "B", dd("2", "yicaiglobal.com"),
    "REO in Baotou Steel tailings 12.8 Mt")
row("ore.baotou_steel_tailings.recoverable_concentrate_tpa", 200000, "t concentrate/a", 2022, "B",
    dd("2", "yicaiglobal.com"), "about 200 kt of concentrate per year recoverable from the tailings")
row("ore.mixed_ore.loss_dilution_frac", 0.10, "fraction", 2016, "A",
    dd("3a", "MIIT 稀土行业规范条件(2016年本)"),
    "mixed/bastnaesite mining loss + dilution ≤ 10 % (regulatory maximum); §9 default 10 %")

seed("resource.bayan_obo.industrial_reserves_t_reo.2010", 57380000, "t REO", 2010, S0,
     "包头稀土工业储量为5738万吨（REO）")
seed("resource.baotou.share_china_reserves_frac.2010", 0.871, "fraction", 2010, S0,
     "占到中国的87.1%，世界的62%")
seed("resource.baotou.share_world_reserves_frac.2010", 0.62, "fraction", 2010, S0,
     "占到中国的87.1%，世界的62%")
row("resource.bayan_obo.industrial_reserves_t_reo.2006", 43500000, "t REO", 2006, "B",
    dd("2", "lemofix.com/cjxw/2006-11/02"), "43.5 Mt industrial reserves (2006)")
row("resource.bayan_obo.reserves_t_reo.2014", 48000000, "t REO", 2014, "B",
    dd("2", "Li & Yang, ERES2014 (scribd)"), "48 Mt (ERES 2014)")
row("resource.bayan_obo.reserves_udn_t_reo", 35000000, "t REO", "", "B",
    dd("2", "udn.com/news/story/7333/9062861"), "35 Mt (81 % of China); reserve figures differ by source and date")
row("resource.bayan_obo.mhree_t", 9000000, "t medium+heavy RE (as reported)", 2025, "A",
    dd("2", "Minerals 2025, 15(3):212 (MDPI)"),
    "Bayan Obo medium + heavy RE ~9 Mt; 1,005 ppm (aegirine-type ore) and 1,204 ppm (fluorite-type ore) M+HREE")
row("resource.china.reserves_t_reo.2024", 44000000, "t REO", 2024, "A", dd("2", "USGS MCS2025"),
    "China reserves 44 Mt REO")
row("resource.world.reserves_t_reo.2024", 90000000, "t REO (lower bound)", 2024, "A", dd("7", "USGS MCS2025"),
    "World reserves > 90 Mt (lower bound)")

row("concentrate.baotou.grade_frac", 0.50, "fraction (wt REO in concentrate)", 2023, "B",
    dd("2", "m.b8iz8ocd.cn/shichang/2023/0314/59590.html; news.cnyes.com/news/id/6306645"),
    "contract basis 50 % REO (source flag A/B, taken as B); §9 default 50 %; 45/50/60 % grades are produced")
row("concentrate.kyr_trial.grade_frac", 0.6083, "fraction (wt REO in concentrate)", 2025, "B",
    dd("2", "rareearthexchanges.com (Baogang KYR collector)"),
    "new KYR collector trial: 60.83 % REO weighted over 40 shifts; §9: a 60 % option exists")
row("concentrate.cnre.purchase_t.2022", 230000, "t concentrate (50 % REO)", 2022, "B", dd("2", "yicaiglobal.com"),
    "Concentrate bought by CNRE from Baotou Steel 230,000 t (2022)")
row("concentrate.cnre.purchase_planned_t.2023", 320000, "t concentrate (50 % REO)", 2023, "B",
    dd("2", "m.b8iz8ocd.cn/shichang/2023/0314/59590.html"), "320,000 t planned for 2023")
derived("concentrate.cnre.purchase_reo_t.2022",
        "{concentrate.cnre.purchase_t.2022} * {concentrate.baotou.grade_frac}", "t REO", 2022,
        dd("2", "yicaiglobal.com"))
row("concentrate.baotou.concentrator_capacity_tpa", 100000, "t concentrate/a", "", "B",
    dd("2", "kjservice.cn/yszs/224091"),
    "Baotou has 3 concentrators with 100 kt/a concentrate capacity (2010s), ~54 % of China's RE mineral products")
row("concentrate.baotou.share_china_mineral_products_frac", 0.54, "fraction", "", "B",
    dd("2", "kjservice.cn/yszs/224091"), "~54 % of China's RE mineral products (2010s)")
row("concentrate.sichuan.grade_min_frac", 0.416, "fraction (wt ΣREE)", "", "A", dd("2", "ykcs.ac.cn"),
    "Sichuan concentrates 41.6–55.8 wt % ΣREE (lower end)")
row("concentrate.sichuan.grade_max_frac", 0.558, "fraction (wt ΣREE)", "", "A", dd("2", "ykcs.ac.cn"),
    "Sichuan concentrates 41.6–55.8 wt % ΣREE (upper end)")

# Element distribution of Baotou concentrate: §9 default (proxy of §2a, Araxá LREE concentrate).
PROXY = dd("2a/§9", "proxy Araxá monazite, repo joao-mbn/rare-earth-modelling static_values/_substances.py")
DIST = [("la", 0.235, 0.2350), ("ce", 0.492, 0.4920), ("pr", 0.042, 0.0416), ("nd", 0.164, 0.1637),
        ("sm", 0.025, 0.0249), ("eu", 0.0045, 0.0045), ("gd", 0.013, 0.0128), ("tb", 0.0020, 0.0020),
        ("dy", 0.0035, 0.0035), ("y", 0.012, 0.0124)]
for el, val, raw in DIST:
    row(f"dist.baotou_concentrate.{el}_frac", val, "fraction of REO", "", "estimate", PROXY,
        f"proxy, not a Baotou assay: §9 default {val * 100:g} % of REO (§2a proxy value {raw * 100:.2f} %); "
        "HREE probably overstated for Bayan Obo (reported LREE > 95 %)")
_other = round(1.0 - sum(val for _, val, _ in DIST), 6)
row("dist.baotou_concentrate.other_frac", _other, "fraction of REO", "", "estimate", PROXY,
    "rounding remainder: 1 − sum of the ten §9 defaults (§9 prints 0.8 %, which would make the sum 100.1 %; §2a proxy has Er 0.15 + rest 0.61 = 0.76 %)")
derived("dist.baotou_concentrate.prnd_frac",
        rounded("{dist.baotou_concentrate.pr_frac} + {dist.baotou_concentrate.nd_frac}", 6),
        "fraction of REO", "", PROXY, "§2a: NdPr ≈ 20.5 % in the proxy")
derived("dist.baotou_concentrate.pr_to_nd_ratio",
        rounded("{dist.baotou_concentrate.pr_frac} / {dist.baotou_concentrate.nd_frac}", 4),
        "mass ratio", "", PROXY, "§2a: Pr : Nd ≈ 20 : 80")
derived("dist.baotou_concentrate.pr_share_of_prnd_frac",
        rounded("{dist.baotou_concentrate.pr_frac} / {dist.baotou_concentrate.prnd_frac}", 4),
        "fraction", "", PROXY)
derived("dist.baotou_concentrate.lace_frac",
        rounded("{dist.baotou_concentrate.la_frac} + {dist.baotou_concentrate.ce_frac}", 6),
        "fraction of REO", "", PROXY, "§10: 72.7 %")
row("dist.bayan_obo_reported.ce_frac", 0.50, "fraction of REO", "", "B", dd("2a", "soolun.net/periodical/61b4dcdc…"),
    "Bayan Obo & Zhushan (mixed bastnaesite + monazite): Ce ~50 % of REO")
row("dist.bayan_obo_reported.lree_min_frac", 0.95, "fraction of REO (lower bound)", "", "B",
    dd("2a", "soolun.net/periodical/61b4dcdc…"), "Bayan Obo & Zhushan: LREE > 95 %")
row("dist.ionic_longnan.y_frac", 0.6483, "fraction of REO", "", "B", dd("2a", "soolun.net"),
    "Longnan ionic clay (HREE-rich): Y2O3 64.83 %")
row("dist.ionic_longnan.hree_frac", 0.894, "fraction of REO", "", "B", dd("2a", "soolun.net"),
    "Longnan ionic clay: HREE 89.40 %, LREE 10.53 %")
row("spec.prnd_oxide.pr_frac", 0.25, "mass fraction of PrNd oxide", "", "estimate", dd("9", "market convention (not sourced)"),
    "§9: Pr : Nd in commercial PrNd oxide 25 : 75, estimate; the concentrate proxy itself gives ≈ 20 : 80")

# ---------------------------------------------------------------------------------------------
# 2. Yields, stoichiometry, metal, magnet
# ---------------------------------------------------------------------------------------------
MIIT = dd("3a", "MIIT 稀土行业规范条件(2016年本), via bbjja.com/news/11162.html")
row("yield.beneficiation_recovery_frac", 0.75, "fraction", 2016, "A", MIIT,
    "flotation recovery ≥ 75 % for mixed/bastnaesite ore (regulatory minimum); §9 default 0.75")
row("yield.beneficiation_recovery_low_grade_frac", 0.65, "fraction", 2016, "A", MIIT,
    "≥ 65 % for low-grade or refractory ore (minimum)")
row("yield.cracking_leaching_recovery_frac", 0.92, "fraction", 2016, "A", MIIT,
    "concentrate → mixed RE (cracking/leaching) > 92 %, mixed/bastnaesite; §9 default 0.92")
row("yield.sx_recovery_frac", 0.96, "fraction", 2016, "A", MIIT,
    "mixed RE → single oxides (SX) > 96 %, mixed/bastnaesite; §9 default 0.96")
row("yield.sx_recovery_ionic_frac", 0.94, "fraction", 2016, "A", MIIT, "SX > 94 % for ionic; §9 default 0.94")
row("yield.ionic.mining_dressing_recovery_frac", 0.75, "fraction", 2016, "A", MIIT,
    "ionic clay mining + dressing recovery ≥ 75 % (minimum)")
row("yield.ionic.heap_leach_recovery_frac", 0.87, "fraction (leachable phase)", 2013, "B",
    dd("3a", "MLR 三率, via thebraincenter.net/News/Details/38539"),
    "heap leach ≥ 87 % (leachable phase) / ≥ 70 % (total); source flag A/B, taken as B")
row("yield.ionic.in_situ_leach_recovery_frac", 0.84, "fraction (leachable phase)", 2013, "B",
    dd("3a", "MLR 三率, via thebraincenter.net/News/Details/38539"),
    "in-situ leach ≥ 84 % (leachable phase) / ≥ 67 % (total); source flag A/B, taken as B")
row("yield.ionic.historic_recovery_frac.2007", 0.46, "fraction", 2007, "B", dd("3a", "aw2.com.cn/news/12546.html"),
    "ionic clay historic actual recovery ~46 % (2007 data); < 50 %; pond leaching < 30 %")
row("yield.oxide_to_metal_process_frac", 0.92, "fraction (beyond stoichiometry)", "", "estimate",
    dd("9", "estimate; Heim & Vander Wal 2023 (A) for the 0.80 bound"),
    "§9 default 0.92, range 0.80–0.96; metal/oxide price ratio 1.23 vs 1.18 stoichiometric suggests a small real loss")
row("yield.oxide_to_metal_process_heim_frac", 0.80, "fraction (beyond stoichiometry)", 2023, "A",
    dd("3b", "Heim & Vander Wal 2023, Minerals 13(10):1274"),
    "literature assumption ~20 % loss from oxide to metal beyond stoichiometry; use for sensitivity")
row("yield.magnet_blank_to_finished_frac", 0.70, "fraction (finished / blank mass)", "", "C",
    dd("3c/§9", "himagnet.com (C); Argus article 2678157 (A); nldmagnet.com (C)"),
    "§9 default 0.70, range 0.60–0.80 (himagnet block → finished 60–80 %, C); consistent with Argus scrap 25–30 % of output (A) and EPS 0.15/0.25 (C)")
derived("yield.oxide_to_finished_magnet_re_frac",
        rounded("{yield.oxide_to_metal_process_frac} * {yield.magnet_blank_to_finished_frac}", 4),
        "fraction", "", dd("9", "defaults"),
        "§9: consistent with the 60–75 % reported (discoveryalert, C)")
row("yield.scrap_to_reo_recovery_frac", 0.95, "fraction", "", "estimate", dd("9", "estimate (no yield sourced)"),
    "§9 default 0.95; suppliers claim > 99 % purity but no recovery yield was sourced; §10 cross-check 3 supports the order of magnitude")

# Stoichiometric metal content of oxides.
STOICH_SRC = dd("3b", "derived from molar masses (computed)")
for ox, val in [("nd2o3", 0.857), ("pr6o11", 0.828), ("prnd_oxide", 0.850), ("dy2o3", 0.871), ("tb4o7", 0.850)]:
    extra = " (Pr:Nd 25:75)" if ox == "prnd_oxide" else ""
    row(f"stoich.{ox}.metal_kg_per_kg", val, "kg metal / kg oxide", "", "derived", STOICH_SRC,
        f"metal mass fraction of the oxide{extra} from molar masses, as computed in domain_data §3b")
derived("stoich.la2o3.metal_kg_per_kg", rounded("2 * 138.905 / (2 * 138.905 + 3 * 15.999)", 3),
        "kg metal / kg oxide", "", "molar masses La 138.905, O 15.999 (given in the task brief)",
        "0.85268 before rounding")
derived("stoich.ceo2.metal_kg_per_kg", rounded("140.116 / (140.116 + 2 * 15.999)", 3),
        "kg metal / kg oxide", "", "molar masses Ce 140.116, O 15.999 (given in the task brief)",
        "0.81409 before rounding")

row("metal.electrolysis.current_efficiency_frac", 0.70, "fraction (lower bound)", "", "B",
    dd("3b", "m.g-ant.cn/n3355/n3373/c201038/content.html"),
    "fluoride-oxide system current efficiency > 70 % (chloride ≤ 50 %); thermal energy utilisation < 20 %")
row("metal.electrolysis.temperature_c", 1050, "°C", "", "B",
    dd("3b", "eurare.org; china-mcc.com; astromagnet.cn"), "cell conditions ~1,050 °C, carbon anode, W/Mo cathode, Ar")
row("metal.electrolysis_cell_10ka.output_t_per_month", 9, "t Nd/month (lower bound)", "", "B",
    dd("3b", "astromagnet.cn/news/show-529.html"), "a 10 kA-class cell makes > 9 t Nd/month and lasts > 1 yr")
row("metal.electrolysis_cell_10ka.life_days", 365, "days (lower bound)", "", "B",
    dd("3b/§6", "astromagnet.cn"), "10 kA-class cell life > 1 yr")
row("metal.electrolysis_cell_small.life_days", 180, "days (upper bound)", "", "B",
    dd("3b/§6", "astromagnet.cn"), "2.5–4.5 kA cells: 2.3–4.5 t/month, life < 180 d")

# Magnet composition and magnet-level facts.
row("magnet.ndfeb.prnd_frac", 0.295, "mass fraction of sintered NdFeB", "", "C",
    dd("3c/§9", "couragemagnet.com (C); Yang et al. 2017 (A)"),
    "§9 default 29.5 wt % PrNd, inside the supplier range Nd(+Pr) 29–32.5 % (C); Yang 2017: total REE 31–32 % (A)")
row("magnet.ndfeb.dy_tb_frac", 0.015, "mass fraction of sintered NdFeB", "", "estimate",
    dd("9", "estimate (GBD-era average)"),
    "§9 default 1.5 wt % Dy+Tb, estimate: bulk-alloyed grades 2–8 % (mainrich, C), GBD cuts 30–70 %; supplier Dy 0.6–1.2 % (C)")
row("magnet.ndfeb.b_frac", 0.010, "mass fraction of sintered NdFeB", "", "estimate", dd("9", "default"),
    "§9 default 1.0 wt % B; supplier range 1.1–1.2 % (couragemagnet, C) — kept at the §9 value")
derived("magnet.ndfeb.fe_other_frac",
        rounded("1 - {magnet.ndfeb.prnd_frac} - {magnet.ndfeb.dy_tb_frac} - {magnet.ndfeb.b_frac}", 6),
        "mass fraction of sintered NdFeB", "", dd("9", "defaults"), "Fe + Co/Cu/Al/Nb; §9 ≈ 68 %")
row("magnet.nd2fe14b.re_stoich_frac", 0.267, "mass fraction", "", "C",
    dd("3c", "hermeneutika.uk/ebike2.php (Wikipedia-derived)"), "RE in stoichiometric Nd2Fe14B 26.7 wt % (flag A/C, taken as C)")
for prod, val in [("bev", 0.196), ("hev", 0.228), ("inverter_ac", 0.228), ("ebike", 0.232),
                  ("industrial_motor", 0.251), ("industrial_robot", 0.27), ("hdd", 0.287), ("wind", 0.294)]:
    row(f"magnet.nd_content.{prod}_frac", val, "kg Nd / kg NdFeB", "", "B",
        dd("3c", "repo SanderNielen/ewaste, data/MarketShare+Content.csv"),
        f"EU MFA Nd mass fraction of the magnet for {prod.replace('_', ' ')}: {val}")
row("magnet.gbd.hre_saving_frac", 0.50, "fraction of Dy/Tb per kg magnet", "", "C",
    dd("9/§3d", "mainrichinternational.com"), "§9: GBD reduces Dy/Tb per kg of magnet by 50 % (range 30–70 %, C)")
row("magnet.ndfeb.re_share_of_cost_frac", 0.65, "fraction of magnet cost", "", "estimate",
    dd("5c", "sdmmagnetic; tymagnets (C)"),
    "midpoint of 'RE is 60–70 % of magnet cost' (C); raw materials ~80 % of cost, RE > 90 % of that")

# ---------------------------------------------------------------------------------------------
# Recycling
# ---------------------------------------------------------------------------------------------
ARGUS_REC = dd("3e", "Argus article 2678157 'China's recycled rare earth output falls in 2024'")
derived("recycling.ndfeb_scrap_share_of_output_frac", rounded("1 - {yield.magnet_blank_to_finished_frac}", 6),
        "fraction of blank mass", "", dd("3c/§9", "Argus article 2678157 (A); §9 yield default"),
        "Argus: NdFeB scrap ≈ 25–30 % of China's magnet output (A); §10 uses 30 %")
for yr, tot, prnd, gd, dy, ho, tb in [(2023, 39662, 31730, 1737, 888, 202, 138),
                                      (2024, 34147, 26504, 1048, 710, 167, 160)]:
    row(f"recycling.china.reo_from_scrap_t.{yr}", tot, "t REO", yr, "A", ARGUS_REC,
        f"China REO recovered from NdFeB scrap {yr}: {tot:,}")
    row(f"recycling.china.prnd_oxide_from_scrap_t.{yr}", prnd, "t PrNd oxide", yr, "A", ARGUS_REC,
        f"of which PrNd oxide {prnd:,}")
    row(f"recycling.china.gd2o3_from_scrap_t.{yr}", gd, "t Gd2O3", yr, "A", ARGUS_REC, f"of which Gd2O3 {gd:,}")
    row(f"recycling.china.dy2o3_from_scrap_t.{yr}", dy, "t Dy2O3", yr, "A", ARGUS_REC, f"of which Dy2O3 {dy}")
    row(f"recycling.china.ho_oxide_from_scrap_t.{yr}", ho, "t Ho oxide", yr, "A", ARGUS_REC, f"of which Ho {ho}")
    row(f"recycling.china.tb_oxide_from_scrap_t.{yr}", tb, "t Tb oxide", yr, "A", ARGUS_REC, f"of which Tb {tb}")
row("recycling.china.capacity_t_reo.2024", 80000, "t REO/a (lower bound)", 2024, "B",
    dd("3e", "scrapinsight; metalnomist; news.metal.com"),
    "recycling capacity > 80 kt REO/a (2024), > 100 kt (2025); ~40 plants; flag A/B, taken as B")
row("recycling.china.capacity_t_reo.2025", 100000, "t REO/a (lower bound)", 2025, "B",
    dd("3e", "scrapinsight; metalnomist; news.metal.com"), "> 100 kt REO/a (2025)")
row("recycling.china.plants_count.2024", 40, "plants (approx.)", 2024, "B",
    dd("3e", "scrapinsight; metalnomist"), "~40 plants; Jiangxi 64 %, Shandong 15 %, Jiangsu 11 %")
row("recycling.china.jiangxi_share_frac.2024", 0.64, "fraction of capacity", 2024, "B",
    dd("3e", "scrapinsight; metalnomist"), "Jiangxi 64 % of the recycling industry")
row("recycling.china.max_utilisation_frac.2022", 1.20, "fraction of capacity", 2022, "B",
    dd("3e/§6", "news.metal.com"), "some Jiangxi plants ran at 120 % of capacity (Mar 2022)")
row("recycling.china.target_rate_frac.2025", 0.30, "fraction", 2025, "C", dd("3e", "nshx.cn/news/70941.html"),
    "recycling-rate target ≥ 30 % by 2025 (14th FYP, as claimed)")
row("recycling.world.in_use_stock_ndprdy_t.2017", 94000, "t Nd+Pr+Dy in NdFeB", 2017, "A",
    dd("3e", "Yang et al. 2017, via reeproduce.eu"), "global in-use stock of Nd/Pr/Dy in NdFeB 94 kt")

# ---------------------------------------------------------------------------------------------
# 3. Magnet intensity per end use, demand split, lifetimes
# ---------------------------------------------------------------------------------------------
MFA = "repo SanderNielen/ewaste, data/MarketShare+Content.csv (EU MFA)"
row("intensity.nev.magnet_kg_per_unit", 2.0, "kg NdFeB/vehicle", "", "B", dd("4a/§9", MFA + "; m.zt5.com"),
    "§9 default 2.0 kg per NEV, all motors (EU MFA BEV/PHEV 2.0, B; Chinese press: humanoid 3.5 kg = 1.75 NEVs ⇒ ~2)")
row("intensity.bev_motor.magnet_kg_per_unit", 1.5, "kg NdFeB/traction motor", "", "C",
    dd("4a/§9", "thevoltbridge.com (C); Adamas via greencarcongress.com (A, derived 1.6–1.9)"),
    "§9 default 1.5 kg for the BEV traction motor alone; sources: 1–2 kg/motor (C), Adamas-derived 1.6–1.9 kg/motor (A)")
row("intensity.hev.magnet_kg_per_unit", 1.316, "kg NdFeB/vehicle", "", "B", dd("4a", MFA),
    "EU MFA HEV 1.316 kg/vehicle (§9 rounds to 1.3)")
row("intensity.ice_car.magnet_kg_per_unit", 0.273, "kg NdFeB/vehicle", "", "B", dd("4a", MFA),
    "ICE car ancillary motors (EPS etc.) 0.273 kg")
row("intensity.tesla.magnet_kg_per_unit", 0.52, "kg NdFeB/car", 2023, "B", dd("4a", "stockhead.com.au (Lynas/Tesla)"),
    "Tesla after HRE reduction ~0.52 kg/car")
row("intensity.ev_motor_by_power.magnet_kg_per_100kw", 1.2, "kg NdFeB per 100 kW peak", "", "C",
    dd("4a/§9", "mainrichinternational.com/applications/ev-motors"),
    "EV drive motor 1.2 kg per 100 kW peak; §9 also applies it to high-power drives (no per-kW servo figure found)")
row("intensity.eps.magnet_kg_per_unit", 0.15, "kg NdFeB/unit (finished)", 2017, "C", dd("4a", "nldmagnet.com"),
    "EPS unit 0.15 kg finished (~0.25 kg blank)")
row("intensity.wind_direct_drive.magnet_kg_per_mw", 625, "kg NdFeB/MW", "", "B",
    dd("4a/§9", MFA + "; Heim & Vander Wal 2023 citing Moss 2013"),
    "§9 default 625 kg/MW for direct-drive/low-speed PM (EU MFA 625, B; Moss 2013 625–850, A; row flag A/B, taken as B)")
row("intensity.wind_geared.magnet_kg_per_mw", 134, "kg NdFeB/MW", "", "B", dd("4a/§9", MFA),
    "§9 default 134 kg/MW for medium/high-speed geared PM")
row("intensity.wind_average.magnet_kg_per_mw", 500, "kg NdFeB/MW", 2023, "A",
    dd("4a/§9", "Heim & Vander Wal 2023"), "average over all new wind ~500 kg/MW; §9: use only if the turbine mix is not modelled")
row("intensity.wind_dd_large.magnet_kg_per_unit", 650, "kg NdFeB/turbine", 2023, "A",
    dd("4a", "Heim & Vander Wal 2023"),
    "per large DD turbine 650 kg (medium 160, small 80) as printed; inconsistent with 625 kg/MW × multi-MW ratings — do not combine")
derived("intensity.wind_dd_7mw.magnet_kg_per_unit", "7 * {intensity.wind_direct_drive.magnet_kg_per_mw}",
        "kg NdFeB/turbine", 2024, "domain_data.md §4a/§9 (625 kg/MW); seeds 003/004 (≥7 MW turbines)",
        "7 MW is the seeds' minimum rating {target.baotou.wind_turbine_min_rating_mw.2024}")
derived("intensity.wind_geared_7mw.magnet_kg_per_unit", "7 * {intensity.wind_geared.magnet_kg_per_mw}",
        "kg NdFeB/turbine", 2024, "domain_data.md §4a/§9 (134 kg/MW); seeds 003/004 (≥7 MW turbines)",
        "7 MW as the direct-drive row")
row("intensity.industrial_robot.magnet_kg_per_unit", 2.0, "kg NdFeB/robot", "", "B", dd("4a/§9", MFA + " (Sekine 2017)"),
    "§9 default 2.0 (EU MFA 1.99, PM share ~0.8); Chinese press gives 0.8–1.2 — test both")
row("intensity.industrial_robot_cn_press.magnet_kg_per_unit", 1.0, "kg NdFeB/robot", "", "estimate",
    dd("4a", "pb.ccmn.cn/news/ZX003/202506 (B)"), "midpoint of the Chinese-press range 0.8–1.2 kg; §9 says test it against 2.0")
row("intensity.humanoid_robot.magnet_kg_per_unit", 3.5, "kg NdFeB/robot", "", "B",
    dd("4a/§9", "CNRE investor platform via qukanredian.com; m.zt5.com"),
    "§9 default 3.5 kg (CNRE Q&A 3.5–4; 4–6 for high-performance NdFeB)")
row("intensity.inverter_ac.magnet_kg_per_unit", 0.15, "kg NdFeB/unit", "", "B", dd("4a/§9", MFA + " (Morimoto 2017; Sekine 2017)"),
    "§9 default 0.15 (EU MFA compressor 0.152, PM share 0.36–0.41)")
row("intensity.ebike.magnet_kg_per_unit", 0.27, "kg NdFeB/bike", "", "B", dd("4a/§9", MFA),
    "§9 default 0.27 (EU MFA 0.266, PM share 1.0; a 46-piece hub motor ≈ 0.34 kg, C)")
row("intensity.industrial_motor.magnet_kg_per_unit", 0.175, "kg NdFeB/unit", "", "B", dd("4a/§9", MFA),
    "EU average industrial machine/motor unit 0.175 kg (PM share ~2 %); no per-kW servo figure found")
row("intensity.industrial_pump.magnet_kg_per_unit", 0.35, "kg NdFeB/unit", "", "B", dd("4a", MFA), "industrial pump 0.35 kg")
row("intensity.washing_machine.magnet_kg_per_unit", 0.130, "kg NdFeB/unit", "", "B", dd("4a", MFA), "washing machine 0.130 kg")
row("intensity.fridge.magnet_kg_per_unit", 0.1125, "kg NdFeB/unit", "", "B", dd("4a", MFA), "fridge 0.1125 kg")
row("intensity.hdd.magnet_kg_per_unit", 0.015, "kg NdFeB/unit", "", "B", dd("4a", MFA), "HDD 0.015 kg")
row("intensity.smartphone.magnet_kg_per_unit", 0.0002, "kg NdFeB/unit", "", "B", dd("4a", MFA), "smartphone 0.0002 kg")
row("intensity.mri.magnet_kg_per_unit", 1620, "kg NdFeB/unit", "", "B", dd("4a", MFA), "MRI 1,620 kg")
LYNAS = dd("4a", "stockhead.com.au (Lynas, 2023)")
row("intensity.ev.prnd_oxide_kg_per_unit", 0.7, "kg NdPr oxide/vehicle", 2023, "B", LYNAS, "7,000 t per 10 M EVs")
row("intensity.hev.prnd_oxide_kg_per_unit", 0.5, "kg NdPr oxide/vehicle", 2023, "B", LYNAS, "5,000 t per 10 M hybrids")
row("intensity.wind.prnd_oxide_kg_per_mw", 300, "kg NdPr oxide/MW", 2023, "B", LYNAS, "3,000 t per 10 GW")
row("intensity.china_offshore_wind.magnet_kg_per_mw.2023", 600, "kg NdFeB/MW", 2023, "C", dd("4a", "pmarketresearch.com"),
    "China offshore wind 2023: 16.9 GW → 10,200 t NdFeB (≈ 600 kg/MW)")

row("demand.pm_share.passenger_ev_frac.2018", 0.93, "fraction of passenger EVs with PM traction", 2018, "A",
    dd("4a", "adamasintel.com/93-percent-evs-used-pm-motors-2018/"), "93 % (2018); > 90 % to date")
row("demand.pm_share.industrial_robot_frac", 0.8, "fraction", "", "B", dd("4a", MFA), "industrial robot PM share ~0.8")
row("demand.pm_share.industrial_motor_frac", 0.02, "fraction", "", "B", dd("4a", MFA), "industrial motor PM share ~2 %")
SPLIT = dd("4b/§9", "CSRE (Zhang Anwen) via metalnomist.com/2024/10/surging-demand-for-ndfeb-magnets-driven.html")
for seg, val in [("ev", 0.30), ("inverter_ac", 0.16), ("industrial_robot_motor", 0.16), ("wind", 0.12)]:
    row(f"demand.split_world_ndfeb.{seg}_frac.2023", val, "fraction of world NdFeB demand", 2023, "B", SPLIT,
        f"world NdFeB demand split c.2023: {seg.replace('_', ' ')} {val * 100:g} %")
derived("demand.split_world_ndfeb.other_frac.2023",
        rounded("1 - {demand.split_world_ndfeb.ev_frac.2023} - {demand.split_world_ndfeb.inverter_ac_frac.2023}"
                " - {demand.split_world_ndfeb.industrial_robot_motor_frac.2023} - {demand.split_world_ndfeb.wind_frac.2023}", 6),
        "fraction of world NdFeB demand", 2023, SPLIT, "consumer electronics + other, remainder per §9")
row("demand.world.consumer_electronics_frac.2023", 0.30, "fraction of world NdFeB demand", 2023, "A",
    dd("4b", "Heim & Vander Wal 2023"), "consumer electronics ~30 % — conflicts with the CSRE split (all 'other' = 26 %)")
row("demand.china.automotive_ndfeb_t.2023", 36200, "t NdFeB", 2023, "B", dd("4b", "metalnomist.com (CSRE)"),
    "China automotive NdFeB demand 36,200 t")
row("demand.world.eps_ndfeb_t.2023", 12000, "t NdFeB", 2023, "B", dd("4b", "metalnomist.com (CSRE)"), "global EPS ~12,000 t")
row("demand.world.magnet_ree_t.2023", 93000, "t REE", 2023, "A", dd("4b", "IEA GCMO 2024 via theearthandi.org; wayenind.com"),
    "magnet REE demand 93 kt (2023)")
row("demand.world.magnet_ree_t.2021", 78000, "t REE", 2021, "A", dd("4b", "IEA GCMO 2024 via theearthandi.org; wayenind.com"),
    "magnet REE demand 78 kt (2021)")
row("demand.world.ev_sales_units.2023", 14000000, "vehicles", 2023, "A",
    dd("4b", "iea.org/reports/global-critical-minerals-outlook-2024/market-review"), "EV sales ~14 M (+35 %)")
row("demand.world.ndfeb_growth_per_year", 0.075, "1/a (CAGR)", "", "A", dd("4b/§8", "Adamas via greencarcongress.com/2023/05"),
    "NdFeB demand CAGR 7.5 % (2023–2040); magnet REO supply CAGR 5.2 % vs demand 7.0 %")
row("demand.world.pm_share_of_re_volume_frac.2020", 0.26, "fraction of RE demand (volume)", 2020, "B",
    dd("4b", "sanwenwang.com; ccmagnetics.com"), "PMs are 26 % of global RE demand and 42 % of China's (by volume)")
row("demand.china.pm_share_of_re_volume_frac.2020", 0.42, "fraction of RE demand (volume)", 2020, "B",
    dd("4b", "sanwenwang.com; ccmagnetics.com"), "42 % of China's RE demand by volume")
row("demand.world.pm_share_of_re_value_frac.2019", 0.91, "fraction of REO consumption value", 2019, "B",
    dd("4b", "rainbowrareearths.com"), "permanent magnets 91 % of total REO consumption value")
row("demand.prnd.short_run_price_elasticity", -0.2, "dimensionless", "", "estimate", dd("9", "estimate, not sourced"),
    "midpoint of §9's −0.1 to −0.3; literature only says minor REE demand is highly inelastic (Binnemans)")
seed("demand.china.metallurgy_share_of_re_use_frac", round(1 / 3, 6), "fraction of RE use", 2010, S0, "约占稀土总用量的1/3")
seed("demand.world.re_forecast_t_reo.2015", 130000, "t REO (lower bound)", 2015, S0, "5年后总需求量预计将超过13万吨（REO）")
seed("demand.world.ndfeb_growth_forecast_per_year", 0.20, "1/a (lower bound)", "2011-2015", S0,
     "未来3-5年钕铁硼需求量仍会保持20％以上的高增长率")

WEI = dd("3e/§9", "repo SanderNielen/ewaste, data/htbl_Weibull.csv")
for prod, scale, shape in [("ev", 15.5, 3.6), ("wind", 24.7, 3.0), ("industrial_robot", 13.6, 2.7),
                           ("industrial_motor", 16.7, 1.5), ("inverter_ac", 20.6, 2.0), ("ebike", 10, 1.8),
                           ("washing_machine", 13.6, 2.2), ("smartphone", 6.26, 1.56)]:
    row(f"lifetime.{prod}.weibull_scale_years", scale, "years", "", "B", WEI,
        f"Weibull scale / shape {scale} / {shape} for {prod.replace('_', ' ')}")
    row(f"lifetime.{prod}.weibull_shape", shape, "dimensionless", "", "B", WEI,
        f"Weibull scale / shape {scale} / {shape} for {prod.replace('_', ' ')}")

# ---------------------------------------------------------------------------------------------
# 4. Prices
# ---------------------------------------------------------------------------------------------
FX = {2020: 6.9, 2021: 6.5, 2022: 6.7, 2023: 7.1, 2024: 7.2}
for yr, rate in FX.items():
    row(f"fx.cny_per_usd.{yr}", rate, "CNY/USD", yr, "estimate", dd("11", "rates used for CNY/USD conversions, stated as not sourced"),
        f"§11: CNY/USD conversions marked as estimates use ≈ {rate} for {yr}; not sourced")

USGS = dd("5a", "USGS MCS2025 (Argus-based annual averages; repo NSSAC/dpi.RAG)")
USD = {
    "nd_oxide": [49, 98, 134, 78, 56],
    "dy_oxide": [261, 410, 382, 330, 260],
    "tb_oxide": [670, 1346, 2051, 1298, 810],
    "la_oxide": [2, 2, 1, 1, 1],
    "ce_oxide": [2, 2, 1, 1, 1],
    "eu_oxide": [31, 31, 30, 27, 27],
    "mischmetal": [5, 6, 7, 5, 5],
}
for prodname, vals in USD.items():
    for yr, val in zip(range(2020, 2025), vals, strict=True):
        row(f"price.{prodname}.usd_per_kg.{yr}", val, "USD/kg", yr, "A", USGS,
            f"USGS annual average {prodname.replace('_', ' ')} {yr}: {val} USD/kg")

CSV_SRC = dd("5b", "daily series repo YiYaWu-233/Long-sequence-Time-Series-forecasting-of-rare-earth-price, data/稀土价格.csv")
DOM = {
    "nd_oxide": [335.5, 629.2, 893.8, 555.3, 398.3],
    "pr_oxide": [326.4, 600.5, 856.3, 536.8, 396.1],
    "ce_oxide": [11.0, 9.4, 8.4, 5.6, 6.7],
    "la_oxide": [10.6, 9.4, 7.9, 5.1, 4.0],
}
for prodname, vals in DOM.items():
    for yr, val in zip(range(2020, 2025), vals, strict=True):
        h1 = " (2024 H1 only; series ends 2024-07)" if yr == 2024 else ""
        row(f"price.{prodname}.cny_per_t.{yr}", round(val * 1000), "CNY/t (domestic, incl. 13 % VAT)", yr, "derived",
            CSV_SRC,
            f"annual mean of the daily series computed in §5b (source flag B): {val} CNY/kg × 1000{h1}")

ARGUS_P = dd("5b", "Argus article 2678157")
row("price_rel.prnd_oxide_over_nd_oxide_ratio", 0.95, "ratio", "", "derived", dd("5d", "spot pairs in §5b"),
    "PrNd oxide / Nd oxide 0.91–0.96, mean ≈ 0.95")
row("price_rel.prnd_metal_over_prnd_oxide_ratio", 1.23, "ratio", "", "derived", dd("5d", "spot pairs in §5b"),
    "PrNd metal / PrNd oxide 1.22–1.28, mean ≈ 1.23 (1.18 from stoichiometry alone)")
# PrNd oxide
for yr in (2020, 2021, 2022):
    derived(f"price.prnd_oxide.cny_per_t.{yr}",
            f"round({{price.nd_oxide.cny_per_t.{yr}}} * {{price_rel.prnd_oxide_over_nd_oxide_ratio}})",
            "CNY/t (domestic, incl. VAT)", yr, CSV_SRC + "; §5d ratio", "no PrNd annual figure (ratio 0.95, §5d)")
row("price.prnd_oxide.cny_per_t.2023", 530000, "CNY/t (domestic, incl. VAT)", 2023, "derived", ARGUS_P,
    "≈ 530 CNY/kg, derived in §5b from Argus 2024 average 392 and −26 % y/y (source flag A); §9 2023 base 530")
row("price.prnd_oxide.cny_per_t.2024", 392000, "CNY/t (domestic, incl. VAT)", 2024, "A", ARGUS_P,
    "Argus 2024 annual average 392 CNY/kg (US$53.6)")
row("price.prnd_oxide.usd_per_kg.2024", 53.6, "USD/kg", 2024, "A", ARGUS_P, "Argus 2024 annual average US$53.6/kg")
for yr in range(2020, 2025):
    derived(f"price.prnd_metal.cny_per_t.{yr}",
            f"round({{price.prnd_oxide.cny_per_t.{yr}}} * {{price_rel.prnd_metal_over_prnd_oxide_ratio}})",
            "CNY/t (domestic, incl. VAT)", yr, dd("5d", "PrNd metal / oxide spot pairs"), "ratio 1.23, §5d")

# Dy / Tb oxide
row("price.dy_oxide.cny_per_t.2023", 2325000, "CNY/t (domestic, incl. VAT)", 2023, "derived", ARGUS_P,
    "≈ 2,325 CNY/kg, derived in §5b from Argus 2024 1,837 and −21 % (source flag A); §9 rounds to 2,330")
row("price.dy_oxide.cny_per_t.2024", 1837000, "CNY/t (domestic, incl. VAT)", 2024, "A", ARGUS_P,
    "Argus 2024 annual average 1,837 CNY/kg (−21 %)")
row("price.tb_oxide.cny_per_t.2024", 5789000, "CNY/t (domestic, incl. VAT)", 2024, "A", ARGUS_P,
    "Argus 2024 annual average 5,789 CNY/kg")
USD_CONV_NOTE = "FX is an unsourced estimate (§11); USGS (Argus-based) prices are not on the Chinese domestic VAT-incl. basis"
for prodname, years in [("dy_oxide", (2020, 2021, 2022)), ("tb_oxide", (2020, 2021, 2022, 2023)),
                        ("eu_oxide", tuple(range(2020, 2025))), ("mischmetal", tuple(range(2020, 2025)))]:
    for yr in years:
        note = " (§9 2023 Tb base: 9,200 CNY/kg, same derivation rounded)" if (prodname, yr) == ("tb_oxide", 2023) else ""
        derived(f"price.{prodname}.cny_per_t.{yr}",
                f"round({{price.{prodname}.usd_per_kg.{yr}}} * {{fx.cny_per_usd.{yr}}} * 1000)",
                "CNY/t (USD-converted)", yr, USGS + "; FX §11", f"no CNY annual series; {USD_CONV_NOTE}{note}")

# Dy / Tb metal: no source; use the PrNd metal/oxide market ratio.
for el, stoich in [("dy", 0.871), ("tb", 0.850)]:
    for yr in range(2020, 2025):
        derived(f"price.{el}_metal.cny_per_t.{yr}",
                f"round({{price.{el}_oxide.cny_per_t.{yr}}} * {{price_rel.prnd_metal_over_prnd_oxide_ratio}})",
                "CNY/t", yr, dd("5b/§5d/§3b", f"{el.capitalize()} oxide price; PrNd metal/oxide ratio"),
                f"no {el.capitalize()} metal price in the sources: the PrNd metal/oxide market ratio (1.23, §5d) as a "
                f"conversion mark-up; stoichiometry alone gives ×{1 / stoich:.3f}; {el.capitalize()} metal is made by "
                "Ca-thermic reduction (§3b), likely dearer — low confidence", flag="estimate")

# Minor oxides: no prices in the sources.
derived("price.sm_oxide.cny_per_t.2023", "{price.mischmetal.cny_per_t.2023}", "CNY/t", 2023,
        dd("5a/§8", "USGS mischmetal; treo.substack.com (over-production)"),
        "no Sm price in the sources; valued like a cheap co-product at the USGS mischmetal level "
        "(above La/Ce oxide 5–6 CNY/kg, far below PrNd); hold constant across years; placeholder", flag="estimate")
derived("price.y_oxide.cny_per_t.2023", "{price.mischmetal.cny_per_t.2023}", "CNY/t", 2023,
        dd("5a/§8", "USGS mischmetal; treo.substack.com ('La/Ce/Y persistently over-produced')"),
        "no Y price in the sources; Y is persistently over-produced (§8), so valued at the mischmetal level; placeholder",
        flag="estimate")
derived("price.gd_oxide.cny_per_t.2023", "{price.eu_oxide.cny_per_t.2023}", "CNY/t", 2023,
        dd("5a/§8", "USGS Eu oxide; treo.substack.com ('Tb/Dy/Gd persistently short')"),
        "no Gd price in the sources; anchored on the only other medium-RE oxide priced, Eu; Gd is 'persistently short' (§8); "
        "placeholder", flag="estimate")
derived("price.other_re_oxide_mix.cny_per_t.2023", "{price.eu_oxide.cny_per_t.2023}", "CNY/t", 2023,
        dd("5a", "USGS Eu oxide"),
        "Ho–Lu/Er 'other' mix: no price in the sources; valued like Gd at the Eu oxide level; small mass (0.7 % of REO); "
        "placeholder", flag="estimate")

# Concentrate (Baotou Steel → CNRE, dry, ex-tax, 50 % REO), CNY per t of concentrate.
CONC = "CNY/t concentrate (50 % REO, dry, ex-tax)"
for period, val, src in [("2022h1", 26887, "yicaiglobal.com"), ("2022h2", 37230, "yicaiglobal.com"),
                         ("2022h2_initial", 39189, "yicaiglobal.com"),
                         ("2023q1", 35313, "m.b8iz8ocd.cn"), ("2023q2", 31030, "udn.com/news/story/7333/9062861"),
                         ("2024q2", 16792, "ddx.gubit.cn"), ("2024q3", 16741, "ddx.gubit.cn"),
                         ("2024q4", 17782, "news.metal.com; gmt8press.com"), ("2025q1", 18618, "news.metal.com; gmt8press.com"),
                         ("2025q2", 18825, "news.metal.com; gmt8press.com"), ("2025q3", 19109, "news.metal.com; gmt8press.com"),
                         ("2025q4", 26205, "news.metal.com; gmt8press.com"), ("2026q1", 26834, "news.cnyes.com/news/id/6306645")]:
    notes = {"2022h1": "Jan 2022 contract price 26,887 (+65 %)",
             "2022h2": "Jul 2022 price 39,189, revised to 37,230 (revised value)",
             "2022h2_initial": "Jul 2022 price as first announced, later revised to 37,230",
             "2025q4": "Q4 2025 26,205 (+37.1 %)"}
    row(f"price.concentrate_reo50.cny_per_t.{period}", val, CONC, period[:4], "B", dd("5b", src),
        notes.get(period, f"contract price {period}: {val:,} CNY/t (source flags A/B, taken as B)"))
CONC_KEY = "{{price.concentrate_reo50.cny_per_t.{}}}"
derived("price.concentrate_reo50.cny_per_t.2022", f"({CONC_KEY.format('2022h1')} + {CONC_KEY.format('2022h2')}) / 2",
        CONC, 2022, dd("5b", "yicaiglobal.com"), "mean: assumes Jan price held Jan–Jun and revised Jul price Jul–Dec")
derived("price.concentrate_reo50.cny_per_t.2023", f"({CONC_KEY.format('2023q1')} + {CONC_KEY.format('2023q2')}) / 2",
        CONC, 2023, dd("5b", "m.b8iz8ocd.cn; udn.com"),
        "mean; Q3/Q4 2023 not in the sources (H1 mean); §9: 31–35 CNY/kg in 2023")
derived("price.concentrate_reo50.cny_per_t.2024",
        rounded(f"({CONC_KEY.format('2024q2')} + {CONC_KEY.format('2024q3')} + {CONC_KEY.format('2024q4')}) / 3", 1),
        CONC, 2024, dd("5b", "ddx.gubit.cn; news.metal.com"), "mean; Q1 2024 not in the sources; §9: ≈ 17 CNY/kg")
derived("price.concentrate_reo50.cny_per_t.2025",
        "(" + " + ".join(CONC_KEY.format(f"2025q{q}") for q in range(1, 5)) + ") / 4",
        CONC, 2025, dd("5b", "news.metal.com; gmt8press.com"), "mean of the four quarters")
for yr in (2022, 2023, 2024, 2025):
    derived(f"price.concentrate_reo50.cny_per_t_reo.{yr}",
            rounded(f"{{price.concentrate_reo50.cny_per_t.{yr}}} / {{concentrate.baotou.grade_frac}}", 1),
            "CNY/t REO in concentrate (ex-tax)", yr, dd("5b", "as the annual key"))
row("price.concentrate_reo50.grade_adj_cny_per_t_per_pct.2023", 706.26, "CNY/t concentrate per 1 % REO", 2023, "B",
    dd("2", "m.b8iz8ocd.cn/shichang/2023/0314/59590.html"), "price adjusted by ±706.26 CNY/t per 1 % REO from the 50 % basis (2023)")
row("price.concentrate_reo50.grade_adj_cny_per_t_per_pct.2026", 536.68, "CNY/t concentrate per 1 % REO", 2026, "B",
    dd("2", "news.cnyes.com/news/id/6306645"), "±536.68 CNY/t per 1 % REO in Q1 2026")
row("price.concentrate_reo50.reset_period_months", 3, "months", 2023, "B", dd("5b/§6", "udn.com"),
    "since 1 Apr 2023 the concentrate price is reset each quarter by formula")
row("price.re_carbonate.cny_per_t.2023q3", 38900, "CNY/t", 2023, "B", dd("5b", "m.jizihe.com/page/2023/1203/23838947.shtml"),
    "RE carbonate Q3 2023 average 38.9 CNY/kg")

# Spot points (single-valued ones only; ranges left out).
SPOTS = [
    ("prnd_oxide", "2021m09", 598000, "B", "sunsirs.com/commodity-news/petail-5717.html", "Sep 2021 spot 598k"),
    ("prnd_metal", "2021m09", 737500, "B", "sunsirs.com/commodity-news/petail-5717.html", "Sep 2021 spot 737.5k"),
    ("nd_oxide", "2021m09", 627500, "B", "sunsirs.com/commodity-news/petail-5717.html", "Sep 2021 spot 627.5k"),
    ("pr_oxide", "2021m09", 640000, "B", "sunsirs.com/commodity-news/petail-5717.html", "Sep 2021 spot 640k"),
    ("dy_oxide", "2021m09", 2685000, "B", "sunsirs.com/commodity-news/petail-5717.html", "Sep 2021 spot 2.685 M"),
    ("nd_oxide", "2022m02", 1235000, "B", "daily CSV (§5b)", "15 Feb 2022: 1,235k, peak of the series"),
    ("pr_oxide", "2022m02", 1090000, "B", "daily CSV (§5b)", "15 Feb 2022: 1,090k"),
    ("prnd_oxide", "2022m12", 642800, "B", "fx361.cc/page/2023/0322/20498167.shtml (CNRE list)", "Dec 2022 CNRE list price"),
    ("prnd_metal", "2022m12", 787000, "B", "fx361.cc (CNRE list)", "Dec 2022 CNRE list price"),
    ("nd_oxide", "2022m12", 709600, "B", "fx361.cc (CNRE list)", "Dec 2022 CNRE list price"),
    ("la_oxide", "2022m12", 9800, "B", "fx361.cc (CNRE list)", "Dec 2022 CNRE list: La/Ce oxide 9.8k"),
    ("ce_oxide", "2022m12", 9800, "B", "fx361.cc (CNRE list)", "Dec 2022 CNRE list: La/Ce oxide 9.8k"),
    ("prnd_oxide", "2023m05", 495000, "B", "horizonmagnets.com (CNRE May 2023 list)", "May 2023 CNRE list price"),
    ("prnd_metal", "2023m05", 610000, "B", "horizonmagnets.com (CNRE May 2023 list)", "May 2023 CNRE list price"),
    ("nd_oxide", "2023m05", 511700, "B", "horizonmagnets.com (CNRE May 2023 list)", "May 2023 CNRE list price"),
    ("prnd_oxide", "2023m10", 522200, "C", "pa.epomaterial.com", "Oct 2023 average"),
    ("prnd_metal", "2023m10", 643000, "C", "pa.epomaterial.com", "Oct 2023 average"),
    ("prnd_oxide", "2024m05", 388000, "B", "news.chinatungsten.com (tpn-13131)", "24 May 2024 spot"),
    ("prnd_metal", "2024m05", 485000, "B", "news.chinatungsten.com (tpn-13131)", "24 May 2024 spot"),
    ("prnd_oxide", "2026m01", 624900, "B", "news.cnyes.com/news/id/6306645", "Jan 2026 average"),
    ("prnd_metal", "2026m01", 760700, "B", "news.cnyes.com/news/id/6306645", "Jan 2026 average"),
]
for prodname, period, val, flag, src, note in SPOTS:
    row(f"price.{prodname}.cny_per_t.{period}", val, "CNY/t (domestic spot/list)", period[:4], flag, dd("5b", src), note)
row("price.prnd_oxide.cny_per_t.2022m01", 816800, "CNY/t (CNRE list)", 2022, "derived", dd("5b", "fx361.cc (CNRE list)"),
    "Jan 2022 CNRE list ≈ 816.8k, derived in the source table (flag B)")

# Seeds: the only prices in the seed documents.
seed("price.nd_oxide.cny_per_t.2009", 86000, "CNY/t", 2009, S0, "氧化钕价格已从2009年的均价8.6 万元/吨上涨至16.2 万元/吨")
seed("price.nd_oxide.cny_per_t.2010", 162000, "CNY/t", 2010, S0, "氧化钕价格已从2009年的均价8.6 万元/吨上涨至16.2 万元/吨")

# Magnets, ingot, scrap.
row("price.ndfeb_magnet.cny_per_t.2023", 400000, "CNY/t sintered NdFeB (finished)", 2023, "estimate",
    dd("9", "estimate: RE content cost ÷ RE share of cost"),
    "midpoint of §9's 350–450 CNY/kg (≈ 50–60 USD/kg); §9 logic: 0.43 kg PrNd metal/kg magnet × 650 ÷ 0.6–0.7")
# The export price of magnets (2024) and JL Mag's implied price follow the trade and plant rows (§7, §6).
row("price.ndfeb_ingot_55n.cny_per_t.2024m05", 200000, "CNY/t", 2024, "derived", dd("5c", "news.chinatungsten.com tpn-13131"),
    "≈ 200 CNY/kg, derived in §5c from a −3 CNY/kg move reported as −1.48 % (flag B)")
row("price.ndfeb_scrap.cny_per_t.2024m05", 445000, "CNY/t (as reported)", 2024, "derived", dd("5c", "news.chinatungsten.com tpn-13131"),
    "≈ 445 CNY/kg, derived in §5c from −18 CNY/kg = −4.04 % (flag B); exceeds the ingot price and PrNd oxide 2024 — probably not per kg of scrap mass; check before use")
row("price.ndfeb_n35_supplier.usd_per_kg.2025", 20.75, "USD/kg", 2025, "C", dd("5c", "ahlulangmagnet (supplier page)"),
    "midpoint of 19.5–22 USD/kg; §5c/§11: looks too low against PrNd content — do not use for calibration")
derived("price_rel.prnd_metal_over_oxide_stoich_ratio", rounded("1 / {stoich.prnd_oxide.metal_kg_per_kg}", 3),
        "ratio", "", STOICH_SRC)

VOL = dd("5d", "daily CSV (§5b)")
row("price_vol.prnd.sigma_per_year", 0.17, "1/sqrt(a)", "", "derived", dd("9/§5d", "daily CSV"),
    "§9 GBM σ default for NdPr; from annualised vol of daily log returns 2020–24 (Nd 17.4 %, Pr 16.0 %)")
row("price_vol.lace.sigma_per_year", 0.15, "1/sqrt(a)", "", "derived", dd("9/§5d", "daily CSV"),
    "§9 GBM σ default for La/Ce (Ce 15.9 %, La 13.9 %)")
for prodname, val in [("nd_oxide", 0.174), ("pr_oxide", 0.160), ("ce_oxide", 0.159), ("la_oxide", 0.139)]:
    row(f"price_vol.{prodname}.sigma_per_year", val, "1/sqrt(a)", "2020-2024", "derived", VOL,
        f"annualised volatility of daily log returns 2020–24: {val * 100:.1f} %")
for yr, val in zip(range(2020, 2025), [0.149, 0.184, 0.209, 0.139, 0.167], strict=True):
    row(f"price_vol.nd_oxide.sigma_per_year.{yr}", val, "1/sqrt(a)", yr, "derived", VOL,
        f"Nd oxide annualised volatility in {yr}: {val * 100:.1f} %")
for yr, val in zip(range(2020, 2025), [0.20, 0.19, 0.18, 0.19, 0.06], strict=True):
    row(f"price_vol.nd_oxide.within_year_cv.{yr}", val, "coefficient of variation", yr, "derived", VOL,
        f"within-year CV of Nd oxide {yr}: {val}" + (" (2024 H1)" if yr == 2024 else ""))

# ---------------------------------------------------------------------------------------------
# 5. Quotas
# ---------------------------------------------------------------------------------------------
for yr, rock, heavy, total in [(2006, 78200, 8320, 86520), (2007, 78200, 8820, 87020), (2008, 78500, 9120, 87620),
                               (2009, 72300, 10020, 82320)]:
    q = f"表2  稀土历年开采总量指标（吨）…{yr} {rock} {heavy} {total}"
    seed(f"quota.national.mining_rock_t_reo.{yr}", rock, "t REO", yr, S0, q)
    seed(f"quota.national.mining_ionic_t_reo.{yr}", heavy, "t REO", yr, S0, q)
    seed(f"quota.national.mining_t_reo.{yr}", total, "t REO", yr, S0, q)
seed("quota.national.mining_rock_t_reo.2010", 77000, "t REO", 2010, S0, "表2  稀土历年开采总量指标（吨）…2010 77000 12200 89200")
seed("quota.national.mining_ionic_t_reo.2010", 12200, "t REO", 2010, S0, "表2  稀土历年开采总量指标（吨）…2010 77000 12200 89200")
seed("quota.national.mining_t_reo.2010", 89200, "t REO", 2010, S0, "稀土矿（REO）开采总量控制指标为89200吨")
seed("quota.national.mining_change_frac.2006", -0.20, "fraction vs previous year", 2006, S0, "2006 年稀土开采配额被下调20%")
seed("quota.national.mining_change_frac.2009", -0.06, "fraction vs 2008", 2009, S0, "2009年稀土开采限额在2008 年基础上下降6%")

Q_SRC = {
    2015: "bknaihuo.com/html/1/752.htm; pottawattamieconservationfoundation.com",
    2016: "chinaccm.com/28/20160701; chinanews.com/cj/2016/02-22/7767511.shtml",
    2017: "ifuun.com/a2018080115170427/; globalreesventure.com (Reuters)",
    2018: "m.huajx.com/news/detail/32346.html; globalreesventure.com",
    2019: "globaltimes.cn/content/1169411.shtml",
    2020: "MIIT 工信部联原〔2020〕103号 via myyun.cc; tungstenstrips.blog.jp",
    2021: "zhoukan.cc/redian/2021/1009/43018.html; nationalpost.com (Reuters)",
    2022: "yllds.cn/news/display.php?news_id=219640; pldee.com/news/39131.html",
    2023: "m.jxjad.com/ShowNews1.aspx?id=448846; m.nbd.com.cn/articles/2023-09-30/3041056.html",
    2024: "starfeu.com/?p=5920 (Reuters-based); fastmarkets.com",
}
QFLAG = {2015: "B", 2016: "B", 2017: "B", 2018: "B", 2019: "A", 2020: "B", 2021: "B", 2022: "B", 2023: "B", 2024: "B"}
QNOTE = {2018: " (flag A/B, taken as B)", 2020: " (flag A/B, taken as B)", 2021: " (flag A/B, taken as B)",
         2024: " (flag A/B, taken as B)"}
# (year, mining, rock, ionic, smelting)
for yr, mining, rock, ionic, smelt in [(2016, 105000, 87100, 17900, None), (2017, 105000, 87100, 17900, 100000),
                                      (2018, 120000, 100850, 19150, 115000), (2019, 132000, None, None, 127000),
                                      (2020, 140000, 120850, 19150, 135000), (2021, 168000, 148850, 19150, 162000),
                                      (2022, 210000, None, 19150, 202000), (2023, 255000, None, None, 243850),
                                      (2024, 270000, None, None, 254000)]:
    src = dd("1a", Q_SRC[yr])
    note = QNOTE.get(yr, "")
    row(f"quota.national.mining_t_reo.{yr}", mining, "t REO", yr, QFLAG[yr], src, f"national mining quota {yr}: {mining:,}{note}")
    if rock is not None:
        row(f"quota.national.mining_rock_t_reo.{yr}", rock, "t REO", yr, QFLAG[yr], src, f"of which rock/light {rock:,}{note}")
    if ionic is not None:
        row(f"quota.national.mining_ionic_t_reo.{yr}", ionic, "t REO", yr, QFLAG[yr], src,
            f"of which ionic (M-HREE) {ionic:,}{note}" + (" (unchanged for 3 years)" if yr == 2022 else ""))
    if smelt is not None:
        row(f"quota.national.smelting_t_reo.{yr}", smelt, "t REO", yr, QFLAG[yr], src,
            f"smelting & separation quota {yr}: {smelt:,}{note}")
derived("quota.national.mining_rock_t_reo.2022",
        "{quota.national.mining_t_reo.2022} - {quota.national.mining_ionic_t_reo.2022}", "t REO", 2022,
        dd("1a", Q_SRC[2022]), "§1a: 190,850, derived; +28 % y/y")

BATCH = [
    (2014, 1, 46900, 45250, None, None, "bknaihuo.com/html/1/752.htm", "B"),
    (2015, 1, 52500, 50050, None, None, "bknaihuo.com/html/1/752.htm", "B"),
    (2016, 1, 52500, None, 43550, None, "chinanews.com/cj/2016/02-22/7767511.shtml", "B"),
    (2019, 1, None, None, 50425, 9575, "globaltimes.cn/content/1142893.shtml", "A"),
    (2020, 1, 66000, 63500, 56425, None, "mine.ren/mobile/news/show-558.html", "B"),
    (2022, 1, 100800, 97200, None, None, "yllds.cn/news/display.php?news_id=219640", "B"),
    (2022, 2, 109200, 104800, None, None, "yllds.cn/news/display.php?news_id=219640", "B"),
    (2023, 1, None, None, 109057, 10943, "horizonmagnets.com/news/china-issue-rare-earth-quota-1st-batch-of-2023/", "B"),
    (2023, 3, 15000, 13850, None, None, "m.jxjad.com/ShowNews1.aspx?id=448846", "B"),
    (2024, 1, 135000, 127000, None, 10140, "fastmarkets.com/insights/china-issues-first-batch-of-rare-earths-quotas-for-2024", "A"),
]
for yr, b, mining, smelt, rock, ionic, src, flag in BATCH:
    if mining is not None:
        row(f"quota.national.mining_batch{b}_t_reo.{yr}", mining, "t REO", yr, flag, dd("1a", src),
            f"{yr} batch {b} mining quota {mining:,}")
    if smelt is not None:
        row(f"quota.national.smelting_batch{b}_t_reo.{yr}", smelt, "t REO", yr, flag, dd("1a", src),
            f"{yr} batch {b} smelting & separation quota {smelt:,}")
    if rock is not None:
        row(f"quota.national.mining_rock_batch{b}_t_reo.{yr}", rock, "t REO", yr, flag, dd("1a", src),
            f"{yr} batch {b} rock/light mining quota {rock:,}")
    if ionic is not None:
        row(f"quota.national.mining_ionic_batch{b}_t_reo.{yr}", ionic, "t REO", yr, flag, dd("1a", src),
            f"{yr} batch {b} ionic mining quota {ionic:,}" + (" (all to CREG)" if yr == 2024 else ""))
    if mining is None:  # the batch total is the sum of its rock and ionic parts
        derived(f"quota.national.mining_batch{b}_t_reo.{yr}",
                f"{{quota.national.mining_rock_batch{b}_t_reo.{yr}}} + {{quota.national.mining_ionic_batch{b}_t_reo.{yr}}}",
                "t REO", yr, dd("1a", src), f"{yr} batch {b}: rock {rock:,} + ionic {ionic:,}")
derived("quota.national.mining_rock_batch1_t_reo.2024",
        "{quota.national.mining_batch1_t_reo.2024} - {quota.national.mining_ionic_batch1_t_reo.2024}", "t REO", 2024,
        dd("1a", "fastmarkets.com"), "§1a: 124,860, derived")
derived("quota.national.mining_t_reo.2015", "2 * {quota.national.mining_batch1_t_reo.2015}", "t REO", 2015,
        dd("1a", Q_SRC[2015]), "§1a: ≈105,000, derived from batch 1; flag B")
derived("quota.national.smelting_t_reo.2015", "2 * {quota.national.smelting_batch1_t_reo.2015}", "t REO", 2015,
        dd("1a", Q_SRC[2015]), "§1a: ≈100,100, derived")
row("quota.national.mining_batches12_t_reo.2023", 240000, "t REO", 2023, "B", dd("1a", "m.nbd.com.cn/articles/2023-09-30/3041056.html"),
    "2023 batches 1+2: 240,000 mining / 230,000 smelting")
row("quota.national.smelting_batches12_t_reo.2023", 230000, "t REO", 2023, "B", dd("1a", "m.nbd.com.cn/articles/2023-09-30/3041056.html"),
    "2023 batches 1+2: 240,000 mining / 230,000 smelting")
row("quota.national.mining_cap_13th_fyp_t_reo.2020", 140000, "t REO/a", 2020, "B", dd("1a", "m.fx361.cc/news/2016/1028/293052.html"),
    "13th Five-Year Plan cap on mining 140,000 t REO/a by 2020")
row("quota.rule.min_separation_capacity_tpa", 2000, "t/a", 2024, "A", dd("1a", "2024 notice 工信部联原〔2024〕25号 (sh-re.com)"),
    "separation plants below 2,000 t/a capacity receive no quota")
for prov, val in [("jiangxi", 8500), ("fujian", 3500), ("guangdong", 2700), ("hunan", 1800), ("yunnan", 150)]:
    row(f"quota.province.{prov}_ionic_t_reo.2018", val, "t REO", 2018, "B", dd("1a", "ifuun.com/a2018080115170427/"),
        f"provincial ionic quota split 2018: {prov.capitalize()} {val:,}")
for prov, val in [("inner_mongolia", 69250), ("sichuan", 28000), ("shandong", 3600)]:
    row(f"quota.province.{prov}_rock_t_reo.2018", val, "t REO", 2018, "B", dd("1a", "ifuun.com/a2018080115170427/"),
        f"provincial rock quota split 2018: {prov.replace('_', ' ').title()} {val:,}")
row("quota.province.inner_mongolia_rock_t_reo.2017", 59500, "t REO", 2017, "derived", dd("1a", "ifuun.com/a2018080115170427/"),
    "Inner Mongolia 2017: 59,500 (derived in §1a)")

# Cadence (estimates from the reported pattern).
CAD = dd("1a", "quota cadence row: 1–3 batches a year, typically Feb–Mar, Jun–Aug and sometimes a small batch in Q4 (B)")
row("quota.cadence.batches_per_year", 2, "batches/a", "", "estimate", CAD, "typical 2 (range 1–3; a small Q4 third batch in some years, e.g. 2023)")
row("quota.cadence.batch1_month", 2, "month of year", "", "estimate", CAD, "first batch typically Feb–Mar: February used (start of window)")
row("quota.cadence.batch2_month", 7, "month of year", "", "estimate", CAD, "second batch typically Jun–Aug: July (middle of window)")
row("quota.cadence.batch3_month", 11, "month of year", "", "estimate", CAD, "optional small third batch in Q4: November (middle of Q4)")
_share_years = (2024, 2023, 2022, 2020)
derived("quota.cadence.batch1_share_frac",
        rounded("(" + " + ".join(f"{{quota.national.mining_batch1_t_reo.{y}}} / {{quota.national.mining_t_reo.{y}}}"
                                 for y in _share_years) + f") / {len(_share_years)}", 4),
        "fraction of annual mining quota", "", dd("1a", "batch and annual totals above"),
        "mean of batch 1 / annual over the years with both figures")

# CNRE share.
CN = "t REO"
row("quota.cnre.mining_batch1_t_reo.2015", 29750, CN, 2015, "B", dd("1b", "bknaihuo.com/html/1/752.htm"), "2015 batch 1: 29,750 (56.7 %)")
row("quota.cnre.mining_share_frac.2015", 0.567, "fraction of national", 2015, "B", dd("1b", "bknaihuo.com/html/1/752.htm"),
    "2015 batch 1 share 56.7 % (full year not found)")
row("quota.cnre.smelting_batch1_t_reo.2015", 25960, CN, 2015, "B", dd("1b", "bknaihuo.com/html/1/752.htm"), "2015 batch 1 smelting 25,960 (51.9 %)")
row("quota.cnre.smelting_share_frac.2015", 0.519, "fraction of national", 2015, "B", dd("1b", "bknaihuo.com/html/1/752.htm"),
    "2015 batch 1 smelting share 51.9 %")
row("quota.cnre.mining_batch1_t_reo.2016", 29750, CN, 2016, "B", dd("1b", "chinanews.com/cj/2016/02-22/7767511.shtml"), "2016 batch 1: 29,750 (Baogang), 56.7 %")
row("quota.cnre.mining_share_frac.2016", 0.567, "fraction of national", 2016, "B", dd("1b", "chinanews.com"), "2016 batch 1 share 56.7 %")
row("quota.cnre.mining_t_reo.2018", 69250, CN, 2018, "derived", dd("1b", "ifuun.com; 360doc.com"),
    "≈ Inner Mongolia's quota, all to Baogang (§1b, derived, B)")
derived("quota.cnre.mining_share_frac.2018", rounded("{quota.cnre.mining_t_reo.2018} / {quota.national.mining_t_reo.2018}", 3),
        "fraction of national", 2018, dd("1b", "ifuun.com"), "§1b: 57.7 %")
row("quota.cnre.mining_t_reo.2022", 141650, CN, 2022, "derived", dd("1b", "010361.com/news/14761.html; pldee.com; wycsj.com"),
    "batch 1 60,200 + batch 2 81,440 (§1b, derived, B)")
row("quota.cnre.mining_share_frac.2022", 0.674, "fraction of national", 2022, "derived", dd("1b", "010361.com; pldee.com"),
    "§1b: 67.4 %, as the source gives it; {quota.cnre.mining_t_reo.2022} / {quota.national.mining_t_reo.2022} is 0.6745")
row("quota.cnre.smelting_t_reo.2022", 128935, CN, 2022, "derived", dd("1b", "pldee.com; wycsj.com"),
    "≈128,935 (batch 2: 75,154 = 72 % of that batch) (§1b, derived, B)")
row("quota.cnre.smelting_share_frac.2022", 0.638, "fraction of national", 2022, "derived", dd("1b", "pldee.com; wycsj.com"), "§1b: ≈ 63.8 %")
row("quota.cnre.mining_batches12_t_reo.2023", 166650, CN, 2023, "B", dd("1b", "m.nbd.com.cn/articles/2023-09-30/3041056.html"), "2023 batches 1+2: 166,650 (69.44 %)")
row("quota.cnre.smelting_batches12_t_reo.2023", 152234, CN, 2023, "B", dd("1b", "m.nbd.com.cn"), "2023 batches 1+2 smelting: 152,234 (66.19 %)")
derived("quota.cnre.mining_t_reo.2023", "{quota.cnre.mining_batches12_t_reo.2023} + 12000", CN, 2023,
        dd("1b", "m.nbd.com.cn; m.jxjad.com"), "plus batch 3 12,000 (§1b, derived)")
derived("quota.cnre.mining_share_frac.2023", rounded("{quota.cnre.mining_t_reo.2023} / {quota.national.mining_t_reo.2023}", 3),
        "fraction of national", 2023, dd("1b", "m.nbd.com.cn; m.jxjad.com"), "§1b: ≈ 70.1 %")
derived("quota.cnre.smelting_t_reo.2023", "{quota.cnre.smelting_batches12_t_reo.2023} + 11000", CN, 2023,
        dd("1b", "m.nbd.com.cn; m.jxjad.com"), "plus batch 3 11,000 (§1b, derived)")
derived("quota.cnre.smelting_share_frac.2023",
        rounded("{quota.cnre.smelting_t_reo.2023} / {quota.national.smelting_t_reo.2023}", 3),
        "fraction of national", 2023, dd("1b", "m.nbd.com.cn; m.jxjad.com"), "§1b: ≈ 66.9 %")
row("quota.cnre.mining_rock_batch1_t_reo.2023", 80943, CN, 2023, "B", dd("1b", "horizonmagnets.com"), "2023 batch 1: CNRE 80,943 rock (67.5 %)")
row("quota.cnre.smelting_batch1_t_reo.2023", 73403, CN, 2023, "B", dd("1b", "horizonmagnets.com"), "2023 batch 1 smelting 73,403 (63.8 %)")
row("quota.creg.mining_rock_batch1_t_reo.2023", 28114, CN, 2023, "B", dd("1b", "horizonmagnets.com"), "CREG 28,114 rock + 7,434 ionic (smelting 33,304)")
row("quota.creg.mining_ionic_batch1_t_reo.2023", 7434, CN, 2023, "B", dd("1b", "horizonmagnets.com"), "CREG 28,114 rock + 7,434 ionic (smelting 33,304)")
row("quota.creg.smelting_batch1_t_reo.2023", 33304, CN, 2023, "B", dd("1b", "horizonmagnets.com"), "CREG smelting 33,304")
row("quota.cnre.mining_batch1_t_reo.2024", 94580, CN, 2024, "A", dd("1b", "fastmarkets.com"), "2024 batch 1: CNRE 94,580 (70.1 %)")
row("quota.cnre.smelting_batch1_t_reo.2024", 88010, CN, 2024, "A", dd("1b", "fastmarkets.com"), "2024 batch 1 smelting 88,010 (69.3 %)")
row("quota.cnre.mining_share_frac.2024", 0.701, "fraction of national", 2024, "A", dd("1b", "fastmarkets.com"),
    "batch-1 share 70.1 %; CNRE 2024 full-year quota not found (§11)")
row("quota.cnre.smelting_share_frac.2024", 0.693, "fraction of national", 2024, "A", dd("1b", "fastmarkets.com"),
    "batch-1 share 69.3 %; full year not found")
row("quota.cnre.mining_share_default_frac", 0.70, "fraction of national", "", "B", dd("9", "§1b 2023–24 (A/B)"),
    "§9 default CNRE share 70 % of mining (2023–24, flag A/B taken as B)")
row("quota.cnre.smelting_share_default_frac", 0.67, "fraction of national", "", "B", dd("9", "§1b 2023–24 (A/B)"),
    "§9 default CNRE share 67 % of smelting")

# ---------------------------------------------------------------------------------------------
# 6. Baotou plants, capacities, targets (seeds)
# ---------------------------------------------------------------------------------------------
seed("capacity.baotou_zone.magnet_tpa.2022", 150000, "t/a", 2022, S1, "稀土永磁材料产能达到15万吨，占全国的1/3")
seed("capacity.baotou_zone.magnet_share_china_frac.2022", round(1 / 3, 6), "fraction", 2022, S1, "稀土永磁材料产能达到15万吨，占全国的1/3")
derived("capacity.china.magnet_tpa.2022",
        "round({capacity.baotou_zone.magnet_tpa.2022} / {capacity.baotou_zone.magnet_share_china_frac.2022})", "t/a", 2022,
        S1, "«稀土永磁材料产能达到15万吨，占全国的1/3»")
seed("capacity.baotou_zone.magnet_top10_firms_count.2022", 6, "firms", 2022, S1, "全国综合实力前十强的稀土磁材企业已有6家落户包头稀土高新区")
seed("capacity.baotou_park.magnet_tpa.2010", 10000, "t/a (万吨级 class)", 2010, S0, "重点引进了万吨稀土磁性材料项目")
seed("capacity.baotou_park.h2_storage_tpa.2010", 10000, "t/a (万吨级 class)", 2010, S0, "万吨储氢材料项目")
seed("capacity.baotou_park.polishing_tpa.2010", 10000, "t/a (万吨级 class)", 2010, S0, "万吨稀土抛光材料项目")
seed("capacity.baotou_park.pm_motor_kw.2010", 5000000, "kW of motor rating", 2010, S0, "500万千瓦永磁电机项目")
row("capacity.china.separation_t_reo.2017", 300000, "t/a", 2017, "B",
    dd("6", "cri-report.com/industry-analysis/energy-chemicals/four-major-problems-faced-by-rare-earth-industry-in-china"),
    "separation capacity cut from 400 to 300 kt against ~105 kt output (c.2016–17)")
row("capacity.china.ndfeb_tpa.2017", 300000, "t/a", 2017, "C", dd("6", "nldmagnet.com"),
    "Chinese NdFeB capacity 300 kt, mostly low-end (2017)")
row("capacity.china.ndfeb_listed_firms_tpa.2025", 200000, "t/a", 2025, "B", dd("6", "sanwenwang.com/ba/dejciiqf.html"),
    "China NdFeB capacity of listed firms ~200 kt by 2025 (+63 % vs 2022)")
row("capacity.cnre.processing_tpa.2015", 73500, "t/a", 2015, "B", dd("6", "mining.com/how-the-iron-ore-rout-is-helping-rare-earth-prices"),
    "CNRE processing capacity 73,500 (2015)")
row("capacity.cnre.green_smelting_concentrate_tpa.2024", 198000, "t concentrate/a", 2024, "B", dd("6", "chaguwang.cn"),
    "green-smelting project for 198,000 t/a of concentrate (phase 1 done Oct 2024)")

seed("plant.cnre_light_re_separation_line.capacity_tpa", 100000, "t/a (10万吨级 class)", 2024, S34,
     "加快北方稀土(集团)公司10万吨级轻稀土冶炼分离生产线建设")
seed("plant.shengquan_keliyuan_alloy.capacity_tpa", 100000, "t/a", 2024, S34, "加快圣泉科利源新材料年产10万吨多元稀土合金等项目建设")
seed("plant.jl_mag_baotou.capacity_tpa", 20000, "t/a (after phase 2)", "", S1, "建成后将具备年产2万吨高性能稀土永磁材料的能力")
seed("plant.jl_mag_baotou.phase2_capacity_tpa", 12000, "t/a", 2022, S1, "金力永磁二期年产1.2万吨高性能钕铁硼项目")
derived("plant.jl_mag_baotou.capacity_tpa.2022",
        "{plant.jl_mag_baotou.capacity_tpa} - {plant.jl_mag_baotou.phase2_capacity_tpa}", "t/a", 2022, S1,
        "«金力永磁二期年产1.2万吨高性能钕铁硼项目…建成后将具备年产2万吨高性能稀土永磁材料的能力»")
seed("plant.jl_mag_baotou.sales_yi_cny", 50, "亿元/a (after phase 2)", "", S1, "预计可实现年销售额50亿元")
seed("plant.jl_mag_baotou.profit_tax_yi_cny", 6, "亿元/a (after phase 2)", "", S1, "利税6亿元")
seed("plant.jl_mag_baotou.jobs_count", 5000, "jobs (lower bound)", "", S1, "就业岗位5000余个")
seed("plant.yunsheng_baotou.capacity_tpa", 33000, "t/a (after the 15 kt project)", "", S1, "包头韵升强磁材料有限公司年产能将达到3.3万吨")
seed("plant.yunsheng_baotou.project_capacity_tpa", 15000, "t/a", 2022, S1, "包头韵升科技发展有限公司年产1.5万吨高性能稀土永磁材料智能制造项目")
derived("plant.yunsheng_baotou.capacity_tpa.2022",
        "{plant.yunsheng_baotou.capacity_tpa} - {plant.yunsheng_baotou.project_capacity_tpa}", "t/a", 2022, S1,
        "«年产1.5万吨高性能稀土永磁材料智能制造项目…年产能将达到3.3万吨»")
derived("capacity.baotou_zone.magnet_other_makers_tpa",
        "{capacity.baotou_zone.magnet_tpa.2022} - {plant.jl_mag_baotou.capacity_tpa} - {plant.yunsheng_baotou.capacity_tpa}",
        "t/a", "", S1 + ";" + S34,
        "remainder for 天和 Tianhe, 北方磁材 Northern Magnetic, 科田 Ketian and the other of the 38 producers; seeds give "
        "no per-firm capacity, so any split is an estimate; mixes the 2022 zone total with post-expansion plant capacities")

seed("target.baotou.re_industry_output_yi_cny.2024", 1000, "亿元 (lower bound)", 2024, S34, "2024年,全市稀土产业产值达到1000亿元以上")
seed("target.baotou.re_raw_materials_output_yi_cny.2024", 400, "亿元", 2024, S34, "稀土原材料产值达到400亿元")
seed("target.baotou.re_new_materials_output_yi_cny.2024", 200, "亿元", 2024, S34, "稀土新材料产值达到200亿元")
seed("target.baotou.re_applications_output_yi_cny.2024", 400, "亿元", 2024, S34, "年内稀土应用产值达到400亿元")
seed("target.baotou.pm_motor_output_yi_cny.2024", 50, "亿元 (inside applications)", 2024, S34, "永磁电机产业产值达到50亿元")
seed("target.baotou.pm_motor_firms_count.2024", 30, "firms (lower bound)", 2024, S34, "年内永磁电机产业园落户企业30家以上")
seed("target.baotou.wind_equipment_output_yi_cny.2024", 150, "亿元", 2024, S34, "年内风电装备产业产值达到150亿元")
seed("target.baotou.wind_turbine_min_rating_mw.2024", 7, "MW per turbine (lower bound)", 2024, S34,
     "推动明阳、金风、中车、南高齿、天顺、金海等企业充分释放7MW以上风电整机及零部件产能")
seed("target.baotou.nev_heavy_truck_units.2024", 2000, "trucks", 2024, S34, "年内新能源重卡产量达到2000台")
seed("target.baotou.nev_heavy_truck_local_units.2024", 500, "trucks", 2024, S34, "年内全市推广新能源重卡500台")
seed("target.baotou.nev_heavy_truck_output_yi_cny.2024", 50, "亿元 (trucks + supporting industry)", 2024, S34, "年内新能源重卡及配套产业产值达到50亿元")
seed("target.baotou.heavy_truck_swap_stations_count.2024", 25, "stations (lower bound)", 2024, S34, "年内建成重卡换电站25座以上")
seed("target.baotou.separation_capacity_tpa.2024", 110000, "t/a", 2024, S34, "年内形成1.5万吨废料回收、11万吨冶炼分离产能规模")
seed("target.baotou.recycling_capacity_tpa.2024", 15000, "t/a (金蒙 Jinmeng NdFeB scrap line named)", 2024, S34,
     "年内形成1.5万吨废料回收、11万吨冶炼分离产能规模")
seed("target.baotou.magnet_capacity_tpa.2024", 150000, "t/a", 2024, S34, "年内形成15万吨磁性材料")
seed("target.baotou.magnet_producers_count.2024", 38, "firms", 2024, S34, "年内磁材生产企业达到38家")
seed("target.baotou.magnet_top10_firms_count.2024", 10, "firms", 2024, S34, "努力实现全国综合实力前10强磁材头部企业全部落户包头")
seed("target.baotou.h2_storage_capacity_tpa.2024", 7000, "t/a", 2024, S34, "7000吨储氢材料")
seed("target.baotou.alloy_capacity_tpa.2024", 80000, "t/a", 2024, S34, "8万吨合金材料")
seed("target.baotou.polishing_capacity_tpa.2024", 40000, "t/a", 2024, S34, "4万吨抛光材料")
seed("target.baotou.catalyst_additive_capacity_tpa.2024", 20000, "t/a", 2024, S34, "2万吨催化材料及助剂产能")
seed("target.baotou_exchange.trading_yi_cny.2024", 200, "亿元", 2024, S4, "交易规模达到200亿元")
seed("target.baotou_exchange.registered_firms_count.2024", 850, "firms", 2024, S4, "年内注册上线企业达到850家")
seed("target.baotou_zone.re_new_materials_applications_output_yi_cny.2015", 200, "亿元 (lower bound)", 2015, S0,
     "力争“十二五”末稀土新材料及其应用产业实现产值超200亿元")
seed("target.baotou_zone.local_conversion_frac.2015", 0.50, "fraction (lower bound)", 2015, S0, "资源就地转化率达到50%以上")

seed("output.baotou_zone.re_industry_yi_cny.2022", 450, "亿元 (expected)", 2022, S1, "特别是稀土产业产值预计实现450亿元，较去年实现翻番")
derived("output.baotou_zone.re_industry_yi_cny.2021", "{output.baotou_zone.re_industry_yi_cny.2022} / 2", "亿元", 2021, S1,
        "翻番 = doubled; «特别是稀土产业产值预计实现450亿元，较去年实现翻番»")
seed("output.baotou_zone.industrial_yi_cny.2022", 1000, "亿元 (lower bound, expected)", 2022, S1,
     "2022年包头稀土高新区工业总产值有望首次突破千亿元大关，同比增长50%以上")
seed("conversion.baotou_zone.local_frac.2022", 0.85, "fraction (lower bound)", 2022, S1, "促进稀土原材料就地转化率达到85%以上")

VA1 = "“稀土精矿—碳酸稀土—氧化钕—金属钕—钕铁硼永磁体”这条产业链中，其附加值的比例为1：2：17：28：52"
for stage, idx in [("concentrate", 1), ("re_carbonate", 2), ("nd_oxide", 17), ("nd_metal", 28), ("ndfeb_magnet", 52)]:
    seed(f"value_index.ndfeb_chain.{stage}_index", idx, "index (concentrate = 1)", 2010, S0, VA1)
VA2 = "“稀土永磁体、储氢材料—稀土永磁电机、镍氢动力电池—混合动力车”这条产业链中，其附加值比例为1：9：16"
for stage, idx in [("magnet", 1), ("pm_motor", 9), ("hybrid_vehicle", 16)]:
    seed(f"value_index.device_chain.{stage}_index", idx, "index (magnet or H2-storage material = 1)", 2010, S0, VA2)

# ---------------------------------------------------------------------------------------------
# 7. National production and trade
# ---------------------------------------------------------------------------------------------
USGS7 = dd("7", "USGS MCS2025 (NSSAC/dpi.RAG); miningvisuals.com; rizinia.com; m.ibm-ma.com")
for yr, world, china in [(2021, 280000, 168000), (2022, 300000, 210000), (2023, 376000, 255000), (2024, 390000, 270000)]:
    row(f"prod.world.mine_t_reo.{yr}", world, "t REO", yr, "A", USGS7, f"world mine production {yr}: {world:,}" + (" (MCS2025)" if yr == 2023 else ""))
    row(f"prod.china.mine_t_reo.{yr}", china, "t REO", yr, "A", USGS7, f"China mine production {yr} (= quota): {china:,}")
row("prod.world.mine_t_reo.2023.mcs2024", 350000, "t REO", 2023, "A", dd("7", "USGS MCS2024"), "MCS2024 said 350,000 for 2023 (MCS2025: 376,000)")
for country, v23, v24 in [("myanmar", 43000, 31000), ("usa", 41600, 45000), ("australia", 16000, 13000),
                          ("nigeria", 7200, 13000), ("thailand", 3600, 13000)]:
    row(f"prod.{country}.mine_t_reo.2023", v23, "t REO", 2023, "A", dd("7", "USGS MCS2025"), f"{country} 2023: {v23:,}")
    row(f"prod.{country}.mine_t_reo.2024", v24, "t REO", 2024, "A", dd("7", "USGS MCS2025"), f"{country} 2024: {v24:,}")
row("prod.world.reo_incl_recycling_t.2024", 454000, "t REO", 2024, "B", dd("7", "metalnomist.com/2025/06"),
    "global REO including recycling and imports 454,000 (China ~90 %)")
row("prod.china.mining_share_world_frac.2023", 0.62, "fraction", 2023, "A", dd("7", "IEA GCMO 2024 via wayenind.com"), "China share of mining 62 %")
row("prod.china.refining_share_world_frac.2023", 0.92, "fraction", 2023, "A", dd("7", "IEA GCMO 2024 via wayenind.com"), "China share of refining 92 %")
NDP = "t NdFeB"
row("prod.china.ndfeb_t.2021", 213300, NDP, 2021, "B", dd("7", "askci.com/news/chanye/20230426"), "China NdFeB output 2021: 213,300")
row("prod.china.ndfeb_t.2021.creia_smm", 219400, NDP, 2021, "B", dd("7", "CREIA/SMM as reported"), "2021: 219,400 per CREIA/SMM")
row("prod.china.ndfeb_t.2022", 246000, NDP, 2022, "B", dd("7", "askci.com; rizinia.com"), "China NdFeB output 2022: 246,000")
row("prod.china.ndfeb_t.2023.forecast", 267000, NDP, 2023, "B", dd("7", "askci.com (forecast)"), "2023: 267,000 (forecast)")
row("prod.china.ndfeb_t.2023.csre_blank", 270000, "t NdFeB blank (毛坯)", 2023, "B", dd("7/§9", "CSRE via metalnomist.com/2024/10"),
    "270,000 rough/blank (+18 %); §9 default; finished mass ≈ 0.7 × blank (§11)")
row("prod.china.ndfeb_t.2023.csre_sintered", 255200, "t sintered NdFeB blank", 2023, "B", dd("7", "CSRE via metalnomist.com/2024/10"),
    "of which sintered 255,200")
derived("prod.china.ndfeb_t.2023.finished_est",
        "round({prod.china.ndfeb_t.2023.csre_blank} * {yield.magnet_blank_to_finished_frac})", "t NdFeB finished", 2023,
        dd("7/§11", "CSRE via metalnomist"), "§11: finished mass ≈ 0.7 × blank")
row("prod.china.smco_t.2023", 3723, "t SmCo", 2023, "B", dd("7", "CSRE via metalnomist.com/2024/10"), "SmCo 3,723")
EARLY = dd("7", "row 'Earlier years' (ccmagnetics.com; nldmagnet.com; rizinia.com; adamasintel.com, listed together)")
row("prod.china.re_pm_t.2015", 135000, "t RE PM", 2015, "B", EARLY, "China 135 kt of 150 kt world (2015)")
row("prod.world.re_pm_t.2015", 150000, "t RE PM", 2015, "B", EARLY, "China 135 kt of 150 kt world (2015)")
row("prod.china.re_pm_t.2016", 130000, "t RE PM", 2016, "B", EARLY, "China 130 kt of 146 kt (89 %) in 2016")
row("prod.world.re_pm_t.2016", 146000, "t RE PM", 2016, "B", EARLY, "China 130 kt of 146 kt (89 %) in 2016")
row("prod.china.re_pm_t.2020", 196000, "t RE PM", 2020, "B", EARLY, "China 196 kt of 217 kt world (2020)")
row("prod.china.re_pm_t.2020.alt", 186000, "t RE PM", 2020, "B", EARLY, "China 186 kt, > 90 % (2020) — second source, differs from 196 kt")
row("prod.world.re_pm_t.2020", 217000, "t RE PM", 2020, "B", EARLY, "China 196 kt of 217 kt world (2020)")
row("prod.china.ndfeb_sintered_blank_t.2019", 170000, "t", 2019, "A", dd("7", "adamasintel.com/china-ndfeb-production-2019/"),
    "China sintered blanks 170 kt + bonded powder 7.9 kt (2019)")
row("prod.china.ndfeb_bonded_powder_t.2019", 7900, "t", 2019, "A", dd("7", "adamasintel.com/china-ndfeb-production-2019/"), "bonded powder 7.9 kt (2019)")

row("trade.china.magnet_export_t.2021", 48800, "t", 2021, "A", dd("7", "rizinia.com; adamasintel.com"), "China magnet exports 2021: 48,800")
row("trade.china.magnet_export_t.2024", 58152, "t", 2024, "A", dd("7", "adamasintel.com/record-rare-earth-magnet-exports-from-china-in-2024/"),
    "58,152 t (+10 %, US$2.86 bn)")
row("trade.china.magnet_export_value_usd.2024", 2860000000, "USD", 2024, "A",
    dd("7", "adamasintel.com/record-rare-earth-magnet-exports-from-china-in-2024/"), "US$2.86 bn for 58,152 t")
derived("trade.china.magnet_export_t.2023", "round({trade.china.magnet_export_t.2024} / 1.10)", "t", 2023,
        dd("7", "adamasintel.com"), "≈ 52,865 derived in §7 from +10 % in 2024")
derived("price.ndfeb_magnet_export.usd_per_kg.2024",
        rounded("{trade.china.magnet_export_value_usd.2024} / {trade.china.magnet_export_t.2024} / 1000", 2), "USD/kg", 2024,
        dd("5c/§7", "adamasintel.com/record-rare-earth-magnet-exports-from-china-in-2024/"), "§5c: ≈ 49 USD/kg")
derived("price.ndfeb_magnet.cny_per_t.2024",
        "round({trade.china.magnet_export_value_usd.2024} / {trade.china.magnet_export_t.2024} * {fx.cny_per_usd.2024})",
        "CNY/t sintered NdFeB", 2024, dd("5c", "adamasintel.com; FX §11"),
        "export value per t (grade mix of exports) at the 2024 FX estimate, i.e. {price.ndfeb_magnet_export.usd_per_kg.2024} "
        "× 1000 × {fx.cny_per_usd.2024} before the USD/kg figure is rounded")
derived("price.ndfeb_magnet_jl_mag_implied.cny_per_t",
        "{plant.jl_mag_baotou.sales_yi_cny} * 1e8 / {plant.jl_mag_baotou.capacity_tpa}", "CNY/t", "", S1,
        "expected sales 50 亿元 at 20 kt/a ⇒ 250 CNY/kg, below the §9 350–450 estimate")
row("trade.china.magnet_export_t_per_month.2025m05", 1238, "t/month", 2025, "B", dd("7", "rawmaterials.net"),
    "export-control shock: magnet exports fell to 1,238 t in May 2025 (−74 % y/y)")
row("trade.china.magnet_export_t_per_month.2025m11", 6150, "t/month", 2025, "B", dd("7", "tw.news.yahoo.com (Reuters)"), "6,150 t in Nov 2025")
row("trade.cnre.long_term_contract_share_frac.2024", 0.50, "fraction of sales (lower bound)", 2024, "B",
    dd("6", "chaguwang.cn/neimu/600111/202503038234.html"), "CNRE sales on long-term contracts > 50 %")

# ---------------------------------------------------------------------------------------------
# 8. Cycle times, lead times, utilisation, stocks, policy minima
# ---------------------------------------------------------------------------------------------
CYC = dd("9", "cycle-time estimates (no source, §6 'not found anywhere')")
row("cycle.ore_to_concentrate_days", 2, "days", "", "estimate", CYC, "§9 range 1–3 d, midpoint")
row("cycle.cracking_sx_wip_days", 45, "days", "", "estimate", CYC, "§9 range 30–60 d of work in process for cracking + SX, midpoint; no SX residence time found")
row("cycle.oxide_to_metal_days", 2, "days", "", "estimate", CYC, "§9 range 1–3 d, midpoint")
row("cycle.magnet_making_days", 22.5, "days", "", "estimate", CYC, "§9 range 15–30 d (including a 48 h sinter and 8–24 h GBD), midpoint")
row("cycle.magnet_sinter_hours", 48, "hours", "", "C", dd("6", "magnetcup.com"), "sintering furnace cycle (heat, hold, cool) ~48 h")
row("cycle.magnet_gbd_anneal_hours", 16, "hours", "", "estimate", dd("6", "mainrichinternational.com (C)"), "midpoint of the 8–24 h GBD diffusion anneal (C)")
row("cycle.motor_assembly_days", 3, "days", "", "estimate", CYC, "§9 range 1–5 d, midpoint")
row("lead.magnet_to_oem_days", 56, "days", "", "estimate", CYC, "§9 magnet lead time to OEM 6–10 weeks: 8 weeks = 56 d (midpoint)")
row("lead.new_mine_years", 7, "years (upper bound as reported)", 2021, "A", dd("6", "Riddle et al. 2021 (Argonne) via nationaldefensemagazine.org"),
    "up to 7 yr to start a new mine")
row("lead.ex_china_supply_response_years", 8.5, "years", "", "estimate", dd("9", "Riddle 2021; Jowitt 2022 (A)"),
    "§9: 7–10 yr lag to a new ex-China mine (range 7–20), midpoint of 7–10")
row("lead.exploration_to_production_years", 15, "years", "", "estimate", dd("6", "Jowitt et al. 2022, MRS Bull. 47:276 (A)"),
    "midpoint of the 10–20 yr reported")
row("lead.export_licence_approval_working_days.2025", 45, "working days", 2025, "B", dd("6", "globaltimes.cn/page/202504/1332704.shtml; adamasintel.com"),
    "export licence approval under the post-April-2025 controls: 45 working days")
row("lead.magnet_qualification_eps_years", 2, "years (lower bound)", 2017, "C", dd("6", "nldmagnet.com"),
    "qualification before a magnet enters the EPS supply chain > 2 yr")
row("util.mining_of_quota_frac", 1.0, "fraction of quota", "", "estimate", dd("9", "estimate; China mine production = quota (§7)"),
    "§9: mining at 100 % of quota; USGS China production equals the quota 2021–24")
derived("util.separation_frac",
        rounded("{quota.national.smelting_t_reo.2024} / {capacity.china.separation_t_reo.2017}", 3), "fraction of capacity", "",
        dd("9/§6", "cri-report.com (300 kt capacity); §1a (254 kt quota)"), "§9 ~85 %, mixes years")
row("util.magnet_frac", 0.75, "fraction of capacity", "", "estimate", dd("9", "estimate anchored on §6"), "§9: magnets ~70–80 %, midpoint")
row("util.china_separation_frac.2016", 0.35, "fraction of capacity", 2016, "derived", dd("6", "cri-report.com"),
    "~105 kt output against 300 kt capacity ⇒ ~35 % (derived in §6, flag B)")
row("util.china_re_industry_max_frac.2013", 0.40, "fraction (upper bound)", 2013, "B", dd("6", "news.metal.com/newscontent/100047918"),
    "RE industry capacity utilisation < 40 % (2013)")
row("util.china_ndfeb_frac.2016", 0.45, "fraction of capacity", 2016, "derived", dd("6", "nldmagnet.com (C)"),
    "output 130 kt (2016) / capacity 300 kt (2017) ⇒ ~45 % (derived in §6)")
row("stock.strategic_cover_days", 60, "days of consumption", "", "A",
    dd("6/§9", "IEA policy 16639 (Japan national stockpiling); argusmedia.com 2120125 (JOGMEC)"),
    "Japan model: 60 days of consumption (42 d national JOGMEC + 18 d private); §9 default")
row("stock.japan.jogmec_cover_days", 42, "days", "", "A", dd("6", "iea.org/policies/16639; argusmedia.com"), "42 d national JOGMEC part")
row("stock.japan.private_cover_days", 18, "days", "", "A", dd("6", "iea.org/policies/16639; argusmedia.com"), "18 d private part")
row("stock.japan.high_risk_max_cover_days", 180, "days", "", "A", dd("6", "iea.org/policies/16639; argusmedia.com"), "up to 180 d for high-risk metals")
row("stock.china.state_reserve_t.2022", 150000, "t (cumulative)", 2022, "C", dd("6", "m.fsyjjx.cn/9935.html"), "China state RE reserve ~150 kt (110 light, 40 heavy)")
row("stock.china.state_reserve_light_t.2022", 110000, "t", 2022, "C", dd("6", "m.fsyjjx.cn/9935.html"), "110 kt light")
row("stock.china.state_reserve_heavy_t.2022", 40000, "t", 2022, "C", dd("6", "m.fsyjjx.cn/9935.html"), "40 kt heavy")
for name, val in [("mixed_ore_mine_min_tpa", 20000), ("bastnaesite_mine_min_tpa", 5000), ("ionic_mine_min_tpa", 500),
                  ("mixed_ore_separation_min_tpa", 8000), ("bastnaesite_separation_min_tpa", 5000),
                  ("ionic_separation_min_tpa", 3000), ("recycling_min_tpa", 3000)]:
    row(f"policy.min_scale.{name}", val, "t REO/a", 2016, "A", dd("3a", "MIIT 稀土行业规范条件(2016年本), bbjja.com/news/11162.html"),
        f"MIIT 2016 minimum scale: {name.replace('_min_tpa', '').replace('_', ' ')} ≥ {val:,} t/a")

# ---------------------------------------------------------------------------------------------
# 9. Other functional materials (no source: estimates)
# ---------------------------------------------------------------------------------------------
derived("material.lace_mix.ce_share_frac",
        rounded("{dist.baotou_concentrate.ce_frac} / {dist.baotou_concentrate.lace_frac}", 4), "fraction of La+Ce", "", PROXY,
        "assumption: La/Ce-based products (polishing powder, catalysts, H2-storage mischmetal) take La and Ce in the "
        "concentrate ratio; La share = 1 − this", flag="estimate")
row("material.polishing_powder.reo_t_per_t", 0.90, "t REO / t powder", "", "estimate", S0 + " (ceria is the main raw material)",
    "no composition in the sources; powder is essentially calcined Ce(La) oxide (seed: 稀土抛光材料的主要原料是氧化铈), ~10 % allowed for fluoride/other; placeholder")
row("material.catalyst_additive.reo_t_per_t", 0.30, "t REO / t product", "", "estimate", "none (not in the sources)",
    "no source; the group mixes low-RE cracking catalysts with RE-rich additives/oxygen-storage oxides; 0.30 is an order-of-magnitude placeholder (sensitivity 0.1–0.6)")
row("material.h2_storage_alloy.re_metal_t_per_t", 0.32, "t RE metal / t alloy", "", "estimate", "stoichiometry LaNi5 (task brief); seeds 000 (La/Ce mischmetal route)",
    "AB5 = LaNi5: 138.905 / (138.905 + 5 × 58.693) = 0.321, La/Ce-rich mischmetal substituting La (seed chain: 混合稀土金属－稀土贮氢合金粉)")
row("material.re_alloy.re_metal_t_per_t", 0.10, "t RE metal / t alloy", "", "estimate", "none (not in the sources)",
    "no source; assumed dilute RE–Al/RE–Mg master/multi-element alloys at 10 wt % RE; sensitivity 0.05–0.30")
LACE23 = "La/Ce oxide 2023 means"
_lace_cost = 0.9 * (0.6768 * 5600 + 0.3232 * 5100)
row("price.polishing_powder.cny_per_t.2023", 25000, "CNY/t", 2023, "estimate", dd("5b", LACE23),
    f"no source; RE input ≈ {{material.polishing_powder.reo_t_per_t}} × La/Ce oxide 2023 ≈ {_lace_cost:,.0f} CNY/t, ×5 assumed for calcination, classification and margin; placeholder")
row("price.catalyst_additive.cny_per_t.2023", 40000, "CNY/t", 2023, "estimate", "none (not in the sources)",
    "no source; order-of-magnitude placeholder above polishing powder (more processing per t, RE input ≈ 0.3 × 5,400 CNY/t is minor)")
row("price.h2_storage_alloy.cny_per_t.2023", 100000, "CNY/t", 2023, "estimate", dd("5a", "USGS mischmetal (RE part only)"),
    "no source; RE part ≈ 0.32 × mischmetal 35,500 ≈ 11,400 CNY/t; Ni (≈ 68 % of mass) dominates and its price is not in the sources; placeholder")
row("price.re_alloy.cny_per_t.2023", 30000, "CNY/t", 2023, "estimate", dd("5a", "USGS mischmetal (RE part only)"),
    "no source; RE part ≈ 0.10 × mischmetal 35,500 ≈ 3,550 CNY/t; Al/Mg base-metal price not in the sources; placeholder")

# ---------------------------------------------------------------------------------------------
# 10. Motors and end products
# ---------------------------------------------------------------------------------------------
derived("price.pm_motor.cny_per_t_magnet.2023",
        "{value_index.device_chain.pm_motor_index} * {price.ndfeb_magnet.cny_per_t.2023}", "CNY per t of magnet contained",
        2023, S0 + "; domain_data.md §9",
        "reads the seed value-added index magnet : motor = 1 : 9 as a value ratio (c.2010 index, estimate-grade)")
derived("price.hybrid_vehicle.cny_per_t_magnet.2023",
        "{value_index.device_chain.hybrid_vehicle_index} * {price.ndfeb_magnet.cny_per_t.2023}",
        "CNY per t of magnet contained", 2023, S0 + "; domain_data.md §9", "same reading of the 1 : 9 : 16 index")
derived("price.nev_heavy_truck.cny_per_unit.2024",
        "{target.baotou.nev_heavy_truck_output_yi_cny.2024} * 1e8 / {target.baotou.nev_heavy_truck_units.2024}",
        "CNY/truck (upper bound)", 2024, S34, "upper bound because the 50 亿元 includes supporting industry")
row("price.wind_turbine.cny_per_mw", 1500000, "CNY/MW", "", "estimate", "domain_data.md §4a/§9 (625 kg/MW) and this table's magnet price",
    "no source for turbine prices; magnet content 625 kg/MW × 400 CNY/kg = 250,000 CNY/MW assumed ≈ 1/6 of turbine price; placeholder, replace with a sourced figure")


# ---------------------------------------------------------------------------------------------
# 11. Reference model baotou-2024: sizing rules, derived compositions, placeholders
#     (rows the reference model needs that the sources do not give directly; every row says
#     whether it is derived from other keys or an estimate, and why)
# ---------------------------------------------------------------------------------------------
MODEL = "models/baotou-2024.yaml (reference-model calibration)"

# Element shares and stoichiometry at full precision, so that the model's element balance
# closes exactly (the rounded dist.baotou_concentrate.pr_share_of_prnd_frac does not).
derived("spec.prnd_oxide_baotou.pr_frac",
        "{dist.baotou_concentrate.pr_frac} / ({dist.baotou_concentrate.pr_frac} + {dist.baotou_concentrate.nd_frac})",
        "mass fraction of PrNd oxide", "", PROXY,
        "the Pr share of PrNd oxide separated from Baotou concentrate (the ore ratio, not the 25 : 75 market convention), "
        "full precision")
derived("stoich.prnd_oxide_baotou.metal_kg_per_kg",
        "{spec.prnd_oxide_baotou.pr_frac} * {stoich.pr6o11.metal_kg_per_kg} + (1 - {spec.prnd_oxide_baotou.pr_frac}) * "
        "{stoich.nd2o3.metal_kg_per_kg}", "kg metal / kg oxide", "", STOICH_SRC,
        "PrNd oxide in the Baotou ore ratio (≈ 20 : 80) → metal")
derived("stoich.lace_mischmetal.metal_kg_per_kg",
        "(1 - {material.lace_mix.ce_share_frac}) * {stoich.la2o3.metal_kg_per_kg} + {material.lace_mix.ce_share_frac} * "
        "{stoich.ceo2.metal_kg_per_kg}", "kg metal / kg oxide", "", STOICH_SRC,
        "La/Ce mischmetal made from La and Ce oxides in the concentrate ratio")

# Dy : Tb split of the magnet's heavy RE (no direct source): China's 2024 recovery from NdFeB
# scrap (Argus, A) shows the Dy : Tb ratio that magnets actually carry; expressed as metal mass.
derived("magnet.ndfeb.tb_share_of_dytb_frac",
        "{recycling.china.tb_oxide_from_scrap_t.2024} * {stoich.tb4o7.metal_kg_per_kg} / ({recycling.china.dy2o3_from_scrap_t.2024} * "
        "{stoich.dy2o3.metal_kg_per_kg} + {recycling.china.tb_oxide_from_scrap_t.2024} * {stoich.tb4o7.metal_kg_per_kg})",
        "fraction of Dy+Tb metal mass", 2024, ARGUS_REC + "; " + STOICH_SRC,
        "the Tb share of the Dy+Tb recovered from China's NdFeB scrap in 2024, read as the Tb share of the Dy+Tb in magnets")
for el, formula in (
    ("pr", "{magnet.ndfeb.prnd_frac} * {spec.prnd_oxide_baotou.pr_frac} / {stoich.prnd_oxide_baotou.metal_kg_per_kg}"),
    ("nd", "{magnet.ndfeb.prnd_frac} * (1 - {spec.prnd_oxide_baotou.pr_frac}) / {stoich.prnd_oxide_baotou.metal_kg_per_kg}"),
    ("dy", "{magnet.ndfeb.dy_tb_frac} * (1 - {magnet.ndfeb.tb_share_of_dytb_frac}) / {stoich.dy2o3.metal_kg_per_kg}"),
    ("tb", "{magnet.ndfeb.dy_tb_frac} * {magnet.ndfeb.tb_share_of_dytb_frac} / {stoich.tb4o7.metal_kg_per_kg}"),
):
    derived(f"magnet.ndfeb_baotou.{el}_t_reo_per_t", formula, "t REO (oxide equivalent) / t NdFeB", "",
            dd("9", "magnet composition defaults") + "; " + STOICH_SRC,
            f"oxide-equivalent {el.capitalize()} in one t of sintered NdFeB (blank, finished magnet or swarf alike)")


def swarf_formula(yr: int) -> str:
    """CNY per t of NdFeB swarf: the oxide it yields at the oxide prices of ``yr``."""
    return (f"round((({{magnet.ndfeb_baotou.pr_t_reo_per_t}} + {{magnet.ndfeb_baotou.nd_t_reo_per_t}}) * "
            f"{{price.prnd_oxide.cny_per_t.{yr}}} + {{magnet.ndfeb_baotou.dy_t_reo_per_t}} * {{price.dy_oxide.cny_per_t.{yr}}} + "
            f"{{magnet.ndfeb_baotou.tb_t_reo_per_t}} * {{price.tb_oxide.cny_per_t.{yr}}}) * {{yield.scrap_to_reo_recovery_frac}})")


derived("price.ndfeb_swarf.cny_per_t.2024", swarf_formula(2024), "CNY/t swarf", 2024, MODEL + "; " + ARGUS_P,
        "no usable scrap price (price.ndfeb_scrap.cny_per_t.2024m05 is flagged as probably not per t of scrap): valued at the "
        "oxide it yields; an upper bound (no recycler margin, no processing cost)", flag="estimate")

# Capacity sizing rules (no source gives these capacities).
derived("capacity.baotou_steel.concentrate_tpa.2024",
        "round({concentrate.cnre.purchase_planned_t.2023} * {concentrate.cnre.purchase_planned_t.2023} / "
        "{concentrate.cnre.purchase_t.2022})",
        "t concentrate (50 % REO)/a", 2024, dd("2", "yicaiglobal.com; m.b8iz8ocd.cn (CNRE concentrate purchases)"),
        "no capacity figure for Bayan Obo concentrate output; CNRE (the only buyer) bought 230 kt (2022) and planned 320 kt "
        "(2023); grown once more by that step: ≈ 223 kt REO/a, above the 2024 CNRE mining quota (≈ 189 kt REO) so that the "
        "quota binds (§9: mining at 100 % of quota)", flag="estimate")
derived("capacity.baotou_zone.magnet_per_other_maker_tpa", "{capacity.baotou_zone.magnet_other_makers_tpa} / 4", "t blank/a", "",
        S1 + ";" + S34,
        "the 97 kt not held by JL Mag and Yunsheng split equally between the three other makers the seeds name (天和 Tianhe, "
        "北方磁材 Northern Magnetic, 科田 Ketian) and one aggregate of the remaining producers (38 in all, 2024 target); the "
        "seeds give no per-firm capacity", flag="estimate")
derived("util.functional_materials_frac", "{util.magnet_frac}", "fraction of capacity", "", dd("9", "utilisation anchors"),
        "no utilisation figure for H2-storage, polishing, catalyst or alloy plants; taken equal to the magnet default "
        "(§9: 70–80 %); the 2024 capacities are targets, so full use is unlikely", flag="estimate")
derived("capacity.baotou.prnd_metal_tpa.2024",
        "{target.baotou.magnet_capacity_tpa.2024} * {util.magnet_frac} * {magnet.ndfeb.prnd_frac}", "t PrNd metal/a", 2024,
        MODEL, "no Baotou electrolysis capacity in the sources; sized to the magnet plants' expected draw; shortfalls "
        "(outages) are bought in as metal", flag="estimate")
for el, key_share in (("dy", "(1 - {magnet.ndfeb.tb_share_of_dytb_frac})"), ("tb", "{magnet.ndfeb.tb_share_of_dytb_frac}")):
    derived(f"capacity.baotou.{el}_metal_tpa.2024",
            "{target.baotou.magnet_capacity_tpa.2024} * {util.magnet_frac} * {magnet.ndfeb.dy_tb_frac} * " + key_share,
            f"t {el.capitalize()} metal/a", 2024, MODEL,
            f"no {el.capitalize()} metal capacity in the sources; sized to the magnet plants' expected draw; Ca-thermic "
            "reduction (§3b)", flag="estimate")
derived("capacity.baotou.lace_metal_tpa.2024",
        "({target.baotou.h2_storage_capacity_tpa.2024} * {material.h2_storage_alloy.re_metal_t_per_t} + "
        "{target.baotou.alloy_capacity_tpa.2024} * {material.re_alloy.re_metal_t_per_t}) * {util.functional_materials_frac}",
        "t La/Ce mischmetal/a", 2024, MODEL,
        "no mischmetal capacity in the sources (包头瑞鑫 was China's largest RE metal maker c.2010, seed 000); sized to the "
        "expected draw of the H2-storage and alloy plants", flag="estimate")

# Motors and end products.
row("spec.nev_heavy_truck.motor_peak_kw", 350, "kW peak drive power per truck", "", "estimate", "none (not in the sources)",
    "no source; battery-electric heavy tractors carry a central drive motor or e-axle of roughly 250–450 kW peak; midpoint placeholder, "
    "used only to size the truck's magnet content")
derived("intensity.nev_heavy_truck.magnet_kg_per_unit",
        "{spec.nev_heavy_truck.motor_peak_kw} / 100 * {intensity.ev_motor_by_power.magnet_kg_per_100kw}", "kg NdFeB/truck", "",
        dd("4a", "mainrichinternational.com/applications/ev-motors (C)") + "; " + MODEL)
derived("capacity.baotou.pm_motor_industrial_units_pa.2024",
        "round(({target.baotou.pm_motor_output_yi_cny.2024} * 1e8 - {target.baotou.nev_heavy_truck_units.2024} * "
        "{intensity.nev_heavy_truck.magnet_kg_per_unit} / 1000 * {price.pm_motor.cny_per_t_magnet.2023}) / "
        "({intensity.industrial_motor.magnet_kg_per_unit} / 1000 * {price.pm_motor.cny_per_t_magnet.2023}) / 2)",
        "motors/a per plant", 2024, S34 + "; " + MODEL,
        "no motor capacity in units in the sources (only 50 亿元 and ≥30 firms); sized so that the park's output value meets "
        "the target: the value left after the truck traction motors, split equally between the two industrial-motor plants "
        "named in the seeds (中加特, 卧龙 pilot base); units are EU-average industrial PM motors (0.175 kg NdFeB each)",
        flag="estimate")
derived("capacity.baotou.wind_turbine_mw_pa.2024",
        "{target.baotou.wind_equipment_output_yi_cny.2024} * 1e8 / {price.wind_turbine.cny_per_mw}", "MW/a", 2024,
        S34 + "; " + MODEL,
        "turbine MW whose value equals the wind-equipment target (the price is a placeholder, so this is estimate-grade)")
derived("capacity.baotou.wind_turbine_per_oem_mw_pa.2024", "{capacity.baotou.wind_turbine_mw_pa.2024} / 4", "MW/a per OEM", 2024,
        S34, "split equally between the four turbine OEMs the seeds name (明阳 Mingyang, 金风 Goldwind, 中车 CRRC, 远景 Envision); "
        "no per-OEM figure in the sources", flag="estimate")

# Demand and trade.
derived("demand.baotou.magnet_served_t.2024",
        "round(({prod.china.ndfeb_t.2023.finished_est} - {trade.china.magnet_export_t.2023}) * "
        "(1 + {demand.world.ndfeb_growth_per_year}) * {capacity.baotou_zone.magnet_share_china_frac.2022})",
        "t finished NdFeB/a", 2024, dd("7", "CSRE via metalnomist; adamasintel.com") + "; " + S1,
        "China's domestic use of finished magnets 2023 (finished output less exports), grown one year at the world NdFeB "
        "growth rate, times Baotou's share of China's magnet capacity: assumption that Baotou serves domestic demand in "
        "proportion to its capacity share", flag="estimate")
derived("trade.baotou.magnet_export_world_t.2024",
        "round({trade.china.magnet_export_t.2024} * {capacity.baotou_zone.magnet_share_china_frac.2022})", "t/a", 2024,
        dd("7", "adamasintel.com") + "; " + S1,
        "Baotou's share of China's magnet exports taken equal to its capacity share (assumption)", flag="estimate")
row("demand.baotou.monthly_noise_cv", 0.10, "coefficient of variation (monthly)", "", "estimate", "none (not in the sources)",
    "no source for month-to-month order variability of magnet end uses; placeholder 10 % (sensitivity 0–25 %)")
row("trade.baotou.lace_oxide_export_share_frac", 0.25, "fraction of the separation line's nameplate La/Ce output", "", "estimate",
    dd("8", "treo.substack.com ('La/Ce persistently over-produced')") + "; " + S0,
    "no figure for La/Ce sales out of Baotou; La/Ce are persistently over-produced (§8) and the seeds name the La/Ce balance as the "
    "chain's problem, so the outside market is assumed to absorb only a quarter of what the line can make; placeholder (test 0–1)")
row("stock.baotou.working_cover_days", 30, "days of use", "", "estimate", dd("6/§9", "inventory rows (no Baotou figure)"),
    "no Baotou inventory data; a working stock of about one month of use per intermediate pool (half the 60-day strategic-cover "
    "default stock.strategic_cover_days); imports top up to it")
row("stock.baotou.max_cover_days", 90, "days of use", "", "estimate", dd("6/§9", "inventory rows (no Baotou figure)"),
    "no source; storage ceiling of intermediate pools without an outside market (metals), three times the working stock, so that "
    "producers throttle instead of piling up metal")
row("lead.china_domestic_re_delivery_days", 14, "days", "", "estimate", dd("6", "lead-time rows (no domestic delivery figure)"),
    "no source; purchase and rail/road delivery of oxides, metals and Fe/B feedstock from other Chinese provinces (Jiangxi, Sichuan, "
    "Fujian) to Baotou: about two weeks; placeholder")

# Random outages (no source anywhere; moderate: a few events per plant and year).
for stage, mtbf, mttr, why in [
    ("mining", 120, 3, "open pit, crushers and flotation: a few stoppages a year (weather, equipment)"),
    ("recycling", 120, 4, "hydrometallurgical line, like separation but smaller and newer"),
    ("separation", 180, 5, "continuous SX cascades: rare but long stoppages (a cascade takes days to re-balance)"),
    ("metal", 90, 2, "electrolysis: frequent short stoppages (cell changes; small cells last < 180 d, §3b)"),
    ("magnet", 120, 3, "furnaces and machining lines: a few short stoppages a year"),
    ("materials", 120, 3, "batch chemical and alloy plants: a few short stoppages a year"),
    ("motor", 180, 2, "assembly lines: rare, short stoppages"),
    ("end_product", 180, 3, "assembly lines: rare, short stoppages (supplier or line problems)"),
]:
    row(f"availability.{stage}.mtbf_days", mtbf, "days (mean time between failures)", "", "estimate", "none (not in the sources)",
        f"no source; plant-level unplanned stoppages, {why}; MTBF of months keeps outage events moderate")
    row(f"availability.{stage}.mttr_days", mttr, "days (mean time to repair)", "", "estimate", "none (not in the sources)",
        f"no source; {why}; availability ≈ MTBF / (MTBF + MTTR) = {mtbf / (mtbf + mttr):.3f}")


# ---------------------------------------------------------------------------------------------
# 11b. Markets and decisions (DESIGN §2.4). No source gives price-adjustment speeds, supply or
#      demand curves of regional RE trade, or plant cash costs: these are estimates, anchored
#      where possible on the price record (§5d) and the cost structure of magnets (§5c); the
#      national back-cast is where the uncertain ones are fitted.
# ---------------------------------------------------------------------------------------------
MKT = "none (not in the sources; DESIGN §2.4 market model)"
derived("market.price_max_step_frac", "3 * {price_vol.nd_oxide.sigma_per_year} / 12 ** 0.5",
        "change of log price per month (bound)", "", dd("5d", "daily CSV"),
        "three standard deviations of a month's log return of Nd oxide 2020–24: a formed price moves at most this much in "
        "one clearing", flag="estimate")
row("market.price_adjust_per_month", 0.1, "change of log price per month per working stock of gap", "", "estimate",
    dd("5d", "daily CSV"),
    "no source; the 2020–22 run-up (×4.4 in 22 months, about +7 %/month in log price) stands for a gap of about 0.7 "
    "working stock, a tight market. At 0.3 (the earlier estimate: a quarter of a working stock) a regional chain's "
    "prices and margins cycled month to month, a cobweb no price record shows, and a capacity raise lowered output on "
    "about 3 % of generated chains (tests/test_properties_markets.py). The national models fit their own "
    "(fit.china.price_adjust_per_month)")
row("market.reference_pull_per_month", 0.2, "share of the log gap to the outside price closed per month", "", "estimate", MKT,
    "no source; Baotou trades oxides and metals with the rest of China within weeks (lead.china_domestic_re_delivery_days), so "
    "a regional price gap closes over a few months; 0.2 per month halves it in about three months")
derived("market.cover_target_days", "{stock.baotou.working_cover_days}", "days of use", "", dd("6/§9", "inventory rows"),
        "working stock of pools without target_t: the same month of use", flag="estimate")
row("producer.inventory_adjust_days", 60, "days", "", "estimate", dd("9", "cycle-time estimates (magnet lead time to OEM 6–10 weeks)"),
    "no source; producers close the gap to their working stock over about two months, the order lead time of magnets (§9)")
derived("demand.china.ndfeb_growth_2020_2022_frac", "({prod.china.ndfeb_t.2022} / {prod.china.re_pm_t.2020}) ** 0.5 - 1",
        "1/a", "2020-2022", dd("7", "askci.com; rizinia.com; ccmagnetics.com"),
        "growth of China's NdFeB output over 2020-2022 (two fitted years of the back-cast), standing for the growth of "
        "its domestic magnet demand then (NEVs, wind); the world's 2023-2040 outlook (demand.world.ndfeb_growth_per_year) "
        "is far slower", flag="derived")
row("trade.china.magnet_export_contract_frac", 1.0, "fraction of export demand", "", "estimate", MKT,
    "no source gives the share; magnet exports are delivered under long-term supply agreements with foreign motor, "
    "automotive and electronics makers (qualification takes years, §6), so exporters serve them before domestic spot "
    "buyers, even in a shortage: all of the foreign demand at the world price")
row("producer.margin_band_frac", 0.15, "fraction of output value", "", "estimate", MKT,
    "no source; a plant whose margin is 15 % of its output value below zero runs at its minimum, in between it slows in "
    "proportion. Short-run supply is nearly inelastic (domain_data.md §9: ≈ 0 within a quota year), so output should "
    "move little with a month's margin: at 0.1 a thin-margin converter (metal makers) went from full to minimum on a "
    "10 % move of its input price")
row("producer.main_output_value_share_frac", 0.25, "fraction of output value", "", "estimate", MKT,
    "no source; an output that carries a quarter or more of a joint producer's output value (at the start's prices) is "
    "one of its main outputs, whose demand paces it: the ionic-clay separators' PrNd (32 %) and Dy (38 %) oxides are "
    "both main outputs, the rock separators' Dy and Tb (7 %, 10 %) are not")
derived("producer.min_utilisation_frac", "{util.china_separation_frac.2016}", "fraction of capacity", "",
        dd("6", "cri-report.com"),
        "utilisation plants keep however poor the market: the lowest the record shows for a stage (separation ~35 % in 2016)",
        flag="estimate")
derived("cost.magnet.cash_cost_share_frac", "1 - {magnet.ndfeb.re_share_of_cost_frac}", "fraction of output value", "",
        dd("5c", "sdmmagnetic; tymagnets (cost structure)"),
        "processing cash cost of a magnet maker besides its RE inputs: the non-RE share of magnet cost", flag="estimate")
row("cost.metal.cash_cost_share_frac", 0.04, "fraction of output value", "", "estimate", dd("5d", "PrNd metal / oxide spot pairs"),
    "no source for electrolysis costs; the metal/oxide price ratio 1.23 against 1.18 stoichiometric leaves about 4 % of the metal "
    "price for conversion and margin")
row("cost.separation.cash_cost_share_frac", 0.15, "fraction of output value", "", "estimate", MKT,
    "no source for cracking and solvent-extraction costs (acid, alkali, extractant, energy, labour); placeholder 15 % of the "
    "value of the separated oxides")
row("cost.mining.cash_cost_share_frac", 0.3, "fraction of output value", "", "estimate", MKT,
    "no source for Bayan Obo mining and beneficiation costs (co-mined with iron ore); placeholder 30 % of the concentrate value")
row("cost.recycling.cash_cost_share_frac", 0.15, "fraction of output value", "", "estimate", MKT,
    "no source; swarf recycling runs the same separation steps on a richer feed: as separation")
row("cost.downstream.cash_cost_share_frac", 0.3, "fraction of output value", "", "estimate", MKT,
    "no source for functional materials, motors and end products; placeholder 30 % of output value besides the modelled inputs")
row("trade.import_premium_frac", 0, "fraction of the outside price", "", "estimate", MKT,
    "no duty or cost difference assumed between Baotou and the other Chinese provinces it buys from")
row("trade.import_slope_frac", 0.2, "fraction of the outside price", "", "estimate", MKT,
    "no source; a region must pay 20 % over the outside price to draw the whole import cap from the rest of China")
row("trade.export_slope_frac", 0.2, "fraction of the outside price", "", "estimate", MKT,
    "no source; outside buyers take the whole export cap when the region sells 20 % below the outside price (as trade.import_slope_frac)")
row("price.pass_through.metal_from_oxide_frac", 1.0, "share of the oxide's relative price change", "", "derived",
    dd("5d", "PrNd metal / oxide spot pairs"),
    "the metal/oxide price ratio stays within 1.22–1.28 across the 2020–24 cycle (§5d): metal prices move one-for-one with "
    "their oxide's in relative terms")
row("price.pass_through.scrap_from_oxide_frac", 1.0, "share of the oxide's relative price change", "", "estimate",
    dd("5c", "NdFeB scrap (PrNd-bearing)"),
    "scrap is priced on its recoverable PrNd content (§5c: scrap ≈ 445 CNY/kg when PrNd oxide was ≈ 388): it moves with the oxide")
row("invest.margin_threshold_frac", 0.15, "fraction of output value", "", "estimate", MKT,
    "no source; a stage adds capacity when its plants keep a margin of 15 % of output value for a year while running flat out")
row("invest.utilisation_threshold_frac", 0.95, "fraction of the utilisation ceiling", "", "estimate", MKT,
    "no source; 'flat out': at least 95 % of the ceiling on average over the window")
row("invest.window_months", 12, "months", "", "estimate", MKT,
    "no source; a year of sustained margins before a project starts")
row("invest.step_frac", 0.1, "fraction of nameplate", "", "estimate", MKT,
    "no source; a project adds a tenth of the stage's nameplate")
row("invest.separation_build_years", 3, "years", "", "estimate", dd("6", "CNRE green-smelting project (phase 1 done Oct 2024)"),
    "no source for build times of separation lines; placeholder three years")
derived("invest.magnet_build_years", "{lead.magnet_qualification_eps_years}", "years", "", dd("6", "nldmagnet.com"),
        "a new magnet line sells to EV and EPS makers only after qualification (> 2 years, C)", flag="estimate")
row("invest.downstream_build_years", 1.5, "years", "", "estimate", MKT,
    "no source; metal cells, functional-material lines and motor assembly: placeholder 18 months")
derived("demand.ndpr_price_elasticity", "(-0.1 + -0.3) / 2", "elasticity", "", dd("9", "short-run price elasticity of demand, NdPr"),
        "midpoint of the −0.1 to −0.3 estimate (not sourced: §8 found no numeric elasticity)", flag="estimate")
row("demand.price_response_months", 6, "months", "", "estimate", dd("9", "substitution (GBD) rows"),
    "no source; thrifting and substitution (Dy-free grades, Ce substitution) take months to qualify: first-order delay of half a year")

# ---------------------------------------------------------------------------------------------
# 12. National models china-2020 (back-cast 2020-2024) and china-2024: element mix of ionic
#     clays, the rock/ionic quota split where the sources lack it, the origin of imported feed,
#     sizing rules and the prices of 2020-2023 the back-cast needs. The back-cast's free
#     parameters are not here: `retwin fit` writes them to data/fitted.csv (years 2020-2022).
# ---------------------------------------------------------------------------------------------
NAT = "models/china-2020.yaml, models/china-2024.yaml (national reference model)"
ZHANG = dd("2a", "Zhang et al. 2016, 《稀土》 (jmonline.org, DOI 10.16533/J.CNKI.15-1099/TF.201601020)")

row("dist.ionic_clay.mree_frac", 0.15, "fraction of REO", "", "A", ZHANG,
    "weathered-crust ionic clays, general: Sm–Dy ≈ 15 % of REO (MREE)")
row("dist.ionic_clay.hree_y_frac", 0.29, "fraction of REO", "", "A", ZHANG,
    "weathered-crust ionic clays, general: Ho–Lu + Y ≈ 29 % of REO (HREE)")
derived("dist.ionic_clay.lree_frac", rounded("1 - {dist.ionic_clay.mree_frac} - {dist.ionic_clay.hree_y_frac}", 6),
        "fraction of REO", "", ZHANG, "La–Nd")
_ION_WHY = ("no element-level figure for China's ionic-clay mix in the sources (only the group totals of Zhang 2016, A, "
            "and single deposits: Longnan Y 64.8 %, Xunwu Ce 47 % flagged doubtful); split inside the group by assumption")
derived("dist.ionic_clay.pr_frac", "0.24 * {spec.prnd_oxide_baotou.pr_frac}", "fraction of REO", "", ZHANG,
        f"{_ION_WHY}. Pr+Nd 24 % of REO (assumption), in the Pr : Nd ratio of the model's PrNd oxide so that one PrNd "
        "oxide serves both feeds", flag="estimate")
derived("dist.ionic_clay.nd_frac", "0.24 * (1 - {spec.prnd_oxide_baotou.pr_frac})", "fraction of REO", "", ZHANG,
        f"{_ION_WHY}. See the Pr row", flag="estimate")
for el, val, note in [
    ("la", 0.27, "La–Nd group {dist.ionic_clay.lree_frac} = La 27 + Ce 5 + Pr+Nd 24 %; La is the main light element of the clays"),
    ("ce", 0.05, "low: assumption that cerium is largely lost from weathered-crust clays; the sources give no usable Ce figure"),
    ("sm", 0.04, "Sm–Dy group {dist.ionic_clay.mree_frac} = Sm 4 + Eu 0.7 + Gd 4.5 + Tb 0.8 + Dy 5 %"),
    ("eu", 0.007, "Eu-rich clays hold > 0.5 % Eu (soolun.net, B); 0.7 % taken for the mix"),
    ("gd", 0.045, "see the Sm row"),
    ("tb", 0.008, "see the Sm row; the ionic clays are China's Dy/Tb source (§2a, §10)"),
    ("dy", 0.05, "see the Sm row"),
    ("y", 0.24, "Ho–Lu + Y group {dist.ionic_clay.hree_y_frac} = Y 24 + other 5 %; Y below the HREE-rich Longnan deposit's 64.8 % "
     "because the national mix includes the LREE-type clays"),
    ("other", 0.05, "Ho–Lu (Er, Tm, Yb, Lu); see the Y row"),
]:
    row(f"dist.ionic_clay.{el}_frac", val, "fraction of REO", "", "estimate", ZHANG, f"{_ION_WHY}. {note}")
assert abs(sum(v(f"dist.ionic_clay.{el}_frac") for el in
               ("la", "ce", "pr", "nd", "sm", "eu", "gd", "tb", "dy", "y", "other")) - 1) < 1e-9

for yr, b1 in ((2023, 10943), (2024, 10140)):
    derived(f"quota.national.mining_ionic_est_t_reo.{yr}", "{quota.national.mining_ionic_t_reo.2022}", "t REO", yr,
            dd("1a", Q_SRC[yr]),
            f"the full-year ionic quota of {yr} is not in the sources (§11); kept at 19,150 t, its level every year "
            f"2018–2022; batch 1 of {yr} was {b1:,} t, about half, as with two batches a year", flag="estimate")

row("lead.import_feed_days", 30, "days", "", "estimate", "none (not in the sources)",
    "no source for the transit of imported concentrate and mixed carbonate to Chinese separators (Myanmar overland, "
    "USA by sea); about a month; placeholder")
derived("stock.china.working_cover_days", "{stock.baotou.working_cover_days}", "days of use", "",
        dd("6/§9", "inventory rows (no national figure)"),
        "no national inventory data; a working stock of about one month of use per pool, as for Baotou; imports top up to it",
        flag="estimate")
derived("stock.china.max_cover_days", "{stock.baotou.max_cover_days}", "days of use", "",
        dd("6/§9", "inventory rows (no national figure)"),
        "no source; storage ceiling of the Dy and Tb metal pools, three times the working stock, so that the reduction "
        "plants throttle to what the magnet makers use instead of piling up metal (as for Baotou)", flag="estimate")
row("capacity.china.quota_headroom_ratio", 1.25, "ratio (capacity / quota)", "", "estimate", NAT,
    "no national mine or separator capacity per year in the sources; plants working under a quota are sized 25 % above "
    "the largest quota of the horizon so that the quota, not capacity, binds (§9: mining at 100 % of quota; USGS: China's "
    "mine production equals the quota 2021–24)")

derived("price.concentrate_reo50.cny_per_t.2021h2", rounded("{price.concentrate_reo50.cny_per_t.2022h1} / 1.65", 1), CONC, 2021,
        dd("5b", "yicaiglobal.com"),
        "the Jan 2022 contract price was +65 % on the price before it; no earlier concentrate price in the sources (the "
        "back-cast holds it back to 2020)")
derived("price.ndfeb_magnet.cny_per_t.2020",
        "round({magnet.ndfeb.prnd_frac} / {yield.magnet_blank_to_finished_frac} * {price.prnd_metal.cny_per_t.2020} "
        "/ {magnet.ndfeb.re_share_of_cost_frac})",
        "CNY/t sintered NdFeB (finished)", 2020, dd("5c/§9", "magnet price estimate: RE content cost ÷ RE share of cost"),
        "§9's logic for its 2023 estimate (PrNd metal per t of finished magnet × the PrNd metal price ÷ the RE share of "
        "cost) with the 2020 metal price; no magnet price series in the sources. Nothing of a later year enters it (the "
        "back-cast starts from it)",
        flag="estimate")
for yr in (2021, 2022):
    derived(f"price.ndfeb_magnet.cny_per_t.{yr}",
            f"round({{price.ndfeb_magnet.cny_per_t.2023}} * (1 + {{magnet.ndfeb.re_share_of_cost_frac}} * "
            f"({{price.prnd_oxide.cny_per_t.{yr}}} / {{price.prnd_oxide.cny_per_t.2023}} - 1)))",
            "CNY/t sintered NdFeB (finished)", yr, dd("5c/§9", "magnet price estimate moved with PrNd oxide"),
            "no magnet price series in the sources: the 2023 estimate with its RE share of cost moved by the PrNd oxide price",
            flag="estimate")
for yr in (2020, 2021, 2022, 2023):
    derived(f"price.ndfeb_swarf.cny_per_t.{yr}", swarf_formula(yr), "CNY/t swarf", yr, MODEL + "; " + ARGUS_P,
            f"as price.ndfeb_swarf.cny_per_t.2024, with the oxide prices of {yr}; an upper bound", flag="estimate")


# --- 12b. Bayan Obo composition rescaled to its published medium + heavy RE content ------------
# The Araxá proxy (dist.baotou_concentrate.*) puts Sm..Lu + Y at 6.8 % of REO; Bayan Obo's published
# M+HREE content (Minerals 2025, A) is 1,005 ppm (aegirine-type ore) and 1,204 ppm (fluorite-type
# ore) at the 6 % REO grade, i.e. 1.7-2.0 % of REO. The rescaled mix keeps the proxy's ratios inside
# the light group (La : Ce : Pr : Nd) and inside the medium/heavy group (Sm : Eu : Gd : Tb : Dy : Y :
# other), and sums to 1. The national models use it for all light-RE feed (models/china-2024.yaml).
MHREE = dd("2", "Minerals 2025, 15(3):212 (MDPI)")
row("ore.bayan_obo.mhree_ppm.aegirine", 1005, "ppm M+HREE in ore", 2025, "A", MHREE,
    "Bayan Obo medium + heavy RE: 1,005 ppm (aegirine-type ore)")
row("ore.bayan_obo.mhree_ppm.fluorite", 1204, "ppm M+HREE in ore", 2025, "A", MHREE,
    "Bayan Obo medium + heavy RE: 1,204 ppm (fluorite-type ore)")
_MH = ("sm", "eu", "gd", "tb", "dy", "y", "other")
_LR = ("la", "ce", "pr", "nd")
_proxy_mh = " + ".join(f"{{dist.baotou_concentrate.{el}_frac}}" for el in _MH)
_proxy_lr = " + ".join(f"{{dist.baotou_concentrate.{el}_frac}}" for el in _LR)
derived("dist.bayan_obo.mhree_frac",
        "({ore.bayan_obo.mhree_ppm.aegirine} + {ore.bayan_obo.mhree_ppm.fluorite}) / 2 / 1e6 / {ore.bayan_obo.grade_frac}",
        "fraction of REO", "", MHREE + "; " + KYN,
        "medium + heavy RE (Sm..Lu + Y) as a share of REO: the mean of the two ore types' M+HREE content over the ore "
        "grade (range 1.68-2.01 %); the ppm are taken as oxide-equivalent (the source does not say; as element they "
        "would be about 15 % lower as oxide)")
derived("dist.bayan_obo.mhree_scale", f"{{dist.bayan_obo.mhree_frac}} / ({_proxy_mh})", "ratio", "", MHREE + "; " + PROXY,
        "factor on the proxy's medium/heavy shares (Sm..Lu + Y sum to 6.8 % in the proxy)")
derived("dist.bayan_obo.lree_scale", f"(1 - {{dist.bayan_obo.mhree_frac}}) / ({_proxy_lr})", "ratio", "", MHREE + "; " + PROXY,
        "factor on the proxy's La, Ce, Pr, Nd so that the mix sums to 1 with the light-RE ratios kept (LREE 98.2 %, "
        "consistent with the reported > 95 %, §2a)")
for el in _LR:
    derived(f"dist.bayan_obo.{el}_frac", f"{{dist.baotou_concentrate.{el}_frac}} * {{dist.bayan_obo.lree_scale}}",
            "fraction of REO", "", MHREE + "; " + PROXY, "the proxy's share rescaled: light-RE ratios kept")
for el in _MH:
    derived(f"dist.bayan_obo.{el}_frac", f"{{dist.baotou_concentrate.{el}_frac}} * {{dist.bayan_obo.mhree_scale}}",
            "fraction of REO", "", MHREE + "; " + PROXY,
            "the proxy's share rescaled to the published M+HREE content (ratios inside Sm..Lu + Y kept)")
assert abs(sum(v(f"dist.bayan_obo.{el}_frac") for el in _LR + _MH) - 1) < 1e-12

# --- 12c. Non-magnet domestic demand (China, t REO/a) ------------------------------------------
# Sized from the 2020 share of permanent magnets in China's RE demand (42 % by volume, §4b) and the
# seeds' "metallurgy takes about 1/3 of RE use"; the rest split by estimate. Held flat (estimate).
DEMAND_SHARE = dd("4b", "sanwenwang.com; ccmagnetics.com")
derived("demand.china.magnet_t_reo.2020",
        "round({prod.china.re_pm_t.2020} * ({magnet.ndfeb.prnd_frac} / {stoich.prnd_oxide_baotou.metal_kg_per_kg} + "
        "{magnet.ndfeb.dy_tb_frac} * (1 - {magnet.ndfeb.tb_share_of_dytb_frac}) / {stoich.dy2o3.metal_kg_per_kg} + "
        "{magnet.ndfeb.dy_tb_frac} * {magnet.ndfeb.tb_share_of_dytb_frac} / {stoich.tb4o7.metal_kg_per_kg}))",
        "t REO/a", 2020, dd("7/§3c", "rizinia.com; magnet composition rows"),
        "REO in China's 2020 permanent-magnet output (PrNd, Dy, Tb metal content as oxide)")
derived("demand.china.re_total_t_reo.2020",
        "round({demand.china.magnet_t_reo.2020} / {demand.china.pm_share_of_re_volume_frac.2020})", "t REO/a", 2020,
        DEMAND_SHARE, "China's RE demand by volume: magnets are 42 % of it")
derived("demand.china.non_magnet_t_reo.2020",
        "{demand.china.re_total_t_reo.2020} - {demand.china.magnet_t_reo.2020}", "t REO/a", 2020, DEMAND_SHARE,
        "the 58 % of China's RE demand that is not magnets")
derived("demand.china.metallurgy_t_reo.2020",
        "round({demand.china.re_total_t_reo.2020} * {demand.china.metallurgy_share_of_re_use_frac})", "t REO/a", 2020,
        S0 + "; " + DEMAND_SHARE,
        "alloys and metallurgy (steel, cast iron, Al/Mg alloys): the seeds' one third of RE use (c.2010) applied to 2020, "
        "an assumption", flag="estimate")
derived("demand.china.other_uses_t_reo.2020",
        "{demand.china.non_magnet_t_reo.2020} - {demand.china.metallurgy_t_reo.2020}", "t REO/a", 2020,
        S0 + "; " + DEMAND_SHARE, "polishing, catalysts, hydrogen storage, phosphors, glass and ceramics together",
        flag="estimate")
row("demand.china.phosphor_share_of_other_frac", 0.10, "fraction of the other non-magnet uses", "", "estimate",
    S0, "no national figure after the seeds' > 14 kt (phosphor material, 2013 forecast), which LED lighting has since "
    "eroded; placeholder 10 % of the non-magnet, non-metallurgy uses (about 4 kt REO)")
row("demand.china.glass_ceramics_share_of_other_frac", 0.15, "fraction of the other non-magnet uses", "", "estimate",
    S0, "no figure in the sources (the seeds name glass colouring, decolouring and ceramics uses only qualitatively); "
    "placeholder 15 %")
_rest = "(1 - {demand.china.phosphor_share_of_other_frac} - {demand.china.glass_ceramics_share_of_other_frac})"
_w = {"polishing": "{target.baotou.polishing_capacity_tpa.2024} * {material.polishing_powder.reo_t_per_t}",
      "catalysts": "{target.baotou.catalyst_additive_capacity_tpa.2024} * {material.catalyst_additive.reo_t_per_t}",
      "h2_storage": "{target.baotou.h2_storage_capacity_tpa.2024} * {material.h2_storage_alloy.re_metal_t_per_t} / "
                    "{stoich.lace_mischmetal.metal_kg_per_kg}"}
_wsum = " + ".join(f"({x})" for x in _w.values())
for use, what in (("polishing", "CeO2 polishing powders"), ("catalysts", "FCC and exhaust catalysts, additives"),
                  ("h2_storage", "hydrogen-storage alloys (NiMH)")):
    derived(f"demand.china.{use}_t_reo.2020",
            f"round({{demand.china.other_uses_t_reo.2020}} * {_rest} * ({_w[use]}) / ({_wsum}))", "t REO/a", 2020,
            S34 + "; " + DEMAND_SHARE,
            f"{what}: the rest of the non-metallurgy uses split in proportion to the REO in Baotou's 2024 capacity "
            "targets (polishing 40 kt, catalysts 20 kt, H2 storage 7 kt of product), an assumption", flag="estimate")
derived("demand.china.phosphors_t_reo.2020",
        "round({demand.china.other_uses_t_reo.2020} * {demand.china.phosphor_share_of_other_frac})", "t REO/a", 2020,
        S0, "phosphors (Y host, Eu/Tb activators)", flag="estimate")
derived("demand.china.glass_ceramics_t_reo.2020",
        "round({demand.china.other_uses_t_reo.2020} * {demand.china.glass_ceramics_share_of_other_frac})", "t REO/a", 2020,
        S0, "glass (Ce decolouring/polishing, La optical glass) and ceramics (Y-stabilised zirconia)", flag="estimate")
derived("demand.china.metallurgy_la_share_frac",
        "{dist.bayan_obo.la_frac} / ({dist.bayan_obo.la_frac} + {dist.bayan_obo.ce_frac})", "fraction of La+Ce", "",
        MHREE + "; " + PROXY, "mischmetal for metallurgy carries La and Ce in the ore's ratio (assumption)", flag="estimate")
row("demand.china.catalysts_la_share_frac", 0.5, "fraction of catalyst REO", "", "estimate", S0,
    "FCC catalysts take La, exhaust catalysts Ce (seeds, qualitative); half each, placeholder")
row("demand.china.glass_ceramics_y_share_frac", 0.3, "fraction of glass and ceramics REO", "", "estimate", S0,
    "ceramics (Y) about a third of glass + ceramics, the rest Ce for glass; placeholder")
row("demand.china.non_magnet_growth_per_year", 0.0, "1/a", "", "estimate", "none (not in the sources)",
    "no growth figure for non-magnet uses in the sources; held flat (mature uses; La/Ce persistently over-produced, §8)")

# --- 12d. RE-product trade (customs, gross weight) and its REO content ------------------------------
CUSTOMS = dd("7", "rareearths.com (2024-01-12); wap.imsilkroad.com/p/530992.html")
row("trade.china.re_product_export_gross_t.2022", 48727, "t (gross weight)", 2022, "B", CUSTOMS,
    "China RE product exports 2022 (customs, gross weight): 48,727 t")
row("trade.china.re_product_import_gross_t.2022", 121400, "t (gross weight)", 2022, "B", CUSTOMS,
    "China RE product imports 2022 ≈ 121,400 t (customs, gross weight; derived by the source from the 2023 figure and "
    "its reported growth)")
for form, val, why in (
        ("oxide", 1.0, "an oxide is counted as its own weight of REO (purity taken as 100 %)"),
        ("compound", 0.5, "carbonates, chlorides, fluorides, hydroxides: e.g. La2(CO3)3·8H2O holds 54 % La2O3, "
                          "LaCl3·7H2O 44 %; about half, estimate"),
        ("concentrate", 0.6, "imported bastnaesite/monazite concentrate at about 60 % REO (Baotou concentrates are "
                             "sold at 45/50/60 %, §2; imported concentrate is taken at the high grade), estimate")):
    row(f"trade.reo_per_gross_t.{form}", val, "t REO / t gross weight", "", "estimate", dd("2/§3b", "stoichiometry"), why)
derived("trade.reo_per_gross_t.metal", rounded("1 / {stoich.lace_mischmetal.metal_kg_per_kg}", 4), "t REO / t gross weight",
        "", dd("3b", "stoichiometry"), "metals and alloys counted as the oxide they were made from (La/Ce mischmetal)")
for side, shares, why in (
        ("export", {"oxide": 0.45, "compound": 0.35, "metal": 0.20},
         "the sources give no split by product form; China's RE-product exports are mostly La/Ce oxides and compounds "
         "with some metal"),
        ("import", {"concentrate": 0.45, "compound": 0.45, "oxide": 0.10},
         "the sources give no split by product form; China's imports are mostly Myanmar's mixed RE carbonate and "
         "oxides and US and other concentrate")):
    for form, sh in shares.items():
        row(f"trade.china.re_product_{side}_{form}_share_frac", sh, "fraction of gross weight", "", "estimate", CUSTOMS,
            f"{why}; placeholder")
    conv = " + ".join(f"{{trade.china.re_product_{side}_{f}_share_frac}} * {{trade.reo_per_gross_t.{f}}}" for f in shares)
    derived(f"trade.china.re_product_{side}_t_reo.2022",
            f"round({{trade.china.re_product_{side}_gross_t.2022}} * ({conv}))", "t REO", 2022, CUSTOMS,
            f"customs gross weight converted to t REO by product form (shares and REO contents: estimates)")
row("trade.china.re_product_export_la_frac", 0.35, "fraction of RE-product exports (t REO)", "", "estimate", CUSTOMS,
    "no split by element in the sources; La and Ce are most of China's RE-product exports (the surplus elements, §8); "
    "placeholder: La 35 %, Ce 45 %, the rest (Y, Sm, Gd, Ho-Lu) 20 %")
row("trade.china.re_product_export_ce_frac", 0.45, "fraction of RE-product exports (t REO)", "", "estimate", CUSTOMS,
    "see trade.china.re_product_export_la_frac")
derived("trade.china.re_product_export_other_frac",
        "1 - {trade.china.re_product_export_la_frac} - {trade.china.re_product_export_ce_frac}",
        "fraction of RE-product exports (t REO)", "", CUSTOMS, "Y, Sm, Gd and Ho-Lu oxides, shared equally (estimate)",
        flag="estimate")

# Domestic magnet consumption on the published basis: output (blank t, as the statistics count it)
# less exports (t, customs), the two in the tonnage they are published in.
derived("demand.china.ndfeb_apparent_t.2021", "{prod.china.ndfeb_t.2021} - {trade.china.magnet_export_t.2021}",
        "t NdFeB (published basis)", 2021, dd("7", "askci.com; rizinia.com"),
        "published basis: output less exports, without converting blanks to finished magnets")
derived("demand.china.ndfeb_apparent_t.2023", "{prod.china.ndfeb_t.2023.csre_blank} - {trade.china.magnet_export_t.2023}",
        "t NdFeB (published basis)", 2023, dd("7", "metalnomist.com (CSRE); adamasintel.com"),
        "published basis: output less exports, without converting blanks to finished magnets")


def main(out: Path = OUT) -> None:
    rows = sorted(ROWS, key=lambda r: r["key"])
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
