"""Which streams of a multi-stream transport (QUIC) carry which flux frames, both ways.

- The control stream, the client's first bidirectional stream, carries every frame but CHUNK.
- CHUNK frames travel on unidirectional *data streams* opened by whoever sends chunks (the
  client during uploads, the server during downloads), `DATA_STREAMS` of them, reused for the
  life of the connection and filled round-robin, so one lost packet does not stall every chunk.

The receiver decodes each data stream with its own FrameReader and hands the chunks to
`Connection.receive_frame`: one state machine checks everything, as over a single byte stream.
A chunk that overtakes the frame opening its transfer (META on the control stream) waits here
until that frame lands. Stream numbers are RFC 9000's; opening one is the caller's business.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from .codec import FrameReader
from .connection import Connection
from .errors import RemoteProtocolError
from .frames import MAX_CHUNK, Chunk, Frame

DATA_STREAMS = 4
#: Chunks that may wait for their transfer to open before the peer is breaking the protocol.
MAX_WAITING_CHUNKS = 64
_UNIDIRECTIONAL = 0x2  # bit 1 of a QUIC stream ID (RFC 9000 section 2.1)


class StreamMap:
    """The stream mapping of one conversation, for `conn`.

    Args:
        conn: the conversation's state machine.
        is_client: which end this is (only the client opens the control stream).
        open_stream: returns the ID of a new stream (unidirectional if asked).
        alloc: buffers for the payloads of chunks received on data streams.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        is_client: bool,
        open_stream: Callable[[bool], int],
        alloc: Callable[[int], bytearray | memoryview] | None = None,
    ) -> None:
        self._conn, self._is_client, self._open, self._alloc = conn, is_client, open_stream, alloc
        self.control: int | None = None
        self._data_out: list[int] = []
        self._next_out = 0
        self._data_in: dict[int, FrameReader] = {}
        self._waiting: deque[Chunk] = deque()
        #: Their payload bytes: a peer may not park more than one window of them.
        self._waiting_bytes = 0

    # --- sending ----------------------------------------------------------------------------

    def stream_for(self, frame: Frame) -> int:
        """The stream `frame` goes on (opened if need be)."""
        if isinstance(frame, Chunk):
            if len(self._data_out) < DATA_STREAMS:
                self._data_out.append(self._open(True))
            stream = self._data_out[self._next_out % len(self._data_out)]
            self._next_out += 1
            return stream
        if self.control is None:
            # Only the client opens it; the server learns it from the first data it carries.
            self.control = self._open(False)
        return self.control

    # --- receiving --------------------------------------------------------------------------

    def receive(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Take bytes that arrived on `stream_id`: the control stream's go to `conn` (take its
        events as usual), data streams' chunks wait for `ready_chunks`.

        Raises:
            RemoteProtocolError: a stream the mapping has no use for, data before the
                handshake, a frame other than CHUNK on a data stream, or too many chunks
                waiting for their transfer.
        """
        if not stream_id & _UNIDIRECTIONAL:
            self._receive_control(stream_id, data, end_stream)
        elif self._conn.handshaking:  # chunks before HELLO: an unauthenticated peer's memory
            raise RemoteProtocolError(f"data on stream {stream_id} before the handshake")
        else:
            self._receive_chunks(stream_id, data)

    def ready_chunks(self) -> Iterator[Frame]:
        """The waiting chunks `conn` can take now, in arrival order, each checked by it (take
        the control stream's events first: they may open the transfer).

        Raises:
            RemoteProtocolError / IntegrityError: as `Connection.receive_frame`.
        """
        while self._waiting and self._conn.chunk_limit:
            chunk = self._waiting.popleft()
            self._waiting_bytes -= len(chunk.data)
            frame = self._conn.receive_frame(chunk)
            if frame is not None:
                yield frame

    def _receive_control(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self.control is None and not self._is_client:
            self.control = stream_id
        if stream_id != self.control:
            raise RemoteProtocolError(f"unexpected bidirectional stream {stream_id}")
        if data:
            self._conn.receive_data(data)
        if end_stream:
            self._conn.receive_data(b"")

    def _receive_chunks(self, stream_id: int, data: bytes) -> None:
        reader = self._data_in.get(stream_id)
        if reader is None:
            reader = self._data_in[stream_id] = FrameReader(
                max_chunk=MAX_CHUNK, alloc=self._alloc, max_header=self._conn.max_header
            )
        reader.feed(data)
        while (frame := reader.next_frame()) is not None:
            if not isinstance(frame, Chunk):
                raise RemoteProtocolError(f"{frame.TYPE.name} on data stream {stream_id}")
            self._waiting.append(frame)
            self._waiting_bytes += len(frame.data)
            if (
                len(self._waiting) > MAX_WAITING_CHUNKS
                or self._waiting_bytes > self._conn.receive_window + MAX_CHUNK
            ):
                raise RemoteProtocolError("too many chunks before their transfer opened")
