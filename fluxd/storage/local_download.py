"""LocalDownload: a file of a local root opened for reading, pinned to the inode opened, with the
manifest its chunks are checked against (indexed on the spot when there is none)."""

from __future__ import annotations

import os

from fluxio.buffers import POOL
from fluxio.oserrors import storage_errors
from fluxio.staging import Buffer, pread_into
from fluxproto.errors import IntegrityError, StorageError
from fluxproto.frames import chunk_count

from .base import check_chunks
from .local_tree import LocalTree, require_file
from .manifests import Manifest, ManifestStore
from .paths import require_file_path

__all__ = ["LocalDownload", "give_back", "open_local_download"]


def give_back(buf: Buffer) -> None:
    """Return to the pool a buffer `LocalDownload.read_chunk` took from it."""
    if isinstance(buf, memoryview):
        POOL.put(buf)


def open_local_download(
    tree: LocalTree, manifests: ManifestStore, path: str, chunk_size_hint: int
) -> LocalDownload:
    """Open the file at `path` in `tree`; see `base.Storage.open_download`.

    Raises:
        NotFound: no such file. Conflict: a directory or not a regular file, or it changed
        while being indexed. PermissionDenied: a refused path, or one leading out of the root.
    """
    rel = require_file_path(path)
    inner = tree.inner(rel)
    with storage_errors(f"opening {rel}"):
        fd = tree.open_fd(inner, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: fifos
    try:
        with storage_errors(f"reading {rel}"):
            st = os.fstat(fd)
        require_file(rel, st)
        manifest = manifests.load(rel, st, fd) or manifests.index(rel, fd, st, chunk_size_hint)
        return LocalDownload(rel, fd, manifest, st)
    except BaseException:
        os.close(fd)
        raise


class LocalDownload:
    """A stored file opened for reading; reads go to the inode opened, whatever replaces it."""

    def __init__(self, rel: str, fd: int, manifest: Manifest, st: os.stat_result) -> None:
        self._rel = rel
        self._fd: int | None = fd
        self.size, self.chunk_size = manifest.size, manifest.chunk_size
        self.digest, self.digests = manifest.digest, manifest.digests
        self.mode, self.mtime_ns = st.st_mode & 0o7777, max(0, st.st_mtime_ns)
        self.count = chunk_count(self.size, self.chunk_size)

    def read_chunk(self, index: int) -> memoryview:
        """The stored bytes of chunk `index`, in a buffer from the shared pool.

        Give the buffer back with `POOL.put` when done (the chunk sender does so on ACK).

        Raises:
            StorageError: index out of range or closed. IntegrityError: the file got shorter.
        """
        if self._fd is None or not 0 <= index < self.count:
            raise StorageError(f"chunk {index} of {self._rel} cannot be read")
        length = min(self.chunk_size, self.size - index * self.chunk_size)
        data = POOL.get(length)
        with storage_errors(f"reading chunk {index} of {self._rel}"):
            got = pread_into(self._fd, data, index * self.chunk_size)
        if got != length:
            POOL.put(data)
            raise IntegrityError(f"{self._rel} was truncated on disk at chunk {index}")
        return data

    def check(self) -> tuple[list[int], bytes]:
        """Read the whole file: the chunks whose bytes do not match their digest, and the
        xxh3-128 of everything read.

        Raises:
            StorageError: closed or unreadable. IntegrityError: the file got shorter.
        """
        return check_chunks(self, give_back)

    def close(self) -> None:
        """Close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
