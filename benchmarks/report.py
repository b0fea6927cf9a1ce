"""Run records (JSON under benchmarks/runs/, git-ignored) and marked sections of RESULTS.md."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import plot

HERE = Path(__file__).resolve().parent
RUNS_DIR = HERE / "runs"
RESULTS = HERE / "RESULTS.md"
RESULTS_HEADER = "# fluxd benchmark results\n\nEach scenario owns one marked section.\n"


def write_run(scenario: str, data: dict[str, Any]) -> Path:
    """Save one run's raw data as runs/SCENARIO-YYYYmmdd-HHMMSS.json; returns the path."""
    RUNS_DIR.mkdir(exist_ok=True)
    path = RUNS_DIR / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned."""
    align = [":--"] + ["--:"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def replace_section(text: str, name: str, body: str) -> str:
    """Put `body` between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, appending if absent."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    head, found, rest = text.partition(begin)
    if found and end in rest:
        return head + block + rest.partition(end)[2]
    return text.rstrip() + "\n\n" + block + "\n"


def update_results(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace section `name` of RESULTS.md, keeping every other section; atomic rename."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(replace_section(text, name, body))
    os.replace(tmp, path)


def publish(
    scenario: str, text: str, data: dict[str, Any], results: bool, why_not: str = ""
) -> None:
    """Print a run's section, save its data, and (if `results` and no `why_not`) put the section
    into RESULTS.md, saying on stderr what was done."""
    print(text)
    print(f"\nrun saved to {write_run(scenario, data)}", file=sys.stderr)
    if not results:
        return
    if why_not:
        print(f"RESULTS.md not updated: {why_not}", file=sys.stderr)
        return
    put_section(scenario, text, scenario, data)


def put_section(section: str, text: str, scenario: str, data: dict[str, Any]) -> None:
    """Section `section` of RESULTS.md becomes `text` and, where matplotlib is installed, the
    plot of `data` (drawn as `scenario` draws it) below it."""
    if (png := plot(scenario, data, name=section)) is not None:
        text += f"\n\n![{section}: goodput per tool]({png.relative_to(HERE)})"
        print(f"plot: {png}", file=sys.stderr)
    update_results(section, text)
    print(f"updated section {section} of benchmarks/RESULTS.md", file=sys.stderr)
