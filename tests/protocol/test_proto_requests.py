"""Several requests on one connection (PROTOCOL.md section 6): interleaved requests, ERROR with
a rid ending one of them, frames that were on their way when their request ended, CANCEL, rid reuse,
the requests limit, attaching to a transfer, and the per-request CHUNK limits."""

from __future__ import annotations

from typing import Any

import pytest
from proto_support import (
    CS,
    FEEDERS,
    FILE,
    FILE_DIGEST,
    FILE_ENTRY,
    PATH,
    PIECES,
    RID,
    TID,
    ConnectionPair,
    chunk,
    commit,
    committed,
    download,
    drain,
    drive,
    feed_conn_whole,
    prefix,
    refused_both_ways,
    sample_meta,
    status,
    upload,
)

from fluxproto import (
    Ack,
    Cancel,
    Cancelled,
    Chunk,
    Commit,
    Connection,
    EndReason,
    Entries,
    Error,
    Frame,
    FrameType,
    Info,
    ListDir,
    OpenUpload,
    RemoteProtocolError,
    RequestEnded,
    RequestState,
    Stat,
    State,
    encode_bytes,
    error_from_code,
)
from fluxproto.frames import MAX_RID
from fluxproto.multiplex import LATE_RIDS

R = RequestState
BIG = {"window": 16 * CS}
OTHER_TID = bytes(16)


def opened(feeder: Any = feed_conn_whole, **server: Any) -> ConnectionPair:
    return drive(ConnectionPair(feeder, client=BIG, server={**BIG, **server}), State.OPEN)


def wire_of(conn: Connection, *frames: Frame) -> bytes:
    """What `conn` puts on the wire for `frames` (sent now, delivered later or never)."""
    for frame in frames:
        conn.send(frame)
    return b"".join(bytes(b) for b in conn.data_to_send())


# --- several at once ------------------------------------------------------------------------------


@FEEDERS
def test_requests_interleave(feeder: Any) -> None:
    pair = opened(feeder)
    pair.c2s(upload(1))
    pair.c2s(download(2))
    pair.c2s(ListDir(3, "dir"))
    pair.c2s(Stat(4, PATH))
    pair.c2s(chunk(0, 1))  # an eager chunk of the upload
    pair.s2c(sample_meta(rid=2))
    pair.s2c(Entries(3, (FILE_ENTRY,), done=False))
    pair.s2c(chunk(0, 2))
    assert pair.s2c(Info(4, FILE_ENTRY))[-1] == RequestEnded(4, EndReason.ANSWERED)
    pair.s2c(status(1))
    pair.s2c(Ack(1, ((0, 1),)))
    pair.s2c(chunk(1, 2))
    pair.c2s(Ack(2, ((0, 2),)))
    pair.c2s(chunk(1, 1))
    pair.c2s(chunk(2, 1))
    pair.c2s(commit(1, sent=3))
    assert pair.s2c(Entries(3, done=True))[-1] == RequestEnded(3, EndReason.LISTED)
    pair.s2c(chunk(2, 2))
    assert pair.c2s(Ack(2, ((2, 1),)))[-1] == RequestEnded(2, EndReason.DOWNLOADED)
    assert sorted(pair.client.requests) == sorted(pair.server.requests) == [1]
    assert pair.s2c(committed(1))[-1] == RequestEnded(1, EndReason.COMMITTED)
    assert pair.client.requests == pair.server.requests == {}
    assert pair.client.sent_inflight == pair.client.received_inflight == 0
    assert pair.server.sent_inflight == pair.server.received_inflight == 0


def test_error_with_rid_ends_one_request_and_the_others_go_on() -> None:
    pair = opened()
    for rid in (1, 2):
        pair.c2s(upload(rid))
        pair.s2c(status(rid))
        pair.c2s(chunk(0, rid))
    events = pair.s2c(Error(507, "no space for this one", 1))
    assert events[1:] == [RequestEnded(1, EndReason.ERROR)]
    assert pair.states == (State.OPEN, State.OPEN)
    assert pair.client.sent_inflight == pair.server.received_inflight == CS  # request 2's
    pair.c2s(chunk(1, 2))
    pair.c2s(chunk(2, 2))
    pair.c2s(commit(2, sent=3))
    assert pair.s2c(committed(2))[-1] == RequestEnded(2, EndReason.COMMITTED)


# --- late frames ----------------------------------------------------------------------------------


