"""Upload and download handles: what a transport drives once the service has opened a transfer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Executor
from dataclasses import dataclass

from fluxio.chunkflow import prefetch
from fluxio.staging import ChunkData
from fluxproto import Conflict, IntegrityError, LimitExceeded, NotFound, Ranges, chunk_digest
from fluxproto.digest import digest_at

from ..claims import Holder
from ..storage.base import Download, Storage, Upload
from .caller import Presence
from .group import CommitGroup
from .indexset import IndexSet
from .record import Record
from .sharing import Lane, SharedQueue
from .work import busy

#: Chunks read from disk ahead of what the transport has taken.
READ_AHEAD = 4

__all__ = [
    "READ_AHEAD",
    "AttachedUpload",
    "DownloadHandle",
    "UploadHandle",
    "Version",
    "read_verified",
]


class UploadHandle:
    """An upload the service has authorised, claimed and opened.

    It holds no connection: liveness for the claim comes from the presences of the requests
    that drive it (the one that opened it, and those that attached to it by `tid`). Writes
    count into the access record of the request that made them as they become durable
    (chunks written with durable=False: once the commit made them so), each chunk once: a
    client whose lanes both deliver a chunk (it resent it on one when the other stalled) has
    it written twice, counted once; the record's `resent` field counts such chunks.

    An upload opened `grouped` (a small file whose chunks come with its COMMIT) is committed
    with others through `group`: one durability barrier for many files.
    """

    def __init__(
        self,
        key: str,
        size: int,
        presence: Presence,
        record: Record,
        pool: Executor,
        group: CommitGroup | None = None,
    ):
        self.key, self.size = key, size
        #: The transfer id (STATUS `tid`), once the service registered the upload.
        self.tid = b""
        #: The chunk size the upload was opened with.
        self.chunk_size = 0
        #: Where `write_chunks` is meant to run (it blocks).
        self.pool = pool
        #: True once `commit` has published the file.
        self.committed = False
        #: Called once it is committed (the service stops waiting for attached requests).
        self.on_committed: Callable[[], None] = lambda: None
        #: Called with each commit as it starts (the quota tracks it: `Quota.committing`).
        self.on_commit: Callable[[asyncio.Future[None]], None] = lambda work: None
        #: Awaited once it is committed, before the commit returns (the upload-finished event).
        self.announce: Callable[[bytes], Awaitable[None]] = _nothing
        self._digest: bytes | None = None
        self._drivers = [(presence, record)]
        self._upload: Upload | None = None
        self._commit_lock = asyncio.Lock()
        # Requests of several connections write at once: as many at a time as the storage's
        # upload takes (`Upload.parallel`), and a commit takes every slot (`_writes_held`).
        self._write_slots = threading.BoundedSemaphore(1)
        self._parallel = 1
        self._count_lock = threading.Lock()  # `_counted`, with writes in parallel
        self._group, self._grouped = group, False
        # Bytes written with durable=False, by record: counted once committed.
        self._pending: list[tuple[Record, int]] = []
        self._counted = IndexSet()  # chunks whose bytes a record counted

    @property
    def presence(self) -> Presence:
        """The connection driving the upload: the newest one still there, else the opener's."""
        live = [p for p, _ in self._drivers if not p.closed]
        return live[-1] if live else self._drivers[0][0]

    @contextlib.contextmanager
    def driven_by(self, presence: Presence, record: Record) -> Iterator[None]:
        """A request that attached drives the upload too for the body: its connection's signs
        of life keep the claim, and its access record counts what it writes."""
        self._drivers.append((presence, record))
        try:
            yield
        finally:
            self._drivers.remove((presence, record))

    def holder(self, account: str, on_stale: Callable[[Presence], None]) -> Holder:
        """This upload as a claim holder: `on_stale` ends the presence a newer connection of the
        same account supersedes."""
        # Late-bound: the presences read are whichever drive the upload at the time.
        return Holder(
            account,
            lambda: all(p.closed for p, _ in self._drivers),
            lambda: max(p.last_heard() for p, _ in self._drivers),
            lambda: on_stale(self.presence),
            self._ping,
        )

    def _ping(self) -> None:
        for presence, _ in self._drivers:
            if not presence.closed:
                presence.keepalive()

    async def open(
        self,
        storage: Storage,
        chunk_size: int,
        mode: int,
        mtime_ns: int | None = None,
        grouped: bool = False,
        writer: str = "",
    ) -> None:
        """Open (or resume) the upload in `storage`; the service does, once, holding the claim.
        `mtime_ns`, `grouped` and `writer`: see `Storage.open_upload`.

        Raises:
            Conflict, NoSpace, StorageError: storage could not open it.
        """
        self.chunk_size = chunk_size
        args = (self.key, self.size, chunk_size, mode, mtime_ns, grouped, writer)
        self._upload = await busy(self.pool, self.presence, storage.open_upload, *args)
        self._grouped = grouped and self._group is not None
        self._parallel = max(1, self._upload.parallel)
        self._write_slots = threading.BoundedSemaphore(self._parallel)

    @property
    def parallel(self) -> int:
        """How many batches may be written at once (`Upload.parallel`)."""
        return self._parallel

    def arrived(self, index: int, digest: bytes, data: bytes | bytearray | memoryview) -> None:
        """A verified chunk arrived, in arrival order, on the event loop (`Upload.arrived`)."""
        self.opened.arrived(index, digest, data)

    def close(self) -> None:
        """Stop writing, keeping what is staged for a later resume."""
        if self._upload is not None:
            self._upload.close()

    @property
    def opened(self) -> Upload:
        assert self._upload is not None, "the service opens the upload before handing it out"
        return self._upload

    @property
    def held(self) -> Mapping[int, bytes]:
        """Chunk index -> digest of every chunk storage can vouch for (see `Upload.held`)."""
        return self.opened.held

    def write_chunks(
        self, batch: Sequence[ChunkData], durable: bool = True, record: Record | None = None
    ) -> None:
        """Store chunks whose digests the caller verified, durably unless `durable` is False
        (then only the commit makes them so: acknowledge them with COMMITTED, never before).
        What they hold counts in `record` (None: the opener's). Blocks: run it in `pool`.

        Raises:
            Conflict: another request already committed the upload.
            NoSpace, StorageError: the disk failed; what was durable before stays.
        """
        with self._write_slots:
            if self.committed:
                raise Conflict(f"/{self.key} was committed meanwhile; chunks not written")
            self.opened.write_chunks(batch, durable)
            with self._count_lock:
                first = [self._counted.add(index) for index, _, _ in batch]
        nbytes = sum(len(data) for (_, _, data), new in zip(batch, first, strict=True) if new)
        counted = record or self._drivers[0][1]
        with self._count_lock:
            if not all(first):
                counted.fields["resent"] = counted.fields.get("resent", 0) + first.count(False)
            if durable:
                counted.bytes += nbytes
            else:
                self._pending.append((counted, nbytes))

    async def commit(self, digest: bytes) -> None:
        """Check the whole-file digest and publish the file atomically (see `Upload.commit`).

        A cancellation does not interrupt a commit between its rename and its reply: it waits
        for the commit to finish, sets `committed` if it did, then raises CancelledError, so
        the caller can still tell the client.

        Requests attached to the upload commit it once: a later COMMIT with the same digest
        finds it done.

        Raises:
            IntegrityError: chunks missing, the digest differs, or offered chunks were corrupt.
            Conflict: it was committed with another digest.
        """
        async with self._commit_lock:
            if self.committed:
                if digest != self._digest:
                    raise Conflict(f"/{self.key} was committed with another digest meanwhile")
                return
            work = asyncio.ensure_future(self._commit_now(digest))
            self.on_commit(work)
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.wait([work])
                done = not work.cancelled() and work.exception() is None
                self._committed(digest, done)
                if done:  # the outbox write goes on without us
                    _later(self.announce(digest))
                raise
            self._committed(digest, True)
            await self.announce(digest)

    async def _commit_now(self, digest: bytes) -> None:
        # No batch of another request may land in the middle of the commit: every write slot
        # is taken, here while free (a commit then joins its group at once), else in the pool
        # (batches are being written), and given back here once the commit is done.
        taken = 0
        try:
            while taken < self._parallel and self._write_slots.acquire(blocking=False):
                taken += 1
            while taken < self._parallel:
                await busy(self.pool, self.presence, self._write_slots.acquire)
                taken += 1
            if self._grouped:
                assert self._group is not None
                await self._group.commit(self.opened, digest, self.presence)
            else:
                await busy(self.pool, self.presence, self.opened.commit, digest)
        finally:
            for _ in range(taken):
                self._write_slots.release()

    def _committed(self, digest: bytes, done: bool) -> None:
        if done:
            self.committed, self._digest = True, digest
            for record, nbytes in self._pending:
                record.bytes += nbytes
            self._pending.clear()
            self.on_committed()


