"""Scenario `links`: fluxd (TCP, auto lanes, QUIC), scp and rsync over emulated links,
alternated.

Each link (benchmarks/netem/links.toml: lan, wan, lossy, mobile) is brought up between two
network namespaces, checks itself (delay, rate, loss within 10 %), and only then carries the
transfers; a link that fails its self-test is reported as such, with no figures. Daemons and
sshd run in the server namespace, clients in the client namespace. A transfer that fails or
times out counts as not completed (its reason is kept); goodput is file size over wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import format_size, parse_size
from ..machine import describe, load_average
from ..netem.emulator import Emulator
from ..netem.selftest import run_selftest
from ..netem.spec import Emulated, SpecError, load
from ..netem.topology import TopologyError
from ..peers.base import Placement, Transfer
from ..peers.flux import FluxPeer
from ..peers.ssh import RsyncPeer, SshPeer
from ..report import put_section, update_results, write_run
from ..sysdeps import ensure_tools
from .common import comma_choices, measured_transfer, start_peers, summarize
from .links_report import render_header, render_link
from .workspace import Workspace

HELP = "fluxd TCP/auto/QUIC, scp and rsync over emulated links (lan, wan, lossy, mobile)"
LINKS = ("lan", "wan", "lossy", "mobile")
SIZES = {"lan": "1G", "wan": "128M", "lossy": "64M", "mobile": "128M"}  # scp at 0.4 MB/s on lossy
#: mobile: at least 64 MiB, so that even at the full 20 Mbit/s a transfer lasts past its first
#: blackhole (25-30 s into it) and address change (30 s).
QUICK_SIZES = {"lan": "256M", "wan": "64M", "lossy": "32M", "mobile": "64M"}
TOOLS = ("fluxd-tcp", "fluxd-tcp4", "fluxd-auto", "fluxd-quic", "scp", "rsync")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--link", action="append", choices=LINKS, help="one link (repeatable) [all four]"
    )
    parser.add_argument("--size", type=parse_size, help="file size for every link [per link]")
    parser.add_argument("--reps", type=int, help="repetitions per tool and link [3; quick: 1]")
    parser.add_argument("--quick", action="store_true", help="smaller files, 1 repetition")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per transfer [%(default)s]"
    )
    parser.add_argument(
        "--tcp-cc",
        default="cubic",
        help="default TCP congestion control of both namespaces, i.e. what scp and rsync use "
        "(fluxd asks for BBR on its own sockets) [%(default)s: Debian's default]",
    )
    parser.add_argument(
        "--tools",
        type=comma_choices(TOOLS),
        default=list(TOOLS),
        help=f"tools, comma-separated [{','.join(TOOLS)}]",
    )
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def _peers(
    ws: Workspace, placement: Placement, tools: Sequence[str] = TOOLS
) -> list[FluxPeer | SshPeer]:
    """The servers of `tools` (not started yet), in TOOLS order, each with its own directory."""

    def flux(transport: str, tool: str, lanes: int = 1) -> Callable[[Path], FluxPeer]:
        # With a token, as over a real network: a lane back from a new address rejoins.
        return lambda d: FluxPeer(
            d, transport, None, placement, tool, strict=False, lanes=lanes, token=True
        )

    make: dict[str, Callable[[Path], FluxPeer | SshPeer]] = {
        "fluxd-tcp": flux("tcp", "fluxd-tcp"),
        "fluxd-tcp4": flux("tcp", "fluxd-tcp4", lanes=4),
        "fluxd-auto": flux("auto", "fluxd-auto"),
        "fluxd-quic": flux("quic", "fluxd-quic"),
        "scp": lambda d: SshPeer(d, placement=placement),
        "rsync": lambda d: RsyncPeer(d, placement=placement),
    }
    peers = []
    for tool in (t for t in TOOLS if t in tools):
        (ws.path / tool).mkdir(exist_ok=True)
        peers.append(make[tool](ws.path / tool))
    return peers


def link_result(emulated: Emulated) -> dict[str, Any]:
    """The start of a link's result: its name and what it was given."""
    spec = dataclasses.asdict(emulated.spec) | {"relay": emulated.relay}
    return {"link": emulated.name, "spec": spec}


def checked_placement(emu: Emulator, result: dict[str, Any]) -> Placement | None:
    """Self-test the link `emu` holds up (its lines go into `result["selftest"]`); where the
    servers and clients run over it, or None if it failed (`result["refused"]` says so)."""
    checks = run_selftest(emu)
    result["selftest"] = [c.line() for c in checks]
    for line in result["selftest"]:
        print(f"  {line}", file=sys.stderr)
    if not all(c.ok for c in checks):
        result["refused"] = "the link failed its self-test"
        return None
    return Placement(
        emu.server_ip, tuple(emu.exec_prefix("server")), tuple(emu.exec_prefix("client"))
    )


def _one_link(
    ws: Workspace,
    name: str,
    size: int,
    reps: int,
    timeout: float,
    tcp_cc: str,
    tools: Sequence[str] = TOOLS,
) -> dict[str, Any]:
    emulated = load(name)
    result = link_result(emulated) | {"tools": list(tools)}
    src, digest = ws.source(size)
    print(f"link {name}: up", file=sys.stderr)
    with Emulator(emulated, tag=f"b{name[:3]}", tcp_cc=tcp_cc) as emu:
        placement = checked_placement(emu, result)
        if placement is None:
            return result
        transfers: list[Transfer] = []
        failures: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            peers = start_peers(stack, _peers(ws, placement, tools))
            for rep in range(reps):
                print(f"link {name}: rep {rep + 1}/{reps}", file=sys.stderr)
                for peer in peers:
                    emu.restart_schedule()  # each transfer meets the same events
                    try:
                        transfers.append(measured_transfer(peer, src, digest, rep == 0, timeout))
                    except BenchError as exc:
                        why = str(exc).strip().splitlines()[-1][:300]
                        print(f"  {peer.tool:10} FAILED: {why}", file=sys.stderr)
                        failures.append({"tool": peer.tool, "rep": rep, "error": why})
    result["counters"] = emu.counters
    result.update(
        size=size,
        reps=reps,
        summary=summarize(transfers),
        failures=failures,
        runs=[t.to_json() for t in transfers],
    )
    return result


def run(args: argparse.Namespace) -> int:
    """Run the scenario over each link, print the tables, save the run, update RESULTS.md."""
    reps = args.reps or (1 if args.quick else 3)
    if reps < 1:
        raise BenchError("--reps must be at least 1")
    links = args.link or list(LINKS)
    ensure_tools()
    sizes = QUICK_SIZES if args.quick else SIZES
    data: dict[str, Any] = {"scenario": "links", "quick": args.quick, "links": []}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        data["tcp_congestion_control"] = args.tcp_cc
        for name in links:
            size = args.size or parse_size(sizes[name])
            try:
                one = _one_link(ws, name, size, reps, args.timeout, args.tcp_cc, args.tools)
                data["links"].append(one)
            except (SpecError, TopologyError) as exc:
                raise BenchError(f"link {name}: {exc}") from None
            print(f"link {name}: done ({format_size(size)} x {reps})", file=sys.stderr)
        data["machine"]["load_at_end"] = load_average()
    print("\n\n".join(render_link(data, link) for link in data["links"]))
    print(f"\nrun saved to {write_run('links', data)}", file=sys.stderr)
    if not args.no_results:
        update_results("links", render_header())
        for link in data["links"]:
            text = render_link(data, link)
            put_section(f"links-{link['link']}", text, "links", {"links": [link]})
    return 0
