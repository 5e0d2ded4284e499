"""Hostile input: every class of bad scenario or change input is refused with one clear line
per problem — :class:`ScenarioError` from Python, exit code 2 from the CLI — and never
crashes, hangs, eats memory or lets a bad value through to a run.

The classes (one regression test each, parametrised over hostile examples, through the Python
API and the CLI): non-finite and absurd numbers; formulas that overflow or explode; text that
UTF-8 cannot encode; YAML that expands or nests without bound; files that are not scenarios;
and inputs with several problems, all of which are reported at once. A hypothesis suite then
throws generated hostile changes and files at ``validate`` and ``run --change``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retwin
from conftest import TINY_PATH
from retwin import ScenarioError
from retwin.batch.spec import load_spec
from retwin.cli import main
from retwin.scenario import load as load_mod
from retwin.scenario import parse_changes
from retwin.scenario.data import evaluate_formula, formula_parameters
from retwin.scenario.schema import Scenario

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

NAN, INF = float("nan"), float("inf")

#: One valid change of each kind, for the tiny model.
VALID: dict[str, dict[str, Any]] = {
    "quota": {"kind": "quota", "quota": "mining", "factor": 0.9, "from": "2025-01-01"},
    "price": {"kind": "price", "material": "magnet", "factor": 1.2, "ramp_days": 30},
    "capacity": {"kind": "capacity", "plant": "mine", "factor": 0.5},
    "plant": {"kind": "plant", "action": "add", "from": "2024-06-01",
              "plant": {"id": "mine2", "name": "Mine 2", "stage": "mining",
                        "capacity_tpa": 1000, "extracts": True,
                        "recipe": {"outputs": {"concentrate": 1}, "inputs": {"ore": 9}}}},
    "outage": {"kind": "outage", "plant": "mine", "from": "2024-02-01", "to": "2024-02-10",
               "capacity_frac": 0.5},
    "demand": {"kind": "demand", "segment": "motors", "factor": 1.1},
    "trade": {"kind": "trade", "market": "magnet_out", "side": "export", "cap_tpa": 10},
    "reserve": {"kind": "reserve", "material": "concentrate", "reserve_t": 10},
    "parameter": {"kind": "parameter", "path": "plants.mine.capacity_tpa", "value": 100},
}


def with_field(kind: str, path: str, value: Any) -> dict[str, Any]:
    """``VALID[kind]`` with the (dotted) field ``path`` set to ``value``; the other members of
    an exactly-one group are dropped so that only the field under test can be wrong."""
    change = copy.deepcopy(VALID[kind])
    groups = [("set_t_reo", "factor", "delta_t_reo"), ("factor", "value_cny_per_unit"),
              ("set_tpa", "factor", "delta_tpa"), ("factor", "growth_frac_per_year"),
              ("cap_tpa", "factor"), ("reserve_t", "delta_t")]
    head, *rest = path.split(".")
    if not rest:
        for group in groups:
            if head in group:
                for other in group:
                    change.pop(other, None)
    node = change
    for part in path.split(".")[:-1]:
        node = node[part]
    node[path.split(".")[-1]] = value
    return change


def problem_lines(exc: pytest.ExceptionInfo[ScenarioError]) -> list[str]:
    lines = exc.value.lines()
    for line in lines:  # one printable line each, that UTF-8 can encode
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        line.encode("utf-8")
    return lines


def cli(*args: str) -> tuple[int, str, str]:
    """``retwin ARGS`` in-process: exit code, stdout, stderr. Any exception escaping ``main``
    (a traceback) fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, err: str, n_lines: int | None = None) -> list[str]:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(ln.strip() for ln in lines)
    if n_lines is not None:
        assert len(lines) == n_lines, lines
    return lines


@pytest.fixture(scope="module")
def base() -> Scenario:
    return retwin.load_scenario("tiny")


