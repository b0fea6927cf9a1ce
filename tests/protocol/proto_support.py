"""Shared helpers for the fluxproto tests: raw frame builders and feeders, a sample file with one
valid frame of each type, and `ConnectionPair`, which shuttles bytes between an in-memory
client and server and drives them to any connection or request state."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import pytest

from fluxproto import (
    Ack,
    Cancel,
    Chunk,
    Commit,
    Committed,
    Connection,
    Delete,
    Deleted,
    Done,
    Entries,
    Entry,
    Error,
    Event,
    Frame,
    FrameReader,
    FrameType,
    Goodbye,
    Hello,
    Info,
    ListDir,
    LocalProtocolError,
    Made,
    Meta,
    Mkdir,
    OpenDownload,
    OpenUpload,
    Ping,
    Pong,
    RemoteProtocolError,
    RequestEnded,
    RequestState,
    Role,
    Stat,
    State,
    Status,
    Symlink,
    Welcome,
    chunk_digest,
    encode_bytes,
)
from fluxproto.codec import PREFIX

# --- raw wire helpers -----------------------------------------------------------------------------


def prefix(ftype: int, header_len: int, payload_len: int = 0) -> bytes:
    """The 9-byte frame prefix: type u8, header length u32be, payload length u32be."""
    return PREFIX.pack(ftype, header_len, payload_len)


def raw_frame(ftype: int, header: Any, payload: bytes = b"", **packb: Any) -> bytes:
    """A frame built by hand, bypassing frame validation. `header` may be pre-packed bytes."""
    if not isinstance(header, bytes):
        header = msgpack.packb(header, use_bin_type=True, **packb)
    return prefix(ftype, len(header), len(payload)) + header + payload


D16 = bytes(16)
REQ = {"rid": 1}  # the rid every request frame needs


def decoded(ftype: int, header: Any, payload: bytes = b"", **packb: Any) -> Any:
    """Decode a hand-built frame through a FrameReader; returns the frame or raises."""
    reader = FrameReader()
    reader.feed(raw_frame(ftype, header, payload, **packb))
    frame = reader.next_frame()
    assert frame is not None
    assert reader.next_frame() is None
    return frame


def rejected(ftype: int, header: Any, payload: bytes = b"", match: str | None = None) -> None:
    """A hand-built frame the decoder refuses."""
    with pytest.raises(RemoteProtocolError, match=match):
        decoded(ftype, header, payload)


def drain_reader(reader: FrameReader) -> list[Frame]:
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    return out


def feed_whole(reader: FrameReader, data: bytes) -> None:
    reader.feed(data)


def feed_bytewise(reader: FrameReader, data: bytes) -> None:
    for i in range(len(data)):
        reader.feed(data[i : i + 1])


def feed_split(reader: FrameReader, data: bytes, cuts: Iterable[int]) -> None:
    """Feed `data` in pieces cut at the given offsets (any order, duplicates allowed)."""
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}):
        reader.feed(data[start:cut])
        start = cut
    reader.feed(data[start:])


def feed_buffered(reader: FrameReader | Connection, data: bytes, step: int = 1 << 30) -> None:
    """Feed through get_buffer()/buffer_updated() like an asyncio BufferedProtocol would."""
    view = memoryview(data)
    while view:
        buf = reader.get_buffer()
        n = min(len(buf), len(view), step)
        buf[:n] = view[:n]
        view = view[n:]
        reader.buffer_updated(n)


# PROTOCOL.md 16.1: the HELLO a version-1 fluxctl sends.
V1_HELLO = bytes.fromhex(
    "01000000430000000086a876657273696f6e739101a46361707391a8787868332d313238a677696e646f77"
    "ce00010000a56167656e74a3742f31a5746f6b656ec0a56d61676963a4464c5558"
)

# --- the sample file and one frame of each type ---------------------------------------------------

CS = 4096  # chunk size of the sample file (MIN_CHUNK)
FILE = random.Random(1).randbytes(2 * CS + 100)  # three chunks, the last one short
NCHUNKS = 3
PIECES = [FILE[i * CS : (i + 1) * CS] for i in range(NCHUNKS)]
DIGESTS = [chunk_digest(p) for p in PIECES]
FILE_DIGEST = chunk_digest(FILE)  # xxh3-128 of the whole file, same function
WINDOW = 2 * CS  # both sides take two chunks in flight (per transfer and in all)
PATH = "dir/file.bin"
RID = 1
TID = bytes(range(16))


def chunk(i: int, rid: int = RID) -> Chunk:
    """Chunk `i` of the sample file, correct length and digest."""
    return Chunk(rid, i, DIGESTS[i], PIECES[i])


def upload(rid: int = RID, **kw: Any) -> OpenUpload:
    return OpenUpload(rid, PATH, len(FILE), CS, **kw)


def status(rid: int = RID, held: Any = (), digests: bytes = b"", tid: bytes = TID) -> Status:
    return Status(rid, tid, held, digests)


def commit(rid: int = RID, sent: int = 0) -> Commit:
    return Commit(rid, FILE_DIGEST, sent)


def committed(rid: int = RID) -> Committed:
    return Committed(rid, len(FILE), FILE_DIGEST)


def download(rid: int = RID, **kw: Any) -> OpenDownload:
    return OpenDownload(rid, PATH, **{"chunk_size": CS, **kw})


def sample_meta(count: int = NCHUNKS, rid: int = RID, **kw: Any) -> Meta:
    return Meta(rid, TID, len(FILE), CS, FILE_DIGEST, count, digests=b"".join(DIGESTS), **kw)


FILE_ENTRY = Entry("file.bin", "file", len(FILE), digest=FILE_DIGEST)

#: One valid frame of each type (request frames with rid RID; ERROR without rid).
SAMPLES: dict[FrameType, Frame] = {
    FrameType.HELLO: Hello(window=WINDOW),
    FrameType.WELCOME: Welcome(window=WINDOW),
    FrameType.PING: Ping(1),
    FrameType.PONG: Pong(1),
    FrameType.GOODBYE: Goodbye("done"),
    FrameType.ERROR: Error(500, "boom"),
    FrameType.CANCEL: Cancel(RID),
    FrameType.OPEN_UPLOAD: upload(),
    FrameType.STATUS: status(),
    FrameType.CHUNK: chunk(0),
    FrameType.ACK: Ack(RID, ((0, 1),)),
    FrameType.COMMIT: commit(),
    FrameType.COMMITTED: committed(),
    FrameType.OPEN_DOWNLOAD: download(),
    FrameType.META: sample_meta(),
    FrameType.DONE: Done(RID),
    FrameType.LIST: ListDir(RID, "dir"),
    FrameType.ENTRIES: Entries(RID, (FILE_ENTRY,), done=False),
    FrameType.STAT: Stat(RID, PATH),
    FrameType.INFO: Info(RID, FILE_ENTRY),
    FrameType.DELETE: Delete(RID, PATH),
    FrameType.DELETED: Deleted(RID, PATH, 1),
    FrameType.MKDIR: Mkdir(RID, "dir"),
    FrameType.SYMLINK: Symlink(RID, "link", "file.bin"),
    FrameType.MADE: Made(RID, Entry("dir", "dir", mode=0o755)),
}

#: The same with ERROR carrying the rid: a sample of every frame a request can see.
REQUEST_SAMPLES: dict[FrameType, Frame] = {**SAMPLES, FrameType.ERROR: Error(404, "gone", RID)}

# --- connections ----------------------------------------------------------------------------------


def drain(conn: Connection) -> list[Event]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


Feeder = Callable[[Connection, bytes], None]


def feed_conn_whole(conn: Connection, data: bytes) -> None:
    if data:
        conn.receive_data(data)


def feed_conn_bytewise(conn: Connection, data: bytes) -> None:
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])


def feed_conn_buffered(conn: Connection, data: bytes) -> None:
    feed_buffered(conn, data, step=1000)


FEEDERS = pytest.mark.parametrize(
    "feeder",
    [feed_conn_whole, feed_conn_bytewise, feed_conn_buffered],
    ids=["whole", "bytewise", "buffered"],
)


class ConnectionPair:
    """A client and a server `Connection` joined by an in-memory byte pipe.

    `send(side, frame)` queues the frame on `side`, moves every queued byte to the other side
    with `feeder`, and returns the events the other side produced. `client` and `server` are
    keyword arguments for each Connection (both take WINDOW by default).
    """

    def __init__(
        self,
        feeder: Feeder = feed_conn_whole,
        *,
        client: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
    ) -> None:
        self.client = Connection(Role.CLIENT, **{"window": WINDOW, **(client or {})})
        self.server = Connection(Role.SERVER, **{"window": WINDOW, **(server or {})})
        self.feeder = feeder

    def other(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def send(self, conn: Connection, frame: Frame) -> list[Event]:
        conn.send(frame)
        return self.flush(conn)

    def flush(self, conn: Connection) -> list[Event]:
        data = b"".join(bytes(b) for b in conn.data_to_send())
        peer = self.other(conn)
        self.feeder(peer, data)
        return drain(peer)

    def _one(self, conn: Connection, frame: Frame) -> list[Event]:
        events = self.send(conn, frame)
        assert events[:1] == [frame], events
        assert all(isinstance(e, RequestEnded) for e in events[1:]), events
        return events

    def c2s(self, frame: Frame) -> list[Event]:
        """Client sends `frame`; the server must receive it (then at most RequestEnded)."""
        return self._one(self.client, frame)

    def s2c(self, frame: Frame) -> list[Event]:
        """Server sends `frame`; the client must receive it (then at most RequestEnded)."""
        return self._one(self.server, frame)

    @property
    def states(self) -> tuple[State, State]:
        return self.client.state, self.server.state

    def rstates(self, rid: int = RID) -> tuple[RequestState, RequestState]:
        """Request `rid`'s state at the client and at the server (NONE: not open)."""
        return tuple(  # type: ignore[return-value]
            c.requests[rid].state if rid in c.requests else RequestState.NONE
            for c in (self.client, self.server)
        )

    def handshake(self) -> None:
        self.c2s(self.client.hello())
        self.s2c(self.server.welcome())
        assert self.states == (State.OPEN, State.OPEN)
        assert self.client.version == self.server.version == 2


