"""What a transfer reports: the `--json` object and the progress callback type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluxproto import MAX_CHUNK, MAX_CHUNKS, ConfigError, chunk_count, format_digest

#: progress(done_bytes, total_bytes); done counts bytes durable on the receiving side.
ProgressFn = Callable[[int, int], None]

DEFAULT_CHUNK = 4 * 1024 * 1024  # 10-15 % faster than 1 MiB on loopback; resume loses <= window


def chunk_size_for(size: int, requested: int | None) -> int:
    """The chunk size to send a file of `size` bytes with.

    `requested` (from --chunk-size) is used as is; otherwise 4 MiB, doubled until the file fits
    the protocol's chunk-count limit.

    Raises:
        ConfigError: the file has too many chunks at the requested size, or is too large.
    """
    if requested is not None:
        if chunk_count(size, requested) > MAX_CHUNKS:
            need = -(-size // MAX_CHUNKS)
            raise ConfigError(f"--chunk-size is too small for {size} bytes: use at least {need}")
        return requested
    chunk = DEFAULT_CHUNK
    while chunk_count(size, chunk) > MAX_CHUNKS:
        chunk *= 2
    if chunk > MAX_CHUNK:
        raise ConfigError(f"a file of {size} bytes is larger than the protocol allows")
    return chunk


@dataclass
class TransferResult:
    """The outcome of one `send` or `recv` run (all attempts together)."""

    op: str  # "send" or "recv"
    path: str
    size: int
    moved: int  # payload bytes put on (send) or taken off (recv) the wire in this run
    skipped: int  # bytes the receiving side already held when the run started
    retries: int
    seconds: float
    digest: bytes
    transport: str = "tcp"
    #: Bytes each lane ("tcp", "tcp2", "quic") delivered: a send's acknowledged there first,
    #: a recv's received there first. One entry, the transport's, for one connection.
    lanes: dict[str, int] = field(default_factory=dict)
    #: Bytes that went again on another lane in the same pass: a send's because the lane that
    #: carried them first failed or stalled, a recv's because the server sent them twice
    #: (not in `moved`, which counts each chunk once per pass).
    resent: int = 0

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"lanes": self.lanes}
        if self.resent:
            extra["resent"] = self.resent
        return {
            "ok": True,
            "op": self.op,
            "path": self.path,
            "bytes": self.size,
            "sent" if self.op == "send" else "received": self.moved,
            "skipped": self.skipped,
            "retries": self.retries,
            "seconds": round(self.seconds, 6),
            "digest": format_digest(self.digest),
            "transport": self.transport,
            **extra,
        }
