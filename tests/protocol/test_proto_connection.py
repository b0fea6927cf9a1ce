"""The connection through a ConnectionPair, one request at a time: handshake, uploads (eager,
resumed, empty), downloads, the tree requests, chunk and ACK bookkeeping, end of stream."""

from __future__ import annotations

from typing import Any

import pytest
from proto_support import (
    CS,
    DIGESTS,
    FEEDERS,
    FILE,
    FILE_DIGEST,
    NCHUNKS,
    PIECES,
    RID,
    TID,
    WINDOW,
    ConnectionPair,
    chunk,
    commit,
    committed,
    download,
    drain,
    drive,
    drive_request,
    ends,
    refused_both_ways,
    sample_meta,
    status,
    upload,
)

from fluxproto import (
    Ack,
    Chunk,
    Committed,
    Connection,
    EndReason,
    Error,
    FrameType,
    Hello,
    IntegrityError,
    Limits,
    LocalProtocolError,
    Meta,
    OpenUpload,
    ProtocolError,
    RemoteProtocolError,
    RequestEnded,
    RequestState,
    Role,
    State,
    Welcome,
    chunk_digest,
    encode_bytes,
    error_from_code,
)

C, S = Role.CLIENT, Role.SERVER
T = FrameType
R = RequestState


# --- handshake ------------------------------------------------------------------------------------


@FEEDERS
def test_handshake(feeder: Any) -> None:
    pair = ConnectionPair(feeder, client={"transfer_window": CS}, server={"requests": 3})
    assert pair.states == (State.START, State.START)
    hello = pair.client.hello(caps=("xxh3-128",), agent="t", token="tk")
    assert (hello.versions, hello.window, hello.transfer_window) == ((2,), WINDOW, CS)
    pair.c2s(hello)
    assert pair.states == (State.HANDSHAKE, State.HANDSHAKE)
    assert pair.client.handshaking
    pair.s2c(pair.server.welcome(caps=("resume",)))
    assert pair.states == (State.OPEN, State.OPEN)
    assert pair.client.version == pair.server.version == 2
    assert pair.server.peer == Limits(WINDOW, CS, 64)  # what the client announced
    assert pair.client.peer == Limits(WINDOW, WINDOW, 3)


def test_the_welcome_and_its_upload_rule_are_kept() -> None:
    """Both ends keep the WELCOME of the handshake: the client reads the server's rule for
    uploads (`min_chunk`, `max_chunks`) there."""
    pair = ConnectionPair()
    pair.c2s(pair.client.hello())
    assert pair.client.welcomed is None
    pair.s2c(pair.server.welcome(min_chunk=5 << 20, max_chunks=10_000))
    for conn in (pair.client, pair.server):
        assert conn.welcomed is not None
        assert (conn.welcomed.min_chunk, conn.welcomed.max_chunks) == (5 << 20, 10_000)


def test_hello_must_offer_version_2() -> None:
    conn = Connection(C, window=WINDOW)
    with pytest.raises(LocalProtocolError, match="version 2"):
        conn.send(Hello(versions=(1,), window=WINDOW))
    conn.send(Hello(versions=(1, 2), window=WINDOW))  # offering more is allowed


def test_welcome_with_a_version_the_client_did_not_offer() -> None:
    pair = drive(ConnectionPair(), State.HANDSHAKE)
    refused_both_ways(pair, S, Welcome(version=3, window=WINDOW), match="version")


def test_welcome_must_choose_version_2_even_if_offered() -> None:
    pair = ConnectionPair()
    pair.c2s(Hello(versions=(2, 3), window=WINDOW))
    refused_both_ways(pair, S, Welcome(version=3, window=WINDOW), match="speaks 2")


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    "limits", [{"window": 4 * CS}, {"transfer_window": CS}, {"requests": 5}], ids=str
)
def test_a_handshake_announces_what_the_connection_enforces(
    role: Role, limits: dict[str, int]
) -> None:
    """Announcing other limits than the ones checked would make the peer look like a cheat."""
    pair = drive(ConnectionPair(), State.HANDSHAKE if role is S else State.START)
    conn = pair.server if role is S else pair.client
    cls = Welcome if role is S else Hello
    with pytest.raises(LocalProtocolError, match="enforces"):
        conn.send(cls(**{"window": WINDOW, **limits}))
    assert conn.data_to_send() == []


