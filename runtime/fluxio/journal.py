"""The format of a staged file's journal (see fluxio.staging): a header, then records.

Little-endian:

    header  magic b"FLXJ" | version u8 | size u64 | chunk_size u32 | crc32 u32      (21 bytes)
    record  kind u8 | index u32 | digest 16 bytes | crc32 u32                        (25 bytes)

Each crc32 covers the bytes before it in the same header or record. Record kind 1 says chunk
`index` with that digest is durably in the data file (its data is fdatasynced before the record
is written); kind 2 stores a 16-byte version tag (index 0). The last record for an index wins.
"""

from __future__ import annotations

import struct
import zlib

from fluxproto.frames import MAX_CHUNKS, chunk_count

MAGIC = b"FLXJ"
VERSION = 1
KIND_CHUNK = 1
KIND_VERSION = 2
_HEADER = struct.Struct("<4sBQI")
_RECORD = struct.Struct("<BI16s")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size
RECORD_SIZE = _RECORD.size + _CRC.size

__all__ = [
    "HEADER_SIZE",
    "KIND_CHUNK",
    "KIND_VERSION",
    "MAGIC",
    "RECORD_SIZE",
    "VERSION",
    "header",
    "parse_header",
    "parse_record",
    "record",
]


def header(size: int, chunk_size: int) -> bytes:
    """A journal header for a file of `size` bytes in chunks of `chunk_size`."""
    body = _HEADER.pack(MAGIC, VERSION, size, chunk_size)
    return body + _CRC.pack(zlib.crc32(body))


def parse_header(raw: bytes) -> tuple[int, int] | None:
    """(size, chunk_size) from a journal header, or None if it is not a valid one."""
    if len(raw) < HEADER_SIZE:
        return None
    body = raw[: _HEADER.size]
    if zlib.crc32(body) != _CRC.unpack(raw[_HEADER.size : HEADER_SIZE])[0]:
        return None
    magic, version, size, chunk_size = _HEADER.unpack(body)
    if magic != MAGIC or version != VERSION or not chunk_size > 0 or size < 0:
        return None
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        return None
    return size, chunk_size


def record(kind: int, index: int, digest: bytes) -> bytes:
    """One journal record."""
    body = _RECORD.pack(kind, index, digest)
    return body + _CRC.pack(zlib.crc32(body))


def parse_record(raw: bytes | memoryview) -> tuple[int, int, bytes] | None:
    """(kind, index, digest) of the record at the start of `raw`, or None if it is short or its
    crc32 does not match."""
    if len(raw) < RECORD_SIZE:
        return None
    rec = raw[:RECORD_SIZE]
    if zlib.crc32(rec[: _RECORD.size]) != _CRC.unpack(rec[_RECORD.size :])[0]:
        return None
    kind, index, digest = _RECORD.unpack(rec[: _RECORD.size])
    return kind, index, bytes(digest)
