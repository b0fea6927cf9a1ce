"""fluxio.transports.errors, and the transports' boundary on loopback: what a refused
certificate, a reset, a ragged close and a QUIC close with an error code look like to the
listener and to a channel."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import struct
from pathlib import Path

import pytest

from fluxd.certs import init_certs
from fluxio.tls import CertPaths, server_ssl_context
from fluxio.transports import quic
from fluxio.transports.errors import (
    foreign_error,
    is_ragged_eof,
    os_error,
    quic_close_error,
    tls_error,
)
from fluxio.transports.quic import QuicChannel, QuicListener
from fluxio.transports.tcp import Listener, SocketChannel, open_connection
from fluxproto import (
    ALPN,
    ConnectError,
    Connection,
    ConnectionClosed,
    ConnectionLost,
    ConnectionRefused,
    FluxError,
    Hello,
    RemoteProtocolError,
    Role,
    TransportTimeout,
    TrustError,
    Welcome,
)

LONG = 30.0
PEER = "10.0.0.2:5555"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(Path(tmp_path_factory.mktemp("certs")) / "certs")


def client_context(*, verify: bool) -> ssl.SSLContext:
    """`verify`: check the server against the system's CAs (ours is not among them);
    otherwise accept any certificate."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    return ctx


async def connected(certs: CertPaths, tls: bool) -> tuple[SocketChannel, SocketChannel]:
    """A client and a server channel on loopback, past HELLO."""
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()
    ctx = server_ssl_context(certs) if tls else None
    listener = Listener(ctx, lambda sock, release: accepted.put_nowait(sock), LONG)
    port = listener.start("127.0.0.1", 0)[0][1]
    try:
        client_ctx = client_context(verify=False) if tls else None
        csock = await open_connection("127.0.0.1", port, client_ctx, "localhost", LONG)
        server = SocketChannel(await accepted.get(), Connection(Role.SERVER))
    finally:
        listener.close()
    client = SocketChannel(csock, Connection(Role.CLIENT))
    client.send(Hello())
    assert isinstance(await server.next_event(LONG), Hello)
    return client, server


def reset(ch: SocketChannel) -> None:
    """Close with SO_LINGER 0: the peer gets a RST."""
    ch.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ch.abort()


# --- the mapping ------------------------------------------------------------------------------


def alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("reason", "cls", "message"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", TrustError, f"TLS alert from {PEER}: unknown ca"),
        ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", TrustError, f"TLS alert from {PEER}: certificate un"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", ConnectError, f"TLS alert from {PEER}: handshake fail"),
        ("WRONG_VERSION_NUMBER", ConnectError, "failed: wrong version number (the other end"),
    ],
)
def test_tls_errors_name_the_alert_and_the_peer(
    reason: str, cls: type[FluxError], message: str
) -> None:
    failure = tls_error(alert(reason), PEER, connecting=True)
    assert type(failure) is cls
    assert message in failure.message


def test_a_certificate_this_end_refused_is_a_trust_error() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    failure = tls_error(exc, PEER, connecting=True)
    assert isinstance(failure, TrustError)
    assert failure.message == f"certificate of {PEER} not trusted: {exc.verify_message}"


def test_os_errors_while_connecting_and_after() -> None:
    refused = os_error(ConnectionRefusedError(errno.ECONNREFUSED, "x"), PEER, connecting=True)
    assert isinstance(refused, ConnectionRefused)
    assert "is fluxd running?" in refused.message
    reset_late = os_error(ConnectionResetError(errno.ECONNRESET, "x"), PEER, connecting=False)
    assert type(reset_late) is ConnectionLost
    assert reset_late.message == f"connection reset by peer {PEER}"
    early = os_error(ConnectionResetError(errno.ECONNRESET, "x"), PEER, connecting=True)
    assert type(early) is ConnectError
    unreachable = os_error(
        OSError(errno.ENETUNREACH, "Network is unreachable"), PEER, connecting=True
    )
    assert unreachable.message == f"cannot connect to {PEER}: network is unreachable"
    silent = os_error(TimeoutError(errno.ETIMEDOUT, "Connection timed out"), PEER, connecting=False)
    assert isinstance(silent, TransportTimeout)


def test_foreign_error_keeps_the_cause() -> None:
    cause = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert foreign_error(cause, PEER).__cause__ is cause


def test_a_ragged_eof_is_not_a_failure() -> None:
    ragged = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    ragged.reason = "UNEXPECTED_EOF_WHILE_READING"
    assert is_ragged_eof(ragged)
    syscall = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert not is_ragged_eof(syscall)  # the socket under OpenSSL failed: a reset
    assert tls_error(syscall, PEER, connecting=False).message == f"connection reset by peer {PEER}"


