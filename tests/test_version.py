"""The version: one definition (``retwin._version``, the same as pyproject.toml), read by the
lower layers from there and not through the top package ``retwin``, whose import loads the
engine and the whole public API."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import retwin
from retwin import _version

SRC = Path(retwin.__file__).resolve().parent
REPO = SRC.parents[1]

#: Modules that still read the version through ``import retwin``; none may be added.
PENDING: set[str] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_top_package(source: str) -> bool:
    """``import retwin`` or ``from retwin import <name that is not a submodule>``, anywhere
    (imports inside functions count)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name == "retwin" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "retwin" and not node.level:
            for a in node.names:
                if not ((SRC / a.name).is_dir() or (SRC / f"{a.name}.py").is_file()):
                    return True
    return False


def test_the_version_is_defined_once() -> None:
    assert retwin.__version__ is _version.__version__
    with (REPO / "pyproject.toml").open("rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == _version.__version__


def test_the_walk_sees_a_top_package_import() -> None:
    assert _imports_top_package("def f():\n    import retwin\n    return retwin.__version__")
    assert _imports_top_package("from retwin import __version__")
    assert not _imports_top_package("from retwin import config")  # a submodule
    assert not _imports_top_package("from retwin._version import __version__")


def test_lower_layers_do_not_import_the_top_package() -> None:
    """Only the CLI (the top of the layers) may import ``retwin`` itself."""
    offenders = {
        _module(p) for p in SRC.rglob("*.py")
        if p.parent != SRC or p.name not in ("__init__.py", "cli.py")
        if _imports_top_package(p.read_text(encoding="utf-8"))
    }
    assert offenders - PENDING == set()
