"""Scenario `admin`: the admin listener's latency under 200 uploads, and what metrics cost.

1. While `benchmarks.loadgen` runs 200 clients uploading 10 MiB each (scenario `concurrency`'s
   crowd), a thread asks /metrics and /readyz in turn, one request at a time, and times each.
2. A 1 GiB `fluxctl send` to a daemon with the admin listener off and to one with it on (and
   /metrics scraped every second during the send), alternated, several times: the ratio of
   medians is what the metrics cost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import parse_size
from ..machine import describe
from ..measure import Stats
from ..peers.flux import FluxPeer
from ..report import write_run
from ..sysdeps import ensure_tools
from .workspace import Workspace

HELP = "admin endpoints' latency under 200 uploads; 1 GiB send with and without metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=200, help="uploads at once [200]")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="send [1G]")
    parser.add_argument("--reps", type=int, default=5, help="sends of each kind [5]")
    parser.add_argument("--dir", type=Path, help="where files live [/var/tmp]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise BenchError(f"{path} answered {answer.status}")
    finally:
        conn.close()
    return time.perf_counter() - started


class _Prober(threading.Thread):
    """Asks `paths` in turn until stopped (`every`: seconds between requests)."""

    def __init__(self, port: int, paths: tuple[str, ...], every: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.port, self.paths, self.every = port, paths, every
        self.times: dict[str, list[float]] = {p: [] for p in paths}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.paths:
                self.times[path].append(_get(self.port, path))
            self.stop.wait(self.every)


def _latency(ws: Workspace, clients: int) -> dict[str, Any]:
    src, _ = ws.source(parse_size("10M"))
    port = _free_port()
    limits: dict[str, int | str] = {
        k: clients + 64
        for k in (
            "connections",
            "connections_per_address",
            "connections_per_subject",
            "uploads_per_subject",
        )
    }
    root = ws.path / "latency"
    root.mkdir()
    options = ["--admin-listen", f"127.0.0.1:{port}"]
    with FluxPeer(root, "tcp", limits=limits, serve_options=options) as flux:
        argv = [sys.executable, "-m", "benchmarks.loadgen", f"flux://127.0.0.1:{flux.port}/c/"]
        argv += [str(src), "--pin", flux.fingerprint, "--clients", str(clients)]
        prober = _Prober(port, ("/metrics", "/readyz"))
        prober.start()
        run, _, _ = flux.measure(argv, timeout=600.0 + clients * 5)
        prober.stop.set()
        prober.join()
    report = json.loads(run.stdout.strip().splitlines()[-1])
    out: dict[str, Any] = {"clients": clients, "completed": report["completed"]}
    for path, times in prober.times.items():
        ms = sorted(t * 1000 for t in times)
        out[path] = {
            "count": len(ms),
            "median_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 2),
            "max_ms": round(ms[-1], 2),
        }
    return out


def _cost(ws: Workspace, size: int, reps: int) -> dict[str, Any]:
    src, _ = ws.source(size)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for rep in range(reps):
        for kind in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            port = _free_port()
            options = ["--admin-listen", f"127.0.0.1:{port}" if kind == "on" else ""]
            root = ws.path / f"cost-{kind}-{rep}"
            root.mkdir()
            with FluxPeer(root, "tcp", serve_options=options) as flux:
                prober = _Prober(port, ("/metrics",), every=1.0) if kind == "on" else None
                if prober is not None:
                    prober.start()
                sent = flux.send(src, f"big-{rep}.bin")
                if prober is not None:
                    prober.stop.set()
                    prober.join()
            rates[kind].append(sent.mb_per_s)
            print(f"  {kind}: {sent.mb_per_s:.0f} MB/s", file=sys.stderr)
    off, on = Stats.of(rates["off"]), Stats.of(rates["on"])
    return {"size": size, "reps": reps, "off": rates["off"], "on": rates["on"],
            "ratio_on_off": round(on.median / off.median, 4)}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    ensure_tools()
    data: dict[str, Any] = {"scenario": "admin"}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        print(f"{args.clients} uploads with /metrics and /readyz asked", file=sys.stderr)
        data["latency"] = _latency(ws, args.clients)
        print(f"{args.size} sends, admin off and on, alternated", file=sys.stderr)
        data["cost"] = _cost(ws, args.size, args.reps)
    print(json.dumps({k: v for k, v in data.items() if k != "machine"}, indent=1))
    print(f"\nrun saved to {write_run('admin', data)}", file=sys.stderr)
    return 0
