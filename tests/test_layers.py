"""The layer rule (DESIGN §3, README "Architecture") and the public API, checked on the
source with ``ast``.

kernels ← processes ← engine ← storage ← whatif ← {batch, cli} ← service: nothing imports
upward; retwin (the core) never imports the service (``retwin_service``), except the CLI's
``serve`` and ``token`` commands inside their functions; the service imports only retwin's
public modules (names in their ``__all__``), never the engine or what lies below; only
``retwin.kernels`` imports numba; only ``retwin.processes`` and ``retwin.engine`` import simpy.
Within the run, the compiled scenario (``retwin.compiled``) lies below both the engine and the
results, and the results below the engine (which makes them): kernels ← compiled ← results ←
engine. No two of the parts a run needs import each other, however indirectly. Imports
inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import importlib
import signal
from pathlib import Path

import pytest

import retwin

SRC = Path(retwin.__file__).resolve().parent

PUBLIC_API = {
    "DataError",
    "MassBalanceError",
    "OutputError",
    "ReplicationSet",
    "RetwinError",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "__version__",
    "apply_changes",
    "load_scenario",
    "prepare",
    "run",
    "run_batch",
    "run_replications",
    "warmup",
}


def _module_name(path: Path, root: Path = SRC.parent) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = SRC.parent) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # ``from retwin import engine`` imports the submodule retwin.engine
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


MODULES: dict[str, set[str]] = {
    _module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))
}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offenders(importer_ok: str | tuple[str, ...], imported: str) -> list[str]:
    allowed = (importer_ok,) if isinstance(importer_ok, str) else importer_ok
    return sorted(
        m for m, deps in MODULES.items()
        if any(_in(d, imported) for d in deps) and not any(_in(m, a) for a in allowed)
    )


def test_the_walk_sees_the_package() -> None:
    for expected in ("retwin", "retwin.kernels.flow", "retwin.engine.model",
                     "retwin.processes.base", "retwin.scenario.schema", "retwin.cli",
                     "retwin.results", "retwin.compiled"):
        assert expected in MODULES
    assert "numba" in MODULES["retwin.kernels._jit"]
    assert "simpy" in MODULES["retwin.engine.model"]


def test_only_kernels_import_numba() -> None:
    assert _offenders("retwin.kernels", "numba") == []


def test_only_processes_and_engine_import_simpy() -> None:
    assert _offenders(("retwin.processes", "retwin.engine"), "simpy") == []


@pytest.mark.parametrize("forbidden", ["numba", "simpy", "retwin.engine", "retwin.processes",
                                       "retwin.kernels", "retwin.results", "retwin.storage",
                                       "retwin.cli"])
def test_scenario_imports_nothing_of_the_run(forbidden: str) -> None:
    bad = [m for m, deps in MODULES.items() if _in(m, "retwin.scenario")
           and any(_in(d, forbidden) for d in deps)]
    assert bad == []


def test_kernels_import_only_config_and_typing() -> None:
    allowed = ("retwin.kernels", "retwin.config", "retwin._typing")
    bad = {
        m: sorted(d for d in deps if _in(d, "retwin") and not any(_in(d, a) for a in allowed))
        for m, deps in MODULES.items() if _in(m, "retwin.kernels")
    }
    assert {m: d for m, d in bad.items() if d} == {}


@pytest.mark.parametrize("forbidden", ["retwin.engine", "retwin.results", "retwin.storage",
                                       "retwin.cli"])
def test_processes_do_not_import_upward(forbidden: str) -> None:
    bad = [m for m, deps in MODULES.items() if _in(m, "retwin.processes")
           and any(_in(d, forbidden) for d in deps)]
    assert bad == []


#: The run's layers, lowest first: each may import only those before it.
RUN_LAYERS = ("retwin.kernels", "retwin.compiled", "retwin.results", "retwin.engine")


@pytest.mark.parametrize("layer", range(len(RUN_LAYERS)))
def test_run_layers_do_not_import_upward(layer: int) -> None:
    above = RUN_LAYERS[layer + 1:]
    bad = sorted(f"{m} -> {d}" for m, deps in MODULES.items() if _in(m, RUN_LAYERS[layer])
                 for d in deps if any(_in(d, a) for a in above))
    assert bad == []


def _part(module: str) -> str | None:
    """The part of the package a module belongs to (``retwin.engine.run`` -> ``engine``);
    None for the package itself (its ``__init__`` gathers the public API from every part)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "retwin" and len(parts) > 1 else None


