"""The connection state machine, driven through a ConnectionPair: handshake, uploads, downloads,
requests, control frames, windows, chunk bookkeeping, errors and EOF."""

from __future__ import annotations

from typing import Any

import pytest
from proto_support import (
    CS,
    DIGESTS,
    FILE,
    FILE_DIGEST,
    NCHUNKS,
    PATH,
    PIECES,
    SAMPLES,
    WINDOW,
    ConnectionPair,
    chunk,
    drive,
    feed_conn_buffered,
    feed_conn_bytewise,
    feed_conn_whole,
    prefix,
    sample_meta,
)

from fluxproto import (
    Ack,
    Chunk,
    Commit,
    Committed,
    Connection,
    ConnectionClosed,
    Deleted,
    Entry,
    Error,
    Frame,
    FrameType,
    Goodbye,
    Hello,
    Info,
    IntegrityError,
    ListDir,
    Listing,
    LocalProtocolError,
    Meta,
    OpenDownload,
    OpenUpload,
    Ping,
    Pong,
    ProtocolError,
    RemoteProtocolError,
    Role,
    Stat,
    State,
    Status,
    VersionMismatch,
    Welcome,
    chunk_digest,
    encode_bytes,
    error_from_code,
    iter_indices,
)
from fluxproto.frames import MAX_CHUNK
from fluxproto.state import next_state

C, S = Role.CLIENT, Role.SERVER
T = FrameType

FEEDERS = pytest.mark.parametrize(
    "feeder",
    [feed_conn_whole, feed_conn_bytewise, feed_conn_buffered],
    ids=["whole", "bytewise", "buffered"],
)


def control(state: State) -> dict[FrameType, State]:
    return {T.PING: state, T.PONG: state, T.GOODBYE: State.CLOSED}


# The specification of who may send what in which state (PROTOCOL.md "State machine"), written
# out independently of state.py; test_table_matches_state_module checks they agree.
LEGAL: dict[tuple[State, Role], dict[FrameType, State]] = {
    (State.START, C): {T.HELLO: State.HANDSHAKE, T.GOODBYE: State.CLOSED},
    (State.START, S): {T.GOODBYE: State.CLOSED},
    (State.HANDSHAKE, C): {T.GOODBYE: State.CLOSED},
    (State.HANDSHAKE, S): {T.WELCOME: State.IDLE, T.ERROR: State.CLOSED, T.GOODBYE: State.CLOSED},
    (State.IDLE, C): {
        T.OPEN_UPLOAD: State.UPLOAD_OPENING,
        T.OPEN_DOWNLOAD: State.DOWNLOAD_OPENING,
        T.LIST: State.LISTING,
        T.STAT: State.STATING,
        T.DELETE: State.DELETING,
        **control(State.IDLE),
    },
    (State.IDLE, S): control(State.IDLE),
    (State.UPLOAD_OPENING, C): control(State.UPLOAD_OPENING),
    (State.UPLOAD_OPENING, S): {
        T.STATUS: State.UPLOADING,
        T.ERROR: State.IDLE,
        **control(State.UPLOAD_OPENING),
    },
    (State.UPLOADING, C): {
        T.CHUNK: State.UPLOADING,
        T.COMMIT: State.COMMITTING,
        **control(State.UPLOADING),
    },
    (State.UPLOADING, S): {
        T.ACK: State.UPLOADING,
        T.ERROR: State.CLOSED,
        **control(State.UPLOADING),
    },
    (State.COMMITTING, C): control(State.COMMITTING),
    (State.COMMITTING, S): {
        T.COMMITTED: State.IDLE,
        T.ERROR: State.IDLE,
        **control(State.COMMITTING),
    },
    (State.DOWNLOAD_OPENING, C): control(State.DOWNLOAD_OPENING),
    (State.DOWNLOAD_OPENING, S): {
        T.META: State.DOWNLOADING,
        T.ERROR: State.IDLE,
        **control(State.DOWNLOAD_OPENING),
    },
    (State.DOWNLOADING, C): {T.ACK: State.DOWNLOADING, **control(State.DOWNLOADING)},
    (State.DOWNLOADING, S): {
        T.CHUNK: State.DOWNLOADING,
        T.ERROR: State.CLOSED,
        **control(State.DOWNLOADING),
    },
    (State.LISTING, C): control(State.LISTING),
    (State.LISTING, S): {T.LISTING: State.IDLE, T.ERROR: State.IDLE, **control(State.LISTING)},
    (State.STATING, C): control(State.STATING),
    (State.STATING, S): {T.INFO: State.IDLE, T.ERROR: State.IDLE, **control(State.STATING)},
    (State.DELETING, C): control(State.DELETING),
    (State.DELETING, S): {T.DELETED: State.IDLE, T.ERROR: State.IDLE, **control(State.DELETING)},
    (State.CLOSED, C): {},
    (State.CLOSED, S): {},
    (State.ERROR, C): {},
    (State.ERROR, S): {},
}

