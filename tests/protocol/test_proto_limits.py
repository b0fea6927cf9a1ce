"""Limits and malformed input: size limits are checked from the prefix before any allocation,
and every field rule is enforced both when a frame is built and when it is decoded."""

from __future__ import annotations

import array
import contextlib
import tracemalloc
from typing import Any

import msgpack
import pytest
from proto_support import D16, REQ, decoded, prefix, rejected

from fluxproto import (
    Ack,
    Chunk,
    Entries,
    Entry,
    Error,
    FrameReader,
    Hello,
    Info,
    LocalProtocolError,
    Meta,
    OpenDownload,
    OpenUpload,
    Ping,
    RemoteProtocolError,
    Status,
    Welcome,
    decode,
    encode,
    encode_bytes,
)
from fluxproto.codec import PREFIX_SIZE
from fluxproto.frames import (
    FRAME_CLASSES,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_DIGESTS_PAYLOAD,
    MAX_FILE_SIZE,
    MAX_HEADER,
    MAX_LIST_ENTRIES,
    MAX_PATH,
    MAX_RANGES,
    MAX_RID,
    MAX_TARGET,
    MIN_CHUNK,
    FrameType,
)

PAYLOAD_TYPES = (FrameType.CHUNK, FrameType.STATUS, FrameType.META)
NO_PAYLOAD_TYPES = [t for t in FrameType if t not in PAYLOAD_TYPES]
UNKNOWN_TYPES = [0x00, 0x08, 0x0F, 0x16, 0x23, 0x39, 0x7F, 0x80, 0xFF]