class AttachedUpload:
    """An open upload as a request that attached to it by tid drives it: the same upload,
    with what this request writes counted in its own access record."""

    def __init__(self, upload: UploadHandle, record: Record) -> None:
        self.upload, self._record = upload, record
        self.pool, self.tid = upload.pool, upload.tid

    @property
    def held(self) -> Mapping[int, bytes]:
        """What the upload holds, from every request that drives it."""
        return self.upload.held

    @property
    def committed(self) -> bool:
        return self.upload.committed

    @property
    def parallel(self) -> int:
        return self.upload.parallel

    def arrived(self, index: int, digest: bytes, data: bytes | bytearray | memoryview) -> None:
        """See `UploadHandle.arrived`."""
        self.upload.arrived(index, digest, data)

    def write_chunks(self, batch: Sequence[ChunkData], durable: bool = True) -> None:
        """See `UploadHandle.write_chunks`."""
        self.upload.write_chunks(batch, durable, self._record)

    async def commit(self, digest: bytes) -> None:
        """See `UploadHandle.commit`."""
        await self.upload.commit(digest)


@dataclass(frozen=True)
class Version:
    """The version of a file a download pinned at open."""

    size: int
    chunk_size: int
    #: xxh3-128 of the whole file.
    digest: bytes
    #: Every chunk's 16-byte digest, concatenated in index order.
    digests: bytes
    mode: int
    mtime_ns: int

    @classmethod
    def of(cls, dl: Download) -> Version:
        return cls(dl.size, dl.chunk_size, dl.digest, dl.digests, dl.mode, dl.mtime_ns)


