"""The markdown section of RESULTS.md for scenario `cluster`, rendered from a run's data."""

from __future__ import annotations

import statistics
from typing import Any

from ..files import format_size
from ..measure import KIB, MIB
from ..report import markdown_table
from .common_report import STATS_HEAD, machine_paragraph, mib, stats_row, verdict
from .core_report import FLAT_MIB

TARGET_RATIO = 0.8
ENGINE_NAMES = {"seaweedfs": "SeaweedFS", "ceph": "Ceph RGW"}


def _label(tool: str, setup: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    if tool == "boto3":
        report = next(r["details"]["report"] for r in runs if r["tool"] == "boto3")
        parts = format_size(report["part_size"])
        return f"boto3 upload_file ({parts} parts, {report['concurrency']} threads)"
    chunks = f"{setup['chunk_size']} chunks" if setup["chunk_size"] else "fluxctl's chunks"
    window = f"window {setup['window']}" if setup.get("window") else "fluxd's window"
    return f"fluxctl → fluxd → S3 ({setup['transport'].upper()} + TLS 1.3, {chunks}, {window})"


def cpu_per_gb(runs: list[dict[str, Any]]) -> float | None:
    """Median CPU seconds of the daemon per GB stored, over the runs that recorded it."""
    per_gb = [
        r["details"]["server_cpu_seconds"] / (r["size"] / 1e9)
        for r in runs
        if r["details"].get("server_cpu_seconds")
    ]
    return statistics.median(per_gb) if per_gb else None


def _throughput(name: str, version: str, t: dict[str, Any], setup: dict[str, Any]) -> str:
    rows = [stats_row(_label(tool, setup, t["runs"]), s) for tool, s in t["summary"].items()]
    ratio = t["ratio"]
    lines = [
        f"Ratio fluxd / boto3 (median throughput): **{ratio:.2f}x** "
        f"(target ≥ {TARGET_RATIO}x: {verdict(ratio >= TARGET_RATIO)})."
    ]
    flux = [r for r in t["runs"] if r["tool"] == "fluxd-s3"]
    if (cpu := cpu_per_gb(flux)) is not None:
        lines.append(f"fluxd's CPU time (user + system): {cpu:.1f} s per GB stored (median).")
    return (
        f"#### {ENGINE_NAMES.get(name, name)} ({version})\n\n"
        + markdown_table(STATS_HEAD, rows)
        + "\n\n"
        + " ".join(lines)
    )


def held(f: dict[str, Any]) -> int:
    """Bytes node A had made durable when it died: the chunk keys it had written, each a
    chunk (the largest part in the store), at most the file."""
    view = f["store_at_death"]
    return min(f["size"], view.get("chunk_keys", 0) * view.get("chunk_size", 0))


def in_flight(f: dict[str, Any]) -> tuple[float, float | None]:
    """Bytes node A had read but not made durable when it died (what it read, less what it
    held), in MiB, and in chunks if the chunk size is known."""
    lost = max(0, f["read_by_a"] - held(f))
    chunk = f["store_at_death"].get("chunk_size")
    return lost / MIB, (lost / chunk if chunk else None)


def resent(f: dict[str, Any]) -> int:
    """Bytes the command sent twice: its `sent` beyond the file's size."""
    return max(0, f["report"]["sent"] - f["report"]["bytes"])


def _mib_chunks(nbytes: float, chunk: int | None) -> str:
    return f"{nbytes / MIB:.1f}" + (f" (≈ {nbytes / chunk:.1f} chunks)" if chunk else "")


def failover_row(name: str, f: dict[str, Any]) -> list[str]:
    """One engine's row of the failover table."""
    r, view = f["report"], f["store_at_death"]
    chunk = view.get("chunk_size") or None
    node = next((k for k, v in f["nodes"].items() if v == r.get("node")), r.get("node", "?"))
    window = f"{f['window'] / MIB:.0f}" if f.get("window") else "default"
    return [
        ENGINE_NAMES.get(name, name),
        format_size(f["size"]),
        window,
        f"{f['lease_ttl']:g}",
        f"{held(f) / MIB:.0f}",
        _mib_chunks(in_flight(f)[0] * MIB, chunk),
        f"{view.get('parts', '?')} / {view.get('chunk_keys', '?')}",
        f"{r['sent'] / MIB:.0f}",
        _mib_chunks(resent(f), chunk),
        str(r.get("retries", "?")),
        str(node),
        f"{f['failover_seconds']:.1f}",
    ]


def within_window(f: dict[str, Any]) -> bool | None:
    """Whether the command resent at most the nodes' window (the most in flight); None if
    the window is not known."""
    return resent(f) <= f["window"] if f.get("window") else None


FAILOVER_HEAD = [
    "engine", "file", "window MiB", "lease_ttl s", "held at kill MiB",
    "read by A, not held MiB", "parts / chunk keys in store", "sent MiB", "resent MiB",
    "retries", "finished on", "failover s",
]  # fmt: skip


def _failover(engines: list[dict[str, Any]]) -> str:
    runs = [(e["engine"], e["failover"]) for e in engines if "failover" in e]
    rows = [failover_row(name, f) for name, f in runs]
    checks = [(name, within_window(f)) for name, f in runs]
    verdicts = ", ".join(
        f"{ENGINE_NAMES.get(n, n)} {verdict(ok)}" for n, ok in checks if ok is not None
    )
    first = runs[0][1]
    return "\n\n".join(
        [
            f"### Failover: node A killed at `{first['kill_at']}`, one command finishes on B",
            markdown_table(FAILOVER_HEAD, rows),
            f"Resent at most the chunks in flight (≤ the nodes' window): {verdicts or 'n/a'}. "
            "Two nodes on one bucket and prefix, the second started with the first's "
            "`--certs` (one CA, one token key), listed in that order as the `nodes` of one "
            'name in the client\'s config file (`[servers."localhost:7070"]`; the name is '
            "never resolved, and the nodes' certificate carries it). The client trusts the CA, "
            "sends with a token, and runs one `fluxctl send` to that name: no user action "
            "follows. Node A runs with `FLUX_CRASH_AT` and SIGKILLs itself when that batch is "
            "durable, before acknowledging it; fluxctl then goes on to B by itself. "
            "*held at kill*: the chunk keys A had written (the parts it recorded as held) "
            "times the chunk size (the largest part), listed as soon as A was dead (B writes "
            "nothing before A's lease lapses); *read by A, not held*: what A had read (rchar "
            "of /proc/PID/io, sampled every 10 ms from before the transfer, so TLS records and "
            "S3 replies included) less that, i.e. received but not durable: chunks in flight; "
            "*parts / chunk keys*: multipart parts the store held then, against the chunk keys; "
            "*sent*: the command's `sent` (each chunk once per pass, over both nodes); "
            "*resent*: `sent` less the file's size; *retries*, *finished on*: the command's "
            "`retries` and `node`. *failover*: from A's death (its log pipe closing) to the "
            "command exiting, including the wait for A's lease on the upload to lapse (B "
            "answers *retry* until then) and sending the rest.",
        ]
    )


def _memory_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        t = row["transfer"]
        out.append(
            [
                row["backend"],
                format_size(row["size"]),
                mib(t["server_rss_kib"]),
                mib(t["client_rss_kib"]),
                f"{t['mb_per_s']:.1f}",
            ]
        )
    return out


def flat(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Per backend: whether the node's peak at its largest size is within FLAT_MIB of its
    peak at the smallest."""
    by: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        by.setdefault(row["backend"], []).append((row["size"], row["transfer"]["server_rss_kib"]))
    return {
        backend: max(peaks)[1] - min(peaks)[1] <= FLAT_MIB * KIB for backend, peaks in by.items()
    }


def _memory(rows: list[dict[str, Any]]) -> str:
    head = ["backend", "file", "fluxd peak MiB", "fluxctl peak MiB", "MB/s"]
    parts = ["### Peak RSS of a node by file size"]
    if not rows:
        return "\n\n".join([*parts, "None measured."])
    verdicts = ", ".join(f"{b} {verdict(ok)}" for b, ok in flat(rows).items())
    parts += [
        markdown_table(head, _memory_rows(rows)),
        f"Flat in file size (largest within {FLAT_MIB} MiB of smallest): {verdicts}. fluxd: "
        "VmHWM, reset through /proc/PID/clear_refs before each send (else a fresh daemon per "
        "size); fluxctl: `ru_maxrss` (GNU time `%M`). One send per size and backend.",
    ]
    return "\n\n".join(parts)


def render(data: dict[str, Any]) -> str:
    """Heading, machine, method, throughput per engine, failover, peak RSS."""
    engines, setup = data["engines"], data["setup"]
    software = "; ".join(
        [f"{ENGINE_NAMES.get(e['engine'], e['engine'])}: {e['version']}" for e in engines]
        + [f"boto3 {setup.get('boto3', '?')}"]
    )
    size = format_size(engines[0]["throughput"]["size"]) if engines else "?"
    reps = engines[0]["throughput"]["reps"] if engines else 0
    method = (
        "MB/s = 10^6 bytes/s; MiB = 2^20 bytes. Engines run on 127.0.0.1 on this machine: "
        "SeaweedFS as `weed mini` (data on the disk above), Ceph 16 as one mon, one memstore "
        "OSD (data in RAM) and radosgw. Seconds are wall time from spawning the client to "
        "reaping it. fluxctl sends to one fluxd node whose `[storage]` is the engine "
        "(multipart parts, one per chunk; with no `--chunk-size`, fluxctl picks the chunk "
        "size within the rule the node states in WELCOME: an S3 node's parts are at least "
        "5 MiB); boto3 (the library fluxd stores with) uploads the same file straight into "
        "the same bucket from its own process. They alternate, "
        f"{reps} time{'s' if reps != 1 else ''} each; each copy is checked (size; the first "
        "of each also read back and hashed, fluxd's through `fluxctl recv`), then deleted; "
        "Ceph's garbage collection runs after each boto3 copy is deleted, so that RAM is freed."
    )
    sections = [
        "## cluster: fluxd nodes on S3 (SeaweedFS, Ceph RGW)",
        machine_paragraph(data["machine"], software, "Source files and SeaweedFS's data"),
        method,
        f"### Throughput: {size}, {reps} repetition{'s' if reps != 1 else ''} each, alternated",
        *(_throughput(e["engine"], e["version"], e["throughput"], setup) for e in engines),
    ]
    if any("failover" in e for e in engines):
        sections.append(_failover(engines))
    rows = [row for e in engines for row in e.get("memory", [])] + data.get("memory_local", [])
    sections.append(_memory(rows))
    return "\n\n".join(sections)
