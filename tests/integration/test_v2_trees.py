"""Tree requests of protocol version 2 against a real daemon, over TCP and QUIC: MKDIR, SYMLINK,
an upload that keeps its mtime, LIST and DELETE recursive, ENTRIES pages cut by size, and
digests in a listing only when LIST asks."""

from __future__ import annotations

import os

import pytest
import uvloop

from fluxctl.ops import list_entries
from fluxctl.session import ClientSession
from fluxproto import (
    MAX_HEADER,
    Chunk,
    Commit,
    Committed,
    Delete,
    Deleted,
    Entries,
    Entry,
    Made,
    Mkdir,
    NotFound,
    OpenUpload,
    PermissionDenied,
    Stat,
    Status,
    Symlink,
    chunk_digest,
)

from .conftest import Daemon
from .test_v2 import CS, LONG, session

MTIME = 1_600_000_000_123_456_789


async def listing(s: ClientSession, path: str) -> list[Entry]:
    return await list_entries(s, path, LONG, recursive=True)


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_folders_links_and_mtimes_make_a_round_trip_and_go_recursively(
    daemon: Daemon, transport: str
) -> None:
    data = os.urandom(1000)

    async def main() -> None:
        async with session(daemon, transport) as s:
            req = await s.open(lambda rid: Mkdir(rid, "/t/a/b", mode=0o750, mtime_ns=MTIME))
            made = (await req.expect(Made, LONG)).entry
            assert (made.kind, made.mode & 0o777) == ("dir", 0o750)
            req = await s.open(lambda rid: Mkdir(rid, "/t/empty"))
            assert (await req.expect(Made, LONG)).entry.kind == "dir"
            req = await s.open(lambda rid: Symlink(rid, "/t/a/l", "b/f"))
            link = (await req.expect(Made, LONG)).entry
            assert (link.kind, link.target) == ("link", "b/f")
            req = await s.open(lambda rid: Symlink(rid, "/t/a/out", "../../../etc/passwd"))
            with pytest.raises(PermissionDenied):
                await req.expect(Made, LONG)

            # A small file in one flight, with its mtime: OPEN_UPLOAD, CHUNK, COMMIT at once.
            digest = chunk_digest(data)
            req = await s.open(
                lambda rid: OpenUpload(rid, "/t/a/b/f", len(data), CS, 0o600, mtime_ns=MTIME)
            )
            req.send(Chunk(req.rid, 0, digest, data))
            req.send(Commit(req.rid, digest, 1))
            await req.expect(Status, LONG)
            await req.expect(Committed, LONG)

            entries = {e.name: e for e in await listing(s, "/t")}
            assert set(entries) == {"a", "a/b", "a/b/f", "a/l", "empty"}
            assert entries["a/l"].target == "b/f"
            f = entries["a/b/f"]
            assert (f.kind, f.size, f.mtime_ns, f.mode & 0o777) == ("file", 1000, MTIME, 0o600)

            req = await s.open(lambda rid: Delete(rid, "/t", recursive=True))
            deleted = await req.expect(Deleted, LONG)
            assert deleted.count == 6  # t, a, a/b, a/b/f, a/l, empty
            req = await s.open(lambda rid: Stat(rid, "/t"))
            with pytest.raises(NotFound):
                await req.expect(Entries, LONG)

    uvloop.run(main())
    assert (daemon.root / "t").exists() is False
    assert [p for p in daemon.root.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_a_recursive_listing_of_long_names_comes_in_pages_under_the_header_limit(
    daemon: Daemon, transport: str
) -> None:
    deep = daemon.root / "big" / ("d" * 200) / ("e" * 200) / ("f" * 200)
    deep.mkdir(parents=True)
    names = {f"{i:03}" + "x" * 200 for i in range(300)}
    for name in names:
        (deep / name).write_bytes(b"")

    async def main() -> tuple[list[Entry], int]:
        async with session(daemon, transport) as s:
            before = s.router.counts.get("received ENTRIES", 0)
            entries = await listing(s, "/big")
            return entries, s.router.counts["received ENTRIES"] - before

    entries, pages = uvloop.run(main())
    prefix = "/".join(["d" * 200, "e" * 200, "f" * 200])
    files = {e.name.rsplit("/", 1)[1] for e in entries if e.kind == "file"}
    assert files == names
    assert all(e.name.startswith(prefix) or e.kind == "dir" for e in entries)
    assert len(entries) == 303
    # ~300 KiB of names: cut into several frames, each encodable (the daemon would fail to
    # send a frame whose header exceeds MAX_HEADER).
    assert pages >= 300 * 800 // MAX_HEADER


@pytest.mark.parametrize("recursive", [False, True])
def test_a_listing_carries_digests_only_when_asked(daemon: Daemon, recursive: bool) -> None:
    data = os.urandom(1000)

    async def main() -> tuple[list[Entry], list[Entry]]:
        async with session(daemon, "tcp") as s:
            digest = chunk_digest(data)  # one chunk: the whole file's digest too
            req = await s.open(lambda rid: OpenUpload(rid, "/t/f", len(data), CS, 0o600))
            req.send(Chunk(req.rid, 0, digest, data))
            req.send(Commit(req.rid, digest, 1))
            await req.expect(Status, LONG)
            await req.expect(Committed, LONG)
            plain = await list_entries(s, "/t", LONG, recursive)
            asked = await list_entries(s, "/t", LONG, recursive, digests=True)
            return plain, asked

    plain, asked = uvloop.run(main())
    assert [(e.name, e.kind, e.digest) for e in plain] == [("f", "file", None)]
    assert [(e.name, e.kind, e.digest) for e in asked] == [("f", "file", chunk_digest(data))]
