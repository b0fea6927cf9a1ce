"""Golden byte vectors: they pin the wire format of every frame type of version 2. Never
regenerate them to make a failing test pass; a change here is a protocol change (PROTOCOL.md
"Versioning"). PING, PONG, GOODBYE and ERROR without rid are byte for byte version 1's."""

from __future__ import annotations

import pytest
import xxhash
from proto_support import V1_HELLO, decoded, raw_frame

from fluxproto import (
    Ack,
    Cancel,
    Chunk,
    Commit,
    Committed,
    Delete,
    Deleted,
    Done,
    Entries,
    Entry,
    Error,
    FileHasher,
    Frame,
    FrameReader,
    Goodbye,
    Hello,
    Info,
    ListDir,
    Made,
    Meta,
    Mkdir,
    OpenDownload,
    OpenUpload,
    Ping,
    Pong,
    Stat,
    Status,
    Symlink,
    Welcome,
    chunk_digest,
    decode,
    encode,
    encode_bytes,
    format_digest,
)
from fluxproto.frames import FRAME_CLASSES, MAX_CHUNKS, MIN_CHUNK, FrameType

D1 = bytes(range(16))
D2 = bytes(range(16, 32))
DFF = b"\xff" * 16
HELLO_DIGEST = bytes.fromhex("b5e9c1ad071b3e7fc779cfaa5e523818")  # xxh3-128(b"hello")

# Msgpack pieces that recur: the key "rid" with value 1, a 16-byte bin of D1, D2 or DFF.
RID1 = "a3726964 01"
BIN_D1 = "c410 000102030405060708090a0b0c0d0e0f"
BIN_D2 = "c410 101112131415161718191a1b1c1d1e1f"
BIN_FF = "c410 ffffffffffffffffffffffffffffffff"
# An Entry map's keys after name and kind: size, mtime_ns, mode, digest, target.
ENTRY_TAIL = "a473697a65 {size} a86d74696d655f6e73 {mtime} a46d6f6465 {mode} a6646967657374 {digest} a6746172676574 {target}"  # noqa: E501


def entry_hex(
    name: str,
    kind: str,
    size: str = "00",
    mtime: str = "00",
    mode: str = "cd01a4",
    digest: str = "c0",
    target: str = "c0",
) -> str:
    """An Entry as its 7-key map: name and kind (hex of their msgpack strings), then the rest."""
    tail = ENTRY_TAIL.format(size=size, mtime=mtime, mode=mode, digest=digest, target=target)
    return f"87 a46e616d65 {name} a46b696e64 {kind} {tail}"


