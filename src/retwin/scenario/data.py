"""Reference data: the parameter table in ``data/`` and its manifest.

Every number about the world that a reference model uses lives in ``data/parameters.csv``
with its unit, year, reliability flag and source; the values fitted to history by
``retwin fit`` live in ``data/fitted.csv`` (same columns). Model files refer to rows of either
by key inside formulas (``"= {yield.sx_recovery_frac} * 2"``); :func:`resolve_formulas`
replaces them. ``data/manifest.json`` records each file's sha256, so a changed table is noticed.
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import json
import math
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from retwin.errors import DataError, ScenarioError

__all__ = [
    "FITTED_FILE",
    "Parameter",
    "build_manifest",
    "check_manifest",
    "check_tree_shape",
    "evaluate_formula",
    "formula_parameters",
    "load_fitted",
    "load_parameters",
    "models_dir",
    "reference_dir",
    "resolve_formulas",
    "resolve_formulas_collect",
]

_KEY = re.compile(r"\{([a-z0-9_]+(?:\.[a-z0-9_]+)+)\}")
FLAGS = frozenset({"A", "B", "C", "seed", "derived", "estimate"})
PARAMETER_COLUMNS = ("key", "value", "unit", "year", "flag", "source", "basis")


@dataclass(frozen=True)
class Parameter:
    """One row of ``data/parameters.csv``."""

    key: str
    value: float
    unit: str
    year: str
    flag: str
    source: str
    basis: str


def reference_dir() -> Path:
    """The folder holding ``data/`` and ``models/``.

    ``RETWIN_REFERENCE_DIR`` wins; else the source checkout (``…/data`` next to ``src/``);
    else the copy shipped inside the installed package.
    """
    env = os.environ.get("RETWIN_REFERENCE_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    checkout = here.parents[3]
    if (checkout / "data" / "parameters.csv").is_file():
        return checkout
    return here.parents[1] / "_reference"


def models_dir() -> Path:
    return reference_dir() / "models"


#: The table ``retwin fit`` writes next to ``parameters.csv``; read with it when present.
FITTED_FILE = "fitted.csv"


@lru_cache(maxsize=8)
def _read_parameters(path: str, mtime_ns: int = 0) -> dict[str, Parameter]:
    # mtime_ns is part of the cache key only: a table rewritten in this process is read again
    p = Path(path)
    if not p.is_file():
        raise DataError(f"parameter table not found: {p}")
    out: dict[str, Parameter] = {}
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != PARAMETER_COLUMNS:
            raise DataError(f"{p.name}: columns must be {', '.join(PARAMETER_COLUMNS)}")
        for n, row in enumerate(reader, start=2):
            key = row["key"]
            if key in out:
                raise DataError(f"{p.name} line {n}: duplicate key {key!r}")
            try:
                value = float(row["value"])
            except ValueError:
                raise DataError(
                    f"{p.name} line {n}: value(={row['value']!r}) of {key!r} is not a number"
                ) from None
            if row["flag"] not in FLAGS:
                raise DataError(
                    f"{p.name} line {n}: flag(={row['flag']!r}) of {key!r} must be one of "
                    f"{', '.join(sorted(FLAGS))}"
                )
            if not row["source"].strip():
                raise DataError(f"{p.name} line {n}: {key!r} has no source")
            out[key] = Parameter(key, value, row["unit"], row["year"], row["flag"],
                                 row["source"], row["basis"])
    return out


def _read(path: Path) -> dict[str, Parameter]:
    mtime = path.stat().st_mtime_ns if path.is_file() else 0
    return _read_parameters(str(path), mtime)


def load_parameters(path: Path | None = None) -> dict[str, Parameter]:
    """The parameter table as ``key -> Parameter`` (cached per path and modification time)."""
    return _read(Path(path) if path is not None else reference_dir() / "data" / "parameters.csv")


def load_fitted() -> dict[str, Parameter]:
    """The fitted values of ``data/fitted.csv`` (written by ``retwin fit``); empty if absent."""
    path = reference_dir() / "data" / FITTED_FILE
    return _read(path) if path.is_file() else {}


def formula_parameters() -> dict[str, Parameter]:
    """What formulas may refer to: ``parameters.csv`` and ``fitted.csv`` together (a key in
    both is a :class:`DataError`). The same mapping while neither file changes (do not
    change it)."""
    global _MERGED
    params, fitted = load_parameters(), load_fitted()
    if not fitted:
        return params
    held = _MERGED
    if held is not None and held[0] is params and held[1] is fitted:
        return held[2]
    both = sorted(set(params) & set(fitted))
    if both:
        raise DataError(f"{FITTED_FILE}: keys also in parameters.csv: {', '.join(both)}")
    merged = {**params, **fitted}
    _MERGED = (params, fitted, merged)
    return merged


#: The last merge of :func:`formula_parameters`, with the two tables it was made of.
_MERGED: tuple[dict[str, Parameter], dict[str, Parameter], dict[str, Parameter]] | None = None
#: The values of the formulas evaluated against :func:`formula_parameters`, for that mapping
#: (a model read again evaluates none of its formulas again); emptied past 20,000.
_VALUES: tuple[dict[str, Parameter], dict[str, float]] | None = None
_VALUES_MAX = 20_000


def _values_for(params: dict[str, Parameter]) -> dict[str, float]:
    """The formula values kept for ``params`` (the current :func:`formula_parameters`)."""
    global _VALUES
    held = _VALUES
    if held is None or held[0] is not params or len(held[1]) > _VALUES_MAX:
        held = _VALUES = (params, {})
    return held[1]


#: Bounds on a formula, so that no input can make the evaluator slow, deep or overflow: its
#: length, its size (AST nodes, so evaluation time is bounded too), its nesting, the size of an
#: exponent and the arguments of a function. Every intermediate result must be finite.
MAX_FORMULA_CHARS = 1000
MAX_FORMULA_NODES = 300
MAX_FORMULA_DEPTH = 50
MAX_EXPONENT = 100.0
MAX_FUNCTION_ARGS = 50
MAX_ROUND_DIGITS = 15

#: Bounds on the shape of a scenario or change tree (after YAML or JSON parsing): how deep
#: mappings and lists nest, and how many values it holds in all.
MAX_NESTING = 32
MAX_TREE_NODES = 1_000_000


def _pow(a: float, b: float) -> float:
    if abs(b) > MAX_EXPONENT:
        raise ValueError(f"exponent(={b:g}) must be within ±{MAX_EXPONENT:g}")
    if a == 0 and b < 0:
        raise ZeroDivisionError
    try:
        return math.pow(a, b)  # unlike **, never a complex number
    except ValueError:
        raise ValueError(f"{a:g} ** {b:g} has no real result") from None


_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: _pow,
}


def _round(x: float, ndigits: float = 0.0) -> float:
    if ndigits != int(ndigits) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round's digits(={ndigits:g}) must be a whole number within "
                         f"±{MAX_ROUND_DIGITS}")
    return float(round(x, int(ndigits)))


#: Functions a formula may call, with the number of arguments each takes.
_FUNCS: dict[str, tuple[Callable[..., float], int, int]] = {
    "min": (lambda *a: min(a), 1, MAX_FUNCTION_ARGS),
    "max": (lambda *a: max(a), 1, MAX_FUNCTION_ARGS),
    "round": (_round, 1, 2),
}


def _short(text: str, width: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def formula_keys(text: str) -> set[str]:
    """The data keys (``{key}``) formula ``text`` names."""
    return set(_KEY.findall(text))


def evaluate_formula(text: str, params: dict[str, Parameter]) -> float:
    """Evaluate ``= expr`` where ``expr`` uses numbers, + - * / **, min/max/round and ``{key}``.

    The formula is bounded (:data:`MAX_FORMULA_CHARS` characters, :data:`MAX_FORMULA_NODES`
    AST nodes nested at most :data:`MAX_FORMULA_DEPTH` deep, exponents within
    ±:data:`MAX_EXPONENT`, at most :data:`MAX_FUNCTION_ARGS` arguments) and every intermediate
    result must be a finite real number. Raises ``ValueError`` naming the formula and the
    unknown key, the construct that is not allowed or the bound it breaks.
    """
    shown = repr(_short(text))
    if len(text) > MAX_FORMULA_CHARS:
        raise ValueError(f"formula {shown} has {len(text)} characters; at most "
                         f"{MAX_FORMULA_CHARS} are allowed")
    body = text.strip()
    if body.startswith("="):
        body = body[1:]
    names: dict[str, float] = {}

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in params:
            raise ValueError(f"formula {shown}: unknown data key {{{key}}} (not in "
                             "data/parameters.csv)")
        name = f"_r{len(names)}"
        names[name] = params[key].value
        return name

    tree = _parsed_formula(_KEY.sub(sub, body).strip(), shown)

    def finite(v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"formula {shown}: a result is out of range (not finite)")
        return v

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if (isinstance(node, ast.Constant) and isinstance(node.value, int | float)
                and not isinstance(node.value, bool)):
            return finite(float(node.value))
        if isinstance(node, ast.Name) and node.id in names:
            return finite(names[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return finite(_BINOPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
            and not any(isinstance(a, ast.Starred) for a in node.args)
        ):
            fn, least, most = _FUNCS[node.func.id]
            if not least <= len(node.args) <= most:
                raise ValueError(f"formula {shown}: {node.func.id}() takes {least} to {most} "
                                 f"arguments, not {len(node.args)}")
            return finite(float(fn(*(ev(a) for a in node.args))))
        raise ValueError(f"formula {shown}: {ast.dump(node)[:40]}… is not allowed")

    try:
        return ev(tree)
    except ZeroDivisionError:
        raise ValueError(f"formula {shown} divides by zero") from None
    except OverflowError:
        raise ValueError(f"formula {shown}: a result is out of range (not finite)") from None
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("formula "):
            raise
        raise ValueError(f"formula {shown}: {msg}") from None


@functools.lru_cache(maxsize=4096)
def _parsed_formula(expr: str, shown: str) -> ast.Expression:
    """A formula's expression (its data keys named ``_r0``, ``_r1``… in order) parsed and
    its size checked; kept, as a model's formulas are evaluated again with other values (a
    fit's trials, a reloaded model). The tree is only read. A formula that fails raises
    each time (``lru_cache`` keeps no exceptions)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"formula {shown} is not a valid expression") from None
    _check_formula_shape(tree, shown)
    return tree


