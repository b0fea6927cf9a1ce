"""Upload and download handles: what a transport drives once the service has opened a transfer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from fluxio.chunkflow import prefetch
from fluxio.staging import ChunkData
from fluxproto import IntegrityError, chunk_digest
from fluxproto.digest import digest_at

from ..claims import Holder
from ..storage.base import Download, Storage, Upload
from .caller import Presence
from .group import CommitGroup
from .record import Record
from .work import busy

#: Chunks read from disk ahead of what the transport has taken.
READ_AHEAD = 4

__all__ = ["READ_AHEAD", "DownloadHandle", "UploadHandle", "Version", "read_verified"]


class UploadHandle:
    """An upload the service has authorised, claimed and opened.

    It holds no connection: liveness for the claim comes from `presence`, which is whoever
    drives the upload now (a connection that attaches later would replace it). Writes count
    into the request's access record as they become durable (chunks written with
    durable=False: once the commit made them so).

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
        #: The connection driving this upload: its signs of life keep the claim.
        self.presence = presence
        #: Where `write_chunks` is meant to run (it blocks).
        self.pool = pool
        #: True once `commit` has published the file.
        self.committed = False
        self._record = record
        self._upload: Upload | None = None
        self._group, self._grouped = group, False
        self._pending = 0  # bytes written with durable=False: counted once committed

    def holder(self, account: str, on_stale: Callable[[Presence], None]) -> Holder:
        """This upload as a claim holder: `on_stale` ends the presence a newer connection of the
        same account supersedes."""
        # Late-bound: the presence read is whichever drives the upload at the time.
        return Holder(
            account,
            lambda: self.presence.closed,
            lambda: self.presence.last_heard(),  # noqa: PLW0108
            lambda: on_stale(self.presence),
        )

    async def open(
        self,
        storage: Storage,
        chunk_size: int,
        mode: int,
        mtime_ns: int | None = None,
        grouped: bool = False,
    ) -> None:
        """Open (or resume) the upload in `storage`; the service does, once, holding the claim.
        `mtime_ns` and `grouped`: see `Storage.open_upload`.

        Raises:
            Conflict, NoSpace, StorageError: storage could not open it.
        """
        args = (self.key, self.size, chunk_size, mode, mtime_ns, grouped)
        self._upload = await busy(self.pool, self.presence, storage.open_upload, *args)
        self._grouped = grouped and self._group is not None

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

    def write_chunks(self, batch: Sequence[ChunkData], durable: bool = True) -> None:
        """Store chunks whose digests the caller verified, durably unless `durable` is False
        (then only the commit makes them so: acknowledge them with COMMITTED, never before).
        Blocks: run it in `pool`.

        Raises:
            NoSpace, StorageError: the disk failed; what was durable before stays.
        """
        self.opened.write_chunks(batch, durable)
        nbytes = sum(len(data) for _, _, data in batch)
        if durable:
            self._record.bytes += nbytes
        else:
            self._pending += nbytes

    async def commit(self, digest: bytes) -> None:
        """Check the whole-file digest and publish the file atomically (see `Upload.commit`).

        A cancellation does not interrupt a commit between its rename and its reply: it waits
        for the commit to finish, sets `committed` if it did, then raises CancelledError, so
        the caller can still tell the client.

        Raises:
            IntegrityError: chunks missing, the digest differs, or offered chunks were corrupt.
        """
        if self._grouped:
            assert self._group is not None
            job = self._group.commit(self.opened, digest, self.presence)
        else:
            job = busy(self.pool, self.presence, self.opened.commit, digest)
        work = asyncio.ensure_future(job)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])
            self.committed = not work.cancelled() and work.exception() is None
            raise
        finally:
            if work.done() and not work.cancelled() and work.exception() is None:
                self._record.bytes += self._pending
                self._pending = 0
        self.committed = True


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


class DownloadHandle:
    """A download the service has authorised and opened: one pinned version, read verified."""

    def __init__(self, dl: Download, record: Record, pool: Executor) -> None:
        self.version = Version.of(dl)
        self._dl, self._record, self._pool = dl, record, pool
        self._readers: list[AsyncGenerator[ChunkData, None]] = []

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

    async def close(self) -> None:
        """Stop every reader (waiting for reads in progress), then close the file."""
        try:
            for reads in self._readers:
                await reads.aclose()
        finally:
            self._dl.close()


def read_verified(dl: Download, index: int) -> ChunkData:
    """Read a stored chunk and check it against the manifest: corrupt data is never served."""
    digest = digest_at(dl.digests, index)
    data = dl.read_chunk(index)
    if chunk_digest(data) != digest:
        raise IntegrityError(f"stored file is corrupt at chunk {index}; not serving it")
    return index, digest, data
