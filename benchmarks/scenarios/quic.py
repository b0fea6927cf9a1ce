"""Scenario `quic`: fluxctl->fluxd over QUIC against a naive stock-aioquic transfer, same datagram
size, alternated in one run; the ratio of median throughputs, and peak RSS of every side."""

from __future__ import annotations

import argparse
import contextlib
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import filesystem, parse_size
from ..machine import describe, load_average
from ..naive_quic import DEFAULT_DATAGRAM_SIZE, DEFAULT_LOOP
from ..peers.base import Peer, Transfer
from ..peers.flux import FluxPeer, fluxd_has_quic
from ..peers.naive_quic import NaiveQuicPeer
from ..report import publish
from ..sysdeps import ensure_tools
from .common import measured_transfer, throughput
from .quic_report import FLUX, NAIVE, render
from .workspace import Workspace

HELP = "256 MiB over fluxd-QUIC against naive stock aioquic, same datagram size, alternated"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=parse_size, help="file size [256M; quick: 64M]")
    parser.add_argument("--reps", type=int, help="repetitions per tool [5; quick: 3]")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 3 repetitions")
    parser.add_argument(
        "--datagram-size",
        type=int,
        default=DEFAULT_DATAGRAM_SIZE,
        help="QUIC max_datagram_size of both tools, both ends (1200-16000) [%(default)s]",
    )
    parser.add_argument(
        "--transport",
        choices=("quic", "tcp"),
        default="quic",
        help="fluxctl --transport; tcp only exercises the harness and never updates "
        "RESULTS.md [%(default)s]",
    )
    parser.add_argument(
        "--naive-loop",
        choices=("asyncio", "uvloop"),
        default=DEFAULT_LOOP,
        help="event loop of the naive transfer; stock aioquic is ~10x slower on uvloop, whose "
        "clock ticks in milliseconds [%(default)s]",
    )
    parser.add_argument(
        "--baseline-only", action="store_true", help="run only the naive transfer (no RESULTS.md)"
    )
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def _versions() -> dict[str, str]:
    found = {}
    for package in ("aioquic", "uvloop"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _check(args: argparse.Namespace) -> None:
    if args.reps is not None and args.reps < 1:
        raise BenchError("--reps must be at least 1")
    if not 1200 <= args.datagram_size <= 16000:  # aioquic: 1200 minimum; 2-byte frame lengths
        raise BenchError("--datagram-size must be between 1200 and 16000")
    if args.transport == "quic" and not args.baseline_only and not fluxd_has_quic():
        raise BenchError(
            "this fluxd has no QUIC transport yet (`fluxd serve --help` lists no "
            "--quic-datagram-size); use --transport tcp to exercise the harness, or "
            "--baseline-only to measure the naive transfer alone"
        )


def _throughput(ws: Workspace, args: argparse.Namespace, size: int, reps: int) -> dict[str, Any]:
    src, digest = ws.source(size)
    naive_dest = ws.path / "naive-dest"
    naive_dest.mkdir(exist_ok=True)
    quic_size = args.datagram_size if args.transport == "quic" else None
    transfers: list[Transfer] = []
    with contextlib.ExitStack() as stack:
        peers: list[Peer] = []
        if not args.baseline_only:
            peers.append(stack.enter_context(FluxPeer(ws.flux_root, args.transport, quic_size)))
        naive = NaiveQuicPeer(naive_dest, args.datagram_size, args.naive_loop)
        peers.append(stack.enter_context(naive))
        for rep in range(reps):
            print(f"throughput rep {rep + 1}/{reps}", file=sys.stderr)
            transfers += [measured_transfer(peer, src, digest, rep == 0) for peer in peers]
    return throughput(transfers, size, reps, (FLUX, NAIVE))


def run(args: argparse.Namespace) -> int:
    """Run the scenario, print the section, save the run, update RESULTS.md; exit status."""
    size = args.size or parse_size("64M" if args.quick else "256M")
    reps = args.reps or (3 if args.quick else 5)
    _check(args)
    ensure_tools()  # GNU time, for the clients' peak RSS
    stand_in = args.transport != "quic" and not args.baseline_only
    config = {
        "datagram_size": args.datagram_size,
        "flux_transport": None if args.baseline_only else args.transport,
        "naive_loop": args.naive_loop,
        "stand_in": stand_in,
    }
    with Workspace(args.dir) as ws:
        if filesystem(ws.path)[0] == "tmpfs":
            print("note: files are on tmpfs, so fluxd's fdatasync costs nothing", file=sys.stderr)
        data: dict[str, Any] = {"scenario": "quic", "config": config}
        data["machine"] = describe(ws.base) | _versions()
        data["throughput"] = _throughput(ws, args, size, reps)
        data["machine"]["load_at_end"] = load_average()
    why_not = ""
    if stand_in or args.baseline_only:
        why_not = "fluxd ran over TCP, not QUIC" if stand_in else "no fluxd run (--baseline-only)"
    publish("quic", render(data), data, not args.no_results, why_not)
    return 0
