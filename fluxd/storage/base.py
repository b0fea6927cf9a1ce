"""The storage interfaces and every type they use: requests (`Storage`, what sessions call) and
maintenance (`Maintenance`, what the daemon's own jobs and `fluxd scrub` call).

LocalStorage is one implementation; an object store is to fit the same interfaces. This module
imports no implementation, so implementations may import it freely.

Every method blocks (sessions call them from a thread pool) and raises only flux errors:
PermissionDenied for a path the sandbox refuses, NotFound, Conflict (wrong type of entry, or
another session writing the path), NoSpace, IntegrityError, StorageError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fluxio.staging import Buffer, ChunkData
from fluxproto.digest import FileHasher, chunk_digest, digest_at
from fluxproto.errors import FluxError, IntegrityError
from fluxproto.frames import Entry, chunk_count

#: One page of a listing: entries sorted by name, and the cursor for the next page (or None).
EntryPage = tuple[list[Entry], str | None]

#: Entries a recursive listing or delete walks unless told otherwise (the daemon's default
#: `[limits] tree_entries`).
TREE_ENTRIES = 10_000_000

__all__ = [
    "TREE_ENTRIES",
    "Backend",
    "Collected",
    "CorruptBasis",
    "Download",
    "EntryPage",
    "HeldWithBase",
    "Maintenance",
    "Recovered",
    "ScrubReport",
    "Storage",
    "Upload",
    "check_chunks",
    "copy_checked",
]


class CorruptBasis(IntegrityError):
    """A commit found chunks of the stored file it reuses (the basis) damaged: the data at rest
    is corrupt, not the client's (the daemon reports it as a corruption event)."""


class Upload(Protocol):
    """An upload in progress. Chunks are durable once `write_chunks` returns.

    `parallel` is how many `write_chunks` calls may run at once (1: one at a time, as a file
    with one sync per batch wants; an object store takes several parts at once).
    """

    parallel: int

    def arrived(self, index: int, digest: bytes, data: bytes | bytearray | memoryview) -> None:
        """Chunk `index` (verified) arrived: called in the order chunks arrive, before they are
        written, on the daemon's event loop, so it must be cheap. An implementation whose
        writes may finish out of order hashes the file here (S3Upload); others ignore it."""
        ...

    @property
    def held(self) -> Mapping[int, bytes]:
        """Chunk index -> digest for every chunk the storage can vouch for: staged chunks read
        back and verified when the upload opened (or written since), and chunks an
        implementation can take from elsewhere (LocalStorage: the file at the destination),
        which `commit` reads and checks before it keeps or copies them."""
        ...

    def write_chunks(self, batch: Sequence[ChunkData], durable: bool = True) -> None:
        """Store chunks (index, digest, data) whose digests the caller verified, durably.

        With `durable=False` the chunks are only kept for this upload's commit, which makes
        them durable (a group commit: `Storage.commit_many`); they must not be acknowledged
        before it, and are gone if the daemon dies first (a resume does not offer them).
        """
        ...

    def commit(self, digest: bytes) -> None:
        """Check the whole-file digest and publish the file atomically at its path, with the
        mode and mtime the upload was opened with (the file never appears without them).

        Raises:
            IntegrityError: chunks are missing, the digest differs, or chunks `held` offered
                turned out corrupt when read. Those are no longer in `held` when the upload is
                opened again; the chunks that still verify stay staged for the retry where the
                storage can keep them (an object store's assembled parts are spent: there the
                whole file goes again after a digest mismatch).
        """
        ...

    def close(self) -> None:
        """Stop writing but keep what is staged, so a later upload of the same file resumes."""
        ...

    def abort(self) -> None:
        """Stop writing and throw away what is staged."""
        ...


class HeldWithBase(Mapping[int, bytes]):
    """`Upload.held` of an upload whose destination's chunks count as held: every chunk, the
    staged one where there is one, else the destination's (the base, by its `digests`)."""

    def __init__(self, staged: Mapping[int, bytes], base: bytes, count: int) -> None:
        self._staged, self._base, self._count = staged, base, count

    def __getitem__(self, index: int) -> bytes:
        if index in self._staged:
            return self._staged[index]
        if not 0 <= index < self._count:
            raise KeyError(index)
        return digest_at(self._base, index)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._count))

    def __len__(self) -> int:
        return self._count


