"""Scenario `concurrency`: 50 and 200 clients upload 10 MiB each to one fluxd at once.

One upload alone first (the single-stream figure, three times), then each crowd, all through
`benchmarks.loadgen`
(the fluxctl client library in one process per core, every upload its own connection and TLS
handshake, all starting at one instant). Reported: how many completed, the aggregate goodput
(all bytes over the wall time to the last completion) against the single stream, per-upload
times, and the daemon's peak RSS. Every copy is checked by digest afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import file_digest, format_size, parse_size
from ..machine import describe, load_average
from ..measure import Stats
from ..peers.flux import FluxPeer
from ..report import publish
from ..sysdeps import ensure_tools
from .concurrency_report import render
from .workspace import Workspace

_RUNS = itertools.count()
HELP = "50 and 200 clients uploading 10 MiB each at once: completions, aggregate vs one stream"


def _counts(text: str) -> list[int]:
    return sorted(int(n) for n in text.split(","))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=_counts, help="crowd sizes [50,200; quick: 20,50]")
    parser.add_argument("--size", type=parse_size, help="file per client [10M]")
    parser.add_argument("--quick", action="store_true", help="crowds of 20 and 50")
    parser.add_argument("--transport", choices=("tcp", "quic"), default="tcp")
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def _crowd(flux: FluxPeer, src: Path, digest: str, clients: int, transport: str) -> dict[str, Any]:
    url = f"flux://127.0.0.1:{flux.port}/bench/crowd-{clients}-{next(_RUNS)}/"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        url,
        str(src),
        "--pin",
        flux.fingerprint,
        "--clients",
        str(clients),
        "--transport",
        transport,
    ]
    run, server_kib, reset = flux.measure(argv, timeout=600.0 + clients * 5)
    if run.exit_code not in (0, 1):
        raise BenchError(f"loadgen exited with {run.exit_code}: {run.stderr.strip()[-500:]}")
    report: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    size = src.stat().st_size
    dest = flux.root / "bench" / url.rstrip("/").rpartition("/")[2]
    stored = sorted(dest.glob("c*.bin")) if dest.exists() else []
    report["copies_ok"] = sum(1 for p in stored if file_digest(p) == digest)
    shutil.rmtree(dest, ignore_errors=True)
    report["aggregate_mb_per_s"] = report["completed"] * size / report["wall_seconds"] / 1e6
    if report["upload_seconds"]:
        report["upload_stats"] = dataclasses.asdict(Stats.of(report.pop("upload_seconds")))
    report["daemon_peak_rss_kib"] = server_kib
    report["daemon_peak_since"] = "crowd" if reset else "daemon start"
    print(
        f"  {clients} clients: {report['completed']} completed, "
        f"{report['aggregate_mb_per_s']:.1f} MB/s aggregate",
        file=sys.stderr,
    )
    return report


def run(args: argparse.Namespace) -> int:
    """Run the scenario, print the table, save the run, update RESULTS.md; exit status."""
    crowds = args.clients or ([20, 50] if args.quick else [50, 200])
    size = args.size or parse_size("10M")
    ensure_tools()
    data: dict[str, Any] = {"scenario": "concurrency", "transport": args.transport, "size": size}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        src, digest = ws.source(size)
        (ws.path / "flux").mkdir()
        # One address and one (anonymous) account for the whole crowd: limits sized for it.
        crowd = max(crowds)
        limits: dict[str, int | str] = {
            "connections": crowd + 64,
            "connections_per_address": crowd + 64,
            "connections_per_subject": crowd + 64,
            "uploads_per_subject": crowd + 64,
        }
        with FluxPeer(ws.path / "flux", args.transport, limits=limits) as flux:
            print(f"one client, {format_size(size)}, 3 times", file=sys.stderr)
            single = [_crowd(flux, src, digest, 1, args.transport) for _ in range(3)]
            rates = [one["aggregate_mb_per_s"] for one in single]
            data["single"] = dataclasses.asdict(Stats.of(rates))
            data["crowds"] = [_crowd(flux, src, digest, n, args.transport) for n in crowds]
        data["machine"]["load_at_end"] = load_average()
    publish("concurrency", render(data), data, not args.no_results)
    return 0
