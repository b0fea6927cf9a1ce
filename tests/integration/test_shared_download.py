"""One download over several connections at once (PROTOCOL.md 9.1) against a real daemon: the
chunks go on every connection (TCP, QUIC, both), a connection cut or blackholed mid-way leaves
the file to the others, nothing is counted twice in the access log, and another subject cannot
join the transfer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fluxctl.connect import ClientOptions, connect
from fluxctl.download import Download
from fluxctl.session import ClientSession
from fluxctl.trust import TrustPolicy
from fluxctl.url import FluxURL
from fluxproto import ConnectionLost, Meta, NotFound, OpenDownload, chunk_count

from .conftest import Daemon, wait_for
from .proxy import Proxy
from .test_admin import get, sample
from .test_auth import FULL, issue
from .udp_relay import UdpRelay

CS = 64 * 1024
#: The client's window: a few chunks, so that one connection cannot take the whole file
#: before the others have joined.
WINDOW = 4 * CS
SIZE = 16 * 1024 * 1024 + 1234
LONG = 60.0


def options(daemon: Daemon, transport: str, token: str | None = None) -> ClientOptions:
    trust = TrustPolicy.from_options(None, daemon.fingerprint)
    return ClientOptions(
        trust=trust, transport=transport, chunk_size=CS, window=WINDOW, token=token,
        io_timeout=20.0,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def sessions(
    daemon: Daemon, lanes: list[tuple[str, int]], token: str | None = None
) -> AsyncIterator[list[ClientSession]]:
    """One session per (transport, port) lane; the port may be a proxy's or a relay's."""
    made: list[ClientSession] = []
    try:
        for transport, port in lanes:
            ch = await connect(FluxURL("127.0.0.1", port, "/"), options(daemon, transport, token))
            made.append(ClientSession(ch))
        yield made
    finally:
        for s in made:
            await s.close()
            s.ch.close()


def chunks_on(s: ClientSession) -> int:
    return s.router.counts.get("received CHUNK", 0)


def downloads(daemon: Daemon, path: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events("access") if e.get("op") == "download" and e["path"] == path]


@pytest.fixture
def source(daemon: Daemon) -> bytes:
    data = os.urandom(SIZE)
    (daemon.root / "big.bin").write_bytes(data)
    return data


async def until(predicate: Callable[[], bool], what: str, timeout: float = LONG) -> None:
    """Wait on the loop for `predicate` (a condition, checked between the loop's turns)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Written:
    """The progress a Download reports: bytes made durable in the staged file, which only
    chunks written count (a copy that came on a second connection is not written again)."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        assert done <= total == SIZE
        self.done = done


def download(daemon: Daemon, out: Path, written: Written | None = None) -> Download:
    url = FluxURL("127.0.0.1", daemon.port, "/big.bin")
    return Download(url, out, options(daemon, "tcp"), written)


def fetch(daemon: Daemon, lanes: list[tuple[str, int]], out: Path) -> tuple[Meta, list[int]]:
    """Download /big.bin over one session per lane: META, and the chunks each carried."""
    written = Written()

    async def main() -> tuple[Meta, list[int]]:
        async with sessions(daemon, lanes) as ss:
            meta = await download(daemon, out, written).attempt_over(ss)
            return meta, [chunks_on(s) for s in ss]

    found = uvloop.run(main())
    assert written.done == SIZE  # every chunk written once
    return found


def records_add_up(daemon: Daemon, size: int, n: int) -> list[dict[str, Any]]:
    """Every request of the download logged once, and their bytes add up to the file: each
    chunk counted on the one request whose acknowledgement came first."""
    wait_for(lambda: len(downloads(daemon, "/big.bin")) >= n, what=f"{n} access records")
    records = downloads(daemon, "/big.bin")
    assert len(records) == n, records
    assert sum(r["bytes"] for r in records) == size, records
    return records


# --- sharing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transports", [("tcp", "tcp"), ("quic", "quic"), ("tcp", "quic")], ids="-".join
)
def test_two_sessions_share_a_download_and_both_carry_chunks(
    daemon: Daemon, source: bytes, tmp_path: Path, transports: tuple[str, str]
) -> None:
    out = tmp_path / "out.bin"
    lanes = [(t, daemon.port) for t in transports]
    meta, carried = fetch(daemon, lanes, out)
    assert out.read_bytes() == source
    assert meta.size == SIZE
    assert all(n > 0 for n in carried), carried
    # Each chunk was written once; copies sent again (a lane that looked stalled) are
    # acknowledged and dropped.
    assert sum(carried) >= chunk_count(SIZE, CS)
    records = records_add_up(daemon, SIZE, 2)
    assert [r["result"] for r in records] == ["ok", "ok"]
    assert {r["transport"] for r in records} == set(transports)


def test_a_cut_connection_leaves_the_rest_to_the_other(
    daemon: Daemon, source: bytes, tmp_path: Path
) -> None:
    """The second connection goes through a proxy that stops passing the server's bytes after
    a few chunks and then resets both sides: the chunks it had in flight go on the first."""
    proxy = Proxy(daemon.port, limit=12 * CS, upstream=False)
    out, written = tmp_path / "out.bin", Written()

    async def main() -> list[int]:
        async with sessions(daemon, [("tcp", daemon.port), ("tcp", proxy.port)]) as ss:
            run = asyncio.ensure_future(download(daemon, out, written).attempt_over(ss))
            await until(lambda: chunks_on(ss[1]) > 0, "a chunk on the second connection")
            await asyncio.to_thread(proxy.stalled.wait, LONG)
            proxy.cut()
            await run
            return [chunks_on(s) for s in ss]

    try:
        carried = uvloop.run(main())
    finally:
        proxy.close()
    assert out.read_bytes() == source
    assert carried[1] > 0 and carried[0] > 0
    assert written.done == SIZE
    records = records_add_up(daemon, SIZE, 2)
    assert sorted(r["result"] == "ok" for r in records) == [False, True], records
    # What the cut connection had been sent and not acknowledged was sent again on the first:
    # at most its window's worth (4 chunks) and what its reads had ahead (READ_AHEAD, 4).
    resent = sum(r.get("resent", 0) for r in records)
    assert 0 < resent <= WINDOW // CS + 4, records
    metrics = get(daemon, "/metrics")[1]
    assert sample(metrics, "fluxd_chunks_resent_total") == resent


def test_a_blackholed_quic_connection_leaves_the_rest_to_tcp(
    daemon: Daemon, source: bytes, tmp_path: Path, relays: Callable[..., UdpRelay]
) -> None:
    """QUIC goes through a relay that drops everything after a few chunks arrived: its chunks
    in flight count as stalled and go on the TCP connection, which finishes the file; the QUIC
    request is given up once the file is whole."""
    relay = relays(daemon.port)
    out, written = tmp_path / "out.bin", Written()

    async def main() -> list[int]:
        async with sessions(daemon, [("tcp", daemon.port), ("quic", relay.port)]) as ss:
            run = asyncio.ensure_future(download(daemon, out, written).attempt_over(ss))
            await until(lambda: chunks_on(ss[1]) >= 2, "chunks on the QUIC connection")
            relay.set(blackhole=True)
            await run
            carried = [chunks_on(s) for s in ss]
            relay.set(blackhole=False)  # the daemon hears the CANCEL and logs the request
            return carried

    carried = uvloop.run(main())
    assert out.read_bytes() == source
    assert carried[0] > 0 and carried[1] >= 2
    assert written.done == SIZE
    records_add_up(daemon, SIZE, 2)


def test_every_connection_lost_the_next_attempt_asks_only_for_what_is_missing(
    daemon: Daemon, source: bytes, tmp_path: Path
) -> None:
    """Both connections are cut part-way: the attempt fails, the transfer is gone with them,
    and a new attempt over two new connections shares a download of the missing chunks."""
    proxies = [Proxy(daemon.port, limit=40 * CS, upstream=False) for _ in range(2)]
    out = tmp_path / "out.bin"
    first = download(daemon, out)

    async def cut_short() -> None:
        async with sessions(daemon, [("tcp", p.port) for p in proxies]) as ss:
            run = asyncio.ensure_future(first.attempt_over(ss))
            for proxy in proxies:
                await asyncio.to_thread(proxy.stalled.wait, LONG)
                proxy.cut()
            with pytest.raises(ConnectionLost):
                await run

    try:
        uvloop.run(cut_short())
    finally:
        for proxy in proxies:
            proxy.close()
    assert 0 < first.received < SIZE
    again = download(daemon, out)
    _, carried = uvloop.run(resume(daemon, again))
    assert out.read_bytes() == source
    assert again.skipped and again.skipped > 0
    assert again.received <= SIZE - again.skipped + 2 * WINDOW  # (copies of stalled chunks)
    assert all(n > 0 for n in carried), carried


async def resume(daemon: Daemon, dl: Download) -> tuple[Meta, list[int]]:
    async with sessions(daemon, [("tcp", daemon.port), ("tcp", daemon.port)]) as ss:
        meta = await dl.attempt_over(ss)
        return meta, [chunks_on(s) for s in ss]


# --- who may join ---------------------------------------------------------------------------------


def test_another_subjects_attach_is_refused(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("--no-anonymous")
    (d.root / "big.bin").write_bytes(os.urandom(SIZE))
    alice, bob = issue(d, "alice", *FULL), issue(d, "bob", *FULL)

    async def main() -> None:
        async with (
            sessions(d, [("tcp", d.port)], alice) as (a,),
            sessions(d, [("tcp", d.port)], bob) as (b,),
        ):
            first = await a.open(lambda rid: OpenDownload(rid, "/big.bin", share=True))
            meta = await first.expect(Meta, LONG)
            assert meta.share
            joining = await b.open(
                lambda rid: OpenDownload(
                    rid, "/big.bin", None, meta.digest, meta.chunk_size, meta.tid, share=True
                )
            )
            with pytest.raises(NotFound):
                await joining.next(LONG)
            first.cancel()

    uvloop.run(main())
    # The daemon's log reaches the test through a reader thread: wait for bob's line.
    wait_for(
        lambda: any(r["subject"] == "bob" for r in downloads(d, "/big.bin")),
        what="the access record of bob's refused attach",
    )
    records = downloads(d, "/big.bin")
    refused = [r for r in records if r["subject"] == "bob"]
    assert refused and refused[0]["result"].startswith("error 404"), records
