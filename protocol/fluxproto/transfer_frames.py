"""Transfer frames: uploads (OPEN_UPLOAD, STATUS, CHUNK, ACK, COMMIT, COMMITTED) and downloads
(OPEN_DOWNLOAD, META, DONE). Every one carries the `rid` of its request as its first key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_FILE_SIZE,
    MAX_I64,
    MAX_MODE,
    MAX_U32,
    MIN_CHUNK,
    TID_SIZE,
    Frame,
    FrameType,
    check_bool,
    check_buffer,
    check_digest,
    check_digests,
    check_geometry,
    check_int,
    check_optional_digest,
    check_optional_mtime,
    check_path,
    check_ranges,
    check_rid,
    chunk_count,
    fail,
)
from .ranges import Ranges, count


@dataclass(frozen=True, slots=True)
class OpenUpload(Frame):
    """Start or resume an upload of `size` bytes to `path` in chunks of `chunk_size`.

    `mtime_ns` None keeps the server's choice (the time of the commit); `attach` names a
    transfer (a STATUS `tid` from another connection of the same subject) to join.
    """

    TYPE = FrameType.OPEN_UPLOAD
    rid: int
    path: str
    size: int
    chunk_size: int
    mode: int = 0o644
    mtime_ns: int | None = None
    attach: bytes | None = None

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)
        check_geometry(self.size, self.chunk_size)
        check_int(self.mode, "mode", 0, MAX_MODE)
        check_optional_mtime(self.mtime_ns)
        check_optional_digest(self.attach, "attach", TID_SIZE)


@dataclass(frozen=True, slots=True)
class Status(Frame):
    """The upload's identity `tid` and the chunks the server already holds durably for it,
    with their digests as payload."""

    TYPE = FrameType.STATUS
    PAYLOAD = "digests"
    rid: int
    tid: bytes
    held: Ranges = ()
    digests: bytes | bytearray | memoryview = b""

    def validate(self) -> None:
        check_rid(self.rid)
        check_digest(self.tid, "tid", TID_SIZE)
        check_ranges(self.held, "held")
        check_digests(self.digests, count(self.held))


@dataclass(frozen=True, slots=True)
class Chunk(Frame):
    """Chunk `index` of request `rid`'s file; `data` is the raw payload, `digest` its xxh3-128."""

    TYPE = FrameType.CHUNK
    PAYLOAD = "data"
    rid: int
    index: int
    digest: bytes
    data: bytes | bytearray | memoryview = b""

    def validate(self) -> None:
        check_rid(self.rid)
        check_int(self.index, "index", 0, MAX_CHUNKS - 1)
        check_digest(self.digest)
        check_buffer(self.data, "data", MAX_CHUNK)


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """The receiver holds these chunks durably; they leave the sender's windows."""

    TYPE = FrameType.ACK
    rid: int
    ranges: Ranges

    def validate(self) -> None:
        check_rid(self.rid)
        check_ranges(self.ranges, "ranges")
        if not self.ranges:
            raise fail("ranges", "empty")


@dataclass(frozen=True, slots=True)
class Commit(Frame):
    """Client is done sending: `sent` CHUNK frames of this request precede it (some may still
    be in flight), and `digest` is the xxh3-128 of the whole file."""

    TYPE = FrameType.COMMIT
    rid: int
    digest: bytes
    sent: int

    def validate(self) -> None:
        check_rid(self.rid)
        check_digest(self.digest)
        check_int(self.sent, "sent", 0, MAX_U32)


@dataclass(frozen=True, slots=True)
class Committed(Frame):
    """The file is durable at its path; acknowledges every chunk of the request."""

    TYPE = FrameType.COMMITTED
    rid: int
    size: int
    digest: bytes

    def validate(self) -> None:
        check_rid(self.rid)
        check_int(self.size, "size", 0, MAX_FILE_SIZE)
        check_digest(self.digest)


@dataclass(frozen=True, slots=True)
class OpenDownload(Frame):
    """Ask for `want` chunk ranges of `path` (None: all) of the version whose digest is `digest`.

    Without `digest`, `chunk_size` is a preference (used when the server has to index the file).
    With it, `digest` and `chunk_size` pin the version and geometry `want` was computed for: if
    either differs, the server answers META with `count` 0 and the client re-plans. `attach`
    names a download (a META `tid` from another connection) whose pinned version to serve.
    `share` asks that the request take its chunks from the one queue of its transfer, with the
    other requests that share it (PROTOCOL.md 9.1); an attaching one then names the opener's
    `want`.
    """

    TYPE = FrameType.OPEN_DOWNLOAD
    rid: int
    path: str
    want: Ranges | None = None
    digest: bytes | None = None
    chunk_size: int = 1024 * 1024
    attach: bytes | None = None
    share: bool = False

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)
        if self.want is not None:
            check_ranges(self.want, "want")
        check_optional_digest(self.digest, "digest")
        check_int(self.chunk_size, "chunk_size", MIN_CHUNK, MAX_CHUNK)
        check_optional_digest(self.attach, "attach", TID_SIZE)
        check_bool(self.share, "share")

    def header(self) -> dict[str, Any]:
        return _share_last(Frame.header(self), self.share)


@dataclass(frozen=True, slots=True)
class Meta(Frame):
    """Download metadata and identity `tid`; `count` chunks follow, the payload holds every
    chunk's digest. With `share` the request shares its transfer's chunks: `count` is what the
    transfer still lacks, any of them may come (each once), and DONE ends the request."""

    TYPE = FrameType.META
    PAYLOAD = "digests"
    rid: int
    tid: bytes
    size: int
    chunk_size: int
    digest: bytes
    count: int
    mode: int = 0o644
    mtime_ns: int = 0
    share: bool = False
    digests: bytes | bytearray | memoryview = b""

    def validate(self) -> None:
        check_rid(self.rid)
        check_digest(self.tid, "tid", TID_SIZE)
        check_geometry(self.size, self.chunk_size)
        check_digest(self.digest)
        n = chunk_count(self.size, self.chunk_size)
        check_int(self.count, "count", 0, n)
        check_int(self.mode, "mode", 0, MAX_MODE)
        check_int(self.mtime_ns, "mtime_ns", 0, MAX_I64)
        check_bool(self.share, "share")
        check_digests(self.digests, n)

    def header(self) -> dict[str, Any]:
        return _share_last(Frame.header(self), self.share)


def _share_last(head: dict[str, Any], share: bool) -> dict[str, Any]:
    """`share` is written only when true (PROTOCOL.md 15.40): a download that does not share
    is byte for byte what was sent before the key existed."""
    if not share:
        del head["share"]
    return head


@dataclass(frozen=True, slots=True)
class Done(Frame):
    """A shared download's transfer is complete (every wanted chunk was acknowledged on one of
    its requests) and nothing of this request is in flight: the request ends."""

    TYPE = FrameType.DONE
    rid: int

    def validate(self) -> None:
        check_rid(self.rid)
