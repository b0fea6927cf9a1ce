"""A partially received file: staged data plus the append-only journal of its durable chunks.

Used by the daemon for uploads and by the client for downloads, so it knows nothing about where
either keeps its files: the caller passes both paths.

Its journal (format: `fluxio.journal`) lists the durable chunks. On open, records are read
until the first short or bad one (a torn tail), which is cut off; every chunk the journal
names is then read back and kept only if its digest still matches.

Opening syncs nothing: the journal header and the folders holding the two files are made durable
together with the first record (the first `write_chunks` or `set_version`), because nothing
before a record is relied on after a crash. A small file whose chunks are written with
`durable=False` and committed in a group never pays for a sync of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

from fluxproto.digest import FileHasher, chunk_digest
from fluxproto.errors import Conflict, StorageError
from fluxproto.frames import DIGEST_SIZE, MAX_CHUNKS, chunk_count
from fluxproto.ranges import to_ranges

from .buffers import PAGE, is_page_aligned
from .crashpoints import crash_point, fault_point
from .journal import (
    HEADER_SIZE,
    KIND_CHUNK,
    KIND_VERSION,
    RECORD_SIZE,
    header,
    parse_header,
    parse_record,
    record,
)
from .oserrors import storage_errors

Buffer = bytes | bytearray | memoryview
ChunkData = tuple[int, bytes, Buffer]  # index, digest, payload

# errno posix_fallocate reports where the filesystem cannot preallocate (glibc mostly emulates).
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.EINVAL})
READ_BLOCK = 4 * 1024 * 1024  # sequential reads for verify and file_digest
#: Bytes a batch may read back to bring the whole-file hash over chunks written past a gap
#: once the gap is filled (see `write_chunks`).
CATCH_UP = 64 * 1024 * 1024

__all__ = [
    "HEADER_SIZE",
    "READ_BLOCK",
    "RECORD_SIZE",
    "Buffer",
    "ChunkData",
    "StagedFile",
    "fsync_dir",
    "pread_into",
]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from `offset`; fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _lock(journal_path: Path, label: str) -> int:
    """Open and exclusively flock the journal; the fd holds the writer's lock until closed."""
    busy = Conflict(f"{label} is being written by another session")
    for _ in range(3):
        fd = os.open(journal_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy from None
        # The holder may have published or discarded (unlinked) the journal between our open
        # and our flock: then we locked a dead inode and must start over on the new one.
        mine = os.fstat(fd)
        try:
            current = os.stat(journal_path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == mine.st_ino:
            return fd
        os.close(fd)
    raise busy


class StagedFile:
    """A staged data file plus its journal; `held` maps each verified durable chunk to its digest.

    Not thread-safe: one caller drives it at a time (the flock keeps out other sessions).
    """

    def __init__(self, paths: tuple[Path, Path], size: int, chunk_size: int, label: str) -> None:
        """Use `StagedFile.open`; this only sets fields."""
        self.data_path, self.journal_path = paths
        #: Folders whose entries must be durable before the first record is (see module doc).
        self._dirs: set[Path] = {self.journal_path.parent, self.data_path.parent}
        self._dirs_synced = False
        self.size, self.chunk_size, self.label = size, chunk_size, label
        self.count = chunk_count(size, chunk_size)
        self.held: dict[int, bytes] = {}
        self.version: bytes | None = None
        self._jfd = self._dfd = -1  # -1: closed
        self._direct_fd = -1  # opened on the first O_DIRECT write
        self._direct_ok = chunk_size % PAGE == 0  # O_DIRECT needs page-aligned offsets
        self._jend = HEADER_SIZE
        self._hasher = FileHasher()
        self._frontier = 0  # chunks [0, frontier) have been fed to _hasher
        self._catch_up_bytes = 0  # what a batch may read back for the hash (`open`'s catch_up)

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_path: Path,
        journal_path: Path,
        size: int,
        chunk_size: int,
        *,
        label: str = "",
        dirs: tuple[Path, ...] = (),
        catch_up: bool = False,
    ) -> StagedFile:
        """Create a staged file, or resume the one at these paths if its geometry matches.

        A journal with another size or chunk size, or an unreadable one, is discarded together
        with its data. `label` names the file in error messages (default: the data file name).
        `dirs`: more folders to sync with the first record, besides the two files' own (a
        folder created for them, whose entry lives in its parent). With `catch_up`, chunks
        written past one that came late are hashed (read back) as soon as it comes, not all at
        the end (`write_chunks`); without, `file_digest` reads them then, which also sees
        damage done to them on disk meanwhile (fluxd's commit reports it, 422).

        Raises:
            Conflict: another session (in this or another process) has the file open.
            NoSpace: the data file cannot be allocated.
            StorageError: bad geometry, or the filesystem failed.
        """
        label = label or data_path.name
        if size < 0 or not 0 < chunk_size < 1 << 32 or chunk_count(size, chunk_size) > MAX_CHUNKS:
            raise StorageError(f"bad geometry for {label}: size {size}, chunk size {chunk_size}")
        with storage_errors(f"opening the staged file for {label}"):
            self = cls((data_path, journal_path), size, chunk_size, label)
            self._dirs.update(dirs)
            self._catch_up_bytes = CATCH_UP if catch_up else 0
            self._jfd = _lock(journal_path, label)
            try:
                self._start()
            except BaseException:
                self.close()
                raise
        return self

    @classmethod
    def recover(cls, data_path: Path, journal_path: Path, *, label: str = "") -> int | None:
        """At the daemon's start: cut a torn tail off the journal of a staged file whose writer
        is gone; return how many chunks it records, or None if it has no valid header (nothing
        in it can be vouched for). The chunk data is verified when the upload resumes (`open`).

        Raises:
            Conflict: a live session holds the file.
            StorageError: the filesystem failed.
        """
        label = label or data_path.name
        with storage_errors(f"recovering the staged file for {label}"):
            fd = _lock(journal_path, label)
            try:
                geometry = parse_header(os.pread(fd, HEADER_SIZE, 0))
                if geometry is None:
                    return None
                self = cls((data_path, journal_path), *geometry, label)
                self._jfd = fd
                loaded = self._load_journal()
                if loaded is None:
                    return None
                if os.fstat(fd).st_size > self._jend:
                    os.ftruncate(fd, self._jend)
                    os.fsync(fd)
                return len(loaded[0])
            finally:
                os.close(fd)

    @classmethod
    def discard_if_idle(cls, data_path: Path, journal_path: Path, *, label: str = "") -> bool:
        """Remove a staged file nobody is writing (garbage collection); False if one is.

        Raises:
            StorageError: the filesystem failed.
        """
        label = label or data_path.name
        with storage_errors(f"removing the staged file for {label}"):
            try:
                fd = _lock(journal_path, label)
            except Conflict:
                return False
            try:
                for path in (journal_path, data_path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            finally:
                os.close(fd)
        return True

    def _start(self) -> None:
        loaded = self._load_journal()
        self._dfd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if loaded is None:
            self._start_fresh()
            return
        claimed, self.version = loaded
        if os.fstat(self._jfd).st_size > self._jend:
            os.ftruncate(self._jfd, self._jend)  # cut the torn tail so appends follow good data
            os.fsync(self._jfd)
        self._fit_data()
        self.held, self._hasher, self._frontier = self._verify(claimed)

    def _start_fresh(self) -> None:
        os.ftruncate(self._dfd, 0)
        try:
            self._fit_data()
        except OSError:
            os.ftruncate(self._dfd, 0)  # give back what a failed preallocation took
            raise
        os.ftruncate(self._jfd, 0)
        # Not synced here: the first record's fdatasync carries the header (module doc).
        _pwrite_all(self._jfd, header(self.size, self.chunk_size), 0)

    def _fit_data(self) -> None:
        have = os.fstat(self._dfd).st_size
        if have < self.size:
            # Reserve the space now: a full disk fails the open, not chunk 900 of 1000.
            try:
                os.posix_fallocate(self._dfd, have, self.size - have)
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE:
                    raise
                os.ftruncate(self._dfd, self.size)
        elif have > self.size:
            os.ftruncate(self._dfd, self.size)

    def _load_journal(self) -> tuple[dict[int, bytes], bytes | None] | None:
        """Claimed chunks and version tag, or None if the journal does not fit this geometry.

        Sets `_jend` to the end of the last good record. The journal is read whole: it holds
        25 bytes per chunk written, far less than the data it describes.
        """
        raw = memoryview(os.pread(self._jfd, os.fstat(self._jfd).st_size, 0))
        if raw[:HEADER_SIZE] != header(self.size, self.chunk_size):
            return None
        claimed: dict[int, bytes] = {}
        version: bytes | None = None
        end = HEADER_SIZE
        while (rec := self._parse_record(raw[end : end + RECORD_SIZE])) is not None:
            kind, index, digest = rec
            if kind == KIND_CHUNK:
                claimed[index] = digest
            else:
                version = digest
            end += RECORD_SIZE
        self._jend = end
        return claimed, version

    def _parse_record(self, raw: memoryview) -> tuple[int, int, bytes] | None:
        """The record in `raw`, or None if it is short or bad: the end of the good journal."""
        if (rec := parse_record(raw)) is None:
            return None
        kind, index, digest = rec
        if (kind == KIND_CHUNK and index < self.count) or (kind == KIND_VERSION and index == 0):
            return kind, index, digest
        return None

    def _verify(self, claimed: dict[int, bytes]) -> tuple[dict[int, bytes], FileHasher, int]:
        """Read back every claimed chunk in large sequential blocks; keep those that match.

        Returns the verified chunks, and a hasher fed with their contiguous prefix from chunk 0.
        """
        held: dict[int, bytes] = {}
        hasher, frontier = FileHasher(), 0
        if not claimed:
            return held, hasher, frontier
        per_block = max(1, READ_BLOCK // self.chunk_size)
        view = memoryview(bytearray(min(per_block, self.count) * self.chunk_size))
        for start, run in to_ranges(claimed):
            for first in range(start, start + run, per_block):
                last = min(first + per_block, start + run)
                span = view[: (last - first) * self.chunk_size]
                got = pread_into(self._dfd, span, first * self.chunk_size)
                for i in range(first, last):
                    at = (i - first) * self.chunk_size
                    piece = view[at : min(at + self.chunk_length(i), got)]
                    if len(piece) != self.chunk_length(i) or chunk_digest(piece) != claimed[i]:
                        continue
                    held[i] = claimed[i]
                    if i == frontier:
                        hasher.update(piece)
                        frontier += 1
        return held, hasher, frontier

    # --- state -------------------------------------------------------------------------------

    def chunk_length(self, index: int) -> int:
        """Length of chunk `index` (the last one may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def missing(self) -> list[int]:
        """Indices of the chunks not held, in order."""
        return [i for i in range(self.count) if i not in self.held]

    @property
    def complete(self) -> bool:
        """True when every chunk is held."""
        return len(self.held) == self.count

    @property
    def closed(self) -> bool:
        return self._jfd < 0

    def _fds(self) -> tuple[int, int]:
        if self._jfd < 0 or self._dfd < 0:
            raise StorageError(f"the staged file for {self.label} is closed")
        return self._dfd, self._jfd

    def fstat(self) -> os.stat_result:
        """fstat of the data file (its inode survives `publish`)."""
        dfd, _ = self._fds()
        with storage_errors(f"reading the staged file for {self.label}"):
            return os.fstat(dfd)

    # --- writing -----------------------------------------------------------------------------

    def write_chunks(self, batch: Sequence[ChunkData], *, durable: bool = True) -> None:
        """Write chunks whose digests the caller has verified, durably, then journal them.

        One fdatasync of the data covers the whole batch; then one journal append and fdatasync.
        With `durable=False` the chunks are only written (no sync, no journal record): they
        count in `held` for this object, so it can be published, but a crash loses them and a
        resume does not offer them. For a small file committed in a group, whose one sync
        covers many files (the caller then syncs with `sync` or a filesystem-wide barrier
        before `move_to`).

        Raises:
            StorageError: an index out of range, a wrong length or digest size (a caller bug),
                or the write failed (NoSpace, LimitExceeded, ...). Chunks of a failed batch are
                not held.
        """
        dfd, _ = self._fds()
        if not batch:
            return
        for index, digest, data in batch:
            self._check_chunk(index, digest, data)
        for index, _, data in batch:
            with storage_errors(f"writing chunk {index} of {self.label}"):
                fault_point("chunk-write")
                self._write_chunk(dfd, index, data)
        if not durable:
            for index, digest, data in sorted(batch, key=lambda c: c[0]):
                self._note_written(index, digest, data)
            self._catch_up(dfd)
            return
        crash_point("chunk-written")
        with storage_errors(f"syncing {self.label}"):
            os.fdatasync(dfd)
        crash_point("data-synced")
        self._append(b"".join(record(KIND_CHUNK, i, d) for i, d, _ in batch))
        crash_point("chunks-durable")
        for index, digest, data in sorted(batch, key=lambda c: c[0]):
            self._note_written(index, digest, data)
        self._catch_up(dfd)

    def _write_chunk(self, dfd: int, index: int, data: Buffer) -> None:
        """Write one chunk: whole chunks in page-aligned pool buffers go around the page cache
        (O_DIRECT: no copy, a fraction of the CPU), everything else through it."""
        offset = index * self.chunk_size
        if (
            self._direct_ok
            and isinstance(data, memoryview)
            and is_page_aligned(data)
            and len(data) == self.chunk_size
        ):
            try:
                if self._direct_fd < 0:
                    self._direct_fd = os.open(
                        self.data_path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC
                    )
                _pwrite_all(self._direct_fd, data, offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_ok = False  # this filesystem (tmpfs, ...) refuses: stay buffered
        _pwrite_all(dfd, data, offset)

    def _check_chunk(self, index: int, digest: bytes, data: Buffer) -> None:
        if not 0 <= index < self.count:
            raise StorageError(f"chunk {index} is out of range for {self.label}")
        if len(memoryview(data).cast("B")) != self.chunk_length(index):
            raise StorageError(f"chunk {index} of {self.label} has the wrong length")
        if len(digest) != DIGEST_SIZE:
            raise StorageError(f"chunk {index} of {self.label} has a bad digest")

    def _note_written(self, index: int, digest: bytes, data: Buffer) -> None:
        if index < self._frontier and self.held.get(index) != digest:
            # The hasher has consumed other bytes for this chunk: start over (file_digest reads).
            self._hasher, self._frontier = FileHasher(), 0
        self.held[index] = digest
        if index == self._frontier:
            self._hasher.update(data)
            self._frontier += 1

    def _append(self, records: bytes) -> None:
        # pwrite at our own offset, not O_APPEND: after a failed append the next one overwrites
        # the partial bytes instead of landing behind them (where recovery would never look).
        _, jfd = self._fds()
        with storage_errors(f"recording chunks of {self.label}"):
            fault_point("record-write")
            _pwrite_all(jfd, records, self._jend)
            crash_point("record-written")
            os.fdatasync(jfd)
            if not self._dirs_synced:  # the folders' entries of a file opened without a sync
                for directory in sorted(self._dirs):
                    fsync_dir(directory)
                self._dirs_synced = True
        self._jend += len(records)

    def set_version(self, tag: bytes) -> None:
        """Durably record a 16-byte version tag (e.g. the remote file digest) for resumes."""
        if len(tag) != DIGEST_SIZE:
            raise StorageError(f"a version tag is {DIGEST_SIZE} bytes")
        self._append(record(KIND_VERSION, 0, bytes(tag)))
        self.version = bytes(tag)

    # --- digests -----------------------------------------------------------------------------

    def file_digest(self) -> bytes:
        """xxh3-128 of the whole staged file; reads from disk only what was not hashed yet.

        Call it when complete (missing chunks hash as whatever is on disk). Bytes read here are
        not checked against `held`: if the result is not the expected digest, call `reverify`.
        """
        dfd, _ = self._fds()
        self._hash_from_disk(dfd, self.size)
        self._frontier = self.count
        return self._hasher.digest()

    def _hash_from_disk(self, dfd: int, end: int) -> None:
        """Feed the whole-file hasher the staged bytes from where it stands up to `end`."""
        view = memoryview(bytearray(min(READ_BLOCK, end - self._hasher.offset)))
        with storage_errors(f"reading {self.label}"):
            while self._hasher.offset < end:
                want = min(READ_BLOCK, end - self._hasher.offset)
                got = pread_into(dfd, view[:want], self._hasher.offset)
                if got == 0:
                    raise StorageError(f"the staged file for {self.label} is truncated")
                self._hasher.update(view[:got])

    def _catch_up(self, dfd: int) -> None:
        """Hash, from disk, the chunks held just past the frontier, CATCH_UP bytes at most.

        The hash takes chunks from memory only in file order: one that comes late (another
        connection's, in a shared download or an upload over lanes) stops it there, and
        without this every chunk after it would be read back at the end (`file_digest`).
        Once the late chunk is in, the run of chunks written past it is read back here, a
        batch at a time, and the hash goes on from memory.
        """
        start = end = self._frontier
        limit = self._catch_up_bytes
        while end < self.count and end in self.held and (end - start) * self.chunk_size < limit:
            end += 1
        if end > start:
            self._hash_from_disk(dfd, min(self.size, end * self.chunk_size))
            self._frontier = end

    def reverify(self) -> list[int]:
        """Read back every held chunk; drop those whose bytes no longer match. Returns them."""
        self._fds()
        with storage_errors(f"verifying {self.label}"):
            held, self._hasher, self._frontier = self._verify(self.held)
        dropped = sorted(self.held.keys() - held.keys())
        self.held = held
        return dropped

    # --- ending ------------------------------------------------------------------------------

    def publish(
        self,
        dest: Path | str,
        mode: int,
        dir_fd: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """Atomically move the complete file to `dest` (a name in `dir_fd` if given) with
        permissions `mode & 0o777` and, if given, modification time `mtime_ns`. The data is
        fsynced before the rename and dest's directory after it, so a crash leaves either the
        old `dest` or the complete new one. The journal is then removed and this object closed.

        Raises:
            StorageError: not complete, or the filesystem failed (Conflict if dest is a
                directory); the staged file stays open and usable until the rename succeeds.
        """
        self.seal(mode, mtime_ns)
        self.sync()
        self.move_to(dest, dir_fd)
        crash_point("renamed")
        try:
            with storage_errors(f"publishing {self.label}"):
                if dir_fd is None:
                    fsync_dir(Path(dest).parent)
                else:
                    os.fsync(dir_fd)
        except BaseException:
            self.close()
            raise
        self.finish()

    # The steps of `publish`, for a caller that publishes many files with one sync for all
    # (group commit): seal each, sync them all, move each, sync each folder once, finish each.

    def seal(self, mode: int, mtime_ns: int | None = None) -> None:
        """Give the complete file its permissions (`mode & 0o777`) and, if given, its
        modification time, before it is synced and moved: it never appears without them.
        Raises StorageError (not complete, or the filesystem failed)."""
        dfd, _ = self._fds()
        if not self.complete:
            missing = self.count - len(self.held)
            raise StorageError(f"{self.label} is not complete: {missing} chunks missing")
        with storage_errors(f"publishing {self.label}"):
            os.fchmod(dfd, mode & 0o777)
            if mtime_ns is not None:
                os.utime(dfd, ns=(time.time_ns(), mtime_ns))

    def sync(self) -> None:
        """Make data, size, mode and mtime durable (fsync: fdatasync may skip the metadata
        `seal` set). Raises StorageError."""
        dfd, _ = self._fds()
        with storage_errors(f"syncing {self.label}"):
            os.fsync(dfd)

    def move_to(self, dest: Path | str, dir_fd: int | None = None) -> None:
        """Rename the data file to `dest` (a name in `dir_fd` if given), replacing what is there;
        only once it is durable (`sync`, or a barrier covering it): else a crash could leave a
        torn file at `dest`. Raises StorageError (Conflict: dest is a directory)."""
        self._fds()
        if not self.complete:
            raise StorageError(f"{self.label} is not complete")
        with storage_errors(f"publishing {self.label}"):
            os.replace(self.data_path, dest, dst_dir_fd=dir_fd)

    def finish(self, *, sync: bool = True) -> None:
        """After `move_to`: remove the journal and close (even if that fails). `sync=False`
        leaves the removal for a later sync of the folder: a journal that outlives its data
        file offers nothing on resume (its chunks read back wrong) and is collected.
        Raises StorageError."""
        try:
            with storage_errors(f"publishing {self.label}"):
                os.unlink(self.journal_path)
                if sync:
                    fsync_dir(self.journal_path.parent)
        finally:
            self.close()

    def discard(self) -> None:
        """Remove both files and close. Does nothing when already closed (the lock is gone)."""
        if self.closed:
            return
        try:
            with storage_errors(f"discarding the staged file for {self.label}"):
                for path in (self.journal_path, self.data_path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        finally:
            self.close()

    def close(self) -> None:
        """Close the files, keeping them for a resume; releases the writer's lock. Idempotent."""
        for fd in (self._direct_fd, self._dfd, self._jfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._direct_fd = self._dfd = self._jfd = -1

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
