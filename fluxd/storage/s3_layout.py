"""Where S3Storage keeps what, under the configured prefix, and the records it writes.

    entries/<path>                   a file or a link: its record (msgpack, `Record`)
    folders/<path>                   a folder made by mkdir: its mode and mtime (folders that
                                     only hold something need no key of their own). Not
                                     entries/<path>/: engines built on a file tree (SeaweedFS)
                                     keep no body at a key that ends with "/"
    data/<path>/<nonce>              a file's bytes: one object per stored version, written
                                     once (the target of its multipart upload), never changed
    uploads/<key>/record             an upload in progress: path, geometry, upload id, nonce
    uploads/<key>/lease              the writer's lease on the path (s3_lease.py)
    uploads/<key>/chunks/<nonce>/<index>.<digest>.<etag>
                                     one empty object per chunk the store holds, named by its
                                     index, xxh3-128 digest (hex) and its part's ETag: a
                                     listing is the journal
    retired/<path>/<nonce>           an empty key written when a version stops being the
                                     file's (replaced or deleted): garbage collection removes
                                     the version `staging_grace` after this key's time
    probe/<random>                   written and removed by a node's start-up check of the
                                     store's conditional writes

`<key>` is `paths.reserved_key` of the path: fixed-length, free of the path's characters.

A file appears, atomically, when its record is written, after its data object is complete
and verified. The record names the data object's nonce, so a version is pinned by reading the
record once: a download goes on reading its version whatever replaces the record, until
garbage collection removes data objects no record names, `staging_grace` after they were
retired.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import msgpack

from fluxproto.errors import StorageError
from fluxproto.frames import DIGEST_SIZE, Entry, chunk_count

from .paths import reserved_key

__all__ = [
    "ENTRIES",
    "FOLDERS",
    "RETIRED",
    "UPLOADS",
    "Record",
    "UnreadableRecord",
    "UploadRecord",
    "chunk_key",
    "chunks_prefix",
    "data_key",
    "entry_key",
    "folder_key",
    "marker_key",
    "markers_prefix",
    "new_nonce",
    "parse_chunk_key",
    "retired_key",
    "upload_dir",
]

ENTRIES = "entries/"
FOLDERS = "folders/"
DATA = "data/"
UPLOADS = "uploads/"
RETIRED = "retired/"
#: Largest record read back (a file's record holds 16 bytes per chunk, 10,000 chunks at most).
MAX_RECORD = 1024 * 1024


class UnreadableRecord(StorageError):
    """A record in the store that is not one (damage, or a writer that is not fluxd)."""


def new_nonce() -> str:
    """A fresh version name: 128 random bits in hex."""
    return secrets.token_hex(16)


def entry_key(rel: str) -> str:
    return ENTRIES + rel


def folder_key(rel: str) -> str:
    """The prefix of the entries in folder `rel` ("" is the root)."""
    return ENTRIES + rel + "/" if rel else ENTRIES


def marker_key(rel: str) -> str:
    """The key of the marker of folder `rel` (not the root)."""
    return FOLDERS + rel


def markers_prefix(rel: str) -> str:
    """The prefix of the markers of the folders in folder `rel` ("" is the root)."""
    return FOLDERS + rel + "/" if rel else FOLDERS


def data_key(rel: str, nonce: str) -> str:
    return f"{DATA}{rel}/{nonce}"


def data_prefix(rel: str) -> str:
    """Prefix of the data objects of `rel` and of everything under it ("" is the root)."""
    return f"{DATA}{rel}/" if rel else DATA


def retired_key(rel: str, nonce: str) -> str:
    return f"{RETIRED}{rel}/{nonce}"


def upload_dir(rel: str) -> str:
    return f"{UPLOADS}{reserved_key(rel)}/"


def chunk_key(rel: str, nonce: str, index: int, digest: bytes, etag: str) -> str:
    """The key that says the store holds chunk `index` (of `digest`) as the part of `etag`."""
    return f"{chunks_prefix(rel, nonce)}{index:07d}.{digest.hex()}.{etag}"


def chunks_prefix(rel: str, nonce: str) -> str:
    return f"{upload_dir(rel)}chunks/{nonce}/"


def parse_chunk_key(key: str) -> tuple[int, bytes, str] | None:
    """(index, digest, part ETag) from a chunk key's last component, or None if it is not one."""
    index, _, rest = key.rpartition("/")[2].partition(".")
    digest, _, etag = rest.partition(".")
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    if len(raw) != DIGEST_SIZE or not index.isdigit() or not etag:
        return None
    return int(index), raw, etag