# A client may give up with a last-word ERROR in any live state; that closes the connection.
for _state in set(State) - {State.START, State.HANDSHAKE, State.CLOSED, State.ERROR}:
    LEGAL[(_state, C)][T.ERROR] = State.CLOSED

REACHABLE = [s for s in State if s is not State.ERROR]
LEGAL_CASES = [
    pytest.param(state, role, ftype, nxt, id=f"{state.value}-{role.value}-{ftype.name}")
    for (state, role), table in LEGAL.items()
    for ftype, nxt in table.items()
]
ILLEGAL_CASES = [
    pytest.param(state, role, ftype, id=f"{state.value}-{role.value}-{ftype.name}")
    for state in REACHABLE
    for role in Role
    for ftype in FrameType
    if ftype not in LEGAL[(state, role)]
]


def ends(pair: ConnectionPair, role: Role) -> tuple[Connection, Connection]:
    """(sender, receiver) for frames sent by `role`."""
    return (pair.client, pair.server) if role is C else (pair.server, pair.client)


def refused_both_ways(
    pair: ConnectionPair, role: Role, frame: Frame, match: str | None = None
) -> None:
    """`role` may not send `frame` now: its send raises LocalProtocolError and queues nothing,
    and the peer, given the frame's bytes anyway, raises RemoteProtocolError and enters ERROR."""
    sender, receiver = ends(pair, role)
    before = sender.state
    with pytest.raises(LocalProtocolError, match=match):
        sender.send(frame)
    assert sender.state is before
    assert sender.data_to_send() == []
    receiver.receive_data(encode_bytes(frame))
    with pytest.raises(RemoteProtocolError, match=match):
        receiver.next_event()
    assert receiver.state is State.ERROR


def legal_frame(pair: ConnectionPair, state: State, role: Role, ftype: FrameType) -> Frame:
    """A sample frame of `ftype` that passes the guards of `state`, after any needed setup."""
    if ftype is T.ACK:
        # An ACK needs a chunk in flight towards its sender.
        pair.send(pair.client if role is S else pair.server, chunk(0))
    return SAMPLES[ftype]


# --- the transition table ----------------------------------------------------------------------


def test_table_matches_state_module() -> None:
    for state in State:
        for role in Role:
            for ftype in FrameType:
                expected = LEGAL[(state, role)].get(ftype)
                assert next_state(role, state, ftype) == expected, (state, role, ftype)


@pytest.mark.parametrize(("state", "role", "ftype", "nxt"), LEGAL_CASES)
def test_legal_transition(state: State, role: Role, ftype: FrameType, nxt: State) -> None:
    pair = drive(ConnectionPair(), state)
    frame = legal_frame(pair, state, role, ftype)
    sender, _ = ends(pair, role)
    assert pair.send(sender, frame) == [frame]
    assert pair.states == (nxt, nxt)


@pytest.mark.parametrize(("state", "role", "ftype"), ILLEGAL_CASES)
def test_illegal_transition(state: State, role: Role, ftype: FrameType) -> None:
    pair = drive(ConnectionPair(), state)
    if state is State.CLOSED:
        # Nothing may be sent after a close, and what the peer sent before seeing it is dropped.
        sender, receiver = ends(pair, role)
        with pytest.raises(LocalProtocolError, match="may not send"):
            sender.send(SAMPLES[ftype])
        receiver.receive_data(encode_bytes(SAMPLES[ftype]))
        assert receiver.next_event() is None
        assert receiver.state is State.CLOSED
        return
    # A CHUNK outside a transfer is refused at its prefix, before its payload is allocated.
    match = "CHUNK payload" if ftype is T.CHUNK else "may not send"
    sender, _ = ends(pair, role)
    with pytest.raises(LocalProtocolError, match="may not send"):
        sender.send(SAMPLES[ftype])
    refused_both_ways(pair, role, SAMPLES[ftype], match=None if ftype is T.CHUNK else match)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
