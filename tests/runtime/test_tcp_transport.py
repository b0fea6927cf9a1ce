"""fluxio.transports.tcp over real loopback sockets, under asyncio's loop and uvloop.

A `RawPeer` is the far end when a test needs a peer that misbehaves (never reads, sends garbage,
hangs up): a plain non-blocking socket driven by an in-memory `fluxproto.Connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import mmap
import random
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fluxd.certs import init_certs
from fluxio.buffers import BufferPool
from fluxio.tls import server_ssl_context
from fluxio.transports import tcp
from fluxio.transports.tcp import Listener, SocketChannel, open_connection
from fluxproto import (
    ALPN,
    Ack,
    Chunk,
    Commit,
    Committed,
    ConnectError,
    Connection,
    ConnectionClosed,
    ConnectionLost,
    ConnectionRefused,
    Event,
    Frame,
    Goodbye,
    Hello,
    NoSpace,
    OpenUpload,
    Ping,
    RemoteProtocolError,
    Role,
    Status,
    TransportTimeout,
    Welcome,
    chunk_count,
    chunk_digest,
    encode_bytes,
)
from fluxproto.frames import MAX_WINDOW

TID = bytes(16)
LONG = 30.0  # bound on waits that must succeed; never reached when the code works
MiB = 1 << 20

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(
    params=[pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]
)
def run(request: pytest.FixtureRequest) -> Runner:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server_ctx(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return server_ssl_context(init_certs(Path(tmp_path_factory.mktemp("certs")) / "certs"))


def client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    return ctx


# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_pair(bufsize: int | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (a → b); small kernel buffers when `bufsize` is given."""
    with socket.socket() as lst:
        if bufsize:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)  # inherited by b
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        a = socket.socket()
        if bufsize:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        a.connect(lst.getsockname())
        b, _ = lst.accept()
    with a, b:
        yield a, b


