"""Protocol constants, frame type codes, field checks and the `Frame` base class (version 2).

Every frame family (connection, transfer, tree) builds on this module; `frames.py` gathers them.
Constructing a frame validates it and raises `LocalProtocolError`; the decoder turns that into
`RemoteProtocolError` for frames off the wire.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import LocalProtocolError
from .ranges import is_canonical

PROTOCOL_VERSION = 2
MAGIC = "FLUX"
ALPN = "flux/2"
ALPN_V1 = "flux/1"
#: What a client offers, best first: a version-1 server still completes TLS on flux/1 and can
#: then answer HELLO in flux framing (ERROR 505), so the user learns which side to upgrade.
ALPN_OFFER = (ALPN, ALPN_V1)
#: What a version-2 server accepts, preferred first. flux/1 is accepted only so that a
#: version-1 client hears ERROR 505 with a remedy instead of a TLS alert.
ALPN_ACCEPT = (ALPN, ALPN_V1)

# Hard limits (PROTOCOL.md section 13). Peers may configure lower ones.
MAX_HEADER = 64 * 1024
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_CHUNKS = 1 << 20
MAX_FILE_SIZE = MAX_CHUNKS * MAX_CHUNK
DIGEST_SIZE = 16
TID_SIZE = 16
MAX_DIGESTS_PAYLOAD = MAX_CHUNKS * DIGEST_SIZE
MAX_PATH = 4096
MAX_TARGET = 4096
MAX_RANGES = 4096
MAX_LIST_ENTRIES = 1000
MAX_TEXT = 1024
MAX_TOKEN = 8192
MAX_CAPS = 64
MIN_WINDOW = MIN_CHUNK
MAX_WINDOW = 1 << 30
DEFAULT_WINDOW = 32 * 1024 * 1024
MAX_REQUESTS = 1024
DEFAULT_REQUESTS = 64
MAX_RID = (1 << 32) - 1
MAX_U32 = (1 << 32) - 1
MAX_MODE = 0o7777
MAX_U64 = (1 << 64) - 1
MAX_I64 = (1 << 63) - 1


class FrameType(enum.IntEnum):
    """The type byte of each frame (PROTOCOL.md section 5)."""

    HELLO = 0x01
    WELCOME = 0x02
    PING = 0x03
    PONG = 0x04
    GOODBYE = 0x05
    ERROR = 0x06
    CANCEL = 0x07
    OPEN_UPLOAD = 0x10
    STATUS = 0x11
    CHUNK = 0x12
    ACK = 0x13
    COMMIT = 0x14
    COMMITTED = 0x15
    OPEN_DOWNLOAD = 0x20
    META = 0x21
    DONE = 0x22
    LIST = 0x30
    ENTRIES = 0x31
    STAT = 0x32
    INFO = 0x33
    DELETE = 0x34
    DELETED = 0x35
    MKDIR = 0x36
    SYMLINK = 0x37
    MADE = 0x38


# --- field checks ------------------------------------------------------------------------------


def fail(name: str, why: str) -> LocalProtocolError:
    """The error every field check raises (the decoder rewraps it as a remote error)."""
    return LocalProtocolError(f"invalid {name}: {why}")


def check_int(value: object, name: str, lo: int = 0, hi: int = MAX_U64) -> None:
    """An integer in [lo, hi]; never a bool (a wire `true` must not pass as 1) or a float."""
    if type(value) is not int:
        raise fail(name, f"expected integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise fail(name, f"{value} not in [{lo}, {hi}]")


def check_bool(value: object, name: str) -> None:
    """A msgpack boolean; an integer 0/1 is not one."""
    if type(value) is not bool:
        raise fail(name, f"expected true or false, got {type(value).__name__}")


def check_rid(value: object, name: str = "rid") -> None:
    """A request id: u32, never 0 (0 would be easy to send by accident)."""
    check_int(value, name, 1, MAX_RID)


def check_str(value: object, name: str, max_bytes: int, *, empty: bool = True) -> None:
    """A string of at most `max_bytes` UTF-8 bytes (`empty=False`: at least one character)."""
    if type(value) is not str:
        raise fail(name, f"expected string, got {type(value).__name__}")
    if not empty and not value:
        raise fail(name, "empty")
    # len() first: a string longer in characters is longer in bytes, without encoding it.
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise fail(name, f"longer than {max_bytes} bytes")


def check_path(value: object, name: str = "path") -> None:
    """A non-empty path of at most MAX_PATH bytes (its shape is the server's, PROTOCOL.md 17)."""
    check_str(value, name, MAX_PATH, empty=False)


def check_digest(value: object, name: str = "digest", size: int = DIGEST_SIZE) -> None:
    """Exactly `size` bytes of msgpack bin."""
    if type(value) is not bytes or len(value) != size:
        raise fail(name, f"expected {size} bytes")


def check_optional_digest(value: object, name: str, size: int = DIGEST_SIZE) -> None:
    """None, or a digest (also transfer ids, which have the same form)."""
    if value is not None:
        check_digest(value, name, size)


def check_optional_mtime(value: object, name: str = "mtime_ns") -> None:
    """None, or nanoseconds since the epoch in [0, 2^63-1]."""
    if value is not None:
        check_int(value, name, 0, MAX_I64)


def check_ranges(value: object, name: str, limit: int = MAX_CHUNKS) -> None:
    """Canonical (start, count) runs ending at or below `limit`, at most MAX_RANGES of them."""
    if type(value) is not tuple or len(value) > MAX_RANGES:
        raise fail(name, f"expected at most {MAX_RANGES} ranges")
    for r in value:
        if type(r) is not tuple or len(r) != 2:
            raise fail(name, "each range is [start, count]")
        check_int(r[0], name, 0, MAX_CHUNKS)
        check_int(r[1], name, 1, MAX_CHUNKS)
    if not is_canonical(value, limit):
        raise fail(name, "ranges must be sorted, disjoint, merged and within the file")


def check_buffer(value: object, name: str, max_len: int) -> None:
    """A payload: bytes-like with one-byte items, so len() is its size on the wire."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise fail(name, "expected bytes")
    if isinstance(value, memoryview) and value.itemsize != 1:
        raise fail(name, "memoryview payloads must have 1-byte items")
    if len(value) > max_len:
        raise fail(name, f"longer than {max_len} bytes")


def check_digests(value: object, n: int, name: str = "digests") -> None:
    """A payload of exactly `n` digests."""
    check_buffer(value, name, MAX_DIGESTS_PAYLOAD)
    if len(value) != n * DIGEST_SIZE:  # type: ignore[arg-type]
        raise fail(name, f"expected {n} digests of {DIGEST_SIZE} bytes")


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks a file of `size` bytes has at `chunk_size` (0 for an empty file)."""
    return -(-size // chunk_size)


def check_geometry(size: int, chunk_size: int) -> None:
    """`size` and `chunk_size` within the limits and at most MAX_CHUNKS chunks."""
    check_int(size, "size", 0, MAX_FILE_SIZE)
    check_int(chunk_size, "chunk_size", MIN_CHUNK, MAX_CHUNK)
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        raise fail("chunk_size", f"more than {MAX_CHUNKS} chunks; use a larger chunk size")


# --- the frame base ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of all frames. `PAYLOAD` names the field that travels as raw bytes after the header.

    Request frames have an `rid` field (their first); `rid_of` reads it for any frame.
    """

    TYPE: ClassVar[FrameType]
    PAYLOAD: ClassVar[str | None] = None
    #: Keys a peer must send even though the field has a default for local construction.
    WIRE_REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `LocalProtocolError` if a field is out of range."""

    def header(self) -> dict[str, Any]:
        """The msgpack header map: every field except the payload, in declaration order."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != self.PAYLOAD
        }

    def payload(self) -> bytes | bytearray | memoryview:
        """The raw payload (empty for frames without one)."""
        return getattr(self, self.PAYLOAD) if self.PAYLOAD else b""

    @classmethod
    def from_header(cls, header: dict[str, Any], payload: bytes | bytearray | memoryview) -> Frame:
        """Build the frame from a decoded header; unknown keys are ignored (forward compatible)."""
        kwargs: dict[str, Any] = {}
        for key in cls.WIRE_REQUIRED:
            if key not in header:
                raise fail(key, "missing")
        for f in dataclasses.fields(cls):
            if f.name == cls.PAYLOAD:
                kwargs[f.name] = payload
            elif f.name in header:
                kwargs[f.name] = header[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise fail(f.name, "missing")
        return cls(**kwargs)


def rid_of(frame: Frame) -> int | None:
    """The request id a frame carries, or None for a connection frame (or ERROR without one)."""
    rid: int | None = getattr(frame, "rid", None)
    return rid
