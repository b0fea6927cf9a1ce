"""The markdown section of RESULTS.md for scenario `quic`, rendered from a run's data."""

from __future__ import annotations

from typing import Any

from ..files import format_size
from ..report import markdown_table
from .common_report import STATS_HEAD, machine_paragraph, mib, stats_row, verdict

TARGET_RATIO = 3.0
FLUX, NAIVE = "fluxctl", "naive-aioquic"


def _labels(config: dict[str, Any]) -> dict[str, str]:
    flux = "fluxctl → fluxd (QUIC)"
    if config["stand_in"]:
        flux = "fluxctl → fluxd (TCP + TLS, stand-in: NOT QUIC)"
    return {FLUX: flux, NAIVE: f"naive stock aioquic ({config['naive_loop']} loop)"}


def _method(config: dict[str, Any]) -> str:
    size = config["datagram_size"]
    datagrams = (
        f"Both tools use QUIC `max_datagram_size` **{size}** on both ends (fluxd: "
        f"`--quic-datagram-size {size}` and `FLUX_QUIC_DATAGRAM_SIZE={size}`)."
    )
    if config["stand_in"]:
        datagrams = f"The naive transfer uses `max_datagram_size` **{size}**; fluxd used TCP."
    loop_note = ", so the baseline runs on asyncio's loop, its faster setting."
    if config["naive_loop"] != "asyncio":
        loop_note = ": this run shows that slow setting, not the usual baseline."
    return (
        "MB/s = 10^6 bytes/s; MiB = 2^20 bytes. Seconds are wall time measured by the harness "
        "from spawning the client to reaping it (start-up, handshake, transfer, and the "
        "receiver's confirmation). Every repetition is a full transfer into an empty "
        "destination (the copy is deleted and the disk synced between repetitions); the copy is "
        "checked by size every time and by xxh3-128 in the first repetition.\n\n"
        f"{datagrams} What each receiver does with the data differs: fluxd fdatasyncs each "
        "chunk batch before acknowledging it, and fluxctl finishes when the whole file is "
        "durable; the naive server only writes into the page cache (no sync) as data arrives "
        "and, at end of stream, answers with the byte count and xxh3-128 digest, which the "
        "client waits for and checks.\n\n"
        "The naive transfer (`benchmarks/naive_quic.py`) is stock aioquic as documented: "
        "`serve`/`connect`, one bidirectional stream, 1 MiB blocks with `writer.write()` + "
        "`await writer.drain()`, `write_eof()`, default congestion control (reno) and flow "
        "control windows. `drain()` never waits (aioquic has no send-side backpressure), so "
        "its client queues the whole file in memory: its RSS grows with the file. It runs on "
        f"the **{config['naive_loop']}** event loop; fluxd and fluxctl run on uvloop. Stock "
        "aioquic takes its clock from `loop.time()`, which on uvloop advances in whole "
        "milliseconds; that spoils its RTT estimates and pacing and makes it several times "
        f"slower{loop_note}"
    )


def _throughput(t: dict[str, Any], labels: dict[str, str], size: int) -> str:
    rows = [stats_row(labels.get(tool, tool), s) for tool, s in t["summary"].items()]
    reps = f"{t['reps']} repetition" + ("s" if t["reps"] != 1 else "")
    parts = [
        f"### Throughput: {format_size(t['size'])}, {reps} each, alternated, "
        f"datagrams of {size} bytes",
        markdown_table(STATS_HEAD, rows),
    ]
    ratio = t["ratio"]
    if ratio is None:
        parts.append("No fluxd run (baseline only): no ratio.")
    else:
        parts.append(
            f"Ratio fluxd / naive aioquic (median throughput): **{ratio:.2f}x** "
            f"(target ≥ {TARGET_RATIO:g}x: {verdict(ratio >= TARGET_RATIO)})."
        )
    return "\n\n".join(parts)


def _memory(t: dict[str, Any], labels: dict[str, str]) -> str:
    rows = [
        [labels.get(tool, tool), mib(s["server_rss_kib_max"]), mib(s["client_rss_kib_max"])]
        for tool, s in t["summary"].items()
    ]
    return "\n\n".join(
        [
            "### Peak RSS (MiB, largest over the repetitions)",
            markdown_table(["tool", "server", "client"], rows),
            "Servers: VmHWM, reset through /proc/PID/clear_refs before each transfer. Clients: "
            "`ru_maxrss` of the client process (GNU time `%M`).",
        ]
    )


def render(data: dict[str, Any]) -> str:
    """Heading, machine, method, throughput table and ratio, peak-RSS table."""
    config, m = data["config"], data["machine"]
    labels = _labels(config)
    parts = ["## quic: 1 file over loopback, fluxctl → fluxd (QUIC) against naive stock aioquic"]
    if config["stand_in"]:
        parts.append(
            "**Stand-in run: fluxd over TCP, not QUIC. It exercises the harness only; "
            "its figures are not a QUIC result.**"
        )
    software = f"aioquic {m['aioquic']}, uvloop {m['uvloop']}"
    parts += [machine_paragraph(m, software), _method(config)]
    parts += [_throughput(data["throughput"], labels, config["datagram_size"])]
    parts += [_memory(data["throughput"], labels)]
    return "\n\n".join(parts)
