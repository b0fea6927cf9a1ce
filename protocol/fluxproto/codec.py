"""Wire encoding: a 9-byte prefix, a msgpack header, then raw payload bytes.

    +---------+------------------+-------------------+-------------------+-----------------+
    | type u8 | header_len u32be | payload_len u32be | header (msgpack)  | payload (raw)   |
    +---------+------------------+-------------------+-------------------+-----------------+

`encode` is pure. `FrameReader` is incremental and copy-avoiding: `get_buffer` hands out a view of
exactly the bytes it still needs (the prefix, the header, or the payload buffer itself), so a
`BufferedProtocol` transport receives a chunk's payload straight into the buffer that is later
hashed and written to disk. Limits are checked from the prefix before anything is allocated.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from .errors import LocalProtocolError, RemoteProtocolError
from .frames import FRAME_CLASSES, MAX_HEADER, MAX_PAYLOAD, Frame, FrameType

PREFIX = struct.Struct(">BII")
PREFIX_SIZE = PREFIX.size

Buffer = bytes | bytearray | memoryview


def encode(frame: Frame) -> list[Buffer]:
    """Encode `frame` as buffers to write in order; a payload is returned as is, never copied."""
    try:
        header = msgpack.packb(frame.header(), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {frame.TYPE.name}: {exc}") from exc
    if len(header) > MAX_HEADER:
        raise LocalProtocolError(f"{frame.TYPE.name} header is {len(header)} bytes > {MAX_HEADER}")
    payload = frame.payload()  # validated: 1-byte items, so len() is the byte count
    prefix = PREFIX.pack(frame.TYPE, len(header), len(payload))
    return [prefix + header, payload] if payload else [prefix + header]


def encode_bytes(frame: Frame) -> bytes:
    """`encode` joined into one bytes object (tests, golden vectors, small frames)."""
    return b"".join(bytes(b) for b in encode(frame))


def _ext_hook(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(f"msgpack extension type {code} is not allowed")


def decode_header(raw: Buffer) -> dict[str, Any]:
    """Decode a header map, refusing anything that is not a map with string keys."""
    try:
        value = msgpack.unpackb(
            raw,
            raw=False,
            use_list=False,  # arrays come back as tuples: frames are immutable
            strict_map_key=True,
            ext_hook=_ext_hook,
        )
    except RemoteProtocolError:
        raise
    except Exception as exc:
        raise RemoteProtocolError(f"malformed frame header: {exc}") from exc
    if type(value) is not dict:
        raise RemoteProtocolError("frame header is not a map")
    return value


def decode(type_byte: int, header: Buffer, payload: Buffer = b"") -> Frame:
    """Decode one frame from its parts; raises `RemoteProtocolError` on anything invalid."""
    try:
        ftype = FrameType(type_byte)
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type 0x{type_byte:02x}") from None
    cls = FRAME_CLASSES[ftype]
    try:
        return cls.from_header(decode_header(header), payload)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"{ftype.name}: {exc}") from None


def check_prefix(
    type_byte: int, header_len: int, payload_len: int, max_header: int = MAX_HEADER
) -> None:
    """Validate a prefix before allocating buffers for what it announces.

    `max_header` lowers the protocol's MAX_HEADER (a server's configured limit).
    """
    try:
        ftype = FrameType(type_byte)
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type 0x{type_byte:02x}") from None
    if not 0 < header_len <= min(max_header, MAX_HEADER):
        raise RemoteProtocolError(f"{ftype.name} header length {header_len} out of range")
    limit = MAX_PAYLOAD.get(ftype, 0)
    if payload_len > limit:
        raise RemoteProtocolError(f"{ftype.name} payload of {payload_len} bytes > {limit}")


class FrameReader:
    """Incremental decoder. Feed bytes with `feed` or `get_buffer`/`buffer_updated`.

    `max_chunk` is the largest CHUNK payload accepted, checked at the prefix before allocation;
    a connection lowers it to the largest chunk size of a transfer the peer may still send
    chunks on (0: no chunk may arrive). `alloc`
    provides CHUNK payload buffers (e.g. page-aligned ones for O_DIRECT); other payloads are
    bytearrays. `max_header` lowers the header limit below MAX_HEADER. After a
    `RemoteProtocolError` the reader is broken and refuses further input.
    """

    def __init__(
        self,
        max_chunk: int = MAX_PAYLOAD[FrameType.CHUNK],
        alloc: Callable[[int], bytearray | memoryview] | None = None,
        max_header: int = MAX_HEADER,
    ) -> None:
        self.max_chunk = max_chunk
        self.max_header = max_header
        self._alloc = alloc
        self._prefix = bytearray(PREFIX_SIZE)
        self._target: bytearray | memoryview = self._prefix
        self._filled = 0
        self._stage = 0  # 0 prefix, 1 header, 2 payload
        self._type = 0
        self._header: bytearray = bytearray()
        self._payload_len = 0
        self._ready: deque[Frame] = deque()
        self._broken: RemoteProtocolError | None = None

    @property
    def at_boundary(self) -> bool:
        """True between frames (no partial frame buffered)."""
        return self._stage == 0 and self._filled == 0

    def get_buffer(self) -> memoryview:
        """A writable view of exactly the bytes the reader needs next."""
        if self._broken:
            raise self._broken
        return memoryview(self._target)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that `nbytes` were written into the last `get_buffer` view."""
        if self._broken:
            raise self._broken
        self._filled += nbytes
        if self._filled < len(self._target):
            return
        try:
            self._advance()
        except RemoteProtocolError as exc:
            self._broken = exc
            raise

    def feed(self, data: Buffer, *, one: bool = False) -> int:
        """Copy `data` in; with `one`, stop right after a frame completes. Returns bytes used."""
        used = 0
        # Views are released on every path, so the caller may resize `data` afterwards.
        with memoryview(data) as raw, raw.cast("B") as view:
            while used < len(view):
                buf = self.get_buffer()
                n = min(len(buf), len(view) - used)
                buf[:n] = view[used : used + n]
                used += n
                self.buffer_updated(n)
                if one and self._ready:
                    break
        return used

    @property
    def has_frame(self) -> bool:
        return bool(self._ready)

    def next_frame(self) -> Frame | None:
        return self._ready.popleft() if self._ready else None

    def _advance(self) -> None:
        if self._stage == 0:
            ftype, hlen, plen = PREFIX.unpack(self._prefix)
            check_prefix(ftype, hlen, plen, self.max_header)
            if ftype == FrameType.CHUNK and plen > self.max_chunk:
                why = (
                    f"> chunk size {self.max_chunk}"
                    if self.max_chunk
                    else "with no transfer open for it"
                )
                raise RemoteProtocolError(f"CHUNK payload of {plen} bytes {why}")
            self._type, self._payload_len = ftype, plen
            self._header = bytearray(hlen)
            self._set_target(1, self._header)
        elif self._stage == 1 and self._payload_len:
            alloc = self._alloc if self._type == FrameType.CHUNK else None
            self._set_target(2, alloc(self._payload_len) if alloc else bytearray(self._payload_len))
        else:
            payload: Buffer = self._target if self._stage == 2 else b""
            self._ready.append(decode(self._type, self._header, payload))
            self._set_target(0, self._prefix)

    def _set_target(self, stage: int, target: bytearray | memoryview) -> None:
        self._stage, self._target, self._filled = stage, target, 0
