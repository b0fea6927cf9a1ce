"""The sans-IO flux connection: bytes in, events out; frames in, bytes out; windows enforced.

    conn = Connection(Role.SERVER)
    conn.receive_data(data)              # or get_buffer()/buffer_updated() from BufferedProtocol
    while (event := conn.next_event()) is not None:
        ...                              # a Frame, or ConnectionClosed
    conn.send(Ack(ranges=((0, 4),)))
    transport.writelines(conn.data_to_send())

The connection never does I/O and never reads a clock. It refuses frames the state table does
not allow, chunks outside the window or the wanted set, wrong lengths and wrong digests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codec import Buffer, FrameReader, encode
from .digest import chunk_digest, digest_at
from .errors import FluxError, IntegrityError, LocalProtocolError, RemoteProtocolError
from .frames import (
    MAX_HEADER,
    Ack,
    Chunk,
    Frame,
    FrameType,
    Hello,
    Meta,
    OpenDownload,
    OpenUpload,
    Status,
    Welcome,
    chunk_count,
)
from .ranges import Ranges, count, is_canonical
from .state import Role, State, next_state

DEFAULT_WINDOW = 32 * 1024 * 1024

# Per-chunk marks in a transfer.
_OPEN, _IN_FLIGHT, _DONE, _UNWANTED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the byte stream. `clean` is False if it did so mid-frame or mid-request."""

    clean: bool


Event = Frame | ConnectionClosed


