"""iperf3 as the ceiling: one TCP stream of the file's size, memory to memory, no file, no TLS.

`iperf3 -F` is no substitute for a copy (its server truncated a 64 MiB file to 59 MiB here), so
this peer writes nothing: `dest()` is None and the harness checks the byte count iperf3 reports.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .. import BenchError
from ..measure import run_measured
from ..netem.topology import wait_listening
from .base import LOOPBACK, Placement, Service, Transfer
from .ssh import free_port

START_TIMEOUT = 15.0


class IperfPeer(Service):
    """`iperf3 -s` for the life of the context (one test per server start: `-1`, restarted)."""

    tool = "iperf3"

    def __init__(self, placement: Placement = LOOPBACK) -> None:
        self.placement = placement
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        self.port = free_port()
        argv = [
            *self.placement.server_prefix,
            "iperf3",
            "-s",
            "-B",
            self.placement.host,
            "-p",
            str(self.port),
        ]
        quiet = subprocess.DEVNULL
        self._proc = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet)
        if wait_listening(self.placement.server_prefix, self.port, self._proc, START_TIMEOUT):
            return
        if self._proc.poll() is not None:
            raise BenchError(f"iperf3 -s exited with {self._proc.returncode}")
        raise BenchError(f"iperf3 -s did not listen within {START_TIMEOUT:.0f} s")

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def dest(self, name: str) -> Path | None:
        return None  # memory to memory

    def send(self, src: Path, name: str, timeout: float | None = None) -> Transfer:
        """Send as many bytes as `src` holds (not its content) over one TCP stream."""
        size = src.stat().st_size
        argv = [
            *self.placement.client_prefix,
            "iperf3",
            "-c",
            self.placement.host,
            "-p",
            str(self.port),
            "-n",
            str(size),
            "--json",
        ]
        run = run_measured(argv, timeout=timeout or max(600.0, size / 5e6))
        if run.exit_code != 0:
            raise BenchError(f"iperf3 exited with {run.exit_code}: {run.stderr.strip()}")
        try:
            received = int(json.loads(run.stdout)["end"]["sum_received"]["bytes"])
        except (ValueError, KeyError) as exc:
            raise BenchError(f"iperf3 printed no result: {exc}") from None
        if received < size:
            raise BenchError(f"iperf3 delivered {received} of {size} bytes")
        details = {"received": received, "note": "memory to memory, no file, no encryption"}
        return Transfer.from_run(self.tool, size, run, None, details)
