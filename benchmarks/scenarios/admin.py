"""Scenario `admin`: the admin listener's latency under 200 uploads, and what metrics cost.

1. While `benchmarks.loadgen` runs 200 clients uploading 10 MiB each (scenario `concurrency`'s
   crowd), a thread asks /metrics and /readyz in turn, one request at a time, and times each.
2. A 1 GiB `fluxctl send` to a daemon with the admin listener off, to one with it on but never
   asked, and to one with /metrics scraped every second during the send, taking turns, several
   times: the ratios of medians of the daemon's CPU seconds per GB are what the listener and
   the scraping cost (the ratios of rates are reported too; on a shared machine the rate varies
   with the neighbours far more than 2 %).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .. import BenchError
from ..files import parse_size
from ..machine import describe
from ..peers.flux import FluxPeer
from ..peers.ssh import free_port
from ..report import write_run
from ..sysdeps import ensure_tools
from .workspace import Workspace

HELP = "admin endpoints' latency under 200 uploads; 1 GiB send with and without metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=200, help="uploads at once [200]")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="send [1G]")
    parser.add_argument("--reps", type=int, default=7, help="sends of each kind [7]")
    parser.add_argument(
        "--part", choices=("all", "latency", "cost"), default="all", help="what to run [all]"
    )
    parser.add_argument("--dir", type=Path, help="where files live [/var/tmp]")


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
    port = free_port()
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


#: The daemons compared: no admin listener; one listening but never asked; one whose /metrics
#: is scraped every second during the send.
KINDS = ("off", "idle", "on")
#: Seconds between scrapes of the `on` daemon (Prometheus is often set to 15 s or more).
SCRAPE_EVERY = 1.0


def _cost(ws: Workspace, size: int, reps: int) -> dict[str, Any]:
    """Each send's wall-clock rate and the daemon's CPU seconds per GB (user + system, over the
    send alone): on a shared machine the rate follows the neighbours, the CPU work much less.
    The kinds take turns, each rep starting one later, so none always follows another."""
    src, _ = ws.source(size)
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    scrapes = 0
    for rep in range(reps):
        for kind in KINDS[rep % 3 :] + KINDS[: rep % 3]:
            port = free_port()
            options = ["--admin-listen", "" if kind == "off" else f"127.0.0.1:{port}"]
            root = ws.path / f"cost-{kind}-{rep}"
            root.mkdir()
            with FluxPeer(root, "tcp", serve_options=options) as flux:
                prober = _Prober(port, ("/metrics",), every=SCRAPE_EVERY) if kind == "on" else None
                if prober is not None:
                    prober.start()
                sent = flux.send(src, f"big-{rep}.bin")
                if prober is not None:
                    prober.stop.set()
                    prober.join()
                    scrapes += len(prober.times["/metrics"])
            rates[kind].append(round(sent.mb_per_s, 1))
            cpu[kind].append(round(sent.details["server_cpu_seconds"] / (size / 1e9), 3))
            line = f"{sent.mb_per_s:.0f} MB/s, {cpu[kind][-1]:.3f} CPU s/GB"
            print(f"  {kind}: {line}", file=sys.stderr)
    out: dict[str, Any] = {"size": size, "reps": reps, "scrapes": scrapes}
    for name, values in (("mb_per_s", rates), ("cpu_s_per_gb", cpu)):
        medians = {k: statistics.median(v) for k, v in values.items()}
        out[name] = {
            "runs": values,
            "median": medians,
            "ratio_to_off": {k: round(medians[k] / medians["off"], 4) for k in KINDS[1:]},
            # Each rep's run against the same rep's `off` (minutes apart, not the whole run's
            # drift), the median of those.
            "paired_ratio_to_off": {k: _paired(values[k], values["off"]) for k in KINDS[1:]},
            # Half the interquartile range over the median: roughly how finely the medians of
            # this many runs can tell two kinds apart.
            "spread": {k: round(_half_iqr(v) / medians[k], 4) for k, v in values.items()},
        }
    return out


def _scrape_cpu(ws: Workspace, count: int = 500) -> dict[str, Any]:
    """The daemon's CPU seconds per /metrics answer, asked `count` times of an idle daemon with
    a few requests' counters in it: what one scrape costs, far below what a send's A/B can
    resolve."""
    port = free_port()
    root = ws.path / "scrape"
    root.mkdir()
    with FluxPeer(root, "tcp", serve_options=["--admin-listen", f"127.0.0.1:{port}"]) as flux:
        src, _ = ws.source(parse_size("1M"))
        for i in range(3):
            flux.send(src, f"small-{i}.bin")
        process = psutil.Process(flux.pid)
        _get(port, "/metrics")
        before = sum(process.cpu_times()[:2])
        for _ in range(count):
            _get(port, "/metrics")
        used = sum(process.cpu_times()[:2]) - before
    return {"count": count, "cpu_ms_per_scrape": round(used / count * 1000, 3)}


def _paired(kind: list[float], off: list[float]) -> float:
    return round(statistics.median(a / b for a, b in zip(kind, off, strict=True)), 4)


def _half_iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2


def run(args: argparse.Namespace) -> int:
    ensure_tools()
    data: dict[str, Any] = {"scenario": "admin"}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        if args.part in ("all", "latency"):
            print(f"{args.clients} uploads with /metrics and /readyz asked", file=sys.stderr)
            data["latency"] = _latency(ws, args.clients)
        if args.part in ("all", "cost"):
            print(f"{args.size} sends, admin off, idle and scraped, in turn", file=sys.stderr)
            data["cost"] = cost = _cost(ws, args.size, args.reps)
            cost["scrape"] = scrape = _scrape_cpu(ws)
            # The daemon's CPU per second of a scraped send, and one scrape's share of it.
            busy = cost["cpu_s_per_gb"]["median"]["on"] * cost["mb_per_s"]["median"]["on"] / 1000
            share = scrape["cpu_ms_per_scrape"] / 1000 / SCRAPE_EVERY / busy
            cost["scrape_share_of_daemon_cpu"] = round(share, 6)
    print(json.dumps({k: v for k, v in data.items() if k != "machine"}, indent=1))
    print(f"\nrun saved to {write_run('admin', data)}", file=sys.stderr)
    return 0
