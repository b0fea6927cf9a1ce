"""The project's one choice of checksum: xxh3-128 for chunks and for whole files."""

from __future__ import annotations

import xxhash

from .frames import DIGEST_SIZE

ALGORITHM = "xxh3-128"

__all__ = ["ALGORITHM", "DIGEST_SIZE", "FileHasher", "chunk_digest", "digest_at", "format_digest"]


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte xxh3-128 digest of one chunk."""
    return bytes(xxhash.xxh3_128_digest(data))


def digest_at(digests: bytes | bytearray | memoryview, index: int) -> bytes:
    """Chunk `index`'s digest in a concatenation of digests (STATUS, META, manifests)."""
    return bytes(digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])


class FileHasher:
    """Streaming xxh3-128 of a whole file, fed chunk by chunk in offset order."""

    __slots__ = ("_h", "offset")

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()
        self.offset = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.offset += len(data)

    def digest(self) -> bytes:
        return bytes(self._h.digest())


def format_digest(digest: bytes) -> str:
    """Human form of a digest, as `xxh128sum` prints it, with the algorithm named."""
    return f"xxh128:{digest.hex()}"
