"""Scenario `tree`: a folder tree (issue 12: 10,000 files of 4 KiB in 100 folders plus 10 of
16 MiB) copied by `fluxctl send -r`, `rsync -a` over ssh and `scp -r` (aes128-gcm), alternated,
over loopback and the emulated `wan` and `lossy` links; then the peak RSS of fluxctl and fluxd
over a tree of 100,000 small files.

Each repetition copies into an empty destination (a fresh run), checks the copy whole (every
file's name, size and bytes against the source's digest) so that a broken copy is never timed
as a fast one, then runs the same command again with nothing changed (the rerun; fluxctl and
rsync, whose quick check skips unchanged files; scp -r has none). fluxctl's and rsync's own
accounts are checked too: all files sent on a fresh run, none on a rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import check_space
from ..machine import describe, load_average
from ..measure import Stats
from ..netem.emulator import Emulator
from ..netem.spec import SpecError, load
from ..netem.topology import TopologyError
from ..peers.base import LOOPBACK, Placement, Transfer
from ..peers.flux import REPO, FluxPeer, flux_binary
from ..peers.ssh import RsyncPeer, SshPeer
from ..peers.tree import FRESH, RERUN, FluxTree, RsyncTree, ScpTree, TreeClient
from ..report import put_section, update_results, write_run
from ..sysdeps import ensure_tools
from ..treefiles import TreeInfo, TreeSpec, generate, tree_info
from .common import comma_choices
from .links import checked_placement, link_result
from .tree_report import render_header, render_memory, render_place
from .workspace import Workspace

HELP = "a folder tree: fluxctl send -r against rsync -a and scp -r (fresh, rerun), peak RSS"
PLACES = ("loopback", "wan", "lossy")
TOOLS = ("fluxctl", "rsync", "scp")
RERUN_TOOLS = ("fluxctl", "rsync")
#: Small files per place (the issue's shape: 100 per folder, one 16 MiB file per 1,000). On the
#: emulated links scp -r pays round trips per file (~4 s per 100 files at 40 ms), so smaller.
FILES = {"loopback": 10_000, "wan": 1_000, "lossy": 1_000}
QUICK_FILES = {"loopback": 1_000, "wan": 200, "lossy": 200}
RSS_FILES, QUICK_RSS_FILES = 100_000, 10_000
SPACE_MARGIN = 512 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--links",
        type=comma_choices(PLACES, none_ok=True),
        default=list(PLACES),
        help="or none [loopback,wan,lossy]",
    )
    parser.add_argument("--reps", type=int, help="repetitions per tool and link [3; quick: 1]")
    parser.add_argument("--quick", action="store_true", help="smaller trees, 1 repetition")
    parser.add_argument(
        "--files", type=int, help="small files of the tree on every link [10000 on loopback, "
        "1000 on wan and lossy; quick: 1000, 200]"
    )  # fmt: skip
    parser.add_argument(
        "--rss-files", type=int, help="small files of the peak-RSS tree, 0: none [100000; "
        "quick: 10000]"
    )  # fmt: skip
    parser.add_argument(
        "--tools",
        type=comma_choices(TOOLS, none_ok=True),
        default=list(TOOLS),
        help="[fluxctl,rsync,scp]",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per run [%(default)s]"
    )
    parser.add_argument(
        "--tcp-cc", default="cubic", help="default TCP congestion control in the link's "
        "namespaces (what scp and rsync use) [%(default)s]"
    )  # fmt: skip
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


class Trees:
    """Source trees in the workspace, generated once per spec and checked against themselves."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._made: dict[TreeSpec, tuple[Path, TreeInfo]] = {}

    def get(self, spec: TreeSpec) -> tuple[Path, TreeInfo]:
        if spec not in self._made:
            check_space(self.ws.path, 2 * spec.bytes + SPACE_MARGIN)
            root = self.ws.path / "src" / f"tree-{spec.small_files}-{spec.big_files}"
            print(f"generating {spec.describe()} in {root}", file=sys.stderr)
            info = generate(spec, root)
            if (walked := tree_info(root)) != info:  # the digest of a walk must match
                raise BenchError(f"the tree digests disagree: {walked} != {info}")
            self._made[spec] = (root, info)
        return self._made[spec]


