"""Scenario `ratelimit`: does a rate-limited subject get its limit, within 10 %?

fluxd runs with `limits.rate_per_subject` set to each rate in turn; fluxctl sends and then
receives a file sized for about ten seconds at that rate, three times each way. Then
`limits.rate` (the daemon-wide bucket) alone, with two clients uploading at once: their
aggregate must match it. Rates are MB/s (10^6 bytes/s); each transfer's rate is its bytes over
fluxctl's own transfer time (`--json` "seconds": connect, handshake, transfer, commit), so the
reference is what a user sees.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fluxio.ratelimit import BURST_SECONDS

from .. import BenchError
from ..files import file_digest
from ..machine import describe, load_average
from ..measure import Stats
from ..peers.flux import FluxPeer, flux_binary
from ..peers.process import json_report
from ..report import markdown_table, publish, update_results, write_run
from . import ratelimit_client
from .common_report import machine_paragraph
from .ratelimit_client import Run
from .workspace import Workspace

HELP = "rate_per_subject and rate limits: measured rate within 10 % of the configured one"
MB = 1_000_000
SECONDS = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rates", default="5,20,50", help="per-subject limits to test, MB/s [%(default)s]"
    )
    parser.add_argument("--global-rate", type=float, default=30.0, help="limits.rate, MB/s [30]")
    parser.add_argument("--reps", type=int, default=3, help="transfers each way per rate [3]")
    parser.add_argument("--quick", action="store_true", help="one rate (20), one repetition")
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--client-rates", default="5M,20M", help="fluxctl --bwlimit values [%(default)s]"
    )
    parser.add_argument(
        "--client-seconds", type=float, default=4.0, help="data at a client limit, seconds [4]"
    )
    parser.add_argument(
        "--client-only", action="store_true", help="only the client case (fluxctl --bwlimit)"
    )


def _fluxctl(flux: FluxPeer, *args: str) -> dict[str, Any]:
    argv = [flux_binary("fluxctl"), *args, "--pin", flux.fingerprint, "--json", "--quiet"]
    run, _, _ = flux.measure(argv, timeout=600)
    report = json_report("fluxctl", run)
    if not report.get("ok"):
        raise BenchError(f"fluxctl {args[0]} failed: {report}")
    return report


def _rate(report: dict[str, Any]) -> float:
    return float(report["bytes"]) / float(report["seconds"]) / MB


def _per_subject(ws: Workspace, rate: float, reps: int) -> dict[str, Any]:
    size = int(rate * MB * SECONDS)
    src, digest = ws.source(size)
    root = ws.path / f"flux-{rate:g}"
    root.mkdir()
    up: list[float] = []
    down: list[float] = []
    with FluxPeer(root, "tcp", limits={"rate_per_subject": int(rate * MB)}) as flux:
        url = f"flux://127.0.0.1:{flux.port}/bench/r.bin"
        for rep in range(reps):
            print(f"  {rate:g} MB/s, repetition {rep + 1}/{reps}", file=sys.stderr)
            (root / "bench").mkdir(exist_ok=True)
            (root / "bench" / "r.bin").unlink(missing_ok=True)
            up.append(_rate(_fluxctl(flux, "send", str(src), url)))
            got = ws.path / "got.bin"
            got.unlink(missing_ok=True)
            down.append(_rate(_fluxctl(flux, "recv", url, str(got))))
            if file_digest(got) != digest:
                raise BenchError("the received copy differs from the source")
    shutil.rmtree(root, ignore_errors=True)
    return {"limit": rate, "size": size, "upload": up, "download": down}


def _global(ws: Workspace, rate: float) -> dict[str, Any]:
    size = int(rate * MB * SECONDS / 2)
    src, _ = ws.source(size)
    root = ws.path / "flux-global"
    root.mkdir()
    with FluxPeer(root, "tcp", limits={"rate": int(rate * MB)}) as flux:
        urls = [f"flux://127.0.0.1:{flux.port}/bench/g{i}.bin" for i in range(2)]
        print(f"  global {rate:g} MB/s, two clients at once", file=sys.stderr)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda u: _fluxctl(flux, "send", str(src), u), urls))
        wall = time.monotonic() - started
    shutil.rmtree(root, ignore_errors=True)
    longest = max(float(r["seconds"]) for r in reports)
    return {
        "limit": rate,
        "size": size,
        "clients": [_rate(r) for r in reports],
        "aggregate": 2 * size / longest / MB,
        "wall_seconds": wall,
    }


def _client(ws: Workspace, limits: list[str], reps: int, seconds: float) -> dict[str, Any]:
    """fluxctl --bwlimit against an unlimited fluxd (ratelimit_client)."""
    root = ws.path / "flux-client"
    root.mkdir()
    with FluxPeer(root, "tcp") as flux:
        base = f"flux://127.0.0.1:{flux.port}/bench"

        def transfer(run: Run, src: Path) -> dict[str, Any]:
            bw = ("--bwlimit", run.limit) if run.limit else ()
            if run.way == "send":
                return _fluxctl(flux, "send", str(src), f"{base}/{run.name}", *bw)
            # Both receives fetch what the unlimited send of their pair stored.
            stored = Run(run.rep, run.pair, False, "send").name
            got = ws.path / run.name
            report = _fluxctl(flux, "recv", f"{base}/{stored}", str(got), *bw)
            got.unlink()
            return report

        data = ratelimit_client.measure(
            limits, reps, seconds, lambda size: ws.source(size)[0], transfer
        )
    shutil.rmtree(root, ignore_errors=True)
    return data


def render(data: dict[str, Any]) -> str:
    rows = []
    for r in data["per_subject"]:
        for way in ("upload", "download"):
            s = Stats.of(r[way])
            rows.append(
                [
                    f"rate_per_subject {r['limit']:g}",
                    way,
                    f"{s.median:.2f}",
                    f"{s.min:.2f}-{s.max:.2f}",
                    ratelimit_client.limit_share(s.median, r["limit"]),
                ]
            )
    g = data["global"]
    clients = " + ".join(f"{c:.2f}" for c in g["clients"])
    rows.append(
        [
            f"rate {g['limit']:g} (2 clients)",
            "upload",
            f"{g['aggregate']:.2f}",
            clients,
            ratelimit_client.limit_share(g["aggregate"], g["limit"]),
        ]
    )
    table = markdown_table(
        ["limit (MB/s)", "direction", "measured MB/s (median)", "min-max / per client", "of limit"],
        rows,
    )
    reps = data["reps"]
    return (
        f"## Rate limits\n\n{machine_paragraph(data['machine'], 'fluxd only')}\n\n"
        "fluxd on loopback with `[limits] rate_per_subject` (then `rate`) set; each transfer "
        f"carries about {SECONDS:g} s of data at the limit; {reps} uploads and {reps} downloads "
        "per rate, over TCP. Measured rate = bytes / fluxctl's own transfer time (`--json` "
        "`seconds`: connect, TLS, handshake, transfer, commit). The global row: two clients "
        "upload at once; aggregate = both files over the slower one's time.\n\n"
        f"{table}"
    )


def run(args: argparse.Namespace) -> int:
    client = _run_client(args)
    if args.client_only:
        return client
    rates = [20.0] if args.quick else [float(r) for r in args.rates.split(",")]
    reps = 1 if args.quick else args.reps
    data: dict[str, Any] = {"scenario": "ratelimit", "reps": reps}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        data["per_subject"] = [_per_subject(ws, rate, reps) for rate in rates]
        data["global"] = _global(ws, args.global_rate)
        data["machine"]["load_at_end"] = load_average()
    publish("ratelimit", render(data), data, not args.no_results)
    return 0


def _run_client(args: argparse.Namespace) -> int:
    """The client case, published as its own section (`ratelimit-client`)."""
    limits = args.client_rates.split(",")
    reps = 1 if args.quick else args.reps
    with Workspace(args.dir) as ws:
        machine = describe(ws.base)
        data = _client(ws, limits, reps, args.client_seconds)
        machine["load_at_end"] = load_average()
    data.update(scenario="ratelimit-client", machine=machine)
    heading, _, body = ratelimit_client.render(data, BURST_SECONDS).partition("\n\n")
    text = f"{heading}\n\n{machine_paragraph(machine, 'fluxd and fluxctl')}\n\n{body}"
    print(text)
    print(f"\nrun saved to {write_run('ratelimit-client', data)}", file=sys.stderr)
    if not args.no_results:
        update_results("ratelimit-client", text)
        print("updated section ratelimit-client of benchmarks/RESULTS.md", file=sys.stderr)
    return 0
