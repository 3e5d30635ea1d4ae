"""The code's shape, checked: layers import only downwards, modules and functions stay small, public classes say
what they are (../shared/STYLE.md). Read from the source with `ast`; nothing is imported or run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("engine", "procs", "ipc")
# Who may import whom: ipc is the bottom (rings, bus, wire types), engine the pure cores above it, procs the
# process shells above that, tools (operators' tools and the command line) on top.
MAY_NOT_IMPORT = {"ipc": ("engine", "procs", "tools"), "engine": ("procs", "tools"), "procs": ("tools",)}
ENTRY_POINT = Path("engine/__main__.py")  # `python -m engine` runs tools/cli.py: the one import upwards
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules(packages: tuple[str, ...]) -> Iterator[tuple[Path, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).glob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(MAY_NOT_IMPORT))
def test_layers_import_only_downwards(layer: str) -> None:
    wrong = []
    for path, tree in modules((layer,)):
        if path == ENTRY_POINT:
            continue
        wrong += [f"{path}: {name}" for name in sorted(imported(tree))
                  if name.split(".")[0] in MAY_NOT_IMPORT[layer]]
    assert wrong == []


def test_modules_stay_under_the_size_that_asks_for_a_split() -> None:
    long = {str(path): len(path.read_text().splitlines()) for path, _ in modules(CHECKED)}
    assert {path: n for path, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_functions_stay_short() -> None:
    long = []
    for path, tree in modules(CHECKED):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_public_classes_and_modules_have_docstrings() -> None:
    missing = []
    for path, tree in modules(CHECKED):
        if path.name != "__init__.py" and ast.get_docstring(tree) is None:
            missing.append(f"{path} (module)")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and ast.get_docstring(node) is None:
                missing.append(f"{path}:{node.lineno} {node.name}")
    assert missing == []
