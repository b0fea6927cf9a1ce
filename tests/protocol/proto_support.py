"""Shared helpers for the fluxproto tests: raw frame builders, hypothesis strategies, feeders,
and `ConnectionPair`, which shuttles bytes between an in-memory client and server."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
from hypothesis import strategies as st

from fluxproto import (
    Ack,
    Chunk,
    Commit,
    Committed,
    Connection,
    Delete,
    Deleted,
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
    Listing,
    Meta,
    OpenDownload,
    OpenUpload,
    Ping,
    Pong,
    Role,
    Stat,
    State,
    Status,
    Welcome,
    chunk_digest,
    encode_bytes,
)
from fluxproto.codec import PREFIX
from fluxproto.frames import (
    DIGEST_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_FILE_SIZE,
    MAX_I64,
    MAX_MODE,
    MAX_U64,
    MAX_WINDOW,
    MIN_CHUNK,
    MIN_WINDOW,
)

# Example counts: enough to find shallow bugs, small enough for the < 30 s budget on 2 cores
# (`make fuzz` raises the fuzz count, see tests/fuzzing.py).
ROUNDTRIP_EXAMPLES = 200

# --- raw wire helpers ---------------------------------------------------------------------------


def prefix(ftype: int, header_len: int, payload_len: int = 0) -> bytes:
    """The 9-byte frame prefix: type u8, header length u32be, payload length u32be."""
    return PREFIX.pack(ftype, header_len, payload_len)


def raw_frame(ftype: int, header: Any, payload: bytes = b"", **packb: Any) -> bytes:
    """A frame built by hand, bypassing frame validation. `header` may be pre-packed bytes."""
    if not isinstance(header, bytes):
        header = msgpack.packb(header, use_bin_type=True, **packb)
    return prefix(ftype, len(header), len(payload)) + header + payload


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


# --- hypothesis strategies ----------------------------------------------------------------------

u64 = st.integers(0, MAX_U64)
digests16 = st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
modes = st.integers(0, MAX_MODE)
chunk_sizes = st.one_of(
    st.sampled_from([MIN_CHUNK, 64 * 1024, 1 << 20, MAX_CHUNK]),
    st.integers(MIN_CHUNK, MAX_CHUNK),
)
windows = st.one_of(st.sampled_from([MIN_WINDOW, MAX_WINDOW]), st.integers(MIN_WINDOW, MAX_WINDOW))


def texts(max_bytes: int, *, min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    """Valid UTF-8 text (no lone surrogates) of at most `max_bytes` encoded bytes."""
    return st.text(st.characters(codec="utf-8"), min_size=min_size, max_size=max_size).filter(
        lambda s: len(s.encode()) <= max_bytes
    )


paths = texts(4096, min_size=1)


@st.composite
def canonical_ranges(
    draw: st.DrawFn,
    limit: int = MAX_CHUNKS,
    *,
    min_ranges: int = 0,
    max_ranges: int = 6,
    max_count: int = 12,
) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-adjacent (start, count) runs ending at or below `limit`."""
    n = draw(st.integers(min_ranges, max_ranges))
    out: list[tuple[int, int]] = []
    pos = 0
    gaps = st.one_of(st.integers(0, 4), st.integers(0, MAX_CHUNKS // 8))
    for _ in range(n):
        start = pos + draw(gaps) + (1 if out else 0)
        cnt = draw(st.integers(1, max_count))
        if start + cnt > limit:
            break
        out.append((start, cnt))
        pos = start + cnt
    if len(out) < min_ranges:
        out = [(0, 1)]  # every caller with min_ranges=1 has limit >= 1
    return tuple(out)


@st.composite
def small_geometry(draw: st.DrawFn, max_chunks: int = 6) -> tuple[int, int, int]:
    """(size, chunk_size, nchunks) with few chunks, so digest payloads stay small."""
    chunk_size = draw(chunk_sizes)
    n = draw(st.integers(0, max_chunks))
    size = 0 if n == 0 else draw(st.integers((n - 1) * chunk_size + 1, n * chunk_size))
    return size, chunk_size, n


@st.composite
def open_uploads(draw: st.DrawFn) -> OpenUpload:
    chunk_size = draw(chunk_sizes)
    size = draw(st.integers(0, min(MAX_FILE_SIZE, chunk_size * MAX_CHUNKS)))
    return OpenUpload(draw(paths), size, chunk_size, draw(modes))


@st.composite
def statuses(draw: st.DrawFn) -> Status:
    held = draw(canonical_ranges())
    n = sum(c for _, c in held)
    return Status(held, draw(st.binary(min_size=16 * n, max_size=16 * n)))


@st.composite
def metas(draw: st.DrawFn) -> Meta:
    size, chunk_size, n = draw(small_geometry())
    return Meta(
        size,
        chunk_size,
        draw(digests16),
        draw(st.integers(0, n)),
        draw(modes),
        draw(st.integers(0, MAX_I64)),
        draw(st.binary(min_size=16 * n, max_size=16 * n)),
    )


entries = st.builds(
    Entry,
    name=texts(1024, min_size=1),
    kind=st.sampled_from(["file", "dir"]),
    size=u64,
    mtime_ns=st.integers(0, MAX_I64),
    mode=modes,
    digest=st.none() | digests16,
)

FRAME_STRATEGIES: dict[FrameType, st.SearchStrategy[Frame]] = {
    FrameType.HELLO: st.builds(
        Hello,
        versions=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16).map(tuple),
        caps=st.lists(texts(64), max_size=8).map(tuple),
        window=windows,
        agent=texts(1024),
        token=st.none() | texts(8192),
    ),
    FrameType.WELCOME: st.builds(
        Welcome,
        version=st.integers(0, 0xFFFF),
        caps=st.lists(texts(64), max_size=8).map(tuple),
        window=windows,
        agent=texts(1024),
    ),
    FrameType.PING: st.builds(Ping, nonce=u64),
    FrameType.PONG: st.builds(Pong, nonce=u64),
    FrameType.GOODBYE: st.builds(Goodbye, reason=texts(1024)),
    FrameType.ERROR: st.builds(Error, code=st.integers(100, 999), message=texts(1024)),
    FrameType.OPEN_UPLOAD: open_uploads(),
    FrameType.STATUS: statuses(),
    FrameType.CHUNK: st.builds(
        Chunk,
        index=st.integers(0, MAX_CHUNKS - 1),
        digest=digests16,
        data=st.binary(max_size=300),
    ),
    FrameType.ACK: st.builds(Ack, ranges=canonical_ranges(min_ranges=1)),
    FrameType.COMMIT: st.builds(Commit, digest=digests16),
    FrameType.COMMITTED: st.builds(Committed, size=st.integers(0, MAX_FILE_SIZE), digest=digests16),
    FrameType.OPEN_DOWNLOAD: st.builds(
        OpenDownload,
        path=paths,
        want=st.none() | canonical_ranges(),
        digest=st.none() | digests16,
        chunk_size=chunk_sizes,
    ),
    FrameType.META: metas(),
    FrameType.LIST: st.builds(ListDir, path=paths, cursor=st.none() | texts(1024)),
    FrameType.LISTING: st.builds(
        Listing,
        entries=st.lists(entries, max_size=4).map(tuple),
        cursor=st.none() | texts(1024),
    ),
    FrameType.STAT: st.builds(Stat, path=paths),
    FrameType.INFO: st.builds(Info, entry=entries),
    FrameType.DELETE: st.builds(Delete, path=paths),
    FrameType.DELETED: st.builds(Deleted, path=paths),
}

any_frame: st.SearchStrategy[Frame] = st.one_of(*FRAME_STRATEGIES.values())

fuzz_frame: st.SearchStrategy[Frame] = any_frame


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one to four mutations: bit flips, byte sets, truncation, insertion, deletion,
    a rewritten type byte or length field (at a frame start found in the first prefix)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "len", "type"]))
        if not buf:
            buf += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[i : i + draw(st.integers(1, 16))]
        elif op == "type":
            buf[0] = draw(st.integers(0, 255))
        elif len(buf) >= 9:
            at = draw(st.sampled_from([1, 5]))  # header_len or payload_len of the first frame
            old = int.from_bytes(buf[at : at + 4], "big")
            new = draw(
                st.one_of(
                    st.integers(max(0, old - 16), old + 16),
                    st.integers(0, 0xFFFFFFFF),
                )
            )
            buf[at : at + 4] = min(new, 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(buf)


@st.composite
def mutated_frames(draw: st.DrawFn, corpus: st.SearchStrategy[Frame] = fuzz_frame) -> bytes:
    frames = draw(st.lists(corpus, min_size=1, max_size=3))
    return draw(mutated(b"".join(encode_bytes(f) for f in frames)))


# --- connection helpers -------------------------------------------------------------------------

CS = MIN_CHUNK  # chunk size of the sample file
FILE = random.Random(1).randbytes(2 * CS + 100)  # three chunks, the last one short
NCHUNKS = 3
PIECES = [FILE[i * CS : (i + 1) * CS] for i in range(NCHUNKS)]
DIGESTS = [chunk_digest(p) for p in PIECES]
FILE_DIGEST = chunk_digest(FILE)  # xxh3-128 of the whole file, same function
WINDOW = 2 * CS  # both sides announce room for two chunks
PATH = "dir/file.bin"


def chunk(i: int) -> Chunk:
    """Chunk `i` of the sample file, correct length and digest."""
    return Chunk(i, DIGESTS[i], PIECES[i])


def sample_meta(count: int = NCHUNKS, **kw: Any) -> Meta:
    return Meta(len(FILE), CS, FILE_DIGEST, count, digests=b"".join(DIGESTS), **kw)


#: One valid frame of each type, for state-table tests.
SAMPLES: dict[FrameType, Frame] = {
    FrameType.HELLO: Hello(window=WINDOW),
    FrameType.WELCOME: Welcome(window=WINDOW),
    FrameType.PING: Ping(1),
    FrameType.PONG: Pong(1),
    FrameType.GOODBYE: Goodbye("done"),
    FrameType.ERROR: Error(500, "boom"),
    FrameType.OPEN_UPLOAD: OpenUpload(PATH, len(FILE), CS),
    FrameType.STATUS: Status(),
    FrameType.CHUNK: chunk(0),
    FrameType.ACK: Ack(((0, 1),)),
    FrameType.COMMIT: Commit(FILE_DIGEST),
    FrameType.COMMITTED: Committed(len(FILE), FILE_DIGEST),
    FrameType.OPEN_DOWNLOAD: OpenDownload(PATH, chunk_size=CS),
    FrameType.META: sample_meta(),
    FrameType.LIST: ListDir("dir"),
    FrameType.LISTING: Listing((Entry("file.bin", "file", len(FILE)),)),
    FrameType.STAT: Stat(PATH),
    FrameType.INFO: Info(Entry("file.bin", "file", len(FILE))),
    FrameType.DELETE: Delete(PATH),
    FrameType.DELETED: Deleted(PATH),
}


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


class ConnectionPair:
    """A client and a server `Connection` joined by an in-memory byte pipe.

    `send(side, frame)` queues the frame on `side`, moves every queued byte to the other side
    with `feeder`, and returns the events the other side produced.
    """

    def __init__(self, feeder: Feeder = feed_conn_whole) -> None:
        self.client = Connection(Role.CLIENT)
        self.server = Connection(Role.SERVER)
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

    def c2s(self, frame: Frame) -> Frame:
        """Client sends `frame`; the server must receive exactly it."""
        events = self.send(self.client, frame)
        assert events == [frame]
        return frame

    def s2c(self, frame: Frame) -> Frame:
        events = self.send(self.server, frame)
        assert events == [frame]
        return frame

    @property
    def states(self) -> tuple[State, State]:
        return self.client.state, self.server.state

    def handshake(self, client_window: int = WINDOW, server_window: int = WINDOW) -> None:
        self.c2s(Hello(window=client_window))
        self.s2c(Welcome(window=server_window))
        assert self.states == (State.IDLE, State.IDLE)
        assert self.client.version == self.server.version == 1


def drive(pair: ConnectionPair, state: State) -> ConnectionPair:
    """Bring both ends of `pair` to `state` (any state but ERROR) with the sample file."""
    if state is State.START:
        return pair
    if state is State.HANDSHAKE:
        pair.c2s(SAMPLES[FrameType.HELLO])
        return pair
    pair.handshake()
    steps: dict[State, list[tuple[str, Frame]]] = {
        State.IDLE: [],
        State.UPLOAD_OPENING: [("c", SAMPLES[FrameType.OPEN_UPLOAD])],
        State.UPLOADING: [("c", SAMPLES[FrameType.OPEN_UPLOAD]), ("s", Status())],
        State.COMMITTING: [
            ("c", SAMPLES[FrameType.OPEN_UPLOAD]),
            ("s", Status()),
            ("c", Commit(FILE_DIGEST)),
        ],
        State.DOWNLOAD_OPENING: [("c", SAMPLES[FrameType.OPEN_DOWNLOAD])],
        State.DOWNLOADING: [("c", SAMPLES[FrameType.OPEN_DOWNLOAD]), ("s", sample_meta())],
        State.LISTING: [("c", SAMPLES[FrameType.LIST])],
        State.STATING: [("c", SAMPLES[FrameType.STAT])],
        State.DELETING: [("c", SAMPLES[FrameType.DELETE])],
        State.CLOSED: [("c", Goodbye())],
    }
    for who, frame in steps[state]:
        (pair.c2s if who == "c" else pair.s2c)(frame)
    assert pair.states == (state, state)
    return pair
