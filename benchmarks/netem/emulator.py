"""Bring an emulated link up and down: in this process (`serve`, what `python -m benchmarks.netem
up` runs) or as a child process the harness controls (`Emulator`)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

from .model import GilbertElliott, Link, LinkSpec
from .relay import Relay
from .spec import Emulated
from .topology import CLIENT_IP, SERVER_IP, Namespaces, TopologyError, tun_pair, veth_pair

READY_TIMEOUT = 20.0


def spec_to_json(emulated: Emulated) -> str:
    return json.dumps(
        {"name": emulated.name, "relay": emulated.relay, "spec": dataclasses.asdict(emulated.spec)}
    )


def spec_from_json(text: str) -> Emulated:
    data = json.loads(text)
    spec = dict(data["spec"])
    if spec.get("burst_loss"):
        spec["burst_loss"] = GilbertElliott(**spec["burst_loss"])
    return Emulated(data["name"], LinkSpec(**spec), bool(data["relay"]))


def serve(emulated: Emulated, tag: str, out: TextIO, tcp_cc: str | None = None) -> int:
    """Set the link up, print one `ready` JSON line, relay until SIGTERM or SIGINT, take it all
    down, and print one `stopped` line with the counters."""
    stop: dict[str, Relay | bool] = {"stopped": False}

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop["stopped"] = True
        relay = stop.get("relay")
        if isinstance(relay, Relay):
            relay.stopping = True

    def _restart(signum: int, frame: FrameType | None) -> None:
        relay = stop.get("relay")
        if isinstance(relay, Relay):
            relay.restart_schedule()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGUSR1, _restart)
    ns = Namespaces.create(tag, tcp_cc)
    fds: tuple[int, int] | None = None
    try:
        if emulated.relay:
            fds = tun_pair(ns, tag)
        else:
            assert emulated.spec.rate is not None
            veth_pair(ns, tag, emulated.spec.rate)
        ready = {
            "event": "ready",
            "link": emulated.name,
            "server_ns": ns.server,
            "client_ns": ns.client,
            "server_ip": SERVER_IP,
            "client_ip": CLIENT_IP,
        }
        print(json.dumps(ready), file=out, flush=True)
        counters: dict[str, Any] = {}
        if fds is not None:
            link = Link(emulated.spec)
            relay = Relay(link, *fds)
            stop["relay"] = relay
            if not stop["stopped"]:
                relay.run()
            counters = {
                "relay": dataclasses.asdict(relay.counters),
                "up": dataclasses.asdict(link.up.counters),
                "down": dataclasses.asdict(link.down.counters),
            }
        else:
            while not stop["stopped"]:
                signal.pause()
        print(json.dumps({"event": "stopped", **counters}), file=out, flush=True)
    finally:
        if fds is not None:
            for fd in fds:
                os.close(fd)
        ns.destroy()
    return 0


class Emulator:
    """A link in its own process for the life of a `with` block.

    `exec_prefix("server" | "client")` prefixes a command to run it in that namespace;
    `server_ip` is where the client side reaches the server. `counters` holds what the relay
    did once the block has ended.
    """

    def __init__(
        self, emulated: Emulated, tag: str | None = None, tcp_cc: str | None = None
    ) -> None:
        self.emulated, self.tcp_cc = emulated, tcp_cc
        self.tag = tag or str(os.getpid())
        self.server_ip, self.client_ip = SERVER_IP, CLIENT_IP
        self.counters: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._ready: dict[str, Any] = {}

    def __enter__(self) -> Emulator:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.netem",
            "up",
            "--tag",
            self.tag,
            "--spec-json",
            spec_to_json(self.emulated),
        ]
        if self.tcp_cc:
            argv += ["--tcp-cc", self.tcp_cc]
        root = Path(__file__).resolve().parents[2]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # the child exits (EOF) if setting up fails
        if not line:
            err = self._proc.communicate(timeout=READY_TIMEOUT)[1].strip().splitlines()
            raise TopologyError(err[-1] if err else "the link emulator exited at start")
        self._ready = json.loads(line)
        return self

    def restart_schedule(self) -> None:
        """Start the link's blackholes and address changes over from now (SIGUSR1)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self._ready[f"{side}_ns"]]

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=READY_TIMEOUT)
        for line in out.splitlines():
            event = json.loads(line)
            if event.get("event") == "stopped":
                self.counters = event
