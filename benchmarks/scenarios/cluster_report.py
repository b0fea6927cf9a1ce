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


def in_flight(f: dict[str, Any]) -> tuple[float, float | None]:
    """Bytes node A had read but not made durable when it died (what it read, less what the
    client skipped through B), in MiB, and in chunks if the chunk size is known."""
    lost = max(0, f["read_by_a"] - f["report"]["skipped"])
    chunks = lost / f["chunk_size"] if f.get("chunk_size") else None
    return lost / MIB, chunks


def failover_row(name: str, f: dict[str, Any]) -> list[str]:
    """One engine's row of the failover table."""
    r = f["report"]
    lost, chunks = in_flight(f)
    flight = f"{lost:.1f}" + (f" (≈ {chunks:.1f} chunks)" if chunks is not None else "")
    view = f["store_at_death"]
    return [
        ENGINE_NAMES.get(name, name),
        format_size(f["size"]),
        f"{f['lease_ttl']:g}",
        f"{r['skipped'] / MIB:.0f}",
        flight,
        f"{view.get('parts', '?')} / {view.get('chunk_keys', '?')}",
        f"{r['sent'] / MIB:.0f}",
        f"{f['detect_seconds']:.2f}",
        f"{f['second_seconds']:.1f}",
        str(r.get("retries", "?")),
        f"{f['failover_seconds']:.1f}",
    ]


FAILOVER_HEAD = [
    "engine", "file", "lease_ttl s", "held at kill MiB", "read by A, not held MiB",
    "parts / chunk keys in store", "resent via B MiB", "death → 1st exit s", "2nd command s",
    "2nd retries", "failover s",
]  # fmt: skip


def _failover(engines: list[dict[str, Any]]) -> str:
    rows = [failover_row(e["engine"], e["failover"]) for e in engines if "failover" in e]
    first = engines[0]["failover"]
    return "\n\n".join(
        [
            f"### Failover: node A killed at `{first['kill_at']}`, the client finishes through B",
            markdown_table(FAILOVER_HEAD, rows),
            "Two nodes on one bucket and prefix, the second started with the first's "
            "`--certs` (one CA, one token key); the client trusts the CA and sends with a token. "
            "Node A runs with `FLUX_CRASH_AT` and SIGKILLs itself when that batch is durable, "
            "before acknowledging it. fluxctl knows one server for now, so the same "
            "`fluxctl send` runs first against A with `--retry-for 0`, then again against B. "
            "*held at kill*: what B's command found already there (`skipped`); *read by A, not "
            "held*: what A had read (rchar of /proc/PID/io, sampled every 10 ms from before the "
            "transfer, so TLS records and S3 replies included) less that, i.e. received but not "
            "durable: chunks in flight; *parts / chunk keys*: multipart parts the store held "
            "when A was dead, against the chunk keys A had written for them; *resent*: B's "
            "command's `sent`. *failover*: from A's death (its log pipe closing) to B's command "
            "exiting, including the wait for A's lease on the upload to lapse (B answers "
            "*retry* until then) and sending the rest.",
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
