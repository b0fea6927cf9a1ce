"""Fixtures for integration tests: a real `fluxd` subprocess on loopback and a `fluxctl` runner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from .lanekit import Link
from .proxy import Proxy
from .udp_relay import UdpRelay

BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Daemon:
    """A running `fluxd serve`; `restart()` brings it back on the same port."""

    home: Path
    args: list[str]
    #: Extra environment for the daemon process (FLUX_CRASH_AT for the kill-9 tests).
    env: dict[str, str] = field(default_factory=dict)
    #: The command that runs fluxd (a test's own variant: ruledfluxd.py).
    program: list[str] = field(default_factory=lambda: [str(BIN / "fluxd")])
    port: int = 0
    #: The admin listener's port (each test daemon's on a free one, see `start`).
    admin_port: int = 0
    fingerprint: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_lines: list[dict[str, Any]] = field(default_factory=list)
    _lines_lock: threading.Lock = field(default_factory=threading.Lock)
    _reader: threading.Thread = field(default_factory=threading.Thread)

    @property
    def root(self) -> Path:
        return self.home / "root"

    @property
    def certs(self) -> Path:
        return self.home / "certs"

    def url(self, path: str = "/", port: int | None = None) -> str:
        return f"flux://127.0.0.1:{port or self.port}/{path.lstrip('/')}"

    def start(self) -> Daemon:
        """Start fluxd (on the last port, after a restart) and wait until it listens.

        Raises:
            AssertionError: this daemon is still running (starting again would orphan it: the
                new one cannot take the port, and the old one would outlive the test), or
                fluxd exited or did not listen within START_TIMEOUT.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError(f"fluxd (pid {self.proc.pid}) is still running: stop it first")
        listen = f"127.0.0.1:{self.port}"
        cmd = [*self.program, "serve", "--root", str(self.root), "--certs", str(self.certs)]
        cmd += ["--listen", listen, *self.args]
        if "--admin-listen" not in self.args:  # default 7071 would be shared by every test
            cmd += ["--admin-listen", f"127.0.0.1:{self.admin_port}"]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=_env(self.home) | self.env)
        ready, listening = threading.Event(), threading.Event()
        self._reader = threading.Thread(
            target=self._read_log, args=(self.proc, ready, listening), daemon=True
        )
        self._reader.start()
        ready.wait(START_TIMEOUT)  # also set when the log ends: fluxd exited before listening
        if not listening.is_set():
            self.kill()
            raise AssertionError(f"fluxd did not start (exit {self.proc.poll()}): {self.log_lines}")
        return self

    def _read_log(
        self, proc: subprocess.Popen[bytes], ready: threading.Event, listening: threading.Event
    ) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            self._consume(proc.stderr, ready, listening)
        ready.set()

    def _consume(
        self, stream: IO[bytes], ready: threading.Event, listening: threading.Event
    ) -> None:
        for raw in stream:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.decode(errors="replace")}
            with self._lines_lock:
                self.log_lines.append(line)
            if line.get("event") == "admin-listening":
                self.admin_port = int(line["address"].rsplit(":", 1)[1])
            if line.get("event") == "listening":
                self.port = int(line["address"].rsplit(":", 1)[1])
                self.fingerprint = line.get("fingerprint")
                listening.set()
                ready.set()

    def events(self, name: str, *, since_start: bool = False) -> list[dict[str, Any]]:
        """The log's lines of event `name` (`since_start`: those since fluxd last started)."""
        with self._lines_lock:
            lines = self.log_lines
            if since_start:
                starts = [i for i, line in enumerate(lines) if line.get("event") == "listening"]
                lines = lines[starts[-1] :] if starts else lines
            return [line for line in lines if line.get("event") == name]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            self._reader.join(timeout=30)

    def restart(self) -> Daemon:
        self.kill()
        return self.start()


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(home / "client-config")
    env["FLUXD_HOME"] = str(home / "fluxd-home")
    env.pop("FLUX_CA", None)
    env.pop("FLUX_PIN", None)
    env.pop("FLUX_TRANSPORT", None)
    env.pop("FLUX_TOKEN", None)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected exactly one JSON line, got {self.stdout!r}"
        value = json.loads(lines[0])
        assert isinstance(value, dict)
        return value


class Fluxctl:
    """Runs `fluxctl` with an isolated config dir (its own known_hosts)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.spawned: list[subprocess.Popen[str]] = []

    def cmd(self, *args: str) -> list[str]:
        return [str(BIN / "fluxctl"), *args]

    def __call__(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> Result:
        p = subprocess.run(
            self.cmd(*args),
            capture_output=True,
            text=True,
            env={**_env(self.home), **(env or {})},
            timeout=timeout,
            check=False,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start fluxctl in the background; `close` kills it if the test did not wait for it."""
        proc = subprocess.Popen(
            self.cmd(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**_env(self.home), **(env or {})},
        )
        self.spawned.append(proc)
        return proc

    def close(self) -> None:
        """Kill and reap every spawned fluxctl still running (a test that failed before it
        waited for one), and close their pipes."""
        for proc in self.spawned:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def make(
        *args: str,
        name: str = "d",
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
    ) -> Daemon:
        d = Daemon(tmp_path / name, list(args), env or {})
        if program is not None:
            d.program = program
        d.start()
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture
def relays() -> Iterator[Callable[..., UdpRelay]]:
    """Makes UDP relays to a port (seeded, see udp_relay.py); all closed after the test."""
    made: list[UdpRelay] = []

    def make(port: int, **params: Any) -> UdpRelay:
        relay = UdpRelay(port, seed=7, **params)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close()


@pytest.fixture
def fluxctl(tmp_path: Path) -> Iterator[Fluxctl]:
    runner = Fluxctl(tmp_path / "d")
    yield runner
    runner.close()


@pytest.fixture
def link() -> Iterator[Callable[..., Link]]:
    """Makes a Link to a daemon: `rate` bytes/s on its TCP lane (`upstream`: client to
    server, as a send moves; else server to client, as a recv does); all closed after."""
    made: list[Link] = []

    def make(daemon: Daemon, rate: float | None = None, *, upstream: bool = True) -> Link:
        for _ in range(20):  # the proxy's TCP port number may be taken for UDP: another
            proxy = Proxy(daemon.port, rate=rate, upstream=upstream)
            try:
                relay = UdpRelay(daemon.port, seed=7, port=proxy.port)
            except OSError:
                proxy.close()
                continue
            made.append(Link(proxy, relay))
            return made[-1]
        raise AssertionError("no port number free for both TCP and UDP")

    yield make
    for one in made:
        one.proxy.close()
        one.relay.close()


@pytest.fixture
def quic_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The QUIC lane opens at once (not after QUIC_AFTER seconds), and a lane whose path is
    silent is suspect after half a second: the lanes' tests cut lanes within a few seconds."""
    from fluxctl import lanepolicy, lanerecv, lanesend  # noqa: PLC0415

    monkeypatch.setattr(lanesend, "QUIC_AFTER", 0.0)
    monkeypatch.setattr(lanerecv, "QUIC_AFTER", 0.0)
    monkeypatch.setattr(lanepolicy, "STALL_FLOOR", 0.5)