@pytest.fixture(params=["c", "python"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's loader and with PyYAML's pure-Python one."""
    loader = yaml.SafeLoader if request.param == "python" else getattr(
        yaml, "CSafeLoader", None)
    if loader is None:
        pytest.fail("PyYAML was built without libyaml; the C loader cannot be tested")
    monkeypatch.setattr(load_mod, "_YAML_LOADER", loader)
    return str(request.param)


# --- 1. numbers: finite and in a physical range -----------------------------------------------

#: Every number field of every change kind (dotted for the fields of an added plant).
NUMBER_FIELDS = [
    ("quota", "set_t_reo"), ("quota", "factor"), ("quota", "delta_t_reo"), ("quota", "batch"),
    ("price", "factor"), ("price", "value_cny_per_unit"), ("price", "ramp_days"),
    ("capacity", "set_tpa"), ("capacity", "factor"), ("capacity", "delta_tpa"),
    ("capacity", "ramp_days"), ("outage", "capacity_frac"), ("demand", "factor"),
    ("demand", "growth_frac_per_year"), ("trade", "cap_tpa"), ("trade", "factor"),
    ("reserve", "reserve_t"), ("reserve", "delta_t"), ("parameter", "value"),
    ("plant", "plant.capacity_tpa"), ("plant", "plant.utilisation_max_frac"),
    ("plant", "plant.lead_time_days"), ("plant", "plant.recipe.outputs.concentrate"),
]
BAD_NUMBERS = [NAN, INF, -INF, 1e308, -1e308]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize(("kind", "field"), NUMBER_FIELDS, ids=lambda x: str(x))
def test_non_finite_or_absurd_number_in_a_change_is_refused(
    base: Scenario, kind: str, field: str, value: float
) -> None:
    change = with_field(kind, field, value)
    for call in (lambda: parse_changes([change]), lambda: retwin.apply_changes(base, [change])):
        with pytest.raises(ScenarioError) as exc:
            call()
        lines = problem_lines(exc)
        assert any(ln.startswith(f"changes[0].{field}: ") for ln in lines), lines
        assert any(f"{value:.6g}" in ln for ln in lines), lines  # the value is named


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e308", "1e999"])
def test_non_finite_number_in_change_json_exits_2(text: str) -> None:
    change = f'{{"kind": "quota", "quota": "mining", "factor": {text}}}'
    code, _, err = cli("run", str(TINY_PATH), "--change", change)
    [line] = assert_refused(code, err, 1)
    assert line.startswith("error: changes[0].factor: ")


@pytest.mark.parametrize(("path", "value"), [
    ("plants.0.capacity_tpa", NAN), ("plants.0.capacity_tpa", 1e12),
    ("pools.0.initial_t", INF), ("materials.1.price.base_cny_per_unit", 1e300),
    ("materials.1.price.volatility_per_year", 1e6), ("demand.0.base_units_per_year", -INF),
    ("demand.0.intensity_per_unit", NAN), ("markets.0.export.cap_tpa", 1e20),
    ("markets.1.import.price_factor", 1e9), ("quotas.0.annual_t_reo.2024", NAN),
    ("targets.0.value", INF), ("targets.0.year", 10**12),
    ("plants.0.recipe.inputs.ore", 1e300), ("materials.0.composition_t_reo_per_unit.La", NAN),
])
def test_non_finite_or_absurd_number_in_a_scenario_is_refused(
    tiny_tree: dict[str, Any], tmp_path: Path, path: str, value: float
) -> None:
    node: Any = tiny_tree
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if last.isdigit() and isinstance(node, dict) and int(last) in node
         else last] = value
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    field = last if not last.isdigit() else parents[-1]
    assert any(field in ln for ln in problem_lines(exc))
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(tiny_tree), encoding="utf-8")
    code, _, err = cli("validate", str(f))
    [line] = assert_refused(code, err, 1)
    assert field in line


def test_every_number_and_text_of_the_schema_is_bounded() -> None:
    """The rule is kept by construction: every number of the scenario and change schemas has
    a lower and an upper bound, stated in its description, and every text a maximum length
    (or a pattern or fixed values). A new field without bounds fails here."""
    defs = Scenario.model_json_schema(by_alias=True)["$defs"]
    unbounded = []

    def leaves(prop: dict[str, Any]) -> list[dict[str, Any]]:
        subs = [prop, *prop.get("anyOf", [])]
        subs += [s["items"] for s in subs if isinstance(s.get("items"), dict)]
        subs += [s["additionalProperties"] for s in subs
                 if isinstance(s.get("additionalProperties"), dict)]
        return subs

    for model, schema in defs.items():
        for name, prop in schema.get("properties", {}).items():
            for sub in leaves(prop):
                if sub.get("type") in ("number", "integer"):
                    if not ({"minimum", "exclusiveMinimum"} & set(sub)
                            and {"maximum", "exclusiveMaximum"} & set(sub)):
                        unbounded.append(f"{model}.{name}")
                    elif "Range: " not in prop.get("description", ""):
                        unbounded.append(f"{model}.{name} (no range in its description)")
                if sub.get("type") == "string" and not (
                        {"maxLength", "enum", "const", "format"} & set(sub)):
                    unbounded.append(f"{model}.{name}")
    # a parameter change's value is checked before it is typed (finite, within ±1e15)
    assert unbounded == ["ParameterChange.value", "ParameterChange.value"]


# --- 2. formulas: bounded evaluation ----------------------------------------------------------

HOSTILE_FORMULAS = [
    "= 10 ** 400", "= 9 ** 9 ** 9", "= 10 ** 10 ** 10", "= 1e308 * 10", "= (-8) ** 0.5",
    "= 0 ** -1", "= min()", "= max()", "= round()", "= round(1, 2, 3)", "= round(1, 1e9)",
    "= round(1e308 * 1e308)", "= min(*[1, 2])", "= 1" + "0" * 500,
    "= " + "(" * 300 + "1" + ")" * 300, "= " + "max(" * 60 + "1" + ")" * 60,
    "= " + "-" * 400 + "1",
    "= " + " + ".join(["1"] * 30_000), "= " + "+".join(["1"] * 400),
    "= __import__('os').system('true')", "= [1] * 10 ** 9", "= 'a' * 10 ** 9",
    "= 1 if 1 else 2", "= lambda: 1", "= True", "= 1j", "= x\x00", "= )",
]


@pytest.mark.parametrize("formula", HOSTILE_FORMULAS, ids=lambda f: f[:30])
def test_hostile_formula_is_one_clear_error(
    formula: str, tiny_tree: dict[str, Any], base: Scenario, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="formula") as exc:
        evaluate_formula(formula, formula_parameters())
    assert len(str(exc.value)) < 300  # the formula is quoted, shortened
    tiny_tree["plants"][2]["capacity_tpa"] = formula
    with pytest.raises(ScenarioError) as sc_exc:
        retwin.load_scenario(tiny_tree)
    [line] = problem_lines(sc_exc)
    assert line.startswith("plants[2].capacity_tpa: formula ")
    change = {"kind": "capacity", "plant": "mine", "set_tpa": formula}
    with pytest.raises(ScenarioError) as ch_exc:
        retwin.apply_changes(base, [change])
    [line] = problem_lines(ch_exc)
    assert line.startswith("changes[0].set_tpa: formula ")
    f = tmp_path / "change.yaml"
    f.write_text(yaml.safe_dump(change), encoding="utf-8")
    code, _, err = cli("run", str(TINY_PATH), "--change", str(f))
    [line] = assert_refused(code, err, 1)
    assert line.startswith("error: changes[0].set_tpa: formula ")


def test_formula_within_the_bounds_still_works() -> None:
    params = formula_parameters()
    assert evaluate_formula("= 2 ** 10 + max(1, 2, 3) - round(2.567, 2)", params) == (
        1024 + 3 - 2.57)
    assert evaluate_formula("= " + " + ".join(["1"] * 40), params) == 40
    assert evaluate_formula("= 1.0001 ** 100", params) == pytest.approx(1.0001 ** 100)


# --- 3. text: encodable UTF-8, bounded --------------------------------------------------------

BAD_TEXT = ["\ud800", "ok\udfffok", "\udc80" * 3, "x" * 2001]


@pytest.mark.parametrize("text", BAD_TEXT, ids=["surrogate", "inner", "escaped", "long"])
@pytest.mark.parametrize(("kind", "field"), [
    ("quota", "note"), ("plant", "plant.name"), ("plant", "plant.source"),
    ("parameter", "value"), ("parameter", "path"),
])
def test_text_that_cannot_be_stored_is_refused_in_a_change(
    base: Scenario, kind: str, field: str, text: str
) -> None:
    change = with_field(kind, field, text)
    if field == "value":
        change["path"] = "plants.mine.name"
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [change])
    lines = problem_lines(exc)
    assert any(ln.startswith(f"changes[0].{field}: ") or ln.startswith("plants[0](mine).name")
               for ln in lines), lines
    code, _, err = cli("run", str(TINY_PATH), "--change", json.dumps(change))
    assert_refused(code, err)


@pytest.mark.parametrize("where", ["name", "description", "plants.0.name", "materials.0.source",
                                   "targets.0.kpi"])
def test_text_that_cannot_be_stored_is_refused_in_a_scenario(
    tiny_tree: dict[str, Any], where: str
) -> None:
    node: Any = tiny_tree
    *parents, last = where.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = "bad \ud800 text"
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    [line] = problem_lines(exc)
    assert "lone surrogate" in line and line.split(":")[0].endswith(last)


def test_an_error_quoting_hostile_text_stays_one_printable_line() -> None:
    change = {"kind": "quota", "quota": "Mining\n\x1b[31mred\ud800", "factor": 0.5}
    with pytest.raises(ScenarioError) as exc:
        parse_changes([change])
    [line] = problem_lines(exc)
    assert "\\n" in line and "\\x1b" in line and "\\ud800" in line
    code, _, err = cli("run", str(TINY_PATH), "--change",
                       json.dumps(change, ensure_ascii=True))
    assert_refused(code, err, 1)


# --- 4. YAML: bounded size, nesting and aliases -----------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*lol{i - 1}"] * 9)
        lines.append(f"lol{i}: &lol{i} [{refs}]")
    return "\n".join(lines) + "\nname: laughs\n"


#: In-process examples stay small enough (9**6 values expanded) that a regression fails
#: rather than exhausting the machine; the full nine levels run in a capped child below.
HOSTILE_YAML = {
    "billion-laughs": (billion_laughs(6), "once its aliases are expanded"),
    "many-aliases": ("a: &a 1\nb: [" + ", ".join(["*a"] * 600) + "]\n", "aliases"),
    "deep-flow": ("name: " + "[" * 10_000 + "]" * 10_000 + "\n", "nest"),
    "deep-block": ("".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "v\n",
                   "nests deeper than"),
    "deep-through-aliases": (
        "a: &a " + "[" * 20 + "]" * 20 + "\n" + "b: &b " + "[" * 15 + "*a" + "]" * 15 + "\n",
        "nests deeper than"),
    "too-large": ("name: x\ndescription: " + "x" * (5 * 1024 * 1024) + "\n", "larger than"),
}


@pytest.mark.parametrize("name", list(HOSTILE_YAML))
def test_hostile_yaml_is_refused_quickly(
    name: str, yaml_loader: str, tmp_path: Path
) -> None:
    text, message = HOSTILE_YAML[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(f)
    [line] = problem_lines(exc)
    assert line.startswith(f"{name}.yaml: ") and message in line
    with pytest.raises(ScenarioError, match=message):
        load_spec(f)
    code, _, err = cli("validate", str(f))
    [line] = assert_refused(code, err, 1)
    assert message in line
    code, _, err = cli("run", str(TINY_PATH), "--change", str(f))
    [line] = assert_refused(code, err, 1)
    assert line.startswith("error: --change: ") and message in line


def test_reference_models_are_within_the_yaml_bounds(yaml_loader: str) -> None:
    for f in sorted((TINY_PATH.parent).glob("**/*.yaml")):
        load_mod.read_yaml(f)


_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    import retwin, retwin.cli, retwin.scenario.load, retwin.batch.spec  # imported before the limit
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + 512 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = retwin.cli.main(sys.argv[1:])
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"code": code, "growth_kib": growth}))
""")


@pytest.mark.parametrize("how", ["validate", "run --change"])
def test_billion_laughs_costs_no_memory(how: str, tmp_path: Path) -> None:
    """In a child whose address space is capped 512 MiB above what it has mapped, so that a
    regression fails (MemoryError) instead of eating the machine."""
    f = tmp_path / "laughs.yaml"
    f.write_text(billion_laughs(), encoding="utf-8")
    args = ["validate", str(f)] if how == "validate" else [
        "run", str(TINY_PATH), "--change", str(f)]
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2
    assert result["growth_kib"] < 64 * 1024
    assert "once its aliases are expanded" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- 5. files that are not scenarios: one line, exit 2, nothing echoed ------------------------

SECRET = "sk-THIS-MUST-NOT-BE-ECHOED"


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


NOT_SCENARIOS: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "latin-1": ("name: café\n".encode("latin-1"), "not UTF-8 text"),
    "nul-byte": (b"name: a\x00b\n", "not valid YAML"),
    "bad-date": (b"name: x\nstart: 2025-13-45\n", "not valid YAML"),
    "huge-int": (b"name: " + b"1" * 5000 + b"\n", "not valid YAML"),
    "python-tag": (b"name: !!python/object/apply:os.system [true]\n", "not valid YAML"),
    "syntax": (f"name: [{SECRET}\n".encode(), "not valid YAML"),
    "list": (b"- 1\n- 2\n", "must be a mapping"),
}


