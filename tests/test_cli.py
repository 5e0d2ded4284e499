"""The command line, called in-process: exit codes, messages, and the files it writes."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import retwin
from conftest import REPO, TINY_PATH
from retwin.cli import main
from retwin.scenario.data import load_parameters
from retwin.scenario.load import scenario_hash

QUOTA_CUT = '{"kind": "quota", "quota": "mining", "factor": 0.8}'
CHANGE_KINDS = {"quota", "price", "capacity", "plant", "outage", "demand", "trade", "reserve",
                "parameter"}


def bad_file(tmp_path: Path) -> Path:
    tree = yaml.safe_load(TINY_PATH.read_text(encoding="utf-8"))
    tree["plants"][0]["capacity_tpa"] = -5
    tree["plants"][3]["utilisation_max_frac"] = 1.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


# --- validate -------------------------------------------------------------------------------


def test_validate_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(TINY_PATH)]) == 0
    out, err = capsys.readouterr()
    assert "tiny.yaml: ok (tiny: 5 plants, 8 materials" in out
    assert err == ""


def test_validate_bad_file_one_line_per_problem(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = bad_file(tmp_path)
    assert main(["validate", str(TINY_PATH), str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: plants[0](mine).capacity_tpa: ") and "-5" in lines[0]
    assert lines[1].startswith(f"{path}: plants[3](magnets).utilisation_max_frac: ")
    assert "1.5" in lines[1]
    assert "tiny.yaml: ok" in out  # the good file is still reported


def test_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "no/such/file.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


# --- run ------------------------------------------------------------------------------------


def test_run_prints_the_kpi_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(TINY_PATH)]) == 0
    out, err = capsys.readouterr()
    assert "tiny: annual KPIs, seed 0" in out
    for label in ("Output · mining", "Output · magnet", "Fill rate · motors", "bottleneck",
                  "Magnet output", "Mass balance closes"):
        assert label in out, label
    assert "2024" in out and "2025" in out
    assert "Traceback" not in err


def test_the_run_table_shows_margins_when_markets_are_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    """margin.stage (markets on only) has its rows, as percentages; a chain without
    markets has none."""
    assert main(["run", "tiny-markets"]) == 0
    out = capsys.readouterr().out
    for stage in ("mining", "separation", "metal", "magnet"):
        row = next((ln for ln in out.splitlines() if f"Margin · {stage} " in ln), None)
        assert row is not None and "%" in row and "fraction" not in row, (stage, row)
    assert main(["run", str(TINY_PATH)]) == 0
    assert "Margin ·" not in capsys.readouterr().out


@pytest.fixture(scope="module")
def whatif_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "whatif"
    code = main(["run", str(TINY_PATH), "--change", QUOTA_CUT, "--replications", "3",
                 "--seed", "7", "--out", str(out)])
    assert code == 0
    return out


def test_run_writes_result_files_and_manifest(whatif_dir: Path) -> None:
    names = {p.name for p in whatif_dir.iterdir()}
    for kind in ("series", "flows", "kpis", "summary", "difference"):
        assert f"{kind}.parquet" in names, kind
    assert "manifest.json" in names
    manifest = json.loads((whatif_dir / "manifest.json").read_text(encoding="utf-8"))
    tiny = retwin.load_scenario(TINY_PATH)
    whatif = retwin.apply_changes(tiny, [json.loads(QUOTA_CUT)])
    assert manifest["scenario_hash"] == scenario_hash(whatif)
    assert manifest["baseline_hash"] == scenario_hash(tiny)
    assert manifest["seed"] == 7
    assert manifest["replications"] == 3
    assert manifest["changes"] == [json.loads(QUOTA_CUT)]
    assert {"retwin", "numpy", "numba", "simpy"} <= set(manifest["versions"])
    assert manifest["versions"]["retwin"] == retwin.__version__
    assert manifest["mass_balance_closes"] is True
    assert sorted(manifest["files"]) == sorted(n for n in names if n.endswith(".parquet"))
    # no temporary directories left next to the result
    assert [p.name for p in whatif_dir.parent.iterdir()] == ["whatif"]


def test_run_parquet_values_equal_the_run(whatif_dir: Path) -> None:
    kpis = pd.read_parquet(whatif_dir / "kpis.parquet")
    assert sorted(kpis.replication.unique()) == [0, 1, 2]
    tiny = retwin.load_scenario(TINY_PATH)
    res = retwin.run(tiny, seed=7, changes=[json.loads(QUOTA_CUT)])
    first = kpis[kpis.replication == 0].drop(columns="replication").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, res.kpis.reset_index(drop=True), check_dtype=False)
    row = first[(first.kpi == "output.stage") & (first.key == "mining") & (first.year == 2024)]
    assert row.value.iloc[0] == res.kpi("output.stage", "mining", 2024)
    series = pd.read_parquet(whatif_dir / "series.parquet")
    act = series[(series.kind == "activity") & (series.id == "mine")].value.to_numpy()
    np.testing.assert_array_equal(act, res.activity[res.compiled.plant_ids.index("mine")])


def test_run_difference_file(whatif_dir: Path) -> None:
    diff = pd.read_parquet(whatif_dir / "difference.parquet")
    mining = diff[(diff.kpi == "output.stage") & (diff.key == "mining")]
    assert (mining["mean"] < 0).all()
    summary = pd.read_parquet(whatif_dir / "summary.parquet")
    assert {"mean", "p5", "p50", "p95"} <= set(summary.columns)
    assert (summary.n == 3).all()


def test_run_csv_format(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    assert main(["run", str(TINY_PATH), "--format", "csv", "--seed", "3", "--out",
                 str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"series.csv", "flows.csv", "kpis.csv", "manifest.json"} <= names
    assert not any(n.endswith(".parquet") for n in names)
    kpis = pd.read_csv(out / "kpis.csv")
    res = retwin.run(retwin.load_scenario(TINY_PATH), seed=3)
    got = kpis[(kpis.kpi == "output.stage") & (kpis.key == "magnet") & (kpis.year == 2025)]
    assert got.value.iloc[0] == pytest.approx(res.kpi("output.stage", "magnet", 2025),
                                              rel=1e-12)
    assert json.loads((out / "manifest.json").read_text())["format"] == "csv"


def test_run_change_from_a_whatif_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    f = tmp_path / "what.yaml"
    f.write_text(yaml.safe_dump({"changes": [json.loads(QUOTA_CUT)]}), encoding="utf-8")
    assert main(["run", str(TINY_PATH), "--change", str(f)]) == 0
    assert "Δ" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "message"), [
    ('{"kind": "quota", ', "error: --change: not valid JSON"),
    ("no-such-file.yaml", "is neither JSON nor an existing file"),
    ('{"kind": "outage", "plant": "nope", "from": "2024-02-01", "to": "2024-02-02"}',
     "error: changes[0].plant: unknown plant 'nope'"),
    ('"just a string"', "is neither JSON nor an existing file"),
])
def test_run_bad_change(change: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(TINY_PATH), "--change", change]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_run_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(bad_file(tmp_path)), "--out", str(tmp_path / "never")]) == 2
    assert "error: plants[0](mine).capacity_tpa" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "--seed(=-1) must be >= 0"),
    (["--replications", "0"], "--replications(=0) must be >= 1"),
])
def test_run_bad_numbers(args: list[str], message: str, capsys: pytest.CaptureFixture[str]
                         ) -> None:
    assert main(["run", str(TINY_PATH), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["sweep", "study.yaml", "--out", "o"], ["fit", "--dry-run"],
                                     ["serve"]])
def test_no_workers_is_refused_by_every_command_that_takes_them(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """One rule, one message, before anything is read or started."""
    assert main([*command, "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "--workers(=0) must be >= 1"


# --- schema ---------------------------------------------------------------------------------


def test_schema_to_file(tmp_path: Path) -> None:
    path = tmp_path / "scenario.schema.json"
    assert main(["schema", "-o", str(path)]) == 0
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["title"] == "Scenario" and schema["type"] == "object"
    assert {"name", "start", "end", "materials", "plants"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    defs = schema["$defs"]
    assert defs["Plant"]["properties"]["capacity_tpa"]["minimum"] == 0
    assert "import" in defs["Market"]["properties"]  # the alias, as in YAML files
    kinds = {d["properties"]["kind"]["const"] for name, d in defs.items()
             if name.endswith("Change") and "kind" in d.get("properties", {})}
    assert kinds == CHANGE_KINDS
    # every $ref resolves
    text = path.read_text(encoding="utf-8")
    for ref in set(part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]):
        assert ref in defs, ref


def test_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Scenario"


# --- data -------------------------------------------------------------------------------------


def test_data_shows_parameters_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    """The committed tables and manifest agree: exit 0, nothing on stderr."""
    params = load_parameters()
    key = sorted(params)[0]
    assert main(["data", key]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{len(params)} parameters; flags:" in out
    assert key in out and params[key].source in out


def test_data_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "no.such.key"]) == 2
    assert "unknown key 'no.such.key'" in capsys.readouterr().err


@pytest.fixture
def reference_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of data/ and models/, used as the reference directory."""
    root = tmp_path / "ref"
    shutil.copytree(REPO / "data", root / "data",
                    ignore=shutil.ignore_patterns("manifest.json", "__pycache__"))
    shutil.copytree(REPO / "models", root / "models")
    monkeypatch.setenv("RETWIN_REFERENCE_DIR", str(root))
    return root