def test_the_parts_a_run_needs_import_no_cycle() -> None:
    """A cycle between parts of the package (e.g. engine -> results -> engine) means one of
    them is in the wrong layer: among the engine and every part it needs, however
    indirectly, name each part on a cycle."""
    graph: dict[str, set[str]] = {}
    for m, deps in MODULES.items():
        a = _part(m)
        if a is not None:
            graph.setdefault(a, set()).update(
                b for d in deps if (b := _part(d)) is not None and b != a)

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return seen

    run_parts = {"engine"} | reach("engine")
    assert {"kernels", "processes", "compiled", "results"} <= run_parts
    assert sorted(a for a in run_parts if a in reach(a)) == []


def test_the_kpi_declaration_lies_below_everything_that_reads_it() -> None:
    """Results, the command line, reports and the service read ``retwin.kpis``: it imports
    nothing of the package."""
    assert "retwin.kpis" in MODULES
    assert sorted(d for d in MODULES["retwin.kpis"] if _in(d, "retwin")) == []


def test_nothing_imports_the_cli() -> None:
    assert _offenders("retwin.cli", "retwin.cli") == []


def test_public_api_is_exactly_the_documented_set() -> None:
    assert set(retwin.__all__) == PUBLIC_API
    assert len(retwin.__all__) == len(PUBLIC_API)  # no duplicates
    for name in retwin.__all__:
        assert getattr(retwin, name) is not None, name


#: Modules imported by a fork server of workers only: importing one sets up that process
#: (SIGTERM ignored, one BLAS thread, the kernels warmed), so the tests' process leaves it.
FORK_SERVER_ONLY = ("retwin.batch.preload",)


def test_every_subpackage_all_resolves() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for mod_name in sorted(MODULES):
        if mod_name in ("retwin.cli", *FORK_SERVER_ONLY):
            continue
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"{mod_name}.__all__ names missing {name!r}"
    # importing a module changes no signal's handling: the commands and servers the later
    # tests start inherit this process's (an ignored SIGTERM would not stop them)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_error_hierarchy() -> None:
    for err in (retwin.ScenarioError, retwin.DataError, retwin.MassBalanceError):
        assert issubclass(err, retwin.RetwinError)
    assert issubclass(retwin.RetwinError, Exception)


# --- the what-if core: one pipeline ------------------------------------------------------------


def test_replications_are_run_only_by_the_engine_and_the_whatif_core() -> None:
    """``retwin run``, the service and batch studies evaluate what-ifs through
    :mod:`retwin.whatif`; none runs replications or differences of its own."""
    bad = sorted(m for m, deps in MODULES.items()
                 if any(d.endswith(".run_replications") for d in deps)
                 and not any(_in(m, a) for a in ("retwin.engine", "retwin.whatif"))
                 and m != "retwin")
    assert bad == []
    assert "retwin.whatif" in MODULES["retwin.cli"]
    assert "retwin.whatif" in MODULES["retwin.batch.tables"]


def test_the_whatif_core_lies_below_batch_cli_and_the_service() -> None:
    assert _offenders(("retwin.whatif", "retwin.batch", "retwin.cli", "retwin.validation",
                       "retwin.report"), "retwin.whatif") == []
    above = ("retwin.batch", "retwin.cli", "retwin.report", "retwin.validation")
    assert sorted(d for d in MODULES["retwin.whatif"] if any(_in(d, a) for a in above)) == []


