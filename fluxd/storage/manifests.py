"""Manifests: the chunk and file digests of stored files, kept in ROOT/.flux/manifests.

One msgpack file per path, named by `paths.reserved_key`; or, for a small file committed in a
group, the same msgpack in the file's own extended attribute XATTR (it costs no file of its
own, whose creation was half the time of a group here, and it travels with the file's inode).
A manifest file of the path comes first: marking a file damaged or changing its mtime writes
one. A manifest is trusted only while the
file's size, mtime_ns and inode match what it recorded. It records the digests of the bytes
that were sent (or, for a file fluxd did not store, read when it was indexed); it never vouches
for what is on disk now. Whatever takes a manifest's word for bytes it keeps or serves reads
them and checks them first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from fluxio.oserrors import storage_errors
from fluxio.staging import READ_BLOCK, fsync_dir, pread_into
from fluxproto.digest import FileHasher, chunk_digest
from fluxproto.errors import Conflict, LimitExceeded, StorageError
from fluxproto.frames import (
    DIGEST_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_DIGESTS_PAYLOAD,
    MAX_FILE_SIZE,
    MIN_CHUNK,
    chunk_count,
)

from .. import log
from .paths import reserved_key

_MANIFEST_LIMIT = MAX_DIGESTS_PAYLOAD + 64 * 1024
#: The extended attribute a file can carry its own manifest in.
XATTR = "user.fluxd.manifest"
#: Largest manifest kept in XATTR (ext4 keeps up to about a block of attributes per file).
XATTR_MOST = 1024

__all__ = ["Manifest", "ManifestStore", "show_chunks"]


def show_chunks(indices: list[int]) -> str:
    """Chunk indices for a log line or message: the first ten, then "..."."""
    return ", ".join(map(str, indices[:10])) + (" ..." if len(indices) > 10 else "")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a file's digests were when it was stored or last indexed."""

    path: str
    size: int
    chunk_size: int
    digest: bytes
    digests: bytes
    mtime_ns: int
    ino: int
    #: The bytes were found not to match these digests (a commit checking the file as a
    #: basis): the file is no longer offered as a basis and its digest is not reported. The
    #: digests are kept, so downloads go on refusing the damaged chunks instead of indexing
    #: the damaged bytes as good. A new upload of the path replaces the manifest.
    damaged: bool = False

    def matches(self, st: os.stat_result) -> bool:
        """True if `st` (of the opened file) is the file this manifest describes."""
        return (self.size, self.mtime_ns, self.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)

    @classmethod
    def unpack(cls, raw: bytes) -> Manifest | None:
        """The manifest in `raw`, or None if it is not a well-formed one."""
        try:
            fields = msgpack.unpackb(raw)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if type(fields) is not dict:
            return None
        # A field with a default may be absent: manifests written before it existed.
        values = {f.name: fields.get(f.name, f.default) for f in dataclasses.fields(cls)}
        if dataclasses.MISSING in values.values():
            return None
        manifest = cls(**values)
        return manifest if _sane(manifest) else None


def _sane(m: Manifest) -> bool:
    """True if the fields unpacked into `m` have the types and sizes a manifest's have."""
    ints = (m.size, m.chunk_size, m.mtime_ns, m.ino)
    if any(type(v) is not int for v in ints) or type(m.path) is not str:
        return False
    if type(m.digest) is not bytes or type(m.digests) is not bytes:
        return False
    if type(m.damaged) is not bool:
        return False
    if not MIN_CHUNK <= m.chunk_size <= MAX_CHUNK or not 0 <= m.size <= MAX_FILE_SIZE:
        return False
    n = chunk_count(m.size, m.chunk_size)
    return len(m.digest) == DIGEST_SIZE and len(m.digests) == n * DIGEST_SIZE


