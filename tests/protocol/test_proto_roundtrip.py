"""decode(encode(f)) == f for valid frames of every type, however the bytes are split."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_strategies import FRAME_STRATEGIES, ROUNDTRIP_EXAMPLES, any_frame
from proto_support import (
    drain_reader,
    feed_buffered,
    feed_bytewise,
    feed_split,
    feed_whole,
)

from fluxproto import (
    Chunk,
    Frame,
    FrameReader,
    Ping,
    RemoteProtocolError,
    chunk_digest,
    decode,
    encode,
    encode_bytes,
)
from fluxproto.codec import PREFIX_SIZE
from fluxproto.frames import FRAME_CLASSES, FrameType

RT = settings(
    max_examples=ROUNDTRIP_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INVALID_TYPES = sorted(set(range(256)) - {int(t) for t in FrameType})


def test_every_frame_type_has_a_strategy() -> None:
    assert set(FRAME_STRATEGIES) == set(FRAME_CLASSES)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roundtrip_each_type(ftype: FrameType, data: st.DataObject) -> None:
    frame = data.draw(FRAME_STRATEGIES[ftype])
    assert type(frame) is FRAME_CLASSES[ftype]
    raw = encode_bytes(frame)
    hlen = int.from_bytes(raw[1:5], "big")
    assert decode(raw[0], raw[PREFIX_SIZE : PREFIX_SIZE + hlen], raw[PREFIX_SIZE + hlen :]) == frame
    reader = FrameReader()
    reader.feed(raw)
    assert drain_reader(reader) == [frame]


@RT
@given(frame=any_frame)
def test_roundtrip_fed_whole(frame: Frame) -> None:
    reader = FrameReader()
    feed_whole(reader, encode_bytes(frame))
    assert drain_reader(reader) == [frame]
    assert reader.at_boundary


@RT
@given(frame=any_frame)
def test_roundtrip_fed_one_byte_at_a_time(frame: Frame) -> None:
    raw = encode_bytes(frame)
    reader = FrameReader()
    for i in range(len(raw) - 1):
        reader.feed(raw[i : i + 1])
        assert reader.next_frame() is None  # nothing comes out before the last byte
        assert not reader.at_boundary
    reader.feed(raw[-1:])
    assert drain_reader(reader) == [frame]
    assert reader.at_boundary


@RT
@given(frame=any_frame, cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_roundtrip_fed_in_random_splits(frame: Frame, cuts: list[int]) -> None:
    reader = FrameReader()
    feed_split(reader, encode_bytes(frame), cuts)
    assert drain_reader(reader) == [frame]


@RT
@given(frame=any_frame, step=st.integers(1, 64))
def test_roundtrip_through_get_buffer(frame: Frame, step: int) -> None:
    reader = FrameReader()
    feed_buffered(reader, encode_bytes(frame), step)
    assert drain_reader(reader) == [frame]


@RT
@given(frames=st.lists(any_frame, min_size=2, max_size=5), cuts=st.lists(st.integers(0, 5000)))
def test_roundtrip_concatenated(frames: list[Frame], cuts: list[int]) -> None:
    raw = b"".join(encode_bytes(f) for f in frames)
    for feed in (feed_whole, feed_bytewise, lambda r, d: feed_split(r, d, cuts)):
        reader = FrameReader()
        feed(reader, raw)
        assert drain_reader(reader) == frames


@RT
@given(frames=st.lists(any_frame, min_size=1, max_size=3), garbage=st.binary(min_size=1))
def test_trailing_garbage_after_valid_frames(frames: list[Frame], garbage: bytes) -> None:
    """Valid frames come out first and in order; garbage then stays pending, decodes as more
    frames, or raises RemoteProtocolError. Nothing else."""
    raw = b"".join(encode_bytes(f) for f in frames)
    for feed in (feed_whole, feed_bytewise):
        reader = FrameReader()
        feed(reader, raw)
        with contextlib.suppress(RemoteProtocolError):
            feed(reader, garbage)
        assert drain_reader(reader)[: len(frames)] == frames


@RT
@given(
    frames=st.lists(any_frame, min_size=1, max_size=3),
    bad_type=st.sampled_from(INVALID_TYPES),
    rest=st.binary(),
)
def test_trailing_garbage_with_invalid_type(
    frames: list[Frame], bad_type: int, rest: bytes
) -> None:
    """Garbage that starts with an unknown type byte: pending until 9 bytes, then an error."""
    garbage = bytes([bad_type]) + rest
    reader = FrameReader()
    reader.feed(b"".join(encode_bytes(f) for f in frames))
    if len(garbage) < PREFIX_SIZE:
        reader.feed(garbage)
        assert not reader.at_boundary
    else:
        with pytest.raises(RemoteProtocolError, match="unknown frame type"):
            reader.feed(garbage)
    assert drain_reader(reader) == frames


@RT
@given(frame=any_frame)
def test_encode_parts_join_to_encode_bytes(frame: Frame) -> None:
    parts = encode(frame)
    assert b"".join(bytes(p) for p in parts) == encode_bytes(frame)
    assert all(len(p) > 0 for p in parts)
    payload = frame.payload()
    if len(payload):
        assert parts[-1] is payload


def test_reader_is_broken_after_an_error() -> None:
    reader = FrameReader()
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"\x00" * 9)
    with pytest.raises(RemoteProtocolError):
        reader.feed(encode_bytes(Ping(1)))
    with pytest.raises(RemoteProtocolError):
        reader.get_buffer()
    assert reader.next_frame() is None


def test_payload_is_received_into_the_buffer_get_buffer_handed_out() -> None:
    """Copy avoidance: the chunk's data is the very buffer the transport wrote the payload into."""
    data = bytes(range(256)) * 20
    raw = encode_bytes(Chunk(1, 3, chunk_digest(data), data))
    reader = FrameReader()
    views = []
    pos = 0
    while pos < len(raw):
        buf = reader.get_buffer()
        views.append(buf)
        n = len(buf)
        buf[:n] = raw[pos : pos + n]
        pos += n
        reader.buffer_updated(n)
    frame = reader.next_frame()
    assert isinstance(frame, Chunk)
    assert frame.data == data
    assert len(views) == 3  # prefix, header, payload: exactly the bytes needed each time
    assert views[2].obj is frame.data
    assert len(views[0]) == PREFIX_SIZE
