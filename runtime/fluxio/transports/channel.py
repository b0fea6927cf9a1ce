"""What both transports share: the fluxproto Connection, the session's inbox, and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from fluxproto import (
    Connection,
    ConnectionClosed,
    ConnectionLost,
    Event,
    FluxError,
    Frame,
    Goodbye,
    RequestEnded,
    State,
)

from .inbox import Inbox


class ChannelBase:
    """The session-facing half of a channel; a transport adds how bytes move.

    Owns the conversation (`conn`), the events the session has not taken yet, and the
    lifecycle: closing (nothing more is sent, queued bytes may still leave), closed (the
    connection is gone), and why it ended. A transport feeds `conn` and calls `_take_events`
    after each read, and `_end` once the connection is over; it implements `send`, `drain`,
    `close` and `abort`.
    """

    #: "tcp" or "quic", for logs and --json.
    transport: str
    #: True if send() copies a frame's bytes, so its buffer is free once send() returns.
    copies_on_send: bool

    def __init__(
        self, conn: Connection, peer: str, now: float, on_take: Callable[[], None] | None = None
    ) -> None:
        """`on_take` is called after the session takes each event (see Inbox)."""
        self.conn, self.peer = conn, peer
        #: Loop time of the last bytes (or datagram) from the peer: a sign of life.
        self.last_receive = now
        #: Why the connection ended, when the transport saw it fail (a reset, a TLS alert, a
        #: QUIC close with an error code); None while it is up and after a clean close.
        self.failure: FluxError | None = None
        self._inbox = Inbox(on_take)
        #: Called with the byte count of every read from the peer (a request router's clock).
        self.on_progress: Callable[[int], None] | None = None
        #: Called when a request stops counting toward the server's limit later than its end
        #: (QUIC: when the server finished its stream, see fluxproto.streams).
        self.on_freed: Callable[[], None] | None = None
        self._closing = False
        self._lost = False
        self._peer_closed = False
        self._gone = asyncio.Event()

    # --- the session's side -----------------------------------------------------------------

    def send(self, frame: Frame) -> RequestEnded | None:
        """Queue `frame` for the peer; the request it ended, if it ended one (as
        `Connection.send`). Raises ConnectionLost if closing or gone."""
        raise NotImplementedError

    @property
    def requests_in_use(self) -> int:
        """Requests that count toward the server's `requests` limit (the open ones; QUIC adds
        those whose stream the server has not finished yet)."""
        return len(self.conn.requests)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the transport has room for more (raises TransportError if it is gone)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close once what is queued has left (bounded by a timeout)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        raise NotImplementedError

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next protocol event.

        Raises:
            RemoteProtocolError / IntegrityError: the peer broke the protocol.
            TransportError / TrustError: the connection failed (`failure`).
            TransportTimeout: nothing arrived within `timeout` seconds.
        """
        return await self._inbox.get(timeout, self.peer)

    def poll(self) -> Event | None:
        """The next event if one is already queued, without waiting."""
        return self._inbox.poll()

    def fail(self, exc: FluxError) -> None:
        """Make the session's next receive raise `exc` (a local failure such as a full disk)."""
        self._inbox.fail(exc)

    @property
    def closed(self) -> bool:
        """True once the connection is gone."""
        return self._lost

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await self._gone.wait()

    @property
    def usable(self) -> bool:
        """True while frames may be sent: the conversation is neither over nor broken."""
        return self.conn.state not in (State.CLOSED, State.ERROR)

    @property
    def broken(self) -> bool:
        """True once the peer broke the protocol: an ERROR is the only frame left to send."""
        return self.conn.state is State.ERROR

    @property
    def ended(self) -> bool:
        """True once the conversation is over: nothing may be sent, not even an ERROR."""
        return self.conn.state is State.CLOSED

    @property
    def end_reason(self) -> str:
        """Why the connection ended, for a log: the failure, else who closed it."""
        if self.failure is not None:
            return self.failure.message
        return "closed by peer" if self._peer_closed else "closed"

    def describe(self) -> dict[str, Any]:
        """Transport details for the daemon's request log."""
        return {"transport": self.transport}

    def silence(self) -> float:
        """Seconds the path has given no sign of life while the peer owed us one: an
        acknowledgement, at the transport's level, of bytes we sent (0 when nothing awaits
        one). A path that is down shows here within a few round trips, where a peer that is
        merely slow to answer at flux's level (its disk, a rate limit) does not."""
        raise NotImplementedError

    # --- for the transport ----------------------------------------------------------------------

    def _check_open(self) -> None:
        """Raise why nothing may be sent any more, if so (see `_check_alive`)."""
        self._check_alive()
        if self._closing or self.conn.state is State.CLOSED:
            raise ConnectionLost(f"connection to {self.peer} is closed")

    def _check_alive(self) -> None:
        """Raise the failure that ended the connection (ConnectionLost if it just closed)."""
        if self._lost:
            raise self.failure or ConnectionLost(f"connection to {self.peer} is closed")

    def _received(self, nbytes: int) -> None:
        """The transport read `nbytes` from the peer: progress for whoever waits on them."""
        self._inbox.received(nbytes)
        if self.on_progress is not None:
            self.on_progress(nbytes)

    def _freed(self) -> None:
        if self.on_freed is not None:
            self.on_freed()

    def _take_events(self) -> bool:
        """Queue the events `conn` has for the session; False if the peer broke the protocol
        (the session then hears why after the events before it)."""
        try:
            while (event := self.conn.next_event()) is not None:
                self._inbox.put(event)
                if isinstance(event, Goodbye):
                    self._peer_closed = True  # it is leaving: whatever follows, it closed
                if isinstance(event, ConnectionClosed):
                    break
        except FluxError as exc:
            self._inbox.set_error(exc)
            return False
        return True

    def _pump(self) -> None:
        """Move what `conn` decoded to the session and wake it (transports add their flow
        control)."""
        self._take_events()
        self._inbox.wake()

    def _end(self, failure: FluxError | None = None, *, by_peer: bool = False) -> bool:
        """The connection is over. The session gets the events already queued, then
        `failure` if the transport saw the connection fail, else an EOF (ConnectionClosed).

        Returns False if it was over already (nothing changes then).
        """
        if self._lost:
            return False
        self._lost = True
        self._gone.set()
        self.failure = failure
        self._peer_closed = self._peer_closed or by_peer
        self.conn.receive_data(b"")
        if failure is not None:
            self._inbox.set_error(failure)
            # The conversation is closed too, but the session hears the failure, not an EOF.
            with contextlib.suppress(FluxError):
                while self.conn.next_event() is not None:
                    pass
        self._pump()
        return True
