"""fluxio.transports.quic.QuicChannel: how a round of aioquic's events reaches the stream map."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import PingAcknowledged, QuicEvent, StreamDataReceived

from fluxio.transports import aioquic_shim, quic
from fluxio.transports.quic import QuicChannel

Received = tuple[int, bytes, bool]


class StreamsSpy:
    """Stands in for the channel's stream map: records what it was handed."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    def receive(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.received.append((stream_id, bytes(data), end_stream))


def data(stream_id: int, payload: bytes, end: bool = False) -> StreamDataReceived:
    return StreamDataReceived(data=payload, end_stream=end, stream_id=stream_id)


def handled(events: list[QuicEvent], monkeypatch: pytest.MonkeyPatch) -> list[Received]:
    """What the stream map hears when a channel handles `events` as one round."""

    def deliver(protocol: Any) -> None:
        for event in events:
            protocol.quic_event_received(event)

    monkeypatch.setattr(aioquic_shim, "process_events", deliver)

    async def main() -> list[Received]:
        channel = QuicChannel(QuicConnection(configuration=quic.configuration(is_client=True)))
        spy = StreamsSpy()
        channel._streams = spy  # type: ignore[assignment]
        channel._handle_events()  # what _flush does before it transmits
        return spy.received

    return asyncio.run(main())


def test_each_chunk_stream_gets_its_data_of_the_round_in_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[QuicEvent] = [data(2, b"a1"), data(6, b"b1"), data(2, b"a2"), data(6, b"b2")]
    assert handled(events, monkeypatch) == [(2, b"a1a2", False), (6, b"b1b2", False)]


def test_any_other_event_hands_over_what_came_before_it_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Request and control streams (bidirectional), a chunk stream's end, and events that are
    not data keep their place against the chunk data around them."""
    events: list[QuicEvent] = [
        data(2, b"a1"),
        data(4, b"request"),
        data(2, b"a2"),
        data(6, b"b1"),
        PingAcknowledged(uid=1),
        data(6, b"b2"),
        data(2, b"a3", end=True),
        data(6, b"b3"),
    ]
    assert handled(events, monkeypatch) == [
        (2, b"a1", False),
        (4, b"request", False),
        (2, b"a2", False),
        (6, b"b1", False),
        (6, b"b2", False),
        (2, b"a3", True),
        (6, b"b3", False),
    ]
