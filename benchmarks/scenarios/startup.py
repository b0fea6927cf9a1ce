"""Scenario `startup`: what one fluxctl command costs as a whole, for scripts that loop over it.

Timed, alternated, as whole processes: the interpreter alone (`python -c pass`, the floor),
`fluxctl version` (start-up and argument parsing), a 1-byte `fluxctl send --transport tcp`
into a fluxd on loopback (connect, TLS 1.3, HELLO, one chunk made durable, commit), a 1-byte
`fluxctl ls`, and `scp` of the same byte into a local sshd. Python's bytecode caches are
allowed (one warm-up run of each first), as in any installed copy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import BenchError
from ..machine import describe, load_average
from ..measure import Stats
from ..peers.flux import FluxPeer, flux_binary
from ..peers.ssh import SshPeer
from ..report import markdown_table, publish
from ..sysdeps import ensure_tools
from .common_report import machine_paragraph, verdict
from .workspace import Workspace

HELP = "fluxctl version and a 1-byte send, whole processes, against python and scp"
#: Goals of issue 11, in seconds.
GOALS = {"version": 0.100, "send": 0.150}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=30, help="runs of each command [30]")
    parser.add_argument("--quick", action="store_true", help="5 runs of each")
    parser.add_argument("--dir", type=Path, help="where files and destinations live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def run(args: argparse.Namespace) -> int:
    reps = 5 if args.quick else args.reps
    ensure_tools()  # sshd and scp
    data: dict[str, Any] = {"scenario": "startup", "reps": reps}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        one = ws.path / "one.bin"
        one.write_bytes(b"x")
        scp_dir = ws.path / "scp"
        scp_dir.mkdir()
        with FluxPeer(ws.flux_root, transport="tcp") as flux, SshPeer(scp_dir) as ssh:
            fluxctl = flux_binary("fluxctl")
            url = f"flux://127.0.0.1:{flux.port}/bench/"
            common = ["--pin", flux.fingerprint, "--transport", "tcp", "--quiet"]
            commands = {
                "python": [sys.executable, "-c", "pass"],
                "version": [fluxctl, "version"],
                "send": [fluxctl, "send", str(one), url + "one.bin", *common],
                "ls": [fluxctl, "ls", url, *common],
                "scp": ssh.client_argv(one, "one.bin"),
            }
            flux_env = flux.env  # bytecode cached, as for an installed copy
            times: dict[str, list[float]] = {name: [] for name in commands}
            for argv in commands.values():  # warm-up: caches, known_hosts, the first file
                _timed(argv, flux_env)
            for rep in range(reps):
                print(f"repetition {rep + 1}/{reps}", file=sys.stderr)
                for name, argv in commands.items():
                    times[name].append(_timed(argv, flux_env))
        data["seconds"] = times
        data["machine"]["load_at_end"] = load_average()
    publish("startup", render(data), data, not args.no_results)
    return 0


LABELS = {
    "python": "`python -c pass` (the interpreter alone)",
    "version": "`fluxctl version`",
    "send": "`fluxctl send` 1 byte, TCP + TLS, into fluxd on loopback",
    "ls": "`fluxctl ls`, TCP + TLS",
    "scp": "`scp` 1 byte into sshd on loopback",
}


def render(data: dict[str, Any]) -> str:
    stats = {name: Stats.of(values) for name, values in data["seconds"].items()}
    rows = [
        [LABELS[name], f"{s.median * 1000:.0f}", f"{s.min * 1000:.0f}", f"{s.max * 1000:.0f}"]
        for name, s in stats.items()
    ]
    goals = "; ".join(
        f"{name} {stats[name].median * 1000:.0f} ms against {goal * 1000:.0f} ms: "
        f"{verdict(stats[name].median < goal)}"
        for name, goal in GOALS.items()
    )
    return (
        f"## Start-up\n\n{machine_paragraph(data['machine'], 'fluxd TCP + TLS 1.3')}\n\n"
        f"Whole commands, {data['reps']} runs of each, alternated (milliseconds of wall "
        "time, process start to exit):\n\n"
        + markdown_table(["command", "median ms", "min ms", "max ms"], rows)
        + f"\n\nGoals: {goals}. A 1-byte send / scp: "
        f"**{stats['send'].median / stats['scp'].median:.2f}x**; `fluxctl version` costs "
        f"{(stats['version'].median - stats['python'].median) * 1000:.0f} ms over the "
        "interpreter's own start."
    )
