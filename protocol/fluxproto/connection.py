"""The sans-IO flux connection (version 2): bytes in, events out; frames in, bytes out; every
request's state, both byte windows and the request limit enforced.

    conn = Connection(Role.SERVER, window=..., transfer_window=..., requests=...)
    conn.receive_data(data)              # or get_buffer()/buffer_updated() from BufferedProtocol
    conn.receive_frame(frame)            # frames decoded from other streams (QUIC)
    while (event := conn.next_event()) is not None:
        ...                              # a Frame, RequestEnded or ConnectionClosed
    conn.send(Ack(rid, ranges=((0, 4),)))
    transport.writelines(conn.data_to_send())

The connection never does I/O and never reads a clock. It refuses frames the state tables do
not allow, chunks outside the windows or the wanted set, wrong lengths and wrong digests, and
drops frames that were already on their way when their request ended (PROTOCOL.md section 6.3).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codec import Buffer, FrameReader, encode
from .errors import FluxError, LocalProtocolError, RemoteProtocolError, VersionMismatch
from .frames import (
    DEFAULT_REQUESTS,
    DEFAULT_WINDOW,
    MAX_HEADER,
    PROTOCOL_VERSION,
    Error,
    Frame,
    FrameType,
    Hello,
    Welcome,
    rid_of,
)
from .multiplex import RequestTable
from .negotiation import mismatch_for_client, mismatch_from_server
from .request import Limits, Request, RequestEnded
from .state import Role, State, next_state


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the byte stream. `clean` is False if it did so mid-frame or mid-request."""

    clean: bool


Event = Frame | RequestEnded | ConnectionClosed
_Err = type[FluxError]