@pytest.mark.parametrize("name", list(NOT_SCENARIOS))
def test_a_file_that_is_no_scenario_is_one_line(name: str, yaml_loader: str,
                                                 tmp_path: Path) -> None:
    data, message = NOT_SCENARIOS[name]
    f = _write_bytes(tmp_path / f"{name}.yaml", data)
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(f)
    [line] = problem_lines(exc)
    assert message in line and SECRET not in line
    code, _, err = cli("validate", str(f))
    [line] = assert_refused(code, err, 1)
    assert message in line and SECRET not in err
    code, _, err = cli("run", str(f))
    assert_refused(code, err, 1)


@pytest.mark.parametrize(("files", "start", "message"), [
    ({"a.yaml": "base: b\nname: a\n", "b.yaml": "base: a\nname: b\n"}, "a.yaml",
     "base: overlays form a cycle: a.yaml -> b.yaml -> a.yaml"),
    ({"a.yaml": "base: a\nname: a\n"}, "a.yaml", "base: overlays form a cycle: a.yaml -> a.yaml"),
    ({"a.yaml": "base: b\n", "b.yaml": "base: c\n", "c.yaml": "base: b\n"}, "a.yaml",
     "base: overlays form a cycle: b.yaml -> c.yaml -> b.yaml"),
    ({"a.yaml": "base: secret.txt\nname: a\n",
      "secret.txt": f"password: hunter2\napi_key: {SECRET}\n"}, "a.yaml",
     "base: 'secret.txt' is not a scenario file"),
    ({"a.yaml": "base: secret.txt\nname: a\n", "secret.txt": f"[{SECRET}\n"}, "a.yaml",
     "secret.txt: not valid YAML"),
    ({"a.yaml": "base: secret.txt\nname: a\n", "secret.txt": f"{SECRET}\n"}, "a.yaml",
     "secret.txt: must be a mapping at the top level"),
    ({"a.yaml": "base: [1, 2]\nname: a\n"}, "a.yaml", "base: must name a scenario file"),
    ({"a.yaml": 'base: "nul\\0byte"\nname: a\n'}, "a.yaml", "not found"),
    ({"a.yaml": f"base: {'x' * 5000}\nname: a\n"}, "a.yaml", "not found"),
])
def test_bad_base_is_one_line_naming_the_problem(
    files: dict[str, str], start: str, message: str, tmp_path: Path
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tmp_path / start)
    [line] = problem_lines(exc)
    assert message in line and SECRET not in line and "hunter2" not in line
    assert len(line) < 400
    code, _, err = cli("validate", str(tmp_path / start))
    [line] = assert_refused(code, err, 1)
    assert message in line and SECRET not in err