def _check_formula_shape(tree: ast.AST, shown: str) -> None:
    """Count the nodes and measure the depth of a parsed formula without recursing."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_FORMULA_NODES:
            raise ValueError(f"formula {shown} has more than {MAX_FORMULA_NODES} terms and "
                             "operators")
        if depth > MAX_FORMULA_DEPTH:
            raise ValueError(f"formula {shown} nests deeper than {MAX_FORMULA_DEPTH} levels")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def check_tree_shape(tree: Any, path: str = "") -> None:
    """Raise :class:`ScenarioError` if ``tree`` nests deeper than :data:`MAX_NESTING` or holds
    more than :data:`MAX_TREE_NODES` values (also stops a self-referencing mapping)."""
    count = 0
    stack: list[tuple[Any, tuple[Any, ...]]] = [(tree, ())]
    while stack:
        node, loc = stack.pop()
        count += 1
        if count > MAX_TREE_NODES:
            raise ScenarioError([(path, f"holds more than {MAX_TREE_NODES:,} values")])
        if isinstance(node, dict | list) and len(loc) >= MAX_NESTING:
            raise ScenarioError([(_path(path, loc), f"nests deeper than {MAX_NESTING} levels")])
        if isinstance(node, dict):
            stack.extend((v, (*loc, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*loc, i)) for i, v in enumerate(node))


def _path(path: str, loc: tuple[Any, ...]) -> str:
    """``plants[0].recipe`` from a location (list positions as ``[i]``, keys shortened)."""
    out = path
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool) and part.bit_length() < 64:
            out += f"[{part}]"
        else:
            text = str(part) if not isinstance(part, int) else f"<{part.bit_length()}-bit int>"
            text = text if len(text) <= 40 else text[:39] + "…"
            out += f".{text}" if out else text
    return out


def resolve_formulas(tree: Any, params: dict[str, Parameter] | None = None, path: str = "",
                     leave: Callable[[str], bool] | None = None) -> Any:
    """Return a copy of a parsed YAML tree with every ``"= …"`` string evaluated (but those
    ``leave`` is true of, left as written).

    Every bad formula is reported (one problem each, at its path) in one
    :class:`ScenarioError`; so is a tree too deep or too large (see :func:`check_tree_shape`).
    """
    out, problems = resolve_formulas_collect(tree, params, path, leave)
    if problems:
        raise ScenarioError([(where, msg) for where, _, msg in problems])
    return out


def resolve_formulas_collect(
    tree: Any, params: dict[str, Parameter] | None = None, path: str = "",
    leave: Callable[[str], bool] | None = None,
) -> tuple[Any, list[tuple[str, tuple[Any, ...], str]]]:
    """:func:`resolve_formulas` that returns its problems instead of raising them: the tree
    (a bad formula left as written) and ``(path, location, message)`` per bad formula, the
    location being the tuple of keys and indices that leads to it."""
    check_tree_shape(tree, path)
    problems: list[tuple[str, tuple[Any, ...], str]] = []
    values: dict[str, float] | None = None  # (kept only for the default parameters)

    def walk(node: Any, loc: tuple[Any, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*loc, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(node)]
        if (isinstance(node, str) and node.lstrip().startswith("=")
                and (leave is None or not leave(node))):
            nonlocal params, values
            if params is None:
                params = formula_parameters()
                values = _values_for(params)
            known = None if values is None else values.get(node)
            if known is not None:
                return known
            try:
                value = evaluate_formula(node, params)
                if values is not None:
                    values[node] = value
                return value
            except ValueError as exc:
                problems.append((_path(path, loc), loc, str(exc)))
                return node
        return node

    return walk(tree, ()), problems


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_manifest(data_dir: Path | None = None) -> dict[str, Any]:
    """Describe every CSV in ``data/``: rows, columns, sha256, and the flags used."""
    d = data_dir or reference_dir() / "data"
    files: dict[str, Any] = {}
    for f in sorted(d.glob("*.csv")):
        with f.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        entry: dict[str, Any] = {
            "sha256": _sha256(f),
            "rows": len(rows),
            "columns": list(rows[0].keys()) if rows else [],
        }
        if rows and "flag" in rows[0]:
            flags: dict[str, int] = {}
            for r in rows:
                flags[r["flag"]] = flags.get(r["flag"], 0) + 1
            entry["flags"] = dict(sorted(flags.items()))
        files[f.name] = entry
    return {
        "description": "Reference tables of retwin; every number has a unit, year, flag and "
        "source (a seed file under shared/seeds or a row of reference/domain_data.md).",
        "files": files,
    }


def check_manifest(data_dir: Path | None = None) -> list[str]:
    """Problems between ``data/manifest.json`` and the files (empty when all agree)."""
    d = data_dir or reference_dir() / "data"
    mf = d / "manifest.json"
    if not mf.is_file():
        return [f"{mf} is missing; run `retwin data --write-manifest`"]
    recorded = json.loads(mf.read_text(encoding="utf-8"))["files"]
    actual = build_manifest(d)["files"]
    problems = []
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: in the manifest but not in data/")
        elif name not in recorded:
            problems.append(f"{name}: in data/ but not in the manifest")
        elif recorded[name]["sha256"] != actual[name]["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems
