"""The ``retwin`` command line: run, validate, schema, warmup, data.

Errors are one clear line per problem on stderr; bad input exits with code 2.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import gc
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TextIO, cast

from retwin import kpis
from retwin.errors import DataError, MassBalanceError, OutputError, RetwinError, ScenarioError
from retwin.kpis import Kpi

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

# Only what every command needs is imported here: each command imports what it uses (pandas,
# Numba, pyarrow, rich's console and tables), so `retwin validate` never loads the engine,
# and `retwin run` never pays for what it does not print.

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class _Console:
    """rich's ``Console`` with the given options, made on first use; but a line of text, or
    a :class:`_Table`, that it would write as it is (no styles: output that is not a
    terminal, nothing forcing one) and without wrapping or cropping is written here directly,
    the same bytes. Importing rich's console and rendering through it was ~20 ms of a
    ``retwin run`` whose output goes to a file or a pipe.

    Everything else (``print`` with other options or several objects, markup to render,
    text to wrap, a terminal, every other attribute) is rich's own. Once rich's console
    exists, it prints everything, as it may hold state (a live display, a capture).
    """

    def __init__(self, *, stderr: bool = False, width: int | None = None,
                 soft_wrap: bool = False) -> None:
        # emoji codes off: a path or a name such as "out:smile:" is printed as it is
        self._options: dict[str, Any] = {"stderr": stderr, "highlight": False, "emoji": False,
                                         "width": width, "soft_wrap": soft_wrap}
        self._rich: Console | None = None

    @property
    def rich(self) -> Console:
        if self._rich is None:
            from rich.console import Console

            self._rich = Console(**self._options)
        return self._rich

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)

    def _file(self) -> TextIO | None:
        return sys.stderr if self._options["stderr"] else sys.stdout

    def plain(self) -> bool:
        """Whether rich would write this console's output without styles or control codes:
        its stream is not a terminal, and nothing rich reads says otherwise (the variables
        ``FORCE_COLOR``, ``TTY_COMPATIBLE``, ``TTY_INTERACTIVE``; Jupyter; Windows' legacy
        console; a stream rich redirects)."""
        if self._rich is not None or sys.platform == "win32" or \
                hasattr(builtins, "get_ipython") or \
                any(v in os.environ for v in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")):
            return False
        file = self._file()
        if file is None or hasattr(file, "rich_proxied_file"):
            return False
        try:
            return not file.isatty()
        except (AttributeError, ValueError):
            return False

    def _lines(self, obj: Any, markup: bool | None) -> list[str] | None:
        """What rich would write of ``obj``, line by line, or ``None`` if it must say."""
        width: int | None = self._options["width"]
        if isinstance(obj, _Table):
            return None if width is None else obj._plain_lines(None, width)
        if not isinstance(obj, str) or not obj.isprintable() or \
                (markup is not False and "[" in obj):
            return None  # (rich drops control codes, expands tabs, splits lines)
        if self._options["soft_wrap"]:
            return [obj]
        from rich.cells import cell_len

        return [obj] if width is not None and cell_len(obj) <= width else None

    def print(self, *objects: Any, markup: bool | None = None, **options: Any) -> None:
        if len(objects) == 1 and set(options) <= {"emoji"} and not options.get("emoji") \
                and self.plain():
            lines = self._lines(objects[0], markup)
            file = self._file()
            if lines is not None and file is not None:
                file.write("".join(f"{line}\n" for line in lines))
                file.flush()
                return
        self.rich.print(*objects, markup=markup, **options)


out = _Console(width=None if sys.stdout.isatty() else 160)
err = _Console(stderr=True, soft_wrap=True)


# --- the process ------------------------------------------------------------------------------

#: Whether this process is the ``retwin`` command (set by :func:`entry`; not when a caller
#: runs :func:`main` in its own process).
_COMMAND_PROCESS = False


@contextlib.contextmanager
def _loading() -> Any:
    """Around a command's imports of its libraries: in the ``retwin`` process, the cyclic
    garbage collector is off while they load, and what they made is then frozen out of its
    reach (:func:`gc.freeze`).

    Importing numpy, pydantic, the scenario schema, Numba and the engine makes ~90 000
    objects that live as long as the process and are never garbage; each of the ~250
    collections that their allocations set off would scan the younger ones again
    (~30 ms of a cold ``retwin run``), and every later collection all of them. New objects are
    collected as usual afterwards. In a caller's process (tests, the service's workers) this
    does nothing: what it has made is its own business.
    """
    if not _COMMAND_PROCESS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


# --- change arguments -----------------------------------------------------------------------


def _read_changes(arg: str) -> list[Any]:
    """``--change`` takes inline JSON (one change or a list) or a YAML/JSON file holding a
    change, a list of changes, or a what-if file with a ``changes:`` list.

    The file is read by the scenario reader (same bounds on size, nesting and aliases); the
    changes themselves are validated later, all together, by ``apply_changes``.
    """
    from retwin.scenario.load import read_yaml_value

    text = arg.strip()
    shown = repr(arg if len(arg) <= 60 else arg[:59] + "…")
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError([("--change", f"not valid JSON: {exc.msg} at column {exc.colno}")])\
                from None
        except (ValueError, RecursionError) as exc:  # nesting, or an int of thousands of digits
            reason = "nests too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ScenarioError([("--change", f"not valid JSON: {reason}")]) from None
    else:
        path = Path(arg)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte
            is_file = False
        if not is_file:
            raise ScenarioError([("--change", f"{shown} is neither JSON nor an existing file")])
        try:
            data = read_yaml_value(path)
        except ScenarioError as exc:
            raise ScenarioError([("--change", m) for _, m in exc.problems]) from None
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

#: The KPIs of the run table, in order; their labels, units and formats are declared in
#: :mod:`retwin.kpis`.
TABLE_KPIS: tuple[str, ...] = (
    "output.stage", "production.material", "utilisation.stage", "element.la_ce_surplus",
    "element.dy_tb_deficit", "imports.market", "exports.market", "local_conversion",
    "fill_rate.segment", "value.group", "margin.stage",
)

KEY_MATERIALS = ("concentrate", "prnd_oxide", "prnd_metal", "ndfeb_magnet", "la_oxide",
                 "ce_oxide", "magnet")


def _missing(v: Any) -> bool:
    """``None``, NaN or pandas' NA (a missing cell)."""
    if v is None:
        return True
    try:
        return math.isnan(v)
    except TypeError:  # pandas' NA and NaT refuse float(); a string is never missing
        return type(v).__name__ in ("NAType", "NaTType")


