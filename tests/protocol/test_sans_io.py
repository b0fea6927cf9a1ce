"""fluxproto never does I/O: no I/O, concurrency or OS modules, no open(), no clock."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fluxproto

PACKAGE = Path(fluxproto.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))

FORBIDDEN = {
    "asyncio", "socket", "ssl", "selectors", "select", "uvloop", "aioquic", "threading",
    "_thread", "subprocess", "multiprocessing", "concurrent", "io", "pathlib", "shutil",
    "tempfile", "mmap", "fcntl", "os", "posix", "signal", "time", "datetime", "random",
    "importlib",
}  # fmt: skip
FORBIDDEN_CALLS = {"open", "__import__", "exec", "eval", "compile", "input", "print"}


def test_the_package_is_found() -> None:
    names = {m.name for m in MODULES}
    assert {"__init__.py", "codec.py", "connection.py", "frames.py", "state.py"} <= names


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_that_does_io(module: Path) -> None:
    tree = ast.parse(module.read_text(), str(module))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FORBIDDEN:
                bad.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_CALLS:
                bad.append(f"{node.func.id}() at line {node.lineno}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS:
            bad.append(f"reference to {node.id} at line {node.lineno}")
    assert bad == [], f"{module.name} does I/O or may: {bad}"


def test_importing_fluxproto_loads_no_io_modules(tmp_path: Path) -> None:
    """Run in a fresh interpreter: which modules does `import fluxproto` add?"""
    code = (
        "import sys, json; before = set(sys.modules); import fluxproto; "
        "print(json.dumps([sorted(set(sys.modules) - before), sorted(sys.modules)]))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    new, everything = json.loads(out.stdout)
    added = {m.split(".")[0] for m in new}
    loaded = {m.split(".")[0] for m in everything}
    assert "fluxproto" in added
    # msgpack.ext imports datetime for its Timestamp type; fluxproto itself does not (see above).
    assert added & FORBIDDEN <= {"datetime"}
    never = {"asyncio", "socket", "ssl", "selectors", "select", "uvloop", "aioquic", "threading",
             "subprocess", "shutil", "tempfile", "mmap", "fcntl"}  # fmt: skip
    assert not (loaded & never)
