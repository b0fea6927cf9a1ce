"""Golden byte vectors: they pin the wire format of every frame type. Never regenerate them to
make a failing test pass; a change here is a protocol version change (PROTOCOL.md "Versioning")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xxhash

import fluxproto
from fluxproto import (
    Ack,
    Chunk,
    Commit,
    Committed,
    Delete,
    Deleted,
    Entry,
    Error,
    FileHasher,
    Frame,
    FrameReader,
    Goodbye,
    Hello,
    Info,
    ListDir,
    Listing,
    Meta,
    OpenDownload,
    OpenUpload,
    Ping,
    Pong,
    Stat,
    Status,
    Welcome,
    chunk_digest,
    decode,
    encode,
    encode_bytes,
    format_digest,
    frames,
)
from fluxproto.frames import FRAME_CLASSES, FrameType

D1 = bytes(range(16))
D2 = bytes(range(16, 32))
DFF = b"\xff" * 16
HELLO_DIGEST = bytes.fromhex("b5e9c1ad071b3e7fc779cfaa5e523818")  # xxh3-128(b"hello")

GOLDEN: list[tuple[Frame, str]] = [
    (
        Hello(versions=(1,), caps=("xxh3-128",), window=65536, agent="t/1"),
        "01 00000043 00000000"
        " 86 a876657273696f6e73 9101 a463617073 91a8787868332d313238"
        " a677696e646f77 ce00010000 a56167656e74 a3742f31 a5746f6b656e c0"
        " a56d61676963 a4464c5558",
    ),
    (
        Hello(versions=(1, 2), caps=(), window=4096, agent="", token="tok"),
        "01 00000039 00000000"
        " 86 a876657273696f6e73 920102 a463617073 90 a677696e646f77 cd1000"
        " a56167656e74 a0 a5746f6b656e a3746f6b a56d61676963 a4464c5558",
    ),
    (
        Welcome(version=1, caps=("resume",), window=1 << 20, agent="fluxd/0"),
        "02 00000031 00000000"
        " 84 a776657273696f6e 01 a463617073 91a6726573756d65 a677696e646f77 ce00100000"
        " a56167656e74 a7666c7578642f30",
    ),
    (Ping(nonce=7), "03 00000008 00000000 81 a56e6f6e6365 07"),
    (Pong(nonce=2**64 - 1), "04 00000010 00000000 81 a56e6f6e6365 cfffffffffffffffff"),
    (Goodbye(reason="bye"), "05 0000000c 00000000 81 a6726561736f6e a3627965"),
    (
        Error(code=404, message="no such file"),
        "06 0000001e 00000000 82 a4636f6465 cd0194 a76d657373616765 ac6e6f20737563682066696c65",
    ),
    (
        OpenUpload(path="a/b.bin", size=10000, chunk_size=4096, mode=0o600),
        "10 0000002c 00000000"
        " 84 a470617468 a7612f622e62696e a473697a65 cd2710 aa6368756e6b5f73697a65 cd1000"
        " a46d6f6465 cd0180",
    ),
    (
        Status(held=((0, 1), (2, 1)), digests=D1 + D2),
        "11 0000000d 00000020 81 a468656c64 92 920001 920201"
        " 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
    ),
    (Status(), "11 00000007 00000000 81 a468656c64 90"),
    (
        Chunk(index=2, digest=HELLO_DIGEST, data=b"hello"),
        "12 00000021 00000005 82 a5696e646578 02 a6646967657374 c410"
        " b5e9c1ad071b3e7fc779cfaa5e523818 68656c6c6f",
    ),
    (Ack(ranges=((0, 3), (5, 1))), "13 0000000f 00000000 81 a672616e676573 92 920003 920501"),
    (
        Commit(digest=DFF),
        "14 0000001a 00000000 81 a6646967657374 c410 ffffffffffffffffffffffffffffffff",
    ),
    (
        Committed(size=10000, digest=DFF),
        "15 00000022 00000000 82 a473697a65 cd2710 a6646967657374 c410"
        " ffffffffffffffffffffffffffffffff",
    ),
    (
        OpenDownload(path="a/b.bin"),
        "20 0000002c 00000000 84 a470617468 a7612f622e62696e a477616e74 c0"
        " a6646967657374 c0 aa6368756e6b5f73697a65 ce00100000",
    ),
    (
        OpenDownload(path="x", want=((1, 2),), digest=D1, chunk_size=4096),
        "20 00000038 00000000 84 a470617468 a178 a477616e74 91920102"
        " a6646967657374 c410 000102030405060708090a0b0c0d0e0f aa6368756e6b5f73697a65 cd1000",
    ),
    (
        Meta(size=5000, chunk_size=4096, digest=DFF, count=2, mtime_ns=1, digests=D1 + D2),
        "21 00000049 00000020 86 a473697a65 cd1388 aa6368756e6b5f73697a65 cd1000"
        " a6646967657374 c410 ffffffffffffffffffffffffffffffff a5636f756e74 02"
        " a46d6f6465 cd01a4 a86d74696d655f6e73 01"
        " 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
    ),
    (ListDir(path="/"), "30 00000010 00000000 82 a470617468 a12f a6637572736f72 c0"),
    (ListDir(path="d", cursor="c"), "30 00000011 00000000 82 a470617468 a164 a6637572736f72 a163"),
    (
        Listing(entries=(Entry("f", "file", 3, 4, 0o644, D1), Entry("d", "dir")), cursor=None),
        "31 00000086 00000000 82 a7656e7472696573 92"
        " 86 a46e616d65 a166 a46b696e64 a466696c65 a473697a65 03 a86d74696d655f6e73 04"
        " a46d6f6465 cd01a4 a6646967657374 c410 000102030405060708090a0b0c0d0e0f"
        " 86 a46e616d65 a164 a46b696e64 a3646972 a473697a65 00 a86d74696d655f6e73 00"
        " a46d6f6465 cd01a4 a6646967657374 c0"
        " a6637572736f72 c0",
    ),
    (Stat(path="f"), "32 00000008 00000000 81 a470617468 a166"),
    (
        Info(Entry("f", "file", size=5)),
        "33 00000039 00000000 81 a5656e747279 86 a46e616d65 a166 a46b696e64 a466696c65"
        " a473697a65 05 a86d74696d655f6e73 00 a46d6f6465 cd01a4 a6646967657374 c0",
    ),
    (Delete(path="f"), "34 00000008 00000000 81 a470617468 a166"),
    (Deleted(path="f"), "35 00000008 00000000 81 a470617468 a166"),
]

IDS = [f"{i:02d}-{frame.TYPE.name}" for i, (frame, _) in enumerate(GOLDEN)]


def golden_bytes(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def test_golden_table_covers_every_frame_type() -> None:
    assert {frame.TYPE for frame, _ in GOLDEN} == set(FRAME_CLASSES) == set(FrameType)
    assert len(FRAME_CLASSES) == 20


@pytest.mark.parametrize(("frame", "hexstr"), GOLDEN, ids=IDS)
def test_encode_matches_golden(frame: Frame, hexstr: str) -> None:
    assert encode_bytes(frame) == golden_bytes(hexstr)


@pytest.mark.parametrize(("frame", "hexstr"), GOLDEN, ids=IDS)
def test_decode_golden(frame: Frame, hexstr: str) -> None:
    raw = golden_bytes(hexstr)
    ftype, hlen, plen = raw[0], int.from_bytes(raw[1:5], "big"), int.from_bytes(raw[5:9], "big")
    assert 9 + hlen + plen == len(raw)
    assert ftype == frame.TYPE
    assert decode(ftype, raw[9 : 9 + hlen], raw[9 + hlen :]) == frame
    reader = FrameReader()
    reader.feed(raw)
    assert reader.next_frame() == frame
    assert reader.next_frame() is None
    assert reader.at_boundary


@pytest.mark.parametrize(("frame", "hexstr"), GOLDEN, ids=IDS)
def test_golden_prefix_layout(frame: Frame, hexstr: str) -> None:
    """The prefix is type u8, header length u32be, payload length u32be; payload is raw."""
    raw = golden_bytes(hexstr)
    payload = bytes(frame.payload())
    assert raw[0] == int(frame.TYPE)
    assert int.from_bytes(raw[5:9], "big") == len(payload)
    assert raw.endswith(payload)
    if frame.TYPE not in (FrameType.CHUNK, FrameType.STATUS, FrameType.META):
        assert payload == b""


def test_encode_returns_payload_uncopied() -> None:
    data = bytearray(b"x" * 5000)
    frame = Chunk(0, chunk_digest(data), data)
    parts = encode(frame)
    assert len(parts) == 2
    assert parts[1] is data
    ping = encode(Ping(7))
    assert len(ping) == 1  # no empty payload buffer for payload-less frames


def test_empty_payload_frame_is_one_buffer() -> None:
    assert len(encode(Status())) == 1
    assert len(encode(Chunk(0, D1, b""))) == 1


def test_digest_is_xxh3_128_big_endian_canonical() -> None:
    assert chunk_digest(b"hello") == HELLO_DIGEST
    assert chunk_digest(b"hello") == xxhash.xxh3_128(b"hello").digest()
    assert chunk_digest(b"hello").hex() == xxhash.xxh3_128_hexdigest(b"hello")
    # Reference value of XXH3_128bits("") as printed by `xxh128sum`.
    assert chunk_digest(b"") == bytes.fromhex("99aa06d3014798d86001c324468d497f")
    assert int.from_bytes(chunk_digest(b""), "big") == xxhash.xxh3_128_intdigest(b"")
    assert format_digest(HELLO_DIGEST) == "xxh128:b5e9c1ad071b3e7fc779cfaa5e523818"


def test_file_hasher_streams_the_same_digest() -> None:
    data = bytes(range(256)) * 100
    h = FileHasher()
    for i in range(0, len(data), 4096):
        h.update(memoryview(data)[i : i + 4096])
    assert h.offset == len(data)
    assert h.digest() == chunk_digest(data)


# --- PROTOCOL.md stays in step with the code ------------------------------------------------------

SPEC = Path(fluxproto.__file__).resolve().parent.parent / "PROTOCOL.md"


def test_spec_hex_examples_decode() -> None:
    text = SPEC.read_text()
    blobs = re.findall(r"`([0-9a-f]{40,})`", text)
    decoded = []
    for blob in blobs:
        reader = FrameReader()
        reader.feed(bytes.fromhex(blob))
        frame = reader.next_frame()
        assert frame is not None
        assert reader.next_frame() is None
        assert reader.at_boundary
        decoded.append(frame)
    assert Hello(versions=(1,), caps=("xxh3-128",), window=65536, agent="t/1") in decoded
    assert Chunk(index=2, digest=HELLO_DIGEST, data=b"hello") in decoded


def test_spec_frame_codes_match() -> None:
    rows = re.findall(r"^\| (0x[0-9A-F]{2}) \| ([A-Z_]+) +\|", SPEC.read_text(), re.M)
    assert {name: int(code, 16) for code, name in rows} == {t.name: int(t) for t in FrameType}


def _spec_number(value: str) -> int | None:
    token = value.split(maxsplit=1)[0]
    if m := re.fullmatch(r"(\d+)\^(\d+)", token):
        return int(m[1]) ** int(m[2])
    if token.startswith("0o"):
        return int(token, 8)
    return int(token) if token.isdigit() else None


def test_spec_limits_table_matches_constants() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` +\| ([^|]+)\|", SPEC.read_text(), re.M)
    checked = set()
    for name, value in rows:
        number = _spec_number(value)
        if hasattr(frames, name) and number is not None:
            assert getattr(frames, name) == number, name
            checked.add(name)
    assert {"MAX_HEADER", "MAX_CHUNK", "MAX_CHUNKS", "MAX_PATH", "MAX_RANGES"} <= checked
    assert len(checked) >= 15