@pytest.mark.parametrize("source", ["deep", "cyclic", "wide"])
def test_hostile_python_mapping_is_refused(tiny_tree: dict[str, Any], source: str) -> None:
    if source == "deep":
        deep: Any = 1
        for _ in range(5000):
            deep = [deep]
        tiny_tree["description"] = deep
    elif source == "cyclic":
        loop: dict[str, Any] = {}
        loop["again"] = loop
        tiny_tree["settings"] = loop
    else:  # a DAG of shared lists: a million leaves from a few objects (small enough that a
        wide: Any = [1] * 10  # regression fails rather than exhausts the machine)
        for _ in range(5):
            wide = [wide] * 10
        tiny_tree["description"] = wide
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    [line] = problem_lines(exc)
    assert "nests deeper than" in line or "holds more than" in line
    with pytest.raises(ScenarioError):
        parse_changes([{"kind": "quota", "quota": "mining", "note": tiny_tree["description"]
                        if source != "cyclic" else tiny_tree["settings"]}])


# --- 6. every problem at once -----------------------------------------------------------------


def test_every_problem_of_a_change_is_reported(base: Scenario) -> None:
    change = {"kind": "quota", "quota": "nope", "factor": NAN, "set_t_reo": 1,
              "from": "2099-01-01", "note": "\ud800"}
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, [change])
    lines = problem_lines(exc)
    assert [ln.split(": ")[0] for ln in lines] == [
        "changes[0].note", "changes[0].factor", "changes[0]", "changes[0].quota",
        "changes[0].from"]
    assert "give exactly one of set_t_reo, factor, delta_t_reo (got 2)" in lines[2]
    code, _, err = cli("run", str(TINY_PATH), "--change", json.dumps(change))
    assert_refused(code, err, 5)


