"""Deadlines a peer cannot stretch by trickling bytes in, on both transports.

Before authentication every phase has a deadline counted from its start (TLS from accept, HELLO
from the end of TLS or of the QUIC handshake). After it, a connection is idle when neither a
whole frame nor PROGRESS_BYTES of one arrive within `idle_timeout`: a trickle of a frame is cut,
an honest upload on a slow link is not. Each trickling peer is paced by waiting for the server's
close between two bytes, so the test ends as soon as the server hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol

from fluxio.transports import quic
from fluxproto import (
    MIN_CHUNK,
    Chunk,
    OpenDownload,
    OpenUpload,
    Stat,
    Status,
    Welcome,
    chunk_digest,
)
from fluxproto.codec import encode_bytes
from fluxproto.frames import ALPN, FrameType

from .conftest import Daemon, Fluxctl
from .proxy import Proxy
from .rawpeer import RawPeer, hello_with_padding, raw_frame
from .test_auth import FULL, issue
from .test_hostile import configured

HANDSHAKE = 1.0
IDLE = 2.0
CONFIG = f"""
[auth]
anonymous = false

[limits]
handshake_timeout = {HANDSHAKE}
idle_timeout = {IDLE}
"""
#: Scheduling slack on a shared machine. A trickle below would need minutes to finish its
#: message, so "closed within the timeout + MARGIN" tells a deadline from no deadline.
MARGIN = 4.0
STEP = 0.05  # seconds between two trickled bytes (20 bytes/s)
PADDING = 4096  # bytes that make a header take 200 s to trickle in
SLOW_READ = 512  # bytes a slow reader takes per STEP
MiB = 1 << 20


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    return configured(make_daemon, tmp_path, CONFIG)


@pytest.fixture
def token(daemon: Daemon) -> str:
    return issue(daemon, "mallory", *FULL)


@pytest.fixture
def peers() -> Iterator[list[socket.socket]]:
    """Sockets closed at the end of the test."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        with contextlib.suppress(OSError):
            sock.close()


def closed(sock: socket.socket, wait: float, most: int = 65536) -> bool:
    """True once the server has closed `sock` (waiting up to `wait` s); data is dropped."""
    sock.settimeout(wait)
    try:
        return not sock.recv(most)
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True


def trickle_until_closed(sock: socket.socket, data: bytes, within: float) -> float:
    """Send `data` a byte per STEP until the server closes; the seconds that took."""
    started = time.monotonic()
    for i in range(len(data)):
        if closed(sock, STEP):
            return time.monotonic() - started
        took = time.monotonic() - started
        assert took < within, f"still open after {took:.1f} s of trickling"
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return time.monotonic() - started
    raise AssertionError("the whole message got through: trickle it more slowly")


def client_hello() -> bytes:
    """The first flight of a TLS 1.3 client, as bytes to send by hand."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_handshake_trickled_in_is_cut_at_the_deadline(
    daemon: Daemon, peers: list[socket.socket]
) -> None:
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    peers.append(sock)
    took = trickle_until_closed(sock, client_hello(), HANDSHAKE + MARGIN)
    assert took >= HANDSHAKE - 0.1


def test_a_hello_trickled_in_after_tls_is_cut_at_the_deadline(
    daemon: Daemon, token: str, peers: list[socket.socket]
) -> None:
    peer = RawPeer(daemon.port)
    peers.append(peer.sock)
    took = trickle_until_closed(peer.sock, hello_with_padding(PADDING, token), HANDSHAKE + MARGIN)
    assert took >= HANDSHAKE - 0.1


def padded(ftype: FrameType, header: dict[str, Any]) -> bytes:
    """A frame whose header carries an unknown key of PADDING bytes (ignored, but long)."""
    return raw_frame(ftype, dict(header, padding="x" * PADDING))


def authenticated(daemon: Daemon, token: str, peers: list[socket.socket]) -> RawPeer:
    """A raw TLS connection past HELLO/WELCOME."""
    peer = RawPeer(daemon.port)
    peers.append(peer.sock)
    assert isinstance(peer.hello(token), Welcome)
    return peer


def test_a_request_trickled_in_after_hello_is_cut_by_the_idle_timeout(
    daemon: Daemon, token: str, peers: list[socket.socket]
) -> None:
    peer = authenticated(daemon, token, peers)
    stat = padded(FrameType.STAT, Stat(1, "/x").header())
    took = trickle_until_closed(peer.sock, stat, IDLE + MARGIN)
    assert took >= IDLE - 0.1


def test_a_chunk_trickled_in_during_an_upload_is_cut_by_the_idle_timeout(
    daemon: Daemon, token: str, peers: list[socket.socket]
) -> None:
    peer = authenticated(daemon, token, peers)
    peer.send(encode_bytes(OpenUpload(1, "/m/t.bin", MIN_CHUNK, MIN_CHUNK)))
    assert isinstance(peer.read_frame(), Status)
    data = os.urandom(MIN_CHUNK)
    took = trickle_until_closed(
        peer.sock, encode_bytes(Chunk(1, 0, chunk_digest(data), data)), IDLE + MARGIN
    )
    assert took >= IDLE - 0.1


def test_an_honest_upload_on_a_slow_link_is_not_cut(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    # Each 1 MiB chunk takes 4 s on a 256 KiB/s link, twice the idle timeout, but 64 KiB of it
    # arrive every 0.25 s; the daemon's own rate limit applies on top.
    daemon = configured(make_daemon, tmp_path, CONFIG + 'rate = "1M"\n')
    token = issue(daemon, "alice", *FULL)
    src = tmp_path / "slow.bin"
    src.write_bytes(os.urandom(MiB + MiB // 4))
    proxy = Proxy(daemon.port, rate=256 * 1024)
    try:
        started = time.monotonic()
        args = ("--chunk-size", "1M", "--transport", "tcp", "--retry-for", "0", "--token", token)
        res = fluxctl("send", str(src), daemon.url("/slow.bin", port=proxy.port), *args)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert res.code == 0, res.stderr
    assert took > 2 * IDLE  # the link really was slower than one chunk per idle timeout
    assert (daemon.root / "slow.bin").read_bytes() == src.read_bytes()


# --- QUIC ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_quic(port: int) -> AsyncIterator[QuicConnectionProtocol]:
    """A stock aioquic client on the daemon's QUIC port: no fluxd code in the way."""
    config = quic.configuration(is_client=True)
    config.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", port, configuration=config) as client:
        yield client


