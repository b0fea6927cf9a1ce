"""How a connection ended, as the daemon logs it (one `connection-ended` line) and as the client
says it: a certificate refused with a TLS alert, a reset mid-transfer, a QUIC close with an
error code, and a clean close."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fluxio.transports import quic
from fluxproto import Hello, Welcome

from .conftest import BIN, Daemon, Fluxctl, wait_for
from .proxy import Proxy
from .test_errors import one_line

MiB = 1 << 20


def ended(daemon: Daemon, transport: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events("connection-ended") if e.get("transport") == transport]


def one_ended(daemon: Daemon, transport: str) -> dict[str, Any]:
    """The one `connection-ended` line of `transport` (the daemon logs once per connection)."""
    wait_for(lambda: bool(ended(daemon, transport)), what="a connection-ended line")
    lines = ended(daemon, transport)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """The CA of another daemon: ours is not signed by it."""
    other = tmp_path / "other-certs"
    subprocess.run(
        [str(BIN / "fluxd"), "certs", "init", "--dir", str(other)], check=True, capture_output=True
    )
    return other / "ca.pem"


@pytest.mark.parametrize(
    ("transport", "alert"),
    # OpenSSL says it does not know the CA; aioquic that the certificate is bad.
    [("tcp", "unknown ca"), ("quic", "bad certificate (QUIC error 0x12a)")],
)
def test_a_client_refusing_the_certificate(
    daemon: Daemon, fluxctl: Fluxctl, other_ca: Path, transport: str, alert: str
) -> None:
    res = fluxctl("stat", daemon.url("/"), "--transport", transport, "--ca", str(other_ca))
    assert res.code == 4, res.stderr
    line = one_line(res.stderr)
    assert f"certificate of 127.0.0.1:{daemon.port} not trusted" in line
    assert "is --ca the ca.pem of this server" in line
    end = one_ended(daemon, transport)
    assert (end["level"], end["reason"]) == ("info", f"TLS alert from {end['peer']}: {alert}")


def test_a_plain_ssl_client_refusing_the_certificate(daemon: Daemon) -> None:
    ctx = ssl.create_default_context()  # the system's CAs: ours is not among them
    with (
        socket.create_connection(("127.0.0.1", daemon.port)) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(sock, server_hostname="localhost")
    end = one_ended(daemon, "tcp")
    assert (end["level"], end["reason"]) == ("info", f"TLS alert from {end['peer']}: unknown ca")


def test_a_reset_mid_transfer(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 * MiB))
    proxy = Proxy(daemon.port, limit=2 * MiB)
    try:
        sending = fluxctl.spawn(
            "send", str(src), daemon.url("/big.bin", port=proxy.port), "--transport", "tcp",
            "--retry-for", "0",
        )  # fmt: skip
        assert proxy.stalled.wait(60)
        proxy.cut()  # SO_LINGER 0 on both sides: each end gets a RST
        _, stderr = sending.communicate(timeout=60)
    finally:
        proxy.close()
    assert sending.returncode == 5, stderr
    assert f"connection reset by peer 127.0.0.1:{proxy.port}" in one_line(stderr)
    end = one_ended(daemon, "tcp")
    assert end["level"] == "info"
    assert end["reason"] == f"connection reset by peer {end['peer']}"


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_a_clean_close_is_logged_at_debug(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, transport: str
) -> None:
    daemon = make_daemon("--log-level", "debug")
    assert fluxctl("ls", daemon.url("/"), "--transport", transport).code == 0
    end = one_ended(daemon, transport)
    assert (end["level"], end["reason"]) == ("debug", "closed by peer")


def test_a_quic_close_with_an_error_code(daemon: Daemon) -> None:
    async def main() -> str:
        config = quic.configuration(is_client=True)
        config.verify_mode = ssl.CERT_NONE
        ch = await quic.open_connection("127.0.0.1", daemon.port, config, 10.0)
        ch.send(Hello())
        assert isinstance(await ch.next_event(10.0), Welcome)
        ch.close(error_code=0x1C, reason_phrase="testing")
        await ch.wait_closed()
        return ch.peer

    asyncio.run(main())
    end = one_ended(daemon, "quic")
    assert end["level"] == "info"
    peer = end["peer"]
    assert (
        end["reason"] == f"QUIC connection closed by peer {peer}: application error 0x1c: testing"
    )