def _fmt(v: float, f: str) -> str:
    if _missing(v):
        return "–"
    return format(v, f)


class _Table:
    """A table as rich's ``Table`` draws it, written as plain text where it can be.

    It takes the options the commands use (``title``, ``title_justify``, ``show_lines``,
    ``pad_edge``; per column ``justify``, ``style``, ``no_wrap``). Printed on a console that
    writes no styles (output that is not a terminal) and where every cell fits its column
    and the table fits the console, it is drawn here, line by line: the text rich would
    write, byte for byte, for a fraction of its time (rich measures and renders cell by cell:
    ~60 ms of ``retwin run``). Anything else (styles to write, a table to shrink or wrap,
    an option not listed, a character that is not printable) is drawn by rich itself.
    """

    _PLAIN: ClassVar[set[str]] = {"title", "title_justify", "show_lines", "pad_edge"}

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.columns: list[tuple[str, dict[str, Any]]] = []
        self.rows: list[tuple[str, ...]] = []

    def add_column(self, header: str = "", **options: Any) -> None:
        self.columns.append((header, options))

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def rich(self) -> Table:
        from rich.table import Table

        t = Table(**self.options)
        for header, options in self.columns:
            t.add_column(header, **options)
        for row in self.rows:
            t.add_row(*row)
        return t

    def __rich_console__(self, console: Any, options: Any) -> Any:
        lines = self._plain_lines(console, options.max_width) \
            if console.color_system is None and not console.legacy_windows else None
        if lines is None:
            yield self.rich()
            return
        from rich.segment import Segment

        newline = Segment.line()
        for line in lines:
            yield Segment(line)
            yield newline

    def _plain_lines(self, console: Any, max_width: int) -> list[str] | None:
        """The table's lines without styles, or ``None`` when rich must draw it."""
        o = self.options
        if set(o) - self._PLAIN or o.get("show_lines") or not self.columns or \
                o.get("title_justify", "center") != "left":
            return None
        if any(set(c) - {"justify", "style", "no_wrap"}
               or c.get("justify", "left") not in ("left", "right") for _, c in self.columns):
            return None
        from rich.cells import cell_len

        def text(value: Any) -> list[str] | None:
            if not isinstance(value, str):
                return None
            if "[" in value or "]" in value:
                from rich.markup import render

                value = render(value, emoji=False).plain
            lines = value.split("\n")
            if not all(line.isprintable() for line in lines):
                return None
            return lines

        n = len(self.columns)
        cells: list[list[list[str]]] = []
        for row in [tuple(h for h, _ in self.columns), *self.rows]:
            if len(row) > n:
                return None
            parts: list[list[str]] = []
            for v in row:
                lines = text(v)
                if lines is None:
                    return None
                parts.append(lines)
            cells.append(parts + [[""]] * (n - len(row)))
        pad_edge = o.get("pad_edge", True)
        left = [0 if i == 0 and not pad_edge else 1 for i in range(n)]
        right = [0 if i == n - 1 and not pad_edge else 1 for i in range(n)]
        inner = [max(cell_len(line) for row in cells for line in row[i]) for i in range(n)]
        widths = [inner[i] + left[i] + right[i] for i in range(n)]
        if not all(inner):
            return None  # an empty column: rich draws its blank lines its own way
        table_width = sum(widths) + n + 1
        if table_width > max_width:
            return None  # rich shrinks the columns and wraps their cells
        out: list[str] = []
        title = o.get("title")
        if title:
            title_lines = text(title)
            if title_lines is None or len(title_lines) != 1 or \
                    cell_len(title_lines[0]) > table_width:
                return None
            out.append(title_lines[0] + " " * (table_width - cell_len(title_lines[0])))

        def rule(start: str, fill: str, mid: str, end: str) -> str:
            return start + mid.join(fill * w for w in widths) + end

        def row_lines(parts: list[list[str]], bar: str, header: bool) -> list[str]:
            height = max(len(p) for p in parts)
            lines = []
            for k in range(height):
                segs = []
                for i, p in enumerate(parts):
                    at = k - (height - len(p)) if header else k  # a header sits at the bottom
                    line = p[at] if 0 <= at < len(p) else ""
                    if self.columns[i][1].get("justify") == "right":
                        line = line.rstrip()
                        body = " " * (inner[i] - cell_len(line)) + line
                    else:
                        body = line + " " * (inner[i] - cell_len(line))
                    segs.append(" " * left[i] + body + " " * right[i])
                lines.append(bar + bar.join(segs) + bar)
            return lines

        out.append(rule("┏", "━", "┳", "┓"))
        out += row_lines(cells[0], "┃", True)
        out.append(rule("┡", "━", "╇", "┩"))
        for body in cells[1:]:
            out += row_lines(body, "│", False)
        out.append(rule("└", "─", "┴", "┘"))
        return out