GOLDEN: list[tuple[Frame, str]] = [
    (
        Hello(
            versions=(2,),
            caps=("xxh3-128",),
            window=65536,
            agent="t/2",
            transfer_window=16384,
            requests=8,
        ),
        "01 00000060 00000000 88"
        " a876657273696f6e73 9102 a463617073 91a8787868332d313238"
        " a677696e646f77 ce00010000 a56167656e74 a3742f32 a5746f6b656e c0"
        " a56d61676963 a4464c5558"
        " af7472616e736665725f77696e646f77 cd4000 a87265717565737473 08",
    ),
    (
        Hello(versions=(2,), window=4096, token="tok"),  # transfer_window: the window
        "01 00000055 00000000 88"
        " a876657273696f6e73 9102 a463617073 90 a677696e646f77 cd1000 a56167656e74 a0"
        " a5746f6b656e a3746f6b a56d61676963 a4464c5558"
        " af7472616e736665725f77696e646f77 cd1000 a87265717565737473 40",
    ),
    (
        Welcome(
            version=2, caps=("resume",), window=1 << 20, agent="fluxd/0", transfer_window=1 << 18
        ),
        "02 00000050 00000000 86"
        " a776657273696f6e 02 a463617073 91a6726573756d65 a677696e646f77 ce00100000"
        " a56167656e74 a7666c7578642f30"
        " af7472616e736665725f77696e646f77 ce00040000 a87265717565737473 40",
    ),
    (
        # A storage's rule (15.46): written only when it is not the protocol's own limits.
        Welcome(version=2, window=1 << 20, agent="fluxd/0", min_chunk=5 << 20, max_chunks=10000),
        "02 00000066 00000000 88"
        " a776657273696f6e 02 a463617073 90 a677696e646f77 ce00100000"
        " a56167656e74 a7666c7578642f30"
        " af7472616e736665725f77696e646f77 ce00100000 a87265717565737473 40"
        " a96d696e5f6368756e6b ce00500000 aa6d61785f6368756e6b73 cd2710",
    ),
    (Ping(nonce=7), "03 00000008 00000000 81 a56e6f6e6365 07"),
    (Pong(nonce=2**64 - 1), "04 00000010 00000000 81 a56e6f6e6365 cfffffffffffffffff"),
    (Goodbye(reason="bye"), "05 0000000c 00000000 81 a6726561736f6e a3627965"),
    (
        Error(code=404, message="no such file"),
        "06 0000001e 00000000 82 a4636f6465 cd0194 a76d657373616765 ac6e6f20737563682066696c65",
    ),
    (
        Error(code=404, message="no such file", rid=7),
        "06 00000023 00000000 83 a4636f6465 cd0194 a76d657373616765 ac6e6f20737563682066696c65"
        " a3726964 07",
    ),
    (Cancel(rid=7), "07 00000006 00000000 81 a3726964 07"),
    (
        OpenUpload(rid=1, path="a/b.bin", size=10000, chunk_size=4096, mode=0o600),
        f"10 00000043 00000000 87 {RID1} a470617468 a7612f622e62696e a473697a65 cd2710"
        " aa6368756e6b5f73697a65 cd1000 a46d6f6465 cd0180 a86d74696d655f6e73 c0"
        " a6617474616368 c0",
    ),
    (
        OpenUpload(rid=2, path="x", size=0, chunk_size=4096, mtime_ns=1, attach=D1),
        "10 0000004c 00000000 87 a3726964 02 a470617468 a178 a473697a65 00"
        " aa6368756e6b5f73697a65 cd1000 a46d6f6465 cd01a4 a86d74696d655f6e73 01"
        f" a6617474616368 {BIN_D1}",
    ),
    (
        Status(rid=1, tid=D2, held=((0, 1), (2, 1)), digests=D1 + D2),
        f"11 00000028 00000020 83 {RID1} a3746964 {BIN_D2} a468656c64 92 920001 920201"
        " 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
    ),
    (Status(rid=1, tid=D2), f"11 00000022 00000000 83 {RID1} a3746964 {BIN_D2} a468656c64 90"),
    (
        Chunk(rid=1, index=2, digest=HELLO_DIGEST, data=b"hello"),
        f"12 00000026 00000005 83 {RID1} a5696e646578 02 a6646967657374 c410"
        " b5e9c1ad071b3e7fc779cfaa5e523818 68656c6c6f",
    ),
    (
        Ack(rid=1, ranges=((0, 3), (5, 1))),
        f"13 00000014 00000000 82 {RID1} a672616e676573 92 920003 920501",
    ),
    (
        Commit(rid=1, digest=DFF, sent=3),
        f"14 00000025 00000000 83 {RID1} a6646967657374 {BIN_FF} a473656e74 03",
    ),
    (
        Committed(rid=1, size=10000, digest=DFF),
        f"15 00000027 00000000 83 {RID1} a473697a65 cd2710 a6646967657374 {BIN_FF}",
    ),
    (
        OpenDownload(rid=1, path="a/b.bin"),
        f"20 00000039 00000000 86 {RID1} a470617468 a7612f622e62696e a477616e74 c0"
        " a6646967657374 c0 aa6368756e6b5f73697a65 ce00100000 a6617474616368 c0",
    ),
    (
        OpenDownload(rid=1, path="x", want=((1, 2),), digest=D1, chunk_size=4096, attach=D2),
        f"20 00000056 00000000 86 {RID1} a470617468 a178 a477616e74 91920102"
        f" a6646967657374 {BIN_D1} aa6368756e6b5f73697a65 cd1000 a6617474616368 {BIN_D2}",
    ),
    (
        # `share` is written only when true (PROTOCOL.md 15.40): the two above are unchanged.
        OpenDownload(rid=1, path="x", chunk_size=4096, attach=D2, share=True),
        f"20 00000049 00000000 87 {RID1} a470617468 a178 a477616e74 c0 a6646967657374 c0"
        f" aa6368756e6b5f73697a65 cd1000 a6617474616368 {BIN_D2} a57368617265 c3",
    ),
    (
        Meta(
            rid=1,
            tid=D2,
            size=5000,
            chunk_size=4096,
            digest=DFF,
            count=2,
            mtime_ns=1,
            digests=D1 + D2,
        ),
        f"21 00000064 00000020 88 {RID1} a3746964 {BIN_D2} a473697a65 cd1388"
        f" aa6368756e6b5f73697a65 cd1000 a6646967657374 {BIN_FF} a5636f756e74 02"
        " a46d6f6465 cd01a4 a86d74696d655f6e73 01"
        " 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
    ),
    (
        Meta(
            rid=1,
            tid=D2,
            size=5000,
            chunk_size=4096,
            digest=DFF,
            count=1,
            share=True,
            digests=D1 + D2,
        ),
        f"21 0000006b 00000020 89 {RID1} a3746964 {BIN_D2} a473697a65 cd1388"
        f" aa6368756e6b5f73697a65 cd1000 a6646967657374 {BIN_FF} a5636f756e74 01"
        " a46d6f6465 cd01a4 a86d74696d655f6e73 00 a57368617265 c3"
        " 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
    ),
    (Done(rid=1), f"22 00000006 00000000 81 {RID1}"),
    (
        ListDir(rid=1, path="/"),
        f"30 00000021 00000000 84 {RID1} a470617468 a12f a9726563757273697665 c2"
        " a764696765737473 c2",
    ),
    (
        ListDir(rid=1, path="d", recursive=True, digests=True),
        f"30 00000021 00000000 84 {RID1} a470617468 a164 a9726563757273697665 c3"
        " a764696765737473 c3",
    ),
    (
        Entries(
            rid=1,
            entries=(
                Entry("f", "file", 3, 4, 0o644, D1),
                Entry("d", "dir"),
                Entry("l", "link", target="f"),
            ),
            done=False,
        ),
        f"31 000000d4 00000000 83 {RID1} a7656e7472696573 93"
        f" {entry_hex('a166', 'a466696c65', size='03', mtime='04', digest=BIN_D1)}"
        f" {entry_hex('a164', 'a3646972')}"
        f" {entry_hex('a16c', 'a46c696e6b', target='a166')}"
        " a4646f6e65 c2",
    ),
    (Entries(rid=1), f"31 00000015 00000000 83 {RID1} a7656e7472696573 90 a4646f6e65 c3"),
    (Stat(rid=1, path="f"), f"32 0000000d 00000000 82 {RID1} a470617468 a166"),
    (
        Info(rid=1, entry=Entry("f", "file", size=5)),
        f"33 00000046 00000000 82 {RID1} a5656e747279 {entry_hex('a166', 'a466696c65', '05')}",
    ),
    (
        Delete(rid=1, path="f"),
        f"34 00000018 00000000 83 {RID1} a470617468 a166 a9726563757273697665 c2",
    ),
    (
        Delete(rid=1, path="d", recursive=True),
        f"34 00000018 00000000 83 {RID1} a470617468 a164 a9726563757273697665 c3",
    ),
    (
        Deleted(rid=1, path="f", count=1),
        f"35 00000014 00000000 83 {RID1} a470617468 a166 a5636f756e74 01",
    ),
    (
        Mkdir(rid=1, path="d"),
        f"36 00000026 00000000 85 {RID1} a470617468 a164 a46d6f6465 c0 a86d74696d655f6e73 c0"
        " a7706172656e7473 c3",
    ),
    (
        Mkdir(rid=1, path="d", mode=0o700, mtime_ns=1, parents=False),
        f"36 00000028 00000000 85 {RID1} a470617468 a164 a46d6f6465 cd01c0"
        " a86d74696d655f6e73 01 a7706172656e7473 c2",
    ),
    (
        Symlink(rid=1, path="l", target="f"),
        f"37 00000020 00000000 84 {RID1} a470617468 a16c a6746172676574 a166 a86d74696d655f6e73 c0",
    ),
    (
        Symlink(rid=1, path="l", target="f", mtime_ns=1),
        f"37 00000020 00000000 84 {RID1} a470617468 a16c a6746172676574 a166 a86d74696d655f6e73 01",
    ),
    (
        Made(rid=1, entry=Entry("d", "dir", mode=0o755)),
        f"38 00000045 00000000 82 {RID1} a5656e747279"
        f" {entry_hex('a164', 'a3646972', mode='cd01ed')}",
    ),
]

