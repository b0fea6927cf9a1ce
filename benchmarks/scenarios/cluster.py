"""Scenario `cluster`: fluxd nodes on an S3 store (issue 14), on real engines (SeaweedFS, Ceph
RGW) started on loopback, one engine after the other.

1. Throughput: `fluxctl send` of one file to one node on S3 against boto3's managed multipart
   upload of the same file into the same engine (boto3 is the library the node itself stores
   with), alternated, each timed from spawning its process to reaping it.
2. Failover: two nodes on one store and prefix sharing one certificate directory (one CA, one
   token key), listed as the nodes of one name in the client's config file. Node A dies by
   SIGKILL at its N-th durable chunk batch (FLUX_CRASH_AT) and the client's one command
   finishes through node B by itself, once A's lease on the upload has lapsed.
3. Peak RSS of a node by file size, on S3 and on local storage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import BenchError
from ..engines import CephRGW, Engine, SeaweedFS
from ..files import format_size, parse_size
from ..machine import describe, load_average
from ..measure import MeasuredCommand, ReadBytesSampler, Run
from ..peers.base import StoredPeer, Transfer
from ..peers.flux import FluxPeer
from ..peers.process import json_report
from ..peers.s3 import Boto3Peer
from ..report import publish
from .cluster_report import render
from .common import comma_choices, fresh_peak, measured_transfer, stored_transfer, throughput
from .workspace import Workspace

HELP = "fluxd nodes on S3 (SeaweedFS, Ceph RGW): throughput against boto3, failover, peak RSS"
ENGINES = ("seaweedfs", "ceph")
#: Where every node keeps its files in the engine's bucket (boto3 writes under boto3/).
PREFIX = "nodes/"
#: fluxd's own window (`fluxd serve --window`): 4 chunks of 8 MiB in flight.
WINDOW = "32M"


def _sizes(text: str) -> list[int]:
    return [] if text.strip().lower() in ("", "none") else sorted(map(parse_size, text.split(",")))


def size_or_none(text: str) -> str | None:
    """A size option's text as given (checked), or None for `none`."""
    if text.strip().lower() in ("", "none"):
        return None
    parse_size(text)
    return text.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engines", type=comma_choices(ENGINES), default=list(ENGINES), help="[seaweedfs,ceph]"
    )
    parser.add_argument("--size", type=parse_size, default="1G", help="throughput file [1G]")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per tool [3]")
    parser.add_argument(
        "--transport", choices=("tcp", "auto"), default="tcp", help="fluxctl's [tcp]"
    )
    parser.add_argument(
        "--chunk-size",
        type=size_or_none,
        default="none",
        help="fluxctl send's, or none: fluxctl's choice within the server's rule [none]",
    )
    parser.add_argument(
        "--window",
        type=size_or_none,
        default=WINDOW,
        help=f"the nodes' (fluxd serve --window), or none: fluxd's default [{WINDOW}]",
    )
    parser.add_argument("--part-size", type=parse_size, default="8M", help="boto3's parts [8M]")
    parser.add_argument(
        "--concurrency", type=int, help="boto3's threads per upload [boto3's default]"
    )
    parser.add_argument(
        "--failover-size", type=parse_size, default="256M", help="file killed mid-way [256M]"
    )
    parser.add_argument(
        "--kill-at", type=int, default=4, help="node A dies at its Nth durable batch [4]"
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=20.0, help="[storage] lease_ttl, seconds [20]"
    )
    parser.add_argument(
        "--mem-sizes", type=_sizes, default="256M,1G", help="peak RSS sizes, or none [256M,1G]"
    )
    parser.add_argument(
        "--ceph-memory", type=parse_size, default="8G", help="Ceph's memstore (RAM) [8G]"
    )
    parser.add_argument("--dir", type=Path, help="where files live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


@dataclass(frozen=True)
class Nodes:
    """How the scenario's fluxd nodes on S3 are set up and reached."""

    transport: str
    chunk_size: str | None
    lease_ttl: float
    window: str | None = None

    @property
    def send_options(self) -> list[str]:
        return ["--chunk-size", self.chunk_size] if self.chunk_size else []

    @property
    def serve_options(self) -> list[str]:
        return ["--window", self.window] if self.window else []

    def node(
        self, engine: Engine, root: Path, tool: str, certs: Path | None = None, crash: str = ""
    ) -> FluxPeer:
        """A node (not started) on `engine`'s bucket under PREFIX, with a token, trusted
        through its CA; `certs`: share another node's; `crash`: its FLUX_CRASH_AT."""
        storage: dict[str, str | int | bool] = {
            "backend": "s3",
            "endpoint": engine.endpoint,
            "bucket": engine.bucket,
            "prefix": PREFIX,
            "region": engine.region,
            "lease_ttl": f"{self.lease_ttl:g}s",
        }
        env = {"AWS_ACCESS_KEY_ID": engine.access_key, "AWS_SECRET_ACCESS_KEY": engine.secret_key}
        env |= {"FLUX_CRASH_AT": crash} if crash else {}
        root.mkdir(exist_ok=True)
        return FluxPeer(
            root, self.transport, tool=tool, token=True, storage=storage, daemon_env=env,
            certs=certs, send_options=self.send_options, ca=True,
            serve_options=self.serve_options,
        )  # fmt: skip


def _throughput(
    ws: Workspace, engine: Engine, nodes: Nodes, args: argparse.Namespace
) -> dict[str, Any]:
    """fluxd on S3 and boto3, alternated, `args.reps` times; the first copies are hashed."""
    src, digest = ws.source(args.size)
    transfers: list[Transfer] = []
    with nodes.node(engine, ws.path / "node", "fluxd-s3") as node:
        peers: list[StoredPeer] = [node, Boto3Peer(engine, args.part_size, args.concurrency)]
        for rep in range(args.reps):
            print(f"{engine.name}: throughput rep {rep + 1}/{args.reps}", file=sys.stderr)
            transfers += [stored_transfer(p, src, digest, rep == 0, ws.path) for p in peers]
    return throughput(transfers, args.size, args.reps, ("fluxd-s3", "boto3"))


#: The name the failover's client sends to: its config file lists the two nodes as this
#: name's, so it is never resolved; fluxd's default certificate carries `localhost`.
SERVICE = "localhost:7070"


def client_config(nodes: Sequence[FluxPeer]) -> str:
    """The client config file's table making SERVICE lead to `nodes`, in that order."""
    listed = ", ".join(f'"{node.placement.host}:{node.port}"' for node in nodes)
    return f'[servers."{SERVICE}"]\nnodes = [{listed}]\n'


def failover_command(nodes: Sequence[FluxPeer], src: Path, name: str) -> list[str]:
    """The client's one command: a send to SERVICE, which its config file (`client_config`)
    leads to the nodes; fluxctl goes on to the next node by itself when one dies."""
    return nodes[0].send_argv(src, name, server=SERVICE)


def store_view(engine: Engine, prefix: str) -> dict[str, int]:
    """What the store holds of uploads in progress under `prefix`: multipart parts stored, their
    bytes and the largest (the chunk size), and chunk keys (the parts a node has recorded as
    held; s3_layout's uploads/*/chunks/)."""
    client, bucket = engine.client(), engine.bucket
    sizes: list[int] = []
    for up in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        listed = client.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        sizes += [part["Size"] for part in listed.get("Parts", [])]
    chunks = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "uploads/"
    ):
        chunks += sum("/chunks/" in obj["Key"] for obj in page.get("Contents", []))
    return {
        "parts": len(sizes),
        "part_bytes": sum(sizes),
        "chunk_size": max(sizes, default=0),
        "chunk_keys": chunks,
    }