def _table(**options: Any) -> _Table:
    return _Table(**options)


def _kpi_label(k: Kpi, key: str) -> str:
    """A row's label: the KPI's, its key unless it has one fixed key, and its unit when the
    KPI declares one that is not a fraction shown as a percentage (``Output value · total
    (亿元)``, ``Margin · magnet``)."""
    label = k.label if k.per == "none" else f"{k.label} · {key}"
    if k.unit is None or k.kind == "share" or k.unit == "fraction":
        return label
    return f"{label} ({k.unit})"


def _cells(frame: pd.DataFrame, columns: tuple[str, ...]) -> dict[tuple[str, str, int],
                                                                    tuple[Any, ...]]:
    """A tidy KPI frame's ``columns`` by ``(kpi, key, year)`` (the first row of a repeated
    key, as a frame indexed by them would give), read column by column, not cell by cell."""
    keys = zip(frame["kpi"].tolist(), frame["key"].tolist(), frame["year"].tolist(),
               strict=True)
    values = zip(*(frame[c].tolist() for c in columns), strict=True)
    out: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    for k, v in zip(keys, values, strict=True):
        out.setdefault(k, v)
    return out


def _kpi_table(
    summary: pd.DataFrame | dict[tuple[str, str, int], tuple[Any, ...]], years: list[int],
    diff: pd.DataFrame | None, bands: bool, title: str
) -> _Table:
    t = _table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    t.add_column("KPI", style="bold", no_wrap=True)
    for y in years:
        t.add_column(str(y), justify="right")
    s = summary if isinstance(summary, dict) else _cells(summary, ("mean", "p5", "p95"))
    d = _cells(diff, ("mean",)) if diff is not None else None
    keys_of: dict[str, dict[str, None]] = {}
    for kpi, key, _ in s:  # each KPI's keys in the order of the summary's rows
        keys_of.setdefault(kpi, {})[key] = None
    for kpi in TABLE_KPIS:
        decl = kpis.get(kpi)
        f = decl.fmt
        keys = list(keys_of.get(kpi, ()))
        if kpi == "production.material":
            keys = [k for k in keys if k in KEY_MATERIALS]
        for key in keys:
            cells = []
            for y in years:
                row = s.get((kpi, key, y))
                if row is None:
                    cells.append("–")
                    continue
                mean, p5, p95 = row
                cell = _fmt(mean, f)
                if bands and p5 != p95:
                    cell += f"\n[dim][{_fmt(p5, f)}–{_fmt(p95, f)}][/dim]"
                if d is not None and (kpi, key, y) in d:
                    dv = d[(kpi, key, y)][0]
                    if abs(dv) > 1e-9 * max(1.0, abs(mean)):
                        sign = "+" if dv > 0 else ""
                        style = "green" if dv > 0 else "red"
                        cell += f"\n[{style}]Δ {sign}{_fmt(dv, f)}[/{style}]"
                cells.append(cell)
            t.add_row(_kpi_label(decl, key), *cells)
    return t


def _bottleneck_table(first: Any, years: list[int]) -> _Table:
    t = _table(title="Binding constraint per stage (share of plant-days) and bottleneck",
               title_justify="left", pad_edge=False)
    t.add_column("Stage", style="bold")
    for y in years:
        t.add_column(str(y), justify="right")
    stages, bind_years, constraints, shares = (c.tolist() for c in first.binding_columns)
    # per stage and year, the constraint with the largest share (a tie: the last row, as a
    # stable sort by share would put it)
    top: dict[tuple[str, int], tuple[float, str]] = {}
    for stage, year, constraint, share in zip(stages, bind_years, constraints, shares,
                                              strict=True):
        best = top.get((stage, year))
        if best is None or share >= best[0]:
            top[(stage, year)] = (share, constraint)
    for stage in dict.fromkeys(stages):
        cells = []
        for y in years:
            best = top.get((stage, y))
            cells.append(f"{best[1]} {best[0]:.0%}" if best is not None else "–")
        t.add_row(stage, *cells)
    per_year = {year: (stage, constraint)
                for year, stage, constraint, _ in first.bottleneck_rows}
    t.add_row("[b]bottleneck[/b]",
              *[f"[b]{per_year[y][0]}[/b] ({per_year[y][1]})" for y in years])
    return t


def _target_table(first: Any) -> _Table:
    t = _table(title="Targets", title_justify="left", pad_edge=False)
    for col in ("Target", "Year", "Goal", "Model", "Unit", "Attained"):
        t.add_column(col, justify="right" if col in ("Goal", "Model") else "left")
    for _, name, year, goal, value, unit, attained in first.target_rows:
        f = ",.1f" if abs(goal) >= 100 else ".3g"
        t.add_row(name, str(year), _fmt(goal, f), _fmt(value, f), unit,
                  "[green]yes[/green]" if attained else "[red]no[/red]")
    return t


