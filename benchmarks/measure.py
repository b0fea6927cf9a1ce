"""Wall time and peak RSS of subprocesses (wait4 rusage) and of long-running daemons (/proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from . import BenchError

KIB = 1024
MIB = 1024 * 1024
MB = 1_000_000  # throughput is reported in MB/s = 10^6 bytes per second
GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Run:
    """One finished subprocess: exit code, harness wall time, peak RSS and CPU of the child."""

    argv: list[str]
    exit_code: int
    seconds: float
    maxrss_kib: int  # max over the process and the descendants it waited for
    cpu_seconds: float
    stdout: str
    stderr: str


def _read_time_report(path: Path) -> tuple[int, float]:
    # GNU time writes "Command exited with non-zero status N" first when N != 0.
    lines = path.read_text().split("\n")
    fields = [line.split() for line in lines if line.strip()][-1]
    return int(fields[0]), float(fields[1]) + float(fields[2])


class MeasuredCommand:
    """A command running in its own process group under GNU time, timed from spawn to reap,
    for the life of the context: its group is killed if it is still running at the end (a
    timeout, Ctrl-C, an error), so nothing outlives the harness.

    Peak RSS comes from GNU time's wait4 on its child: a child spawned straight from Python
    (vfork + exec) gets the harness's own lifetime peak RSS folded into its ru_maxrss.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.argv, self.env = list(argv), env
        self._stack = contextlib.ExitStack()
        self._proc: subprocess.Popen[bytes] | None = None
        self._start = 0.0
        self._end: float | None = None

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-run-")))
            self._files = tmp / "time", tmp / "out", tmp / "err"
            fout = stack.enter_context(self._files[1].open("wb"))
            ferr = stack.enter_context(self._files[2].open("wb"))
            timed = [GNU_TIME, "-f", "%M %U %S", "-o", str(self._files[0]), *self.argv]
            self._start = time.perf_counter()
            self._proc = subprocess.Popen(
                timed, stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr, env=self.env,
                start_new_session=True,
            )  # fmt: skip
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._stack.close()

    def poll(self) -> int | None:
        """The exit code once the command has ended (reaped, and its end time noted)."""
        assert self._proc is not None, "not started"
        code = self._proc.poll()
        if code is not None and self._end is None:
            self._end = time.perf_counter()
        return code

    def wait(self, timeout: float | None = None) -> Run:
        """Wait for the command to end; its run.

        Raises:
            BenchError: it did not end within `timeout` seconds (the context then kills it).
        """
        assert self._proc is not None, "not started"
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.argv[0]} did not finish within {timeout:.0f} s") from None
        self.poll()
        seconds = (self._end or time.perf_counter()) - self._start
        maxrss, cpu = _read_time_report(self._files[0])
        stdout, stderr = (p.read_text(errors="replace") for p in self._files[1:])
        return Run(self.argv, code, seconds, maxrss, cpu, stdout, stderr)


def run_measured(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None
) -> Run:
    """Run `argv` to completion in its own process group, timed from spawn to reap (see
    MeasuredCommand); a timeout or Ctrl-C takes the child's whole group down."""
    with MeasuredCommand(argv, env) as command:
        return command.wait(timeout)


def proc_status_kib(pid: int, field: str) -> int:
    """A `kB` field (VmHWM, VmRSS, ...) of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (clear_refs "5", Linux 4.0+); False if not possible."""
    try:
        before = proc_status_kib(pid, "VmHWM")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return proc_status_kib(pid, "VmHWM") <= before
    except (OSError, KeyError):
        return False


class Sampler:
    """Calls `_sample` every `interval` seconds in a thread while active (`with`)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


class TreePeakSampler(Sampler):
    """Samples VmHWM of every descendant of `pid` while active; `peak_kib` sums per-pid maxima.

    Approximate (a process that lives less than one interval can be missed); used for reference
    servers like sshd that fork a process per session.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(pid, interval)
        self._peaks: dict[int, int] = {}

    @property
    def peak_kib(self) -> int:
        return sum(self._peaks.values())

    def _sample(self) -> None:
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                hwm = proc_status_kib(child.pid, "VmHWM")
            except (OSError, KeyError):
                continue
            self._peaks[child.pid] = max(hwm, self._peaks.get(child.pid, 0))


class ReadBytesSampler(Sampler):
    """Samples the bytes `pid` has read (`rchar` of /proc/PID/io: files and sockets alike)
    while active; `read_bytes` counts from the first sample (at `with`) to the last one seen,
    so once the process has died, to within one interval of its death."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(pid, interval)
        self._first: int | None = None
        self._last = 0

    @property
    def read_bytes(self) -> int:
        return self._last - (self._first or 0)

    def _sample(self) -> None:
        try:
            text = Path(f"/proc/{self.pid}/io").read_text()
        except OSError:  # gone (or not ours)
            return
        for line in text.splitlines():
            if line.startswith("rchar:"):
                self._last = int(line.split()[1])
                self._first = self._last if self._first is None else self._first


@dataclass(frozen=True)
class Stats:
    """Median, minimum and maximum of a list of measurements."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))