# --- the service (src/retwin_service): retwin's public modules only ------------------------------

SERVICE_ROOT = SRC.parent / "retwin_service"
SERVICE_MODULES: dict[str, set[str]] = {
    _module_name(p): _imports(p) for p in sorted(SERVICE_ROOT.rglob("*.py"))
}
#: The modules of retwin the service may import names from (only names in their
#: ``__all__``, or public submodules listed here).
SERVICE_MAY_USE = ("retwin", "retwin.whatif", "retwin.scenario", "retwin.batch.executors",
                   "retwin.storage", "retwin.report", "retwin.report.figures",
                   "retwin.report.cards", "retwin.kpis")


def _imported_names(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` of every ``from retwin… import name`` and every
    ``retwin.name`` attribute read in ``path``; ``(module, "", line)`` for ``import``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[str, str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "retwin"):
            out.append(("retwin", node.attr, node.lineno))
    return [o for o in out if _in(o[0], "retwin")]


def _service_may_import(module: str, name: str) -> bool:
    if module not in SERVICE_MAY_USE:
        return False
    if not name:
        return True
    public = set(getattr(importlib.import_module(module), "__all__", ()))
    return name in public or f"{module}.{name}" in SERVICE_MAY_USE


def test_the_walk_sees_the_service() -> None:
    for expected in ("retwin_service.main", "retwin_service.jobs",
                     "retwin_service.routes.runs", "retwin_service.registry"):
        assert expected in SERVICE_MODULES


def test_the_service_uses_only_retwins_public_modules() -> None:
    bad = [f"{p.relative_to(SERVICE_ROOT)}:{line}: {mod}{'.' + name if name else ''}"
           for p in sorted(SERVICE_ROOT.rglob("*.py"))
           for mod, name, line in _imported_names(p) if not _service_may_import(mod, name)]
    assert bad == []


def test_the_rule_catches_a_private_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from retwin.engine.run import run\nfrom retwin.whatif import _as_json\n"
                 "import retwin\nretwin.compiled\n")
    bad = [(m, n) for m, n, _ in _imported_names(f) if not _service_may_import(m, n)]
    assert bad == [("retwin.engine.run", "run"), ("retwin.whatif", "_as_json"),
                   ("retwin", "compiled")]


def test_the_service_imports_nothing_below_the_public_api() -> None:
    for m, deps in SERVICE_MODULES.items():
        assert not any(_in(d, x) for d in deps for x in ("numba", "simpy")), m


def test_the_core_never_imports_the_service() -> None:
    """Only the CLI reaches the service, and only inside ``serve`` and ``token``."""
    assert _offenders("retwin.cli", "retwin_service") == []
    assert _offenders("retwin.cli", "api") == []
    cli = ast.parse((SRC / "cli.py").read_text(encoding="utf-8"))
    top = {a.name for n in cli.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module or "" for n in cli.body if isinstance(n, ast.ImportFrom)}
    assert not any(_in(m, "retwin_service") for m in top)
    users = sorted(f.name for f in ast.walk(cli) if isinstance(f, ast.FunctionDef)
                   and any(isinstance(n, ast.Import) and any(_in(a.name, "retwin_service")
                                                            for a in n.names)
                           for n in ast.walk(f)))
    assert users == ["_service"]


def test_the_api_folder_is_only_a_shortcut() -> None:
    """``api/`` (not installed) only re-exports the service's app."""
    root = Path(__file__).resolve().parents[1] / "api"
    deps = {_module_name(p, root.parent): _imports(p, root.parent) for p in root.rglob("*.py")}
    assert {m for m, d in deps.items() if d} == {"api.main"}
    assert {d for d in deps["api.main"] if not d.startswith("retwin_service.main")} == set()
    shortcut = importlib.import_module("api.main")
    assert shortcut.create_app is importlib.import_module("retwin_service.main").create_app