def test_nothing_but_a_last_error_may_be_sent_in_error_state(ftype: FrameType) -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.server.receive_data(b"\xff" * 9)
    with pytest.raises(RemoteProtocolError):
        pair.server.next_event()
    assert pair.server.state is State.ERROR
    if ftype is T.ERROR:
        pair.server.send(Error(400, "you broke the protocol"))
        assert pair.server.state is State.CLOSED
        assert pair.server.data_to_send()
    else:
        with pytest.raises(LocalProtocolError):
            pair.server.send(SAMPLES[ftype])


# --- handshake --------------------------------------------------------------------------------


@FEEDERS
def test_handshake(feeder: Any) -> None:
    pair = ConnectionPair(feeder)
    assert pair.states == (State.START, State.START)
    pair.c2s(Hello(versions=(1, 2), caps=("xxh3-128",), window=WINDOW, agent="t", token="tk"))
    assert pair.states == (State.HANDSHAKE, State.HANDSHAKE)
    pair.s2c(Welcome(version=1, caps=("resume",), window=WINDOW))
    assert pair.states == (State.IDLE, State.IDLE)
    assert pair.client.version == pair.server.version == 1


def test_welcome_may_pick_any_offered_version() -> None:
    pair = ConnectionPair()
    pair.c2s(Hello(versions=(1, 7)))
    pair.s2c(Welcome(version=7))
    assert pair.client.version == 7


def test_welcome_with_a_version_the_client_did_not_offer() -> None:
    pair = ConnectionPair()
    pair.c2s(Hello(versions=(1,)))
    refused_both_ways(pair, S, Welcome(version=2), match="version")


def test_no_common_version_is_error_505() -> None:
    pair = ConnectionPair()
    pair.c2s(Hello(versions=(9,)))
    exc = VersionMismatch("server speaks protocol version 1")
    pair.s2c(Error(exc.code, exc.message))
    assert pair.states == (State.CLOSED, State.CLOSED)
    assert exc.code == 505
    assert isinstance(error_from_code(505, "x"), VersionMismatch)


# --- upload -----------------------------------------------------------------------------------


@FEEDERS
def test_upload_resume_sends_only_what_differs(feeder: Any) -> None:
    pair = ConnectionPair(feeder)
    pair.handshake()
    pair.c2s(OpenUpload(PATH, len(FILE), CS, 0o600))
    # The server holds chunk 1 as uploaded and an older chunk 2; chunk 0 is missing.
    stale = chunk_digest(b"old")
    status = pair.s2c(Status(((1, 2),), DIGESTS[1] + stale))
    assert pair.states == (State.UPLOADING, State.UPLOADING)
    held = {
        i: bytes(status.digests[16 * k : 16 * k + 16])
        for k, i in enumerate(iter_indices(status.held))
    }
    todo = [i for i in range(NCHUNKS) if held.get(i) != DIGESTS[i]]
    assert todo == [0, 2]
    for i in todo:
        assert pair.client.can_send_chunk
        pair.c2s(chunk(i))
    assert not pair.client.can_send_chunk  # the server's window is two chunks
    pair.s2c(Ack(((0, 1), (2, 1))))
    assert pair.client.can_send_chunk
    pair.c2s(Commit(FILE_DIGEST))
    assert pair.states == (State.COMMITTING, State.COMMITTING)
    pair.s2c(Committed(len(FILE), FILE_DIGEST))
    assert pair.states == (State.IDLE, State.IDLE)
    assert pair.client.transfer is None
    assert pair.server.transfer is None


