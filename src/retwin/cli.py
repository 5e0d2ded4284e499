"""The ``retwin`` command line: run, validate, schema, warmup, data.

Errors are one clear line per problem on stderr; bad input exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from retwin.errors import DataError, MassBalanceError, RetwinError, ScenarioError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# --- change arguments -----------------------------------------------------------------------


def _read_changes(arg: str) -> list[Any]:
    """``--change`` takes inline JSON (one change or a list) or a YAML/JSON file holding a
    change, a list of changes, or a what-if file with a ``changes:`` list."""
    text = arg.strip()
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError([("--change", f"not valid JSON: {exc.msg} at column {exc.colno}")])\
                from None
    else:
        path = Path(arg)
        if not path.is_file():
            raise ScenarioError([("--change", f"{arg!r} is neither JSON nor an existing file")])
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ScenarioError([("--change", f"{path.name}: not valid YAML: {exc}")]) from None
    if isinstance(data, dict) and "changes" in data:
        data = data["changes"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ScenarioError(
            [("--change", "must be a change, a list of changes, or a what-if file")]
        )
    return data


# --- tables --------------------------------------------------------------------------------

_ROWS: list[tuple[str, str, str]] = [
    # (kpi, label, format)
    ("output.stage", "Output · {key}", ",.0f"),
    ("production.material", "Production · {key}", ",.0f"),
    ("utilisation.stage", "Utilisation · {key}", ".0%"),
    ("element.la_ce_surplus", "La+Ce surplus (t REO)", ",.0f"),
    ("element.dy_tb_deficit", "Dy+Tb deficit (t REO)", ",.1f"),
    ("imports.market", "Imports · {key}", ",.0f"),
    ("exports.market", "Exports · {key}", ",.0f"),
    ("local_conversion", "Local conversion rate", ".1%"),
    ("fill_rate.segment", "Fill rate · {key}", ".1%"),
    ("value.group", "Output value · {key} (亿元)", ",.1f"),
]

KEY_MATERIALS = ("concentrate", "prnd_oxide", "prnd_metal", "ndfeb_magnet", "la_oxide",
                 "ce_oxide", "magnet")


def _fmt(v: float, f: str) -> str:
    if pd.isna(v):
        return "–"
    return format(v, f)


def _kpi_table(
    summary: pd.DataFrame, years: list[int], diff: pd.DataFrame | None, bands: bool, title: str
) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    t.add_column("KPI", style="bold", no_wrap=True)
    for y in years:
        t.add_column(str(y), justify="right")
    s = summary.set_index(["kpi", "key", "year"])
    d = diff.set_index(["kpi", "key", "year"]) if diff is not None else None
    for kpi, label, f in _ROWS:
        keys = list(dict.fromkeys(summary[summary.kpi == kpi].key))
        if kpi == "production.material":
            keys = [k for k in keys if k in KEY_MATERIALS]
        for key in keys:
            cells = []
            for y in years:
                if (kpi, key, y) not in s.index:
                    cells.append("–")
                    continue
                row = s.loc[(kpi, key, y)]  # type: ignore[index]
                cell = _fmt(row["mean"], f)
                if bands and row["p5"] != row["p95"]:
                    cell += f"\n[dim][{_fmt(row['p5'], f)}–{_fmt(row['p95'], f)}][/dim]"
                if d is not None and (kpi, key, y) in d.index:
                    dv = d.loc[(kpi, key, y)]["mean"]  # type: ignore[index]
                    if abs(dv) > 1e-9 * max(1.0, abs(row["mean"])):
                        sign = "+" if dv > 0 else ""
                        style = "green" if dv > 0 else "red"
                        cell += f"\n[{style}]Δ {sign}{_fmt(dv, f)}[/{style}]"
                cells.append(cell)
            t.add_row(label.format(key=key), *cells)
    return t


def _bottleneck_table(first: Any, years: list[int]) -> Table:
    t = Table(title="Binding constraint per stage (share of plant-days) and bottleneck",
              title_justify="left", pad_edge=False)
    t.add_column("Stage", style="bold")
    for y in years:
        t.add_column(str(y), justify="right")
    bt = first.binding_table
    for stage in dict.fromkeys(bt.stage):
        cells = []
        for y in years:
            g = bt[(bt.stage == stage) & (bt.year == y)].sort_values("share")
            cells.append(f"{g.constraint.iloc[-1]} {g.share.iloc[-1]:.0%}" if len(g) else "–")
        t.add_row(stage, *cells)
    bn = first.bottlenecks.set_index("year")
    t.add_row("[b]bottleneck[/b]",
              *[f"[b]{bn.loc[y, 'stage']}[/b] ({bn.loc[y, 'constraint']})" for y in years])
    return t


def _target_table(first: Any) -> Table:
    t = Table(title="Targets", title_justify="left", pad_edge=False)
    for col in ("Target", "Year", "Goal", "Model", "Unit", "Attained"):
        t.add_column(col, justify="right" if col in ("Goal", "Model") else "left")
    for r in first.target_table.itertuples():
        f = ",.1f" if abs(r.goal) >= 100 else ".3g"
        t.add_row(r.name, str(r.year), _fmt(r.goal, f), _fmt(r.value, f), r.unit,
                  "[green]yes[/green]" if r.attained else "[red]no[/red]")
    return t


# --- commands ------------------------------------------------------------------------------


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


def cmd_run(a: argparse.Namespace) -> int:
    from retwin.engine.run import prepare, run_replications
    from retwin.scenario.load import apply_changes, load_scenario, scenario_hash
    from retwin.storage import save_result

    changes: list[Any] = []
    for c in a.change or []:
        changes += _read_changes(c)
    scenario = load_scenario(a.scenario)
    baseline = None
    if changes:
        baseline = scenario
        scenario = apply_changes(scenario, changes)
    else:  # a what-if file is compared with the same scenario without its changes
        plain = load_scenario(a.scenario, include_changes=False)
        if scenario_hash(plain) != scenario_hash(scenario):
            baseline = plain
    with _progress() as prog:
        task = prog.add_task("whatif" if baseline else "run", total=a.replications)
        res = run_replications(prepare(scenario), a.replications, seed=a.seed,
                               progress=lambda i, n: prog.update(task, completed=i))
        base_res = None
        if baseline is not None:
            task2 = prog.add_task("baseline", total=a.replications)
            base_res = run_replications(prepare(baseline), a.replications, seed=a.seed,
                                        progress=lambda i, n: prog.update(task2, completed=i))
    diff = res.difference(base_res) if base_res is not None else None
    first = res.first
    years = first.years
    title = f"{scenario.name}: annual KPIs, seed {a.seed}"
    if a.replications > 1:
        title += f", mean of {a.replications} replications [p5–p95]"
    if diff is not None:
        title += "; Δ = what-if − baseline (common random numbers)"
    out.print(_kpi_table(res.summary, years, diff, a.replications > 1, title))
    out.print(_bottleneck_table(first, years))
    if scenario.targets:
        out.print(_target_table(first))
    b = first.balance
    out.print(f"Mass balance closes: worst material residual {abs(b.material).max():.3g}, "
              f"worst element residual {abs(b.element).max():.3g} t REO.")
    if a.out:
        path = save_result(res, a.out, fmt=a.format, difference=diff,
                           baseline_hash=scenario_hash(baseline) if baseline else None,
                           changes=changes)
        out.print(f"Results written to {path}")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from retwin.scenario.load import load_scenario

    bad = 0
    for f in a.files:
        try:
            sc = load_scenario(f)
        except ScenarioError as exc:
            bad += 1
            for line in exc.lines():
                err.print(f"{f}: {line}", markup=False)
            continue
        out.print(f"{f}: ok ({sc.name}: {len(sc.plants)} plants, {len(sc.materials)} materials, "
                  f"{sc.start}..{sc.end}, {len(sc.changes)} timed changes)")
    return EXIT_BAD_INPUT if bad else 0


def cmd_schema(a: argparse.Namespace) -> int:
    from retwin.scenario.schema import Scenario

    text = json.dumps(Scenario.model_json_schema(by_alias=True), indent=2, ensure_ascii=False)
    if a.output and a.output != "-":
        Path(a.output).write_text(text + "\n", encoding="utf-8")
        out.print(f"JSON Schema written to {a.output}")
    else:
        sys.stdout.write(text + "\n")
    return 0


def cmd_warmup(a: argparse.Namespace) -> int:
    from retwin.kernels import warmup

    out.print(f"Kernels ready in {warmup():.2f} s")
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from retwin.scenario.data import (
        build_manifest,
        check_manifest,
        load_parameters,
        reference_dir,
    )

    params = load_parameters()
    if a.write_manifest:
        path = reference_dir() / "data" / "manifest.json"
        path.write_text(json.dumps(build_manifest(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        out.print(f"Manifest written to {path}")
        return 0
    problems = check_manifest()
    for problem in problems:
        err.print(problem, markup=False)
    flags: dict[str, int] = {}
    for prm in params.values():
        flags[prm.flag] = flags.get(prm.flag, 0) + 1
    out.print(f"{len(params)} parameters; flags: "
              + ", ".join(f"{k} {v}" for k, v in sorted(flags.items())))
    if a.key:
        for k in a.key:
            if k not in params:
                err.print(f"unknown key {k!r}", markup=False)
                return EXIT_BAD_INPUT
            prm = params[k]
            out.print(f"{prm.key} = {prm.value:g} {prm.unit} ({prm.year or 'n.y.'}, {prm.flag}) — "
                      f"{prm.source}; {prm.basis}", markup=False)
    return EXIT_BAD_INPUT if problems else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retwin", description="Rare-earth industrial-chain twin.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a scenario and print its annual KPIs")
    r.add_argument("scenario", help="a scenario file or a reference model name (baotou-2024)")
    r.add_argument("--change", action="append", metavar="FILE|JSON",
                   help="a what-if change (repeatable): inline JSON or a YAML/JSON file")
    r.add_argument("--replications", type=int, default=1, metavar="N")
    r.add_argument("--seed", type=int, default=0, metavar="S")
    r.add_argument("--out", metavar="DIR", help="write series, flows, kpis and a manifest")
    r.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check scenario files; one line per problem")
    v.add_argument("files", nargs="+")
    v.set_defaults(fn=cmd_validate)

    s = sub.add_parser("schema", help="write the scenario JSON Schema")
    s.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    s.set_defaults(fn=cmd_schema)

    w = sub.add_parser("warmup", help="compile the kernels (fills the on-disk cache)")
    w.set_defaults(fn=cmd_warmup)

    d = sub.add_parser("data", help="check data/ against its manifest; show parameters")
    d.add_argument("--write-manifest", action="store_true")
    d.add_argument("key", nargs="*", help="parameter keys to show with their source")
    d.set_defaults(fn=cmd_data)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    if getattr(a, "replications", 1) < 1:
        err.print(f"--replications(={a.replications}) must be >= 1")
        return EXIT_BAD_INPUT
    if getattr(a, "seed", 0) < 0:
        err.print(f"--seed(={a.seed}) must be >= 0")
        return EXIT_BAD_INPUT
    try:
        return int(a.fn(a))
    except ScenarioError as exc:
        for line in exc.lines():
            err.print(f"error: {line}", markup=False)
        return EXIT_BAD_INPUT
    except DataError as exc:
        err.print(f"data error: {exc}", markup=False)
        return EXIT_BAD_INPUT
    except MassBalanceError as exc:
        err.print(f"mass balance error: {exc}", markup=False)
        return EXIT_FAILED
    except RetwinError as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