def test_frames_on_their_way_when_the_request_ended_are_dropped_uncounted() -> None:
    pair = opened()
    client, server = pair.client, pair.server
    head = wire_of(client, upload())
    rest = wire_of(client, chunk(0), chunk(1), commit(sent=2))  # the one flight, in the pipe
    server.receive_data(head)
    assert drain(server) == [upload()]
    assert server.send(Error(403, "not yours", RID)) == RequestEnded(RID, EndReason.ERROR)
    assert server.chunk_limit(RID) == CS  # chunks of it may still come
    server.receive_data(rest)
    assert drain(server) == []
    assert server.received_inflight == 0
    assert pair.flush(server)[-1] == RequestEnded(RID, EndReason.ERROR)
    assert client.sent_inflight == 0
    # A new request reuses the rid: from now on its frames are the new request's.
    pair.c2s(upload())
    assert pair.rstates() == (R.UP_OPENING, R.UP_OPENING)


def test_a_late_chunk_must_still_fit_its_request() -> None:
    pair = opened()
    pair.c2s(upload())
    pair.s2c(Error(403, "not yours", RID))
    pair.server.receive_data(prefix(FrameType.CHUNK, 30, CS + 1))
    with pytest.raises(RemoteProtocolError, match="CHUNK payload"):
        pair.server.next_event()
    pair = opened()
    pair.c2s(Stat(RID, PATH))
    pair.s2c(Info(RID, FILE_ENTRY))
    with pytest.raises(RemoteProtocolError, match="ended request 1; none were on their way"):
        pair.server.receive_frame(Chunk(RID, 0, b"\0" * 16, b"x"))  # none was ever possible


def test_a_download_ends_by_error_only_with_nothing_in_flight() -> None:
    """The server (the chunks' sender) would free room before the client knows; over QUIC its
    next chunks could overtake the ERROR. It waits for the ACKs of what it sent (15.33)."""
    pair = opened()
    pair.c2s(download())
    pair.s2c(sample_meta())
    pair.s2c(chunk(0))
    refused_both_ways(pair, pair.server, Error(500, "disk gone", RID), "in flight")
    pair = opened()
    pair.c2s(download())
    pair.s2c(sample_meta())
    pair.s2c(chunk(0))
    pair.c2s(Ack(RID, ((0, 1),)))
    assert pair.s2c(Error(500, "disk gone", RID))[-1] == RequestEnded(RID, EndReason.ERROR)


def test_a_cancel_crossing_the_servers_error() -> None:
    pair = opened()
    pair.c2s(download())
    error = wire_of(pair.server, Error(404, "gone", RID))  # ended at the server
    assert pair.send(pair.client, Cancel(RID)) == []  # a late CANCEL: dropped
    pair.client.receive_data(error)
    assert drain(pair.client) == [Error(404, "gone", RID), RequestEnded(RID, EndReason.ERROR)]
    assert pair.client.requests == pair.server.requests == {}


def test_a_frame_for_a_request_never_opened_is_an_error() -> None:
    pair = opened()
    # The CHUNK is refused at its prefix already: no transfer is open that it could belong to.
    refused_both_ways(pair, pair.client, chunk(0, 9), "not open|no transfer open")
    pair = opened()
    refused_both_ways(pair, pair.server, Info(9, FILE_ENTRY), "not open")


def test_ended_rids_are_remembered_within_a_bound() -> None:
    pair = opened()
    for rid in range(1, LATE_RIDS + 2):
        pair.c2s(Stat(rid, PATH))
        pair.s2c(Info(rid, FILE_ENTRY))
    late = encode_bytes(Cancel(LATE_RIDS + 1))
    pair.server.receive_data(late)
    assert drain(pair.server) == []  # recently ended: dropped
    pair.server.receive_data(encode_bytes(Cancel(1)))
    with pytest.raises(RemoteProtocolError, match="not open"):
        pair.server.next_event()  # ended 4097 requests ago: forgotten


def test_forgetting_an_ended_upload_forgets_its_chunk_limit() -> None:
    conn = opened().server  # driven by hand: 4097 uploads, each refused at once
    for rid in range(1, LATE_RIDS + 2):
        conn.receive_data(encode_bytes(upload(rid)))
        drain(conn)
        conn.send(Error(403, "no", rid))
    assert conn.chunk_limit(1) == 0  # forgotten: its chunks are an error now
    assert conn.chunk_limit(2) == conn.chunk_limit(LATE_RIDS + 1) == CS
    assert conn.chunk_limit() == CS
    conn.receive_frame(chunk(0, LATE_RIDS))
    assert drain(conn) == []  # still remembered: dropped
    with pytest.raises(RemoteProtocolError, match="not open"):
        conn.receive_frame(chunk(0, 1))