def test_upload_one_chunk_window_streams_with_acks() -> None:
    pair = ConnectionPair()
    pair.handshake(server_window=CS)
    pair.c2s(OpenUpload(PATH, len(FILE), CS))
    pair.s2c(Status())
    for i in range(NCHUNKS):
        pair.c2s(chunk(i))
        assert not pair.client.can_send_chunk
        pair.s2c(Ack(((i, 1),)))
        assert pair.client.can_send_chunk
        assert pair.states == (State.UPLOADING, State.UPLOADING)  # uploads end with COMMIT
    pair.c2s(Commit(FILE_DIGEST))
    pair.s2c(Committed(len(FILE), FILE_DIGEST))


def test_upload_may_resend_a_held_chunk() -> None:
    pair = drive(ConnectionPair(), State.UPLOAD_OPENING)
    pair.s2c(Status(((0, 3),), b"".join(DIGESTS)))
    pair.c2s(chunk(1))
    pair.s2c(Ack(((1, 1),)))
    pair.c2s(Commit(FILE_DIGEST))


@pytest.mark.parametrize("with_chunk", [False, True])
def test_upload_of_an_empty_file(with_chunk: bool) -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenUpload("empty", 0, CS))
    pair.s2c(Status())
    if with_chunk:  # an empty file has no chunks, not one empty chunk
        refused_both_ways(pair, C, Chunk(0, chunk_digest(b""), b""), match="not expected")
        return
    pair.c2s(Commit(chunk_digest(b"")))
    pair.s2c(Committed(0, chunk_digest(b"")))
    assert pair.states == (State.IDLE, State.IDLE)


def test_upload_commit_fails_with_error_to_idle() -> None:
    pair = drive(ConnectionPair(), State.COMMITTING)
    events = pair.send(pair.server, Error(422, "whole-file digest differs"))
    assert pair.states == (State.IDLE, State.IDLE)
    err = events[0]
    assert isinstance(err, Error)
    assert isinstance(error_from_code(err.code, err.message), IntegrityError)


def test_status_must_stay_within_the_file() -> None:
    pair = drive(ConnectionPair(), State.UPLOAD_OPENING)
    refused_both_ways(pair, S, Status(((2, 2),), bytes(32)), match="beyond the end")


def test_commit_with_chunks_in_flight() -> None:
    pair = drive(ConnectionPair(), State.UPLOADING)
    pair.c2s(chunk(0))
    refused_both_ways(pair, C, Commit(FILE_DIGEST), match="not yet acknowledged")


def test_commit_after_acks() -> None:
    pair = drive(ConnectionPair(), State.UPLOADING)
    pair.c2s(chunk(0))
    pair.s2c(Ack(((0, 1),)))
    pair.c2s(Commit(FILE_DIGEST))  # the server verifies the whole-file digest, not the state
    assert pair.states == (State.COMMITTING, State.COMMITTING)


# --- download ---------------------------------------------------------------------------------


@FEEDERS
def test_full_download(feeder: Any) -> None:
    pair = ConnectionPair(feeder)
    pair.handshake()
    pair.c2s(OpenDownload(PATH, chunk_size=CS))
    pair.s2c(sample_meta(mode=0o640, mtime_ns=123))
    assert pair.states == (State.DOWNLOADING, State.DOWNLOADING)
    assert not pair.client.can_send_chunk  # only the server sends chunks in a download
    pair.s2c(chunk(0))
    pair.s2c(chunk(1))
    assert not pair.server.can_send_chunk  # the client's window is two chunks
    pair.c2s(Ack(((0, 2),)))
    assert pair.server.can_send_chunk
    pair.s2c(chunk(2))
    pair.c2s(Ack(((2, 1),)))
    assert pair.states == (State.IDLE, State.IDLE)  # the last ACK ends the download
    assert pair.client.transfer is None
    assert pair.server.transfer is None


def test_download_wanted_chunks_in_any_order() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=((0, 1), (2, 1)), digest=FILE_DIGEST, chunk_size=CS))
    pair.s2c(sample_meta(count=2))
    pair.s2c(chunk(2))
    pair.c2s(Ack(((2, 1),)))
    assert pair.states == (State.DOWNLOADING, State.DOWNLOADING)
    pair.s2c(chunk(0))
    pair.c2s(Ack(((0, 1),)))
    assert pair.states == (State.IDLE, State.IDLE)


