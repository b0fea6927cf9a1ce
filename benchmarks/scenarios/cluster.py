"""Scenario `cluster`: fluxd nodes on an S3 store (issue 14), on real engines (SeaweedFS, Ceph
RGW) started on loopback, one engine after the other.

1. Throughput: `fluxctl send` of one file to one node on S3 against boto3's managed multipart
   upload of the same file into the same engine (boto3 is the library the node itself stores
   with), alternated, each timed from spawning its process to reaping it.
2. Failover: two nodes on one store and prefix sharing one certificate directory (one CA, one
   token key). Node A dies by SIGKILL at its N-th durable chunk batch (FLUX_CRASH_AT) and the
   client finishes through node B, which first waits for A's lease on the upload to lapse.
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
from ..measure import ReadBytesSampler, Run, run_measured
from ..peers.base import StoredPeer, Transfer
from ..peers.flux import FluxPeer
from ..peers.process import json_report
from ..peers.s3 import Boto3Peer
from ..report import publish
from .cluster_report import render
from .common import comma_choices, fresh_peak, measured_transfer, stored_transfer, summarize
from .workspace import Workspace

HELP = "fluxd nodes on S3 (SeaweedFS, Ceph RGW): throughput against boto3, failover, peak RSS"
ENGINES = ("seaweedfs", "ceph")
#: Where every node keeps its files in the engine's bucket (boto3 writes under boto3/).
PREFIX = "nodes/"
#: fluxd's own window (`fluxd serve --window`): 4 chunks of 8 MiB in flight.
WINDOW = "32M"
#: Seconds after the failover's first command fails that node A must be seen dead.
DEATH_WAIT = 30.0


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
    summary = summarize(transfers)
    ratio = summary["fluxd-s3"]["mb_per_s"]["median"] / summary["boto3"]["mb_per_s"]["median"]
    runs = [t.to_json() for t in transfers]
    return {"size": args.size, "reps": args.reps, "summary": summary, "ratio": ratio, "runs": runs}


def failover_commands(nodes: Sequence[FluxPeer], src: Path, name: str) -> list[list[str]]:
    """The client's commands, run in turn until one succeeds. fluxctl knows one server for
    now: the same send to each node's URL, every one but the last with --retry-for 0 (a dead
    node ends it at once). Once it takes a server list, this is one command naming them all."""
    argvs = [node.send_argv(src, name) for node in nodes]
    return [[*argv, "--retry-for", "0"] for argv in argvs[:-1]] + argvs[-1:]


@dataclass
class Attempt:
    """One client command of a failover: when it started (time.monotonic()) and its run."""

    started: float
    run: Run

    @property
    def ended(self) -> float:
        return self.started + self.run.seconds


def store_view(engine: Engine, prefix: str) -> dict[str, int]:
    """What the store holds of uploads in progress under `prefix`: multipart parts stored,
    and chunk keys (the parts a node has recorded as held; s3_layout's uploads/*/chunks/)."""
    client, bucket = engine.client(), engine.bucket
    parts = 0
    for up in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        listed = client.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        parts += len(listed.get("Parts", []))
    chunks = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "uploads/"
    ):
        chunks += sum("/chunks/" in obj["Key"] for obj in page.get("Contents", []))
    return {"parts": parts, "chunk_keys": chunks}


def _fail_over(
    nodes: Sequence[FluxPeer], src: Path, name: str, engine: Engine
) -> tuple[list[Attempt], int, dict[str, int]]:
    """Run the failover's commands until one succeeds: the attempts, the bytes node A had
    read when it died (files and sockets), and the store's view of the upload then."""
    attempts: list[Attempt] = []
    view: dict[str, int] = {}
    env, limit = nodes[0].env, max(600.0, src.stat().st_size / 1e6)
    with ReadBytesSampler(nodes[0].pid) as read:
        for argv in failover_commands(nodes, src, name):
            attempts.append(Attempt(time.monotonic(), run_measured(argv, env, limit)))
            if attempts[-1].run.exit_code == 0:
                break
            _await_death(nodes[0])
            view = view or store_view(engine, PREFIX)
    return attempts, read.read_bytes, view


def _await_death(node: FluxPeer) -> None:
    deadline = time.monotonic() + DEATH_WAIT
    while node.died_at() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"{node.tool} failed the client but did not die:\n{node.log_tail()}")
        time.sleep(0.01)


def _failover(
    ws: Workspace, engine: Engine, nodes: Nodes, args: argparse.Namespace
) -> dict[str, Any]:
    """Node A killed at its `kill_at`-th durable batch, node B finishing; checked whole."""
    src, digest = ws.source(args.failover_size)
    crash = f"chunks-durable:{args.kill_at}"
    print(f"{engine.name}: failover, node A killed at {crash}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(nodes.node(engine, ws.path / "node-a", "node-a", crash=crash))
        b = stack.enter_context(nodes.node(engine, ws.path / "node-b", "node-b", a.certs))
        attempts, read_by_a, view = _fail_over([a, b], src, src.name, engine)
        last = attempts[-1]
        report = json_report("fluxctl send (failover)", last.run)
        b.check_copy(src.name, src.stat().st_size, digest, ws.path)
        b.remove_copy(src.name)
        died = a.died_at()
    if len(attempts) < 2 or died is None:
        raise BenchError(f"node A was not killed at {crash}: the first command succeeded")
    return {
        "size": args.failover_size,
        "kill_at": crash,
        "lease_ttl": nodes.lease_ttl,
        "chunk_size": parse_size(nodes.chunk_size or "0") or None,
        "report": report,
        "read_by_a": read_by_a,
        "store_at_death": view,
        "first_exit": attempts[0].run.exit_code,
        "first_seconds": attempts[0].run.seconds,
        "detect_seconds": attempts[0].ended - died,
        "second_seconds": last.run.seconds,
        "failover_seconds": last.ended - died,
        "total_seconds": last.ended - attempts[0].started,
        "commands": len(attempts),
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