class Transfer:
    """Chunk bookkeeping for one upload or download: which chunks moved, which are acked."""

    __slots__ = (
        "acked",
        "chunk_size",
        "digests",
        "expected",
        "inflight",
        "marks",
        "nchunks",
        "sender",
        "size",
        "window_chunks",
    )

    def __init__(
        self,
        size: int,
        chunk_size: int,
        sender: Role,
        window: int,
        want: Ranges | None = None,
        digests: Buffer | None = None,
    ) -> None:
        self.size, self.chunk_size, self.sender = size, chunk_size, sender
        self.nchunks = chunk_count(size, chunk_size)
        self.window_chunks = max(1, window // chunk_size)
        self.digests = digests
        self.inflight = 0
        self.acked = 0
        if want is None:
            self.marks = bytearray(self.nchunks)
            self.expected = self.nchunks
        else:
            self.marks = bytearray([_UNWANTED]) * self.nchunks
            for start, cnt in want:
                self.marks[start : start + cnt] = bytes(cnt)
            self.expected = count(want)

    def chunk_length(self, index: int) -> int:
        """Payload length of chunk `index` (the last chunk may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @property
    def can_send(self) -> bool:
        return self.inflight < self.window_chunks

    @property
    def complete(self) -> bool:
        return self.acked == self.expected


class Connection:
    """One end of a flux conversation. See the module docstring for the call pattern.

    Args:
        role: which end this is.
        alloc: returns a writable buffer of the given size for each received CHUNK payload.
        max_header: largest frame header accepted from the peer (at most MAX_HEADER).
    """

    def __init__(
        self,
        role: Role,
        alloc: Callable[[int], bytearray | memoryview] | None = None,
        max_header: int = MAX_HEADER,
    ) -> None:
        self.role = role
        self.state = State.START
        self.transfer: Transfer | None = None
        self.version: int | None = None
        self._windows = {Role.CLIENT: DEFAULT_WINDOW, Role.SERVER: DEFAULT_WINDOW}
        self._versions: tuple[int, ...] = ()
        self._opening: OpenUpload | OpenDownload | None = None
        self.max_header = max_header
        self._reader = FrameReader(max_chunk=0, alloc=alloc, max_header=max_header)
        self._inbox = bytearray()  # bytes from receive_data not yet fed to the reader
        self._out: list[Buffer] = []
        self._eof = False
        self._closed_reported = False
        self._error: FluxError | None = None
        self._sink: memoryview | None = None

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
        check the next CHUNK against the transfer the previous frame opened.
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

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is now in ERROR).
            IntegrityError: a received chunk does not match its digest.
        """
        frame = self._reader.next_frame()
        if frame is not None and self.state is not State.CLOSED:
            try:
                self._process(frame, self.role.peer)
            except FluxError as exc:
                self._error = exc
                self.state = State.ERROR
                raise
            self._feed_inbox()
            return frame
        if self._error is not None:
            self.state = State.ERROR
            raise self._error
        if self._eof and not self._closed_reported:
            self._closed_reported = True
            clean = self._reader.at_boundary and self.state in (State.IDLE, State.CLOSED)
            self.state = State.CLOSED
            self.transfer = None
            return ConnectionClosed(clean)
        return None

    def receive_frame(self, frame: Frame) -> Frame | None:
        """Process a frame decoded from another byte stream of this conversation.

        For transports that carry CHUNK frames on separate streams (QUIC data streams): the
        frame is checked exactly as if it had arrived in order with everything else. Returns
        the frame, or None when it arrived after our close (dropped, see `next_event`).

        Raises:
            RemoteProtocolError / IntegrityError: as `next_event`.
        """
        if self.state is State.CLOSED:
            return None
        if self._error is not None:
            raise self._error
        try:
            self._process(frame, self.role.peer)
        except FluxError as exc:
            self._error = exc
            self.state = State.ERROR
            raise
        return frame

    @property
    def chunk_limit(self) -> int:
        """Largest CHUNK payload the peer may send now (0: none): for other streams' readers."""
        return self._reader.max_chunk

    @property
    def receive_window(self) -> int:
        """Bytes of chunks this end said it takes in flight (its HELLO or WELCOME window)."""
        return self._windows[self.role]

    @property
    def handshaking(self) -> bool:
        """True until the HELLO/WELCOME exchange is done: no chunk may arrive yet."""
        return self.state in (State.START, State.HANDSHAKE)

    # --- sending -------------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue `frame` for sending.

        Raises:
            LocalProtocolError: the frame is not allowed now (state, window, chunk bookkeeping).
        """
        buffers = encode(
            frame
        )  # before any state change: a frame that cannot encode changes nothing
        if frame.TYPE == FrameType.ERROR and self.state is State.ERROR:
            self.state = State.CLOSED  # a last word after a protocol error
        else:
            self._process(frame, self.role)
        self._out.extend(buffers)

    def data_to_send(self) -> list[Buffer]:
        """Buffers queued by `send`, to be written in order. Drains the queue."""
        out, self._out = self._out, []
        return out

    @property
    def can_send_chunk(self) -> bool:
        """True when this side is the chunk sender and the peer's window has room."""
        t = self.transfer
        return (
            t is not None
            and t.sender is self.role
            and self.state in (State.UPLOADING, State.DOWNLOADING)
            and t.can_send
        )

    # --- the state machine ---------------------------------------------------------------------

    def _process(self, frame: Frame, sender: Role) -> None:
        err = LocalProtocolError if sender is self.role else RemoteProtocolError
        nxt = next_state(sender, self.state, frame.TYPE)
        if nxt is None:
            raise err(f"{sender.value} may not send {frame.TYPE.name} in state {self.state.value}")
        hook = _HOOKS.get(frame.TYPE)
        if hook is not None:
            nxt = hook(self, frame, sender, nxt, err)
        if nxt in (State.IDLE, State.CLOSED):
            self.transfer = None
        self.state = nxt
        # CHUNK payloads are bounded at the prefix by what the open transfer allows the peer.
        t = self.transfer
        peer_sends = t is not None and t.sender is self.role.peer
        self._reader.max_chunk = t.chunk_size if peer_sends and t is not None else 0

    def _on_hello(self, f: Hello, sender: Role, nxt: State, err: type[FluxError]) -> State:
        self._windows[Role.CLIENT] = f.window
        self._versions = f.versions
        return nxt

    def _on_welcome(self, f: Welcome, sender: Role, nxt: State, err: type[FluxError]) -> State:
        if f.version not in self._versions:
            raise err(f"server chose version {f.version}, client offered {self._versions}")
        self._windows[Role.SERVER] = f.window
        self.version = f.version
        return nxt

    def _on_open(
        self, f: OpenUpload | OpenDownload, s: Role, nxt: State, e: type[FluxError]
    ) -> State:
        self._opening = f
        return nxt

    def _on_status(self, f: Status, sender: Role, nxt: State, err: type[FluxError]) -> State:
        op = self._opening
        assert isinstance(op, OpenUpload)
        if not is_canonical(f.held, chunk_count(op.size, op.chunk_size)):
            raise err("STATUS names chunks beyond the end of the file")
        self.transfer = Transfer(op.size, op.chunk_size, Role.CLIENT, self._windows[Role.SERVER])
        return nxt

    def _on_meta(self, f: Meta, sender: Role, nxt: State, err: type[FluxError]) -> State:
        op = self._opening
        assert isinstance(op, OpenDownload)
        nchunks = chunk_count(f.size, f.chunk_size)
        want = op.want
        in_range = want is None or is_canonical(want, nchunks)
        expected = nchunks if want is None else count(want)
        if f.count not in (0, expected) or (f.count and not in_range):
            raise err(f"META announces {f.count} chunks, {expected} were asked for")
        pinned = op.digest is not None and (f.digest, f.chunk_size) != (op.digest, op.chunk_size)
        if f.count and pinned:
            raise err("META announces chunks of another version or geometry than asked for")
        if f.count == 0:
            return State.IDLE
        self.transfer = Transfer(
            f.size, f.chunk_size, Role.SERVER, self._windows[Role.CLIENT], want, f.digests
        )
        return nxt

    def _on_chunk(self, f: Chunk, sender: Role, nxt: State, err: type[FluxError]) -> State:
        t = self.transfer
        assert t is not None
        i = f.index
        if i >= t.nchunks or t.marks[i] != _OPEN:
            raise err(f"chunk {i} is not expected (out of range, unwanted or repeated)")
        if len(f.data) != t.chunk_length(i):
            raise err(f"chunk {i} is {len(f.data)} bytes, expected {t.chunk_length(i)}")
        if not t.can_send:
            raise err(f"chunk {i} exceeds the window of {t.window_chunks} chunks")
        if t.digests is not None and f.digest != digest_at(t.digests, i):
            raise err(f"chunk {i} digest differs from the one announced in META")
        if sender is not self.role and chunk_digest(f.data) != f.digest:
            raise IntegrityError(f"chunk {i} does not match its digest")
        t.marks[i] = _IN_FLIGHT
        t.inflight += 1
        return nxt

    def _on_ack(self, f: Ack, sender: Role, nxt: State, err: type[FluxError]) -> State:
        t = self.transfer
        assert t is not None
        for start, cnt in f.ranges:  # check all ranges before changing anything
            if start + cnt > t.nchunks or t.marks[start : start + cnt] != bytes([_IN_FLIGHT]) * cnt:
                raise err(f"ACK of chunks {start}..{start + cnt - 1} that are not in flight")
        for start, cnt in f.ranges:
            t.marks[start : start + cnt] = bytes([_DONE]) * cnt
            t.inflight -= cnt
            t.acked += cnt
        if t.sender is Role.SERVER and t.complete:
            return State.IDLE
        return nxt

    def _on_commit(self, f: Frame, sender: Role, nxt: State, err: type[FluxError]) -> State:
        t = self.transfer
        assert t is not None
        if t.inflight:
            raise err(f"COMMIT with {t.inflight} chunks not yet acknowledged")
        return nxt


_Hook = Callable[[Connection, Any, Role, State, type[FluxError]], State]
_HOOKS: dict[FrameType, _Hook] = {
    FrameType.HELLO: Connection._on_hello,
    FrameType.WELCOME: Connection._on_welcome,
    FrameType.OPEN_UPLOAD: Connection._on_open,
    FrameType.OPEN_DOWNLOAD: Connection._on_open,
    FrameType.STATUS: Connection._on_status,
    FrameType.META: Connection._on_meta,
    FrameType.CHUNK: Connection._on_chunk,
    FrameType.ACK: Connection._on_ack,
    FrameType.COMMIT: Connection._on_commit,
}
