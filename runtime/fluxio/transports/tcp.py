"""TCP (+TLS) transport: a non-blocking socket driven by the event loop's reader/writer callbacks.

TLS runs on `ssl.SSLSocket`, so OpenSSL reads and writes the socket itself. asyncio's SSL
transports go through memory BIOs that copy every byte twice more; measured here, a bare 1 GiB
TLS stream took 1.5-2.3 s that way and 0.55 s on an SSLSocket. Received bytes land directly in the
buffers `Connection.get_buffer` hands out, so a chunk is decrypted straight into its own buffer.
No protocol logic lives here: bytes in, events out, frames in, bytes out, backpressure both ways.
Socket and TLS failures become flux errors here (errors.py), the session hears why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from fluxproto import (
    Connection,
    FluxError,
    Frame,
    RequestEnded,
    TransportTimeout,
)
from fluxproto.errors import map_exceptions

from ..buffers import ReceiveBudget
from ..parsing import format_hostport
from .channel import ChannelBase
from .errors import (
    OnFailed,
    foreign_error,
    handshake_errors,
    ignore_failure,
    is_ragged_eof,
    listen_error,
)
from .inbox import PROGRESS_BYTES

#: Events waiting for the session before we stop reading. The protocol window bounds chunks;
#: this bounds everything else a peer could pile up (pings, for instance).
MAX_QUEUED_EVENTS = 256
#: Unsent bytes above which `drain()` waits, and below which it lets writers go on.
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
#: Queued bytes below which a frame waits for the end of the event loop's turn, to be written
#: with the other frames sent in it (and buffers up to which they are joined).
COALESCE = 16 * 1024
#: Bytes read per readiness callback before other tasks get a turn.
READ_BUDGET = 4 * 1024 * 1024
#: Seconds `close()` waits for queued bytes to drain before dropping them (a peer that never
#: reads must not hold a socket open).
CLOSE_TIMEOUT = 10.0

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class SocketChannel(ChannelBase):
    """A channel (see ChannelBase) over one socket."""

    transport = "tcp"
    copies_on_send = False  # queued memoryviews are written later: buffers live until acked

    def __init__(
        self, sock: socket.socket, conn: Connection, budget: ReceiveBudget | None = None
    ) -> None:
        """`budget`, if given, is the daemon-wide limit on received chunk buffers (`conn`
        allocates from it): reading pauses while it is spent."""
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        super().__init__(conn, _peer_name(sock), self.loop.time(), self._maybe_resume_reading)
        self._fd = sock.fileno()
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._written = 0  # bytes the socket took, ever (progress for drain)
        self._writable = asyncio.Event()
        self._writable.set()
        self._flush_soon = False  # a flush is scheduled for this turn of the loop
        # After WANT_WRITE, OpenSSL needs the very same buffer again: the head is not joined.
        self._retry = False
        self._reading = False
        self._writer_armed = False
        self._memory = budget
        self._resume_reading()

    # --- how bytes leave ------------------------------------------------------------------------

    def send(self, frame: Frame) -> RequestEnded | None:
        """Queue a frame and write what the socket takes now; the request it ended, if any.
        Raises ConnectionLost if gone."""
        self._check_open()
        ended = self.conn.send(frame)
        for buf in self.conn.data_to_send():
            view = memoryview(buf)
            self._out.append(view)
            self._out_bytes += len(view)
        if self._out_bytes >= COALESCE:
            self._flush()
        elif not self._flush_soon:  # small: written with the rest of this turn's frames
            self._flush_soon = True
            self.loop.call_soon(self._flush)
        return ended

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the unsent bytes are below the low-water mark.

        Raises:
            TransportTimeout: the peer took fewer than PROGRESS_BYTES of them in a `timeout`
                (it stopped reading, or reads a few bytes at a time); the socket is closed.
            ConnectionLost: the connection is gone.
        """
        while not self._writable.is_set():
            mark = self._written
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._writable.wait()
            if not self._writable.is_set() and self._written - mark < PROGRESS_BYTES:
                # What is queued, here or in the kernel, would not reach it either: reset.
                set_linger_zero(self.sock)
                stalled = TransportTimeout(f"{self.peer} took no data for {timeout:g} s")
                self._close_socket(stalled)
                raise stalled
        self._check_alive()

    def silence(self) -> float:
        """See ChannelBase.silence: the time since the kernel last had an ACK for this socket
        while segments are in flight (TCP_INFO); 0 where Linux does not say."""
        return tcp_silence(self.sock)

    def close(self) -> None:
        """Close once queued bytes are written (an ERROR or GOODBYE still reaches the peer),
        or after CLOSE_TIMEOUT seconds, whichever comes first."""
        if self._closing or self._lost:
            return
        self._closing = True
        if not self._out:
            self.abort()
        else:
            self.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        self._close_socket()

    def _close_socket(self, failure: FluxError | None = None, *, by_peer: bool = False) -> None:
        if not self._end(failure, by_peer=by_peer):
            return
        self._pause_reading()
        if self._writer_armed:
            self.loop.remove_writer(self._fd)
            self._writer_armed = False
        with contextlib.suppress(OSError):
            self.sock.close()
        self._writable.set()  # wake writers so they see the loss

    # --- reading ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        budget = READ_BUDGET
        try:
            while budget > 0 and self._reading:
                # Only between frames: a payload buffer already taken must be filled, or every
                # connection could end up holding a half-read chunk and none could finish.
                memory = self._memory
                if memory is not None and memory.exhausted and self.conn.between_frames:
                    self._pause_reading()  # other connections' chunks must reach disk first
                    memory.when_available(self._resume_reading)
                    return
                buf = self.conn.get_buffer()
                n = self.sock.recv_into(buf)
                if n == 0:
                    self._on_eof()
                    return
                self.last_receive = self.loop.time()
                self.conn.buffer_updated(n)
                self._received(n)
                self._pump()  # one frame per buffer: it must be taken before the next
                budget -= n
        except _WOULD_BLOCK:
            return
        except ssl.SSLError as exc:
            if is_ragged_eof(exc):
                self._on_eof()  # the peer closed TCP without TLS's close_notify, as all do
            else:
                self._on_error(exc)
            return
        except OSError as exc:
            self._on_error(exc)
            return
        # Stopped by the budget or a pause: OpenSSL may hold decrypted bytes the socket's
        # readiness will never report, so come back without waiting for it.
        if self._reading:
            self.loop.call_soon(self._on_readable)

    def _on_eof(self) -> None:
        self._pause_reading()
        self._peer_closed = True
        self.conn.receive_data(b"")
        self._pump()
        if not self._out:
            self.abort()

    def _on_error(self, exc: OSError) -> None:
        # A reset or a TLS alert: the session hears which (not an EOF), and so does the log.
        self._close_socket(foreign_error(exc, self.peer), by_peer=True)

    def _pump(self) -> None:
        if not self._take_events():
            self._pause_reading()
        if len(self._inbox) >= MAX_QUEUED_EVENTS:
            self._pause_reading()
        self._inbox.wake()

    def _maybe_resume_reading(self) -> None:
        paused = not self._reading and not self._lost and self._inbox.error is None
        if paused and len(self._inbox) < MAX_QUEUED_EVENTS // 2:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(self._fd)

    def _resume_reading(self) -> None:
        if not self._reading and not self._lost:
            self._reading = True
            self.loop.add_reader(self._fd, self._on_readable)
            self.loop.call_soon(self._on_readable)  # bytes OpenSSL already decrypted

    # --- writing ------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_soon = False
        if self._lost:
            return
        try:
            while self._out:
                if not self._retry and len(self._out) > 1 and len(self._out[0]) < COALESCE:
                    self._join_head()
                head = self._out[0]
                self._retry = True  # until the socket takes some of it
                # After WANT_WRITE, OpenSSL needs the very same buffer again: never re-slice it
                # unless the socket reported a partial write (plain TCP).
                n = self.sock.send(head)
                self._retry = False
                self._out_bytes -= n
                self._written += n
                if n < len(head):
                    self._out[0] = head[n:]
                else:
                    self._out.popleft()
        except _WOULD_BLOCK:
            pass
        except OSError as exc:  # ssl.SSLError included
            self._on_error(exc)
            return
        self._arm_writer(bool(self._out))
        if self._out_bytes > HIGH_WATER:
            self._writable.clear()
        elif self._out_bytes <= LOW_WATER:
            self._writable.set()
        if self._closing and not self._out:
            self.abort()

    def _join_head(self) -> None:
        """Make the small buffers at the head of the queue one (up to COALESCE bytes): one
        TLS record and one syscall instead of one per frame (a group's COMMITTEDs go out
        together; each write cost ~0.2 ms of the daemon's loop with small files)."""
        parts, size = [], 0
        while self._out and size + len(self._out[0]) <= COALESCE:
            parts.append(self._out.popleft())
            size += len(parts[-1])
        if not parts:  # the next buffer alone is larger: leave it as it is
            return
        self._out.appendleft(memoryview(b"".join(parts)) if len(parts) > 1 else parts[0])

    def _arm_writer(self, wanted: bool) -> None:
        if wanted and not self._writer_armed and not self._lost:
            self.loop.add_writer(self._fd, self._flush)
            self._writer_armed = True
        elif not wanted and self._writer_armed:
            self.loop.remove_writer(self._fd)
            self._writer_armed = False


