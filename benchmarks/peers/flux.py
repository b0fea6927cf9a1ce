"""A fluxd daemon in throwaway directories, and `fluxctl send` into it."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from .. import BenchError
from ..measure import proc_status_kib, reset_peak_rss, run_measured
from .base import Service, Transfer

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def flux_binary(name: str) -> str:
    """`.venv/bin/NAME` of this checkout, else next to the running Python, else on PATH."""
    for candidate in (REPO / ".venv" / "bin" / name, Path(sys.prefix) / "bin" / name):
        if candidate.exists():
            return str(candidate)
    if found := shutil.which(name):
        return found
    raise BenchError(f"{name} is not installed (run `make test` or `pip install -e .` first)")


def _isolated_env(tmp: Path) -> dict[str, str]:
    """Environment whose config, data, state and cache directories are all inside `tmp`."""
    env = dict(os.environ)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[var] = str(tmp / var.removeprefix("XDG_").removesuffix("_HOME").lower())
    env["FLUXD_HOME"] = str(tmp / "fluxd-home")
    return env


class _StderrReader(threading.Thread):
    """Drains the daemon's stderr (JSON lines), remembering the `listening` event and a tail."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.tail: collections.deque[str] = collections.deque(maxlen=50)
        self.listening: dict[str, Any] | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            if self.listening is None:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "listening":
                    self.listening = event
                    self.ready.set()
        self.ready.set()  # EOF: the daemon exited


class FluxPeer(Service):
    """`fluxd serve` on 127.0.0.1 for the life of the context; `fluxctl send` into ROOT/bench/."""

    tool = "fluxctl"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.fingerprint, self.pid = 0, "", 0
        self.peak_resettable = False
        self._tmp: Path | None = None
        self._env: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: _StderrReader | None = None

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-fluxd-"))
        self._env = _isolated_env(self._tmp)
        argv = [
            flux_binary("fluxd"), "serve", "--root", str(self.root),
            "--listen", "127.0.0.1:0", "--certs", str(self._tmp / "certs"),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env,
        )
        assert self._proc.stderr is not None
        self._reader = _StderrReader(self._proc.stderr)
        self._reader.start()
        if not self._reader.ready.wait(START_TIMEOUT) or self._reader.listening is None:
            raise BenchError(f"fluxd did not report `listening`:\n{self.log_tail()}")
        event = self._reader.listening
        self.port = int(str(event["address"]).rpartition(":")[2])
        self.fingerprint = str(event.get("fingerprint") or "")
        self.pid = self._proc.pid
        self.peak_resettable = reset_peak_rss(self.pid)

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self) -> str:
        return "\n".join(self._reader.tail) if self._reader else ""

    def dest(self, name: str) -> Path:
        return self.root / "bench" / name

    def send_argv(self, src: Path, name: str) -> list[str]:
        url = f"flux://127.0.0.1:{self.port}/bench/{name}"
        return [flux_binary("fluxctl"), "send", str(src), url, "--pin", self.fingerprint,
                "--json", "--quiet"]  # fmt: skip

    def send(self, src: Path, name: str) -> Transfer:
        """fluxctl send `src`; the daemon's peak RSS is VmHWM, reset before the transfer."""
        size = src.stat().st_size
        reset = reset_peak_rss(self.pid)
        run = run_measured(self.send_argv(src, name), env=self._env, timeout=max(600.0, size / 5e6))
        if self._proc is None or self._proc.poll() is not None:
            raise BenchError(f"fluxd died during the transfer:\n{self.log_tail()}")
        server_kib = proc_status_kib(self.pid, "VmHWM")
        if run.exit_code != 0:
            raise BenchError(f"fluxctl exited with {run.exit_code}: {run.stderr.strip()}")
        report = _parse_report(run.stdout)
        if not report.get("ok") or report.get("bytes") != size or report.get("sent") != size:
            raise BenchError(f"fluxctl did not send the whole file once (sent != bytes): {report}")
        details = {"report": report, "server_peak_since": "transfer" if reset else "daemon start"}
        return Transfer(
            self.tool, size, run.seconds, run.maxrss_kib, server_kib, run.cpu_seconds, details
        )


def _parse_report(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(f"fluxctl --json printed no JSON object: {stdout!r}") from None
    if not isinstance(report, dict):
        raise BenchError(f"fluxctl --json printed {report!r}, not an object")
    return report
