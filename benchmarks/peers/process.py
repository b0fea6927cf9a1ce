"""A server subprocess that logs JSON lines (`listening` first), and clients measured against it."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from .. import BenchError
from ..measure import Run, proc_status_kib, reset_peak_rss, run_measured

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

Event = dict[str, Any]


#: The events that say a server listens (fluxd logs its HTTPS listener's first).
LISTENING = ("listening", "listening-http")


class LogReader(threading.Thread):
    """Drains a server's output (JSON lines), keeping its `listening` events (fluxd's
    `listening-http` too) and a tail."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.tail: collections.deque[str] = collections.deque(maxlen=50)
        self.listening: list[Event] = []
        self.changed = threading.Condition()
        self.eof = False
        self.ended_at: float | None = None

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") in LISTENING:
                with self.changed:
                    self.listening.append(event)
                    self.changed.notify_all()
        with self.changed:  # EOF: the server exited
            self.ended_at = time.monotonic()
            self.eof = True
            self.changed.notify_all()

    def wait_for(self, match: Callable[[Event], bool], timeout: float) -> Event | None:
        """The first `listening` event that `match`es, waiting up to `timeout` seconds for it."""

        def found() -> Event | None:
            return next((e for e in self.listening if match(e)), None)

        with self.changed:
            self.changed.wait_for(lambda: found() is not None or self.eof, timeout)
            return found()


class ServerProcess:
    """One server process: started, awaited until it logs `listening`, stopped with SIGTERM."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None) -> None:
        self.name, self.argv, self.env = name, list(argv), env
        self.pid = 0
        self.peak_resettable = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: LogReader | None = None

    def start(self) -> Event:
        """Spawn the server; returns its first `listening` event.

        Raises:
            BenchError: the server exited or said nothing within START_TIMEOUT seconds.
        """
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        assert self._proc.stdout is not None
        self._reader = LogReader(self._proc.stdout)
        self._reader.start()
        event = self._reader.wait_for(lambda e: e.get("event") == "listening", START_TIMEOUT)
        if event is None:
            raise BenchError(f"{self.name} did not report `listening`:\n{self.log_tail()}")
        self.pid = self._proc.pid
        self.peak_resettable = reset_peak_rss(self.pid)
        return event

    def wait_listening(self, match: Callable[[Event], bool], timeout: float) -> Event | None:
        """A further `listening` event (another address or transport), if one comes in time."""
        return self._reader.wait_for(match, timeout) if self._reader else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds; idempotent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds the server has used so far (0 once it is gone)."""
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def died_at(self, wait: float = 0.0) -> float | None:
        """time.monotonic() when the server's output ended (it exited), if it has, waiting up
        to `wait` seconds for that."""
        if (reader := self._reader) is None:
            return None
        with reader.changed:
            reader.changed.wait_for(lambda: reader.eof, wait)
        return reader.ended_at

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self) -> str:
        return "\n".join(self._reader.tail) if self._reader else ""

    def measure_client(
        self, argv: Sequence[str], env: Mapping[str, str] | None, timeout: float
    ) -> tuple[Run, int, bool]:
        """Run one client against this server: (the run, the server's peak RSS in KiB, whether
        that peak covers this transfer only, i.e. VmHWM could be reset before it).

        Raises:
            BenchError: the server died during the transfer, or the client timed out.
        """
        reset = reset_peak_rss(self.pid)
        run = run_measured(argv, env=env, timeout=timeout)
        if not self.alive():
            raise BenchError(f"{self.name} died during the transfer:\n{self.log_tail()}")
        return run, proc_status_kib(self.pid, "VmHWM"), reset


def harness_env() -> dict[str, str]:
    """This environment, with the checkout first on PYTHONPATH: for `python -m benchmarks.X`
    helpers spawned as separate processes."""
    repo = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def json_report(tool: str, run: Run) -> dict[str, Any]:
    """The JSON object a client printed last on stdout, after checking it exited with 0.

    Raises:
        BenchError: non-zero exit, or the last line is not a JSON object.
    """
    if run.exit_code != 0:
        raise BenchError(f"{tool} exited with {run.exit_code}: {run.stderr.strip()}")
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(f"{tool} printed no JSON object: {run.stdout!r}") from None
    if not isinstance(report, dict):
        raise BenchError(f"{tool} printed {report!r}, not a JSON object")
    return report