#: struct tcp_info (linux/tcp.h) up to tcpi_last_ack_recv: tcpi_unacked at byte 24 (segments
#: sent and not acknowledged), tcpi_last_ack_recv at byte 56 (ms since the last ACK came).
_TCP_INFO = struct.Struct("=24xI28xI")


def tcp_silence(sock: socket.socket) -> float:
    """Seconds since `sock` last received an ACK while segments await one (0 if none do, or
    where TCP_INFO is not there: not Linux, a closed socket). A peer that stopped reading
    (zero window) leaves nothing unacknowledged: that is not silence."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except (OSError, AttributeError):
        return 0.0
    if len(info) < _TCP_INFO.size:
        return 0.0
    unacked, last_ack_ms = _TCP_INFO.unpack(info)
    return last_ack_ms / 1000 if unacked else 0.0


def _peer_name(sock: socket.socket) -> str:
    try:
        return _address_name(sock.getpeername())
    except OSError:
        return "?"


def _address_name(addr: Any) -> str:
    if not isinstance(addr, tuple):  # a Unix socket: a path, often empty
        return str(addr) or "local"
    return format_hostport(str(addr[0]), int(addr[1]))


#: Asked for per socket where the kernel offers it (else the system default stays): loss-based
#: congestion control (cubic, reno) collapses on links with random loss, which fluxd is for.
TCP_CONGESTION = b"bbr"


def tune_socket(sock: socket.socket) -> None:
    """Low latency for small frames, dead-peer detection within about half a minute, and BBR
    where the kernel has it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, TCP_CONGESTION)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        # Unacknowledged data older than this breaks the connection (a silently cut link).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)