def test_limits_are_validated_at_construction() -> None:
    for bad in ({"window": 1}, {"transfer_window": 2 * WINDOW}, {"requests": 0}):
        with pytest.raises(LocalProtocolError):
            Connection(S, **{"window": WINDOW, **bad})


def test_no_request_before_welcome() -> None:
    pair = drive(ConnectionPair(), State.HANDSHAKE)
    refused_both_ways(pair, C, upload(), match="handshake")


# --- upload ---------------------------------------------------------------------------------------


@FEEDERS
def test_upload_resume_sends_only_what_differs(feeder: Any) -> None:
    pair = drive(ConnectionPair(feeder), State.OPEN)
    pair.c2s(upload(mode=0o600))
    # The server holds chunk 1 as uploaded and an older chunk 2; chunk 0 is missing.
    stale = chunk_digest(b"old")
    pair.s2c(status(held=((1, 2),), digests=DIGESTS[1] + stale))
    assert pair.rstates() == (R.UPLOADING, R.UPLOADING)
    assert pair.client.requests[RID].tid == TID
    st = pair.server.requests[RID]
    assert st.tid == TID
    held = {i: bytes(DIGESTS[1] + stale)[16 * k : 16 * k + 16] for k, i in enumerate((1, 2))}
    todo = [i for i in range(NCHUNKS) if held.get(i) != DIGESTS[i]]
    assert todo == [0, 2]
    for i in todo:
        assert pair.client.can_send_chunk(RID, len(PIECES[i]))
        pair.c2s(chunk(i))
    # Windows count bytes: 4196 are in flight, so a whole chunk no longer fits, a small one does.
    assert not pair.client.can_send_chunk(RID, CS)
    assert pair.client.can_send_chunk(RID, WINDOW - CS - 100)
    pair.s2c(Ack(RID, ((0, 1), (2, 1))))
    assert pair.client.sent_inflight == pair.server.received_inflight == 0
    pair.c2s(commit(sent=2))
    assert pair.rstates() == (R.COMMITTING, R.COMMITTING)
    assert pair.s2c(committed()) == [committed(), RequestEnded(RID, EndReason.COMMITTED)]
    assert pair.rstates() == (R.NONE, R.NONE)
    assert pair.client.requests == pair.server.requests == {}


def test_upload_in_one_flight() -> None:
    """OPEN_UPLOAD, every CHUNK and COMMIT leave before STATUS: no round trip of their own."""
    pair = drive(ConnectionPair(client={"window": 4 * CS}, server={"window": 4 * CS}), State.OPEN)
    flight = [upload(), *(chunk(i) for i in range(NCHUNKS)), commit(sent=NCHUNKS)]
    for frame in flight:
        assert pair.client.send(frame) is None
    assert pair.client.sent_inflight == len(FILE)
    assert pair.flush(pair.client) == flight  # the server took all of it in one read
    assert pair.rstates() == (R.UP_COMMITTING_EARLY, R.UP_COMMITTING_EARLY)
    assert pair.server.received_inflight == len(FILE)
    # The server answers both at once: STATUS, then COMMITTED once the file is durable.
    pair.server.send(status())
    end = pair.server.send(committed())
    assert end == RequestEnded(RID, EndReason.COMMITTED)
    assert pair.flush(pair.server) == [status(), committed(), end]
    # COMMITTED acknowledged every chunk: both windows are empty again, no ACK was needed.
    assert pair.client.sent_inflight == pair.server.received_inflight == 0
    assert pair.client.requests == pair.server.requests == {}


def test_acks_may_come_after_an_early_commit() -> None:
    pair = drive_request(ConnectionPair(), R.UP_COMMITTING_EARLY)  # chunk 0 in flight
    refused_both_ways(pair, S, Ack(RID, ((0, 1),)), match="may not send ACK")
    pair = drive_request(ConnectionPair(), R.UP_COMMITTING_EARLY)
    pair.s2c(status())
    pair.s2c(Ack(RID, ((0, 1),)))
    assert pair.client.sent_inflight == 0
    assert pair.rstates() == (R.COMMITTING, R.COMMITTING)