# --- outputs -------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """``text`` with control characters escaped, so a hostile path stays on its line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cannot_write(option: str, value: str, exc: OutputError) -> int:
    """Report an output that was refused or failed: one line naming the option, the path
    and the reason; exit code 2. Nothing was written (see retwin._files)."""
    hint = "; add --force to replace it" if exc.replaceable else ""
    err.out(_one_line(f"error: {option} {value}: {exc.reason}{hint}"), highlight=False)
    return EXIT_BAD_INPUT


# --- commands ------------------------------------------------------------------------------


class _NoProgress:
    """What rich's ``Progress`` does where it is disabled (``err`` is not a terminal):
    nothing, without importing it."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        return cast("TaskID", 0)

    def update(self, task_id: TaskID, **fields: Any) -> None:
        return None


def _progress() -> Progress | _NoProgress:
    if err.plain():
        return _NoProgress()
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    console=err.rich, transient=True, disable=not err.is_terminal)


def cmd_run(a: argparse.Namespace) -> int:
    with _loading():
        from retwin import whatif
        from retwin.storage import check_result_dir

    if a.out is not None:  # refused before the run, not after it
        try:
            check_result_dir(a.out, overwrite=a.force)
        except OutputError as exc:
            return _cannot_write("--out", a.out, exc)
    changes: list[Any] = []
    for c in a.change or []:
        changes += _read_changes(c)
    w = whatif.resolve(a.scenario, changes)
    with _progress() as prog:
        bars: dict[str, Any] = {}

        def progress(part: str, done: int, total: int) -> None:
            if part not in bars:
                bars[part] = prog.add_task(part, total=total)
            prog.update(bars[part], completed=done)

        res = whatif.run(w, replications=a.replications, seed=a.seed, progress=progress)
    diff = res.difference
    first = res.whatif.first
    years = first.years
    title = f"{w.scenario.name}: annual KPIs, seed {a.seed}"
    if a.replications > 1:
        title += f", mean of {a.replications} replications [p5–p95]"
    if diff is not None:
        title += "; Δ = what-if − baseline (common random numbers)"
    out.print(_kpi_table(res.whatif.kpi_cells(), years, diff, a.replications > 1, title))
    for note in res.notes:
        out.print(f"Note: {note}", markup=False, emoji=False)
    out.print(_bottleneck_table(first, years))
    if w.scenario.targets:
        out.print(_target_table(first))
    b = first.balance
    out.print(f"Mass balance closes: worst material residual {abs(b.material).max():.3g}, "
              f"worst element residual {abs(b.element).max():.3g} t REO.")
    if a.out is not None:
        try:
            path = whatif.save(res, a.out, fmt=a.format, overwrite=a.force)
        except OutputError as exc:
            return _cannot_write("--out", a.out, exc)
        out.print(f"Results written to {path}", markup=False, emoji=False)
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    """Every problem of every file, one line each (``FILE: path: message``); exit code 2 if
    any file is invalid. Names and paths are printed as plain text, escaped to one line."""
    from retwin.errors import printable
    from retwin.scenario.load import load_scenario

    bad = 0
    for f in a.files:
        name = printable(f)
        try:
            sc = load_scenario(f)
        except (ScenarioError, DataError) as exc:
            bad += 1
            lines = exc.lines() if isinstance(exc, ScenarioError) else [f"data error: {exc}"]
            for line in lines:
                err.print(f"{name}: {line}", markup=False, emoji=False)
            continue
        out.print(f"{name}: ok ({printable(sc.name)}: {len(sc.plants)} plants, "
                  f"{len(sc.materials)} materials, {sc.start}..{sc.end}, "
                  f"{len(sc.changes)} timed changes)", markup=False, emoji=False)
    return EXIT_BAD_INPUT if bad else 0


def cmd_schema(a: argparse.Namespace) -> int:
    from retwin._files import write_output_file
    from retwin.scenario.schema import Scenario

    text = json.dumps(Scenario.model_json_schema(by_alias=True), indent=2, ensure_ascii=False)
    if a.output != "-":
        try:
            write_output_file(a.output, text + "\n", force=a.force)
        except OutputError as exc:
            return _cannot_write("-o", a.output, exc)
        out.print(f"JSON Schema written to {a.output}", markup=False, emoji=False)
    else:
        sys.stdout.write(text + "\n")
    return 0


def _byte_compile(package: Path) -> bool:
    """Write the bytecode of every module under ``package`` (``__pycache__``), so that a
    new process reads it instead of compiling the source: ~0.1 s of a cold ``retwin run``
    where Python is told not to write bytecode itself (``PYTHONDONTWRITEBYTECODE``, or a
    read-only install's first run). Up-to-date files are kept; a folder that cannot be
    written is left as it is (the modules then compile as they are imported)."""
    import compileall

    return bool(compileall.compile_dir(package, quiet=2, workers=1))


#: The chains ``retwin warmup`` compiles a kernel of their own for, when given none: the
#: reference model (the service's baseline and ``make run``'s).
WARMUP_CHAINS = ("baotou-2024",)


def cmd_warmup(a: argparse.Namespace) -> int:
    import importlib.util

    import retwin

    _byte_compile(Path(retwin.__file__).parent)
    service = importlib.util.find_spec("retwin_service")  # its worker processes import it
    if service is not None and service.origin is not None:
        _byte_compile(Path(service.origin).parent)
    from retwin.engine.run import warmup

    names = [n for n in a.scenarios or WARMUP_CHAINS if n != "none"]
    chains = [retwin.load_scenario(n) for n in names]  # every one checked before compiling
    seconds = warmup(*chains)
    specialised = f" (with the chain kernel of {', '.join(c.name for c in chains)})" \
        if chains else ""
    out.print(f"Kernels ready in {seconds:.2f} s{specialised}", markup=False)
    return 0


# --- sweep ---------------------------------------------------------------------------------


def _short_values(values: dict[str, Any], width: int = 70) -> str:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(v: Any) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return str(v)
    a = abs(v)
    return _fmt(v, ",.0f" if a >= 1e4 else ",.1f" if a >= 100 else ".4g")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


def _sweep_tables(res: Any) -> None:
    """After a study: the ranked sensitivity table, or (few points) each point's KPIs."""
    spec = res.spec
    if spec.is_oat:
        sens = res.sensitivity()
        for kpi, grp in sens.groupby("kpi", sort=False):
            t = _table(title=f"Sensitivity of {kpi} (mean over {spec.replications} "
                      "replications), largest swing first", title_justify="left", pad_edge=False)
            for col in ("Rank", "Parameter", "Low", "High", f"{kpi} at low", "at base",
                        "at high", "Swing"):
                t.add_column(col, justify="left" if col == "Parameter" else "right")
            for r in grp.itertuples():
                t.add_row(str(r.rank), str(r.parameter), _num(r.value_low),
                          _num(r.value_high), _num(r.kpi_low), _num(r.kpi_base),
                          _num(r.kpi_high), _num(r.swing))
            out.print(t)
        return
    points = res.manifest["points"]
    if len(points) > 20 or not spec.kpis:
        return
    # the means of this session's results when it ran every point (no dataset read back)
    means = res.point_means()
    t = _table(title=f"KPIs per point (mean over {spec.replications} replications)",
              title_justify="left", pad_edge=False)
    t.add_column("Point")
    names = [p.label for p in spec.vary]
    for n in names:
        t.add_column(n, justify="right")
    for k in spec.kpis:
        t.add_column(k, justify="right")
    for row in points:
        cells = [_num(row["values"].get(n)) for n in names]
        got = means.get(row["point"], {})
        cells += [_num(got[k]) if k in got else "–" for k in spec.kpis]
        t.add_row(str(row["point"]), *cells)
    out.print(t)


def cmd_sweep(a: argparse.Namespace) -> int:
    from retwin.batch.executors import (
        Executor,
        ProcessExecutor,
        forkserver_available,
        stop_fork_server,
    )

    executor: Executor | None = None
    if a.dask is None and a.workers > 1 and forkserver_available():
        # This process runs one study and ends: its workers are forked from a server that
        # loads retwin and the kernels once, while this process reads and checks the study.
        executor = ProcessExecutor(a.workers, start_method="forkserver")
        executor.boot()
    try:
        return _sweep(a, executor)
    finally:
        if executor is not None:
            executor.close()
            stop_fork_server()


def _sweep(a: argparse.Namespace, executor: Any) -> int:
    import signal
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from retwin.batch import BatchInterrupted, BatchProgress, run_batch

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} runs/s" if task.speed else "– runs/s")

    live = err.is_terminal
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("runs"), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err.rich, transient=True, disable=not live)
    task_id: list[Any] = []
    t0 = time.perf_counter()

    def report(p: BatchProgress) -> None:
        if not task_id:
            done = (f"; {p.points_done} points ({p.runs_done:,} runs) already done, kept"
                    if p.runs_done else "")
            err.print(f"sweep {p.study}: {p.points_total:,} points, {p.runs_total:,} runs on "
                      f"{p.where} -> {a.out}{done}", markup=False)
            task_id.append(prog.add_task(p.study, total=p.runs_total, completed=p.runs_done))
            return
        prog.update(task_id[0], completed=p.runs_done)
        if p.point is not None and not live:
            err.print(f"point {p.points_done}/{p.points_total} {p.point.id} "
                      f"({_short_values(p.point.values)}) done in {p.task_seconds:.1f} s; "
                      f"runs {p.runs_done:,}/{p.runs_total:,}, {p.rate:,.0f} runs/s, "
                      f"ETA {_duration(p.eta_s)}", markup=False)

    try:
        with prog:
            res = run_batch(a.spec, a.out, workers=a.workers, dask=a.dask, progress=report,
                            record="daily" if a.daily else None, executor=executor,
                            interrupt_signals=(signal.SIGINT, signal.SIGTERM))
    except OutputError as exc:
        return _cannot_write("--out", a.out, exc)
    except BatchInterrupted as exc:
        err.print(f"interrupted: {exc.points_done} of {exc.points_total} points done "
                  f"({exc.runs_done:,} of {exc.runs_total:,} runs) in {exc.out}; run the same "
                  "command again to resume", markup=False)
        return 130
    c = res.manifest["counts"]
    out.print(f"{res.manifest['study']}: {c['points_done']:,} points, {c['runs_done']:,} runs "
              f"in {time.perf_counter() - t0:.1f} s; results in {res.path}: "
              + ", ".join(f"{t}/" for t in res.tables) + ", points.parquet, manifest.json"
              + (", sensitivity.parquet" if res.spec.is_oat else ""), markup=False)
    _sweep_tables(res)
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from retwin._files import atomic_write
    from retwin.scenario.data import (
        build_manifest,
        check_manifest,
        load_fitted,
        load_parameters,
        reference_dir,
    )

    params = load_parameters()
    if a.write_manifest:
        path = reference_dir() / "data" / "manifest.json"
        atomic_write(path, (json.dumps(build_manifest(), indent=2, ensure_ascii=False)
                            + "\n").encode("utf-8"))
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
    fitted = load_fitted()
    if fitted:
        out.print(f"{len(fitted)} fitted values (data/fitted.csv, written by `retwin fit`)")
        params = {**params, **fitted}
    if a.key:
        for k in a.key:
            if k not in params:
                err.print(f"unknown key {k!r}", markup=False)
                return EXIT_BAD_INPUT
            prm = params[k]
            out.print(f"{prm.key} = {prm.value:g} {prm.unit} ({prm.year or 'n.y.'}, {prm.flag}) — "
                      f"{prm.source}; {prm.basis}", markup=False)
    return EXIT_BAD_INPUT if problems else 0


