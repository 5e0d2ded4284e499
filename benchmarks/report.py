"""A small HTML trend report of the benchmark runs ``make bench-save`` kept in
``.benchmarks/`` (pytest-benchmark's JSON files): per benchmark, its median over the saved
runs in time order, as a table and a line, one self-contained page without scripts.

``python benchmarks/report.py [.benchmarks] [-o .benchmarks/report.html]``
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Saved:
    """One saved benchmark run."""

    file: str
    when: str
    commit: str
    medians: dict[str, float]  # fullname -> median seconds
    groups: dict[str, str]


def load(folder: Path) -> list[Saved]:
    runs = []
    for path in sorted(folder.rglob("*.json")):
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            benches = data["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a pytest-benchmark file
        info = data.get("commit_info") or {}
        commit = str(info.get("id") or "")[:10] + ("+" if info.get("dirty") else "")
        runs.append(Saved(
            file=path.name,
            when=str(data.get("datetime") or info.get("time") or ""),
            commit=commit,
            medians={b["fullname"]: float(b["stats"]["median"]) for b in benches},
            groups={b["fullname"]: str(b.get("group") or "") for b in benches},
        ))
    runs.sort(key=lambda r: (r.when, r.file))
    return runs


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _spark(values: list[float | None], width: int = 260, height: int = 48) -> str:
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if not pts:
        return ""
    lo = min(v for _, v in pts)
    hi = max(v for _, v in pts)
    span = hi - lo or hi or 1.0
    n = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return 4 + (width - 8) * i / n, height - 4 - (height - 8) * (v - lo) / span

    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2"/>'
                   for x, y in (xy(i, v) for i, v in pts))
    return (f'<svg width="{width}" height="{height}" role="img" '
            f'aria-label="median over saved runs"><polyline points="{coords}" fill="none" '
            f'stroke="#1f6feb" stroke-width="1.5"/><g fill="#1f6feb">{dots}</g></svg>')


def render(runs: list[Saved]) -> str:
    names = sorted({n for r in runs for n in r.medians},
                   key=lambda n: (next((r.groups[n] for r in runs if n in r.groups), ""), n))
    head = "".join(f"<th title='{html.escape(r.file)}'>{html.escape(r.when[:16])}<br>"
                   f"<code>{html.escape(r.commit)}</code></th>" for r in runs)
    rows = []
    for n in names:
        vals = [r.medians.get(n) for r in runs]
        known = [v for v in vals if v is not None]
        change = ""
        if len(known) >= 2:
            pct = (known[-1] / known[0] - 1) * 100
            colour = "#b42318" if pct > 15 else "#027a48" if pct < -15 else "inherit"
            change = f"<span style='color:{colour}'>{pct:+.0f} %</span>"
        group = next((r.groups[n] for r in runs if n in r.groups), "")
        cells = "".join(f"<td>{_fmt(v) if v is not None else ''}</td>" for v in vals)
        rows.append(f"<tr><td>{html.escape(group)}</td><td><code>{html.escape(n)}</code></td>"
                    f"<td>{_spark(vals)}</td><td>{change}</td>{cells}</tr>")
    body = "\n".join(rows) if rows else "<tr><td colspan=4>no saved runs</td></tr>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>retwin benchmark trend</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right;
          vertical-align: middle; white-space: nowrap; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
</style></head><body>
<h1>Benchmark trend</h1>
<p>{len(runs)} saved run(s) from <code>make bench-save</code>; each cell is the median time
of a benchmark in that run; the change is the last run against the first (red: more than
15 % slower). Figures from different machines are not comparable.</p>
<table><thead><tr><th>group</th><th>benchmark</th><th>trend</th><th>change</th>{head}</tr>
</thead><tbody>
{body}
</tbody></table></body></html>
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", default=".benchmarks", type=Path)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    runs = load(args.folder)
    out = args.output or args.folder / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(runs), encoding="utf-8")
    tmp.replace(out)  # never a half-written page
    print(f"{out}: {len(runs)} saved run(s), "
          f"{len({n for r in runs for n in r.medians})} benchmark(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