def test_download_unwanted_chunk() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=((0, 1), (2, 1)), chunk_size=CS))
    pair.s2c(sample_meta(count=2))
    refused_both_ways(pair, S, chunk(1), match="not expected")


@pytest.mark.parametrize(
    ("want", "digest"),
    [(None, chunk_digest(b"the old version")), ((), None), ((), FILE_DIGEST), (((3, 1),), None)],
    ids=["changed-file", "want-nothing", "want-nothing-same-digest", "want-beyond-the-end"],
)
def test_meta_with_count_zero_goes_straight_to_idle(want: Any, digest: Any) -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=want, digest=digest, chunk_size=CS))
    meta = pair.s2c(sample_meta(count=0))
    assert pair.states == (State.IDLE, State.IDLE)
    assert len(meta.digests) == 16 * NCHUNKS  # the digests to re-plan against come anyway


def test_download_of_an_empty_file() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload("empty", chunk_size=CS))
    pair.s2c(Meta(0, CS, chunk_digest(b""), 0))
    assert pair.states == (State.IDLE, State.IDLE)


@pytest.mark.parametrize(
    ("want", "count"),
    [(None, 2), (None, 1), (((0, 2),), 3), (((0, 2),), 1), (((3, 1),), 1), (((2, 2),), 2)],
)
def test_meta_count_must_be_zero_or_exactly_the_wanted_count(want: Any, count: int) -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=want, chunk_size=CS))
    refused_both_ways(pair, S, sample_meta(count=count), match="META announces")


def test_download_window_comes_from_hello_and_upload_window_from_welcome() -> None:
    pair = ConnectionPair()
    pair.handshake(client_window=CS, server_window=3 * CS)
    pair.c2s(OpenDownload(PATH, chunk_size=CS))
    pair.s2c(sample_meta())
    pair.s2c(chunk(0))
    assert not pair.server.can_send_chunk
    refused_both_ways(pair, S, chunk(1), match="window")

    pair = ConnectionPair()
    pair.handshake(client_window=CS, server_window=3 * CS)
    pair.c2s(OpenUpload(PATH, len(FILE), CS))
    pair.s2c(Status())
    for i in range(3):
        pair.c2s(chunk(i))
    assert not pair.client.can_send_chunk


# --- windows ----------------------------------------------------------------------------------


def test_chunk_beyond_the_upload_window() -> None:
    pair = drive(ConnectionPair(), State.UPLOADING)
    pair.c2s(chunk(0))
    pair.c2s(chunk(1))
    assert not pair.client.can_send_chunk
    refused_both_ways(pair, C, chunk(2), match="window")


@pytest.mark.parametrize(
    ("window", "chunk_size", "in_flight"),
    [(4096, 8192, 1), (3 * 4096 - 1, 4096, 2), (3 * 4096, 4096, 3), (1 << 30, MAX_CHUNK, 64)],
)
def test_window_in_chunks_is_window_over_chunk_size_but_at_least_one(
    window: int, chunk_size: int, in_flight: int
) -> None:
    pair = ConnectionPair()
    pair.handshake(server_window=window)
    size = (in_flight + 1) * chunk_size
    pair.c2s(OpenUpload(PATH, size, chunk_size))
    pair.s2c(Status())
    data = bytes(chunk_size)
    frame_digest = chunk_digest(data)
    for i in range(in_flight):
        assert pair.client.can_send_chunk
        pair.client.send(Chunk(i, frame_digest, data))
    assert not pair.client.can_send_chunk
    with pytest.raises(LocalProtocolError, match="window"):
        pair.client.send(Chunk(in_flight, frame_digest, data))


# --- chunk and ack bookkeeping ------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.parametrize(
    ("case", "frame"),
    [
        ("index-beyond-file", Chunk(3, DIGESTS[0], PIECES[0])),
        ("short-chunk", Chunk(0, chunk_digest(PIECES[0][:100]), PIECES[0][:100])),
        ("long-last-chunk", Chunk(2, chunk_digest(bytes(CS)), bytes(CS))),
    ],
)
def test_bad_chunk(direction: str, case: str, frame: Chunk) -> None:
    state = State.UPLOADING if direction == "upload" else State.DOWNLOADING
    pair = drive(ConnectionPair(), state)
    role = C if direction == "upload" else S
    refused_both_ways(pair, role, frame, match="chunk")


