"""How a connection ends: GOODBYE, ERROR without rid, end of stream (clean or not), input after
an error or a close, and frames that cross a close."""

from __future__ import annotations

import pytest
from proto_support import (
    CS,
    DIGESTS,
    PIECES,
    RID,
    ConnectionPair,
    chunk,
    drain,
    drive,
    drive_request,
    ends,
    prefix,
)

from fluxproto import (
    Chunk,
    ConnectionClosed,
    Error,
    FrameType,
    Goodbye,
    Ping,
    RemoteProtocolError,
    RequestState,
    Role,
    State,
    encode_bytes,
    iter_indices,
)
from fluxproto.frames import MAX_CHUNK

C, S = Role.CLIENT, Role.SERVER
T = FrameType
R = RequestState


# --- control frames and the end of the connection -------------------------------------------------


@pytest.mark.parametrize("state", [R.UPLOADING, R.DOWNLOADING, R.STATING])
@pytest.mark.parametrize("role", list(Role))
def test_goodbye_ends_every_request(state: R, role: Role) -> None:
    pair = drive_request(ConnectionPair(), state)
    sender, receiver = ends(pair, role)
    assert pair.send(sender, Goodbye("shutting down")) == [Goodbye("shutting down")]
    assert pair.states == (State.CLOSED, State.CLOSED)
    assert sender.requests == receiver.requests == {}
    assert sender.sent_inflight == receiver.received_inflight == 0
    receiver.receive_data(b"")
    assert receiver.next_event() == ConnectionClosed(clean=True)


@pytest.mark.parametrize("role", list(Role))
def test_error_without_rid_ends_the_connection(role: Role) -> None:
    pair = drive_request(ConnectionPair(), R.UPLOADING)
    sender, _ = ends(pair, role)
    pair.send(sender, Error(503, "shutting down"))
    assert pair.states == (State.CLOSED, State.CLOSED)
    assert pair.client.requests == pair.server.requests == {}


def test_eof_with_no_request_open_is_clean() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.client.receive_data(b"")
    assert pair.client.next_event() == ConnectionClosed(clean=True)
    assert pair.client.state is State.CLOSED
    assert pair.client.next_event() is None


def test_frames_before_eof_come_first() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.client.receive_data(encode_bytes(Ping(1)) + encode_bytes(Goodbye()))
    pair.client.receive_data(b"")
    assert drain(pair.client) == [Ping(1), Goodbye(), ConnectionClosed(clean=True)]


@pytest.mark.parametrize("cut", [1, 8, 9, 12])
def test_eof_mid_frame_is_unclean(cut: int) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.client.receive_data(encode_bytes(Ping(1))[:cut])
    pair.client.receive_data(b"")
    assert pair.client.next_event() == ConnectionClosed(clean=False)
    assert pair.client.state is State.CLOSED


@pytest.mark.parametrize("state", [R.UP_OPENING, R.DOWNLOADING, R.STATING, R.CANCELLING])
def test_eof_with_a_request_open_is_unclean(state: R) -> None:
    pair = drive_request(ConnectionPair(), state)
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ConnectionClosed(clean=False)
    assert pair.server.requests == {}


@pytest.mark.parametrize("state", [State.START, State.HANDSHAKE])
def test_eof_before_the_handshake_is_unclean(state: State) -> None:
    pair = drive(ConnectionPair(), state)
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ConnectionClosed(clean=False)


def test_after_a_remote_error_input_is_discarded() -> None:
    conn = drive(ConnectionPair(), State.OPEN).server
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
    with pytest.raises(RemoteProtocolError):
        conn.receive_frame(Ping(1))
    assert conn.state is State.ERROR


def test_oversized_frame_prefix_is_an_error_in_the_connection() -> None:
    conn = drive(ConnectionPair(), State.OPEN).server
    conn.receive_data(prefix(T.CHUNK, 1, MAX_CHUNK + 1))
    with pytest.raises(RemoteProtocolError, match="payload"):
        conn.next_event()


@pytest.mark.parametrize("case", ["goodbye-crosses-ping", "error-crosses-chunk"])
def test_frames_crossing_a_close_are_not_errors(case: str) -> None:
    if case == "goodbye-crosses-ping":
        pair = drive(ConnectionPair(), State.OPEN)
        pair.server.send(Ping(1))  # in flight
        pair.client.send(Goodbye())
        crossing, receiver = pair.server.data_to_send(), pair.client
    else:
        pair = drive_request(ConnectionPair(), R.UPLOADING)
        pair.client.send(chunk(0))  # in flight
        pair.server.send(Error(507, "no space"))  # no rid: the connection ends
        crossing, receiver = pair.client.data_to_send(), pair.server
    receiver.receive_data(b"".join(bytes(b) for b in crossing))
    receiver.receive_data(b"")
    assert drain(receiver)[-1] == ConnectionClosed(clean=True)
    receiver.receive_frame(Ping(2))  # a frame from another stream after the close: dropped
    assert receiver.next_event() is None


def test_last_word_error_from_the_client_is_delivered() -> None:
    pair = drive_request(ConnectionPair(), R.DOWNLOADING)
    pair.client.receive_data(encode_bytes(Chunk(RID, 1, DIGESTS[0], PIECES[1])))  # wrong digest
    with pytest.raises(RemoteProtocolError):
        pair.client.next_event()
    events = pair.send(pair.client, Error(400, "chunk 1 digest differs from META"))
    assert events == [Error(400, "chunk 1 digest differs from META")]


def test_chunk_longer_than_the_transfer_chunk_size_fails_at_the_prefix() -> None:
    conn = drive_request(ConnectionPair(), R.UPLOADING).server
    assert conn.chunk_limit() == conn.chunk_limit(RID) == CS
    conn.receive_data(prefix(T.CHUNK, 30, CS + 1))
    with pytest.raises(RemoteProtocolError, match="CHUNK payload"):
        conn.next_event()


def test_iter_indices_names_what_status_holds() -> None:
    assert list(iter_indices(((1, 2),))) == [1, 2]
