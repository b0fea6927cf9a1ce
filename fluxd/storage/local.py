"""LocalStorage: the storage interface on a local directory tree, with staging and manifests.

Layout under the root (hidden from clients; `paths.normalize` refuses ".flux"):

    .flux/staging/<sha256 of path>/{data,journal}   uploads in progress (see staging.py)
    .flux/manifests/<sha256 of path>                 msgpack: chunk and file digests of a file

A manifest is trusted only while the file's size, mtime_ns and inode match what it recorded.
It records the digests of the bytes that were sent (or, for a file fluxd did not store, read
when it was indexed); it never vouches for what is on disk now. Whatever takes a manifest's
word for bytes it keeps or serves reads them and checks them first.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from fluxio.buffers import POOL
from fluxio.crashpoints import crash_point
from fluxio.oserrors import storage_errors
from fluxio.staging import READ_BLOCK, StagedFile, fsync_dir, pread_into
from fluxproto.digest import FileHasher, chunk_digest, digest_at
from fluxproto.errors import (
    Conflict,
    FluxError,
    IntegrityError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    StorageError,
)
from fluxproto.frames import (
    DIGEST_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_DIGESTS_PAYLOAD,
    MAX_FILE_SIZE,
    MIN_CHUNK,
    Entry,
    chunk_count,
)

from .. import log
from .base import Collected, EntryPage, Recovered, ScrubReport
from .beneath import Beneath
from .local_upload import LocalUpload
from .paths import RESERVED, normalize, require_file_path, resolve

_MANIFEST_LIMIT = MAX_DIGESTS_PAYLOAD + 64 * 1024
_DIR = os.O_RDONLY | os.O_DIRECTORY

__all__ = ["LocalDownload", "LocalStorage", "Manifest", "show_chunks"]


def _key(rel: str) -> str:
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()


def _name(rel: str) -> str:
    return rel.rpartition("/")[2] or "/"


def show_chunks(indices: list[int]) -> str:
    """Chunk indices for a log line or message: the first ten, then "..."."""
    return ", ".join(map(str, indices[:10])) + (" ..." if len(indices) > 10 else "")


def _require_file(rel: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise Conflict(f"{rel} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise Conflict(f"{rel} is not a regular file")


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
        return manifest if manifest._sane() else None

    def _sane(self) -> bool:
        ints = (self.size, self.chunk_size, self.mtime_ns, self.ino)
        if any(type(v) is not int for v in ints) or type(self.path) is not str:
            return False
        if type(self.digest) is not bytes or type(self.digests) is not bytes:
            return False
        if type(self.damaged) is not bool:
            return False
        if not MIN_CHUNK <= self.chunk_size <= MAX_CHUNK or not 0 <= self.size <= MAX_FILE_SIZE:
            return False
        n = chunk_count(self.size, self.chunk_size)
        return len(self.digest) == DIGEST_SIZE and len(self.digests) == n * DIGEST_SIZE


class LocalStorage:
    """Files under `root`. Creates ROOT/.flux/{staging,manifests} (mode 0700) if missing."""

    def __init__(self, root: Path) -> None:
        with storage_errors("opening the storage root"):
            self.root = Path(os.path.realpath(root))
            if not self.root.is_dir():
                raise NotFound(f"storage root {root} is not a directory")
            self._staging = self.root / RESERVED / "staging"
            self._manifests = self.root / RESERVED / "manifests"
            for d in (self.root / RESERVED, self._staging, self._manifests):
                d.mkdir(mode=0o700, exist_ok=True)
            for tmp in self._manifests.glob("*.tmp"):  # left by a crash mid-write
                tmp.unlink(missing_ok=True)
            self._beneath = Beneath(self.root)

    def _inner(self, rel: str) -> str:
        """Where `rel` leads (see `paths.resolve`), relative to the root and free of symlinks:
        what `Beneath.open` may open."""
        inner = os.path.relpath(resolve(self.root, rel), self.root)
        return "" if inner == "." else inner

    @contextlib.contextmanager
    def _open(self, inner: str, flags: int) -> Iterator[int]:
        fd = self._beneath.open(inner, flags)
        try:
            yield fd
        finally:
            os.close(fd)

    def _stat(self, rel: str) -> os.stat_result:
        """stat(2) of where `rel` leads, opened beneath the root."""
        with self._open(self._inner(rel), os.O_PATH) as fd:
            return os.fstat(fd)

    # --- uploads -----------------------------------------------------------------------------

    def open_upload(self, path: str, size: int, chunk_size: int, mode: int) -> LocalUpload:
        """Start or resume an upload; see `base.Storage.open_upload`.

        Raises:
            PermissionDenied: the path is refused. Conflict: it is a directory (or under a
            file), or another session is uploading it. NoSpace: no room for `size` bytes.
        """
        rel = require_file_path(path)
        self._check_dest(rel)
        try:
            staged = self._open_staged(rel, size, chunk_size)
        except NotFound:  # a commit of the same path removed the folder under us: once more
            staged = self._open_staged(rel, size, chunk_size)
        return LocalUpload(self, rel, staged, mode, self._base(rel, size, chunk_size))

    def _base(self, rel: str, size: int, chunk_size: int) -> Manifest | None:
        """The manifest of the file now at `rel` if it has this size and chunk size: chunks
        the new file shares with it need not cross the network again (like rsync's basis
        file), and re-sending an unchanged file costs one pass of hashing."""
        try:
            st = self._stat(rel)
        except (OSError, FluxError):
            return None
        manifest = self._load_manifest(rel, st) if stat.S_ISREG(st.st_mode) else None
        if manifest is None or manifest.damaged:
            return None
        if (manifest.size, manifest.chunk_size) != (size, chunk_size):
            return None
        return manifest

    def _open_staged(self, rel: str, size: int, chunk_size: int) -> StagedFile:
        folder = self._staging / _key(rel)
        with storage_errors(f"preparing the upload of {rel}"):
            if not folder.is_dir():
                folder.mkdir(mode=0o700, exist_ok=True)
                fsync_dir(self._staging)
        return StagedFile.open(folder / "data", folder / "journal", size, chunk_size, label=rel)

    def _check_dest(self, rel: str) -> None:
        with storage_errors(f"checking {rel}"):
            try:
                _require_file(rel, self._stat(rel))
            except FileNotFoundError:
                return
            except NotADirectoryError:
                raise Conflict(f"a parent of {rel} is a file") from None

    def _parent_dir(self, rel: str, inner: str) -> int:
        """mkdir -p for the parents of `inner`; returns the parent directory, open.

        Every step is opened beneath the root without following symlinks, so a folder swapped
        for a link meanwhile makes this fail instead of creating anything outside.
        """
        parts = inner.split("/")[:-1]
        with storage_errors(f"creating the folders of {rel}"):
            fd = self._beneath.open("", _DIR)
            try:
                for i, part in enumerate(parts):
                    sub = "/".join(parts[: i + 1])
                    try:
                        nxt = self._beneath.open(sub, _DIR)
                    except FileNotFoundError:
                        with contextlib.suppress(FileExistsError):  # a concurrent mkdir
                            os.mkdir(part, dir_fd=fd)
                            os.fsync(fd)
                        nxt = self._beneath.open(sub, _DIR)
                    os.close(fd)
                    fd = nxt
            except NotADirectoryError:
                os.close(fd)
                raise Conflict(f"a parent of {rel} is a file") from None
            except BaseException:
                os.close(fd)
                raise
        return fd

    def _publish(self, rel: str, staged: StagedFile, digest: bytes, mode: int) -> None:
        # Resolved again: the tree may have changed since open_upload.
        self._check_dest(rel)
        inner = self._inner(rel)
        parent = self._parent_dir(rel, inner)
        try:
            st = staged.fstat()  # the inode and mtime survive the rename
            digests = b"".join(staged.held[i] for i in range(staged.count))
            size, cs, mtime = staged.size, staged.chunk_size, st.st_mtime_ns
            self._write_manifest(Manifest(rel, size, cs, digest, digests, mtime, st.st_ino))
            crash_point("manifest-written")
            staged.publish(inner.rpartition("/")[2], mode, dir_fd=parent)
        finally:
            os.close(parent)
        self._remove_staging(rel)

    def _remove_staging(self, rel: str) -> None:
        with contextlib.suppress(OSError):  # not empty: another session has just reopened it
            os.rmdir(self._staging / _key(rel))

    # --- manifests ---------------------------------------------------------------------------

    def _manifest_path(self, rel: str) -> Path:
        return self._manifests / _key(rel)

    def _write_manifest(self, manifest: Manifest) -> None:
        final = self._manifest_path(manifest.path)
        with storage_errors(f"writing the manifest of {manifest.path}"):
            fd, tmp = tempfile.mkstemp(dir=self._manifests, prefix=final.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(msgpack.packb(dataclasses.asdict(manifest)))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsync_dir(self._manifests)

    def _mark_damaged(self, manifest: Manifest, bad: list[int]) -> None:
        """Record that the file `manifest` describes no longer holds its bytes (see
        `Manifest.damaged`). Raises StorageError if the manifest cannot be written."""
        log.event(
            "stored-file-damaged", logging.WARNING, path=manifest.path, chunks=show_chunks(bad)
        )
        self._write_manifest(dataclasses.replace(manifest, damaged=True))

    def _forget_manifest(self, rel: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._manifest_path(rel))

    def _load_manifest(self, rel: str, st: os.stat_result) -> Manifest | None:
        """The manifest of `rel` if it describes the file `st` is of; None otherwise."""
        try:
            with open(self._manifest_path(rel), "rb") as f:
                raw = f.read(_MANIFEST_LIMIT + 1)
        except OSError:
            return None
        manifest = Manifest.unpack(raw) if len(raw) <= _MANIFEST_LIMIT else None
        if manifest is None or manifest.path != rel or not manifest.matches(st):
            return None
        return manifest

    def _index(self, rel: str, fd: int, st: os.stat_result, hint: int) -> Manifest:
        """Read the file once for its chunk and file digests; store them as its manifest."""
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
            self._write_manifest(manifest)
        except StorageError as exc:
            # The manifest is a cache: a read-only or full disk must not stop downloads.
            log.event("manifest-not-saved", logging.WARNING, path=rel, error=exc.message)
        return manifest

    # --- downloads ---------------------------------------------------------------------------

    def open_download(self, path: str, chunk_size_hint: int) -> LocalDownload:
        """Open a stored file for reading; see `base.Storage.open_download`.

        Raises:
            NotFound: no such file. Conflict: a directory or not a regular file.
        """
        rel = require_file_path(path)
        inner = self._inner(rel)
        with storage_errors(f"opening {rel}"):
            fd = self._beneath.open(inner, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: fifos
        try:
            with storage_errors(f"reading {rel}"):
                st = os.fstat(fd)
            _require_file(rel, st)
            manifest = self._load_manifest(rel, st) or self._index(rel, fd, st, chunk_size_hint)
            return LocalDownload(rel, fd, manifest, st)
        except BaseException:
            os.close(fd)
            raise

    # --- metadata ----------------------------------------------------------------------------

    def _entry(self, rel: str, st: os.stat_result) -> Entry:
        if stat.S_ISDIR(st.st_mode):
            kind, digest = "dir", None
        elif stat.S_ISREG(st.st_mode):
            manifest = self._load_manifest(rel, st)
            # A damaged file does not hold the digest its manifest names.
            kind, digest = "file", manifest.digest if manifest and not manifest.damaged else None
        else:
            raise Conflict(f"{rel} is not a regular file or directory")
        mode, mtime = st.st_mode & 0o7777, max(0, st.st_mtime_ns)
        return Entry(_name(rel), kind, st.st_size, mtime, mode, digest)

    def stat(self, path: str) -> Entry:
        """The entry at `path` ("/" for the root). Raises NotFound, PermissionDenied."""
        rel = normalize(path)
        with storage_errors(f"reading {rel or '/'}"):
            st = self._stat(rel)
        return self._entry(rel, st)

    def list(self, path: str, cursor: str | None, limit: int) -> EntryPage:
        """A page of a directory, sorted by name; see `base.Storage.list`.

        Names the path rules would refuse or rewrite (control characters, not NFC, ".flux"
        at the root) are left out: no request could reach them. So are symlinks leading out
        of the root and entries that are neither files nor directories.
        """
        rel = normalize(path)
        inner = self._inner(rel)
        with storage_errors(f"listing {rel or '/'}"), self._open(inner, os.O_PATH) as fd:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                return [self._entry(rel, st)], None
        with storage_errors(f"listing {rel or '/'}"), self._open(inner, _DIR) as fd:
            names = sorted(n for n in os.listdir(fd) if self._listable(rel, n, inner))
            i = bisect.bisect_right(names, cursor) if cursor is not None else 0
            entries: list[Entry] = []
            while i < len(names) and len(entries) < max(1, limit):
                entry = self._child(rel, fd, names[i])
                if entry is not None:
                    entries.append(entry)
                i += 1
        return entries, names[i - 1] if i < len(names) else None

    def _listable(self, rel: str, name: str, inner: str) -> bool:
        if inner == "" and name.casefold() == RESERVED:
            return False  # also when `rel` is a symlink to the root
        child = f"{rel}/{name}" if rel else name
        try:
            return normalize(child) == child
        except PermissionDenied:
            return False

    def _child(self, rel: str, dir_fd: int, name: str) -> Entry | None:
        child = f"{rel}/{name}" if rel else name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                st = self._stat(child)
            return self._entry(child, st)
        except (OSError, PermissionDenied, Conflict):
            return None  # vanished, dangling, leading out of the root, or a fifo/socket/device

    def delete(self, path: str) -> None:
        """Delete a file and its manifest. A symlink is removed itself, not its target.

        Raises:
            PermissionDenied: the root or a refused path. NotFound. Conflict: a directory.
        """
        rel = require_file_path(path)
        parent, _, name = rel.rpartition("/")
        inner = self._inner(parent)
        if not inner and name.casefold() == RESERVED:  # `parent` is a symlink to the root
            raise PermissionDenied(f"{rel} leads into the reserved area {RESERVED}")
        with storage_errors(f"deleting {rel}"), self._open(inner, _DIR) as fd:
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise Conflict(f"{rel} is a directory")
            os.unlink(name, dir_fd=fd)
            self._forget_manifest(rel)
            os.fsync(fd)

    def recover(self) -> Recovered:
        """See `housekeeping.recover`."""
        from .housekeeping import recover  # noqa: PLC0415 - housekeeping builds on this module

        return recover(self)

    def collect(self, grace: float, now: float) -> Collected:
        """See `housekeeping.collect`."""
        from .housekeeping import collect  # noqa: PLC0415

        return collect(self, grace, now)

    def scrub(self) -> ScrubReport:
        """See `housekeeping.scrub`."""
        from .housekeeping import scrub  # noqa: PLC0415

        return scrub(self)

    def usage(self, path: str) -> int:
        """Bytes of the regular files under `path`, symlinks not followed (like `du -b`)."""
        rel = normalize(path)
        total = 0
        todo = [self._inner(rel)]
        with storage_errors(f"measuring {rel or '/'}"):
            while todo:
                inner = todo.pop()
                try:
                    fd = self._beneath.open(inner, _DIR)
                except (FileNotFoundError, NotADirectoryError, PermissionDenied):
                    continue  # gone, a file, or swapped for a link meanwhile
                try:
                    with os.scandir(fd) as it:
                        for entry in it:
                            sub = f"{inner}/{entry.name}" if inner else entry.name
                            if entry.is_dir(follow_symlinks=False):
                                if sub != RESERVED:
                                    todo.append(sub)
                            elif entry.is_file(follow_symlinks=False):
                                total += entry.stat(follow_symlinks=False).st_size
                finally:
                    os.close(fd)
        return total


class LocalDownload:
    """A stored file opened for reading; reads go to the inode opened, whatever replaces it."""

    def __init__(self, rel: str, fd: int, manifest: Manifest, st: os.stat_result) -> None:
        self._rel = rel
        self._fd: int | None = fd
        self.size, self.chunk_size = manifest.size, manifest.chunk_size
        self.digest, self.digests = manifest.digest, manifest.digests
        self.mode, self.mtime_ns = st.st_mode & 0o7777, max(0, st.st_mtime_ns)
        self.count = chunk_count(self.size, self.chunk_size)

    def read_chunk(self, index: int) -> memoryview:
        """The stored bytes of chunk `index`, in a buffer from the shared pool.

        Give the buffer back with `POOL.put` when done (the chunk sender does so on ACK).

        Raises:
            StorageError: index out of range or closed. IntegrityError: the file got shorter.
        """
        if self._fd is None or not 0 <= index < self.count:
            raise StorageError(f"chunk {index} of {self._rel} cannot be read")
        length = min(self.chunk_size, self.size - index * self.chunk_size)
        data = POOL.get(length)
        with storage_errors(f"reading chunk {index} of {self._rel}"):
            got = pread_into(self._fd, data, index * self.chunk_size)
        if got != length:
            POOL.put(data)
            raise IntegrityError(f"{self._rel} was truncated on disk at chunk {index}")
        return data

    def check(self) -> tuple[list[int], bytes]:
        """Read the whole file: the chunks whose bytes do not match their digest, and the
        xxh3-128 of everything read.

        Raises:
            StorageError: closed or unreadable. IntegrityError: the file got shorter.
        """
        hasher, bad = FileHasher(), []
        for index in range(self.count):
            data = self.read_chunk(index)
            try:
                if chunk_digest(data) != digest_at(self.digests, index):
                    bad.append(index)
                hasher.update(data)
            finally:
                POOL.put(data)
        return bad, hasher.digest()

    def close(self) -> None:
        """Close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
