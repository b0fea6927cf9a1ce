"""Which QUIC stream carries which flux frame (version 2, PROTOCOL.md section 6), both ways.

- The *connection stream*, the client's first bidirectional stream, carries the frames without
  a rid: HELLO, WELCOME, PING, PONG, GOODBYE and ERROR without rid.
- Each request has a *request stream*: a new bidirectional stream the client opens with the
  request's opening frame. Every frame of the request travels on it, both ways, and each end
  finishes its side when the request ends for it. A frame there whose rid is not the stream's
  request is a protocol error.
- *Chunk streams*: the sender of chunks also spreads the CHUNK frames of large transfers
  (CHUNK_STREAM_MIN chunks or more) over up to CHUNK_STREAMS unidirectional streams it opens,
  round-robin, so one lost packet does not stall a whole file; a small file's chunk stays on
  its request stream. A chunk whose request is not open yet at the receiver waits here, within
  the receiver's connection window (more is a protocol error).

Sans-IO: `StreamMap` decides and checks; the transport hands it received stream data and gives
it two callbacks, one that names a new stream and one that queues bytes on a stream. Every
frame goes through the one `Connection`, which checks it as if it had arrived on a single
byte stream at the point where it is processed (`receive_frame`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .codec import Buffer, FrameReader
from .connection import Connection
from .errors import RemoteProtocolError
from .frames import MAX_CHUNK, Chunk, Frame, rid_of
from .request import RequestEnded
from .state import OPENING, Role, State

#: Unidirectional streams a sender of chunks opens at most, kept for the connection's life.
CHUNK_STREAMS = 4
#: A transfer with at least this many chunks puts them on chunk streams.
CHUNK_STREAM_MIN = 2

_UNIDIRECTIONAL = 0x2  # bit 1 of a QUIC stream ID (RFC 9000 section 2.1)
_SERVER_INITIATED = 0x1  # bit 0

OpenStream = Callable[[bool], int]
Write = Callable[[int, Buffer, bool], None]


def is_chunk_stream(stream_id: int) -> bool:
    """Whether `stream_id` is a chunk stream. Each carries whole CHUNK frames and nothing else,
    so data that arrived on several of them may be handed to `StreamMap.receive` stream by
    stream, as QUIC may deliver it anyway; only their order against other streams counts."""
    return bool(stream_id & _UNIDIRECTIONAL)


class _RequestStream:
    """One request stream: its reader, its rid once known, and who has finished it."""

    __slots__ = ("peer_done", "reader", "rid", "we_done")

    def __init__(self, reader: FrameReader, rid: int | None) -> None:
        self.reader, self.rid = reader, rid
        self.we_done = self.peer_done = False


class StreamMap:
    """The stream mapping of one conversation, for `conn`.

    Args:
        conn: the conversation's state machine (its role says which end this is).
        open_stream: returns the ID of a new stream of this end (unidirectional if asked).
        write: queues bytes on a stream, finishing this end's side of it if asked.
        alloc: buffers for received CHUNK payloads.
        on_freed: called when a request stops counting toward the server's limit at the
            client after it ended (the server finished its stream, PROTOCOL.md 15.32).

    Attributes:
        control: the connection stream, once known.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        open_stream: OpenStream,
        write: Write,
        alloc: Callable[[int], bytearray | memoryview] | None = None,
        on_freed: Callable[[], None] = lambda: None,
    ) -> None:
        self._conn, self._open, self._write, self._alloc = conn, open_stream, write, alloc
        self._on_freed = on_freed
        self._client = conn.role is Role.CLIENT
        self.control: int | None = None
        self._control_in = FrameReader(max_chunk=0, max_header=conn.max_header)
        self._by_rid: dict[int, int] = {}  # rid -> its request stream
        self._streams: dict[int, _RequestStream] = {}
        self._held: set[int] = set()  # ended at the client, the server's side still open
        self._chunk_out: list[int] = []
        self._turn = 0
        self._chunk_in: dict[int, FrameReader] = {}
        self._waiting: dict[int, deque[Chunk]] = {}  # rid -> chunks before their request
        self._waiting_bytes = 0

    @property
    def requests_in_use(self) -> int:
        """Requests that count toward the server's `requests` limit at this end: the open ones,
        and at the client those whose stream the server has not finished yet."""
        return len(self._conn.requests) + len(self._held)

    @property
    def waiting_chunks(self) -> int:
        """Chunks received before their request opened, not yet handed to the connection."""
        return sum(len(q) for q in self._waiting.values())

    # --- sending --------------------------------------------------------------------------------

    def send(self, frame: Frame) -> RequestEnded | None:
        """Check `frame` with the connection and queue its bytes on the stream it belongs on.

        Returns what `Connection.send` returns (the request this frame ended, if any); that
        request's stream is finished on this side.

        Raises:
            LocalProtocolError: the connection refused the frame (nothing was queued).
        """
        ended = self._conn.send(frame)
        stream = self._stream_for(frame)
        for buf in self._conn.data_to_send():
            self._write(stream, buf, False)
        if ended is not None:
            self._ended(ended.rid)
        return ended

    def _stream_for(self, frame: Frame) -> int:
        rid = rid_of(frame)
        if rid is None:
            if self.control is None:  # only the client opens it; a server learns it
                self.control = self._open(False)
            return self.control
        if isinstance(frame, Chunk) and self._spreads(rid):
            if len(self._chunk_out) < CHUNK_STREAMS:
                self._chunk_out.append(self._open(True))
            self._turn = (self._turn + 1) % len(self._chunk_out)
            return self._chunk_out[self._turn]
        stream = self._by_rid.get(rid)
        if stream is None:  # the client's opening frame: its request gets a new stream
            assert self._client and frame.TYPE in OPENING, "the connection allowed it"
            stream = self._open(False)
            self._by_rid[rid] = stream
            self._streams[stream] = _RequestStream(self._reader(), rid)
        return stream

    def _spreads(self, rid: int) -> bool:
        req = self._conn.requests.get(rid)
        t = req.transfer if req is not None else None
        return t is not None and t.nchunks >= CHUNK_STREAM_MIN

    def _ended(self, rid: int) -> None:
        """Request `rid` ended at this end: finish our side of its stream."""
        stream = self._by_rid.get(rid)
        if stream is None:
            return
        state = self._streams[stream]
        if not state.we_done:
            state.we_done = True
            self._write(stream, b"", True)
            if self._client and not state.peer_done:
                self._held.add(rid)  # counts toward the limit until the server finishes
        self._forget_if_done(stream)

    # --- receiving ------------------------------------------------------------------------------

    def receive(self, stream_id: int, data: Buffer, end_stream: bool) -> None:
        """Take bytes that arrived on `stream_id`. The frames go to the connection (take its
        events with `Connection.next_event` afterwards, as for any received data); chunks whose
        request is not open yet wait until it is.

        Raises:
            RemoteProtocolError / IntegrityError: a stream this end has no use for, data before
                the handshake, a frame on the wrong stream or for another request, a stream
                finished while its request is open, too many waiting chunks, or whatever the
                connection refuses.
        """
        if is_chunk_stream(stream_id):
            self._receive_chunks(stream_id, data)
        elif stream_id == self.control or (self.control is None and not self._client):
            self._receive_control(stream_id, data, end_stream)
        else:
            self._receive_request(stream_id, data, end_stream)
        self._ended_by_events()

    def _receive_control(self, stream_id: int, data: Buffer, end_stream: bool) -> None:
        self.control = stream_id
        if data:
            self._control_in.feed(data)
            while (frame := self._control_in.next_frame()) is not None:
                if rid_of(frame) is not None:
                    raise RemoteProtocolError(f"{frame.TYPE.name} on the connection stream")
                self._conn.receive_frame(frame)
        if end_stream:
            self._conn.receive_data(b"")

    def _receive_request(self, stream_id: int, data: Buffer, end_stream: bool) -> None:
        state = self._streams.get(stream_id)
        if state is None:
            if self._client or bool(stream_id & _SERVER_INITIATED):
                raise RemoteProtocolError(f"unexpected bidirectional stream {stream_id}")
            if self._conn.handshaking:
                raise RemoteProtocolError(f"request stream {stream_id} before the handshake")
            state = self._streams[stream_id] = _RequestStream(self._reader(), None)
        view = memoryview(data)
        while view:
            used = state.reader.feed(view, one=True)
            view = view[used:]
            while (frame := state.reader.next_frame()) is not None:
                self._request_frame(stream_id, state, frame)
        if end_stream:
            self._peer_finished(stream_id, state)

    def _request_frame(self, stream_id: int, state: _RequestStream, frame: Frame) -> None:
        rid = rid_of(frame)
        if state.rid is None:  # the server's first frame of a new stream opens its request
            if rid is None or frame.TYPE not in OPENING:
                raise RemoteProtocolError(f"{frame.TYPE.name} opens request stream {stream_id}")
            if rid in self._conn.requests:
                raise RemoteProtocolError(f"request {rid} is already open on another stream")
            state.rid = rid
            self._by_rid[rid] = stream_id  # a reused rid's old stream keeps its own state
        elif rid != state.rid:
            raise RemoteProtocolError(
                f"{frame.TYPE.name} for request {rid} on the stream of request {state.rid}"
            )
        self._conn.receive_frame(frame)
        # One frame at a time: the next CHUNK prefix is checked against what this one allowed.
        state.reader.max_chunk = self._conn.chunk_limit(state.rid)
        self._release_waiting()

    def _peer_finished(self, stream_id: int, state: _RequestStream) -> None:
        if state.rid is not None and state.rid in self._conn.requests:
            raise RemoteProtocolError(
                f"stream {stream_id} finished while request {state.rid} is open"
            )
        state.peer_done = True
        if state.rid in self._held:
            self._held.discard(state.rid)
            self._on_freed()
        self._forget_if_done(stream_id)

    def _receive_chunks(self, stream_id: int, data: Buffer) -> None:
        if bool(stream_id & _SERVER_INITIATED) != self._client:
            raise RemoteProtocolError(f"data on our own unidirectional stream {stream_id}")
        if self._conn.handshaking:  # an unauthenticated peer may not make us buffer chunks
            raise RemoteProtocolError(f"data on stream {stream_id} before the handshake")
        reader = self._chunk_in.get(stream_id)
        if reader is None:
            reader = self._chunk_in[stream_id] = FrameReader(
                max_chunk=MAX_CHUNK, alloc=self._alloc, max_header=self._conn.max_header
            )
        reader.feed(data)
        while (frame := reader.next_frame()) is not None:
            if not isinstance(frame, Chunk):
                raise RemoteProtocolError(f"{frame.TYPE.name} on chunk stream {stream_id}")
            self._chunk_arrived(frame)

    def _chunk_arrived(self, chunk: Chunk) -> None:
        queue = self._waiting.get(chunk.rid)
        if queue is None and self._conn.chunk_limit(chunk.rid):
            self._conn.receive_frame(chunk)
            return
        if queue is None:
            queue = self._waiting[chunk.rid] = deque()
        queue.append(chunk)
        before = self._waiting_bytes
        self._waiting_bytes += len(chunk.data)
        # As the window itself: one chunk of any size may be in flight when nothing else is.
        if before and self._waiting_bytes > self._conn.receive_window:
            raise RemoteProtocolError(
                f"{self._waiting_bytes} bytes of chunks wait for requests that are not open; "
                f"the window is {self._conn.receive_window}"
            )

    def _release_waiting(self) -> None:
        """Hand the connection the waiting chunks whose request is now open, in arrival order."""
        for rid in [r for r in self._waiting if self._conn.chunk_limit(r)]:
            queue = self._waiting.pop(rid)
            for chunk in queue:
                self._waiting_bytes -= len(chunk.data)
            for chunk in queue:
                self._conn.receive_frame(chunk)

    def _ended_by_events(self) -> None:
        """Finish the streams of requests that ended by what was received. The connection
        reports those ends as events only."""
        if self._conn.state is not State.OPEN:
            return  # the connection is over: the transport closes every stream with it
        for rid in [r for r in self._by_rid if r not in self._conn.requests]:
            state = self._streams.get(self._by_rid[rid])
            if state is not None and not state.we_done:
                self._ended(rid)

    # --- bookkeeping ----------------------------------------------------------------------------

    def _reader(self) -> FrameReader:
        return FrameReader(max_chunk=0, alloc=self._alloc, max_header=self._conn.max_header)

    def _forget_if_done(self, stream_id: int) -> None:
        state = self._streams[stream_id]
        if state.we_done and state.peer_done:
            del self._streams[stream_id]
            if state.rid is not None and self._by_rid.get(state.rid) == stream_id:
                del self._by_rid[state.rid]
