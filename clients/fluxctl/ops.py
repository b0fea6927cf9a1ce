"""`ls`, `stat`, `rm`: single-request operations, each retried like transfers."""

from __future__ import annotations

from typing import Any

from fluxproto import Conflict, Delete, Deleted, Entries, Entry, Info, ListDir, Stat, format_digest

from .session import ClientSession


async def list_entries(
    session: ClientSession,
    path: str,
    timeout: float,
    recursive: bool = False,
    digests: bool = False,
) -> list[Entry]:
    """Every entry of a directory (or the one entry of a file), from the ENTRIES pages the
    server streams until the last; with `recursive`, everything under it, named by paths
    relative to it. Files carry their digests only with `digests` (the server reads one
    manifest per file for them)."""
    req = await session.open(lambda rid: ListDir(rid, path, recursive, digests))
    entries: list[Entry] = []
    while True:
        page = await req.expect(Entries, timeout)
        entries.extend(page.entries)
        if page.done:
            return entries


async def stat_entry(session: ClientSession, path: str, timeout: float) -> Entry:
    req = await session.open(lambda rid: Stat(rid, path))
    return (await req.expect(Info, timeout)).entry


async def remove(session: ClientSession, path: str, timeout: float, recursive: bool = False) -> int:
    """Delete the file or link at `path` (with `recursive`, a folder and all it holds); the
    number of entries removed.

    Raises:
        Conflict: a folder without `recursive` (the message says to add -r).
    """
    req = await session.open(lambda rid: Delete(rid, path, recursive))
    try:
        return (await req.expect(Deleted, timeout)).count
    except Conflict as exc:
        if recursive or not exc.message.endswith("is a directory"):
            raise
        raise Conflict(f"{exc.message} (use -r)") from None


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "kind": entry.kind,
        "size": entry.size,
        "mtime": entry.mtime_ns / 1e9,
        "mode": f"{entry.mode:04o}",
        "digest": format_digest(entry.digest) if entry.digest else None,
    }
