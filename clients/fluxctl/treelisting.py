# The server's recursive listing of a tree, as the record stream the synchronous planner reads.
"""A remote tree as a tree-order record stream (tree.py) for the planner (treeplan.py), which is
synchronous and runs in a worker thread, while the listing arrives on the event loop.

`RemoteListing.fill` (on the loop) asks STAT for the root, then a recursive LIST, and appends
every entry to a temporary file as its ENTRIES page arrives; `records` (in the planner's thread)
reads them back in order, waiting for more when it catches up. The pages are taken off the
connection as fast as they come, whatever the planner is doing: a request whose frames are
not taken holds up every other request of the connection (fluxio.requests), and the downloads
the plan starts run on that same connection. Memory holds one page, never the listing.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator

from fluxproto import Entries, Entry, Info, ListDir, Stat

from .session import ClientSession, cancel_on_error
from .tree import TreeEntry

__all__ = ["ListingAborted", "RemoteListing"]

#: Bytes read back at a time by `records`.
_READ = 256 * 1024


class ListingAborted(Exception):
    """`records` was waiting for entries when the listing was given up (`abort`): the run
    ends with the error that made it give up, raised on the event loop."""


def _encode(entry: Entry, name: str) -> bytes:
    digest = entry.digest.hex() if entry.digest is not None else None
    target = getattr(entry, "target", None)
    record = [name, entry.kind, entry.size, entry.mtime_ns, entry.mode, target, digest]
    return json.dumps(record).encode("ascii") + b"\n"


def _decode(line: bytes) -> TreeEntry:
    name, kind, size, mtime_ns, mode, target, digest = json.loads(line)
    raw = bytes.fromhex(digest) if digest is not None else None
    return TreeEntry(name, kind, size, mtime_ns, mode, target, raw)


class RemoteListing:
    """One remote tree's entries, spooled on disk between the loop that receives them and the
    thread that plans with them. Use as a context manager (or `close`)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._cond = threading.Condition()
        self._end = 0  # bytes written (whole lines only)
        self._done = False
        self._aborted = False
        #: The root's entry (from STAT), once `fill` has it.
        self.root: Entry | None = None

    def __enter__(self) -> RemoteListing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def fill(self, session: ClientSession, path: str, timeout: float) -> None:
        """Receive the tree at `path`: the root's entry, then everything under it if it is a
        folder. Call `abort` if this fails or is cancelled, so `records` stops waiting.

        Raises:
            FluxError: the root is missing or refused, the connection failed, ...
        """
        req = await session.open(lambda rid: Stat(rid, path))
        self.root = (await req.expect(Info, timeout)).entry
        self._append([_encode(self.root, "")])
        if self.root.kind == "dir":
            req = await session.open(lambda rid: ListDir(rid, path, True))
            with cancel_on_error(req):
                while True:
                    page = await req.expect(Entries, timeout)
                    self._append([_encode(entry, entry.name) for entry in page.entries])
                    if page.done:
                        break
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def _append(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        if not data:
            return
        # Written before it is announced: the reader never reads past `_end`.
        os.pwrite(self._file.fileno(), data, self._end)
        with self._cond:
            self._end += len(data)
            self._cond.notify_all()

    def abort(self) -> None:
        """Give up: `records` raises ListingAborted instead of waiting for more."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def records(self) -> Iterator[TreeEntry]:
        """The root (named "") and every entry under it, in the server's order, as they come;
        blocks while the listing is behind (call it in a worker thread).

        Raises:
            ListingAborted: `abort` was called before the listing was complete.
        """
        offset, rest = 0, b""
        while True:
            with self._cond:
                while offset == self._end and not (self._done or self._aborted):
                    self._cond.wait()
                if self._aborted and not self._done:
                    raise ListingAborted
                end = self._end
            if offset == end:
                return
            while offset < end:
                block = os.pread(self._file.fileno(), min(_READ, end - offset), offset)
                offset += len(block)
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield _decode(line)

    def close(self) -> None:
        self.abort()
        self._file.close()