@pytest.mark.parametrize("acked", [False, True])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_repeated_chunk(direction: str, acked: bool) -> None:
    state = State.UPLOADING if direction == "upload" else State.DOWNLOADING
    pair = drive(ConnectionPair(), state)
    role = C if direction == "upload" else S
    sender, receiver = ends(pair, role)
    pair.send(sender, chunk(1))
    if acked:
        pair.send(receiver, Ack(((1, 1),)))
    refused_both_ways(pair, role, chunk(1), match="repeated")


def test_download_chunk_digest_must_match_meta() -> None:
    pair = drive(ConnectionPair(), State.DOWNLOADING)
    data = b"x" * CS
    refused_both_ways(pair, S, Chunk(0, chunk_digest(data), data), match="META")


def test_corrupt_upload_chunk_is_an_integrity_error() -> None:
    pair = drive(ConnectionPair(), State.UPLOADING)
    bad = Chunk(0, DIGESTS[0], b"\x00" + PIECES[0][1:])
    pair.client.send(bad)  # the sender does not hash what it sends
    pair.server.receive_data(b"".join(bytes(b) for b in pair.client.data_to_send()))
    with pytest.raises(IntegrityError) as info:
        pair.server.next_event()
    assert not isinstance(info.value, ProtocolError)
    assert pair.server.state is State.ERROR
    # The server's last word; the client sees ERROR in UPLOADING and the connection closes.
    events = pair.send(pair.server, Error(info.value.code, info.value.message))
    assert pair.states == (State.CLOSED, State.CLOSED)
    assert isinstance(error_from_code(events[0].code, ""), IntegrityError)  # type: ignore[union-attr]


def test_corrupt_download_chunk_is_an_integrity_error() -> None:
    pair = drive(ConnectionPair(), State.DOWNLOADING)
    pair.server.send(Chunk(0, DIGESTS[0], bytes(CS)))  # right digest per META, wrong data
    pair.client.receive_data(b"".join(bytes(b) for b in pair.server.data_to_send()))
    with pytest.raises(IntegrityError):
        pair.client.next_event()
    assert pair.client.state is State.ERROR


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.parametrize(
    ("in_flight", "ack"),
    [
        ([], ((0, 1),)),  # never sent
        ([0], ((1, 1),)),  # another chunk
        ([0], ((0, 2),)),  # partly in flight
        ([0, 1], ((0, 1), (2, 1))),
        ([2], ((2, 2),)),  # beyond the file
    ],
)
def test_ack_of_chunks_not_in_flight(
    direction: str, in_flight: list[int], ack: tuple[tuple[int, int], ...]
) -> None:
    state = State.UPLOADING if direction == "upload" else State.DOWNLOADING
    pair = drive(ConnectionPair(), state)
    chunk_sender = C if direction == "upload" else S
    sender, _ = ends(pair, chunk_sender)
    for i in in_flight:
        pair.send(sender, chunk(i))
    refused_both_ways(pair, S if chunk_sender is C else C, Ack(ack), match="not in flight")


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_ack_twice(direction: str) -> None:
    state = State.UPLOADING if direction == "upload" else State.DOWNLOADING
    pair = drive(ConnectionPair(), state)
    chunk_sender = C if direction == "upload" else S
    acker = S if chunk_sender is C else C
    sender, receiver = ends(pair, chunk_sender)
    pair.send(sender, chunk(0))
    pair.send(receiver, Ack(((0, 1),)))
    refused_both_ways(pair, acker, Ack(((0, 1),)), match="not in flight")


# --- errors, control frames, requests -------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "after"),
    [
        (State.HANDSHAKE, State.CLOSED),
        (State.UPLOAD_OPENING, State.IDLE),
        (State.UPLOADING, State.CLOSED),
        (State.COMMITTING, State.IDLE),
        (State.DOWNLOAD_OPENING, State.IDLE),
        (State.DOWNLOADING, State.CLOSED),
        (State.LISTING, State.IDLE),
        (State.STATING, State.IDLE),
        (State.DELETING, State.IDLE),
    ],
)
def test_error_reply(state: State, after: State) -> None:
    pair = drive(ConnectionPair(), state)
    if state is State.DOWNLOADING:
        pair.s2c(chunk(0))  # an error may come with chunks in flight
    pair.s2c(Error(404, "no such file"))
    assert pair.states == (after, after)
    assert pair.client.transfer is None