def test_commit_must_count_the_chunks_sent() -> None:
    pair = drive_request(ConnectionPair(), R.UPLOADING)
    pair.c2s(chunk(0))
    for wrong in (0, 2):
        with pytest.raises(LocalProtocolError, match="COMMIT counts"):
            pair.client.send(commit(sent=wrong))
    pair.c2s(commit(sent=1))


def test_a_commit_waits_for_chunks_still_on_other_streams() -> None:
    """Over QUIC chunks may travel on their own streams and arrive after COMMIT: the server
    reports COMMIT only once the `sent` chunks it counts are in (PROTOCOL.md section 6.3)."""
    pair = drive(ConnectionPair(client={"window": 4 * CS}, server={"window": 4 * CS}), State.OPEN)
    wire = {}
    for frame in (upload(), chunk(0), chunk(1), chunk(2), commit(sent=3)):
        pair.client.send(frame)
        wire[frame] = b"".join(bytes(b) for b in pair.client.data_to_send())
    server = pair.server
    # The request stream carries OPEN_UPLOAD, chunk 0 and COMMIT; chunks 1 and 2 come later.
    server.receive_data(wire[upload()] + wire[chunk(0)] + wire[commit(sent=3)])
    assert drain(server) == [upload(), chunk(0)]
    req = server.requests[RID]
    assert (req.state, req.commit) == (R.UP_OPENING, commit(sent=3))
    server.send(status())  # STATUS may still go out meanwhile
    server.receive_frame(chunk(2))
    assert drain(server) == [chunk(2)]
    server.receive_frame(chunk(1))
    assert drain(server) == [chunk(1), commit(sent=3)]
    assert server.requests[RID].state is R.COMMITTING
    assert server.chunk_limit() == server.chunk_limit(RID) == 0  # every chunk is in


@pytest.mark.parametrize(("arrived", "sent"), [(2, 1), (0, 4)], ids=["fewer", "more-than-can"])
def test_a_commit_counting_impossible_chunks(arrived: int, sent: int) -> None:
    pair = drive_request(
        ConnectionPair(client={"window": 4 * CS}, server={"window": 4 * CS}), R.UP_OPENING
    )
    for i in range(arrived):
        pair.c2s(chunk(i))
    pair.server.receive_data(encode_bytes(commit(sent=sent)))
    with pytest.raises(RemoteProtocolError, match="COMMIT counts"):
        pair.server.next_event()


def test_upload_may_resend_a_held_chunk() -> None:
    pair = drive_request(ConnectionPair(), R.UP_OPENING)
    pair.s2c(status(held=((0, 3),), digests=b"".join(DIGESTS)))
    pair.c2s(chunk(1))
    pair.s2c(Ack(RID, ((1, 1),)))
    pair.c2s(commit(sent=1))


@pytest.mark.parametrize("with_chunk", [False, True])
def test_upload_of_an_empty_file(with_chunk: bool) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    empty = chunk_digest(b"")
    pair.c2s(OpenUpload(RID, "empty", 0, CS))
    if with_chunk:  # an empty file has no chunks, not one empty chunk
        refused_both_ways(pair, C, Chunk(RID, 0, empty, b""), match="CHUNK|not expected")
        return
    pair.c2s(commit().__class__(RID, empty, 0))
    pair.s2c(status())
    assert pair.s2c(Committed(RID, 0, empty))[-1] == RequestEnded(RID, EndReason.COMMITTED)


def test_committed_must_match_the_upload_and_its_commit() -> None:
    for bad in (Committed(RID, len(FILE) - 1, FILE_DIGEST), Committed(RID, len(FILE), bytes(16))):
        pair = drive_request(ConnectionPair(), R.COMMITTING)
        refused_both_ways(pair, S, bad, match="COMMITTED names")


def test_commit_fails_with_error_and_ends_the_request_only() -> None:
    pair = drive_request(ConnectionPair(), R.COMMITTING)
    events = pair.s2c(Error(422, "whole-file digest differs", RID))
    assert events[-1] == RequestEnded(RID, EndReason.ERROR)
    assert pair.states == (State.OPEN, State.OPEN)
    err = events[0]
    assert isinstance(err, Error)
    assert isinstance(error_from_code(err.code, err.message), IntegrityError)
    assert pair.client.sent_inflight == pair.server.received_inflight == 0


