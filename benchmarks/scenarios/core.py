"""Scenario `core`: loopback throughput of fluxctl->fluxd (TCP+TLS and QUIC) against naive
aioquic, scp, rsync over ssh and iperf3 (the ceiling), alternated; peak RSS by file size."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import filesystem, format_size, parse_size
from ..machine import describe, load_average
from ..peers.base import Service, Transfer
from ..peers.flux import FluxPeer
from ..peers.iperf import IperfPeer
from ..peers.naive_quic import NaiveQuicPeer
from ..peers.ssh import RsyncPeer, SshPeer
from ..report import publish
from ..sysdeps import ensure_tools
from .common import fresh_peak, measured_transfer, start_peers, throughput
from .core_report import render
from .workspace import Workspace

HELP = (
    "1 GiB over loopback: fluxd TCP/auto/QUIC, naive aioquic, scp, rsync, iperf3; peak RSS by size"
)


TOOLS = ("fluxctl", "fluxd-auto", "fluxd-quic", "naive-aioquic", "scp", "rsync", "iperf3")


def _tools(text: str) -> list[str]:
    wanted = {t.strip() for t in text.split(",") if t.strip()} | {"fluxctl", "scp"}
    if unknown := wanted - set(TOOLS):
        raise argparse.ArgumentTypeError(f"unknown tools: {', '.join(sorted(unknown))}")
    return [t for t in TOOLS if t in wanted]


def _sizes(text: str) -> list[int]:
    return [] if text.strip().lower() in ("", "none") else sorted(map(parse_size, text.split(",")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=parse_size, help="throughput file size [1G; quick: 256M]")
    parser.add_argument("--reps", type=int, help="repetitions per tool [5; quick: 3]")
    parser.add_argument("--quick", action="store_true", help="256 MiB, 3 reps, memory at 256M")
    parser.add_argument(
        "--mem-sizes", type=_sizes, help="sizes for peak RSS, or 'none' [256M,1G,4G; quick: 256M]"
    )
    parser.add_argument(
        "--tools",
        type=_tools,
        default=list(TOOLS),
        help=f"throughput tools, comma-separated (fluxctl and scp always) [{','.join(TOOLS)}]",
    )
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def _peers(ws: Workspace, tools: Sequence[str]) -> list[Service]:
    """The throughput peers, in the order they alternate; each writes into its own directory."""
    make: dict[str, Callable[[Path], Service]] = {
        "fluxctl": FluxPeer,
        "fluxd-auto": lambda d: FluxPeer(d, "auto", tool="fluxd-auto"),
        "fluxd-quic": lambda d: FluxPeer(d, "quic", tool="fluxd-quic"),
        "naive-aioquic": NaiveQuicPeer,
        "scp": SshPeer,
        "rsync": RsyncPeer,
        "iperf3": lambda d: IperfPeer(),
    }
    peers = []
    for tool in tools:
        (ws.path / tool).mkdir(exist_ok=True)
        peers.append(make[tool](ws.path / tool))
    return peers


def _throughput(ws: Workspace, size: int, reps: int, tools: Sequence[str]) -> dict[str, Any]:
    src, digest = ws.source(size)
    transfers: list[Transfer] = []
    with contextlib.ExitStack() as stack:
        peers = start_peers(stack, _peers(ws, tools))
        for rep in range(reps):
            print(f"throughput rep {rep + 1}/{reps}", file=sys.stderr)
            transfers += [measured_transfer(peer, src, digest, rep == 0) for peer in peers]
    return throughput(transfers, size, reps, ("fluxctl", "scp"))


def _memory(ws: Workspace, sizes: Sequence[int]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with FluxPeer(ws.flux_root) as shared, SshPeer(ws.scp_dest) as ssh:
        for size in sizes:
            try:
                src, digest = ws.source(size)
            except BenchError as exc:
                skipped.append(f"{format_size(size)}: {exc}")
                print(f"skipping peak RSS at {format_size(size)}: {exc}", file=sys.stderr)
                continue
            print(f"peak RSS at {format_size(size)}", file=sys.stderr)
            with fresh_peak(shared, lambda: FluxPeer(ws.flux_root)) as flux:
                pair = [measured_transfer(peer, src, digest, True) for peer in (flux, ssh)]
            rows.append({"size": size, "fluxctl": pair[0].to_json(), "scp": pair[1].to_json()})
            ws.discard(size)
        reset = shared.peak_resettable
    return {"rows": rows, "skipped": skipped, "daemon_peak_reset_by_clear_refs": reset}


def run(args: argparse.Namespace) -> int:
    """Run the scenario, print the table, save the run, update RESULTS.md; exit status."""
    size = args.size or parse_size("256M" if args.quick else "1G")
    reps = args.reps or (3 if args.quick else 5)
    mem_sizes = args.mem_sizes
    if mem_sizes is None:
        mem_sizes = _sizes("256M" if args.quick else "256M,1G,4G")
    if reps < 1:
        raise BenchError("--reps must be at least 1")
    ensure_tools()
    with Workspace(args.dir) as ws:
        if filesystem(ws.path)[0] == "tmpfs":
            print("note: files are on tmpfs, so fluxd's fdatasync costs nothing", file=sys.stderr)
        data: dict[str, Any] = {"scenario": "core", "machine": describe(ws.base)}
        data["throughput"] = _throughput(ws, size, reps, args.tools)
        data["memory"] = _memory(ws, mem_sizes)
        data["machine"]["load_at_end"] = load_average()
    publish("core", render(data), data, not args.no_results)
    return 0