class ManifestStore:
    """The manifests of one root, in `folder` (created, mode 0700, if missing)."""

    def __init__(self, folder: Path, root: Path | None = None) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        for tmp in folder.glob("*.tmp"):  # left by a crash mid-write
            tmp.unlink(missing_ok=True)
        self.folder = folder
        #: The tree the manifests describe (paths are relative to it).
        self.root = str(root if root is not None else folder.parent.parent)

    def _file(self, rel: str) -> Path:
        return self.folder / reserved_key(rel)

    def write(self, manifest: Manifest) -> None:
        """Store `manifest` durably, replacing the one of its path atomically.

        Raises:
            StorageError (or NoSpace): it could not be written.
        """
        self.place(manifest, self.stage(manifest))
        with storage_errors(f"writing the manifest of {manifest.path}"):
            fsync_dir(self.folder)

    # `write` in steps, for a group commit: stage many (synced by its barrier or not at all:
    # a manifest is a cache checked on every load, so a torn one is only an absent one), place
    # each, then `sync` the folder once.

    def stage(self, manifest: Manifest, *, sync: bool = True) -> Path:
        """Write `manifest` to a new temporary file beside its final one (fsynced unless
        `sync` is False) and return that file, for `place`. Raises StorageError, NoSpace."""
        final = self._file(manifest.path)
        with storage_errors(f"writing the manifest of {manifest.path}"):
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=final.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(msgpack.packb(dataclasses.asdict(manifest)))
                    if sync:
                        f.flush()
                        os.fsync(f.fileno())
            except BaseException:
                self.discard(Path(tmp))
                raise
        return Path(tmp)

    def place(self, manifest: Manifest, tmp: Path) -> None:
        """Rename the staged `tmp` over the manifest of its path (the temporary is removed if
        that fails). Raises StorageError."""
        with storage_errors(f"writing the manifest of {manifest.path}"):
            try:
                os.replace(tmp, self._file(manifest.path))
            except BaseException:
                self.discard(tmp)
                raise

    def sync(self) -> None:
        """Make the manifests placed so far durable (one fsync of the folder)."""
        with storage_errors("syncing the manifests"):
            fsync_dir(self.folder)

    def load(self, rel: str, st: os.stat_result, fd: int | None = None) -> Manifest | None:
        """The manifest of `rel` if it describes the file `st` is of (its manifest file, else
        the one the file carries: read from `fd` if given, else by path); None otherwise."""
        try:
            # A str join, not a Path: pathlib interns every part, and listings load a manifest
            # per file (a walk of 100,000 files grew the interpreter's intern table by ~1 MiB).
            with open(os.path.join(self.folder, reserved_key(rel)), "rb") as f:
                raw = f.read(_MANIFEST_LIMIT + 1)
        except OSError:
            raw = b""
        manifest = Manifest.unpack(raw) if 0 < len(raw) <= _MANIFEST_LIMIT else None
        if manifest is not None and manifest.path == rel and manifest.matches(st):
            return manifest
        try:
            if fd is not None:
                raw = os.getxattr(fd, XATTR)
            else:
                raw = os.getxattr(os.path.join(self.root, rel), XATTR, follow_symlinks=False)
        except OSError:
            return None
        manifest = Manifest.unpack(raw)
        # Checked as a file's: a copy of the file keeps its attributes, not its inode.
        if manifest is None or manifest.path != rel or not manifest.matches(st):
            return None
        return manifest

    def attach(self, fd: int, manifest: Manifest) -> bool:
        """Store `manifest` on the file `fd` describes, in XATTR (durable once the file is
        fsynced); False if it is too large or the filesystem keeps no such attribute (then
        write a manifest file instead)."""
        raw = msgpack.packb(dataclasses.asdict(manifest))
        if len(raw) > XATTR_MOST:
            return False
        try:
            os.setxattr(fd, XATTR, raw)
        except OSError:
            return False
        return True

    def mark_damaged(self, manifest: Manifest, bad: list[int]) -> None:
        """Record that the file `manifest` describes no longer holds its bytes (see
        `Manifest.damaged`). Raises StorageError if the manifest cannot be written."""
        log.event(
            "stored-file-damaged", logging.WARNING, path=manifest.path, chunks=show_chunks(bad)
        )
        self.write(dataclasses.replace(manifest, damaged=True))

    def forget(self, rel: str) -> bool:
        """Remove the manifest file of `rel`, if there is one; True if there was."""
        try:
            self._file(rel).unlink()
        except OSError:
            return False
        return True

    def discard(self, file: Path) -> None:
        """Remove one manifest file found by `scan`; gone already is fine."""
        with contextlib.suppress(OSError):
            file.unlink()

    def scan(self) -> Iterator[tuple[Path, Manifest | None]]:
        """Every manifest file, by name, and what it holds (None: not a well-formed one)."""
        with contextlib.suppress(FileNotFoundError):
            for file in sorted(self.folder.iterdir()):
                if file.suffix == ".tmp":
                    continue
                try:
                    raw = file.read_bytes()
                except OSError:
                    continue
                yield file, Manifest.unpack(raw)

    def index(self, rel: str, fd: int, st: os.stat_result, hint: int) -> Manifest:
        """Read the file `fd` (at `rel`, of stat `st`) once for its chunk and file digests;
        store them as its manifest. The chunk size is `hint`, clamped to what the protocol
        allows for the file's size.

        Raises:
            LimitExceeded: the file is too large. Conflict: it changed while being read.
            StorageError: it could not be read.
        """
        size = st.st_size
        if size > MAX_FILE_SIZE:
            raise LimitExceeded(f"{rel} is larger than {MAX_FILE_SIZE} bytes")
        cs = min(MAX_CHUNK, max(MIN_CHUNK, hint, -(-size // MAX_CHUNKS)))
        per_block = max(1, READ_BLOCK // cs)
        view = memoryview(bytearray(min(per_block * cs, size)))
        hasher, digests = FileHasher(), bytearray()
        with storage_errors(f"reading {rel}"):
            for offset in range(0, size, per_block * cs):
                want = min(per_block * cs, size - offset)
                if pread_into(fd, view[:want], offset) != want:
                    raise Conflict(f"{rel} changed while it was being read; try again")
                hasher.update(view[:want])
                for at in range(0, want, cs):
                    digests += chunk_digest(view[at : min(at + cs, want)])
            after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (size, st.st_mtime_ns):
            raise Conflict(f"{rel} changed while it was being read; try again")
        manifest = Manifest(
            rel, size, cs, hasher.digest(), bytes(digests), st.st_mtime_ns, st.st_ino
        )
        try:
            self.write(manifest)
        except StorageError as exc:
            # The manifest is a cache: a read-only or full disk must not stop downloads.
            log.event("manifest-not-saved", logging.WARNING, path=rel, error=exc.message)
        return manifest