@pytest.mark.parametrize(
    ("code", "transport_close", "by_peer", "cls", "message"),
    [
        (0, False, True, None, None),
        (0x1C, False, True, ConnectionLost, "closed by peer 10.0.0.2:5555: application error 0x1c"),
        (0xA, True, True, ConnectionLost, "error 0xa (protocol violation): why"),
        (0x130, True, True, TrustError, "TLS alert from 10.0.0.2:5555: unknown ca (QUIC error"),
        (0x12A, True, False, TrustError, "certificate of 10.0.0.2:5555 not trusted: why"),
        (0x7, True, False, RemoteProtocolError, "with 10.0.0.2:5555 failed: error 0x7 (frame en"),
        (0x10, True, False, ConnectionLost, "no usable network path"),
    ],
)
def test_quic_close_codes(
    code: int,
    transport_close: bool,
    by_peer: bool,
    cls: type[FluxError] | None,
    message: str | None,
) -> None:
    failure = quic_close_error(
        code,
        transport_close=transport_close,
        reason="why",
        peer=PEER,
        by_peer=by_peer,
        connecting=False,
    )
    if cls is None:
        assert failure is None
    else:
        assert type(failure) is cls
        assert message is not None and failure is not None and message in failure.message


# --- on loopback --------------------------------------------------------------------------------


def test_the_listener_reports_a_client_that_refused_the_certificate(certs: CertPaths) -> None:
    async def main() -> tuple[str, FluxError, int]:
        failed: asyncio.Queue[tuple[str, FluxError]] = asyncio.Queue()
        listener = Listener(
            server_ssl_context(certs),
            lambda sock, release: sock.close(),
            LONG,
            on_failed=lambda peer, exc: failed.put_nowait((peer, exc)),
        )
        port = listener.start("127.0.0.1", 0)[0][1]
        try:
            with pytest.raises(TrustError) as client:
                await open_connection("127.0.0.1", port, client_context(verify=True), "h", LONG)
            assert "not trusted" in client.value.message
            async with asyncio.timeout(LONG):
                peer, exc = await failed.get()
        finally:
            listener.close()
        return peer, exc, port

    peer, exc, port = asyncio.run(main())
    assert peer.startswith("127.0.0.1:") and not peer.endswith(f":{port}")
    assert isinstance(exc, TrustError)
    assert exc.message == f"TLS alert from {peer}: unknown ca"
    assert isinstance(exc.__cause__, ssl.SSLError)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_reset_mid_session_is_heard_as_such(certs: CertPaths, tls: bool) -> None:
    async def main() -> tuple[FluxError, str, FluxError | None]:
        client, server = await connected(certs, tls)
        reset(client)
        with pytest.raises(ConnectionLost) as heard:
            await server.next_event(LONG)
        assert server.closed
        return heard.value, server.end_reason, server.failure

    heard, reason, failure = asyncio.run(main())
    assert heard.message.startswith("connection reset by peer 127.0.0.1:")
    assert heard.__cause__ is not None  # the OSError or ssl.SSLError it was
    assert failure is heard and reason == heard.message


def test_a_tls_peer_closing_without_close_notify_is_an_eof(certs: CertPaths) -> None:
    async def main() -> tuple[object, str, FluxError | None]:
        client, server = await connected(certs, tls=True)
        server.send(Welcome())
        # Read to the end (session tickets included): closing with unread bytes would reset.
        assert isinstance(await client.next_event(LONG), Welcome)
        client.abort()  # how every flux peer closes: no TLS shutdown
        event = await server.next_event(LONG)
        return event, server.end_reason, server.failure

    event, reason, failure = asyncio.run(main())
    assert event == ConnectionClosed(clean=True)
    assert (reason, failure) == ("closed by peer", None)


def test_a_quic_server_closing_with_an_error_code_is_heard_by_the_client(
    certs: CertPaths,
) -> None:
    async def main() -> tuple[FluxError, str, int]:
        def close_at_once(ch: QuicChannel) -> None:
            ch.close(error_code=0x2A, reason_phrase="go away")

        listener = QuicListener(certs, close_at_once, 1452, LONG)
        port = (await listener.start("127.0.0.1", 0))[0][1]
        config = quic.configuration(is_client=True)
        config.verify_mode = ssl.CERT_NONE
        try:
            ch = await quic.open_connection("127.0.0.1", port, config, LONG)
            with pytest.raises(ConnectionLost) as heard:
                await ch.next_event(LONG)
        finally:
            listener.close()
        assert ch.closed and ch.failure is heard.value
        return heard.value, ch.end_reason, port

    heard, reason, port = asyncio.run(main())
    expected = f"QUIC connection closed by peer 127.0.0.1:{port}: application error 0x2a: go away"
    assert heard.message == reason == expected
