"""What a transfer reports: the `--json` object and the progress callback type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluxproto import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    ConfigError,
    LimitExceeded,
    Welcome,
    chunk_count,
    format_digest,
)
from fluxproto.frames import MAX_FILE_SIZE

#: progress(done_bytes, total_bytes); done counts bytes durable on the receiving side.
ProgressFn = Callable[[int, int], None]

DEFAULT_CHUNK = 4 * 1024 * 1024  # 10-15 % faster than 1 MiB on loopback; resume loses <= window


def chunk_size_for(size: int, requested: int | None, rule: Welcome | None = None) -> int:
    """The chunk size to send a file of `size` bytes with to a server that answered `rule`.

    The server's WELCOME says what its storage needs of an upload (PROTOCOL.md 15.46): chunks
    of at least `min_chunk` unless the file is one chunk, at most `max_chunks` of them (None:
    the protocol's own limits). `requested` (from --chunk-size) is used as is if it keeps
    that rule; otherwise 4 MiB, doubled until the file has at most `max_chunks` chunks and
    the size is at least `min_chunk` (4 MiB becomes 8 for a 5 MiB minimum).

    Raises:
        ConfigError: `requested` breaks the rule (the message names a size that keeps it), or
            the file is larger than the protocol allows.
        LimitExceeded: the file would need chunks above MAX_CHUNK under the server's rule.
    """
    least = MIN_CHUNK if rule is None else rule.min_chunk
    most = MAX_CHUNKS if rule is None else rule.max_chunks
    if requested is not None:
        _check_requested(size, requested, least, most)
        return requested
    chunk = DEFAULT_CHUNK
    while not _keeps(size, chunk, least, most):
        chunk *= 2
    if chunk > MAX_CHUNK:
        if size > MAX_FILE_SIZE:
            raise ConfigError(f"a file of {size} bytes is larger than the protocol allows")
        raise LimitExceeded(
            f"a file of {size} bytes is too large for this server: its storage takes at most "
            f"{most} chunks per file, which would need chunks above {MAX_CHUNK} bytes"
        )
    return chunk


def _keeps(size: int, chunk: int, least: int, most: int) -> bool:
    count = chunk_count(size, chunk)
    return count <= most and (count <= 1 or chunk >= least)


def _check_requested(size: int, requested: int, least: int, most: int) -> None:
    if chunk_count(size, requested) > most:
        need = -(-size // most)
        raise ConfigError(f"--chunk-size is too small for {size} bytes: use at least {need}")
    if not _keeps(size, requested, least, most):
        raise ConfigError(
            f"--chunk-size {requested} is below {least}, the least the server's storage takes "
            f"for a file of more than one chunk: use at least {least}"
        )


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
    #: The node that completed the run, where the server's name leads to several (nodes.py).
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"lanes": self.lanes}
        if self.resent:
            extra["resent"] = self.resent
        if self.node is not None:
            extra["node"] = self.node
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
