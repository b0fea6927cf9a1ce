"""`benchmarks.naive_quic serve` (stock aioquic) in a throwaway directory, and its `send` client."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from pathlib import Path

from fluxd.certs import init_certs

from .. import BenchError
from ..naive_quic import DEFAULT_DATAGRAM_SIZE, DEFAULT_LOOP
from .base import Service, Transfer
from .process import ServerProcess, harness_env, json_report

MODULE = "benchmarks.naive_quic"


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NaiveQuicPeer(Service):
    """The naive aioquic server for the life of the context, receiving into `dest_dir`."""

    tool = "naive-aioquic"

    def __init__(
        self, dest_dir: Path, datagram_size: int = DEFAULT_DATAGRAM_SIZE, loop: str = DEFAULT_LOOP
    ) -> None:
        self.dest_dir, self.datagram_size, self.loop = dest_dir, datagram_size, loop
        self.port = 0
        self._tmp: Path | None = None
        self._env = harness_env()
        self._server: ServerProcess | None = None

    def _argv(self, command: str, *args: str) -> list[str]:
        return [sys.executable, "-m", MODULE, command, *args, "--port", str(self.port),
                "--datagram-size", str(self.datagram_size), "--loop", self.loop]  # fmt: skip

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-naive-quic-"))
        certs = init_certs(self._tmp / "certs")
        self.port = free_udp_port()
        argv = self._argv("serve", "--cert", str(certs.server_cert),
                          "--key", str(certs.server_key), "--dest", str(self.dest_dir))  # fmt: skip
        self._server = ServerProcess("naive aioquic server", argv, self._env)
        self._server.start()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def dest(self, name: str) -> Path:
        return self.dest_dir / name

    def send(self, src: Path, name: str, timeout: float | None = None) -> Transfer:
        """Send `src`; the server's peak RSS is VmHWM, reset before the transfer."""
        assert self._server is not None, "the naive server is not running"
        size = src.stat().st_size
        argv = self._argv("send", str(src), "--name", name)
        limit = timeout or max(600.0, size / 1e6)
        run, server_kib, reset = self._server.measure_client(argv, self._env, limit)
        report = json_report(self.tool, run)
        if not report.get("ok") or report.get("bytes") != size:
            raise BenchError(f"{self.tool} did not deliver the whole file: {report}")
        details = {
            "report": report,
            "datagram_size": self.datagram_size,
            "event_loop": self.loop,
            "server_peak_since": "transfer" if reset else "server start",
        }
        return Transfer.from_run(self.tool, size, run, server_kib, details)