# --- CANCEL ---------------------------------------------------------------------------------------


def test_cancel_an_upload() -> None:
    pair = opened()
    pair.c2s(upload())
    pair.c2s(chunk(0))
    assert pair.c2s(Cancel(RID)) == [Cancel(RID)]
    assert pair.rstates() == (R.CANCELLING, R.CANCELLING)
    assert not pair.client.can_send_chunk(RID, CS)
    events = pair.s2c(Error(Cancelled.code, "cancelled", RID))
    assert events[1:] == [RequestEnded(RID, EndReason.CANCELLED)]
    assert isinstance(error_from_code(499, "cancelled"), Cancelled)
    assert pair.client.sent_inflight == pair.server.received_inflight == 0


def test_cancelling_a_download_frees_the_clients_room_at_once() -> None:
    """The receiver of the chunks gives their room back first, the sender at ERROR 499."""
    pair = opened()
    pair.c2s(download())
    pair.s2c(sample_meta())
    pair.s2c(chunk(0))
    pair.c2s(Cancel(RID))
    assert (pair.client.received_inflight, pair.server.sent_inflight) == (0, CS)
    pair.s2c(Error(499, "cancelled", RID))
    assert pair.server.sent_inflight == 0


def test_frames_crossing_a_cancel_are_dropped() -> None:
    pair = opened()
    pair.c2s(download())
    crossing = wire_of(pair.server, sample_meta(), chunk(0), chunk(1))
    pair.client.send(Cancel(RID))  # before the client read any of it
    pair.client.receive_data(crossing)
    assert drain(pair.client) == []  # META and chunks of a cancelled download: dropped
    assert pair.client.received_inflight == 0
    assert pair.client.chunk_limit(RID) == CS  # META told the size of what may still come
    assert pair.flush(pair.client) == [Cancel(RID)]
    pair.server.send(Error(499, "cancelled", RID))
    assert pair.flush(pair.server)[-1] == RequestEnded(RID, EndReason.CANCELLED)
    assert pair.server.sent_inflight == 0


@pytest.mark.parametrize(
    ("request_frame", "answer", "reason"),
    [
        (Stat(RID, PATH), Info(RID, FILE_ENTRY), EndReason.ANSWERED),
        (download(want=()), sample_meta(count=0), EndReason.NO_CHUNKS),
        (ListDir(RID, "d"), Entries(RID, done=True), EndReason.LISTED),
    ],
    ids=["info", "meta-count-0", "last-page"],
)
def test_a_request_the_server_ended_before_it_saw_the_cancel(
    request_frame: Frame, answer: Frame, reason: EndReason
) -> None:
    pair = opened()
    pair.c2s(request_frame)
    answered = wire_of(pair.server, answer)
    # The server ended it already: the CANCEL is late there, and dropped.
    assert pair.send(pair.client, Cancel(RID)) == []
    pair.client.receive_data(answered)
    assert drain(pair.client) == [answer, RequestEnded(RID, reason)]
    assert pair.client.requests == pair.server.requests == {}


def test_a_commit_that_crossed_the_cancel() -> None:
    pair = opened()
    pair.c2s(upload())
    pair.c2s(chunk(0))
    pair.c2s(commit(sent=1))
    answered = wire_of(pair.server, status(), committed())
    assert pair.send(pair.client, Cancel(RID)) == []
    pair.client.receive_data(answered)  # STATUS is dropped, COMMITTED still ends the request
    assert drain(pair.client) == [committed(), RequestEnded(RID, EndReason.COMMITTED)]


def test_the_server_drops_chunks_that_cross_a_cancel() -> None:
    pair = opened()
    pair.c2s(upload())
    pair.c2s(Cancel(RID))
    pair.server.receive_frame(chunk(1))  # from a chunk stream, sent before the CANCEL
    assert drain(pair.server) == []
    assert pair.server.received_inflight == 0
    with pytest.raises(RemoteProtocolError, match="4097 bytes for cancelled request 1"):
        pair.server.receive_frame(Chunk(RID, 0, b"\0" * 16, bytes(CS + 1)))


def test_cancel_abandons_a_commit_waiting_for_its_chunks() -> None:
    pair = opened()
    pair.server.receive_data(wire_of(pair.client, upload(), chunk(0)))
    pair.client.send(chunk(1))
    pair.client.data_to_send()  # chunk 1 travels on another stream
    pair.server.receive_data(wire_of(pair.client, commit(sent=2), Cancel(RID)))
    assert drain(pair.server) == [upload(), chunk(0), Cancel(RID)]
    assert pair.server.requests[RID].commit is None
    pair.server.receive_frame(chunk(1))
    assert drain(pair.server) == []