def test_status_must_stay_within_the_file() -> None:
    pair = drive_request(ConnectionPair(), R.UP_OPENING)
    refused_both_ways(pair, S, status(held=((2, 2),), digests=bytes(32)), match="beyond the end")


def test_no_chunk_after_commit() -> None:
    pair = drive_request(ConnectionPair(), R.COMMITTING)
    with pytest.raises(LocalProtocolError):
        pair.client.send(chunk(1))
    assert not pair.client.can_send_chunk(RID, CS)


# --- download -------------------------------------------------------------------------------------


@FEEDERS
def test_full_download(feeder: Any) -> None:
    pair = drive(ConnectionPair(feeder), State.OPEN)
    pair.c2s(download())
    pair.s2c(sample_meta(mode=0o640, mtime_ns=123))
    assert pair.rstates() == (R.DOWNLOADING, R.DOWNLOADING)
    assert pair.client.requests[RID].tid == TID
    assert not pair.client.can_send_chunk(RID, CS)  # only the server sends chunks in a download
    pair.s2c(chunk(0))
    pair.s2c(chunk(1))
    assert not pair.server.can_send_chunk(RID, len(PIECES[2]))  # the client's window: 2 chunks
    assert pair.c2s(Ack(RID, ((0, 2),))) == [Ack(RID, ((0, 2),))]
    assert pair.server.can_send_chunk(RID, len(PIECES[2]))
    pair.s2c(chunk(2))
    end = pair.client.send(Ack(RID, ((2, 1),)))  # the last ACK ends the download
    assert end == RequestEnded(RID, EndReason.DOWNLOADED)
    assert pair.flush(pair.client) == [Ack(RID, ((2, 1),)), end]
    assert pair.client.requests == pair.server.requests == {}


def test_download_wanted_chunks_in_any_order() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download(want=((0, 1), (2, 1)), digest=FILE_DIGEST))
    pair.s2c(sample_meta(count=2))
    pair.s2c(chunk(2))
    pair.c2s(Ack(RID, ((2, 1),)))
    assert pair.rstates() == (R.DOWNLOADING, R.DOWNLOADING)
    pair.s2c(chunk(0))
    pair.c2s(Ack(RID, ((0, 1),)))
    assert pair.rstates() == (R.NONE, R.NONE)


def test_download_unwanted_chunk() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download(want=((0, 1), (2, 1))))
    pair.s2c(sample_meta(count=2))
    refused_both_ways(pair, S, chunk(1), match="not expected")


@pytest.mark.parametrize(
    ("want", "digest"),
    [(None, chunk_digest(b"the old version")), ((), None), ((), FILE_DIGEST), (((3, 1),), None)],
    ids=["changed-file", "want-nothing", "want-nothing-same-digest", "want-beyond-the-end"],
)
def test_meta_with_count_zero_ends_the_download(want: Any, digest: Any) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download(want=want, digest=digest))
    events = pair.s2c(sample_meta(count=0))
    assert events[1:] == [RequestEnded(RID, EndReason.NO_CHUNKS)]
    assert pair.rstates() == (R.NONE, R.NONE)
    meta = events[0]
    assert isinstance(meta, Meta)
    assert len(meta.digests) == 16 * NCHUNKS  # the digests to re-plan against come anyway


def test_download_of_an_empty_file() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download())
    pair.s2c(Meta(RID, TID, 0, CS, chunk_digest(b""), 0))
    assert pair.rstates() == (R.NONE, R.NONE)


@pytest.mark.parametrize(
    ("want", "count"),
    [(None, 2), (None, 1), (((0, 2),), 3), (((0, 2),), 1), (((3, 1),), 1), (((2, 2),), 2)],
)
def test_meta_count_must_be_zero_or_exactly_the_wanted_count(want: Any, count: int) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download(want=want))
    refused_both_ways(pair, S, sample_meta(count=count), match="META announces")


