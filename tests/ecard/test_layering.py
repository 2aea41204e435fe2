"""Rules of the house: the import layers and contracts hold, and the pure libraries import nothing
from Django, Celery or pyscard.

The layers and contracts are declared in ``pyproject.toml`` (``[tool.importlinter]``) and described in
docs/ARCHITECTURE.md, "Layers"; :func:`test_import_contracts_hold` runs import-linter on them, so a
broken contract fails ``make test`` as well as ``make lint``. The checks below it are narrower and
older: they also forbid sockets and HTTP clients outside cardsim's I/O adapters, and import every
pure module to see that nothing loads a framework at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import PROJECT_ROOT

PURE_PACKAGES = ("gp", "cardsim")
FORBIDDEN = ("django", "rest_framework", "celery", "kombu", "smartcard", "socket", "requests", "httpx")
# Thin I/O adapters at the edge, allowed to use sockets (DESIGN.md §3).
ADAPTERS = {Path("cardsim/vpcd.py"), Path("cardsim/__main__.py"), Path("cardsim/cli.py")}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def pure_files() -> list[Path]:
    files = []
    for package in PURE_PACKAGES:
        root = PROJECT_ROOT / package
        if root.is_dir():
            files.extend(sorted(root.rglob("*.py")))
    return files


def test_import_contracts_hold() -> None:
    """``lint-imports`` over the whole project: every contract of pyproject.toml is kept."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_there_is_a_pure_library_to_check() -> None:
    assert (PROJECT_ROOT / "gp" / "__init__.py").exists()


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_pure_module_imports_no_framework(path: Path) -> None:
    relative = path.relative_to(PROJECT_ROOT)
    forbidden = FORBIDDEN if relative not in ADAPTERS else ("django", "rest_framework", "celery", "smartcard")
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden)
    assert not bad, f"{relative} imports {bad}"


def test_importing_every_pure_module_loads_no_framework() -> None:
    modules = []
    for path in pure_files():
        relative = path.relative_to(PROJECT_ROOT)
        if relative in ADAPTERS or path.name == "__main__.py":
            continue
        modules.append(".".join(relative.with_suffix("").parts).removesuffix(".__init__"))
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "frameworks = ('django', 'celery', 'smartcard', 'rest_framework')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in frameworks)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing the pure libraries loaded: {result.stdout.strip()}"