def test_every_problem_of_every_change_is_reported_in_order(base: Scenario) -> None:
    changes = [
        {"kind": "quota", "quota": "mining", "factor": 1e308},
        {"kind": "capacity", "plant": "nope", "delta_tpa": -INF},
        {"kind": "quota", "quota": "mining", "factor": "= 9 ** 9 ** 9"},
        {"kind": "price", "material": "nope", "factor": "= min()"},
        {"kind": "outage", "plant": "mine", "from": "2024-03-01", "to": "2024-02-01"},
        {"kind": "teleport"},
        {"kind": "demand", "segment": "motors", "factor": 2},  # fine
    ]
    expected = ["changes[0].factor", "changes[1].delta_tpa", "changes[1].plant",
                "changes[2].factor", "changes[3].factor", "changes[3].material", "changes[4]",
                "changes[5]"]
    with pytest.raises(ScenarioError) as exc:
        retwin.apply_changes(base, changes)
    assert [ln.split(": ")[0] for ln in problem_lines(exc)] == expected
    code, _, err = cli("run", str(TINY_PATH), "--change", json.dumps(changes))
    lines = assert_refused(code, err, len(expected))
    assert [ln.split(": ")[1] for ln in lines] == expected


def test_validate_reports_formulas_fields_and_changes_together(
    tiny_tree: dict[str, Any], tmp_path: Path
) -> None:
    tiny_tree["plants"][0]["capacity_tpa"] = "= 10 ** 400"
    tiny_tree["plants"][1]["capacity_tpa"] = NAN
    tiny_tree["pools"][0]["initial_t"] = -1
    tiny_tree["changes"] = [{"kind": "quota", "quota": "mining", "factor": INF},
                            {"kind": "outage", "plant": "mine", "from": "2024-02-01"}]
    with pytest.raises(ScenarioError) as exc:
        retwin.load_scenario(tiny_tree)
    where = [ln.split(": ")[0] for ln in problem_lines(exc)]
    assert where == ["plants[0].capacity_tpa", "plants[1](separation).capacity_tpa",
                     "pools[0].initial_t", "changes[0].factor", "changes[1]"]
    f = tmp_path / "what.yaml"
    f.write_text(yaml.safe_dump(tiny_tree), encoding="utf-8")
    code, _, err = cli("validate", str(f))
    lines = assert_refused(code, err, 5)
    assert all(ln.startswith(f"{f}: ") for ln in lines)