def _remove(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()  # the next run starts from a quiet disk


def _timed(
    client: TreeClient, src: Path, name: str, kind: str, rep: int, spec: TreeSpec, timeout: float
) -> Transfer:
    copy = client.copy(src, name, kind, spec, timeout)
    details = {"kind": kind, "rep": rep, "files": spec.files} | copy.details
    transfer = Transfer.from_run(client.tool, spec.bytes, copy.run, copy.server_kib, details)
    print(
        f"    {client.tool:8} {kind:6} {transfer.seconds:8.3f} s "
        f"{spec.files / transfer.seconds:9.0f} files/s {transfer.mb_per_s:7.1f} MB/s",
        file=sys.stderr,
    )
    return transfer


def _verify(tool: str, dest: Path, want: TreeInfo) -> None:
    got = tree_info(dest) if dest.is_dir() else TreeInfo(0, 0, "no tree")
    if got != want:
        raise BenchError(f"{tool}: the copy at {dest} is {got}, expected {want}")


def _fresh_and_rerun(
    client: TreeClient, tree: tuple[Path, TreeInfo], spec: TreeSpec, rep: int, timeout: float
) -> list[Transfer]:
    """A fresh copy into an empty destination, verified, then the unchanged rerun; the
    destination is removed afterwards. The runs done are appended to the list returned."""
    (src, info), name = tree, f"tree-{rep + 1}"
    dest, done = client.dest(name), []
    _remove(dest)
    try:
        fresh = _timed(client, src, name, FRESH, rep, spec, timeout)
        _verify(client.tool, dest, info)
        fresh.details["verified"] = "files, bytes and digest of the whole tree"
        done.append(fresh)
        if client.tool in RERUN_TOOLS:
            done.append(_timed(client, src, name, RERUN, rep, spec, timeout))
    except BenchError as exc:
        why = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)
        print(f"    {client.tool:8} FAILED: {why}", file=sys.stderr)
        raise _Failed(done, {"tool": client.tool, "rep": rep, "error": why}) from None
    finally:
        _remove(dest)
    return done


class _Failed(Exception):
    def __init__(self, done: list[Transfer], failure: dict[str, Any]) -> None:
        super().__init__(failure["error"])
        self.done, self.failure = done, failure