IDS = [f"{i:02d}-{frame.TYPE.name}" for i, (frame, _) in enumerate(GOLDEN)]


def golden_bytes(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def test_golden_table_covers_every_frame_type() -> None:
    assert {frame.TYPE for frame, _ in GOLDEN} == set(FRAME_CLASSES) == set(FrameType)
    assert len(FRAME_CLASSES) == 25


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


# --- what a version-1 peer sends and reads --------------------------------------------------------


def test_a_version_1_hello_decodes() -> None:
    reader = FrameReader()
    reader.feed(V1_HELLO)
    hello = reader.next_frame()
    assert hello == Hello(versions=(1,), caps=("xxh3-128",), window=65536, agent="t/1")
    assert isinstance(hello, Hello)
    assert (hello.transfer_window, hello.requests) == (65536, 64)  # the v2 defaults
    assert reader.at_boundary


@pytest.mark.parametrize("message", ["fluxd speaks flux protocol 2, this client speaks 1: x", ""])
def test_an_error_without_rid_has_the_version_1_shape(message: str) -> None:
    """A version-1 peer reads ERROR as the map {code, message}: without a rid, that is all the
    version-2 frame is, byte for byte."""
    v1_error = raw_frame(FrameType.ERROR, {"code": 505, "message": message})
    assert encode_bytes(Error(505, message)) == v1_error


def test_a_download_without_share_shares_nothing() -> None:
    """`share` is absent from what was written before it existed, and from every download
    that does not share: such a request and its META take the old meaning (PROTOCOL.md 15.40)."""
    older = decoded(FrameType.OPEN_DOWNLOAD, {"rid": 1, "path": "x"})
    assert older == OpenDownload(1, "x", share=False)
    meta = {"rid": 1, "tid": D1, "size": 0, "chunk_size": 4096, "digest": D1, "count": 0}
    assert decoded(FrameType.META, meta) == Meta(1, D1, 0, 4096, D1, 0, share=False)
    assert "share" not in OpenDownload(1, "x").header()
    assert OpenDownload(1, "x", share=True).header()["share"] is True


def test_a_welcome_without_a_rule_is_unchanged() -> None:
    """A WELCOME whose storage takes the protocol's limits carries no rule keys, and one
    without them decodes as the protocol's limits (15.46)."""
    head = Welcome(agent="fluxd/0").header()
    assert "min_chunk" not in head and "max_chunks" not in head
    welcome = decoded(FrameType.WELCOME, {"version": 2})
    assert isinstance(welcome, Welcome)
    assert (welcome.min_chunk, welcome.max_chunks) == (MIN_CHUNK, MAX_CHUNKS)
    assert Welcome(min_chunk=5 << 20).header()["min_chunk"] == 5 << 20


def test_a_list_without_digests_asks_for_none() -> None:
    """LIST `digests` is absent from a LIST written before it existed: such a listing carries
    no digests (PROTOCOL.md 15.37)."""
    older = decoded(FrameType.LIST, {"rid": 1, "path": "d", "recursive": True})
    assert older == ListDir(1, "d", recursive=True, digests=False)


# --- encoding details -----------------------------------------------------------------------------


def test_encode_returns_payload_uncopied() -> None:
    data = bytearray(b"x" * 5000)
    frame = Chunk(1, 0, chunk_digest(data), data)
    parts = encode(frame)
    assert len(parts) == 2
    assert parts[1] is data
    ping = encode(Ping(7))
    assert len(ping) == 1  # no empty payload buffer for payload-less frames


def test_empty_payload_frame_is_one_buffer() -> None:
    assert len(encode(Status(1, D1))) == 1
    assert len(encode(Chunk(1, 0, D1, b""))) == 1


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