def test_all_change_files_and_inline_changes_are_read(tmp_path: Path) -> None:
    f = tmp_path / "changes.yaml"
    f.write_text(yaml.safe_dump({"changes": [{"kind": "quota", "quota": "mining",
                                              "factor": -1}]}), encoding="utf-8")
    code, _, err = cli("run", str(TINY_PATH), "--change", str(f), "--change",
                       '{"kind": "capacity", "plant": "nope", "factor": 2}')
    lines = assert_refused(code, err, 2)
    assert lines[0].startswith("error: changes[0].factor: ")
    assert lines[1].startswith("error: changes[1].plant: unknown plant 'nope'")


# --- hypothesis: generated hostile input ------------------------------------------------------

FIELDS = sorted({name for kind in VALID.values() for name in kind if name != "kind"}
                | {"set_t_reo", "delta_t_reo", "batch", "value_cny_per_unit", "set_tpa",
                   "delta_tpa", "stage", "plant_id", "growth_frac_per_year", "delta_t",
                   "region", "note", "to"})
WEIRD_TEXT = ["\ud800", "\x00", "\x1b[31m", "[/bold]", "a\nb", "= 10 ** 400", "= min()",
              "= " + "+".join(["1"] * 5000), "mining", "mine", "2024-02-01", "9999-12-31",
              "", "x" * 3000, "nan", "inf", "plants.mine.capacity_tpa"]

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NAN, INF, -INF, 1e308, -1e308, 1e-308, 0.0, -0.0, 1.0, 10**400,
                     -(10**4000), 2024]),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.booleans(), st.none(),
    st.sampled_from(WEIRD_TEXT),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
    max_leaves=10)