def test_data_without_a_manifest_is_bad_input(reference_copy: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    key = sorted(load_parameters())[0]
    assert main(["data", key]) == 2
    out, err = capsys.readouterr()
    assert "manifest.json is missing; run `retwin data --write-manifest`" in err
    assert key in out  # the table is still shown


def test_data_manifest_written_then_checked(reference_copy: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    assert main(["data", "--write-manifest"]) == 0
    manifest: dict[str, Any] = json.loads(
        (reference_copy / "data" / "manifest.json").read_text(encoding="utf-8"))
    assert "parameters.csv" in manifest["files"]
    assert main(["data"]) == 0
    capsys.readouterr()
    csv = reference_copy / "data" / "parameters.csv"
    csv.write_text(csv.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert main(["data"]) == 2
    assert "parameters.csv: sha256 differs from the manifest" in capsys.readouterr().err


# --- the service's commands -----------------------------------------------------------------


def _cli_without(modules: tuple[str, ...], args: list[str], data_dir: Path
                 ) -> subprocess.CompletedProcess[str]:
    """``retwin ARGS`` in a fresh interpreter where ``modules`` cannot be imported (as when
    the ``api`` extra is not installed)."""
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules) + (
        f"from retwin.cli import main\nsys.exit(main({args!r}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    env["RETWIN_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


@pytest.mark.parametrize(("missing", "args"), [
    ("sqlalchemy", ["token", "list"]),
    ("fastapi", ["serve", "--port", "1"]),
    ("uvicorn", ["token", "create", "ann"]),
    ("pydantic_settings", ["serve"]),
])
def test_service_commands_without_the_api_extra_say_what_to_install(
        missing: str, args: list[str], tmp_path: Path) -> None:
    done = _cli_without((missing,), args, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert missing in lines[0] and "pip install 'retwin[api]'" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing was created


def test_the_core_runs_without_the_service(tmp_path: Path) -> None:
    """retwin itself needs none of the service's packages."""
    blocked = ("fastapi", "uvicorn", "sqlalchemy", "pydantic_settings", "retwin_service",
               "api")
    done = _cli_without(blocked, ["run", "tiny", "--change", QUOTA_CUT], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Δ = what-if − baseline" in done.stdout


def test_token_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    for k in [k for k in os.environ if k.startswith("RETWIN_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("RETWIN_DATA_DIR", str(tmp_path))
    assert main(["token", "create", "ann"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("rtw_")
    assert main(["token", "list"]) == 0
    assert "ann" in capsys.readouterr().out
    assert main(["token", "revoke", "ann"]) == 0
    assert main(["token", "revoke", "ann"]) == 2
    assert "no active token" in capsys.readouterr().err
    assert main(["token", "create"]) == 2
    monkeypatch.setenv("RETWIN_PORT", "nope")
    assert main(["serve"]) == 2
    assert "RETWIN_PORT" in capsys.readouterr().err


# --- what each command imports ----------------------------------------------------------------


def _python_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter where ``modules`` cannot be imported: it fails with an
    ImportError if it needs any of them."""
    blocked = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETWIN_")}
    return subprocess.run([sys.executable, "-c", blocked + code], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


#: Libraries that only some commands need (tables, Parquet, charts, the compiler, fitting).
HEAVY = ("pandas", "pyarrow", "plotly", "numba", "scipy", "llvmlite")


@pytest.mark.parametrize(("needs", "code"), [
    # the package and its names: loaded on first use
    ((), "import retwin; import retwin.cli; print(retwin.__version__)"),
    ((), "from retwin import ScenarioError, RetwinError, __version__"),
    # checking files needs the schema, not the engine
    ((), "from retwin.cli import main; sys.exit(main(['validate', 'models/tiny.yaml']))"),
    ((), "from retwin.cli import main; sys.exit(main(['schema']))"),
    # a run and its KPI values need the compiler, not the libraries of tables
    (("numba", "llvmlite", "scipy"),
     "import retwin; r = retwin.run(retwin.load_scenario('tiny'), seed=1); "
     "print(r.kpi('value.group', 'total', 2024), len(r.kpi_values), r.balance.closes)"),
    # and so does the run command's table of KPIs, binding constraints and targets
    (("numba", "llvmlite", "scipy"),
     "from retwin.cli import main; sys.exit(main(['run', 'tiny', '--replications', '2']))"),
])
def test_each_command_imports_only_what_it_uses(needs: tuple[str, ...], code: str) -> None:
    """A command that does not need a library runs where that library cannot be imported
    (start-up time: pandas, Numba and pyarrow each cost 100-200 ms to import)."""
    proc = _python_without(tuple(m for m in HEAVY if m not in needs), code)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("model", ["models/examples/quota-cut.yaml", "baotou-2024"])
def test_a_run_reads_and_validates_its_model_once(model: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``retwin run FILE`` resolves the model with its own changes and without them (the
    baseline of a what-if file) from one reading of each file, and one validation: a change
    the engine plays (the example's quota cut) joins the validated model's list of changes
    without validating the model again."""
    from retwin import whatif
    from retwin.scenario import load

    reads: list[str] = []
    validations: list[int] = []
    read, validate = load.read_yaml_value, load.validate_tree

    def counted_read(path: Path) -> Any:
        reads.append(Path(path).name)
        return read(path)

    def counted_validate(tree: dict[str, Any], skip: Any = ()) -> Any:
        validations.append(1)
        return validate(tree, skip)

    monkeypatch.setattr(load, "read_yaml_value", counted_read)
    monkeypatch.setattr(load, "validate_tree", counted_validate)
    w = whatif.resolve(str(REPO / model) if model.endswith(".yaml") else model)
    assert sorted(reads) == sorted(set(reads)) and reads
    files_with_changes = 1 if model.endswith(".yaml") else 0
    assert len(validations) == 1  # the model, once
    assert (w.baseline is not None) == bool(files_with_changes)
    assert len(w.scenario.changes) == files_with_changes


def test_a_run_does_not_load_scipy_linalg() -> None:
    """Loading the cached kernel does not import ``scipy.linalg`` (Numba imports it only to
    probe for BLAS, which the kernels do not use: ~150 ms of a cold ``retwin run``), and a
    compiled function that does use BLAS still works afterwards."""
    code = ("import sys\n"
            "from retwin.cli import main\n"
            "assert main(['run', 'tiny']) == 0\n"
            "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg loaded'\n"
            "import numba, numpy as np\n"
            "dot = numba.njit(lambda a, b: np.dot(a, b))\n"
            "assert dot(np.ones(3), np.ones(3)) == 3.0\n")
    proc = _python_without((), code)
    assert proc.returncode == 0, proc.stderr[-2000:]


#: Modules of Numba's typing and lowering registries that only a compilation reads.
NUMBA_REGISTRIES = ("numba.typed.typedlist", "numba.np.random.legacy", "numba.np.npyimpl",
                    "numba.cpython.listobj")


def test_cached_kernels_load_without_numbas_registries() -> None:
    """A run whose kernels are in the on-disk cache loads none of Numba's registries (their
    import and installation was ~100 ms of a cold ``retwin run``), and a function compiled
    afterwards, which needs them, still compiles and runs."""
    fill = _python_without((), "from retwin.cli import main; main(['run', 'tiny'])")
    assert fill.returncode == 0, fill.stderr[-2000:]  # the cache holds every kernel now
    code = ("import sys\n"
            "from retwin.cli import main\n"
            "assert main(['run', 'tiny']) == 0\n"
            f"loaded = [m for m in {NUMBA_REGISTRIES!r} if m in sys.modules]\n"
            "assert not loaded, loaded\n"
            "import numba, numpy as np\n"
            "from numba.typed import List\n"
            "@numba.njit\n"
            "def draws(n):\n"
            "    out = List()\n"
            "    for _ in range(n):\n"
            "        out.append(np.random.random())\n"
            "    return len(out)\n"
            "assert draws(5) == 5\n")
    proc = _python_without((), code)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_warmup_writes_the_bytecode_of_every_module(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``retwin warmup`` leaves the next process nothing to compile: every module of retwin
    and of the service (whose worker processes import it) has its bytecode in
    ``__pycache__`` (read even where Python writes none itself)."""
    import importlib.util

    import retwin
    import retwin_service

    sources = [(package, src)
               for package in (Path(retwin.__file__).parent,
                               Path(retwin_service.__file__).parent)
               for src in sorted(package.rglob("*.py"))]
    for _, src in sources:  # as in a fresh checkout, or after a change to every file
        Path(importlib.util.cache_from_source(str(src))).unlink(missing_ok=True)
    assert main(["warmup"]) == 0
    assert "Kernels ready" in capsys.readouterr().out
    missing = [str(s.relative_to(package.parent)) for package, s in sources
               if not Path(importlib.util.cache_from_source(str(s))).is_file()]
    assert not missing, missing


def test_warmup_compiles_the_chain_kernels_of_the_scenarios_it_is_given(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the reference model's chain gets its kernel; named scenarios get theirs
    (every name checked before anything is compiled); ``none``: the general kernels only."""
    engine_run = importlib.import_module("retwin.engine.run")  # (the package's name is `run`)
    chains: list[list[str]] = []
    monkeypatch.setattr(engine_run, "specialise_chain",
                        lambda c: chains[-1].append(c.scenario.name))
    for argv in (["warmup"], ["warmup", "tiny", "tiny-markets"], ["warmup", "none"]):
        chains.append([])
        assert main(argv) == 0
    assert chains == [["baotou-2024"], ["tiny", "tiny-markets"], []]
    out = capsys.readouterr().out
    assert "with the chain kernel of baotou-2024" in out
    assert "with the chain kernel of tiny, tiny-markets" in out

    chains.append([])
    assert main(["warmup", "tiny", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert chains[-1] == []


# --- the command's process --------------------------------------------------------------------


def test_the_command_keeps_its_libraries_out_of_the_garbage_collectors_scans() -> None:
    """In the ``retwin`` process, what the imports made is frozen out of the collector's
    reach before the run (which collects its own garbage as usual), and everything is frozen
    before the interpreter shuts down, whose collections would otherwise scan it all; the
    command's output is the same."""
    code = ("import atexit, gc, sys\n"
            "from retwin import whatif\n"
            "seen = {}\n"
            "run = whatif.run\n"
            "def watched(*args, **kwargs):\n"
            "    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())\n"
            "    return run(*args, **kwargs)\n"
            "whatif.run = watched\n"
            "def at_exit():\n"
            "    print('GC', seen['enabled'], seen['frozen'], gc.get_freeze_count(),\n"
            "          len(gc.get_objects()))\n"
            "atexit.register(at_exit)\n"
            "sys.argv = ['retwin', 'run', 'tiny']\n"
            "from retwin.cli import entry\n"
            "entry()\n")
    proc = _python_without((), code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *text, last = proc.stdout.splitlines()
    _, enabled, frozen_at_run, frozen_at_exit, tracked_at_exit = last.split()
    assert enabled == "True"  # the run's own cycles are collected
    assert int(frozen_at_run) > 50_000  # the libraries are out of the scans by then
    assert int(tracked_at_exit) < int(frozen_at_exit) // 100  # and everything at exit
    in_process = subprocess.run([sys.executable, "-c", "import sys; from retwin.cli import main;"
                                 " sys.exit(main(['run', 'tiny']))"],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "\n".join(text) + "\n" == in_process.stdout


def test_main_in_a_callers_process_leaves_its_garbage_collector_alone(
        capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    frozen = gc.get_freeze_count()
    assert main(["run", "tiny"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_the_scenario_schema_is_built_from_evaluated_annotations() -> None:
    """Every model of the scenario schema declares its fields with annotations that are
    objects, not strings pydantic must parse as the model is built (a forward reference
    compiled per field of every model, in every process that loads the schema)."""
    from pydantic import BaseModel

    from retwin.scenario import schema

    models = [m for m in vars(schema).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel]
    assert len(models) > 20
    strings = {f"{m.__name__}.{name}" for m in models
               for name, a in vars(m).get("__annotations__", {}).items() if isinstance(a, str)}
    assert not strings, sorted(strings)
