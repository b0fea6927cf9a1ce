"""The markdown section of RESULTS.md for scenario `core`, rendered from a run's data."""

from __future__ import annotations

from typing import Any

from ..files import format_size
from ..measure import KIB
from ..report import markdown_table
from .common_report import STATS_HEAD, machine_paragraph, mib, stats_row, verdict

TARGET_RATIO = 2.5
TARGET_QUIC_RATIO = 3.0
TARGET_AUTO_RATIO = 0.95
TARGET_RSS_MIB = 128
FLAT_MIB = 16  # "flat": the peak at the largest size is within this of the smallest
LABELS = {
    "fluxctl": "fluxctl → fluxd (TCP + TLS 1.3)",
    "fluxd-auto": "fluxctl → fluxd (auto: TCP and QUIC lanes)",
    "fluxd-quic": "fluxctl → fluxd (QUIC, 1452-byte datagrams)",
    "naive-aioquic": "naive stock aioquic (1452-byte datagrams, asyncio loop)",
    "scp": "scp → sshd (aes128-gcm)",
    "rsync": "rsync over ssh (aes128-gcm)",
    "iperf3": "iperf3, one TCP stream, memory to memory (ceiling)",
}


def _throughput(t: dict[str, Any]) -> str:
    rows = [stats_row(LABELS.get(tool, tool), s) for tool, s in t["summary"].items()]
    head = STATS_HEAD
    ratio, reps = t["ratio"], f"{t['reps']} repetition" + ("s" if t["reps"] != 1 else "")
    lines = [
        f"Ratio fluxctl / scp (median throughput): **{ratio:.2f}x** "
        f"(target ≥ {TARGET_RATIO}x: {verdict(ratio >= TARGET_RATIO)})."
    ]
    median = {tool: s["mb_per_s"]["median"] for tool, s in t["summary"].items()}
    if "fluxd-quic" in median and "naive-aioquic" in median:
        quic = median["fluxd-quic"] / median["naive-aioquic"]
        lines.append(
            f"Ratio fluxd QUIC / naive aioquic: **{quic:.2f}x** "
            f"(target ≥ {TARGET_QUIC_RATIO}x: {verdict(quic >= TARGET_QUIC_RATIO)})."
        )
    if "fluxd-auto" in median:
        auto = median["fluxd-auto"] / median["fluxctl"]
        lines.append(
            f"Ratio fluxd auto (lanes) / TCP alone: **{auto:.2f}x** "
            f"(target ≥ {TARGET_AUTO_RATIO}x: {verdict(auto >= TARGET_AUTO_RATIO)})."
        )
    peers = [tool for tool in median if tool != "fluxctl"]
    if len(peers) > 1:
        each = ", ".join(f"{tool} {median['fluxctl'] / median[tool]:.2f}x" for tool in peers)
        lines.append(f"fluxctl (TCP) against each: {each}.")
    if "iperf3" in median:
        shares = ", ".join(
            f"{tool} {median[tool] / median['iperf3'] * 100:.0f} %"
            for tool in median
            if tool != "iperf3"
        )
        lines.append(f"Share of the iperf3 ceiling: {shares}.")
    return (
        f"### Throughput: {format_size(t['size'])}, {reps} each, alternated\n\n"
        + markdown_table(head, rows)
        + "\n\n"
        + "\n".join(lines)
    )


def _memory_row(row: dict[str, Any]) -> list[str]:
    f, s = row["fluxctl"], row["scp"]
    peaks = (f["server_rss_kib"], f["client_rss_kib"], s["server_rss_kib"], s["client_rss_kib"])
    rates = (f"{f['mb_per_s']:.1f}", f"{s['mb_per_s']:.1f}")
    return [format_size(row["size"]), *map(mib, peaks), *rates]


def _memoryverdict(rows: list[dict[str, Any]]) -> str:
    peaks = {
        "fluxd": [row["fluxctl"]["server_rss_kib"] for row in rows],
        "fluxctl": [row["fluxctl"]["client_rss_kib"] for row in rows],
    }
    ranges = ", ".join(
        f"{n} {min(v) / KIB:.1f} to {max(v) / KIB:.1f} MiB" for n, v in peaks.items()
    )
    ok = all(max(v) <= TARGET_RSS_MIB * KIB for v in peaks.values())
    flat = all(v[-1] - v[0] <= FLAT_MIB * KIB for v in peaks.values())
    return (
        f"Target ≤ {TARGET_RSS_MIB} MiB on each side: {ranges} ({verdict(ok)}); "
        f"flat in file size (largest within {FLAT_MIB} MiB of smallest): {verdict(flat)}."
    )


def _memory(mem: dict[str, Any]) -> str:
    head = ["file size", "fluxd", "fluxctl", "sshd side¹", "scp + ssh²", "fluxctl MB/s", "scp MB/s"]
    rows = mem["rows"]
    parts = ["### Peak RSS by file size (MiB, one transfer per tool and size)"]
    parts.append(markdown_table(head, [_memory_row(r) for r in rows]) if rows else "None measured.")
    if rows:
        parts.append(_memoryverdict(rows))
    parts += [f"Skipped: {note}" for note in mem["skipped"]]
    how = "VmHWM of a fresh daemon per size"
    if mem["daemon_peak_reset_by_clear_refs"]:
        how = "VmHWM, reset through /proc/PID/clear_refs before each transfer"
    parts.append(
        f"fluxd: {how}. fluxctl: `ru_maxrss` of the client process (GNU time `%M`). "
        "¹ Sum of the per-process VmHWM of sshd's session processes (privileged monitor, "
        "network child, user session with internal-sftp), sampled every 20 ms. "
        "² `ru_maxrss` of scp and its ssh child (the larger of the two, GNU time `%M`)."
    )
    return "\n\n".join(parts)


def render(data: dict[str, Any]) -> str:
    """Heading, machine, method, throughput table and ratio, peak-RSS table and verdicts."""
    method = (
        "MB/s = 10^6 bytes/s; MiB = 2^20 bytes. Seconds are wall time measured by the harness "
        "from spawning the client to reaping it (start-up, handshake and transfer). Every "
        "repetition is a full transfer into an empty destination (the copy is deleted and the "
        "disk synced between repetitions). fluxd fdatasyncs each chunk batch before "
        "acknowledging it; scp, rsync and the naive aioquic server do not sync. scp uses "
        "OpenSSH's default SFTP protocol, served in-process by sshd (`internal-sftp`). iperf3 "
        "moves the same number of bytes from memory to memory (no file, no encryption): the "
        "ceiling of one TCP stream on this machine. The naive aioquic client holds the whole "
        "file in memory (aioquic has no send-side backpressure)."
    )
    return "\n\n".join(
        [
            "## core: 1 file over loopback, fluxctl → fluxd against scp, rsync, aioquic, iperf3",
            machine_paragraph(data["machine"], data["machine"]["openssh"]),
            method,
            _throughput(data["throughput"]),
            _memory(data["memory"]),
        ]
    )