@st.composite
def hostile_changes(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # not even a mapping
    kind = draw(st.sampled_from([*VALID, "teleport", 7, None]))
    change = copy.deepcopy(VALID[kind]) if kind in VALID and draw(st.booleans()) else {
        "kind": kind}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        change[name] = draw(values)
    if draw(st.integers(0, 19)) == 0:  # nesting far beyond any schema
        deep: Any = draw(scalars)
        # beyond the 32 levels the loaders allow, short of Python's recursion limit: the
        # test itself encodes the change, as JSON (a frame a level) or as YAML (PyYAML's
        # representer takes three frames a level, so 900 levels overflowed it)
        for _ in range(draw(st.integers(30, 200))):
            deep = [deep]
        change[draw(st.sampled_from(FIELDS))] = deep
    return change


def _finite_everywhere(node: Any) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, dict):
        return all(_finite_everywhere(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite_everywhere(v) for v in node)
    return True


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(hostile_changes(), min_size=1, max_size=3))
def test_generated_hostile_changes_are_refused_or_sound(base: Scenario, changes: list[Any]
                                                        ) -> None:
    """apply_changes either refuses with one printable line per problem, or gives a scenario
    whose every number is finite and that serialises (so a stored run can be read back)."""
    try:
        sc = retwin.apply_changes(base, changes)
    except ScenarioError as exc:
        for line in exc.lines():
            assert "\n" not in line and len(line) < 5000
            line.encode("utf-8")
        return
    dumped = sc.model_dump(mode="json", by_alias=True)
    assert _finite_everywhere(dumped)
    text = json.dumps(dumped, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")
    assert Scenario.model_validate_json(text) == sc


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
          max_examples=min(settings().max_examples, 20))
@given(changes=st.lists(hostile_changes(), min_size=1, max_size=2))
def test_generated_hostile_changes_through_run(changes: list[Any]) -> None:
    """``retwin run --change JSON``: exit code 0 or 2, never an exception."""
    code, _, err = cli("run", str(TINY_PATH), "--change",
                       json.dumps(changes, allow_nan=True, ensure_ascii=True))
    assert code in (0, 2), err
    assert "Traceback" not in err


@st.composite
def hostile_scenario_text(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    tree = yaml.safe_load(TINY_PATH.read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(1, 3))):
        node: Any = tree
        while isinstance(node, dict | list) and node and draw(st.integers(0, 3)):
            key = draw(st.sampled_from(sorted(node, key=str)) if isinstance(node, dict)
                       else st.integers(0, len(node) - 1))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            node[draw(st.sampled_from(sorted(node, key=str)))] = draw(values)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(values)
    if choice == 3:
        tree["changes"] = draw(st.lists(hostile_changes(), max_size=2))
    text = yaml.safe_dump(tree, allow_unicode=False)
    if choice == 4:
        text = text + "\n" + billion_laughs(draw(st.integers(1, 6))).replace("name:", "#")
    return text.encode("utf-8")


@settings(suppress_health_check=[HealthCheck.too_slow],
          max_examples=min(settings().max_examples, 25))
@given(data=hostile_scenario_text())
def test_generated_hostile_scenario_files_through_validate(
    data: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    f = tmp_path_factory.mktemp("hostile") / "scenario.yaml"
    f.write_bytes(data)
    code, _, err = cli("validate", str(f))
    assert code in (0, 2), err
    if code == 2:
        assert_refused(code, err)
    code, _, err = cli("run", str(TINY_PATH), "--change", str(f))
    assert code in (0, 2), err
