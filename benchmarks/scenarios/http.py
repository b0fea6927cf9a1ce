"""Scenario `http`: a file stored in fluxd, downloaded over loopback by `curl` from fluxd's HTTPS
listener and by `fluxctl recv --transport tcp`, alternated; medians and their ratio."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import file_digest, parse_size
from ..machine import describe, load_average
from ..peers.base import Transfer, remove_copy
from ..peers.flux import FluxPeer, flux_binary
from ..peers.process import json_report
from ..report import publish
from .common import print_transfer, throughput
from .http_report import CURL, FLUX, render
from .workspace import Workspace

HELP = "1 GiB stored in fluxd: curl over HTTPS against fluxctl recv --transport tcp"
NAME = "http.bin"
#: The certificate names localhost; curl is sent to 127.0.0.1 under that name.
HOSTNAME = "localhost"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=parse_size, help="file size [1G; quick: 256M]")
    parser.add_argument("--reps", type=int, help="downloads with each tool [5; quick: 3]")
    parser.add_argument("--quick", action="store_true", help="256 MiB, 3 reps")
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def curl_argv(curl: str, ca: Path, port: int, path: str, out: Path) -> list[str]:
    """curl's GET of `path` from fluxd's HTTPS listener on 127.0.0.1:`port` into `out`,
    checking the certificate against `ca`; it prints `STATUS BYTES` on stdout."""
    return [
        curl, "--silent", "--show-error", "--fail", "--http1.1", "--cacert", str(ca),
        "--resolve", f"{HOSTNAME}:{port}:127.0.0.1", "--output", str(out),
        "--write-out", "%{http_code} %{size_download}", f"https://{HOSTNAME}:{port}{path}",
    ]  # fmt: skip


def curl_result(stdout: str) -> tuple[int, int]:
    """(status, bytes) from curl's `--write-out` line.

    Raises:
        BenchError: not the two numbers curl_argv asks for.
    """
    try:
        status, size = map(int, stdout.split())
    except ValueError:
        raise BenchError(f"curl printed {stdout!r}, not STATUS BYTES") from None
    return status, size


def _curl(flux: FluxPeer, out: Path, size: int) -> Transfer:
    curl = shutil.which("curl")
    if curl is None:
        raise BenchError("curl is not installed")
    argv = curl_argv(curl, flux.certs / "ca.pem", flux.http_port, f"/bench/{NAME}", out)
    run, server_kib, _ = flux.measure(argv, timeout=max(600.0, size / 5e6))
    if run.exit_code != 0:
        raise BenchError(f"curl exited with {run.exit_code}: {run.stderr.strip()}")
    if curl_result(run.stdout) != (200, size):
        raise BenchError(f"curl got {run.stdout!r}, expected 200 and {size} bytes")
    return Transfer.from_run(CURL, size, run, server_kib, {"argv": argv[1:-1]})


def _recv(flux: FluxPeer, out: Path, size: int) -> Transfer:
    argv = [flux_binary("fluxctl"), "recv", flux.url(NAME), str(out), *flux.trust(),
            "--transport", "tcp", "--json", "--quiet"]  # fmt: skip
    run, server_kib, _ = flux.measure(argv, timeout=max(600.0, size / 5e6))
    report = json_report(FLUX, run)
    if not report.get("ok") or report.get("bytes") != size:
        raise BenchError(f"fluxctl recv did not receive the whole file: {report}")
    return Transfer.from_run(FLUX, size, run, server_kib, {"report": report})


def _verified(transfer: Transfer, out: Path, digest: str) -> Transfer:
    """`transfer` once its copy `out` is the source (xxh3-128), removing the copy."""
    try:
        if (copy := file_digest(out)) != digest:
            raise BenchError(f"{transfer.tool}: the copy differs from the source ({copy})")
    finally:
        remove_copy(out)
    transfer.details["verified"] = "xxh3-128"
    print_transfer(transfer)
    return transfer


def _throughput(ws: Workspace, size: int, reps: int) -> dict[str, Any]:
    src, digest = ws.source(size)
    out = ws.path / "out"  # both copies on the same filesystem as the daemon's root
    out.mkdir()
    transfers: list[Transfer] = []
    with FluxPeer(ws.flux_root, "tcp", http=True) as flux:
        flux.send(src, NAME)  # stored once, as a client would, so it has its manifest
        tools = [(_curl, out / "curl.bin"), (_recv, out / "fluxctl.bin")]
        for rep in range(reps):
            print(f"rep {rep + 1}/{reps}", file=sys.stderr)
            for download, dest in tools if rep % 2 == 0 else tools[::-1]:
                transfers.append(_verified(download(flux, dest, size), dest, digest))
    return throughput(transfers, size, reps, (CURL, FLUX))


def run(args: argparse.Namespace) -> int:
    """Run the scenario, print the table, save the run, update RESULTS.md; exit status."""
    size = args.size or parse_size("256M" if args.quick else "1G")
    reps = args.reps or (3 if args.quick else 5)
    if reps < 1:
        raise BenchError("--reps must be at least 1")
    with Workspace(args.dir) as ws:
        data: dict[str, Any] = {"scenario": "http", "machine": describe(ws.base)}
        data["throughput"] = _throughput(ws, size, reps)
        data["machine"]["load_at_end"] = load_average()
    publish("http", render(data), data, not args.no_results)
    return 0
