"""The markdown section of RESULTS.md for scenario `concurrency`, rendered from a run's data."""

from __future__ import annotations

from typing import Any

from ..files import format_size
from ..report import markdown_table
from .common_report import machine_paragraph, mib


def _row(crowd: dict[str, Any], single: float) -> list[str]:
    stats = crowd.get("upload_stats") or {"median": 0.0, "max": 0.0}
    aggregate = crowd["aggregate_mb_per_s"]
    return [
        str(crowd["clients"]),
        f"{crowd['completed']}/{crowd['clients']}",
        str(crowd["copies_ok"]),
        f"{crowd['wall_seconds']:.2f}",
        f"{aggregate:.1f}",
        f"{aggregate / single:.2f}x",
        f"{stats['median']:.2f}",
        f"{stats['max']:.2f}",
        str(crowd["retries"]),
        mib(crowd["daemon_peak_rss_kib"]),
    ]


def render(data: dict[str, Any]) -> str:
    """Heading, machine, method, one row per crowd size, and the errors seen."""
    single = data["single"]["median"]
    head = [
        "clients",
        "completed",
        "copies ok",
        "wall s",
        "aggregate MB/s",
        "vs one stream",
        "median upload s",
        "slowest upload s",
        "retries",
        "fluxd peak MiB",
    ]
    rows = [_row(c, single) for c in data["crowds"]]
    errors = [
        f"- {c['clients']} clients, {count}x: {error}"
        for c in data["crowds"]
        for error, count in c["errors"].items()
    ]
    method = (
        f"Each client uploads {format_size(data['size'])} over {data['transport'].upper()} to "
        "one fluxd on loopback; all start at one instant (`benchmarks/loadgen.py`: the fluxctl "
        "client library, one process per core, each upload its own connection and TLS "
        f"handshake). One upload alone, the same way: {single:.1f} MB/s median of 3 (min "
        f"{data['single']['min']:.1f}, max {data['single']['max']:.1f}). Aggregate = completed "
        "bytes over the wall time from the common start to the last completion; copies are "
        "checked by xxh3-128 digest afterwards. fluxd's peak RSS is VmHWM over the crowd."
    )
    parts = [
        "## concurrency: many clients uploading at once",
        machine_paragraph(data["machine"], data["machine"].get("openssh", "")),
        method,
        markdown_table(head, rows),
    ]
    if errors:
        parts.append("Errors:\n" + "\n".join(errors))
    return "\n\n".join(parts)
