"""The markdown section of RESULTS.md for scenario `http`, rendered from a run's data."""

from __future__ import annotations

from typing import Any

from ..files import format_size
from ..report import markdown_table
from .common_report import STATS_HEAD, machine_paragraph, mib, stats_row, verdict

#: Issue 15: an HTTP GET at least this share of `fluxctl recv --transport tcp`'s rate.
TARGET_RATIO = 0.8
CURL, FLUX = "curl-https", "fluxctl-recv"
LABELS = {
    CURL: "curl → fluxd HTTPS (GET)",
    FLUX: "fluxctl recv --transport tcp",
}
METHOD = (
    "MB/s = 10^6 bytes/s; MiB = 2^20 bytes. The file is stored once with `fluxctl send` (so it "
    "has its chunk manifest), then downloaded by each tool in turn, the order swapped every "
    "repetition. Seconds are wall time measured by the harness from spawning the client to "
    "reaping it (start-up, TLS handshake, transfer). Both clients write into the same "
    "directory, on the filesystem of the daemon's root; every copy is checked by xxh3-128 "
    "against the source and deleted before the next download. The daemon verifies each chunk "
    "against its digest before sending it, for both. curl (HTTP/1.1, `--cacert` the daemon's "
    "CA, `localhost` resolved to 127.0.0.1) writes its output as it arrives; fluxctl recv "
    "writes a staged file with a resume journal, checks every chunk, and fsyncs the copy "
    "before renaming it into place. Peak RSS: the daemon's VmHWM during the download, the "
    "client's `ru_maxrss`."
)


def _table(t: dict[str, Any]) -> str:
    head = [*STATS_HEAD, "fluxd peak MiB", "client peak MiB"]
    rows = [
        [
            *stats_row(LABELS.get(tool, tool), s),
            mib(s["server_rss_kib_max"]),
            mib(s["client_rss_kib_max"]),
        ]
        for tool, s in t["summary"].items()
    ]
    return markdown_table(head, rows)


def render(data: dict[str, Any]) -> str:
    """Heading, machine, method, the table, and the ratio against the goal."""
    t = data["throughput"]
    ratio = t["ratio"]
    goal = (
        f"curl over HTTPS / fluxctl recv (median MB/s): **{ratio:.2f}x** "
        f"(goal ≥ {TARGET_RATIO}x: {verdict(ratio >= TARGET_RATIO)})."
    )
    return "\n\n".join(
        [
            "## http: a stored file downloaded over HTTPS by curl against fluxctl recv",
            machine_paragraph(data["machine"], "fluxd TCP + TLS 1.3", "The root and both copies"),
            METHOD,
            f"### {format_size(t['size'])}, {t['reps']} downloads each, alternated",
            _table(t),
            goal,
        ]
    )
