"""Frame types, protocol limits and the frozen dataclasses that validate every field.

A frame is a msgpack map (the header) plus, for CHUNK, STATUS and META only, raw payload bytes.
Field names are the header keys. Constructing a frame validates it and raises
`LocalProtocolError`; the decoder turns that into `RemoteProtocolError` for frames off the wire.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import LocalProtocolError
from .ranges import Ranges, count, is_canonical

PROTOCOL_VERSION = 1
MAGIC = "FLUX"
ALPN = "flux/1"

# Hard limits of protocol version 1 (PROTOCOL.md "Limits"). Peers may configure lower ones.
MAX_HEADER = 64 * 1024
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_CHUNKS = 1 << 20
MAX_FILE_SIZE = MAX_CHUNKS * MAX_CHUNK
DIGEST_SIZE = 16
MAX_DIGESTS_PAYLOAD = MAX_CHUNKS * DIGEST_SIZE
MAX_PATH = 4096
MAX_RANGES = 4096
MAX_LIST_ENTRIES = 1000
MAX_NAME = 1024
MAX_TEXT = 1024
MAX_TOKEN = 8192
MAX_CAPS = 64
MIN_WINDOW = MIN_CHUNK
MAX_WINDOW = 1 << 30
MAX_MODE = 0o7777
MAX_U64 = (1 << 64) - 1
MAX_I64 = (1 << 63) - 1


class FrameType(enum.IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    PING = 0x03
    PONG = 0x04
    GOODBYE = 0x05
    ERROR = 0x06
    OPEN_UPLOAD = 0x10
    STATUS = 0x11
    CHUNK = 0x12
    ACK = 0x13
    COMMIT = 0x14
    COMMITTED = 0x15
    OPEN_DOWNLOAD = 0x20
    META = 0x21
    LIST = 0x30
    LISTING = 0x31
    STAT = 0x32
    INFO = 0x33
    DELETE = 0x34
    DELETED = 0x35


# --- field checks ------------------------------------------------------------------------------


def _fail(name: str, why: str) -> LocalProtocolError:
    return LocalProtocolError(f"invalid {name}: {why}")


def check_int(value: object, name: str, lo: int = 0, hi: int = MAX_U64) -> None:
    # bool is an int subclass; a wire True must not pass as 1.
    if type(value) is not int:
        raise _fail(name, f"expected integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _fail(name, f"{value} not in [{lo}, {hi}]")


def check_str(value: object, name: str, max_bytes: int, *, empty: bool = True) -> None:
    if type(value) is not str:
        raise _fail(name, f"expected string, got {type(value).__name__}")
    if not empty and not value:
        raise _fail(name, "empty")
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _fail(name, f"longer than {max_bytes} bytes")


def check_digest(value: object, name: str = "digest") -> None:
    if type(value) is not bytes or len(value) != DIGEST_SIZE:
        raise _fail(name, f"expected {DIGEST_SIZE} bytes")


def check_ranges(value: object, name: str, limit: int = MAX_CHUNKS) -> None:
    if type(value) is not tuple or len(value) > MAX_RANGES:
        raise _fail(name, f"expected at most {MAX_RANGES} ranges")
    for r in value:
        if type(r) is not tuple or len(r) != 2:
            raise _fail(name, "each range is [start, count]")
        check_int(r[0], name, 0, MAX_CHUNKS)
        check_int(r[1], name, 1, MAX_CHUNKS)
    if not is_canonical(value, limit):
        raise _fail(name, "ranges must be sorted, disjoint, merged and within the file")


def check_buffer(value: object, name: str, max_len: int) -> None:
    """A payload: bytes-like with one-byte items, so len() is its size on the wire."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _fail(name, "expected bytes")
    if isinstance(value, memoryview) and value.itemsize != 1:
        raise _fail(name, "memoryview payloads must have 1-byte items")
    if len(value) > max_len:
        raise _fail(name, f"longer than {max_len} bytes")


