"""Product code does not call asyncio.wait_for.

In Python 3.11, wait_for returns a result that arrives in the same loop iteration as a
cancellation and drops the cancellation (Ctrl-C under asyncio.run is such a cancellation);
`async with asyncio.timeout(...)` / `timeout_at(...)` keep it. Found by reading the source, so
a call that no test reaches is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fluxd", "clients", "protocol")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def wait_for_uses(source: str, name: str = "<source>") -> list[int]:
    """Line numbers where `source` reaches asyncio's wait_for (attribute or import)."""
    lines = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Attribute):
            found = node.attr == "wait_for" and _dotted(node.value).split(".")[0] == "asyncio"
        elif isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            found = (node.module or "").startswith("asyncio") and "wait_for" in names
        else:
            found = False
        if found:
            lines.append(node.lineno)
    return lines


def test_product_code_does_not_use_asyncio_wait_for() -> None:
    found: dict[str, list[int]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if lines := wait_for_uses(path.read_text(), rel):
                found[rel] = lines
    assert not found, f"asyncio.wait_for in {found}: use `async with asyncio.timeout(...)`"


def test_the_scan_sees_every_spelling() -> None:
    assert wait_for_uses("import asyncio\nasync def f(x):\n    await asyncio.wait_for(x, 1)\n")
    assert wait_for_uses("import asyncio.tasks\nasyncio.tasks.wait_for\n") == [2]
    assert wait_for_uses("from asyncio import sleep, wait_for\n") == [1]
    assert wait_for_uses("from asyncio.tasks import wait_for as w\n") == [1]
    assert not wait_for_uses("async def f(x):\n    async with asyncio.timeout(1):\n        pass\n")
    assert not wait_for_uses("def wait_for(p): ...\nwait_for(lambda: True)\nself.wait_for\n")