# --- rids and the requests limit ------------------------------------------------------------------


def test_an_rid_is_reused_only_after_its_request_ended() -> None:
    pair = opened()
    pair.c2s(Stat(RID, PATH))
    refused_both_ways(pair, pair.client, Stat(RID, "other"), "already open")
    pair = opened()
    pair.c2s(Stat(RID, PATH))
    pair.s2c(Info(RID, FILE_ENTRY))
    pair.c2s(upload())
    assert pair.rstates() == (R.UP_OPENING, R.UP_OPENING)


def test_next_rid_increases_skips_open_rids_and_wraps() -> None:
    pair = opened()
    client = pair.client
    assert [client.next_rid(), client.next_rid()] == [1, 2]
    pair.c2s(Stat(3, PATH))
    assert client.next_rid() == 4  # 3 is open
    client._table._next_rid = MAX_RID
    assert client.next_rid() == MAX_RID
    assert client.next_rid() == 1


def test_the_servers_requests_limit() -> None:
    pair = opened(requests=2)
    assert pair.client.peer.requests == 2
    pair.c2s(Stat(1, PATH))
    pair.c2s(upload(2))
    pair.c2s(Cancel(2))  # a request being cancelled still counts
    refused_both_ways(pair, pair.client, Stat(3, PATH), "2 may be open")
    pair = opened(requests=2)
    pair.c2s(Stat(1, PATH))
    pair.c2s(Stat(2, PATH))
    pair.s2c(Info(1, FILE_ENTRY))
    pair.c2s(Stat(3, PATH))


# --- attach ---------------------------------------------------------------------------------------


def test_attach_joins_the_transfer_named() -> None:
    pair = opened()
    pair.c2s(upload(attach=TID))
    pair.s2c(status(tid=TID))
    assert pair.client.requests[RID].tid == TID
    pair.c2s(download(2, attach=TID))
    pair.s2c(sample_meta(rid=2))  # sample META names TID
    pair = opened()
    pair.c2s(upload(attach=OTHER_TID))
    refused_both_ways(pair, pair.server, status(tid=TID), "transfer id differs")
    pair = opened()
    pair.c2s(download(attach=OTHER_TID))
    refused_both_ways(pair, pair.server, sample_meta(), "transfer id differs")


def test_attaching_to_an_unknown_transfer_is_404_and_the_client_opens_normally() -> None:
    pair = opened()
    pair.c2s(upload(attach=OTHER_TID))
    assert pair.s2c(Error(404, "no such transfer", RID))[-1] == RequestEnded(RID, EndReason.ERROR)
    pair.c2s(upload())
    pair.s2c(status())


def test_open_upload_carries_the_files_mtime() -> None:
    pair = opened()
    frame = OpenUpload(RID, PATH, len(FILE), CS, 0o600, mtime_ns=1_700_000_000_000_000_000)
    assert pair.c2s(frame) == [frame]


# --- CHUNK limits for other streams ---------------------------------------------------------------


def test_chunk_limits_per_request_and_over_all() -> None:
    pair = opened()
    server = pair.server
    pair.c2s(upload(1))
    pair.c2s(OpenUpload(2, PATH, len(FILE), 2 * CS))
    pair.c2s(Stat(3, PATH))
    assert (server.chunk_limit(1), server.chunk_limit(2), server.chunk_limit(3)) == (CS, 2 * CS, 0)
    assert server.chunk_limit() == 2 * CS  # the prefix check of the shared stream
    assert pair.client.chunk_limit() == 0  # the server sends no chunk to the client here
    # A chunk of request 1 as long as request 2's chunks passes the prefix check, not the
    # per-request one, once its header is decoded.
    bad = Chunk(1, 0, b"\0" * 16, bytes(2 * CS))
    server.receive_data(encode_bytes(bad))
    with pytest.raises(RemoteProtocolError, match="expected 4096"):
        server.next_event()


def test_chunk_limit_falls_when_no_more_chunks_can_come() -> None:
    pair = opened()
    pair.c2s(OpenUpload(1, PATH, CS, 2 * CS))
    pair.c2s(Chunk(1, 0, chunk(0).digest, PIECES[0]))
    assert pair.server.chunk_limit() == 2 * CS
    pair.c2s(Commit(1, chunk(0).digest, 1))
    assert pair.server.chunk_limit() == 0  # every chunk COMMIT counts is in


def test_the_sample_file_digest_is_the_whole_files() -> None:
    assert chunk(0).digest != FILE_DIGEST
