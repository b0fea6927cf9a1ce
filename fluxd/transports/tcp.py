"""TCP (+TLS) transport: a BufferedProtocol that moves bytes between a socket and a Connection.

No protocol logic lives here: received bytes land in the buffers `Connection.get_buffer` hands
out (a chunk's payload is read straight into its own buffer), events are queued for the session,
and backpressure in both directions becomes pause_reading()/pause_writing().
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import cast

from fluxproto import (
    Connection,
    ConnectionClosed,
    ConnectionLost,
    Event,
    FluxError,
    Frame,
    TransportTimeout,
)

# Events waiting for the session before the transport stops reading. The protocol window bounds
# chunks; this bounds everything else a peer could pile up (pings, for instance).
MAX_QUEUED_EVENTS = 256


class StreamChannel(asyncio.BufferedProtocol):
    """An asyncio protocol and the session-facing channel API (`next_event`, `send`, `drain`)."""

    def __init__(
        self, conn: Connection, on_connected: Callable[[StreamChannel], None] | None = None
    ) -> None:
        self.conn = conn
        self._on_connected = on_connected
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._events: deque[Event] = deque()
        self._error: FluxError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost = False
        self._reading_paused = False

    # --- asyncio.BufferedProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass but has its interface.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tune_socket(sock)
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.buffer_updated(nbytes)
        self._pump()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.conn.receive_data(b"")
        self._pump()
        self._writable.set()  # wake writers so they see the loss

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- channel API ------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next protocol event.

        Raises:
            RemoteProtocolError / IntegrityError: the peer broke the protocol.
            TransportTimeout: nothing arrived within `timeout` seconds.
        """
        while not self._events:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                raise TransportTimeout(f"no data from {self.peer} for {timeout:g} s") from None
            finally:
                self._waiter = None
        return self._pop()

    def poll(self) -> Event | None:
        """The next event if one is already queued, without waiting."""
        if self._events:
            return self._pop()
        if self._error is not None:
            raise self._error
        return None

    def fail(self, exc: FluxError) -> None:
        """Make the session's next receive raise `exc` (a local failure such as a full disk)."""
        if self._error is None:
            self._error = exc
        self._events.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, frame: Frame) -> None:
        """Queue a frame; raises ConnectionLost if the transport is gone."""
        self.conn.send(frame)
        if self._lost or self.transport is None or self.transport.is_closing():
            raise ConnectionLost(f"connection to {self.peer} is closed")
        for buf in self.conn.data_to_send():
            self.transport.write(buf)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._writable.wait()
        if self._lost:
            raise ConnectionLost(f"connection to {self.peer} was lost")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self._lost

    # --- internals ----------------------------------------------------------------------------

    def _pop(self) -> Event:
        event = self._events.popleft()
        if self._reading_paused and len(self._events) < MAX_QUEUED_EVENTS // 2:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        return event

    def _pump(self) -> None:
        try:
            while (event := self.conn.next_event()) is not None:
                self._events.append(event)
                if isinstance(event, ConnectionClosed):
                    break
        except FluxError as exc:
            self._error = exc
        if len(self._events) >= MAX_QUEUED_EVENTS and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def tune_socket(sock: socket.socket) -> None:
    """Low latency for small frames and dead-peer detection within about half a minute."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        # Unacknowledged data older than this breaks the connection (a silently cut link).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)