def ends(pair: ConnectionPair, role: Role) -> tuple[Connection, Connection]:
    """(sender, receiver) for frames sent by `role`."""
    return (pair.client, pair.server) if role is Role.CLIENT else (pair.server, pair.client)


def refused_both_ways(
    pair: ConnectionPair, sender: Role | Connection, frame: Frame, match: str | None = None
) -> None:
    """`sender` (a role or one end of `pair`) may not send `frame` now: its send raises
    LocalProtocolError and queues nothing, and the peer, given the frame's bytes anyway, raises
    RemoteProtocolError and enters ERROR."""
    if isinstance(sender, Role):
        sender = pair.client if sender is Role.CLIENT else pair.server
    with pytest.raises(LocalProtocolError, match=match):
        sender.send(frame)
    assert sender.data_to_send() == []
    receiver = pair.other(sender)
    receiver.receive_data(encode_bytes(frame))
    with pytest.raises(RemoteProtocolError, match=match):
        receiver.next_event()
    assert receiver.state is State.ERROR


def drive(pair: ConnectionPair, state: State) -> ConnectionPair:
    """Bring both ends of `pair` to connection `state` (any state but ERROR)."""
    if state is not State.START:
        pair.c2s(pair.client.hello())
    if state not in (State.START, State.HANDSHAKE):
        pair.s2c(pair.server.welcome())
    if state is State.CLOSED:
        pair.c2s(Goodbye())
    assert pair.states == (state, state)
    return pair