@dataclass
class Failover:
    """The failover's one command: its run, when node A died (time.monotonic()), the bytes A
    had read by then (files and sockets), and the store's view of the upload then."""

    started: float
    run: Run
    died: float
    read_by_a: int
    view: dict[str, int]

    @property
    def ended(self) -> float:
        return self.started + self.run.seconds


def _fail_over(nodes: Sequence[FluxPeer], src: Path, name: str, engine: Engine) -> Failover:
    """Run the failover's command while watching node A: the store is listed as soon as A is
    dead (node B waits for A's lease on the upload to lapse before it writes).

    Raises:
        BenchError: node A did not die, or the command outlived its time limit.
    """
    env, limit = nodes[0].env, max(600.0, src.stat().st_size / 1e6)
    config = Path(env["XDG_CONFIG_HOME"]) / "fluxctl" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(client_config(nodes))
    argv, a = failover_command(nodes, src, name), nodes[0]
    with ReadBytesSampler(a.pid) as read:
        started = time.monotonic()
        with MeasuredCommand(argv, env) as command:
            while (died := a.died_at(wait=0.05)) is None and command.poll() is None:
                if time.monotonic() - started > limit:
                    raise BenchError(f"node A did not die and the command ran {limit:.0f} s")
            view = store_view(engine, PREFIX) if died is not None else {}
            run = command.wait(limit - (time.monotonic() - started))
    if died is None:
        raise BenchError(f"node A did not die; the command ended first: {run.stdout[-500:]}")
    return Failover(started, run, died, read.read_bytes, view)


