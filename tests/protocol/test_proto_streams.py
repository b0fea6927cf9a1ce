"""fluxproto.streams: which frames go on which QUIC stream, and chunks that overtake their META."""

from __future__ import annotations

import pytest
from proto_support import CS, PATH, WINDOW, chunk, drain, sample_meta

from fluxproto import (
    Chunk,
    Connection,
    Event,
    Frame,
    Hello,
    OpenDownload,
    OpenUpload,
    Ping,
    RemoteProtocolError,
    Role,
    Status,
    Welcome,
    chunk_digest,
    encode_bytes,
)
from fluxproto.streams import DATA_STREAMS, MAX_WAITING_CHUNKS, StreamMap


class Opener:
    """Stream IDs as a QUIC stack hands them out (RFC 9000: the low two bits say who opened
    the stream and whether it is unidirectional)."""

    def __init__(self, is_client: bool) -> None:
        initiator = 0 if is_client else 1
        self.next = {False: initiator, True: 2 | initiator}

    def __call__(self, unidirectional: bool) -> int:
        stream = self.next[unidirectional]
        self.next[unidirectional] += 4
        return stream


class End:
    """One end: its Connection and its StreamMap."""

    def __init__(self, role: Role) -> None:
        self.conn = Connection(role)
        is_client = role is Role.CLIENT
        self.streams = StreamMap(self.conn, is_client=is_client, open_stream=Opener(is_client))

    def send(self, frame: Frame) -> tuple[int, bytes]:
        """The stream `frame` goes on and its bytes."""
        self.conn.send(frame)
        stream = self.streams.stream_for(frame)
        return stream, b"".join(bytes(b) for b in self.conn.data_to_send())

    def receive(self, stream: int, data: bytes) -> list[Event]:
        """Feed what arrived on `stream`; the events for the session, chunks last."""
        self.streams.receive(stream, data, end_stream=False)
        return [*drain(self.conn), *self.streams.ready_chunks()]


def talk(sender: End, receiver: End, frame: Frame) -> int:
    stream, data = sender.send(frame)
    assert receiver.receive(stream, data) == [frame]
    return stream


def connected() -> tuple[End, End]:
    client, server = End(Role.CLIENT), End(Role.SERVER)
    talk(client, server, Hello(window=WINDOW * 4))
    talk(server, client, Welcome(window=WINDOW * 4))  # room for eight chunks either way
    return client, server


def test_frames_share_the_control_stream_and_chunks_take_turns_on_data_streams() -> None:
    client, server = connected()
    assert client.streams.control == server.streams.control == 0
    count = DATA_STREAMS + 2
    assert talk(client, server, OpenUpload(PATH, count * CS, CS)) == 0
    assert talk(server, client, Status()) == 0
    pieces = [bytes([i]) * CS for i in range(count)]
    used = [talk(client, server, Chunk(i, chunk_digest(p), p)) for i, p in enumerate(pieces)]
    assert used == [2, 6, 10, 14, 2, 6]  # the client's unidirectional streams, in turn


def test_a_chunk_overtaking_its_meta_waits_for_it() -> None:
    client, server = connected()
    talk(client, server, OpenDownload(PATH, chunk_size=CS))
    meta_stream, meta = server.send(sample_meta())
    data_stream, first = server.send(chunk(0))
    assert data_stream == 3  # the server opens its own data streams
    assert client.receive(data_stream, first) == []  # META is still on its way
    assert client.receive(meta_stream, meta) == [sample_meta(), chunk(0)]


def test_the_server_learns_the_control_stream_and_refuses_another() -> None:
    server = End(Role.SERVER)
    server.streams.receive(4, encode_bytes(Hello()), end_stream=False)
    assert server.streams.control == 4
    with pytest.raises(RemoteProtocolError, match="unexpected bidirectional stream 8"):
        server.streams.receive(8, encode_bytes(Ping(1)), end_stream=False)


def test_data_before_the_handshake_is_refused_before_it_is_decoded() -> None:
    server = End(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match="before the handshake"):
        server.streams.receive(2, encode_bytes(chunk(0)), end_stream=False)


def test_only_chunks_travel_on_data_streams() -> None:
    _, server = connected()
    with pytest.raises(RemoteProtocolError, match="PING on data stream 2"):
        server.streams.receive(2, encode_bytes(Ping(1)), end_stream=False)


def test_a_peer_may_not_park_chunks_without_end() -> None:
    client, _ = connected()
    with pytest.raises(RemoteProtocolError, match="too many chunks"):
        for _ in range(MAX_WAITING_CHUNKS + 1):
            client.streams.receive(3, encode_bytes(chunk(2)), end_stream=False)