R = RequestState

#: How to bring request RID to each state: (who sends, frame) steps after the handshake.
REQUEST_STEPS: dict[RequestState, list[tuple[str, Frame]]] = {
    R.NONE: [],
    R.UP_OPENING: [("c", upload())],
    R.UPLOADING: [("c", upload()), ("s", status())],
    # With chunk 0 in flight, so that ACK and COMMITTED have something to acknowledge.
    R.UP_COMMITTING_EARLY: [("c", upload()), ("c", chunk(0)), ("c", commit(sent=1))],
    R.COMMITTING: [("c", upload()), ("s", status()), ("c", chunk(0)), ("c", commit(sent=1))],
    R.DOWN_OPENING: [("c", download())],
    R.DOWNLOADING: [("c", download()), ("s", sample_meta())],
    R.DOWN_SHARING: [("c", download(share=True)), ("s", sample_meta(share=True))],
    R.LISTING: [("c", SAMPLES[FrameType.LIST])],
    R.STATING: [("c", SAMPLES[FrameType.STAT])],
    R.DELETING: [("c", SAMPLES[FrameType.DELETE])],
    R.MAKING: [("c", SAMPLES[FrameType.MKDIR])],
    R.CANCELLING: [("c", upload()), ("c", Cancel(RID))],
}


def drive_request(pair: ConnectionPair, state: RequestState) -> ConnectionPair:
    """Handshake, then bring request RID to `state` at both ends (NONE: open nothing)."""
    drive(pair, State.OPEN)
    for who, frame in REQUEST_STEPS[state]:
        (pair.c2s if who == "c" else pair.s2c)(frame)
    assert pair.rstates() == (state, state)
    return pair