def copy_checked(
    dl: Download,
    write_chunks: Callable[[Sequence[ChunkData]], None],
    digests: bytes,
    indices: Sequence[int],
    batch_size: int,
    release: Callable[[Buffer], None] = lambda _: None,
) -> list[int]:
    """Copy chunks `indices` of `dl` (an upload's basis) with `write_chunks`, `batch_size` at
    a time, skipping those whose bytes do not match their digest in `digests`; returns the
    skipped ones. Every chunk is looked at, so one failed commit finds all the damage and the
    client resends it in one go. `release` is given every buffer read once it is done with
    (LocalDownload's come from a pool)."""
    bad: list[int] = []
    for start in range(0, len(indices), batch_size):
        batch: list[ChunkData] = []
        try:
            for index in indices[start : start + batch_size]:
                data, digest = dl.read_chunk(index), digest_at(digests, index)
                if chunk_digest(data) != digest:
                    release(data)
                    bad.append(index)
                    continue
                batch.append((index, digest, data))
            write_chunks(batch)
        finally:
            for _, _, buf in batch:
                release(buf)
    return bad


def check_chunks(
    dl: Download, release: Callable[[Buffer], None] = lambda _: None
) -> tuple[list[int], bytes]:
    """Read all of `dl`, chunk by chunk: the chunks whose bytes do not match their digest,
    and the xxh3-128 of everything read (the `check` of LocalDownload and S3Download).
    `release` is given every buffer read once it is done with (LocalDownload's come from a
    pool)."""
    hasher, bad = FileHasher(), []
    for index in range(chunk_count(dl.size, dl.chunk_size)):
        data = dl.read_chunk(index)
        try:
            if chunk_digest(data) != digest_at(dl.digests, index):
                bad.append(index)
            hasher.update(data)
        finally:
            release(data)
    return bad, hasher.digest()