def _rounds(
    clients: Sequence[TreeClient], tree: tuple[Path, TreeInfo], spec: TreeSpec, reps: int,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """Every client once per repetition, in turn; the runs, their summary and the failures."""
    runs: list[Transfer] = []
    failures: list[dict[str, Any]] = []
    for rep in range(reps):
        print(f"  rep {rep + 1}/{reps}", file=sys.stderr)
        for client in clients:
            try:
                runs += _fresh_and_rerun(client, tree, spec, rep, timeout)
            except _Failed as failed:
                runs += failed.done
                failures.append(failed.failure)
    return {
        "summary": summarize_tree(runs),
        "failures": failures,
        "runs": [t.to_json() for t in runs],
    }


def summarize_tree(runs: Sequence[Transfer]) -> dict[str, dict[str, Any]]:
    """kind (fresh, rerun) -> tool -> medians/min/max of seconds, files/s and MB/s, the count
    of runs, and the largest peak RSS of each side (KiB)."""
    summary: dict[str, dict[str, Any]] = {}
    for kind in (FRESH, RERUN):
        of_kind = [t for t in runs if t.details["kind"] == kind]
        for tool in dict.fromkeys(t.tool for t in of_kind):
            mine = [t for t in of_kind if t.tool == tool]
            summary.setdefault(kind, {})[tool] = {
                "runs": len(mine),
                "seconds": dataclasses.asdict(Stats.of([t.seconds for t in mine])),
                "files_per_s": dataclasses.asdict(
                    Stats.of([t.details["files"] / t.seconds for t in mine])
                ),
                "mb_per_s": dataclasses.asdict(Stats.of([t.mb_per_s for t in mine])),
                "client_rss_kib_max": max(t.client_rss_kib for t in mine),
                "server_rss_kib_max": max((t.server_rss_kib or 0) for t in mine) or None,
            }
    return summary


def _clients(
    ws: Workspace, tag: str, tools: Sequence[str], placement: Placement, strict: bool,
    stack: contextlib.ExitStack,
) -> list[TreeClient]:  # fmt: skip
    """Each tool's server started inside `stack`, with its own directory, in TOOLS order."""
    clients: list[TreeClient] = []
    for tool in tools:
        root = ws.path / f"{tag}-{tool}"
        root.mkdir(exist_ok=True)
        if tool == "fluxctl":
            (root / "bench").mkdir(exist_ok=True)  # the copies' parent, as for the other tools
            peer = FluxPeer(root, "tcp", None, placement, "fluxctl", strict=strict)
            clients.append(FluxTree(stack.enter_context(peer)))
        elif tool == "rsync":
            clients.append(RsyncTree(stack.enter_context(RsyncPeer(root, placement=placement))))
        else:
            clients.append(ScpTree(stack.enter_context(SshPeer(root, placement=placement))))
    return clients


def _measure_place(
    ws: Workspace, trees: Trees, place: str, spec: TreeSpec, args: argparse.Namespace,
    placement: Placement,
) -> dict[str, Any]:  # fmt: skip
    tree = trees.get(spec)
    print(f"{place}: {spec.describe()}, {args.reps} repetition(s)", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        clients = _clients(ws, place, args.tools, placement, placement.loopback, stack)
        result = _rounds(clients, tree, spec, args.reps, args.timeout)
    return {"tree": dataclasses.asdict(spec), "reps": args.reps} | result


def _one_place(
    ws: Workspace, trees: Trees, place: str, spec: TreeSpec, args: argparse.Namespace
) -> dict[str, Any]:
    if place == "loopback":
        return {"link": place, "spec": {}} | _measure_place(ws, trees, place, spec, args, LOOPBACK)
    try:
        emulated = load(place)
        result = link_result(emulated)
        print(f"link {place}: up", file=sys.stderr)
        with Emulator(emulated, tag=f"t{place[:3]}", tcp_cc=args.tcp_cc) as emu:
            placement = checked_placement(emu, result)
            if placement is not None:
                result |= _measure_place(ws, trees, place, spec, args, placement)
        result["counters"] = emu.counters
    except (SpecError, TopologyError) as exc:
        raise BenchError(f"link {place}: {exc}") from None
    return result


def _memory(ws: Workspace, trees: Trees, files: int, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of both ends over a tree of `files` small files: one fresh run and one rerun
    per tool (fluxctl; rsync for reference), fresh daemons."""
    spec = TreeSpec.scaled(files, big_files=False)
    tree = trees.get(spec)
    tools = [t for t in args.tools if t in RERUN_TOOLS]
    print(f"peak RSS: {spec.describe()}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        clients = _clients(ws, "rss", tools, LOOPBACK, True, stack)
        result = _rounds(clients, tree, spec, 1, args.timeout)
        reset = any(c.peer.peak_resettable for c in clients if isinstance(c, FluxTree))
    return {"tree": dataclasses.asdict(spec), "daemon_peak_reset_by_clear_refs": reset} | result


def check_checkout() -> str:
    """Which fluxctl runs, after checking that it imports this checkout's packages (the
    console script imports whatever its interpreter finds first on the path) and compiling
    them.

    Raises:
        BenchError: it would import fluxctl or fluxd from elsewhere.
    """
    script = flux_binary("fluxctl")
    with open(script, "rb") as f:
        first = f.readline().decode(errors="replace")
    python = first[2:].strip() if first.startswith("#!") else sys.executable
    code = "import fluxctl, fluxd; print(fluxctl.__file__); print(fluxd.__file__)"
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    paths = done.stdout.split()
    if done.returncode != 0 or not all(Path(p).is_relative_to(REPO) for p in paths):
        raise BenchError(
            f"{script} imports fluxctl/fluxd from {paths or done.stderr.strip()}, not from "
            f"{REPO}: install this checkout or put it first on PYTHONPATH"
        )
    # Bytecode for every module, as an installed copy has: no run is timed compiling them.
    dirs = [str(REPO / d) for d in ("protocol", "runtime", "clients", "fluxd")]
    subprocess.run([python, "-m", "compileall", "-q", *dirs], timeout=300, check=False)
    return script


def run(args: argparse.Namespace) -> int:
    """Run every place asked for, then the peak-RSS tree; print, save, update RESULTS.md."""
    args.reps = args.reps or (1 if args.quick else 3)
    if args.reps < 1:
        raise BenchError("--reps must be at least 1")
    rss_files = args.rss_files if args.rss_files is not None else (
        QUICK_RSS_FILES if args.quick else RSS_FILES
    )  # fmt: skip
    ensure_tools()
    data: dict[str, Any] = {"scenario": "tree", "quick": args.quick, "links": []}
    if "fluxctl" in args.tools:
        data["fluxctl"] = check_checkout()
    with Workspace(args.dir) as ws:
        trees = Trees(ws)
        data["machine"] = describe(ws.base)
        data["tcp_congestion_control"] = args.tcp_cc
        for place in args.links:
            files = args.files or (QUICK_FILES if args.quick else FILES)[place]
            data["links"].append(_one_place(ws, trees, place, TreeSpec.scaled(files), args))
        if rss_files:
            data["memory"] = _memory(ws, trees, rss_files, args)
        data["machine"]["load_at_end"] = load_average()
    _publish(data, not args.no_results)
    return 0


def _publish(data: dict[str, Any], results: bool) -> None:
    texts = [render_place(data, link) for link in data["links"]]
    if "memory" in data:
        texts.append(render_memory(data, data["memory"]))
    print("\n\n".join(texts))
    print(f"\nrun saved to {write_run('tree', data)}", file=sys.stderr)
    if not results:
        return
    update_results("tree", render_header())
    for link, text in zip(data["links"], texts, strict=False):
        put_section(f"tree-{link['link']}", text, "tree", {"links": [link]})
    if "memory" in data:
        put_section("tree-rss", texts[-1], "tree", {"memory": data["memory"]})