@pytest.mark.parametrize("chunk_size", [CS, 2 * CS], ids=["other-version", "other-geometry"])
def test_meta_of_another_version_or_geometry_cannot_announce_chunks(chunk_size: int) -> None:
    # Same content stored at another chunk size: the wanted indices would name other bytes,
    # so only count 0 (re-plan) is allowed.
    digest = chunk_digest(b"old") if chunk_size == CS else FILE_DIGEST
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download(want=((0, 1),), digest=digest, chunk_size=chunk_size))
    refused_both_ways(pair, S, sample_meta(count=1), match="another version")
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(download(want=((0, 1),), digest=digest, chunk_size=chunk_size))
    pair.s2c(sample_meta(count=0))  # delivered: the client re-plans
    assert pair.rstates() == (R.NONE, R.NONE)


def test_download_chunk_digest_must_match_meta() -> None:
    pair = drive_request(ConnectionPair(), R.DOWNLOADING)
    data = b"x" * CS
    refused_both_ways(pair, S, Chunk(RID, 0, chunk_digest(data), data), match="META")


# --- chunk and ack bookkeeping --------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.parametrize(
    ("case", "frame"),
    [
        ("index-beyond-file", Chunk(RID, 3, DIGESTS[0], PIECES[0])),
        ("short-chunk", Chunk(RID, 0, chunk_digest(PIECES[0][:100]), PIECES[0][:100])),
        ("long-last-chunk", Chunk(RID, 2, chunk_digest(bytes(CS)), bytes(CS))),
    ],
)
def test_bad_chunk(direction: str, case: str, frame: Chunk) -> None:
    state = R.UPLOADING if direction == "upload" else R.DOWNLOADING
    pair = drive_request(ConnectionPair(), state)
    refused_both_ways(pair, C if direction == "upload" else S, frame, match="chunk")


@pytest.mark.parametrize("acked", [False, True])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_repeated_chunk(direction: str, acked: bool) -> None:
    state = R.UPLOADING if direction == "upload" else R.DOWNLOADING
    pair = drive_request(ConnectionPair(), state)
    role = C if direction == "upload" else S
    sender, receiver = ends(pair, role)
    pair.send(sender, chunk(1))
    if acked:
        pair.send(receiver, Ack(RID, ((1, 1),)))
    refused_both_ways(pair, role, chunk(1), match="repeated")


def test_corrupt_upload_chunk_is_an_integrity_error() -> None:
    pair = drive_request(ConnectionPair(), R.UPLOADING)
    pair.client.send(Chunk(RID, 0, DIGESTS[0], b"\x00" + PIECES[0][1:]))  # not re-hashed
    pair.server.receive_data(b"".join(bytes(b) for b in pair.client.data_to_send()))
    with pytest.raises(IntegrityError) as info:
        pair.server.next_event()
    assert not isinstance(info.value, ProtocolError)
    assert pair.server.state is State.ERROR
    # The server's last word has no rid: an integrity failure ends the connection.
    events = pair.send(pair.server, Error(info.value.code, info.value.message))
    assert pair.states == (State.CLOSED, State.CLOSED)
    assert isinstance(events[0], Error)
    assert isinstance(error_from_code(events[0].code, ""), IntegrityError)


def test_corrupt_download_chunk_is_an_integrity_error() -> None:
    pair = drive_request(ConnectionPair(), R.DOWNLOADING)
    pair.server.send(Chunk(RID, 0, DIGESTS[0], bytes(CS)))  # right digest per META, wrong data
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
    state = R.UPLOADING if direction == "upload" else R.DOWNLOADING
    pair = drive_request(ConnectionPair(), state)
    chunk_sender = C if direction == "upload" else S
    for i in in_flight:
        pair.send(ends(pair, chunk_sender)[0], chunk(i))
    refused_both_ways(pair, chunk_sender.peer, Ack(RID, ack), match="not in flight")


def test_refused_ack_has_no_effect() -> None:
    pair = drive_request(ConnectionPair(), R.UPLOADING)
    pair.c2s(chunk(0))
    with pytest.raises(LocalProtocolError):
        pair.server.send(Ack(RID, ((0, 1), (2, 1))))  # chunk 2 was never sent
    pair.s2c(Ack(RID, ((0, 1),)))
