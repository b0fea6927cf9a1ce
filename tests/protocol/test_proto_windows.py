"""Flow control in bytes (PROTOCOL.md section 7): a chunk goes only when the transfer's window and
the connection's window both have room, or nothing is in flight there; the receiver checks that
the sender kept to its windows; ACK and COMMITTED give the room back."""

from __future__ import annotations

import pytest
from proto_support import (
    CS,
    FILE,
    PATH,
    PIECES,
    RID,
    ConnectionPair,
    chunk,
    commit,
    committed,
    drive,
    refused_both_ways,
    sample_meta,
    status,
    upload,
)

from fluxproto import (
    Ack,
    Chunk,
    Connection,
    LocalProtocolError,
    OpenDownload,
    OpenUpload,
    Role,
    State,
    chunk_digest,
)
from fluxproto.frames import MAX_CHUNK, MAX_WINDOW, MIN_WINDOW


def opened(
    server: dict[str, int] | None = None, client: dict[str, int] | None = None
) -> ConnectionPair:
    return drive(ConnectionPair(client=client, server=server), State.OPEN)


def in_step(pair: ConnectionPair) -> None:
    """Both ends count the same bytes in flight (no frame is on its way)."""
    assert pair.client.sent_inflight == pair.server.received_inflight
    assert pair.server.sent_inflight == pair.client.received_inflight


def test_the_transfer_window_binds_one_request_not_the_others() -> None:
    pair = opened(server={"window": 4 * CS, "transfer_window": CS})
    pair.c2s(upload(1))
    pair.c2s(chunk(0, 1))
    assert not pair.client.can_send_chunk(1, CS)
    pair.c2s(upload(2))
    assert pair.client.can_send_chunk(2, CS)
    pair.c2s(chunk(0, 2))
    in_step(pair)
    assert pair.client.sent_inflight == 2 * CS
    refused_both_ways(pair, pair.client, chunk(1, 1), "transfer window of 4096 bytes")


def test_the_connection_window_binds_all_requests_together() -> None:
    pair = opened(server={"window": 2 * CS})
    for rid in (1, 2, 3):
        pair.c2s(upload(rid))
    pair.c2s(chunk(0, 1))
    pair.c2s(chunk(0, 2))
    assert not pair.client.can_send_chunk(3, CS)
    assert pair.client.can_send_chunk(3, 0)  # an empty chunk takes no room
    pair.s2c(status(1))
    pair.s2c(Ack(1, ((0, 1),)))
    assert pair.client.can_send_chunk(3, CS)
    pair.c2s(chunk(0, 3))
    in_step(pair)
    refused_both_ways(pair, pair.client, chunk(1, 2), "connection window of 8192 bytes")


@pytest.mark.parametrize(
    ("window", "transfer_window", "chunk_size", "in_flight"),
    [
        (MIN_WINDOW, MIN_WINDOW, 2 * MIN_WINDOW, 1),  # a chunk larger than both windows
        (4 * CS, CS, 2 * CS, 1),  # larger than the transfer window
        (3 * CS - 1, 3 * CS - 1, CS, 2),
        (3 * CS, 3 * CS, CS, 3),
        (MAX_WINDOW, MAX_WINDOW, MAX_CHUNK, 64),
    ],
)
def test_windows_count_bytes_and_one_chunk_always_fits(
    window: int, transfer_window: int, chunk_size: int, in_flight: int
) -> None:
    pair = opened(server={"window": window, "transfer_window": transfer_window})
    size = (in_flight + 1) * chunk_size
    pair.c2s(OpenUpload(RID, PATH, size, chunk_size))
    data = bytes(chunk_size)
    digest = chunk_digest(data)
    for i in range(in_flight):
        assert pair.client.can_send_chunk(RID, chunk_size)
        pair.client.send(Chunk(RID, i, digest, data))
    assert pair.client.sent_inflight == in_flight * chunk_size
    assert not pair.client.can_send_chunk(RID, chunk_size)
    with pytest.raises(LocalProtocolError, match="window"):
        pair.client.send(Chunk(RID, in_flight, digest, data))


def test_a_short_last_chunk_counts_its_own_bytes() -> None:
    pair = opened(server={"window": 2 * CS})
    pair.c2s(upload())
    pair.s2c(status())
    pair.c2s(chunk(2))  # 100 bytes
    pair.c2s(chunk(0))
    assert pair.client.sent_inflight == CS + 100
    assert not pair.client.can_send_chunk(RID, CS)
    pair.s2c(Ack(RID, ((2, 1),)))  # gives back exactly 100 bytes
    assert pair.client.sent_inflight == CS
    pair.c2s(chunk(1))
    in_step(pair)


def test_committed_gives_back_what_no_ack_did() -> None:
    pair = opened(server={"window": 4 * CS})
    pair.c2s(upload())
    for i in range(3):
        pair.c2s(chunk(i))
    pair.c2s(commit(sent=3))
    pair.s2c(status())
    pair.s2c(Ack(RID, ((1, 1),)))
    assert pair.client.sent_inflight == len(FILE) - CS
    pair.s2c(committed())
    assert pair.client.sent_inflight == pair.server.received_inflight == 0


def test_download_windows_are_the_clients() -> None:
    pair = opened(client={"window": 2 * CS, "transfer_window": CS}, server={"window": 8 * CS})
    for rid in (1, 2, 3):
        pair.c2s(OpenDownload(rid, PATH, chunk_size=CS))
        pair.s2c(sample_meta(rid=rid))
    pair.s2c(chunk(0, 1))
    assert not pair.server.can_send_chunk(1, CS)  # the client's transfer window
    pair.s2c(chunk(0, 2))
    assert not pair.server.can_send_chunk(3, 100)  # the client's connection window
    in_step(pair)
    refused_both_ways(pair, pair.server, chunk(2, 3), "connection window")


def test_only_the_transfers_sender_may_send_chunks() -> None:
    pair = opened()
    pair.c2s(upload(1))
    pair.c2s(OpenDownload(2, PATH, chunk_size=CS))
    pair.s2c(sample_meta(rid=2))
    assert pair.client.can_send_chunk(1, CS) and not pair.client.can_send_chunk(2, CS)
    assert pair.server.can_send_chunk(2, CS) and not pair.server.can_send_chunk(1, CS)
    assert not pair.client.can_send_chunk(3, CS)  # no such request
    idle = Connection(Role.CLIENT)
    assert not idle.can_send_chunk(1, CS)  # no connection yet


def test_ack_gives_back_the_acked_bytes_at_both_ends() -> None:
    pair = opened(server={"window": 4 * CS})
    pair.c2s(upload())
    pair.s2c(status())
    for i in range(3):
        pair.c2s(chunk(i))
    pair.s2c(Ack(RID, ((0, 1), (2, 1))))
    assert pair.client.sent_inflight == len(PIECES[1])
    in_step(pair)
    assert pair.client.requests[RID].inflight == pair.server.requests[RID].inflight == CS
