"""PROTOCOL.md stays in step with the code: its frame codes, key orders, limits, decision
numbers and worked byte examples (among them the version-1 HELLO a version-2 server answers)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from proto_support import REQUEST_SAMPLES, V1_HELLO, ConnectionPair, drain, drive

import fluxproto
from fluxproto import (
    Ack,
    Chunk,
    Commit,
    Committed,
    Connection,
    Done,
    EndReason,
    Error,
    Frame,
    FrameReader,
    FrameType,
    Hello,
    Meta,
    OpenDownload,
    OpenUpload,
    RequestEnded,
    State,
    Status,
    chunk_digest,
    frames,
    multiplex,
)

HERE = Path(fluxproto.__file__).resolve().parent.parent
DOC = (HERE / "PROTOCOL.md").read_text()
HELLO_DIGEST = chunk_digest(b"hello")


def decode_all(blob: str) -> list[Frame]:
    reader = FrameReader()
    reader.feed(bytes.fromhex(blob))
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    assert reader.at_boundary
    return out


def hex_blobs(text: str) -> list[str]:
    return re.findall(r"`([0-9a-f]{40,})`", text)


def test_every_hex_example_decodes() -> None:
    decoded = [frame for blob in hex_blobs(DOC) for frame in decode_all(blob)]
    assert len(decoded) == 13
    assert decoded[0] == Hello(
        versions=(2,), caps=("xxh3-128",), window=65536, agent="t/2", transfer_window=16384,
        requests=8,
    )  # fmt: skip
    assert decoded[6] == Error(
        505, "fluxd speaks flux protocol 2, this client speaks 1: upgrade fluxctl"
    )
    assert not (HERE / "V2.md").exists(), "folded into PROTOCOL.md"


def test_the_one_flight_example_is_what_the_connections_do() -> None:
    flight, answer = (bytes.fromhex(b) for b in hex_blobs(DOC)[1:3])
    pair = drive(ConnectionPair(), State.OPEN)
    tid = bytes.fromhex("7a3f0c1e9b2d48e6a1c5f0d2b3e4a697")
    frames_sent = [
        OpenUpload(1, "hello.txt", 5, 4096),
        Chunk(1, 0, HELLO_DIGEST, b"hello"),
        Commit(1, HELLO_DIGEST, 1),
    ]
    for frame in frames_sent:
        pair.client.send(frame)
    assert b"".join(bytes(b) for b in pair.client.data_to_send()) == flight
    pair.server.receive_data(flight)
    assert drain(pair.server) == frames_sent
    pair.server.send(Status(1, tid))
    pair.server.send(Committed(1, 5, HELLO_DIGEST))
    assert b"".join(bytes(b) for b in pair.server.data_to_send()) == answer
    pair.client.receive_data(answer)
    assert drain(pair.client)[-1] == RequestEnded(1, EndReason.COMMITTED)
    assert pair.client.sent_inflight == 0


def test_the_shared_download_example_is_what_the_connections_do() -> None:
    """16.4: connection B joins a shared transfer that A opened, carries chunk 1 and ends with
    DONE once chunk 0 was acknowledged on A."""
    data = bytes(4096) + b"hello"
    d0, d1, whole = chunk_digest(data[:4096]), HELLO_DIGEST, chunk_digest(data)
    tid = bytes.fromhex("7a3f0c1e9b2d48e6a1c5f0d2b3e4a697")
    meta = Meta(1, tid, len(data), 4096, whole, 2, share=True, digests=d0 + d1)
    a, b = (drive(ConnectionPair(), State.OPEN) for _ in range(2))
    a.c2s(OpenDownload(1, "f", None, None, 4096, share=True))
    a.s2c(meta)
    a.s2c(Chunk(1, 0, d0, data[:4096]))
    client_b, server_b = (bytes.fromhex(blob) for blob in hex_blobs(DOC)[4:6])
    wire = {b.client: bytearray(), b.server: bytearray()}

    def send(conn: Connection, frame: Frame) -> list[object]:
        conn.send(frame)
        out = b"".join(bytes(x) for x in conn.data_to_send())
        wire[conn] += out
        b.other(conn).receive_data(out)
        return drain(b.other(conn))

    send(b.client, OpenDownload(1, "f", None, whole, 4096, tid, share=True))
    send(b.server, meta)
    send(b.server, Chunk(1, 1, d1, b"hello"))
    assert send(b.client, Ack(1, ((1, 1),))) == [Ack(1, ((1, 1),))]  # no end: chunk 0 lacks
    a.c2s(Ack(1, ((0, 1),)))
    assert send(b.server, Done(1)) == [Done(1), RequestEnded(1, EndReason.DOWNLOADED)]
    assert a.s2c(Done(1)) == [Done(1), RequestEnded(1, EndReason.DOWNLOADED)]
    assert (wire[b.client], wire[b.server]) == (client_b, server_b)


def test_the_version_1_hello_in_the_document_is_the_one_tested() -> None:
    assert bytes.fromhex(hex_blobs(DOC)[-1]) == V1_HELLO
    assert decode_all(V1_HELLO.hex())[0] == Hello(
        versions=(1,), caps=("xxh3-128",), window=65536, agent="t/1"
    )


def test_frame_codes_match() -> None:
    section = DOC[DOC.index("## 5. Frames") : DOC.index("### 5.1 Keys")]
    rows = re.findall(r"^\| (0x[0-9A-F]{2}) \| ([A-Z_]+) +\|", section, re.M)
    assert {name: int(code, 16) for code, name in rows} == {t.name: int(t) for t in FrameType}


def test_key_orders_match_the_encoder() -> None:
    section = DOC[DOC.index("### 5.1 Keys") : DOC.index("### 0x01 HELLO")]
    rows = re.findall(r"^\| ([A-Z_]+) +\| (.+?)\|$", section, re.M)
    listed = {name: re.findall(r"`([a-z_]+)`", keys.split(";")[0]) for name, keys in rows}
    assert "frame" not in listed or listed.pop("frame") == []
    assert set(listed) == {t.name for t in FrameType}  # every frame
    for name, keys in listed.items():
        sample = REQUEST_SAMPLES[FrameType[name]]
        fields = [f.name for f in dataclasses.fields(sample) if f.name != sample.PAYLOAD]
        assert fields == keys, name
        # Keys left out when nil or false (15.10, 15.40) keep the order of the rest.
        assert list(sample.header()) == [k for k in keys if k in sample.header()], name
        payload = sample.PAYLOAD
        assert payload is None or f"payload `{payload}`" in dict(rows)[name]


def _number(value: str) -> int | None:
    token = value.split(maxsplit=1)[0]
    if m := re.fullmatch(r"(\d+)\^(\d+)(-1)?", token):
        return int(m[1]) ** int(m[2]) - (1 if m[3] else 0)
    if token.startswith("0o"):
        return int(token, 8)
    return int(token) if token.isdigit() else None


def limits_table(text: str) -> dict[str, int]:
    rows = re.findall(r"^\| `([A-Z_]+)` +\| ([^|]+)\|", text, re.M)
    return {name: n for name, value in rows if (n := _number(value)) is not None}


def test_the_limits_table_matches_the_constants() -> None:
    section = DOC[DOC.index("## 13. Limits") : DOC.index("### 13.1 Timeouts")]
    table = limits_table(section)
    for name, number in table.items():
        module = multiplex if name == "LATE_RIDS" else frames
        assert getattr(module, name) == number, name
    assert {"MAX_HEADER", "MAX_CHUNK", "MAX_RID", "MAX_REQUESTS", "TID_SIZE", "LATE_RIDS"} <= set(
        table
    )


def test_decision_references_exist() -> None:
    decisions = DOC[DOC.index("## 15. Decisions") : DOC.index("## 16. Worked")]
    numbered = [int(n) for n in re.findall(r"^(\d+)\. \*\*", decisions, re.M)]
    assert numbered == list(range(1, len(numbered) + 1))
    cited = {int(n) for n in re.findall(r"\b15\.(\d+)\b", DOC)}
    assert cited <= set(numbered)
    assert len(numbered) == 46


def test_every_section_the_contents_name_is_there() -> None:
    contents = DOC[DOC.index("## Contents") : DOC.index("## 1. Overview")]
    for number, title in re.findall(r"^(\d+)\. (.+)$", contents, re.M):
        assert f"\n## {number}. {title}\n" in DOC, title