def _pack(value: dict[str, Any]) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(raw, raw=False, max_bin_len=MAX_RECORD, max_str_len=MAX_RECORD)
    except (ValueError, msgpack.UnpackException) as exc:
        raise UnreadableRecord(f"the record of {what} in the object store is unreadable") from exc
    if not isinstance(value, dict):
        raise UnreadableRecord(f"the record of {what} in the object store is unreadable")
    return value


@dataclass(frozen=True)
class Record:
    """What entries/<path> holds: a file (with its data object's nonce and its digests), a
    link (with its target) or, under entries/<path>/, a folder."""

    kind: str
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    chunk_size: int = 0
    digest: bytes = b""
    digests: bytes = b""
    nonce: str = ""
    target: str = ""
    #: Its bytes were found not to match its digests (as `manifests.Manifest.damaged`): no
    #: longer offered as a basis, and its digest not reported; downloads go on refusing the
    #: damaged chunks.
    damaged: bool = False

    def pack(self) -> bytes:
        body: dict[str, Any] = {"kind": self.kind, "mode": self.mode, "mtime": self.mtime_ns}
        if self.kind == "file":
            body.update(
                size=self.size,
                chunk=self.chunk_size,
                digest=self.digest,
                digests=self.digests,
                nonce=self.nonce,
            )
            if self.damaged:
                body["damaged"] = True
        elif self.kind == "link":
            body["target"] = self.target
        return _pack(body)

    @classmethod
    def unpack(cls, raw: bytes, what: str) -> Record:
        """Raises UnreadableRecord when the bytes are not a record (damage, or another writer)."""
        v = _unpack(raw, what)
        try:
            kind = v["kind"]
            record = cls(kind, int(v.get("mode", 0o644)), int(v.get("mtime", 0)))
            if kind == "file":
                record = cls(
                    kind,
                    record.mode,
                    record.mtime_ns,
                    int(v["size"]),
                    int(v["chunk"]),
                    bytes(v["digest"]),
                    bytes(v["digests"]),
                    str(v["nonce"]),
                    damaged=bool(v.get("damaged", False)),
                )
                if (
                    len(record.digests) != DIGEST_SIZE * chunk_count(record.size, record.chunk_size)
                    or len(record.digest) != DIGEST_SIZE
                ):
                    raise ValueError("digests do not fit the size")
            elif kind == "link":
                record = cls(kind, record.mode, record.mtime_ns, target=str(v["target"]))
            elif kind != "dir":
                raise ValueError(kind)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            unreadable = f"the record of {what} in the object store is unreadable"
            raise UnreadableRecord(unreadable) from None
        return record

    def entry(self, name: str, with_digest: bool = True) -> Entry:
        """The entry clients see, named `name`."""
        if self.kind == "file":
            digest = self.digest if with_digest and not self.damaged else None
            return Entry(name, "file", self.size, self.mtime_ns, self.mode, digest)
        if self.kind == "link":
            return Entry(name, "link", len(self.target), self.mtime_ns, 0o777, target=self.target)
        return Entry(name, "dir", 0, self.mtime_ns, self.mode)


@dataclass(frozen=True)
class UploadRecord:
    """What uploads/<key>/record holds: an upload in progress any node can resume."""

    path: str
    size: int
    chunk_size: int
    nonce: str
    upload_id: str

    def pack(self) -> bytes:
        return _pack(
            {
                "path": self.path,
                "size": self.size,
                "chunk": self.chunk_size,
                "nonce": self.nonce,
                "upload": self.upload_id,
            }
        )

    @classmethod
    def unpack(cls, raw: bytes, what: str) -> UploadRecord:
        v = _unpack(raw, what)
        try:
            return cls(
                str(v["path"]), int(v["size"]), int(v["chunk"]), str(v["nonce"]), str(v["upload"])
            )
        except (KeyError, TypeError, ValueError):
            raise UnreadableRecord(f"the upload record of {what} is unreadable") from None
