"""Protocol version 2 against a real daemon: version negotiation with version-1 peers, many
requests at once over one connection (TCP and QUIC), CANCEL, and attaching to a transfer from
another connection."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from fluxctl.connect import ClientOptions, connect
from fluxctl.download import Download
from fluxctl.many import Outcome, download_many, upload_many
from fluxctl.session import ClientSession
from fluxctl.trust import TrustPolicy
from fluxctl.upload import Upload
from fluxctl.url import FluxURL
from fluxd.certs import init_certs
from fluxio.chunkflow import ChunkSender
from fluxio.requests import Request
from fluxio.tls import server_ssl_context
from fluxproto import (
    Ack,
    Cancelled,
    Chunk,
    Commit,
    Committed,
    FrameReader,
    Hello,
    Info,
    NotFound,
    OpenUpload,
    Stat,
    Status,
    chunk_digest,
    encode_bytes,
)
from fluxproto import Error as ErrorFrame
from fluxproto.frames import FrameType

from .conftest import Daemon, Fluxctl
from .rawpeer import RawPeer, raw_frame
from .test_errors import one_line

FILES = 200
CS = 64 * 1024
LONG = 60.0


def options(daemon: Daemon, transport: str) -> ClientOptions:
    trust = TrustPolicy.from_options(None, daemon.fingerprint)
    return ClientOptions(trust=trust, transport=transport, chunk_size=CS)


@contextlib.asynccontextmanager
async def session(daemon: Daemon, transport: str) -> AsyncIterator[ClientSession]:
    """One connection to the daemon, with its requests routed."""
    ch = await connect(FluxURL("127.0.0.1", daemon.port, "/"), options(daemon, transport))
    s = ClientSession(ch)
    try:
        yield s
    finally:
        await s.close()
        ch.close()


# --- negotiation --------------------------------------------------------------------------------


def test_a_version_1_client_hears_505_telling_it_to_upgrade_fluxctl(daemon: Daemon) -> None:
    peer = RawPeer(daemon.port, alpn="flux/1")  # a version-1 fluxctl offers flux/1 only
    try:
        v1_hello = {
            "versions": [1],
            "caps": ["xxh3-128"],
            "window": 65536,
            "agent": "fluxctl/0.1.0",
            "token": None,
            "magic": "FLUX",
        }
        peer.send(raw_frame(FrameType.HELLO, v1_hello))
        answer = peer.read_frame()
        assert answer == ErrorFrame(
            505, "fluxd speaks flux protocol 2, this client speaks 1: upgrade fluxctl"
        )
        assert peer.closed_by_server(10)
    finally:
        peer.close()


@contextlib.contextmanager
def version_1_server(certs: Path) -> Iterator[int]:
    """A stand-in for a version-1 fluxd: TLS with ALPN flux/1 only, and ERROR 505 to every
    HELLO, as a version-1 daemon answers one that does not offer version 1."""
    ctx = server_ssl_context(init_certs(certs))
    ctx.set_alpn_protocols(["flux/1"])
    listener = socket.create_server(("127.0.0.1", 0))
    answered: list[Hello] = []

    def serve() -> None:
        with (
            contextlib.suppress(OSError),
            listener.accept()[0] as raw,
            ctx.wrap_socket(raw, server_side=True) as tls,
        ):
            reader = FrameReader()
            while (hello := reader.next_frame()) is None:
                reader.feed(tls.recv(65536))
            assert isinstance(hello, Hello)
            answered.append(hello)
            tls.sendall(encode_bytes(ErrorFrame(505, "server speaks protocol version 1")))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(LONG)
    assert [h.versions for h in answered] == [(2,)]


def test_a_version_2_client_of_a_version_1_server_says_upgrade_fluxd(
    fluxctl: Fluxctl, tmp_path: Path
) -> None:
    with version_1_server(tmp_path / "v1-certs") as port:
        url = f"flux://127.0.0.1:{port}/x"
        res = fluxctl("stat", url, "--transport", "tcp", "--retry-for", "0")
    assert res.code == 1, res.stderr
    assert one_line(res.stderr) == (
        f"fluxctl: 127.0.0.1:{port} speaks flux protocol 1 (fluxd too old), fluxctl speaks 2: "
        "upgrade fluxd"
    )


# --- many requests on one connection ------------------------------------------------------------


def small_files(root: Path, n: int) -> list[Path]:
    root.mkdir()
    files = []
    for i in range(n):
        path = root / f"f{i:03}.bin"
        path.write_bytes(os.urandom(1 + (i * 997) % (2 * 4096)))
        files.append(path)
    return files


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_many_small_files_share_round_trips_on_one_connection(
    daemon: Daemon, tmp_path: Path, transport: str
) -> None:
    files = small_files(tmp_path / "src", FILES)
    out = tmp_path / "out"
    out.mkdir()
    opts = options(daemon, transport)

    def uploads(folder: str) -> list[Upload]:
        url = FluxURL("127.0.0.1", daemon.port, f"/{folder}/")
        return [Upload(path, url, opts) for path in files]

    async def main() -> tuple[dict[str, int], int, int]:
        async with session(daemon, transport) as s:
            assert s.transport == transport
            # The same files one after another on the same connection: a round trip each.
            for up in uploads("one-by-one"):
                await up.attempt(s, 0)
            sequential = s.router.idle_opens
            before = dict(s.router.counts)
            results = await upload_many(s, uploads("together"))
            assert [r for r in results if isinstance(r, Exception)] == []
            together = s.router.idle_opens - sequential
            counts = {k: v - before.get(k, 0) for k, v in s.router.counts.items()}
            back = [
                Download(FluxURL("127.0.0.1", daemon.port, f"/together/{p.name}"), out, opts)
                for p in files
            ]
            received = await download_many(s, back)
            assert [r for r in received if isinstance(r, Exception)] == []
        return counts, sequential, together

    counts, sequential, together = uvloop.run(main())
    for path in files:
        assert (out / path.name).read_bytes() == path.read_bytes()
        assert (daemon.root / "together" / path.name).read_bytes() == path.read_bytes()
    assert sequential == FILES  # every request waited for the one before
    assert together < FILES // 10, f"{together} of {FILES} files waited for a round trip"
    # One flight each: OPEN_UPLOAD, CHUNK and COMMIT out, STATUS and COMMITTED back, no ACK.
    for sent in ("OPEN_UPLOAD", "CHUNK", "COMMIT"):
        assert counts[f"sent {sent}"] == FILES, counts
    for received in ("STATUS", "COMMITTED"):
        assert counts[f"received {received}"] == FILES, counts
    assert "received ACK" not in counts


# --- CANCEL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_cancelling_an_upload_midway_leaves_the_connection_usable(
    daemon: Daemon, tmp_path: Path, transport: str
) -> None:
    data = os.urandom(8 * CS)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    opts = options(daemon, transport)

    async def main() -> int:
        async with session(daemon, transport) as s:
            req = await s.open(lambda rid: OpenUpload(rid, "/big.bin", len(data), CS))
            await req.expect(Status, LONG)
            for i in range(2):
                piece = data[i * CS : (i + 1) * CS]
                req.send(Chunk(req.rid, i, chunk_digest(piece), piece))
            acked = 0
            while acked < 2:
                ack = await req.expect(Ack, LONG)
                acked += sum(n for _, n in ack.ranges)
            req.cancel()
            with pytest.raises(Cancelled):
                while True:
                    await req.next(LONG)  # ACKs that crossed the CANCEL are dropped
            # The same connection serves the next request, and the chunks stayed staged.
            up = Upload(src, FluxURL("127.0.0.1", daemon.port, "/big.bin"), opts)
            await up.attempt(s, 0)
            return up.skipped

    assert uvloop.run(main()) == 2 * CS
    assert (daemon.root / "big.bin").read_bytes() == data


# --- attach -------------------------------------------------------------------------------------


async def send_pieces(req: Request, pieces: list[bytes], indices: range) -> int:
    """Send chunks `indices` of `pieces` on upload request `req`; returns the count sent."""

    async def chunks() -> AsyncIterator[tuple[int, bytes, bytes]]:
        for i in indices:
            yield i, chunk_digest(pieces[i]), pieces[i]

    sender = ChunkSender(req, lambda n: None, LONG)
    await sender.send_all(chunks())
    await sender.settle()
    return sender.count


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_two_connections_upload_disjoint_chunks_of_one_file(
    daemon: Daemon, tmp_path: Path, transport: str
) -> None:
    data = os.urandom(4 * CS)
    pieces = [data[i * CS : (i + 1) * CS] for i in range(4)]
    digest = chunk_digest(data)

    def send(req: Request, indices: range) -> Awaitable[int]:
        return send_pieces(req, pieces, indices)

    async def main() -> tuple[bytes, list[tuple[int, int]]]:
        async with session(daemon, transport) as a, session(daemon, transport) as b:
            first = await a.open(lambda rid: OpenUpload(rid, "/joint.bin", len(data), CS))
            tid = (await first.expect(Status, LONG)).tid
            sent_a = await send(first, range(2))
            other = await b.open(
                lambda rid: OpenUpload(rid, "/joint.bin", len(data), CS, attach=tid)
            )
            status = await other.expect(Status, LONG)
            assert status.tid == tid
            sent_b = await send(other, range(2, 4))
            other.send(Commit(other.rid, digest, sent_b))
            assert await other.expect(Committed, LONG) == Committed(other.rid, len(data), digest)
            # The opener's COMMIT finds it done.
            first.send(Commit(first.rid, digest, sent_a))
            await first.expect(Committed, LONG)
            # A finished transfer, or one nobody opened, cannot be joined.
            for unknown in (tid, os.urandom(16)):
                late = await b.open(
                    lambda rid, t=unknown: OpenUpload(rid, "/joint.bin", len(data), CS, attach=t)
                )
                with pytest.raises(NotFound):
                    await late.next(LONG)
            info = await (await a.open(lambda rid: Stat(rid, "/joint.bin"))).expect(Info, LONG)
            assert info.entry.size == len(data)
            return tid, list(status.held)

    tid, held = uvloop.run(main())
    assert len(tid) == 16
    assert held == [(0, 2)]  # what the first connection had made durable
    assert (daemon.root / "joint.bin").read_bytes() == data
    uploads = [e for e in daemon.events("access") if e.get("op") == "upload"]
    assert [e["result"] for e in uploads[:2]] == ["ok", "ok"]
    assert sorted(e["bytes"] for e in uploads[:2]) == [2 * CS, 2 * CS]


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_small_files_waiting_for_window_room_take_a_status_that_came_first(
    make_daemon: Callable[..., Daemon], tmp_path: Path, transport: str
) -> None:
    """A window of 16 KiB holds two of these files: the others' chunks wait for room while
    their STATUS (sent by the server as soon as it opened the upload) arrives first."""
    daemon = make_daemon("--window", "16K")
    files = small_files(tmp_path / "src", FILES)
    opts = options(daemon, transport)
    url = FluxURL("127.0.0.1", daemon.port, "/w/")

    async def main() -> list[Outcome]:
        async with session(daemon, transport) as s:
            return await upload_many(s, [Upload(path, url, opts) for path in files])

    results = uvloop.run(main())
    assert [r for r in results if isinstance(r, Exception)] == []
    for path in files:
        assert (daemon.root / "w" / path.name).read_bytes() == path.read_bytes()
