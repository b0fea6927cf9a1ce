"""SmallFile: an upload kept in memory until its last chunk, then in a temporary file (never
synced on its own) until its commit, for small files committed in a group.

It makes no staging folder, journal or sync of its own: once its last chunk arrives it is written
once, to a new temporary file in the reserved area's scratch folder (on the request's thread, so
that making the file, which costs ~0.25-0.7 ms of this disk's time per inode, overlaps the group
being committed), and the group's one barrier makes it durable before it is renamed into place.
Nothing of it can be resumed (nothing was durable before the commit), which for a small file
costs less than the metadata and syncs that staging it would. It has the staged file's
interface as far as LocalUpload and the group use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from fluxio.oserrors import storage_errors
from fluxio.staging import ChunkData
from fluxproto.digest import FileHasher, chunk_digest
from fluxproto.errors import StorageError
from fluxproto.frames import DIGEST_SIZE, chunk_count

__all__ = ["SmallFile"]


class SmallFile:
    """The chunks of one small upload, in memory, and once sealed its temporary file.

    Args:
        scratch: the folder for the temporary file (same filesystem as the tree).
        label: the file's path, for messages. size, chunk_size: its geometry.
    """

    def __init__(self, scratch: Path, label: str, size: int, chunk_size: int) -> None:
        self.size, self.chunk_size, self.label = size, chunk_size, label
        self.count = chunk_count(size, chunk_size)
        #: Chunk index -> digest of every chunk given (verified by the caller).
        self.held: dict[int, bytes] = {}
        self._data: dict[int, bytes] = {}
        self._scratch = scratch
        self._tmp: Path | None = None  # the temporary file, until renamed or removed
        self._fd = -1
        self._file_digest: bytes | None = None
        self.closed = False

    @property
    def complete(self) -> bool:
        return len(self.held) == self.count

    def missing(self) -> list[int]:
        """Indices of the chunks not given yet, in order."""
        return [i for i in range(self.count) if i not in self.held]

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def write_chunks(self, batch: Sequence[ChunkData], *, durable: bool = True) -> None:
        """Keep chunks for the commit (copied: the caller may reuse its buffers).

        Raises:
            StorageError: `durable` asked for (the owner stages the file first), an index out
                of range, a wrong length or digest size.
        """
        if durable or self.closed:
            raise StorageError(f"{self.label} is held in memory: chunks wait for its commit")
        for index, digest, data in batch:
            if not 0 <= index < self.count or len(digest) != DIGEST_SIZE:
                raise StorageError(f"chunk {index} of {self.label} is out of range")
            if len(memoryview(data).cast("B")) != self.chunk_length(index):
                raise StorageError(f"chunk {index} of {self.label} has the wrong length")
        for index, digest, data in batch:
            if self._fd < 0:  # once written, a chunk given again (verified) is the same bytes
                self._data[index] = bytes(data)
            self.held[index] = bytes(digest)
        if self.complete and self._fd < 0:
            with storage_errors(f"writing {self.label}"):
                self._write()

    def _chunk(self, index: int) -> bytes:
        """Chunk `index`'s bytes: kept in memory, or read back once the file is written."""
        if self._fd < 0:
            return self._data.get(index, b"")
        offset = index * self.chunk_size
        with storage_errors(f"reading {self.label}"):
            return os.pread(self._fd, self.chunk_length(index), offset)

    def chunks(self) -> list[ChunkData]:
        """Every chunk given, as (index, digest, data), in order (to stage them elsewhere)."""
        return [(i, self.held[i], self._chunk(i)) for i in sorted(self.held)]

    def file_digest(self) -> bytes:
        """xxh3-128 of the chunks in order (call when complete)."""
        if self._file_digest is not None:
            return self._file_digest
        hasher = FileHasher()
        for index in range(self.count):
            hasher.update(self._chunk(index))
        return hasher.digest()

    def reverify(self) -> list[int]:
        """Drop the chunks whose bytes do not match their digest; returns them."""
        data = {i: self._chunk(i) for i in self.held}
        bad = [i for i, d in self.held.items() if chunk_digest(data[i]) != d]
        for index in bad:
            del self.held[index], data[index]
        if bad:  # the written file is not these chunks: kept in memory until complete again
            self._drop_file()
            self._data = data
        return sorted(bad)

    # --- publishing, in the steps of fluxio.staging.StagedFile -------------------------------

    def seal(self, mode: int, mtime_ns: int | None = None) -> None:
        """Write the file to its temporary (the first time) with permissions `mode & 0o777`
        and, if given, modification time `mtime_ns`; nothing is synced.

        Raises:
            StorageError (NoSpace, ...): not complete, or the file could not be written.
        """
        if not self.complete or self.closed:
            raise StorageError(f"{self.label} is not complete")
        with storage_errors(f"writing {self.label}"):
            if self._fd < 0:
                self._write()
            os.fchmod(self._fd, mode & 0o777)
            if mtime_ns is not None:
                os.utime(self._fd, ns=(time.time_ns(), mtime_ns))

    def _write(self) -> None:
        tmp = self._scratch / f"file-{os.getpid()}-{secrets.token_hex(8)}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # read back to reverify
        self._fd, self._tmp = os.open(tmp, flags, 0o600), tmp
        data = b"".join(self._data[i] for i in range(self.count))
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except BaseException:
            self._drop_file()  # no part-written file: the chunks stay in memory
            raise
        # The digest of the bytes as they arrived (each chunk was verified), for the commit's
        # check: the file is not read back.
        hasher = FileHasher()
        hasher.update(data)
        self._file_digest = hasher.digest()
        self._data.clear()  # on disk now; the digests stay in `held`

    def fileno(self) -> int:
        """The sealed file's descriptor (to give it attributes before it is synced)."""
        self._sealed()
        return self._fd

    def fstat(self) -> os.stat_result:
        """fstat of the sealed file (its inode and mtime survive the rename)."""
        self._sealed()
        with storage_errors(f"reading {self.label}"):
            return os.fstat(self._fd)

    def sync(self) -> None:
        """fsync the sealed file: data, size, mode and mtime. Raises StorageError."""
        self._sealed()
        with storage_errors(f"syncing {self.label}"):
            os.fsync(self._fd)

    def move_to(self, dest: Path | str, dir_fd: int | None = None) -> None:
        """Rename the sealed file to `dest` (a name in `dir_fd` if given); only once durable.
        Raises StorageError (Conflict: dest is a directory)."""
        self._sealed()
        assert self._tmp is not None
        with storage_errors(f"publishing {self.label}"):
            os.replace(self._tmp, dest, dst_dir_fd=dir_fd)
        self._tmp = None

    def finish(self, *, sync: bool = True) -> None:
        """After `move_to`: close (there is no journal to remove)."""
        self.close()

    def _sealed(self) -> None:
        if self._fd < 0:
            raise StorageError(f"{self.label} is not written yet")

    def _drop_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None
        self._file_digest = None

    def close(self) -> None:
        """Drop the chunks and the temporary file if it was not renamed. Idempotent."""
        self._drop_file()
        self._data.clear()
        self.closed = True

    discard = close