async def wait_fd(sock: socket.socket, writable: bool) -> None:
    """Wait until the non-blocking `sock` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    add, remove = (
        (loop.add_writer, loop.remove_writer)
        if writable
        else (
            loop.add_reader,
            loop.remove_reader,
        )
    )

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    add(fd, ready)
    try:
        await fut
    finally:
        remove(fd)


async def handshake(sock: ssl.SSLSocket, timeout: float) -> None:
    """Complete a TLS handshake on a non-blocking SSLSocket within `timeout` seconds.

    A deadline for the whole handshake: a peer sending its flight a byte at a time does not
    extend it. Raises TimeoutError, ssl.SSLError or OSError.
    """
    # asyncio.timeout, here and below: 3.11's wait_for can lose a cancellation (Ctrl-C).
    async with asyncio.timeout(timeout):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await wait_fd(sock, writable=False)
            except ssl.SSLWantWriteError:
                await wait_fd(sock, writable=True)


async def open_connection(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    timeout: float,
) -> socket.socket:
    """Connect (trying each resolved address) and finish TLS; returns the ready socket.

    Raises:
        ConnectionRefused: nothing listens there.
        ConnectError / TransportTimeout: no connection or no TLS within `timeout` seconds.
        TrustError: the certificate failed `ssl_context`'s verification (or the server
            refused ours).
    """
    loop = asyncio.get_running_loop()

    async def run() -> socket.socket:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: OSError = OSError(f"cannot resolve {host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            tune_socket(sock)
            if ssl_context is None:
                return sock
            tls = ssl_context.wrap_socket(
                sock,
                server_hostname=server_hostname,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=False,  # see errors.RAGGED_EOF
            )
            try:
                await handshake(tls, timeout)
            except BaseException:
                tls.close()
                raise
            return tls
        raise last

    with handshake_errors(format_hostport(host, port), timeout, "answer"):
        async with asyncio.timeout(timeout):
            return await run()


class Listener:
    """Accepts TCP connections, finishes TLS, and hands each ready socket to `on_socket`.

    `admit(host)` is asked at accept, before any TLS work: it returns a release function (the
    connection is counted until it is called) or None, and then the socket is closed at once.
    `on_socket(sock, release)` owns the release from then on. `on_failed(peer, error)` hears of
    each TLS handshake that failed (an alert, a reset, a timeout).
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        on_socket: Callable[[socket.socket, Callable[[], None]], Any],
        handshake_timeout: float,
        admit: Callable[[str], Callable[[], None] | None] = lambda host: lambda: None,
        on_failed: OnFailed = ignore_failure,
    ) -> None:
        self.ssl_context, self.on_socket = ssl_context, on_socket
        self.handshake_timeout = handshake_timeout
        self.admit, self.on_failed = admit, on_failed
        self._socks: list[socket.socket] = []
        self._pending: set[asyncio.Task[None]] = set()

    def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Bind and listen; returns the bound (host, port) pairs.

        Raises:
            ConnectError: the address cannot be resolved or bound (nothing is left listening).
        """
        with map_exceptions({OSError: functools.partial(listen_error, host, port)}):
            return self._listen(host, port)

    def _listen(self, host: str, port: int) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, resolved in infos:
            addr = (resolved[0], port, *resolved[2:])  # port 0: later families reuse the first's
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError:
                sock.close()
                self.close()
                raise
            sock.listen(1024)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)
            self._socks.append(sock)
            port = sock.getsockname()[1]  # later families share the first one's port
        return [s.getsockname()[:2] for s in self._socks]

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
        for task in self._pending:
            task.cancel()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # a burst of connections, then let other work run
            try:
                sock, addr = listener.accept()
            except _WOULD_BLOCK:
                return
            except OSError:
                return  # the listener's trouble (EMFILE), no one connection's: try again later
            release = self.admit(str(addr[0]))
            if release is None:
                _drop(sock)
                continue
            sock.setblocking(False)
            tune_socket(sock)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(
                    sock,
                    server_side=True,
                    do_handshake_on_connect=False,
                    suppress_ragged_eofs=False,  # see errors.RAGGED_EOF
                )
            peer = _address_name(addr)
            task = asyncio.get_running_loop().create_task(self._secure(sock, peer, release))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            task.add_done_callback(functools.partial(_close_if_cancelled, sock, release))

    async def _secure(self, sock: socket.socket, peer: str, release: Callable[[], None]) -> None:
        if isinstance(sock, ssl.SSLSocket):
            try:
                with handshake_errors(peer, self.handshake_timeout, "TLS handshake"):
                    await handshake(sock, self.handshake_timeout)
            except FluxError as exc:
                sock.close()
                release()
                self.on_failed(peer, exc)
                return
        self.on_socket(sock, release)


def _close_if_cancelled(
    sock: socket.socket, release: Callable[[], None], task: asyncio.Task[None]
) -> None:
    # Cancelled by close(), perhaps before it ever ran: the socket and its slot are still ours.
    if task.cancelled():
        sock.close()
        release()


def _drop(sock: socket.socket) -> None:
    """Close with a reset: a refused peer leaves no TIME_WAIT behind on our side."""
    set_linger_zero(sock)
    sock.close()


def set_linger_zero(sock: socket.socket) -> None:
    """Make close() reset the connection and drop unsent bytes, the kernel's included."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