def peak_while(fn: Any) -> int:
    """Peak bytes allocated (tracemalloc) while running `fn`; exceptions are swallowed."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with contextlib.suppress(RemoteProtocolError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- prefix limits, before allocation -------------------------------------------------------------


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("hlen", "plen"),
    [(0xFFFFFFFF, 0), (MAX_HEADER + 1, 0), (0, 0), (8, 0xFFFFFFFF)],
    ids=["4GiB-header", "header-over-limit", "empty-header", "4GiB-payload"],
)
def test_bad_prefix_fails_after_nine_bytes_without_allocating(
    ftype: FrameType, hlen: int, plen: int
) -> None:
    raw = prefix(ftype, hlen, plen)
    reader = FrameReader()
    reader.feed(raw[:-1])  # eight bytes: still collecting the prefix
    assert len(reader.get_buffer()) == 1
    errors = []

    def last_byte() -> None:
        try:
            reader.feed(raw[-1:])
        except RemoteProtocolError as exc:
            errors.append(exc)
            raise

    assert peak_while(last_byte) < 64 * 1024
    assert errors, "the ninth byte must raise"


def test_tracemalloc_sees_a_legal_large_payload_buffer() -> None:
    """Positive control for the test above: a legal 1 MiB payload is allocated from the prefix."""
    reader = FrameReader()
    header = msgpack.packb({"rid": 1, "index": 0, "digest": D16})
    assert peak_while(lambda: reader.feed(prefix(FrameType.CHUNK, len(header), 1 << 20) + header))
    assert len(reader.get_buffer()) == 1 << 20


@pytest.mark.parametrize("ftype", UNKNOWN_TYPES)
def test_unknown_frame_type_fails_at_the_prefix(ftype: int) -> None:
    reader = FrameReader()
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        reader.feed(prefix(ftype, 1))
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        decode(ftype, b"\x80")


@pytest.mark.parametrize("ftype", NO_PAYLOAD_TYPES, ids=lambda t: t.name)
def test_payload_on_a_frame_type_that_takes_none(ftype: FrameType) -> None:
    reader = FrameReader()
    with pytest.raises(RemoteProtocolError, match="payload"):
        reader.feed(prefix(ftype, 1, 1))


@pytest.mark.parametrize(
    ("ftype", "limit"),
    [
        (FrameType.CHUNK, MAX_CHUNK),
        (FrameType.STATUS, MAX_DIGESTS_PAYLOAD),
        (FrameType.META, MAX_DIGESTS_PAYLOAD),
    ],
)
def test_payload_limit_per_type(ftype: FrameType, limit: int) -> None:
    ok = FrameReader()
    ok.feed(prefix(ftype, 1, limit))  # at the limit: accepted, waiting for the header
    assert len(ok.get_buffer()) == 1
    with pytest.raises(RemoteProtocolError, match="payload"):
        FrameReader().feed(prefix(ftype, 1, limit + 1))


def test_header_at_limit_is_accepted() -> None:
    reader = FrameReader()
    reader.feed(prefix(FrameType.PING, MAX_HEADER))
    assert len(reader.get_buffer()) == MAX_HEADER
    # A max-size header made of a map padded with an ignored key decodes fine.
    pad = "x" * (MAX_HEADER - 100)
    body = msgpack.packb({"nonce": 5, "pad": pad})
    body = msgpack.packb({"nonce": 5, "pad": pad + "x" * (MAX_HEADER - len(body))})
    assert len(body) == MAX_HEADER
    assert decoded(FrameType.PING, body) == Ping(5)


def test_reader_max_chunk_lowers_the_chunk_payload_limit() -> None:
    reader = FrameReader(max_chunk=MIN_CHUNK)
    reader.feed(prefix(FrameType.CHUNK, 1, MIN_CHUNK))
    with pytest.raises(RemoteProtocolError, match="CHUNK payload"):
        FrameReader(max_chunk=MIN_CHUNK).feed(prefix(FrameType.CHUNK, 1, MIN_CHUNK + 1))
    FrameReader(max_chunk=MIN_CHUNK).feed(prefix(FrameType.STATUS, 1, 1 << 20))  # not a CHUNK


def test_encoding_a_header_over_the_limit_is_a_local_error() -> None:
    big = tuple(Entry("n" * 1000 + str(i), "file") for i in range(100))
    with pytest.raises(LocalProtocolError, match="header"):
        encode(Entries(1, big))


# --- header shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        msgpack.packb([1, 2]),
        msgpack.packb(7),
        msgpack.packb("nonce"),
        msgpack.packb(None),
        msgpack.packb(b"\x81", use_bin_type=True),
        msgpack.packb(True),
    ],
    ids=["array", "int", "str", "nil", "bin", "bool"],
)
def test_header_that_is_not_a_map(header: bytes) -> None:
    rejected(FrameType.PING, header, match="not a map")


@pytest.mark.parametrize(
    "header",
    [
        msgpack.packb({"nonce": 1}) + b"\x00",  # trailing bytes after the map
        msgpack.packb({"nonce": 1})[:-1],  # truncated map
        b"\xc1",  # never-used msgpack code
        b"\x81\xa5nonc\xff\x01",  # invalid UTF-8 in a key
        b"\x81\xa5nonce\xa2\xc3\x28",  # invalid UTF-8 in a value
        msgpack.packb({1: 2}),  # integer key
        b"\x81\x92\x01\x02\x03",  # array key
        b"\x81\xc4\x05nonce\x01",  # bin key
    ],
    ids=[
        "trailing",
        "truncated",
        "c1",
        "utf8-key",
        "utf8-value",
        "int-key",
        "array-key",
        "bin-key",
    ],
)
def test_malformed_msgpack_header(header: bytes) -> None:
    try:
        frame = decoded(FrameType.PING, header)
    except RemoteProtocolError:
        return
    # A bin key is not a string key; it may only be ignored, never taken as a field.
    assert header.startswith(b"\x81\xc4")
    assert frame == Ping(0)


@pytest.mark.parametrize("code", [0, 1, 5, 42, 127, -2, -128])
def test_msgpack_ext_types_are_rejected(code: int) -> None:
    # fixext 4 (0xd6), signed type byte, four data bytes; negative types are reserved by msgpack.
    ext = b"\xd6" + code.to_bytes(1, "big", signed=True) + b"abcd"
    rejected(FrameType.PING, b"\x82\xa5nonce\x01\xa1x" + ext, match="extension")
    rejected(FrameType.PING, b"\x81\xa5nonce" + ext)  # in a known field too


def test_timestamp_ext_type_only_passes_where_keys_are_ignored() -> None:
    # msgpack decodes ext type -1 itself (no ext_hook call). In a field it fails the type
    # check; under an unknown key it is ignored like any unknown value (forward compatibility).
    rejected(FrameType.PING, msgpack.packb({"nonce": msgpack.Timestamp(1, 0)}, datetime=False))
    header = msgpack.packb({"nonce": 1, "when": msgpack.Timestamp(1, 0)}, datetime=False)
    assert decoded(FrameType.PING, header) == Ping(1)


def test_unknown_keys_are_ignored() -> None:
    assert decoded(FrameType.PING, {"nonce": 3, "future": [1, {"a": None}], "z": b"x"}) == Ping(3)
    info = decoded(FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "dir", "owner": "bob"}})
    assert info == Info(1, Entry("a", "dir"))


def test_missing_optional_keys_take_defaults() -> None:
    assert decoded(FrameType.PING, {}) == Ping(0)
    assert decoded(FrameType.HELLO, {"magic": "FLUX"}) == Hello()
    rejected(FrameType.HELLO, {}, match="magic")  # a peer must say it speaks flux
    assert decoded(FrameType.STATUS, {**REQ, "tid": D16}) == Status(1, D16)
    assert decoded(FrameType.ERROR, {}) == Error()  # no rid: the connection's


def test_absent_transfer_window_is_the_window() -> None:
    """Version 1 peers send no transfer_window; absent (or nil) means the same as window."""
    hello = decoded(FrameType.HELLO, {"magic": "FLUX", "window": 8192})
    assert (hello.window, hello.transfer_window, hello.requests) == (8192, 8192, 64)
    assert (
        decoded(FrameType.WELCOME, {"window": 8192, "transfer_window": None}).transfer_window
        == 8192
    )
    assert Welcome(window=8192) == Welcome(window=8192, transfer_window=8192)


@pytest.mark.parametrize(
    ("ftype", "header", "payload"),
    [
        (FrameType.OPEN_UPLOAD, {**REQ, "path": "a", "chunk_size": MIN_CHUNK}, b""),
        (FrameType.OPEN_UPLOAD, {"path": "a", "size": 0, "chunk_size": MIN_CHUNK}, b""),
        (FrameType.STATUS, REQ, b""),
        (FrameType.STATUS, {"tid": D16}, b""),
        (FrameType.CHUNK, {**REQ, "index": 0}, b""),
        (FrameType.CHUNK, {"index": 0, "digest": D16}, b""),
        (FrameType.ACK, REQ, b""),
        (FrameType.ACK, {"ranges": [[0, 1]]}, b""),
        (FrameType.COMMIT, {**REQ, "digest": D16}, b""),
        (FrameType.COMMIT, {**REQ, "sent": 0}, b""),
        (FrameType.COMMITTED, {**REQ, "digest": D16}, b""),
        (FrameType.OPEN_DOWNLOAD, REQ, b""),
        (FrameType.OPEN_DOWNLOAD, {"path": "a"}, b""),
        (FrameType.META, {**REQ, "size": 0, "chunk_size": MIN_CHUNK, "digest": D16}, b""),
        (
            FrameType.META,
            {**REQ, "size": 0, "chunk_size": MIN_CHUNK, "digest": D16, "count": 0},
            b"",
        ),
        (FrameType.LIST, REQ, b""),
        (FrameType.ENTRIES, REQ, b""),
        (FrameType.ENTRIES, {"done": True}, b""),
        (FrameType.STAT, REQ, b""),
        (FrameType.INFO, REQ, b""),
        (FrameType.INFO, {"entry": {"name": "a", "kind": "dir"}}, b""),
        (FrameType.DELETE, REQ, b""),
        (FrameType.DELETED, {**REQ, "path": "a"}, b""),
        (FrameType.MKDIR, REQ, b""),
        (FrameType.SYMLINK, {**REQ, "path": "a"}, b""),
        (FrameType.SYMLINK, {**REQ, "target": "a"}, b""),
        (FrameType.MADE, REQ, b""),
        (FrameType.CANCEL, {}, b""),
    ],
    ids=lambda v: v.name if isinstance(v, FrameType) else "",
)
def test_missing_required_field(ftype: FrameType, header: dict[str, Any], payload: bytes) -> None:
    rejected(ftype, header, payload, match="missing")


# --- strings and paths ----------------------------------------------------------------------------

PATH_FRAMES = [
    (FrameType.OPEN_UPLOAD, {**REQ, "size": 0, "chunk_size": MIN_CHUNK}),
    (FrameType.OPEN_DOWNLOAD, REQ),
    (FrameType.LIST, REQ),
    (FrameType.STAT, REQ),
    (FrameType.DELETE, REQ),
    (FrameType.DELETED, {**REQ, "count": 1}),
    (FrameType.MKDIR, REQ),
    (FrameType.SYMLINK, {**REQ, "target": "t"}),
]


@pytest.mark.parametrize(("ftype", "extra"), PATH_FRAMES, ids=lambda v: getattr(v, "name", ""))
def test_path_length_is_counted_in_utf8_bytes(ftype: FrameType, extra: dict[str, Any]) -> None:
    cls = FRAME_CLASSES[ftype]
    for ok in ("a" * MAX_PATH, "é" * (MAX_PATH // 2), "😀" * (MAX_PATH // 4)):
        frame = decoded(ftype, {"path": ok, **extra})
        assert frame.path == ok  # type: ignore[attr-defined]
        assert cls(path=ok, **extra) == frame  # type: ignore[call-arg]
    for bad in ("a" * (MAX_PATH + 1), "é" * (MAX_PATH // 2 + 1), "😀" * (MAX_PATH // 4) + "a", ""):
        rejected(ftype, {"path": bad, **extra}, match="path")
        with pytest.raises(LocalProtocolError, match="path"):
            cls(path=bad, **extra)  # type: ignore[call-arg]


def test_lone_surrogates_cannot_be_encoded() -> None:
    """Validation counts bytes with surrogatepass, but msgpack refuses to encode the string."""
    with pytest.raises(LocalProtocolError):
        encode(OpenDownload(1, "\ud800"))


# --- ranges ---------------------------------------------------------------------------------------

MANY = [[2 * i, 1] for i in range(MAX_RANGES)]


def test_range_count_limit() -> None:
    assert len(decoded(FrameType.ACK, {**REQ, "ranges": MANY}).ranges) == MAX_RANGES
    rejected(FrameType.ACK, {**REQ, "ranges": [*MANY, [2 * MAX_RANGES, 1]]}, match="ranges")
    rejected(FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "want": [*MANY, [2 * MAX_RANGES, 1]]})
    held = [*MANY, [2 * MAX_RANGES, 1]]
    status = {**REQ, "tid": D16, "held": held}
    rejected(FrameType.STATUS, status, bytes(16 * len(held)), match="held")
    ok = tuple((s, c) for s, c in MANY)
    assert Ack(1, ok).ranges == ok
    with pytest.raises(LocalProtocolError):
        Ack(1, (*ok, (2 * MAX_RANGES, 1)))


@pytest.mark.parametrize(
    "ranges",
    [
        [[2, 1], [0, 1]],  # unsorted
        [[0, 2], [1, 2]],  # overlapping
        [[0, 1], [1, 1]],  # adjacent, must be merged
        [[0, 0]],  # empty run
        [[-1, 1]],
        [[0, 1, 2]],
        [[0]],
        [0, 1],
        [[MAX_CHUNKS, 1]],  # beyond the largest file
        [[MAX_CHUNKS - 1, 2]],
        [[0, MAX_CHUNKS + 1]],
        "0-1",
    ],
)
def test_non_canonical_ranges_are_rejected(ranges: Any) -> None:
    rejected(FrameType.ACK, {**REQ, "ranges": ranges}, match="ranges")
    rejected(FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "want": ranges}, match="want")


def test_ack_needs_at_least_one_range_and_want_may_be_empty() -> None:
    rejected(FrameType.ACK, {**REQ, "ranges": []}, match="empty")
    assert decoded(FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "want": []}).want == ()
    assert decoded(FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "want": None}).want is None
    last = {**REQ, "ranges": [[MAX_CHUNKS - 1, 1]]}
    assert decoded(FrameType.ACK, last).ranges == ((MAX_CHUNKS - 1, 1),)


# --- geometry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_size", "ok"),
    [
        (0, MIN_CHUNK, True),
        (MAX_FILE_SIZE, MAX_CHUNK, True),
        (MAX_FILE_SIZE + 1, MAX_CHUNK, False),
        (1, MIN_CHUNK - 1, False),
        (1, MAX_CHUNK + 1, False),
        (MAX_CHUNKS * MIN_CHUNK, MIN_CHUNK, True),
        (MAX_CHUNKS * MIN_CHUNK + 1, MIN_CHUNK, False),  # over a million chunks
        (-1, MIN_CHUNK, False),
    ],
)
def test_geometry_limits(size: int, chunk_size: int, ok: bool) -> None:
    header = {**REQ, "path": "p", "size": size, "chunk_size": chunk_size}
    if ok:
        assert decoded(FrameType.OPEN_UPLOAD, header) == OpenUpload(1, "p", size, chunk_size)
    else:
        rejected(FrameType.OPEN_UPLOAD, header)
        with pytest.raises(LocalProtocolError):
            OpenUpload(1, "p", size, chunk_size)


def test_meta_count_cannot_exceed_the_chunk_count() -> None:
    meta = {
        **REQ,
        "tid": D16,
        "size": 2 * MIN_CHUNK,
        "chunk_size": MIN_CHUNK,
        "digest": D16,
        "count": 3,
    }
    rejected(FrameType.META, meta, bytes(32), match="count")
    with pytest.raises(LocalProtocolError):
        Meta(1, D16, 2 * MIN_CHUNK, MIN_CHUNK, D16, 3, digests=bytes(32))


def test_chunk_payload_limit_on_construction() -> None:
    Chunk(1, 0, D16, bytes(MAX_CHUNK))
    with pytest.raises(LocalProtocolError):
        Chunk(1, 0, D16, bytes(MAX_CHUNK + 1))
    with pytest.raises(LocalProtocolError):
        Chunk(1, MAX_CHUNKS, D16, b"")
    with pytest.raises(LocalProtocolError):
        Chunk(1, 0, D16, "text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Chunk(0, 0, D16, b"")  # rid 0 is no request


def test_entries_limit() -> None:
    entries = tuple(Entry(str(i), "file") for i in range(MAX_LIST_ENTRIES))
    page = decoded(FrameType.ENTRIES, Entries(1, entries).header())
    assert len(page.entries) == MAX_LIST_ENTRIES
    with pytest.raises(LocalProtocolError):
        Entries(1, (*entries, Entry("x", "file")))


def test_rid_range() -> None:
    assert decoded(FrameType.CANCEL, {"rid": MAX_RID}).rid == MAX_RID
    assert decoded(FrameType.ERROR, {"rid": 1}).rid == 1
    assert decoded(FrameType.ERROR, {"rid": None}).rid is None
    assert MAX_RID == 2**32 - 1


def test_entry_names_are_paths_and_links_carry_their_target() -> None:
    """A recursive listing names entries by their relative path: up to MAX_PATH bytes."""
    deep = "/".join(["d" * 255] * 16)[:MAX_PATH]
    assert Entry(deep, "file").name == deep
    link = Entry("l", "link", target="t" * MAX_TARGET)
    assert decoded(FrameType.INFO, {**REQ, "entry": link.to_wire()}) == Info(1, link)
    with pytest.raises(LocalProtocolError):
        Entry("l", "link")
    with pytest.raises(LocalProtocolError):
        Entry("f", "file", target="t")


def test_error_frame_code_range() -> None:
    assert Error(100).code == 100
    assert Error(999).code == 999
    with pytest.raises(LocalProtocolError):
        Error(99)


# --- known decoding bugs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"name": "a", "kind": []}, id="kind-array"),
        pytest.param({"name": "a", "kind": {}}, id="kind-map"),
        pytest.param({"name": "a"}, id="kind-missing"),
        pytest.param({"kind": "file"}, id="name-missing"),
        pytest.param({"name": "a", "kinf": "file"}, id="key-bitflip"),
    ],
)
@pytest.mark.parametrize("ftype", [FrameType.INFO, FrameType.ENTRIES], ids=lambda t: t.name)
def test_entry_with_missing_or_unhashable_field_is_remote_error(
    ftype: FrameType, entry: dict[str, Any]
) -> None:
    header = {**REQ, "entry": entry} if ftype is FrameType.INFO else {**REQ, "entries": [entry]}
    rejected(ftype, {**header, "done": True})


def test_deeply_nested_header_is_remote_error() -> None:
    header = b"\x81\xa8versions" + b"\x91" * 1000 + b"\x01"
    assert len(header) < MAX_HEADER
    rejected(FrameType.HELLO, header)


def test_payload_length_counts_bytes_not_items() -> None:
    data = memoryview(array.array("I", [1, 2]))
    try:
        frame = Chunk(1, 0, D16, data)
        raw = encode_bytes(frame)
    except LocalProtocolError:
        return  # refusing such a buffer is also correct
    reader = FrameReader()
    reader.feed(raw)
    assert reader.next_frame() == frame
    assert reader.at_boundary
    assert len(raw) == PREFIX_SIZE + int.from_bytes(raw[1:5], "big") + 8
