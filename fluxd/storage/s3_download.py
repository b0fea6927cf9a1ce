"""S3Download: one version of a file in S3Storage, read by ranged GETs of its data object.

The version is pinned when the record is read at open: its data object is never changed, and
garbage collection leaves it for `staging_grace` after a newer version or a delete. The caller
checks every chunk against `digests` before serving it (`service.read_verified`), so a corrupt
object is never served.
"""

from __future__ import annotations

from fluxproto.errors import IntegrityError, StorageError
from fluxproto.frames import chunk_count

from .base import check_chunks
from .s3_layout import Record, data_key
from .s3_store import ObjectStore

__all__ = ["S3Download"]


class S3Download:
    """A stored file opened for reading (`base.Download`)."""

    def __init__(self, store: ObjectStore, rel: str, record: Record) -> None:
        self._store, self._rel = store, rel
        self._key: str | None = data_key(rel, record.nonce)
        self.size, self.chunk_size = record.size, record.chunk_size
        self.digest, self.digests = record.digest, record.digests
        self.mode, self.mtime_ns = record.mode, record.mtime_ns
        self.count = chunk_count(self.size, self.chunk_size)

    def read_chunk(self, index: int) -> bytes:
        """The stored bytes of chunk `index` (one ranged GET).

        Raises:
            StorageError: index out of range or closed. IntegrityError: the object is short.
            NotFound: the version was collected. Unavailable: the store does not answer.
        """
        if self._key is None or not 0 <= index < self.count:
            raise StorageError(f"chunk {index} of {self._rel} cannot be read")
        length = min(self.chunk_size, self.size - index * self.chunk_size)
        what = f"reading chunk {index} of {self._rel}"
        data = self._store.get_range(self._key, index * self.chunk_size, length, what)
        if len(data) != length:
            raise IntegrityError(f"{self._rel} is truncated in the store at chunk {index}")
        return data

    def check(self) -> tuple[list[int], bytes]:
        """Read the whole file: the chunks whose bytes do not match their digest, and the
        xxh3-128 of everything read.

        Raises:
            as `read_chunk`.
        """
        return check_chunks(self)

    def close(self) -> None:
        self._key = None