class _Sharing:
    """What the requests of one download share (PROTOCOL.md 9.1), once its opener shares it."""

    __slots__ = ("lanes", "queue", "want")

    def __init__(self, lanes: int) -> None:
        #: Requests that may share the download at once.
        self.lanes = lanes
        self.queue: SharedQueue | None = None
        #: The transfer's selection: the opener's `want`.
        self.want: Ranges | None = None


class DownloadHandle:
    """A download the service has authorised and opened: one pinned version, read verified.

    Args:
        lanes: how many requests may share it at once (limits.shares_per_transfer).
    """

    def __init__(
        self,
        dl: Download,
        record: Record,
        pool: Executor,
        version: Version | None = None,
        tid: bytes = b"",
        key: str = "",
        lanes: int = 16,
        sharing: _Sharing | None = None,
    ) -> None:
        self.version = version or Version.of(dl)
        #: The file's storage key.
        self.key = key
        #: The transfer id (META `tid`), once the service registered the download.
        self.tid = tid
        self._dl, self._record, self._pool = dl, record, pool
        self._readers: list[AsyncGenerator[ChunkData, None]] = []
        self._opener = sharing is None
        self._sharing = sharing or _Sharing(lanes)

    def attached(self, record: Record) -> DownloadHandle:
        """The same pinned version for a request that attached: its reads and deliveries
        count in its own `record` (the file stays the opener's to close)."""
        args = (self._dl, record, self._pool, self.version, self.tid, self.key)
        return DownloadHandle(*args, sharing=self._sharing)

    @contextlib.contextmanager
    def shared(
        self, want: Ranges | None, indices: Iterable[int], lane: Lane
    ) -> Iterator[SharedQueue]:
        """`lane` takes part in the download's shared queue for the body (PROTOCOL.md 9.1). The
        opener's request creates the queue, of `indices` (its selection `want`); a request that
        attached joins it, naming the same `want`. On leaving, what the lane held and nobody
        acknowledged goes back to the others.

        Raises:
            Conflict: attached, and the opener does not share, or wants other chunks.
            LimitExceeded: as many requests as allowed share it already.
            NotFound: every chunk was acknowledged: the transfer is finished.
        """
        share = self._sharing
        if self._opener:
            share.want = want
            share.queue = SharedQueue(indices, self._length)
        queue = share.queue
        if queue is None:
            raise Conflict(f"transfer {self.tid.hex()} does not share its chunks")
        if want != share.want:
            raise Conflict(f"transfer {self.tid.hex()} shares other chunks than this request wants")
        if len(queue.lanes) >= share.lanes:
            raise LimitExceeded(
                f"transfer {self.tid.hex()} is shared by {len(queue.lanes)} requests already "
                f"(limit {share.lanes})"
            )
        if queue.complete:
            raise NotFound(f"transfer {self.tid.hex()} is finished: every chunk was delivered")
        queue.join(lane, asyncio.get_running_loop().time())
        try:
            yield queue
        finally:
            queue.leave(lane)

    def _length(self, index: int) -> int:
        v = self.version
        return min(v.chunk_size, v.size - index * v.chunk_size)

    def read_later(self, index: int) -> concurrent.futures.Future[ChunkData]:
        """Chunk `index`, read and checked against the manifest in the pool (see `chunks`).
        The caller waits for a read it started before the download closes."""
        return self._pool.submit(read_verified, self._dl, index)

    def chunks(
        self, indices: Iterable[int], ahead: int = READ_AHEAD
    ) -> AsyncGenerator[ChunkData, None]:
        """The chunks at `indices`, in that order, each checked against the manifest as read,
        `ahead` of the consumer. Close the generator when done (the service also does when
        the download ends, before it closes the file).

        Raises (from the generator):
            IntegrityError: a stored chunk does not match its digest (never served).
            StorageError: the file cannot be read.
        """
        reads = prefetch(lambda i: read_verified(self._dl, i), indices, ahead, self._pool)
        self._readers.append(reads)
        return reads

    def delivered(self, nbytes: int) -> None:
        """Count `nbytes` of payload as delivered (acknowledged by the client) in the record."""
        self._record.bytes += nbytes

    def resent(self) -> None:
        """Count a chunk sent again (another lane of the shared download sent it already) in
        the record's `resent` field."""
        self._record.fields["resent"] = self._record.fields.get("resent", 0) + 1

    async def stop(self) -> None:
        """Stop every reader of this handle, waiting for reads in progress."""
        for reads in self._readers:
            await reads.aclose()

    async def close(self) -> None:
        """Stop every reader (waiting for reads in progress), then close the file."""
        try:
            await self.stop()
        finally:
            self._dl.close()


async def _nothing(_: bytes) -> None:
    return None


_background: set[asyncio.Future[None]] = set()


def _later(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _background.add(task)  # held until done: the loop keeps only a weak reference
    task.add_done_callback(_background.discard)


def read_verified(dl: Download, index: int) -> ChunkData:
    """Read a stored chunk and check it against the manifest: corrupt data is never served."""
    digest = digest_at(dl.digests, index)
    data = dl.read_chunk(index)
    if chunk_digest(data) != digest:
        raise IntegrityError(f"stored file is corrupt at chunk {index}; not serving it")
    return index, digest, data