def _failover(
    ws: Workspace, engine: Engine, nodes: Nodes, args: argparse.Namespace
) -> dict[str, Any]:
    """Node A killed at its `kill_at`-th durable batch, the command finishing through node B
    by itself; the copy checked whole."""
    src, digest = ws.source(args.failover_size)
    crash = f"chunks-durable:{args.kill_at}"
    print(f"{engine.name}: failover, node A killed at {crash}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(nodes.node(engine, ws.path / "node-a", "node-a", crash=crash))
        b = stack.enter_context(nodes.node(engine, ws.path / "node-b", "node-b", a.certs))
        done = _fail_over([a, b], src, src.name, engine)
        report = json_report("fluxctl send (failover)", done.run)
        b.check_copy(src.name, src.stat().st_size, digest, ws.path)
        b.remove_copy(src.name)
        addresses = {"A": f"{a.placement.host}:{a.port}", "B": f"{b.placement.host}:{b.port}"}
    return {
        "size": args.failover_size,
        "kill_at": crash,
        "lease_ttl": nodes.lease_ttl,
        "window": parse_size(nodes.window) if nodes.window else None,
        "report": report,
        "nodes": addresses,
        "read_by_a": done.read_by_a,
        "store_at_death": done.view,
        "seconds": done.run.seconds,
        "failover_seconds": done.ended - done.died,
    }


def _peak(peer: FluxPeer, src: Path, digest: str, scratch: Path) -> Transfer:
    if peer.storage:
        return stored_transfer(peer, src, digest, False, scratch)
    return measured_transfer(peer, src, digest, False)


def peak_rss(
    ws: Workspace, sizes: Sequence[int], make: Callable[[], FluxPeer], label: str
) -> list[dict[str, Any]]:
    """One send per size into a node from `make()` (a fresh one per size unless its peak
    can be reset): the node's and fluxctl's peak RSS, labelled `label`."""
    rows = []
    with make() as shared:
        for size in sizes:
            src, digest = ws.source(size)
            print(f"peak RSS, {label}, {format_size(size)}", file=sys.stderr)
            with fresh_peak(shared, make) as node:
                t = _peak(node, src, digest, ws.path)
            rows.append({"backend": label, "size": size, "transfer": t.to_json()})
    return rows


def _engine_runs(
    ws: Workspace, name: str, nodes: Nodes, args: argparse.Namespace
) -> dict[str, Any]:
    engine = SeaweedFS() if name == "seaweedfs" else CephRGW(memstore_mib=args.ceph_memory >> 20)
    with engine:
        result: dict[str, Any] = {"engine": name, "version": engine.version()}
        result["throughput"] = _throughput(ws, engine, nodes, args)
        result["failover"] = _failover(ws, engine, nodes, args)
        make = lambda: nodes.node(engine, ws.path / "node-rss", "fluxd-s3")  # noqa: E731
        result["memory"] = peak_rss(ws, args.mem_sizes, make, f"S3 ({name})")
    return result


def run(args: argparse.Namespace) -> int:
    """Run the scenario on each engine, print the section, save the run, update RESULTS.md."""
    if args.reps < 1:
        raise BenchError("--reps must be at least 1")
    nodes = Nodes(args.transport, args.chunk_size, args.lease_ttl, args.window)
    with Workspace(args.dir) as ws:
        data: dict[str, Any] = {"scenario": "cluster", "machine": describe(ws.base)}
        data["setup"] = {
            "transport": nodes.transport,
            "chunk_size": nodes.chunk_size,
            "window": nodes.window,
            "part_size": args.part_size,
            "lease_ttl": nodes.lease_ttl,
            "boto3": importlib.metadata.version("boto3"),
        }
        data["engines"] = [_engine_runs(ws, name, nodes, args) for name in args.engines]
        local = lambda: FluxPeer(  # noqa: E731
            ws.flux_root, args.transport, serve_options=nodes.serve_options
        )
        data["memory_local"] = peak_rss(ws, args.mem_sizes, local, "local disk")
        data["machine"]["load_at_end"] = load_average()
    publish("cluster", render(data), data, not args.no_results)
    return 0