class Download(Protocol):
    """One version of a stored file, pinned at open: later replacements do not affect it."""

    @property
    def size(self) -> int: ...

    @property
    def chunk_size(self) -> int: ...

    @property
    def digest(self) -> bytes:
        """xxh3-128 of the whole file."""
        ...

    @property
    def digests(self) -> bytes:
        """Every chunk's 16-byte digest, concatenated in index order."""
        ...

    @property
    def mode(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...

    def read_chunk(self, index: int) -> bytes | memoryview:
        """The bytes of chunk `index` as stored (the caller checks them against `digests`)."""
        ...

    def close(self) -> None: ...


class Storage(Protocol):
    """Files under one root, addressed by remote paths ("/a/b", "a/b"): the requests sessions
    make.

    `min_chunk` and `max_chunks` are what the storage needs of an upload's geometry beyond the
    protocol's limits (an object store's multipart rules: parts of at least 5 MiB but the last,
    at most 10,000 of them); the daemon announces them and refuses uploads that break them.
    """

    @property
    def min_chunk(self) -> int:
        """Smallest chunk size an upload of more than one chunk may use."""
        ...

    @property
    def max_chunks(self) -> int:
        """Most chunks one file may have."""
        ...

    def open_upload(
        self,
        path: str,
        size: int,
        chunk_size: int,
        mode: int,
        mtime_ns: int | None = None,
        grouped: bool = False,
        writer: str = "",
    ) -> Upload:
        """Start an upload to `path`, resuming a staged one with the same size and chunk size.

        `writer` names who uploads (the daemon's account of the caller): a storage shared by
        several nodes tells another node's writer of the path (Conflict) from the same writer
        whose earlier connection went through another node (Unavailable: retry once that
        node's hold on the path lapses). One node's own writers the daemon tells apart itself.

        `mtime_ns` (None: the time of writing) is the published file's modification time; a
        resend of a file the path already holds changes only the mode and mtime. `grouped`:
        a small file whose chunks come with its commit, one of a group (`commit_many`): the
        storage may hold it in memory and store nothing before that commit (LocalStorage
        does, unless an upload of the path is staged already; it then offers no chunks of
        the file at the path either, and writes the file whole).
        """
        ...

    def commit_many(self, items: Sequence[tuple[Upload, bytes]]) -> list[FluxError | None]:
        """Commit uploads this storage opened, each with its whole-file digest, together: as
        many `Upload.commit` calls would, but with one durability barrier for all (small
        files cost a sync each otherwise).

        Returns one result per item, in order: None if it was committed, else the error its
        own commit would have raised. A crash leaves each path absent, old, or new and whole.
        """
        ...

    def open_download(self, path: str, chunk_size_hint: int) -> Download:
        """Open a file for reading; `chunk_size_hint` is used when no manifest exists yet."""
        ...

    def stat(self, path: str) -> Entry:
        """The file or directory at `path`."""
        ...

    def list(self, path: str, cursor: str | None, limit: int, digests: bool = False) -> EntryPage:
        """Up to `limit` entries of a directory after `cursor`; a file lists as itself. Files
        carry their digest only with `digests` (looking digests up costs a read per file)."""
        ...

    def walk(self, path: str, limit: int, digests: bool = False) -> Iterator[Entry]:
        """Every entry under the folder `path`, recursively: depth first, names sorted, each
        named by its path relative to `path` ("a/b.txt"); a folder comes before what it holds.
        Symlinks are entries of kind "link" with their `target`, never followed. Hidden as by
        `list`: names no request could reach, the reserved area, and links `symlink` would
        refuse to make (leading out of the root, absolute). A file lists as itself, with its
        digest only with `digests` (as `list`). Memory does not grow with the tree.

        Raises (from the iteration): NotFound, PermissionDenied, StorageError, and
        LimitExceeded past `limit` entries, MAX_DEPTH levels or a name of MAX_PATH bytes.
        """
        ...

    def mkdir(
        self,
        path: str,
        mode: int | None = None,
        mtime_ns: int | None = None,
        parents: bool = True,
    ) -> Entry:
        """Make the folder `path` (mode: 0o755 when None; missing parents too, unless
        `parents` is False), or give the existing folder `mode` and `mtime_ns` where given, so
        a client can fix up folders' attributes after filling them (as rsync does). Durable
        on return. The served root itself is left as it is.

        Raises:
            PermissionDenied: the path is refused. Conflict: a file is in the way.
            NotFound: a parent is missing and `parents` is False.
        """
        ...

    def symlink(
        self, path: str, target: str, within: str = "", mtime_ns: int | None = None
    ) -> Entry:
        """Make a symlink at `path` holding `target` as text, or replace the link there,
        atomically and durably, with the link's own mtime `mtime_ns` (None: now) already set
        when it appears. It is never followed out of the root: refused are targets
        that are absolute, lead out of the root (or out of `within`, a confined subject's
        root) by their `..`, or have `..` after a name (see `paths.check_link_target`).

        Raises:
            PermissionDenied: the target or the path is refused. Conflict: a file or folder
            is at `path`, or a parent is a file.
        """
        ...

    def delete(self, path: str, recursive: bool = False, limit: int = TREE_ENTRIES) -> int:
        """Delete a file or symlink (the link itself); with `recursive` also a folder and
        everything in it, bottom-up, links removed as links. Returns the entries removed.

        Raises:
            PermissionDenied: the root, or a refused path. NotFound. Conflict: a folder
            without `recursive`, or the tree changed meanwhile. LimitExceeded: the tree holds
            more than `limit` entries or is deeper than MAX_DEPTH (nothing removed).
        """
        ...

    def usage(self, path: str) -> int:
        """Bytes of the files stored under `path` (0 if it does not exist), for quotas."""
        ...


@dataclass
class Recovered:
    """What recovery at start found among the uploads left in progress."""

    uploads: int = 0
    chunks: int = 0
    removed: int = 0  # uploads with nothing in them the storage can vouch for
    busy: int = 0  # held by a live session (another process): left alone


@dataclass
class Collected:
    """What one garbage collection reclaimed."""

    uploads: int = 0
    bytes: int = 0
    manifests: int = 0


@dataclass
class ScrubReport:
    """What a scrub found: `corrupt` is the only finding that is an error."""

    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    #: Manifests of files changed or removed outside fluxd (stale caches, dropped).
    stale: int = 0


class Maintenance(Protocol):
    """The storage's own upkeep, apart from requests: the daemon runs it at start and on timers
    (`gc_every`, `scrub_every`), `fluxd scrub` on demand. None of it touches an upload a live
    session holds."""

    def recover(self) -> Recovered:
        """After a crash or restart, before serving: repair or drop uploads left in progress
        (LocalStorage: cut torn journal tails, remove staging it cannot vouch for)."""
        ...

    def collect(self, grace: float, now: float) -> Collected:
        """Remove uploads idle for `grace` seconds at `now` (never one a session holds), and
        digests kept for files that no longer exist."""
        ...

    def scrub(self) -> ScrubReport:
        """Verify every committed file against its chunk digests."""
        ...


class Backend(Storage, Maintenance, Protocol):
    """A storage implementation as the daemon holds it: sessions see only `Storage`, the
    daemon's jobs only `Maintenance`."""