@pytest.mark.parametrize(
    "state", [s for s in REACHABLE if s not in (State.START, State.HANDSHAKE, State.CLOSED)]
)
@pytest.mark.parametrize("role", list(Role))
def test_ping_pong_in_every_live_state(state: State, role: Role) -> None:
    pair = drive(ConnectionPair(), state)
    sender, receiver = ends(pair, role)
    assert pair.send(sender, Ping(42)) == [Ping(42)]
    assert pair.send(receiver, Pong(42)) == [Pong(42)]
    assert pair.states == (state, state)


@pytest.mark.parametrize("state", [s for s in REACHABLE if s is not State.CLOSED])
@pytest.mark.parametrize("role", list(Role))
def test_goodbye_from_every_open_state(state: State, role: Role) -> None:
    pair = drive(ConnectionPair(), state)
    sender, receiver = ends(pair, role)
    assert pair.send(sender, Goodbye("shutting down")) == [Goodbye("shutting down")]
    assert pair.states == (State.CLOSED, State.CLOSED)
    assert sender.transfer is None
    assert receiver.transfer is None
    receiver.receive_data(b"")
    assert receiver.next_event() == ConnectionClosed(clean=True)


def test_list_stat_delete() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(ListDir("dir"))
    page = Listing((Entry("a", "file", 3, 1, 0o600, chunk_digest(b"abc")),), cursor="a")
    pair.s2c(page)
    pair.c2s(ListDir("dir", cursor="a"))
    pair.s2c(Listing((Entry("b", "dir"),)))
    pair.c2s(Stat(PATH))
    pair.s2c(Info(Entry("file.bin", "file", len(FILE), digest=FILE_DIGEST)))
    pair.c2s(SAMPLES[T.DELETE])
    pair.s2c(Deleted(PATH))
    assert pair.states == (State.IDLE, State.IDLE)


def test_requests_are_strictly_sequential() -> None:
    pair = drive(ConnectionPair(), State.STATING)
    refused_both_ways(pair, C, Stat(PATH), match="may not send")


# --- end of stream ----------------------------------------------------------------------------


def test_eof_in_idle_is_clean() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.client.receive_data(b"")
    assert pair.client.next_event() == ConnectionClosed(clean=True)
    assert pair.client.state is State.CLOSED
    assert pair.client.next_event() is None
    assert pair.client.next_event() is None


def test_frames_before_eof_come_first() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.client.receive_data(encode_bytes(Ping(1)) + encode_bytes(Goodbye()))
    pair.client.receive_data(b"")
    assert pair.client.next_event() == Ping(1)
    assert pair.client.next_event() == Goodbye()
    assert pair.client.next_event() == ConnectionClosed(clean=True)


@pytest.mark.parametrize("cut", [1, 8, 9, 12])
def test_eof_mid_frame_is_unclean(cut: int) -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.client.receive_data(encode_bytes(Ping(1))[:cut])
    pair.client.receive_data(b"")
    assert pair.client.next_event() == ConnectionClosed(clean=False)
    assert pair.client.state is State.CLOSED


@pytest.mark.parametrize(
    "state", [State.START, State.HANDSHAKE, State.UPLOADING, State.DOWNLOADING, State.STATING]
)
def test_eof_mid_request_is_unclean(state: State) -> None:
    pair = drive(ConnectionPair(), state)
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ConnectionClosed(clean=False)
    assert pair.server.transfer is None


def test_after_a_remote_error_input_is_discarded() -> None:
    conn = drive(ConnectionPair(), State.IDLE).server
    conn.receive_data(b"\x00" * 9)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    buf = conn.get_buffer()
    assert len(buf) > 0
    buf[:4] = b"junk"
    conn.buffer_updated(4)
    conn.receive_data(encode_bytes(Ping(1)))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR


def test_oversized_frame_prefix_is_an_error_in_the_connection() -> None:
    conn = drive(ConnectionPair(), State.IDLE).server
    conn.receive_data(prefix(T.CHUNK, 1, MAX_CHUNK + 1))
    with pytest.raises(RemoteProtocolError, match="payload"):
        conn.next_event()


# --- known design problems --------------------------------------------------------------------


def _listing_too_big() -> Listing:
    return Listing(tuple(Entry("n" * 1000 + str(i), "file") for i in range(100)))


@pytest.mark.parametrize(
    ("state", "role", "frame"),
    [
        (State.IDLE, C, Stat("\ud800")),
        (State.LISTING, S, None),
    ],
    ids=["surrogate-path", "listing-header-too-big"],
)
def test_frame_that_fails_to_encode_leaves_state_unchanged(
    state: State, role: Role, frame: Frame | None
) -> None:
    pair = drive(ConnectionPair(), state)
    sender, _ = ends(pair, role)
    with pytest.raises(LocalProtocolError):
        sender.send(frame or _listing_too_big())
    assert sender.state is state


def test_refused_ack_has_no_effect() -> None:
    pair = drive(ConnectionPair(), State.UPLOADING)
    pair.c2s(chunk(0))
    with pytest.raises(LocalProtocolError):
        pair.server.send(Ack(((0, 1), (2, 1))))  # chunk 2 was never sent
    pair.s2c(Ack(((0, 1),)))


def test_meta_for_another_version_cannot_announce_chunks() -> None:
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=((0, 1),), digest=chunk_digest(b"old"), chunk_size=CS))
    refused_both_ways(pair, S, sample_meta(count=1))


def test_meta_for_another_geometry_cannot_announce_chunks() -> None:
    # Same content (same whole-file digest) stored at another chunk size: the wanted indices
    # would name other bytes, so only count 0 (re-plan) is allowed.
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=((0, 1),), digest=FILE_DIGEST, chunk_size=2 * CS))
    refused_both_ways(pair, S, sample_meta(count=1))
    pair = drive(ConnectionPair(), State.IDLE)
    pair.c2s(OpenDownload(PATH, want=((0, 1),), digest=FILE_DIGEST, chunk_size=2 * CS))
    pair.s2c(sample_meta(count=0))  # delivered: the client re-plans
    assert pair.states == (State.IDLE, State.IDLE)


def test_chunk_longer_than_the_transfer_chunk_size_fails_at_the_prefix() -> None:
    conn = drive(ConnectionPair(), State.UPLOADING).server
    conn.receive_data(prefix(T.CHUNK, 30, MAX_CHUNK))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("case", ["goodbye-crosses-ping", "error-crosses-chunk"])
def test_frames_crossing_a_close_are_not_errors(case: str) -> None:
    if case == "goodbye-crosses-ping":
        pair = drive(ConnectionPair(), State.IDLE)
        pair.server.send(Ping(1))  # in flight
        pair.client.send(Goodbye())
        crossing = pair.server.data_to_send()
        receiver = pair.client
    else:
        pair = drive(ConnectionPair(), State.UPLOADING)
        pair.client.send(chunk(0))  # in flight
        pair.server.send(Error(507, "no space"))
        crossing = pair.client.data_to_send()
        receiver = pair.server
    receiver.receive_data(b"".join(bytes(b) for b in crossing))
    receiver.receive_data(b"")
    events = []
    while (ev := receiver.next_event()) is not None:
        events.append(ev)
    assert events[-1] == ConnectionClosed(clean=True)


def test_last_word_error_from_the_client_is_delivered() -> None:
    pair = drive(ConnectionPair(), State.DOWNLOADING)
    pair.client.receive_data(encode_bytes(Chunk(1, DIGESTS[0], PIECES[1])))  # wrong digest
    with pytest.raises(RemoteProtocolError):
        pair.client.next_event()
    events = pair.send(pair.client, Error(400, "chunk 1 digest differs from META"))
    assert events == [Error(400, "chunk 1 digest differs from META")]


def test_can_send_chunk_is_false_once_committing() -> None:
    pair = drive(ConnectionPair(), State.COMMITTING)
    with pytest.raises(LocalProtocolError):
        pair.client.send(chunk(0))
    assert not pair.client.can_send_chunk
