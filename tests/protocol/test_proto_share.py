"""Shared downloads (PROTOCOL.md 9.1, 15.40-15.44) as one connection sees them: META with
`share`, the DOWN_SHARING state, chunks at most once per request, ACKs that never end it, DONE
with nothing in flight, DONE crossing a CANCEL, and each request's own windows."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from proto_support import (
    CS,
    FEEDERS,
    NCHUNKS,
    RID,
    TID,
    ConnectionPair,
    chunk,
    download,
    drain,
    drive,
    feed_conn_whole,
    refused_both_ways,
    sample_meta,
)

from fluxproto import (
    Ack,
    Cancel,
    Done,
    EndReason,
    Error,
    RemoteProtocolError,
    RequestEnded,
    RequestState,
    State,
    encode_bytes,
)

R = RequestState
BIG = {"window": 16 * CS}


def opened(feeder: Any = feed_conn_whole, **client: Any) -> ConnectionPair:
    return drive(ConnectionPair(feeder, client={**BIG, **client}, server=BIG), State.OPEN)


def sharing(
    want: Any = None, count: int = NCHUNKS, feeder: Any = feed_conn_whole, **client: Any
) -> ConnectionPair:
    """A connection whose request RID shares a transfer that still lacks `count` chunks."""
    pair = opened(feeder, **client)
    pair.c2s(download(want=want, share=True))
    pair.s2c(sample_meta(count, share=True))
    assert pair.rstates() == (R.DOWN_SHARING, R.DOWN_SHARING)
    return pair


@FEEDERS
def test_acks_never_end_a_sharing_request_done_does(feeder: Any) -> None:
    pair = sharing(feeder=feeder)
    for i in range(NCHUNKS):
        pair.s2c(chunk(i))
    assert pair.c2s(Ack(RID, ((0, NCHUNKS),))) == [Ack(RID, ((0, NCHUNKS),))]
    assert pair.rstates() == (R.DOWN_SHARING, R.DOWN_SHARING)
    assert pair.s2c(Done(RID)) == [Done(RID), RequestEnded(RID, EndReason.DOWNLOADED)]
    assert pair.client.requests == pair.server.requests == {}
    # Nothing of it can be on its way after DONE: a chunk now is an error, not a late frame.
    with pytest.raises(RemoteProtocolError, match="none were on their way"):
        pair.client.receive_frame(chunk(0))


def test_a_request_may_carry_any_part_of_the_transfer_or_none_of_it() -> None:
    pair = sharing(count=1)  # the other requests carried all but one chunk
    pair.s2c(chunk(2))
    pair.c2s(Ack(RID, ((2, 1),)))
    assert pair.s2c(Done(RID))[-1] == RequestEnded(RID, EndReason.DOWNLOADED)
    idle = sharing()
    assert idle.s2c(Done(RID))[-1] == RequestEnded(RID, EndReason.DOWNLOADED)


def test_each_chunk_at_most_once_on_one_request() -> None:
    pair = sharing()
    pair.s2c(chunk(1))
    refused_both_ways(pair, pair.server, chunk(1), "not expected")
    pair = sharing()
    pair.s2c(chunk(1))
    pair.c2s(Ack(RID, ((1, 1),)))
    refused_both_ways(pair, pair.server, chunk(1), "not expected")


def test_only_chunks_the_transfer_wants() -> None:
    pair = sharing(want=((1, 2),), count=2)
    refused_both_ways(pair, pair.server, chunk(0), "not expected")


def test_done_only_with_nothing_in_flight() -> None:
    pair = sharing()
    pair.s2c(chunk(0))
    refused_both_ways(pair, pair.server, Done(RID), "in flight")
    pair = sharing()
    pair.s2c(chunk(0))
    refused_both_ways(pair, pair.server, Error(422, "corrupt", RID), "in flight")


def test_done_ends_only_a_sharing_request() -> None:
    pair = opened()
    pair.c2s(download(share=True))
    pair.s2c(sample_meta())  # the server did not share: an ordinary download
    assert pair.rstates() == (R.DOWNLOADING, R.DOWNLOADING)
    refused_both_ways(pair, pair.server, Done(RID), "may not send DONE")
    pair = opened()
    pair.c2s(download(share=True))
    refused_both_ways(pair, pair.server, Done(RID), "may not send DONE")


def test_meta_shares_only_when_asked() -> None:
    pair = opened()
    pair.c2s(download())
    refused_both_ways(pair, pair.server, sample_meta(share=True), "did not ask to share")


@pytest.mark.parametrize("count", [1, 2, NCHUNKS])
def test_a_shared_meta_counts_what_the_transfer_still_lacks(count: int) -> None:
    pair = sharing(count=count)
    assert pair.client.requests[RID].transfer is not None


def test_a_shared_meta_counts_no_more_than_was_asked_for() -> None:
    pair = opened()
    pair.c2s(download(want=((0, 2),), share=True))
    refused_both_ways(pair, pair.server, sample_meta(3, share=True), "3 chunks, 2 were asked")


def test_a_shared_meta_with_nothing_to_send_ends_the_request() -> None:
    pair = opened()
    pair.c2s(download(share=True))
    assert pair.s2c(sample_meta(0, share=True))[-1] == RequestEnded(RID, EndReason.NO_CHUNKS)


def test_attaching_names_the_transfer() -> None:
    pair = opened()
    pair.c2s(download(attach=TID, share=True))
    other = dataclasses.replace(sample_meta(share=True), tid=bytes(16))
    refused_both_ways(pair, pair.server, other, "transfer id")
    pair = opened()
    pair.c2s(download(attach=TID, share=True))
    pair.s2c(sample_meta(1, share=True))
    assert pair.rstates() == (R.DOWN_SHARING, R.DOWN_SHARING)


def test_each_sharing_request_keeps_its_own_window() -> None:
    pair = sharing(transfer_window=CS, window=16 * CS)
    pair.s2c(chunk(0))
    assert not pair.server.can_send_chunk(RID, CS)  # this request's window is full
    refused_both_ways(pair, pair.server, chunk(1), "transfer window")


def test_done_crossing_a_cancel_ends_the_request() -> None:
    pair = sharing()
    pair.s2c(chunk(0))
    pair.c2s(Ack(RID, ((0, 1),)))
    done = encode_bytes(Done(RID))
    pair.server.send(Done(RID))
    pair.server.data_to_send()
    assert pair.send(pair.client, Cancel(RID)) == []  # the server had ended it: dropped
    pair.client.receive_data(done)
    assert drain(pair.client) == [Done(RID), RequestEnded(RID, EndReason.DOWNLOADED)]


def test_cancel_frees_the_clients_room_and_late_chunks_are_dropped() -> None:
    pair = sharing()
    pair.s2c(chunk(0))
    pair.server.send(chunk(1))  # on its way
    late = b"".join(bytes(b) for b in pair.server.data_to_send())
    pair.c2s(Cancel(RID))
    assert pair.client.received_inflight == 0
    pair.client.receive_data(late)
    assert drain(pair.client) == []
    events = pair.s2c(Error(499, "cancelled", RID))
    assert events[-1] == RequestEnded(RID, EndReason.CANCELLED)
    assert pair.server.sent_inflight == 0


def test_two_sharing_requests_on_one_connection_are_independent() -> None:
    """Each request checks its own chunks: the same chunk may come on both (a re-send)."""
    pair = opened()
    for rid in (RID, RID + 1):
        pair.c2s(download(rid, share=True))
        pair.s2c(sample_meta(rid=rid, share=True))
    pair.s2c(chunk(0))
    pair.s2c(chunk(0, RID + 1))
    pair.c2s(Ack(RID + 1, ((0, 1),)))
    pair.c2s(Ack(RID, ((0, 1),)))
    assert pair.rstates(RID + 1) == (R.DOWN_SHARING, R.DOWN_SHARING)
