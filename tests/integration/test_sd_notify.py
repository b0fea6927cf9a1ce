"""fluxd under systemd's Type=notify: READY=1 once listening, WATCHDOG=1 from the event loop,
STOPPING=1 on SIGTERM, sent to a real AF_UNIX datagram socket as systemd would bind it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import BIN, Daemon, Fluxctl, _env

#: Seconds a test waits for a datagram before it fails (never a timing assumption: the
#: datagrams arrive within milliseconds, and a missing one fails the test).
RECV_TIMEOUT = 20.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short folder of its own: an AF_UNIX path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        path = os.path.join(folder, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT)
        with sock:
            yield sock, path


def serve_cmd(tmp_path: Path) -> list[str]:
    cmd = [str(BIN / "fluxd"), "serve", "--root", str(tmp_path / "root")]
    return [*cmd, "--certs", str(tmp_path / "certs"), "--listen", "127.0.0.1:0"]


def start_fluxd(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = _env(tmp_path) | env
    return subprocess.Popen(serve_cmd(tmp_path), stderr=subprocess.DEVNULL, env=env)


def states(sock: socket.socket) -> dict[str, str]:
    """The next datagram's NAME=VALUE lines."""
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if line)


def tcp_address(status: str) -> tuple[str, int]:
    """The TCP listener named in READY's STATUS ("tcp 127.0.0.1:PORT, quic ...")."""
    for part in status.split(", "):
        transport, address = part.split(" ")
        if transport == "tcp":
            host, port = address.rsplit(":", 1)
            return host, int(port)
    raise AssertionError(f"no TCP listener in STATUS={status!r}")


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    proc = start_fluxd(tmp_path, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    try:
        ready = states(sock)
        assert ready.get("READY") == "1", ready
        # READY comes only once the daemon listens: its TCP port accepts at once.
        socket.create_connection(tcp_address(ready["STATUS"]), timeout=RECV_TIMEOUT).close()
        # The watchdog pings keep coming (every 0.1 s here) while the loop runs.
        for _ in range(3):
            assert states(sock) == {"WATCHDOG": "1"}
        proc.send_signal(signal.SIGTERM)
        seen = states(sock)
        while seen == {"WATCHDOG": "1"}:
            seen = states(sock)
        assert seen.get("STOPPING") == "1", seen
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_no_watchdog_pings_for_another_process(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """WATCHDOG_PID naming another process: READY and STOPPING only, no ping in between."""
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    proc = start_fluxd(tmp_path, env)
    try:
        assert states(sock).get("READY") == "1"
        proc.send_signal(signal.SIGTERM)
        assert states(sock).get("STOPPING") == "1"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("notify", [None, "/nonexistent-dir/notify", "relative"])
def test_without_a_reachable_notify_socket_fluxd_serves_and_stops(
    tmp_path: Path, notify: str | None
) -> None:
    """No NOTIFY_SOCKET (or one nobody listens on): fluxd starts, serves and stops cleanly."""
    env = {"WATCHDOG_USEC": "200000"} if notify is None else {"NOTIFY_SOCKET": notify}
    base = _env(tmp_path)
    base.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(serve_cmd(tmp_path), stderr=subprocess.PIPE, env=base | env, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if '"event": "listening"' in line:
                break
        else:
            raise AssertionError(f"fluxd exited before listening: {proc.wait()}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        # Read through the same text stream: communicate(timeout=...) reads the pipe itself
        # and loses what the loop above had buffered past the "listening" line.
        rest = proc.stderr.read()
        assert proc.returncode == 0
        assert '"event": "stopped"' in rest
        failed = rest.count('"event": "notify-failed"')
        assert failed == (1 if notify == "/nonexistent-dir/notify" else 0), rest
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def unit_syscalls() -> list[str]:
    """The syscalls deploy/fluxd.service's SystemCallFilter= lines allow, expanded by
    systemd-analyze (@group names within a group are expanded in turn)."""
    from tests.daemon.test_systemd_unit import ANALYZE, service  # noqa: PLC0415

    assert ANALYZE is not None

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        listed = subprocess.run(
            [ANALYZE, "syscall-filter", "--no-pager", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[1:]
        out: set[str] = set()
        for line in listed:
            item = line.strip()
            if item and not item.startswith("#"):
                out |= expand(item)
        return out

    allowed: set[str] = set()
    for value in service()["SystemCallFilter"]:
        if value.startswith("~"):
            for name in value[1:].split():
                allowed -= expand(name)
        else:
            for name in value.split():
                allowed |= expand(name)
    return sorted(allowed)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_fluxd_serves_under_the_units_syscall_filter_and_memory_deny_write_execute(
    tmp_path: Path, make_daemon: Callable[..., Daemon], fluxctl: Fluxctl
) -> None:
    """A send and a recv over TCP and over QUIC, fluxd under the unit's SystemCallFilter= and
    MemoryDenyWriteExecute= (sandboxedfluxd.py): nothing Python, uvloop, OpenSSL, cryptography
    or aioquic needs is refused."""
    allowed = tmp_path / "syscalls"
    allowed.write_text("\n".join(unit_syscalls()))
    assert "openat2" in allowed.read_text().split()
    wrapper = Path(__file__).with_name("sandboxedfluxd.py")
    daemon = make_daemon(program=[sys.executable, str(wrapper), str(allowed)])
    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    for transport in ("tcp", "quic"):
        url = daemon.url(f"/{transport}.bin")
        sent = fluxctl("send", str(tmp_path / "src"), url, "--transport", transport, "--json")
        assert sent.code == 0, sent.stderr
        back = tmp_path / f"back-{transport}"
        got = fluxctl("recv", url, str(back), "--transport", transport, "--json")
        assert got.code == 0, got.stderr
        assert back.read_bytes() == data
    assert daemon.stop() == 0