class RawPeer:
    """The far end of a SocketChannel: a bare socket and an in-memory Connection."""

    def __init__(self, sock: socket.socket, role: Role) -> None:
        sock.setblocking(False)
        self.sock, self.conn = sock, Connection(role, window=MAX_WINDOW)
        self.loop = asyncio.get_running_loop()

    async def recv(self) -> bytes:
        try:
            return await self.loop.sock_recv(self.sock, MiB)
        except ConnectionResetError:
            return b""

    async def event(self) -> Event:
        while (event := self.conn.next_event()) is None:
            self.conn.receive_data(await self.recv())
        return event

    async def send(self, frame: Frame) -> None:
        self.conn.send(frame)
        await self.send_raw(b"".join(bytes(b) for b in self.conn.data_to_send()))

    async def send_raw(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def read_to_eof(self) -> int:
        """Read until the other side closes; returns the number of CHUNK frames seen."""
        chunks = 0
        while not isinstance(event := await self.event(), ConnectionClosed):
            chunks += isinstance(event, Chunk)
        return chunks


async def expect_event(ch: SocketChannel, cls: type[Any]) -> Any:
    event = await ch.next_event(LONG)
    assert isinstance(event, cls), event
    return event


async def handshake_with_raw_client(ch: SocketChannel, peer: RawPeer) -> None:
    """`ch` is a server channel; bring it to OPEN with `peer` as the client."""
    await peer.send(peer.conn.hello())
    await expect_event(ch, Hello)
    ch.send(ch.conn.welcome())
    assert isinstance(await peer.event(), Welcome)


async def open_upload_to_raw_server(ch: SocketChannel, peer: RawPeer, size: int, cs: int) -> None:
    """`ch` is a client channel; open upload 1 with a 1 GiB window (no acks needed)."""
    ch.send(ch.conn.hello())
    assert isinstance(await peer.event(), Hello)
    await peer.send(peer.conn.welcome())
    await expect_event(ch, Welcome)
    ch.send(OpenUpload(1, "/big", size, cs))
    assert isinstance(await peer.event(), OpenUpload)
    await peer.send(Status(1, TID))
    await expect_event(ch, Status)


ZEROS = bytes(MiB)
ZEROS_DIGEST = chunk_digest(ZEROS)


async def fill_until_drain_blocks(
    ch: SocketChannel, limit: int = 64
) -> tuple[int, asyncio.Future[None]]:
    """Send 1 MiB chunks to a peer that does not read until `drain()` stops returning at once.

    Returns the number of chunks sent and the pending drain.
    """
    for sent in range(1, limit + 1):
        ch.send(Chunk(1, sent - 1, ZEROS_DIGEST, ZEROS))
        waiter = asyncio.ensure_future(ch.drain())
        await asyncio.sleep(0)  # one loop turn: an unblocked drain has finished by now
        if not waiter.done():
            return sent, waiter
    raise AssertionError(f"drain() never blocked after {limit} MiB")


async def serve_listener(
    ssl_context: ssl.SSLContext | None, handshake_timeout: float = LONG
) -> tuple[Listener, int, asyncio.Queue[socket.socket]]:
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()
    listener = Listener(
        ssl_context, lambda sock, release: accepted.put_nowait(sock), handshake_timeout
    )
    bound = listener.start("127.0.0.1", 0)
    assert len(bound) == 1
    host, port = bound[0]
    assert host == "127.0.0.1" and port > 0
    return listener, port, accepted


# --- a whole conversation -----------------------------------------------------------------------

CS = MiB
DATA = random.Random(3).randbytes(3 * CS + 12345)
NCHUNKS = chunk_count(len(DATA), CS)


async def mini_server(ch: SocketChannel) -> bytes:
    await expect_event(ch, Hello)
    ch.send(ch.conn.welcome())
    op = await expect_event(ch, OpenUpload)
    ch.send(Status(op.rid, TID))
    stored = bytearray(op.size)
    for _ in range(chunk_count(op.size, op.chunk_size)):
        chunk = await expect_event(ch, Chunk)
        # Received straight into the buffer the connection's allocator handed out.
        assert isinstance(chunk.data, memoryview) and isinstance(chunk.data.obj, mmap.mmap)
        stored[chunk.index * op.chunk_size : chunk.index * op.chunk_size + len(chunk.data)] = (
            chunk.data
        )
        ch.send(Ack(op.rid, ((chunk.index, 1),)))
        await ch.drain()
    commit = await expect_event(ch, Commit)
    assert commit.digest == chunk_digest(stored)
    ch.send(Committed(op.rid, op.size, commit.digest))
    await expect_event(ch, Goodbye)
    assert await ch.next_event(LONG) == ConnectionClosed(clean=True)
    assert ch.closed
    return bytes(stored)


async def mini_client(ch: SocketChannel) -> Committed:
    ch.send(ch.conn.hello())
    await expect_event(ch, Welcome)
    ch.send(OpenUpload(1, "/f", len(DATA), CS))
    await expect_event(ch, Status)
    acked = 0
    for i in range(NCHUNKS):
        piece = DATA[i * CS : (i + 1) * CS]
        while not ch.conn.can_send_chunk(1, len(piece)):
            ack = await expect_event(ch, Ack)
            acked += sum(n for _, n in ack.ranges)
        ch.send(Chunk(1, i, chunk_digest(piece), piece))
        await ch.drain()
    # The Connection counts an ACK when it arrives; the session consumes it from the queue.
    while acked < NCHUNKS:
        ack = await expect_event(ch, Ack)
        acked += sum(n for _, n in ack.ranges)
    ch.send(Commit(1, chunk_digest(DATA), NCHUNKS))
    committed = await expect_event(ch, Committed)
    ch.send(Goodbye("done"))
    ch.close()
    return committed  # type: ignore[no-any-return]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_hello_upload_commit_goodbye(run: Runner, server_ctx: ssl.SSLContext, tls: bool) -> None:
    async def main() -> tuple[bytes, Committed, dict[str, Any]]:
        listener, port, accepted = await serve_listener(server_ctx if tls else None)
        try:
            csock = await open_connection(
                "127.0.0.1", port, client_ctx() if tls else None, "localhost" if tls else None, LONG
            )
            ssock = await asyncio.wait_for(accepted.get(), LONG)
        finally:
            listener.close()
        info: dict[str, Any] = {}
        if tls:
            assert isinstance(csock, ssl.SSLSocket) and isinstance(ssock, ssl.SSLSocket)
            info = {
                "alpn": (csock.selected_alpn_protocol(), ssock.selected_alpn_protocol()),
                "version": csock.version(),
            }
        client = SocketChannel(csock, Connection(Role.CLIENT, window=MAX_WINDOW))
        server = SocketChannel(
            ssock, Connection(Role.SERVER, alloc=BufferPool().get, window=2 * CS)
        )
        assert client.peer == f"127.0.0.1:{port}"
        assert server.peer == f"127.0.0.1:{csock.getsockname()[1]}"
        stored, committed = await asyncio.wait_for(
            asyncio.gather(mini_server(server), mini_client(client)), LONG
        )
        assert client.closed and server.closed
        return stored, committed, info

    stored, committed, info = run(main())
    assert stored == DATA
    assert committed == Committed(1, len(DATA), chunk_digest(DATA))
    if tls:
        assert info == {"alpn": (ALPN, ALPN), "version": "TLSv1.3"}


# --- reading: EOF, garbage, timeouts, failures, many events -------------------------------------


def test_eof_before_anything_is_an_unclean_close(run: Runner) -> None:
    async def main() -> tuple[Event, bool]:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            a.close()
            event = await ch.next_event(LONG)
            return event, ch.closed

    event, closed = run(main())
    assert event == ConnectionClosed(clean=False)
    assert closed  # nothing left to write: the channel closed itself


def test_eof_between_requests_is_clean_and_mid_frame_is_not(run: Runner) -> None:
    async def main(cut: bool) -> Event:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            if cut:
                await peer.send_raw(encode_bytes(Ping(5))[:-1])
            a.shutdown(socket.SHUT_WR)
            return await ch.next_event(LONG)

    assert run(main(cut=False)) == ConnectionClosed(clean=True)
    assert run(main(cut=True)) == ConnectionClosed(clean=False)


def test_garbage_from_the_peer_is_a_remote_protocol_error(run: Runner) -> None:
    async def main() -> None:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            a.sendall(b"GET / HTTP/1.1\r\nHost: flux\r\n\r\n")
            with pytest.raises(RemoteProtocolError):
                await ch.next_event(LONG)
            with pytest.raises(RemoteProtocolError):
                ch.poll()  # the error sticks
            ch.abort()

    run(main())


def test_what_a_session_may_still_send_follows_the_conversation(run: Runner) -> None:
    async def main() -> list[tuple[bool, bool, bool, str]]:
        seen = []
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            seen.append((ch.usable, ch.broken, ch.ended, ch.end_reason))
            await peer.send_raw(b"\xff" * 64)  # not a frame
            with pytest.raises(RemoteProtocolError):
                await ch.next_event(LONG)
            seen.append((ch.usable, ch.broken, ch.ended, ch.end_reason))
            ch.abort()
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            a.shutdown(socket.SHUT_WR)
            assert isinstance(await ch.next_event(LONG), ConnectionClosed)
            seen.append((ch.usable, ch.broken, ch.ended, ch.end_reason))
        return seen

    assert run(main()) == [
        (True, False, False, "closed"),
        (False, True, False, "closed"),  # an ERROR may still tell the peer why
        (False, False, True, "closed by peer"),
    ]


def test_next_event_times_out(run: Runner) -> None:
    async def main() -> None:
        with raw_pair() as (_, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            assert ch.poll() is None
            with pytest.raises(TransportTimeout, match=r"no data from 127\.0\.0\.1"):
                await ch.next_event(0.02)
            ch.abort()

    run(main())


def test_fail_drops_queued_events_and_makes_the_next_receive_raise(run: Runner) -> None:
    async def main() -> None:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            # One write: both frames are read in the same readiness callback.
            await peer.send_raw(encode_bytes(Ping(1)) + encode_bytes(Ping(2)))
            assert await ch.next_event(LONG) == Ping(1)
            ch.fail(NoSpace("disk full"))
            ch.fail(NoSpace("a second failure is ignored"))
            with pytest.raises(NoSpace, match="disk full"):
                await ch.next_event(LONG)  # not Ping(2)
            with pytest.raises(NoSpace, match="disk full"):
                ch.poll()
            ch.abort()

    run(main())


def test_fail_wakes_a_blocked_receiver(run: Runner) -> None:
    async def main() -> None:
        with raw_pair() as (_, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            waiting = asyncio.ensure_future(ch.next_event(LONG))
            await asyncio.sleep(0)  # let it start waiting (nothing will arrive)
            assert not waiting.done()
            ch.fail(NoSpace("disk full"))
            with pytest.raises(NoSpace, match="disk full"):
                await asyncio.wait_for(waiting, LONG)
            ch.abort()

    run(main())


def test_a_flood_of_small_frames_arrives_complete_and_in_order(run: Runner) -> None:
    n = 3 * tcp.MAX_QUEUED_EVENTS + 7  # enough to pause and resume reading several times

    async def main() -> list[int]:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            await peer.send_raw(b"".join(encode_bytes(Ping(i)) for i in range(n)))
            nonces = []
            for _ in range(n):
                event = await expect_event(ch, Ping)
                nonces.append(event.nonce)
            ch.abort()
            return nonces

    assert run(main()) == list(range(n))


# --- writing: backpressure, close, abort --------------------------------------------------------


class CountingSocket:
    """A socket whose sends are counted (socket objects take no new attributes)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: memoryview) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_small_frames_sent_in_one_turn_go_out_in_one_write(run: Runner) -> None:
    n = 50

    async def main() -> tuple[list[int], int]:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            counting = CountingSocket(b)
            ch.sock = counting  # type: ignore[assignment]
            for i in range(n):  # one turn of the loop: nothing is written yet
                ch.send(Ping(i))
            assert counting.sends == 0
            nonces = [(await peer.event()).nonce for _ in range(n)]  # type: ignore[attr-defined]
            ch.abort()
            return nonces, counting.sends

    nonces, sends = run(main())
    assert nonces == list(range(n))
    assert sends == 1


def test_drain_blocks_above_high_water_until_the_peer_reads(run: Runner) -> None:
    async def main() -> tuple[int, int]:
        with raw_pair(64 * 1024) as (a, b):
            ch = SocketChannel(a, Connection(Role.CLIENT))
            peer = RawPeer(b, Role.SERVER)
            await open_upload_to_raw_server(ch, peer, 64 * MiB, MiB)
            sent, waiter = await fill_until_drain_blocks(ch)
            assert sent * MiB > tcp.HIGH_WATER
            for _ in range(20):
                await asyncio.sleep(0)
            assert not waiter.done(), "drain() returned while the peer read nothing"
            received = 0
            while received < sent:
                event = await asyncio.wait_for(peer.event(), LONG)
                assert isinstance(event, Chunk)
                received += 1
            await asyncio.wait_for(waiter, LONG)  # resumed once the peer caught up
            ch.abort()
            return sent, received

    sent, received = run(main())
    assert received == sent


def test_close_flushes_queued_bytes_first(run: Runner) -> None:
    async def main() -> tuple[int, int, bool]:
        with raw_pair(64 * 1024) as (a, b):
            ch = SocketChannel(a, Connection(Role.CLIENT))
            peer = RawPeer(b, Role.SERVER)
            await open_upload_to_raw_server(ch, peer, 64 * MiB, MiB)
            sent, waiter = await fill_until_drain_blocks(ch)
            ch.close()
            still_open = not ch.closed
            with pytest.raises(ConnectionLost):
                ch.send(Chunk(1, sent, ZEROS_DIGEST, ZEROS))  # closing: nothing new is queued
            received = await asyncio.wait_for(peer.read_to_eof(), LONG)
            assert ch.closed
            await asyncio.wait_for(waiter, LONG)
            return sent, received, still_open

    sent, received, still_open = run(main())
    assert still_open, "close() with queued bytes must not close at once"
    assert received == sent


def test_close_with_nothing_queued_closes_at_once(run: Runner) -> None:
    async def main() -> Event:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            ch.close()
            assert ch.closed
            return await asyncio.wait_for(peer.event(), LONG)

    assert isinstance(run(main()), ConnectionClosed)


def test_abort_drops_queued_bytes(run: Runner) -> None:
    async def main() -> tuple[int, int]:
        with raw_pair(64 * 1024) as (a, b):
            ch = SocketChannel(a, Connection(Role.CLIENT))
            peer = RawPeer(b, Role.SERVER)
            await open_upload_to_raw_server(ch, peer, 64 * MiB, MiB)
            sent, waiter = await fill_until_drain_blocks(ch)
            ch.abort()
            assert ch.closed
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(waiter, LONG)  # blocked writers learn of the loss
            with pytest.raises(ConnectionLost):
                await ch.drain()
            assert isinstance(await ch.next_event(LONG), ConnectionClosed)
            received = await asyncio.wait_for(peer.read_to_eof(), LONG)
            return sent, received

    sent, received = run(main())
    assert received < sent


def test_close_gives_up_on_a_peer_that_never_reads(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp, "CLOSE_TIMEOUT", 0.05)

    async def main() -> tuple[int, int, bool]:
        with raw_pair(64 * 1024) as (a, b):
            ch = SocketChannel(a, Connection(Role.CLIENT))
            peer = RawPeer(b, Role.SERVER)
            await open_upload_to_raw_server(ch, peer, 64 * MiB, MiB)
            sent, waiter = await fill_until_drain_blocks(ch)
            ch.close()
            open_after_close = not ch.closed
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(waiter, LONG)  # woken by the abort after CLOSE_TIMEOUT
            assert ch.closed
            received = await asyncio.wait_for(peer.read_to_eof(), LONG)
            return sent, received, open_after_close

    sent, received, open_after_close = run(main())
    assert open_after_close
    assert received < sent


async def stalled_upload(a: socket.socket, b: socket.socket) -> tuple[SocketChannel, RawPeer]:
    """A client channel on `a` whose upload to the raw server on `b` has filled every buffer."""
    ch = SocketChannel(a, Connection(Role.CLIENT))
    peer = RawPeer(b, Role.SERVER)
    await open_upload_to_raw_server(ch, peer, 64 * MiB, MiB)
    await fill_until_drain_blocks(ch)
    return ch, peer


def test_drain_resets_a_peer_that_stops_reading(run: Runner) -> None:
    async def main() -> None:
        with raw_pair(64 * 1024) as (a, b):
            ch, _ = await stalled_upload(a, b)
            with pytest.raises(TransportTimeout, match=r"took no data for 0\.2 s"):
                await ch.drain(0.2)
            assert ch.closed
            # Reset, not closed after the queued bytes: the peer's kernel knows at once.
            assert b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET

    run(main())


def test_drain_waits_as_long_as_a_slow_peer_reads_steadily(run: Runner) -> None:
    async def main() -> float:
        with raw_pair(64 * 1024) as (a, b):
            ch, peer = await stalled_upload(a, b)

            async def read_slowly() -> None:  # at most 64 KiB (its buffer) per 20 ms
                while await peer.recv():
                    await asyncio.sleep(0.02)

            reader = asyncio.ensure_future(read_slowly())
            started = asyncio.get_running_loop().time()
            await ch.drain(0.3)
            took = asyncio.get_running_loop().time() - started
            ch.abort()
            await reader
            return took

    assert run(main()) > 0.3  # longer than the timeout: progress kept it going


def test_send_after_the_peer_left_raises_connection_lost(run: Runner) -> None:
    async def main() -> None:
        with raw_pair() as (a, b):
            ch = SocketChannel(b, Connection(Role.SERVER))
            peer = RawPeer(a, Role.CLIENT)
            await handshake_with_raw_client(ch, peer)
            a.shutdown(socket.SHUT_WR)
            assert await ch.next_event(LONG) == ConnectionClosed(clean=True)
            assert ch.closed
            with pytest.raises(ConnectionLost):
                ch.send(Ping(1))

    run(main())


# --- Listener, open_connection, handshake -------------------------------------------------------


def coro_state(tasks: set[asyncio.Task[None]]) -> str:
    (task,) = tasks
    return inspect.getcoroutinestate(task.get_coro())  # type: ignore[arg-type]


def test_listener_hands_plain_sockets_over_and_stops_on_close(run: Runner) -> None:
    async def main() -> None:
        listener, port, accepted = await serve_listener(None)
        csock = await open_connection("127.0.0.1", port, None, None, LONG)
        with csock:
            ssock = await asyncio.wait_for(accepted.get(), LONG)
            with ssock:
                assert not isinstance(ssock, ssl.SSLSocket)
                assert ssock.getpeername() == csock.getsockname()
                assert ssock.getblocking() is False
                assert ssock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        listener.close()
        with pytest.raises(ConnectionRefused):
            await open_connection("127.0.0.1", port, None, None, LONG)

    run(main())


def test_listener_drops_a_failed_tls_handshake(run: Runner, server_ctx: ssl.SSLContext) -> None:
    async def main() -> tuple[int, str | None]:
        listener, port, accepted = await serve_listener(server_ctx)
        loop = asyncio.get_running_loop()
        try:
            with socket.socket() as raw:
                raw.setblocking(False)
                await loop.sock_connect(raw, ("127.0.0.1", port))
                await loop.sock_sendall(raw, b"this is not a TLS client hello\r\n" * 8)
                with contextlib.suppress(ConnectionResetError):
                    while await asyncio.wait_for(loop.sock_recv(raw, 4096), LONG):
                        pass  # an alert perhaps, then EOF: the server hung up
            dropped = accepted.qsize()
            good = await open_connection("127.0.0.1", port, client_ctx(), "localhost", LONG)
            with good:
                ssock = await asyncio.wait_for(accepted.get(), LONG)
                with ssock:
                    assert isinstance(ssock, ssl.SSLSocket)
                    return dropped, ssock.selected_alpn_protocol()
        finally:
            listener.close()

    dropped, alpn = run(main())
    assert dropped == 0, "on_socket must not see a connection whose handshake failed"
    assert alpn == ALPN


def test_listener_drops_a_silent_tls_client_after_the_handshake_timeout(
    run: Runner, server_ctx: ssl.SSLContext
) -> None:
    async def main() -> int:
        listener, port, accepted = await serve_listener(server_ctx, handshake_timeout=0.05)
        loop = asyncio.get_running_loop()
        try:
            with socket.socket() as raw:
                raw.setblocking(False)
                await loop.sock_connect(raw, ("127.0.0.1", port))
                with contextlib.suppress(ConnectionResetError):
                    assert await asyncio.wait_for(loop.sock_recv(raw, 4096), LONG) == b""
            return accepted.qsize()
        finally:
            listener.close()

    assert run(main()) == 0


@pytest.mark.parametrize("state", [inspect.CORO_CREATED, inspect.CORO_SUSPENDED])
def test_closing_the_listener_mid_handshake_releases_the_slot_and_cancels(
    run: Runner, server_ctx: ssl.SSLContext, state: str
) -> None:
    async def main() -> None:
        released: list[str] = []
        admitted = asyncio.Event()

        def admit(host: str) -> Callable[[], None]:
            admitted.set()
            return lambda: released.append(host)

        listener = Listener(server_ctx, lambda sock, release: None, LONG, admit)
        port = listener.start("127.0.0.1", 0)[0][1]
        with socket.create_connection(("127.0.0.1", port)):  # never says a word of TLS
            async with asyncio.timeout(LONG):
                await admitted.wait()
                # Not yet started, or waiting for the client's first flight.
                while not listener._pending or state != coro_state(listener._pending):
                    await asyncio.sleep(0.001)
            (task,) = listener._pending
            listener.close()
            with pytest.raises(asyncio.CancelledError):  # not swallowed by the cleanup
                await task
        assert released == ["127.0.0.1"]

    run(main())


def test_open_connection_tls_handshake_times_out(run: Runner) -> None:
    async def main() -> None:
        with socket.socket() as silent:  # accepts (in the backlog) but never speaks TLS
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            port = silent.getsockname()[1]
            with pytest.raises(ConnectError, match=rf"no answer from 127.0.0.1:{port} within"):
                await open_connection("127.0.0.1", port, client_ctx(), "localhost", 0.05)

    run(main())


def test_open_connection_refused(run: Runner) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound but not listening: connections are refused
            with pytest.raises(ConnectionRefused, match=f"refused by 127.0.0.1:{port}") as info:
                await open_connection("127.0.0.1", port, None, None, LONG)
            assert isinstance(info.value.__cause__, ConnectionRefusedError)

    run(main())


def test_open_connection_tries_every_resolved_address() -> None:
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        listener, port, accepted = await serve_listener(None)
        with socket.socket() as dead:
            dead.bind(("127.0.0.1", 0))
            dead_port = dead.getsockname()[1]

            async def getaddrinfo(host: str, p: int, **kw: Any) -> list[Any]:
                assert (host, p) == ("flux.test", port)
                stream = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
                return [(*stream, ("127.0.0.1", dead_port)), (*stream, ("127.0.0.1", port))]

            loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
            try:
                csock = await open_connection("flux.test", port, None, None, LONG)
                with csock:
                    ssock = await asyncio.wait_for(accepted.get(), LONG)
                    with ssock:
                        return csock.getpeername(), ssock.getpeername() == csock.getsockname()
            finally:
                listener.close()

    peer, matched = asyncio.run(main())
    assert peer[1] != 0 and matched


def test_channel_over_a_socketpair() -> None:
    async def main() -> Event:
        a, b = socket.socketpair()
        with a, b:
            client = SocketChannel(a, Connection(Role.CLIENT))
            server = SocketChannel(b, Connection(Role.SERVER))
            client.send(Hello())
            event = await server.next_event(LONG)
            client.abort()
            server.abort()
            return event

    assert isinstance(asyncio.run(main()), Hello)


def test_silence_is_what_the_kernel_says_of_unacknowledged_segments() -> None:
    """A connected TCP socket with nothing in flight is not silent; a socket that is not TCP,
    or closed, says nothing (0), where TCP_INFO could tell a dead path."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        with client, peer:
            client.sendall(b"x" * 1000)
            assert peer.recv(1000)
            assert tcp.tcp_silence(client) < 1.0  # a live path: acknowledged within a moment
    a, b = socket.socketpair()
    with a, b:
        assert tcp.tcp_silence(a) == 0.0
    assert tcp.tcp_silence(client) == 0.0  # closed
