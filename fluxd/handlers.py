"""The flux requests the daemon serves, one coroutine per kind: each maps a request's frames to a
`FileService` operation and carries the result back as frames of that request.

Chunk flow control and pacing stay here: an upload's chunks are acked only once `ChunkWriter`
made them durable through the service's handle, and a download's chunks leave within the
client's windows. Errors are raised; the session answers them with ERROR for the request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from fluxio.chunkflow import ChunkSender, ChunkWriter
from fluxio.ratelimit import Pace, paced
from fluxio.requests import Request
from fluxproto import (
    MAX_RANGES,
    Chunk,
    Commit,
    Committed,
    Delete,
    Deleted,
    Entries,
    Entry,
    FluxError,
    FrameType,
    Info,
    ListDir,
    Made,
    Meta,
    Mkdir,
    OpenDownload,
    OpenUpload,
    ProtocolError,
    Stat,
    Status,
    Symlink,
    TransportError,
    chunk_count,
    iter_indices,
    to_ranges,
)
from fluxproto.ranges import count, is_canonical

from .lane import LaneSender
from .service import Caller, DownloadHandle, FileService, Version

#: Entries per page read from storage (a folder's names are at most 255 bytes each).
LIST_PAGE = 150
#: Bytes of ENTRIES header one frame may hold, below the 64 KiB limit (a recursive listing's
#: names are relative paths, up to 4 KiB each, so its pages are cut by size).
ENTRIES_BUDGET = 60 * 1024
#: What an Entry's keys and fixed-size values take in the header at most, beside its texts.
ENTRY_OVERHEAD = 128

Handler = Callable[[Request], Awaitable[None]]


@dataclass
class Handlers:
    """What one connection's requests run: `for_frame(opening)` is the coroutine for a request.

    Args:
        service: the daemon's file service.
        caller: who the connection is (authenticated at HELLO).
        idle_timeout: how long a request waits for the client (PROTOCOL.md 13.1).
        pace: the subject's rate limit (seconds to wait before sending or taking n bytes).
        release: gives back received chunk buffers (the daemon's receive budget).
    """

    service: FileService
    caller: Caller
    idle_timeout: float
    pace: Pace | None
    release: Callable[[memoryview], None]

    def for_frame(self, opening: object) -> Handler:
        """The handler of the request `opening` opens."""
        table: dict[type, Handler] = {
            OpenUpload: self.upload,
            OpenDownload: self.download,
            ListDir: self.list,
            Stat: self.stat,
            Delete: self.delete,
            Mkdir: self.mkdir,
            Symlink: self.symlink,
        }
        return table[type(opening)]

    async def upload(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, OpenUpload)
        # A file of at most one chunk comes whole with its COMMIT (PROTOCOL.md 8.3): it is
        # committed with others behind one durability barrier, so its chunk is not durable
        # before the COMMIT and COMMITTED alone acknowledges it (8.5 lets the client not wait).
        grouped = f.attach is None and f.size <= f.chunk_size
        async with self.service.upload(
            self.caller,
            f.path,
            f.size,
            f.chunk_size,
            f.mode,
            mtime_ns=f.mtime_ns,
            grouped=grouped,
            attach=f.attach,
        ) as up:
            writer = ChunkWriter(
                req,
                up,
                executor=up.pool,
                release=self.release,
                until_commit=True,
                durable=not grouped,
                parallel=up.parallel,
            )
            try:
                # Chunks sent eagerly with OPEN_UPLOAD waited in the request's queue.
                req.send(held_status(req.rid, up.tid, up.held))
                while True:
                    frame = await req.next(self.idle_timeout)
                    if isinstance(frame, Chunk):
                        up.arrived(frame.index, frame.digest, frame.data)
                        writer.add(frame)
                        await self._paced(len(frame.data))
                        continue
                    assert isinstance(frame, Commit)
                    await writer.flush()
                    if writer.error is not None:  # the disk's failure, not a missing chunk
                        raise writer.error
                    try:
                        await up.commit(frame.digest)
                    finally:  # a shutdown waits for the commit; its reply still goes out
                        if up.committed and req.can_send(FrameType.COMMITTED):
                            req.send(Committed(req.rid, f.size, frame.digest))
                    return
            finally:
                # Chunks already received reach disk even if the client vanished or we are
                # stopping (the service closes the upload after this).
                await writer.flush()

    async def _paced(self, nbytes: int) -> None:
        """Hold the request back to the subject's and the daemon's rate (if any is set).

        While an upload waits here it takes no chunks, so none are acked, its window fills and
        the client stops sending: the limit reaches the sender through flow control.
        """
        await paced(self.pace, nbytes)

    async def download(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, OpenDownload)
        async with self.service.download(self.caller, f.path, f.chunk_size, f.attach) as dl:
            v = dl.version
            indices, n = wanted_chunks(v, f)
            if f.share and n:
                await self._share(req, dl, indices)
                return
            req.send(meta_of(req.rid, dl, n))
            if n == 0:
                return
            sender = ChunkSender(req, dl.delivered, self.idle_timeout, pace=self.pace)
            async with contextlib.aclosing(dl.chunks(indices)) as chunks:
                try:
                    await sender.send_all(chunks)
                except FluxError as exc:
                    if not isinstance(exc, TransportError | ProtocolError):
                        # The request ends with ERROR only once nothing of it is in flight
                        # (PROTOCOL.md 15.33): the client keeps acknowledging what it made durable.
                        await sender.settle()
                    raise
            await sender.settle()

    async def _share(self, req: Request, dl: DownloadHandle, indices: Iterable[int]) -> None:
        """A download whose chunks its requests share (PROTOCOL.md 9.1): this request's lane."""
        f = req.opening
        assert isinstance(f, OpenDownload)
        lane = LaneSender(req, dl, self.idle_timeout, pace=self.pace)
        with dl.shared(f.want, indices, lane.lane) as queue:
            req.send(meta_of(req.rid, dl, queue.lacking, share=True))
            await lane.serve(queue)

    async def list(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, ListDir)
        if f.recursive:
            async with self.service.walk(self.caller, f.path, LIST_PAGE, f.digests) as pages:
                async for entries, last in pages:
                    frames = fit_entries(entries)
                    for i, part in enumerate(frames):
                        done = last and i == len(frames) - 1
                        req.send(Entries(req.rid, tuple(part), done=done))
            return
        cursor: str | None = None
        while True:
            listing = self.service.list(self.caller, f.path, cursor, LIST_PAGE, f.digests)
            async with listing as page:
                entries, cursor = page
                req.send(Entries(req.rid, tuple(entries), done=cursor is None))
            if cursor is None:
                return

    async def stat(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, Stat)
        async with self.service.stat(self.caller, f.path) as entry:
            req.send(Info(req.rid, entry))

    async def delete(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, Delete)
        async with self.service.delete(self.caller, f.path, f.recursive) as count:
            req.send(Deleted(req.rid, f.path, count))

    async def mkdir(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, Mkdir)
        async with self.service.mkdir(self.caller, f.path, f.mode, f.mtime_ns, f.parents) as entry:
            req.send(Made(req.rid, entry))

    async def symlink(self, req: Request) -> None:
        f = req.opening
        assert isinstance(f, Symlink)
        async with self.service.symlink(self.caller, f.path, f.target, f.mtime_ns) as entry:
            req.send(Made(req.rid, entry))


def fit_entries(entries: Sequence[Entry]) -> list[list[Entry]]:
    """`entries` cut into runs whose ENTRIES header stays within ENTRIES_BUDGET (at least one
    run, maybe empty, so that a last page can always say `done`)."""
    runs: list[list[Entry]] = [[]]
    used = 0
    for entry in entries:
        size = ENTRY_OVERHEAD + len(entry.name.encode()) + len((entry.target or "").encode())
        if runs[-1] and used + size > ENTRIES_BUDGET:
            runs.append([])
            used = 0
        runs[-1].append(entry)
        used += size
    return runs


def held_status(rid: int, tid: bytes, held: Mapping[int, bytes]) -> Status:
    """STATUS for an upload holding `held` (index -> digest): the chunks as ranges (at most
    MAX_RANGES) + their digests.

    Reporting a subset is safe: the client just sends the chunks left out again.
    """
    ranges = to_ranges(held)[:MAX_RANGES]
    return Status(rid, tid, ranges, b"".join(held[i] for i in iter_indices(ranges)))


def meta_of(rid: int, dl: DownloadHandle, count: int, share: bool = False) -> Meta:
    """META for request `rid` of download `dl`, announcing `count` chunks."""
    v = dl.version
    return Meta(
        rid, dl.tid, v.size, v.chunk_size, v.digest, count, v.mode, v.mtime_ns, share, v.digests
    )


def wanted_chunks(dl: Version, f: OpenDownload) -> tuple[Iterable[int], int]:
    """Chunk indices to send for `f` and how many; none when the file is not the one asked for."""
    n = chunk_count(dl.size, dl.chunk_size)
    # With a digest, chunk_size is the geometry the client planned its `want` with: both pin it.
    changed = f.digest is not None and (f.digest, f.chunk_size) != (dl.digest, dl.chunk_size)
    if changed or (f.want is not None and not is_canonical(f.want, n)):
        return (), 0
    if f.want is None:
        return range(n), n
    return iter_indices(f.want), count(f.want)
