"""Pieces of the RESULTS.md sections that scenarios share: machine line, stats rows, verdicts."""

from __future__ import annotations

from typing import Any

from ..measure import KIB


def mib(kib: int | None) -> str:
    """KiB as MiB with one decimal, or n/a."""
    return "n/a" if kib is None else f"{kib / KIB:.1f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def machine_paragraph(
    m: dict[str, str], software: str, where: str = "Files and both destinations"
) -> str:
    """CPU, kernel, Python, `software`, commit, date, load, and where `where` were."""
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"{software}; commit {m['commit']}; run {m['date']}, 1-minute load average "
        f"{m['load_at_start']} at start and {m.get('load_at_end', '?')} at end.\n"
        f"{where} on **{m['filesystem']}**."
    )


def stats_row(label: str, s: dict[str, Any]) -> list[str]:
    """label, median/min/max seconds, median/min/max MB/s of one tool's summary."""
    keys = ("median", "min", "max")
    seconds = [f"{s['seconds'][k]:.3f}" for k in keys]
    return [label, *seconds, *(f"{s['mb_per_s'][k]:.1f}" for k in keys)]


STATS_HEAD = ["tool", "median s", "min s", "max s", "median MB/s", "min MB/s", "max MB/s"]
