"""Fuzz invariant: any bytes give frames/events or RemoteProtocolError (IntegrityError for a chunk
that does not match its digest) and never any other exception, in the reader and in both roles
of a Connection."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from proto_strategies import fuzz_frame, mutated, mutated_frames
from proto_support import (
    NCHUNKS,
    REQ,
    RID,
    SAMPLES,
    ConnectionPair,
    chunk,
    commit,
    committed,
    drain_reader,
    drive,
    drive_request,
    feed_buffered,
    feed_bytewise,
    feed_split,
    feed_whole,
    raw_frame,
    sample_meta,
    status,
    upload,
)

from fluxproto import (
    Ack,
    Cancel,
    Commit,
    Connection,
    ConnectionClosed,
    Done,
    Entries,
    Error,
    Frame,
    FrameReader,
    FrameType,
    IntegrityError,
    ListDir,
    ProtocolError,
    RemoteProtocolError,
    RequestEnded,
    RequestState,
    Role,
    State,
    Symlink,
    decode,
    encode_bytes,
)
from fluxproto.codec import PREFIX_SIZE
from fluxproto.frames import FRAME_CLASSES
from tests.fuzzing import FUZZ, FUZZ_EXAMPLES

# Strategies that are costly to draw get fewer examples to stay inside the time budget.
FUZZ_SLOW = settings(FUZZ, max_examples=FUZZ_EXAMPLES // 2)

# --- structure-aware headers: real field names with values of every msgpack type ------------------

FIELD_NAMES = sorted(
    {f.name for cls in FRAME_CLASSES.values() for f in dataclasses.fields(cls)}
    | {"name", "kind", "size", "mtime_ns", "mode", "digest", "target", "entry", "entries"}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-2, 70000),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.sampled_from(["file", "dir", "link", "FLUX", ""]),
    st.integers(1, 3),  # rids the fuzzed connections have open
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=8,
)
headers = st.dictionaries(keys, values, max_size=6)
SAFE_TYPES = list(FrameType)


@st.composite
def structured_frames(draw: st.DrawFn, types: list[FrameType] = SAFE_TYPES) -> bytes:
    ftype = draw(st.sampled_from(types))
    payload = b""
    if ftype in (FrameType.CHUNK, FrameType.STATUS, FrameType.META):
        payload = draw(
            st.one_of(st.binary(max_size=64), st.integers(0, 4).map(lambda n: bytes(16 * n)))
        )
    return raw_frame(ftype, draw(headers), payload)


streams = st.one_of(
    st.binary(max_size=600),
    mutated_frames(),
    structured_frames(),
    st.lists(st.one_of(structured_frames(), fuzz_frame.map(encode_bytes)), max_size=4).map(
        b"".join
    ),
)


def check_reader(data: bytes, how: str, cuts: list[int]) -> list[Frame]:
    reader = FrameReader()
    try:
        if how == "whole":
            feed_whole(reader, data)
        elif how == "bytes":
            feed_bytewise(reader, data)
        elif how == "buffer":
            feed_buffered(reader, data, step=7)
        else:
            feed_split(reader, data, cuts)
    except RemoteProtocolError:
        event("reader: RemoteProtocolError")
        with pytest.raises(RemoteProtocolError):
            reader.feed(b"\x03")  # broken for good
    frames = drain_reader(reader)
    event(f"reader: {min(len(frames), 2)} frame(s)")
    for frame in frames:
        assert isinstance(frame, FRAME_CLASSES[frame.TYPE])
        reencoded = encode_bytes(frame)  # everything decoded is valid and re-encodes
        hlen = int.from_bytes(reencoded[1:5], "big")
        body = reencoded[PREFIX_SIZE:]
        assert decode(reencoded[0], body[:hlen], body[hlen:]) == frame
    return frames


HOW = st.sampled_from(["whole", "bytes", "buffer", "split"])
CUTS = st.lists(st.integers(0, 700), max_size=6)


@FUZZ
@given(data=st.binary(max_size=2000), how=HOW, cuts=CUTS)
def test_reader_random_bytes(data: bytes, how: str, cuts: list[int]) -> None:
    check_reader(data, how, cuts)


@FUZZ
@given(data=mutated_frames(), how=HOW, cuts=CUTS)
def test_reader_mutated_valid_frames(data: bytes, how: str, cuts: list[int]) -> None:
    check_reader(data, how, cuts)


@FUZZ_SLOW
@example(data=raw_frame(FrameType.LIST, {**REQ, "path": "a", "digests": 1}), how="whole", cuts=[])
@given(data=st.lists(structured_frames(), min_size=1, max_size=2).map(b"".join), how=HOW, cuts=CUTS)
def test_reader_structured_headers(data: bytes, how: str, cuts: list[int]) -> None:
    check_reader(data, how, cuts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(data=raw_frame(FrameType.INFO, {"rid": 1, "entry": {"name": "a", "kinf": "file"}}))
@given(
    data=st.lists(
        structured_frames([FrameType.INFO, FrameType.ENTRIES, FrameType.MADE]), min_size=1
    ).map(b"".join)
)
def test_reader_entry_frames(data: bytes) -> None:
    check_reader(data, "whole", [])


# --- connections ----------------------------------------------------------------------------------

R = RequestState

# (role of the fuzzed end, state its request RID is in, frames its peer could legitimately send
# there). NONE: a connection in OPEN with no request.
CONTEXTS: list[tuple[str, RequestState | State, list[Frame]]] = [
    ("server", State.START, [SAMPLES[FrameType.HELLO]]),
    (
        "server",
        R.NONE,
        [
            SAMPLES[t]
            for t in (
                FrameType.OPEN_UPLOAD,
                FrameType.OPEN_DOWNLOAD,
                FrameType.LIST,
                FrameType.MKDIR,
                FrameType.SYMLINK,
                FrameType.PING,
            )
        ]
        + [ListDir(RID, "dir", recursive=True, digests=True), Symlink(RID, "l", "t", mtime_ns=1)],
    ),
    (
        "server",
        R.UP_OPENING,
        [*(chunk(i) for i in range(NCHUNKS)), commit(sent=0), commit(sent=2), Cancel(RID)],
    ),
    (
        "server",
        R.UPLOADING,
        [*(chunk(i) for i in range(NCHUNKS)), commit(sent=1), Cancel(RID), SAMPLES[FrameType.PING]],
    ),
    ("server", R.DOWNLOADING, [Ack(RID, ((0, 1),)), Ack(RID, ((0, 3),)), Cancel(RID)]),
    ("server", R.DOWN_SHARING, [Ack(RID, ((0, 1),)), Ack(RID, ((0, 3),)), Cancel(RID)]),
    ("server", R.CANCELLING, [chunk(1), chunk(2), upload(2)]),
    ("client", State.HANDSHAKE, [SAMPLES[FrameType.WELCOME], SAMPLES[FrameType.ERROR]]),
    ("client", R.UP_OPENING, [status(), Error(404, "x", RID)]),
    ("client", R.UPLOADING, [Ack(RID, ((0, 1),)), Error(507, "full", RID)]),
    ("client", R.COMMITTING, [Ack(RID, ((0, 1),)), committed()]),
    ("client", R.DOWN_OPENING, [sample_meta(), sample_meta(count=0)]),
    ("client", R.DOWNLOADING, [chunk(i) for i in range(NCHUNKS)]),
    (
        "client",
        R.DOWN_SHARING,
        [*(chunk(i) for i in range(NCHUNKS)), Done(RID), Error(422, "x", RID)],
    ),
    ("client", R.LISTING, [SAMPLES[FrameType.ENTRIES], Entries(RID, done=True)]),
    ("client", R.STATING, [SAMPLES[FrameType.INFO], Error(404, "x", RID)]),
    ("client", R.CANCELLING, [status(), committed(), Error(499, "cancelled", RID)]),
]


def fuzzed_end(ctx: int) -> Connection:
    role, state, _ = CONTEXTS[ctx]
    if isinstance(state, State):
        pair = drive(ConnectionPair(), state)
    else:
        pair = drive_request(ConnectionPair(), state)
    conn = pair.server if role == "server" else pair.client
    if state in (R.DOWNLOADING, R.DOWN_SHARING) and role == "server":
        pair.s2c(chunk(0))  # chunk 0 in flight, so ACKs can apply
    elif state is R.UPLOADING and role == "client":
        pair.c2s(chunk(0))
    return conn


@st.composite
def connection_inputs(draw: st.DrawFn) -> tuple[int, bytes]:
    ctx = draw(st.integers(0, len(CONTEXTS) - 1))
    context_frames = st.sampled_from(CONTEXTS[ctx][2])
    seeds = st.lists(st.one_of(context_frames, context_frames, fuzz_frame), min_size=1, max_size=4)
    frames = seeds.map(lambda fs: b"".join(encode_bytes(f) for f in fs))
    data = draw(st.one_of(frames, frames.flatmap(mutated), streams))
    return ctx, data


ALLOWED = (RemoteProtocolError, IntegrityError)


def exercise(conn: Connection, data: bytes, how: str, eof: bool) -> list[Any]:
    events: list[Any] = []
    try:
        if how == "buffer":
            feed_buffered(conn, data, step=11)
        elif how == "bytes":
            for i in range(len(data)):
                conn.receive_data(data[i : i + 1])
        elif data:
            conn.receive_data(data)
        if eof:
            conn.receive_data(b"")
        while (ev := conn.next_event()) is not None:
            assert isinstance(ev, Frame | RequestEnded | ConnectionClosed)
            events.append(ev)
            assert len(events) < 1000
    except ALLOWED as exc:
        event(f"connection: {type(exc).__name__} after {min(len(events), 2)} event(s)")
        assert isinstance(exc, ProtocolError) != isinstance(exc, IntegrityError)
        assert conn.state is State.ERROR
        # The error is sticky: the connection never produces events again.
        conn.receive_data(b"\x03\x00\x00\x00\x01\x00\x00\x00\x00\x80")
        with pytest.raises(ALLOWED):
            conn.next_event()
        conn.get_buffer()  # input after an error is swallowed, never raises
        return events
    event(f"connection: {min(len(events), 2)} event(s), no error")
    if eof:
        assert isinstance(events[-1], ConnectionClosed)
        assert conn.state is State.CLOSED
    return events


@FUZZ_SLOW
@given(
    inp=connection_inputs(), how=st.sampled_from(["whole", "bytes", "buffer"]), eof=st.booleans()
)
def test_connection_fuzz(inp: tuple[int, bytes], how: str, eof: bool) -> None:
    ctx, data = inp
    exercise(fuzzed_end(ctx), data, how, eof)


@FUZZ_SLOW
@given(data=streams, role=st.sampled_from(["client", "server"]), eof=st.booleans())
def test_fresh_connection_fuzz(data: bytes, role: str, eof: bool) -> None:
    conn = Connection(Role.CLIENT if role == "client" else Role.SERVER)
    exercise(conn, data, "whole", eof)


@FUZZ_SLOW
@given(ctx=st.integers(0, len(CONTEXTS) - 1), frames=st.lists(fuzz_frame, max_size=4))
def test_connection_fuzz_with_frames_from_other_streams(ctx: int, frames: list[Frame]) -> None:
    """Valid frames of any type and rid, as a QUIC stream's reader would hand them over:
    events or RemoteProtocolError/IntegrityError, nothing else."""
    conn = fuzzed_end(ctx)
    try:
        for frame in frames:
            conn.receive_frame(frame)
            while (ev := conn.next_event()) is not None:
                assert isinstance(ev, Frame | RequestEnded | ConnectionClosed)
    except ALLOWED:
        event("receive_frame: refused")
        assert conn.state is State.ERROR
        return
    event("receive_frame: accepted")


# Seeds that end the request (or the connection) deliver a RequestEnded after them, or are
# dropped when they cross the CANCEL; the rest come out as themselves.
CROSSING_DROPPED = {(R.CANCELLING, FrameType.STATUS), (R.CANCELLING, FrameType.CHUNK)}


def test_fuzz_contexts_are_live() -> None:
    """Each context's seed frames are accepted as they are, so mutations start from valid input."""
    for ctx, (_, state, frames) in enumerate(CONTEXTS):
        for frame in frames:
            if isinstance(frame, Ack) and frame.ranges != ((0, 1),):
                continue  # only chunk 0 is in flight; the wider ACK is there for mutations
            conn = fuzzed_end(ctx)
            conn.receive_data(encode_bytes(frame))
            events = []
            while (ev := conn.next_event()) is not None:
                events.append(ev)
            if (state, frame.TYPE) in CROSSING_DROPPED:
                assert events == [], (state, frame)
            elif isinstance(frame, Commit) and frame.sent:  # waits for its chunks
                assert events == [], (state, frame)
                assert conn.requests[RID].commit == frame
            else:
                assert events[:1] == [frame], (state, frame)
                assert all(isinstance(e, RequestEnded) for e in events[1:]), (state, frame)


def test_random_msgpack_values_never_crash_decode() -> None:
    """A smoke check over every type with a few odd but valid msgpack headers."""
    odd: list[Any] = [{}, {"": None}, {"path": ""}, {"path": None}, {"ranges": [[]]}]
    for ftype in SAFE_TYPES:
        for header in odd:
            try:
                frame = decode(ftype, msgpack.packb(header))
            except RemoteProtocolError as exc:
                assert exc.message
            else:
                assert type(frame) is FRAME_CLASSES[ftype]
