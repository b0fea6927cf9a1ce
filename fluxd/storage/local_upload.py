"""LocalUpload: an upload into LocalStorage, its staged file, and the destination as a basis.

When the file already at the destination has the upload's size and chunk size (and a
manifest), its chunks count as held (rsync's basis file): the client skips the ones it shares,
and commit copies them into the staged file, each checked against the manifest again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from fluxproto.digest import chunk_digest, digest_at
from fluxproto.errors import Conflict, FluxError, IntegrityError, NotFound

from ..buffers import POOL
from ..crashpoints import crash_point
from .oserrors import storage_errors
from .staging import ChunkData, StagedFile

if TYPE_CHECKING:
    from .local import LocalStorage, Manifest

_COPY_BATCH = 8  # chunks copied from the destination per durable write

__all__ = ["LocalUpload"]


class _HeldWithBase(Mapping[int, bytes]):
    """Every chunk: the staged one where there is one, else the destination's (the base)."""

    def __init__(self, staged: Mapping[int, bytes], base: bytes, count: int) -> None:
        self._staged, self._base, self._count = staged, base, count

    def __getitem__(self, index: int) -> bytes:
        if index in self._staged:
            return self._staged[index]
        if not 0 <= index < self._count:
            raise KeyError(index)
        return digest_at(self._base, index)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._count))

    def __len__(self) -> int:
        return self._count


class LocalUpload:
    """An upload into LocalStorage: a StagedFile plus where and how to publish it, and the
    file now at the destination (`base`) when its chunks can stand in for missing ones."""

    def __init__(
        self,
        storage: LocalStorage,
        rel: str,
        staged: StagedFile,
        mode: int,
        base: Manifest | None = None,
    ) -> None:
        self._storage, self._rel, self._staged, self._mode = storage, rel, staged, mode
        self._base = base

    @property
    def held(self) -> Mapping[int, bytes]:
        """Chunk index -> digest of every chunk the server can vouch for: verified durable
        staged chunks, and (with a base) the destination's chunks where none is staged."""
        if self._base is None:
            return self._staged.held
        return _HeldWithBase(self._staged.held, self._base.digests, self._staged.count)

    def write_chunks(self, batch: Sequence[ChunkData]) -> None:
        """See `StagedFile.write_chunks`."""
        self._staged.write_chunks(batch)

    def commit(self, digest: bytes) -> None:
        """Check the file digest, then publish the file and its manifest atomically.

        Raises:
            IntegrityError: chunks missing, or the digest differs; then every held chunk is
                read back and the corrupt ones dropped, the rest stay staged.
            Conflict: the path became a directory, or a parent is a file.
        """
        staged = self._staged
        if self._base is not None and not staged.complete:
            if not staged.held and digest == self._base.digest and self._unchanged_at_dest():
                self._keep_dest()  # the destination already is this file (a resend, a lost reply)
                return
            self._fill_from_base()
        if not staged.complete:
            raise IntegrityError(f"missing {staged.count - len(staged.held)} chunks of {self._rel}")
        if staged.file_digest() != digest:
            bad = staged.reverify()
            raise IntegrityError(
                f"file digest mismatch for {self._rel}; {len(bad)} stored chunks were corrupt"
            )
        crash_point("commit-checked")
        self._storage._publish(self._rel, staged, digest, self._mode)
        crash_point("published")

    def _unchanged_at_dest(self) -> bool:
        assert self._base is not None
        try:
            dl = self._storage.open_download(self._rel, self._base.chunk_size)
        except FluxError:
            return False
        try:
            return (dl.digest, dl.chunk_size, dl.size) == (
                self._base.digest,
                self._base.chunk_size,
                self._base.size,
            )
        finally:
            dl.close()

    def _keep_dest(self) -> None:
        """Commit as a no-op: set the mode the upload asked for, drop the staging."""
        with storage_errors(f"setting the mode of {self._rel}"):
            fd = self._storage._beneath.open(self._storage._inner(self._rel), os.O_RDONLY)
            try:
                if stat.S_IMODE(os.fstat(fd).st_mode) != self._mode & 0o777:
                    os.fchmod(fd, self._mode & 0o777)
            finally:
                os.close(fd)
        self.abort()

    def _fill_from_base(self) -> None:
        """Copy into the staged file the chunks the client skipped because the destination
        had them, checking each against the base manifest.

        Raises:
            IntegrityError: the destination changed since the upload opened (the client then
                resends: its next STATUS no longer offers those chunks).
        """
        assert self._base is not None
        base, staged = self._base, self._staged
        missing = staged.missing()
        changed = IntegrityError(f"{self._rel} changed during the upload; resend the rest")
        try:
            dl = self._storage.open_download(self._rel, base.chunk_size)
        except (NotFound, Conflict):
            raise changed from None
        try:
            if (dl.digest, dl.chunk_size) != (base.digest, base.chunk_size):
                raise changed
            for start in range(0, len(missing), _COPY_BATCH):
                batch: list[ChunkData] = []
                try:
                    for index in missing[start : start + _COPY_BATCH]:
                        data = dl.read_chunk(index)
                        digest = digest_at(base.digests, index)
                        batch.append((index, digest, data))
                        if chunk_digest(data) != digest:
                            # Replaced so fast that size, mtime and inode all look the same:
                            # the manifest no longer describes the file, so forget it.
                            self._storage._forget_manifest(self._rel)
                            raise changed
                    staged.write_chunks(batch)
                finally:
                    for _, _, buf in batch:
                        if isinstance(buf, memoryview):
                            POOL.put(buf)
        finally:
            dl.close()

    def close(self) -> None:
        """Keep the staged chunks for a resume. Idempotent; a no-op after commit."""
        self._staged.close()

    def abort(self) -> None:
        """Throw the staged chunks away. A no-op once closed or committed."""
        if not self._staged.closed:
            self._staged.discard()
            self._storage._remove_staging(self._rel)
