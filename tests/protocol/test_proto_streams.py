"""fluxproto.streams: the version-2 QUIC mapping (connection stream, a stream per request, chunk
streams), chunks that overtake their request, and what each end may put where."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from proto_support import (
    CS,
    DIGESTS,
    NCHUNKS,
    PIECES,
    TID,
    chunk,
    commit,
    committed,
    download,
    drain,
    sample_meta,
    status,
    upload,
)

from fluxproto import (
    Ack,
    Chunk,
    Commit,
    Committed,
    Connection,
    Entry,
    Error,
    Event,
    Frame,
    Info,
    OpenUpload,
    Ping,
    RemoteProtocolError,
    RequestEnded,
    Role,
    Stat,
    Status,
    chunk_digest,
    encode_bytes,
)
from fluxproto.request import EndReason
from fluxproto.streams import CHUNK_STREAMS, StreamMap, is_chunk_stream

WINDOW = 8 * CS


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


Write = tuple[int, bytes, bool]


class End:
    """One end: its Connection, its StreamMap, and the stream writes not yet delivered."""

    def __init__(self, role: Role) -> None:
        self.conn = Connection(role, window=WINDOW)
        self.writes: list[Write] = []
        self.freed = 0
        self.streams = StreamMap(
            self.conn,
            open_stream=Opener(role is Role.CLIENT),
            write=lambda s, data, fin: self.writes.append((s, bytes(data), fin)),
            on_freed=self._freed,
        )

    def _freed(self) -> None:
        self.freed += 1

    def send(self, *frames: Frame) -> list[Write]:
        """Send frames; the writes made before (taken from `writes`), then one write per frame
        (its header and payload joined) and any stream it finished."""
        out, self.writes = self.writes, []
        for frame in frames:
            self.streams.send(frame)
            data = b"".join(d for _, d, _ in self.writes)
            out.append((self.writes[0][0], data, False))
            out += [w for w in self.writes if w[2]]
            self.writes = []
        return out

    def receive(self, writes: Iterable[Write]) -> list[Event]:
        for stream, data, fin in writes:
            self.streams.receive(stream, data, fin)
        return drain(self.conn)


def talk(sender: End, receiver: End, *frames: Frame) -> list[Event]:
    return receiver.receive(sender.send(*frames))


def streams_of(writes: list[Write]) -> list[int]:
    return [s for s, data, _ in writes if data]


def connected() -> tuple[End, End]:
    client, server = End(Role.CLIENT), End(Role.SERVER)
    talk(client, server, client.conn.hello())
    talk(server, client, server.conn.welcome())
    return client, server


def test_connection_frames_share_stream_0_and_each_request_gets_its_own_stream() -> None:
    client, server = connected()
    assert client.streams.control == server.streams.control == 0
    assert streams_of(client.send(Ping(1))) == [0]
    opened = client.send(Stat(1, "a"), Stat(2, "b"))
    assert streams_of(opened) == [4, 8]
    assert [e for e in server.receive(opened)] == [Stat(1, "a"), Stat(2, "b")]
    # The server answers each request on its stream, and finishes its side with the answer.
    answer = server.send(Info(2, sample_entry("b")))
    assert answer == [(8, encode_bytes(Info(2, sample_entry("b"))), False), (8, b"", True)]
    assert client.receive(answer) == [
        Info(2, sample_entry("b")),
        RequestEnded(2, EndReason.ANSWERED),
    ]
    # The client finished its side when the answer ended the request.
    assert client.writes == [(8, b"", True)]


def sample_entry(name: str) -> Entry:
    return Entry(name, "file", 1)


def test_a_small_file_travels_in_one_flight_on_its_request_stream() -> None:
    client, server = connected()
    data = b"hello"
    flight = client.send(
        OpenUpload(1, "hello.txt", len(data), CS),
        Chunk(1, 0, chunk_digest(data), data),
        Commit(1, chunk_digest(data), 1),
    )
    assert streams_of(flight) == [4, 4, 4]
    events = server.receive(flight)
    assert [type(e).__name__ for e in events] == ["OpenUpload", "Chunk", "Commit"]
    done = server.send(Status(1, TID), Committed(1, len(data), chunk_digest(data)))
    assert done[-1] == (4, b"", True)
    assert client.receive(done)[-1] == RequestEnded(1, EndReason.COMMITTED)
    assert client.conn.sent_inflight == 0


def test_a_large_transfer_spreads_its_chunks_over_chunk_streams_in_turn() -> None:
    client, server = connected()
    talk(client, server, upload(rid=1))
    talk(server, client, status(rid=1))
    count = CHUNK_STREAMS + 2
    size = count * CS
    client.send(OpenUpload(3, "big", size, CS))
    used = [streams_of(client.send(Chunk(3, i, DIGESTS[0], PIECES[0])))[0] for i in range(count)]
    assert used == [2, 6, 10, 14, 2, 6]  # the client's unidirectional streams, in turn
    assert all(is_chunk_stream(stream) for stream in used)
    assert not any(is_chunk_stream(stream) for stream in (0, 1, 4, 5))  # bidirectional ones
    small = client.send(Chunk(1, 0, DIGESTS[0], PIECES[0]))
    assert streams_of(small) == [10]  # a transfer of three chunks spreads them too


def test_chunks_that_overtake_their_upload_wait_and_commit_waits_for_them() -> None:
    client, server = connected()
    writes = client.send(upload(), *(chunk(i) for i in range(NCHUNKS)), commit(sent=NCHUNKS))
    request = [w for w in writes if w[0] == 4]
    chunks = [w for w in writes if w[0] != 4]
    assert len(chunks) == NCHUNKS  # three chunks: the transfer spreads them
    assert server.receive(chunks) == []  # the upload is not open yet: they wait
    assert server.streams.waiting_chunks == NCHUNKS
    events = server.receive(request)
    assert events == [upload(), *(chunk(i) for i in range(NCHUNKS)), commit(sent=NCHUNKS)]
    assert server.streams.waiting_chunks == 0


def test_commit_arriving_before_its_chunks_is_reported_after_the_last() -> None:
    client, server = connected()
    writes = client.send(upload(), *(chunk(i) for i in range(NCHUNKS)), commit(sent=NCHUNKS))
    request = [w for w in writes if w[0] == 4]
    chunks = [w for w in writes if w[0] != 4]
    assert server.receive(request) == [upload()]  # COMMIT waits for the chunks it counts
    assert server.receive(chunks[:2]) == [chunk(0), chunk(1)]
    assert server.receive(chunks[2:]) == [chunk(2), commit(sent=NCHUNKS)]


def test_a_download_chunk_that_overtakes_its_meta_waits_for_it() -> None:
    client, server = connected()
    talk(client, server, download())
    meta = server.send(sample_meta())
    first = server.send(chunk(0))
    assert streams_of(first) == [3]  # the server opens its own chunk streams
    assert client.receive(first) == []
    assert client.receive(meta) == [sample_meta(), chunk(0)]


def test_a_download_counts_toward_the_limit_until_the_server_finishes_its_stream() -> None:
    client, server = connected()
    talk(client, server, download())
    talk(server, client, sample_meta(), *(chunk(i) for i in range(NCHUNKS)))
    last = client.send(Ack(1, ((0, NCHUNKS),)))  # ends the download at the client
    assert last[-1] == (4, b"", True)
    assert client.conn.requests == {}
    assert client.streams.requests_in_use == 1  # PROTOCOL.md 15.32: not yet free
    answer = server.receive(last) and server.writes
    assert answer == [(4, b"", True)]
    client.receive(server.send())
    assert client.streams.requests_in_use == 0
    assert client.freed == 1


def test_an_error_ends_the_request_and_the_late_frames_on_its_stream_are_dropped() -> None:
    client, server = connected()
    flight = client.send(upload(), chunk(0))
    events = server.receive(flight[:1])
    assert events == [upload()]
    refusal = server.send(Error(403, "no", 1))
    assert refusal[-1] == (4, b"", True)
    assert server.receive(flight[1:]) == []  # the chunk crossed the ERROR: dropped
    assert client.receive(refusal) == [Error(403, "no", 1), RequestEnded(1, EndReason.ERROR)]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([Stat(1, "a"), Stat(2, "b")], "STAT for request 2 on the stream of request 1"),
        ([Stat(1, "a"), Ping(3)], "PING for request None on the stream of request 1"),
        ([Ping(3)], "PING opens request stream 4"),
        ([commit(sent=0)], "COMMIT opens request stream 4"),
    ],
)
def test_a_request_stream_carries_one_request(frames: list[Frame], match: str) -> None:
    _, server = connected()
    data = b"".join(encode_bytes(f) for f in frames)
    with pytest.raises(RemoteProtocolError, match=match):
        server.streams.receive(4, data, False)


def test_the_connection_stream_carries_no_request_frame() -> None:
    _, server = connected()
    with pytest.raises(RemoteProtocolError, match="STAT on the connection stream"):
        server.streams.receive(0, encode_bytes(Stat(1, "a")), False)


def test_streams_before_the_handshake_are_refused_before_anything_is_decoded() -> None:
    server = End(Role.SERVER)
    server.streams.receive(0, encode_bytes(Ping(1))[:3], False)  # the connection stream
    with pytest.raises(RemoteProtocolError, match="before the handshake"):
        server.streams.receive(2, encode_bytes(chunk(0)), False)
    with pytest.raises(RemoteProtocolError, match="before the handshake"):
        server.streams.receive(4, encode_bytes(Stat(1, "a")), False)


def test_the_server_opens_no_bidirectional_stream_and_only_chunks_travel_on_chunk_streams() -> None:
    client, server = connected()
    with pytest.raises(RemoteProtocolError, match="unexpected bidirectional stream 1"):
        client.streams.receive(1, encode_bytes(Info(1, sample_entry("x"))), False)
    with pytest.raises(RemoteProtocolError, match="PING on chunk stream 2"):
        server.streams.receive(2, encode_bytes(Ping(1)), False)


def test_finishing_a_request_stream_while_the_request_is_open_is_an_error() -> None:
    client, server = connected()
    server.receive(client.send(Stat(1, "a")))
    with pytest.raises(RemoteProtocolError, match="stream 4 finished while request 1 is open"):
        server.streams.receive(4, b"", True)


def test_a_peer_may_not_park_more_than_a_window_of_chunks() -> None:
    client, _ = connected()
    with pytest.raises(RemoteProtocolError, match="wait for requests that are not open"):
        for _ in range(WINDOW // CS + 1):
            client.streams.receive(3, encode_bytes(chunk(0, rid=9)), False)


def test_every_request_stream_is_forgotten_once_both_ends_finished() -> None:
    client, server = connected()
    for rid in range(1, 4):
        talk(client, server, upload(rid=rid), *(chunk(i, rid) for i in range(NCHUNKS)))
        talk(server, client, status(rid=rid))
        talk(client, server, commit(rid=rid, sent=NCHUNKS))
        events = talk(server, client, committed(rid=rid))
        assert events[-1] == RequestEnded(rid, EndReason.COMMITTED)
        server.receive(client.send())  # the client's FIN
    assert client.streams._streams == server.streams._streams == {}
