"""The shape of fluxd.storage (issue 12), read from the source: base.py owns the interfaces'
types and imports no sibling; the modules import one another without a cycle, counting imports
under TYPE_CHECKING and inside functions (which hide a cycle from the interpreter, not from a
reader); and no module reaches into another object's private names."""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import fluxd.storage

PACKAGE = "fluxd.storage"
FOLDER = Path(fluxd.storage.__file__).parent
MODULES = {p.stem: p for p in sorted(FOLDER.glob("*.py"))}


def _absolute(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Every dotted name an import statement in a module of PACKAGE may load."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        parts = PACKAGE.split(".")
        parts = parts[: len(parts) - node.level + 1] + ([node.module] if node.module else [])
        base = ".".join(parts)
    else:
        base = node.module or ""
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)  # "from pkg import module"


def siblings(source: str) -> set[str]:
    """The modules of PACKAGE that `source` imports, anywhere in it ("__init__": the package)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for name in _absolute(node):
            if name == PACKAGE:
                if isinstance(node, ast.Import):
                    found.add("__init__")
            elif name.startswith(PACKAGE + "."):
                first = name[len(PACKAGE) + 1 :].split(".")[0]
                found.add(first if first in MODULES else "__init__")
    return found


def private_reaches(source: str) -> list[str]:
    """`x._name` where x is not self or cls, and `from module import _name`: another object's
    or module's private name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            found += [f"line {node.lineno}: import {name}" for name in names if _private(name)]
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def graph() -> dict[str, set[str]]:
    return {stem: siblings(path.read_text()) - {stem} for stem, path in MODULES.items()}


def test_the_scanners_see_what_hides_a_cycle() -> None:
    # Guards the checks themselves: the shape issue 12 removed must be caught.
    hidden = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .housekeeping import X\n"
        "def f():\n    from . import local\n    import fluxd.storage.paths\n"
        "from .. import log\nfrom fluxd.storage.base import Storage\n"
    )
    assert siblings(hidden) == {"housekeeping", "local", "paths", "base"}
    assert siblings("from . import ChunkData\nimport fluxd.storage") == {"__init__"}
    uses = "storage._publish(x)\nself._ok\ncls._ok\nfrom .local import _key\nx.__class__"
    assert sorted(private_reaches(uses)) == ["line 1: storage._publish", "line 4: import _key"]


def test_base_imports_no_sibling() -> None:
    assert graph()["base"] == set()


def test_no_module_imports_the_package_itself() -> None:
    assert [stem for stem, deps in graph().items() if "__init__" in deps] == []


def test_the_import_graph_is_acyclic() -> None:
    try:
        order = list(graphlib.TopologicalSorter(graph()).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle in {PACKAGE}: {' -> '.join(exc.args[1])}")
    assert set(order) == set(MODULES)


@pytest.mark.parametrize("stem", sorted(MODULES))
def test_no_module_reaches_into_private_names(stem: str) -> None:
    assert private_reaches(MODULES[stem].read_text()) == []