@contextlib.asynccontextmanager
async def stream(
    client: QuicConnectionProtocol, unidirectional: bool = False
) -> AsyncIterator[asyncio.StreamWriter]:
    """A new stream of `client` (its first bidirectional one is the control stream)."""
    _, writer = await client.create_stream(is_unidirectional=unidirectional)
    try:
        yield writer
    finally:
        writer.close()


async def closed_by_server(client: QuicConnectionProtocol, wait: float) -> bool:
    try:
        async with asyncio.timeout(wait):
            await client.wait_closed()
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("trickled", [True, False], ids=["trickled", "withheld"])
def test_a_hello_trickled_or_withheld_over_quic_is_cut_at_the_deadline(
    daemon: Daemon, token: str, trickled: bool
) -> None:
    # aioquic's own idle timeout (8 s) lies far beyond the deadline and its margin.
    hello = hello_with_padding(PADDING, token) if trickled else b""

    async def main() -> float:
        async with raw_quic(daemon.port) as client, stream(client) as control:
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(len(hello) + 1):
                if await closed_by_server(client, STEP if trickled else HANDSHAKE + MARGIN):
                    return loop.time() - started
                assert loop.time() - started < HANDSHAKE + MARGIN, "still open"
                control.write(hello[i : i + 1])
            raise AssertionError("the server never closed the connection")

    assert asyncio.run(main()) >= HANDSHAKE - 0.1


def test_chunks_on_a_data_stream_before_hello_are_refused_at_once(daemon: Daemon) -> None:
    """Before HELLO nothing may be buffered for the peer: a data stream is a protocol error
    (it used to be decoded, and a 16 MiB chunk buffer taken, for anyone who finished TLS)."""
    chunk = encode_bytes(Chunk(1, 0, chunk_digest(b"x" * 1000), b"x" * 1000))

    async def main() -> bool:
        async with raw_quic(daemon.port) as client, stream(client, unidirectional=True) as data:
            data.write(chunk)
            return await closed_by_server(client, HANDSHAKE / 2)

    assert asyncio.run(main()), "the server kept a connection that sent chunks before HELLO"
    assert any(
        "before the handshake" in str(e.get("error")) for e in daemon.events("protocol-error")
    )


def read_until_closed(sock: socket.socket, within: float) -> float:
    """Read SLOW_READ bytes per STEP (10 KiB/s: a third of the 64 KiB per idle timeout that
    would count as progress) until the server has closed or reset the connection."""
    started = time.monotonic()
    while (took := time.monotonic() - started) < within:
        # Asked of the kernel: the bytes already received would take long to read to the end.
        if tcp_state(sock) != TCP_ESTABLISHED or closed(sock, STEP, SLOW_READ):
            return took
        time.sleep(STEP)  # closed() returned at once: data was waiting
    raise AssertionError(f"still open after {within:.1f} s of slow reading")


TCP_ESTABLISHED = 1  # tcpi_state (linux/tcp_states.h)


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def test_a_download_read_slowly_is_cut_by_the_idle_timeout(
    daemon: Daemon, token: str, peers: list[socket.socket]
) -> None:
    (daemon.root / "big.bin").write_bytes(os.urandom(32 * MiB))
    peer = authenticated(daemon, token, peers)
    peer.send(encode_bytes(OpenDownload(1, "/big.bin", chunk_size=MiB)))
    took = read_until_closed(peer.sock, IDLE + MARGIN)
    assert took >= IDLE - 0.1


def test_a_commit_slower_than_the_clients_io_timeout_completes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """A storage call that takes long (here the commit stalls 4 s, as a slow disk reading a
    whole file would) keeps the client's wait alive with PINGs: a client that gives up after
    2 s of silence still gets its COMMITTED, without a retry."""
    d = make_daemon(env={"FLUX_STALL_AT": "commit-checked:1:4"})
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    res = fluxctl(
        "send", str(src), d.url("/slow.bin"), "--io-timeout", "2", "--retry-for", "0", "--json"
    )
    assert res.code == 0, res.stderr
    assert res.json["retries"] == 0
    assert (d.root / "slow.bin").read_bytes() == src.read_bytes()