class Connection:
    """One end of a flux conversation. See the module docstring for the call pattern.

    Args:
        role: which end this is.
        alloc: returns a writable buffer of the given size for each received CHUNK payload.
        max_header: largest frame header accepted from the peer (at most MAX_HEADER).
        window: bytes of chunks this end takes in flight, all transfers together.
        transfer_window: the same within one transfer (None: `window`).
        requests: how many requests this end keeps open (the server's value binds).

    The last three are what this end announces; the HELLO or WELCOME it sends must carry them
    (`hello()` and `welcome()` build such frames).

    Attributes:
        state: the connection's State.
        requests: the open requests by rid (a request in CANCELLING is still open).
        local, peer: the Limits each end announced (peer: defaults until the handshake).
        sent_inflight, received_inflight: payload bytes of chunks in flight from this end,
            and toward it, over all requests.
        version: the protocol version once WELCOME is through.
        welcomed: that WELCOME (sent or received): the server's rules for uploads
            (`min_chunk`, `max_chunks`) as well as its limits.
    """

    def __init__(
        self,
        role: Role,
        alloc: Callable[[int], bytearray | memoryview] | None = None,
        max_header: int = MAX_HEADER,
        window: int = DEFAULT_WINDOW,
        transfer_window: int | None = None,
        requests: int = DEFAULT_REQUESTS,
    ) -> None:
        self.role = role
        self.state = State.START
        self.version: int | None = None
        self.welcomed: Welcome | None = None
        tw = window if transfer_window is None else transfer_window
        self.local = Limits(window, tw, requests)
        self._table = RequestTable(role, self.local)
        self.requests: dict[int, Request] = self._table.requests  # the table's, never replaced
        self.max_header = max_header
        self._reader = FrameReader(max_chunk=0, alloc=alloc, max_header=max_header)
        self._inbox = bytearray()  # bytes from receive_data not yet fed to the reader
        self._out: list[Buffer] = []
        self._events: deque[Event] = deque()
        self._eof = False
        self._closed_reported = False
        self._error: FluxError | None = None
        self._sink: memoryview | None = None
        self._offered: tuple[int, ...] = ()
        self._refusal: str | None = None  # the message of an ERROR 505 answering our HELLO

    @property
    def peer(self) -> Limits:
        """What the peer announced in its HELLO or WELCOME (defaults until then)."""
        return self._table.peer

    @property
    def sent_inflight(self) -> int:
        """Payload bytes of chunks this end sent and that are not yet acknowledged."""
        return self._table.sent_inflight

    @property
    def received_inflight(self) -> int:
        """Payload bytes of chunks this end received and has not yet acknowledged."""
        return self._table.received_inflight

    # --- receiving -----------------------------------------------------------------------------

    @property
    def between_frames(self) -> bool:
        """True when no received frame is partly buffered (so the next read starts a new one,
        and a transport may stop reading without stranding a half-filled payload buffer)."""
        return self._reader.at_boundary and not self._inbox

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A buffer for the transport to fill; call `next_event` after each `buffer_updated`.

        Each filled buffer completes at most one frame, and the frame must be taken with
        `next_event` before the next buffer is asked for: that is what lets the connection
        check the next CHUNK's prefix against the transfers the previous frames opened.
        """
        if self._discarding:
            # Input after a protocol error or our own close is dropped; the link is closing.
            if self._sink is None:
                self._sink = memoryview(bytearray(65536))
            return self._sink
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written into the last `get_buffer` view."""
        if self._discarding:
            return
        try:
            self._reader.buffer_updated(nbytes)
        except RemoteProtocolError as exc:
            self._error = exc

    def receive_data(self, data: Buffer) -> None:
        """Feed received bytes (copied); `b""` means the peer closed the stream."""
        if not data:
            self._eof = True
            return
        if not self._discarding:
            self._inbox += data
            self._feed_inbox()

    @property
    def _discarding(self) -> bool:
        return self._error is not None or self.state is State.CLOSED

    def _feed_inbox(self) -> None:
        if not self._inbox or self._reader.has_frame:
            return
        try:
            used = self._reader.feed(self._inbox, one=True)
        except RemoteProtocolError as exc:
            self._error = exc
            self._inbox.clear()
            return
        del self._inbox[:used]

    def next_event(self) -> Event | None:
        """The next event, or None until more data arrives.

        Events come in the order their frames were processed: frames (each with its rid), a
        COMMIT once the chunks it counts are all in, RequestEnded after the frame that ended
        a request, ConnectionClosed last. Frames dropped as late produce no event.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is now in ERROR).
            IntegrityError: a received chunk does not match its digest.
        """
        while not self._events:
            frame = self._reader.next_frame()
            if frame is None:
                break
            if self.state is not State.CLOSED:  # after our close, input is dropped
                self._receive(frame)
                self._feed_inbox()
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            self.state = State.ERROR
            raise self._error
        if self._eof and not self._closed_reported:
            self._closed_reported = True
            idle = self.state is State.OPEN and self._table.idle
            clean = self._reader.at_boundary and (idle or self.state is State.CLOSED)
            self.state = State.CLOSED
            self._close()
            return ConnectionClosed(clean)
        return None

    def receive_frame(self, frame: Frame) -> None:
        """Process a frame decoded from another byte stream of this conversation.

        For transports that carry requests or chunks on streams of their own (QUIC): the frame
        is checked exactly as if it had arrived on this stream at this point. Its events (the
        frame, a COMMIT it completes, RequestEnded) come out of `next_event`. Dropped after our
        close. A per-stream reader bounds CHUNK payloads with `chunk_limit(rid)`.

        Raises:
            RemoteProtocolError / IntegrityError: as `next_event`.
        """
        if self.state is State.CLOSED:
            return
        if self._error is not None:
            raise self._error
        self._receive(frame)

    def _receive(self, frame: Frame) -> None:
        out: list[Event] = []
        try:
            self._process(frame, self.role.peer, out)
        except FluxError as exc:
            self._error = exc
            self.state = State.ERROR
            raise
        self._events.extend(out)

    def chunk_limit(self, rid: int | None = None) -> int:
        """Largest CHUNK payload the peer may send now (0: none), for other streams' readers.

        With `rid`: for that request (its chunk size while chunks of it may come, including
        ones already on their way when it ended). Without: the largest over every request,
        which is what the reader of this stream checks each CHUNK prefix against.
        """
        if rid is None:
            return self._reader.max_chunk
        return self._table.chunk_limit(rid)

    @property
    def receive_window(self) -> int:
        """Bytes of chunks this end takes in flight (its HELLO or WELCOME `window`)."""
        return self.local.window

    @property
    def handshaking(self) -> bool:
        """True until the HELLO/WELCOME exchange is done: no request may be opened yet."""
        return self.state in (State.START, State.HANDSHAKE)

    # --- sending -------------------------------------------------------------------------------

    def send(self, frame: Frame) -> RequestEnded | None:
        """Queue `frame` for sending.

        Returns:
            RequestEnded when this frame ends its request (COMMITTED, INFO, the last ACK of a
            download, ...): the rid is free again. Ends caused by received frames come out of
            `next_event` instead.

        Raises:
            LocalProtocolError: the frame is not allowed now (state, windows, chunk
                bookkeeping, request limit); nothing changed and nothing was queued.
        """
        buffers = encode(
            frame
        )  # before any state change: a frame that cannot encode changes nothing
        out: list[Event] = []
        if frame.TYPE == FrameType.ERROR and self.state is State.ERROR and rid_of(frame) is None:
            self.state = State.CLOSED  # a last word after a protocol error
        else:
            self._process(frame, self.role, out)
        self._out.extend(buffers)
        return next((e for e in out if isinstance(e, RequestEnded)), None)

    def data_to_send(self) -> list[Buffer]:
        """Buffers queued by `send`, to be written in order. Drains the queue."""
        out, self._out = self._out, []
        return out

    def can_send_chunk(self, rid: int, nbytes: int) -> bool:
        """True when this end may send a CHUNK of `nbytes` for request `rid` now: it is that
        transfer's sender, the request's state allows a chunk, and both of the peer's windows
        have room (PROTOCOL.md section 7). Which chunk is the caller's business."""
        return self.state is State.OPEN and self._table.can_send_chunk(rid, nbytes)

    def next_rid(self) -> int:
        """A request id no open request uses. Ids increase (wrapping at 2^32-1) so that a
        frame still on its way for an ended request is never taken for a new one's."""
        return self._table.next_rid()

    def hello(self, **fields: Any) -> Hello:
        """A HELLO announcing this end's windows and request count (other fields as given)."""
        return Hello(**self._announced(), **fields)

    def welcome(self, **fields: Any) -> Welcome:
        """A WELCOME announcing this end's windows and request limit (other fields as given)."""
        return Welcome(**self._announced(), **fields)

    def _announced(self) -> dict[str, Any]:
        lim = self.local
        return {
            "window": lim.window,
            "transfer_window": lim.transfer_window,
            "requests": lim.requests,
        }

    def version_mismatch(self, peer: str = "the server") -> VersionMismatch | None:
        """The version error of this handshake, worded for the user (PROTOCOL.md section 14).

        Server: after a HELLO that does not offer version 2, the error to send back as
        ERROR 505 without rid. Client: after the server answered HELLO with ERROR 505, the
        error to report, naming `peer` (the host). None when the versions are not the problem.
        """
        if self.role is Role.SERVER:
            if self._offered and PROTOCOL_VERSION not in self._offered:
                return mismatch_for_client(self._offered)
            return None
        return None if self._refusal is None else mismatch_from_server(peer, self._refusal)

    # --- the state machines --------------------------------------------------------------------

    def _process(self, frame: Frame, sender: Role, out: list[Event]) -> None:
        err: _Err = LocalProtocolError if sender is self.role else RemoteProtocolError
        rid = rid_of(frame)
        if rid is None:
            self._connection_frame(frame, sender, err, out)
        elif self.state is not State.OPEN:
            raise err(f"{sender.value} may not send {frame.TYPE.name} in state {self.state.value}")
        else:
            produced: list[Frame | RequestEnded] = []
            self._table.process(frame, rid, sender, err, produced)
            out.extend(produced)
            # One frame at a time (PROTOCOL.md 15.4): the next CHUNK prefix is checked
            # against the transfers this frame left open.
            self._reader.max_chunk = self._table.max_chunk

    def _connection_frame(self, frame: Frame, sender: Role, err: _Err, out: list[Event]) -> None:
        nxt = next_state(sender, self.state, frame.TYPE)
        if nxt is None:
            raise err(f"{sender.value} may not send {frame.TYPE.name} in state {self.state.value}")
        if isinstance(frame, Hello):
            self._on_hello(frame, sender, err)
        elif isinstance(frame, Welcome):
            self._on_welcome(frame, sender, err)
        elif isinstance(frame, Error) and frame.code == 505 and self.state is State.HANDSHAKE:
            self._refusal = frame.message if self.role is Role.CLIENT else None
        if nxt is State.CLOSED:
            self._close()
        self.state = nxt
        if sender is not self.role:
            out.append(frame)

    def _close(self) -> None:
        """The connection ends, every request with it (no RequestEnded: the close says it)."""
        self._table.clear()
        self._reader.max_chunk = 0

    def _on_hello(self, f: Hello, sender: Role, err: _Err) -> None:
        if sender is self.role:
            if PROTOCOL_VERSION not in f.versions:
                raise err(f"this end speaks version {PROTOCOL_VERSION}; HELLO must offer it")
            self._check_announced(f)
        else:
            self._table.peer = _limits_of(f)
        self._offered = f.versions

    def _on_welcome(self, f: Welcome, sender: Role, err: _Err) -> None:
        if f.version not in self._offered:
            raise err(f"server chose version {f.version}, client offered {self._offered}")
        if f.version != PROTOCOL_VERSION:
            raise err(f"version {f.version} chosen; this end speaks {PROTOCOL_VERSION}")
        if sender is self.role:
            self._check_announced(f)
        else:
            self._table.peer = _limits_of(f)
        self.version, self.welcomed = f.version, f

    def _check_announced(self, f: Hello | Welcome) -> None:
        if _limits_of(f) != self.local:
            # Announcing other limits than the connection enforces would make a well-behaved
            # peer's chunks look like violations.
            raise LocalProtocolError(
                f"{f.TYPE.name} announces {_limits_of(f)}, the connection enforces {self.local}"
            )


def _limits_of(f: Hello | Welcome) -> Limits:
    assert f.transfer_window is not None  # resolved when the frame was built
    return Limits(f.window, f.transfer_window, f.requests)