def check_digests(value: object, n: int, name: str = "digests") -> None:
    check_buffer(value, name, MAX_DIGESTS_PAYLOAD)
    if len(value) != n * DIGEST_SIZE:  # type: ignore[arg-type]
        raise _fail(name, f"expected {n} digests of {DIGEST_SIZE} bytes")


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks a file of `size` bytes has at `chunk_size` (0 for an empty file)."""
    return -(-size // chunk_size)


def check_geometry(size: int, chunk_size: int) -> None:
    check_int(size, "size", 0, MAX_FILE_SIZE)
    check_int(chunk_size, "chunk_size", MIN_CHUNK, MAX_CHUNK)
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        raise _fail("chunk_size", f"more than {MAX_CHUNKS} chunks; use a larger chunk size")


# --- frames --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of all frames. `PAYLOAD` names the field that travels as raw bytes after the header."""

    TYPE: ClassVar[FrameType]
    PAYLOAD: ClassVar[str | None] = None
    #: Keys a peer must send even though the field has a default for local construction.
    WIRE_REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `LocalProtocolError` if a field is out of range."""

    def header(self) -> dict[str, Any]:
        """The msgpack header map: every field except the payload."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != self.PAYLOAD
        }

    def payload(self) -> bytes | bytearray | memoryview:
        return getattr(self, self.PAYLOAD) if self.PAYLOAD else b""

    @classmethod
    def from_header(cls, header: dict[str, Any], payload: bytes | bytearray | memoryview) -> Frame:
        """Build the frame from a decoded header; unknown keys are ignored (forward compatible)."""
        kwargs: dict[str, Any] = {}
        for key in cls.WIRE_REQUIRED:
            if key not in header:
                raise _fail(key, "missing")
        for f in dataclasses.fields(cls):
            if f.name == cls.PAYLOAD:
                kwargs[f.name] = payload
            elif f.name in header:
                kwargs[f.name] = header[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(f.name, "missing")
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Client's first frame: magic, versions it speaks, capabilities, optional bearer token."""

    TYPE = FrameType.HELLO
    WIRE_REQUIRED = ("magic",)  # a peer that does not say FLUX is not a flux peer
    versions: tuple[int, ...] = (PROTOCOL_VERSION,)
    caps: tuple[str, ...] = ()
    window: int = 32 * 1024 * 1024
    agent: str = ""
    token: str | None = None
    magic: str = MAGIC

    def validate(self) -> None:
        if self.magic != MAGIC:
            raise _fail("magic", "not a flux peer")
        if type(self.versions) is not tuple or not 1 <= len(self.versions) <= 16:
            raise _fail("versions", "expected 1 to 16 versions")
        for v in self.versions:
            check_int(v, "versions", 0, 0xFFFF)
        _check_caps(self.caps)
        check_int(self.window, "window", MIN_WINDOW, MAX_WINDOW)
        check_str(self.agent, "agent", MAX_TEXT)
        if self.token is not None:
            check_str(self.token, "token", MAX_TOKEN)


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    """Server's answer to HELLO: the chosen version and the server's receive window."""

    TYPE = FrameType.WELCOME
    version: int = PROTOCOL_VERSION
    caps: tuple[str, ...] = ()
    window: int = 32 * 1024 * 1024
    agent: str = ""

    def validate(self) -> None:
        check_int(self.version, "version", 0, 0xFFFF)
        _check_caps(self.caps)
        check_int(self.window, "window", MIN_WINDOW, MAX_WINDOW)
        check_str(self.agent, "agent", MAX_TEXT)


def _check_caps(caps: object) -> None:
    if type(caps) is not tuple or len(caps) > MAX_CAPS:
        raise _fail("caps", f"expected at most {MAX_CAPS} strings")
    for c in caps:
        check_str(c, "caps", 64)


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    TYPE = FrameType.PING
    nonce: int = 0

    def validate(self) -> None:
        check_int(self.nonce, "nonce")


@dataclass(frozen=True, slots=True)
class Pong(Frame):
    TYPE = FrameType.PONG
    nonce: int = 0

    def validate(self) -> None:
        check_int(self.nonce, "nonce")


@dataclass(frozen=True, slots=True)
class Goodbye(Frame):
    """Either side is closing the connection on purpose."""

    TYPE = FrameType.GOODBYE
    reason: str = ""

    def validate(self) -> None:
        check_str(self.reason, "reason", MAX_TEXT)


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """Server reports that the current request failed; `code` is an errors.FluxError code."""

    TYPE = FrameType.ERROR
    code: int = 500
    message: str = ""

    def validate(self) -> None:
        check_int(self.code, "code", 100, 999)
        check_str(self.message, "message", MAX_TEXT)


@dataclass(frozen=True, slots=True)
class OpenUpload(Frame):
    """Start or resume an upload of `size` bytes to `path` in chunks of `chunk_size`."""

    TYPE = FrameType.OPEN_UPLOAD
    path: str
    size: int
    chunk_size: int
    mode: int = 0o644

    def validate(self) -> None:
        check_str(self.path, "path", MAX_PATH, empty=False)
        check_geometry(self.size, self.chunk_size)
        check_int(self.mode, "mode", 0, MAX_MODE)


@dataclass(frozen=True, slots=True)
class Status(Frame):
    """Chunks the server already holds durably for an upload, with their digests as payload."""

    TYPE = FrameType.STATUS
    PAYLOAD = "digests"
    held: Ranges = ()
    digests: bytes | bytearray | memoryview = b""

    def validate(self) -> None:
        check_ranges(self.held, "held")
        check_digests(self.digests, count(self.held))


@dataclass(frozen=True, slots=True)
class Chunk(Frame):
    """Chunk `index` of the open transfer; `data` is the raw payload, `digest` its xxh3-128."""

    TYPE = FrameType.CHUNK
    PAYLOAD = "data"
    index: int
    digest: bytes
    data: bytes | bytearray | memoryview = b""

    def validate(self) -> None:
        check_int(self.index, "index", 0, MAX_CHUNKS - 1)
        check_digest(self.digest)
        check_buffer(self.data, "data", MAX_CHUNK)


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """The receiver holds these chunks durably; they leave the sender's window."""

    TYPE = FrameType.ACK
    ranges: Ranges

    def validate(self) -> None:
        check_ranges(self.ranges, "ranges")
        if not self.ranges:
            raise _fail("ranges", "empty")


@dataclass(frozen=True, slots=True)
class Commit(Frame):
    """Client has sent every chunk; `digest` is the xxh3-128 of the whole file."""

    TYPE = FrameType.COMMIT
    digest: bytes

    def validate(self) -> None:
        check_digest(self.digest)


@dataclass(frozen=True, slots=True)
class Committed(Frame):
    """The file is durable at its path."""

    TYPE = FrameType.COMMITTED
    size: int
    digest: bytes

    def validate(self) -> None:
        check_int(self.size, "size", 0, MAX_FILE_SIZE)
        check_digest(self.digest)


@dataclass(frozen=True, slots=True)
class OpenDownload(Frame):
    """Ask for `want` chunk ranges of `path` (None: all) of the version whose digest is `digest`.

    Without `digest`, `chunk_size` is a preference (used when the server has to index the file).
    With it, `digest` and `chunk_size` pin the version and geometry `want` was computed for: if
    either differs, the server answers META with `count` 0 and the client re-plans.
    """

    TYPE = FrameType.OPEN_DOWNLOAD
    path: str
    want: Ranges | None = None
    digest: bytes | None = None
    chunk_size: int = 1024 * 1024

    def validate(self) -> None:
        check_str(self.path, "path", MAX_PATH, empty=False)
        if self.want is not None:
            check_ranges(self.want, "want")
        if self.digest is not None:
            check_digest(self.digest)
        check_int(self.chunk_size, "chunk_size", MIN_CHUNK, MAX_CHUNK)


@dataclass(frozen=True, slots=True)
class Meta(Frame):
    """Download metadata; `count` chunks follow, the payload holds every chunk's digest."""

    TYPE = FrameType.META
    PAYLOAD = "digests"
    size: int
    chunk_size: int
    digest: bytes
    count: int
    mode: int = 0o644
    mtime_ns: int = 0
    digests: bytes | bytearray | memoryview = b""

    def validate(self) -> None:
        check_geometry(self.size, self.chunk_size)
        check_digest(self.digest)
        n = chunk_count(self.size, self.chunk_size)
        check_int(self.count, "count", 0, n)
        check_int(self.mode, "mode", 0, MAX_MODE)
        check_int(self.mtime_ns, "mtime_ns", 0, MAX_I64)
        check_digests(self.digests, n)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink as LISTING and INFO describe it (not a frame).

    `name` is one component, or in a recursive listing the path relative to the listed
    directory (hence up to MAX_PATH bytes). A link carries its `target`, the link's text (never
    followed); other kinds have none, and `target` is left out of the wire map when it is None,
    so entries of files and directories encode as they always did.
    """

    name: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    digest: bytes | None = None
    target: str | None = None

    KINDS: ClassVar[frozenset[str]] = frozenset({"file", "dir", "link"})

    def __post_init__(self) -> None:
        check_str(self.name, "name", MAX_PATH, empty=False)
        if self.kind not in self.KINDS:
            raise _fail("kind", "expected 'file', 'dir' or 'link'")
        check_int(self.size, "size", 0, MAX_U64)
        check_int(self.mtime_ns, "mtime_ns", 0, MAX_I64)
        check_int(self.mode, "mode", 0, MAX_MODE)
        if self.digest is not None:
            check_digest(self.digest)
        if self.kind == "link":
            check_str(self.target, "target", MAX_PATH, empty=False)
        elif self.target is not None:
            raise _fail("target", "only a link has a target")

    def to_wire(self) -> dict[str, Any]:
        wire = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.target is None:
            del wire["target"]
        return wire

    @classmethod
    def from_wire(cls, value: object) -> Entry:
        if type(value) is not dict:
            raise _fail("entry", "expected a map")
        if "name" not in value or "kind" not in value:
            raise _fail("entry", "name and kind are required")
        if type(value["kind"]) is not str:
            raise _fail("kind", "expected 'file', 'dir' or 'link'")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})


@dataclass(frozen=True, slots=True)
class ListDir(Frame):
    """List a directory (or a single file), continuing after `cursor` when given."""

    TYPE = FrameType.LIST
    path: str
    cursor: str | None = None

    def validate(self) -> None:
        check_str(self.path, "path", MAX_PATH, empty=False)
        if self.cursor is not None:
            check_str(self.cursor, "cursor", MAX_NAME)


@dataclass(frozen=True, slots=True)
class Listing(Frame):
    """One page of entries; `cursor` is set when more pages follow."""

    TYPE = FrameType.LISTING
    entries: tuple[Entry, ...] = ()
    cursor: str | None = None

    def validate(self) -> None:
        if type(self.entries) is not tuple or len(self.entries) > MAX_LIST_ENTRIES:
            raise _fail("entries", f"expected at most {MAX_LIST_ENTRIES} entries")
        if not all(type(e) is Entry for e in self.entries):
            raise _fail("entries", "expected entries")
        if self.cursor is not None:
            check_str(self.cursor, "cursor", MAX_NAME)

    def header(self) -> dict[str, Any]:
        return {"entries": [e.to_wire() for e in self.entries], "cursor": self.cursor}

    @classmethod
    def from_header(cls, header: dict[str, Any], payload: bytes | bytearray | memoryview) -> Frame:
        raw = header.get("entries", ())
        if type(raw) is not tuple or len(raw) > MAX_LIST_ENTRIES:
            raise _fail("entries", f"expected at most {MAX_LIST_ENTRIES} entries")
        return cls(tuple(Entry.from_wire(e) for e in raw), header.get("cursor"))


@dataclass(frozen=True, slots=True)
class Stat(Frame):
    TYPE = FrameType.STAT
    path: str

    def validate(self) -> None:
        check_str(self.path, "path", MAX_PATH, empty=False)


@dataclass(frozen=True, slots=True)
class Info(Frame):
    """Answer to STAT."""

    TYPE = FrameType.INFO
    entry: Entry

    def validate(self) -> None:
        if type(self.entry) is not Entry:
            raise _fail("entry", "expected an entry")

    def header(self) -> dict[str, Any]:
        return {"entry": self.entry.to_wire()}

    @classmethod
    def from_header(cls, header: dict[str, Any], payload: bytes | bytearray | memoryview) -> Frame:
        if "entry" not in header:
            raise _fail("entry", "missing")
        return cls(Entry.from_wire(header["entry"]))


@dataclass(frozen=True, slots=True)
class Delete(Frame):
    TYPE = FrameType.DELETE
    path: str

    def validate(self) -> None:
        check_str(self.path, "path", MAX_PATH, empty=False)


@dataclass(frozen=True, slots=True)
class Deleted(Frame):
    TYPE = FrameType.DELETED
    path: str

    def validate(self) -> None:
        check_str(self.path, "path", MAX_PATH, empty=False)


FRAME_CLASSES: dict[FrameType, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Ping,
        Pong,
        Goodbye,
        Error,
        OpenUpload,
        Status,
        Chunk,
        Ack,
        Commit,
        Committed,
        OpenDownload,
        Meta,
        ListDir,
        Listing,
        Stat,
        Info,
        Delete,
        Deleted,
    )
}

#: Largest payload each frame type may carry; checked before any buffer is allocated.
MAX_PAYLOAD: dict[FrameType, int] = {
    FrameType.CHUNK: MAX_CHUNK,
    FrameType.STATUS: MAX_DIGESTS_PAYLOAD,
    FrameType.META: MAX_DIGESTS_PAYLOAD,
}
