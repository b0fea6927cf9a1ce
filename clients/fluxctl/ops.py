"""`ls`, `stat`, `rm`: single-request operations, each retried like transfers."""

from __future__ import annotations

from typing import Any

from fluxio.chunkflow import Channel, expect
from fluxproto import Delete, Deleted, Entry, Info, ListDir, Listing, Stat, format_digest


async def list_entries(ch: Channel, path: str, timeout: float) -> list[Entry]:
    """Every entry of a directory (or the one entry of a file), following LISTING pages."""
    entries: list[Entry] = []
    cursor: str | None = None
    while True:
        ch.send(ListDir(path, cursor))
        page = await expect(ch, Listing, timeout)
        entries.extend(page.entries)
        if page.cursor is None:
            return entries
        cursor = page.cursor


async def stat_entry(ch: Channel, path: str, timeout: float) -> Entry:
    ch.send(Stat(path))
    return (await expect(ch, Info, timeout)).entry


async def remove(ch: Channel, path: str, timeout: float) -> None:
    ch.send(Delete(path))
    await expect(ch, Deleted, timeout)


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "kind": entry.kind,
        "size": entry.size,
        "mtime": entry.mtime_ns / 1e9,
        "mode": f"{entry.mode:04o}",
        "digest": format_digest(entry.digest) if entry.digest else None,
    }