def _service(command: str) -> Any:
    """The service's commands (:mod:`retwin_service.commands`, imported only now: retwin
    never needs the service), or ``None`` after one line saying what to install when the
    ``api`` extra is missing."""
    try:
        import retwin_service.commands as service
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing in ("", "retwin", "retwin_service"):
            raise  # a broken installation of retwin itself, not a missing extra
        err.print(f"error: retwin {command} needs the service's packages, and {missing} is "
                  "not installed: pip install 'retwin[api]'", markup=False)
        return None
    return service


def cmd_serve(a: argparse.Namespace) -> int:
    service = _service("serve")
    if service is None:
        return EXIT_BAD_INPUT
    settings = service.settings(host=a.host, port=a.port, workers=a.workers)
    refusal = service.public_without_token(settings)
    if refusal is not None:
        err.print(f"error: {refusal}", markup=False)
        return EXIT_BAD_INPUT
    url = service.url(settings)
    out.print(f"retwin service on {url} — API docs at {url}/docs (Ctrl-C stops it)")
    out.print(f"data in {settings.data_dir}", markup=False)
    service.serve(settings)
    return 0


def cmd_token(a: argparse.Namespace) -> int:
    if a.action in ("create", "revoke") and not a.name:
        err.print(f"error: token {a.action} needs a NAME", markup=False)
        return EXIT_BAD_INPUT
    service = _service("token")
    if service is None:
        return EXIT_BAD_INPUT
    reg = service.open_registry(service.settings())
    try:
        if a.action == "create":
            rec, token = reg.create_token(a.name)
            out.print(f"token {rec.id} for {rec.name!r} (shown once; keep it secret):",
                      markup=False)
            sys.stdout.write(token + "\n")
        elif a.action == "list":
            t = _table(title="API tokens", title_justify="left", pad_edge=False)
            for col in ("id", "name", "created", "revoked"):
                t.add_column(col)
            for r in reg.list_tokens():
                t.add_row(r.id, r.name, f"{r.created_at:%Y-%m-%d %H:%M}",
                          f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
            out.print(t)
        else:
            n = reg.revoke_token(a.name)
            if n == 0:
                err.print(f"error: no active token with id or name {a.name!r}", markup=False)
                return EXIT_BAD_INPUT
            out.print(f"revoked {n} token{'s' if n > 1 else ''}")
    except service.RegistryError as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_BAD_INPUT
    finally:
        reg.close()
    return 0


# --- validation: back-cast, fit, report ------------------------------------------------------


def _pct(v: Any, signed: bool = False) -> str:
    if _missing(v):
        return "–"
    return format(float(v), "+.1%" if signed else ".1%")


def _backcast_tables(bc: Any) -> tuple[_Table, _Table]:
    t = _table(title=f"{bc.model}: simulated against reported; error = simulated / reported − 1. "
              "Fitted years were used by `retwin fit`, held-out years were not.",
              title_justify="left", pad_edge=False)
    for col in ("Observable", "Year", "Split", "Reported", "Simulated", "Error", "Tolerance",
                "Figure used (other sources)"):
        t.add_column(col, justify="right" if col in ("Reported", "Simulated", "Error",
                                                     "Tolerance") else "left")
    for r in bc.table.itertuples():
        e = _pct(r.error_frac, signed=True)
        if r.within_tolerance is not None:
            e = f"[green]{e}[/green]" if r.within_tolerance else f"[red]{e}[/red]"
        src = r.reported_key + (f" ({r.alternatives})" if r.alternatives else "")
        t.add_row(r.label, str(r.year), r.split, _fmt(r.reported, ",.0f"),
                  _fmt(r.simulated, ",.0f"), e, _pct(r.tolerance_frac), src)
    s = _table(title="Errors by observable (|error|)", title_justify="left", pad_edge=False)
    for col in ("Observable", "Split", "N", "Mean", "Max", "Tolerance", "Within"):
        s.add_column(col, justify="left" if col in ("Observable", "Split") else "right")
    for r in bc.summary().itertuples():
        within = "–" if r.within_tolerance is None else (
            "[green]yes[/green]" if r.within_tolerance else "[red]no[/red]")
        s.add_row(r.label, r.split, str(r.n), _pct(r.mean_abs_error_frac),
                  _pct(r.max_abs_error_frac), _pct(r.tolerance_frac), within)
    return t, s


def cmd_backcast(a: argparse.Namespace) -> int:
    from retwin._files import write_output_file

    # refused before the model and its engine are even imported
    if a.csv is not None and (refused := _refused("--csv", a.csv, a.force)) is not None:
        return refused
    from retwin.validation import backcast

    bc = backcast(a.model)
    for table in _backcast_tables(bc):
        out.print(table)
    out.print("Fitted values (data/fitted.csv): "
              + ", ".join(f"{k} = {v:.6g}" for k, v in bc.values.items()), markup=False)
    if a.csv:
        try:
            write_output_file(a.csv, bc.table.to_csv(index=False), force=a.force)
        except OutputError as exc:
            return _cannot_write("--csv", a.csv, exc)
        out.print(f"Comparison table written to {a.csv}", markup=False)
    if a.strict and not bc.held_out_within_tolerance:
        err.print("held-out errors exceed their tolerance (see the table)", markup=False)
        return EXIT_FAILED
    return 0


def cmd_fit(a: argparse.Namespace) -> int:
    from retwin.batch.executors import stop_fork_server, usable_cores
    from retwin.validation import FIT_YEARS, fit, fitted_diff, write_fitted

    # (the polish asks for 7 trials at a time, a generation for 56: more workers than 8
    # would mostly wait, each holding a model and its kernels)
    workers = min(usable_cores(), 8) if a.workers is None else a.workers
    try:
        with _progress() as prog:
            task = prog.add_task(f"fit on {FIT_YEARS[0]}-{FIT_YEARS[-1]}", total=None)
            res = fit(a.model, progress=lambda n: prog.update(task, completed=n),
                      workers=workers)
    finally:
        if workers > 1:
            stop_fork_server()  # the command leaves no process behind
    diff = fitted_diff(res)
    t = _table(title=f"Fit of {res.model} on {FIT_YEARS[0]}-{FIT_YEARS[-1]}: {res.evaluations} "
              f"runs, final cost {res.cost:.4g} ({res.message})", title_justify="left",
              pad_edge=False)
    for col in ("Parameter", "Committed", "Fitted", "Change"):
        t.add_column(col, justify="left" if col == "Parameter" else "right")
    for row in diff.to_dict("records"):
        t.add_row(str(row["key"]), _fmt(row["committed"], ".6g"), _fmt(row["fitted"], ".6g"),
                  _pct(row["change_frac"], signed=True))
    out.print(t)
    rt = _table(title="Residuals at the fitted values", title_justify="left", pad_edge=False)
    for col in ("Residual", "Year", "Value"):
        rt.add_column(col, justify="right" if col == "Value" else "left")
    for r in res.residuals.itertuples():
        rt.add_row(str(r.what), str(r.year), _pct(r.residual, signed=True))
    out.print(rt)
    if a.dry_run:
        out.print("Dry run: data/fitted.csv not written.")
        return 0
    path = write_fitted(res)
    out.print(f"Fitted values written to {path}; data/manifest.json updated.", markup=False)
    return 0


def _refused(option: str, path: str, force: bool) -> int | None:
    """The exit code of a refused output file ``path`` (given as ``option``), checked
    before a long work's imports; ``None`` when it may be written."""
    from retwin._files import check_output_file

    try:
        check_output_file(path, force=force)
    except OutputError as exc:
        return _cannot_write(option, path, exc)
    return None


def cmd_validation_report(a: argparse.Namespace) -> int:
    if (refused := _refused("--html", a.html, a.force)) is not None:
        return refused
    from retwin.validation import write_report

    try:
        path = write_report(a.html, a.model, force=a.force)
    except OutputError as exc:
        return _cannot_write("--html", a.html, exc)
    out.print(f"Validation report written to {path}", markup=False)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    if (refused := _refused("--html", a.html, a.force)) is not None:
        return refused
    from retwin.report.html import write_report
    from retwin.report.why import WhyError

    try:
        with _progress() as prog:
            bars: dict[str, Any] = {}

            def progress(part: str, done: int, total: int) -> None:
                if part not in bars:
                    bars[part] = prog.add_task(f"why: {part}", total=total)
                prog.update(bars[part], completed=done)

            path = write_report(a.html, a.source, a.baseline, lang=a.lang, force=a.force,
                                why=a.why, progress=progress)
    except OutputError as exc:
        return _cannot_write("--html", a.html, exc)
    except (FileNotFoundError, WhyError) as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_BAD_INPUT
    out.print(f"Report written to {path}", markup=False)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retwin", description="Rare-earth industrial-chain twin.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a scenario and print its annual KPIs")
    r.add_argument("scenario", help="a scenario file or a reference model name (baotou-2024)")
    r.add_argument("--change", action="append", metavar="FILE|JSON",
                   help="a what-if change (repeatable): inline JSON or a YAML/JSON file")
    r.add_argument("--replications", type=int, default=1, metavar="N")
    r.add_argument("--seed", type=int, default=0, metavar="S")
    r.add_argument("--out", metavar="DIR", help="write series, flows, kpis and a manifest to "
                   "a new (or empty) folder")
    r.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    r.add_argument("--force", action="store_true", help="let --out replace an earlier result "
                   "folder of retwin run (never other files or folders)")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check scenario files; one line per problem")
    v.add_argument("files", nargs="+")
    v.set_defaults(fn=cmd_validate)

    s = sub.add_parser("schema", help="write the scenario JSON Schema")
    s.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    s.add_argument("--force", action="store_true",
                   help="replace an existing file (never a folder or anything else)")
    s.set_defaults(fn=cmd_schema)

    w = sub.add_parser("warmup", help="compile the kernels (fills the on-disk cache)")
    w.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="scenario files or reference model names whose chains get a flow "
                        "kernel compiled for their structure, once per machine (default: "
                        f"{WARMUP_CHAINS[0]}); 'none' for the general kernels alone")
    w.set_defaults(fn=cmd_warmup)

    sw = sub.add_parser("sweep", help="run a batch study (sweep, Monte Carlo, sensitivity) "
                        "into a Parquet dataset; run again to resume")
    sw.add_argument("spec", help="a study spec (YAML): base, changes, vary, replications, seed")
    sw.add_argument("--out", required=True, metavar="DIR", help="the output directory")
    where = sw.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, metavar="N",
                       help="local processes (default 1: this process)")
    where.add_argument("--dask", metavar="ADDRESS",
                       help="a Dask scheduler, e.g. tcp://host:8786 (needs retwin[dist])")
    sw.add_argument("--daily", action="store_true",
                    help="keep daily series too (default: the spec's record, monthly)")
    sw.set_defaults(fn=cmd_sweep)

    d = sub.add_parser("data", help="check data/ against its manifest; show parameters")
    d.add_argument("--write-manifest", action="store_true")
    d.add_argument("key", nargs="*", help="parameter keys to show with their source")
    d.set_defaults(fn=cmd_data)

    bk = sub.add_parser("backcast", help="run a back-cast model and compare it with the record, "
                        "fitted and held-out years apart")
    bk.add_argument("model", nargs="?", default="china-2020",
                    help="a back-cast model file or name (default china-2020)")
    bk.add_argument("--csv", metavar="FILE", help="write the comparison table as CSV")
    bk.add_argument("--force", action="store_true",
                    help="replace an existing file (never a folder or anything else)")
    bk.add_argument("--strict", action="store_true",
                    help="exit 1 when a held-out error exceeds its tolerance")
    bk.set_defaults(fn=cmd_backcast)

    ft = sub.add_parser("fit", help="re-fit the back-cast's free parameters on the fitted years "
                        "and rewrite data/fitted.csv (shows the diff)")
    ft.add_argument("model", nargs="?", default="china-2020",
                    help="the back-cast model (default china-2020)")
    ft.add_argument("--dry-run", action="store_true", help="show the fit; write nothing")
    ft.add_argument("--workers", type=int, metavar="N",
                    help="local processes evaluating the search's trials at once (default: "
                    "the cores this process may use, at most 8; 1: this process). The fit "
                    "is the same")
    ft.set_defaults(fn=cmd_fit)

    vr = sub.add_parser("validation-report", help="write the validation report: back-cast "
                        "errors, charts, source ranges, Baotou against its seeds (HTML)")
    vr.add_argument("--html", required=True, metavar="FILE", help="the HTML file to write")
    vr.add_argument("--force", action="store_true",
                    help="replace an existing file (never a folder or anything else)")
    vr.add_argument("--model", default="china-2020", help="the back-cast model")
    vr.set_defaults(fn=cmd_validation_report)

    rp = sub.add_parser("report", help="write one self-contained HTML report of a result "
                        "directory (charts, Sankey) or a sweep directory (tornado, distributions)")
    rp.add_argument("source", metavar="DIR", help="a result directory (retwin run --out) or a "
                    "sweep directory (retwin sweep --out)")
    rp.add_argument("--html", required=True, metavar="FILE", help="the HTML file to write")
    rp.add_argument("--baseline", metavar="DIR", help="a baseline result directory to compare "
                    "with (drawn dashed and side by side)")
    rp.add_argument("--lang", choices=("en", "zh"), default="en", help="label language")
    rp.add_argument("--why", action="store_true", help="take each headline card's Δ apart "
                    "over the result's changes: runs each change alone (and, with three or "
                    "more, all but each) with the result's seed and replications, paired with "
                    "--baseline (needed: the result's own baseline directory)")
    rp.add_argument("--force", action="store_true",
                    help="replace an existing file (never a folder or anything else)")
    rp.set_defaults(fn=cmd_report)

    sv = sub.add_parser("serve", help="start the what-if service (HTTP API, docs at /docs)")
    sv.add_argument("--host", help="address to listen on (default 127.0.0.1, RETWIN_HOST)")
    sv.add_argument("--port", type=int, help="port (default 8000, RETWIN_PORT)")
    sv.add_argument("--workers", type=int, help="worker processes (RETWIN_WORKERS)")
    sv.set_defaults(fn=cmd_serve)

    tk = sub.add_parser("token", help="API tokens of the service: create, list, revoke")
    tk.add_argument("action", choices=("create", "list", "revoke"))
    tk.add_argument("name", nargs="?", help="owner name (create) or token id/name (revoke)")
    tk.set_defaults(fn=cmd_token)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    if getattr(a, "replications", 1) < 1:
        err.print(f"--replications(={a.replications}) must be >= 1")
        return EXIT_BAD_INPUT
    workers = getattr(a, "workers", None)  # (None: the command's default)
    if workers is not None and workers < 1:
        err.print(f"--workers(={workers}) must be >= 1")
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


def entry() -> None:
    """The ``retwin`` command: :func:`main`, then exit with its code. An interrupted command
    (code 130) has already written what it keeps and killed its worker processes; it exits at
    once, as the process pool's own threads could otherwise hold the process at exit.

    Before the interpreter shuts down, every object left is frozen out of the garbage
    collector's reach: its collections at shutdown would otherwise scan all of them (the
    libraries' and the command's, ~100 ms after a ``retwin run``) to find the few cycles that
    a process about to end need not free. Exit handlers, and the closing of files, still run.
    """
    global _COMMAND_PROCESS
    _COMMAND_PROCESS = True
    code = main()
    gc.freeze()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
