"""S3Storage: the request and maintenance interfaces (`base.Storage`, `base.Maintenance`) on an
S3-compatible object store shared by any number of fluxd nodes.

The layout of the bucket is s3_layout.py; uploads, as multipart uploads any node can resume,
s3_upload.py; the writer's lease on a path, s3_lease.py; the store itself, s3_store.py. Upkeep
(garbage collection, scrub) is s3_upkeep.py.

Links are stored and listed as links, but never followed: a path through a link, like a path
through a file, is refused (Conflict). Several nodes checking a path's type at once can race
(a file and a folder made at one name by two nodes): each node's check comes before its write.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from fluxproto.errors import Conflict, FluxError, NotFound, PermissionDenied
from fluxproto.frames import Entry

from .base import TREE_ENTRIES, Collected, EntryPage, Recovered, ScrubReport, Upload
from .local_entry import last_name
from .paths import check_link_target, normalize, require_file_path
from .s3_download import S3Download
from .s3_layout import Record, entry_key, marker_key, retired_key
from .s3_store import ObjectStore, S3Settings
from .s3_tree import S3Tree
from .s3_upkeep import S3Upkeep
from .s3_upload import S3Upload, check_destination, open_s3_upload

__all__ = ["MIN_PART", "S3Storage"]

#: S3's multipart rules: parts of at least 5 MiB but the last, at most 10,000 of them.
MIN_PART = 5 * 1024 * 1024
MAX_PARTS = 10_000
#: Threads for parts sent in parallel and records read in parallel (per node).
WORKERS = 16


class S3Storage:
    """Files in an S3 bucket under a prefix (`S3Settings`); see the module docstring.

    Args:
        settings: where the store is. owner: this node's name in leases (default: host, pid
            and a random tag).
    """

    min_chunk = MIN_PART
    max_chunks = MAX_PARTS

    def __init__(self, settings: S3Settings, owner: str | None = None) -> None:
        self._store = ObjectStore(settings)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="fluxd-s3")
        # Commits of a group wait on work they give `_pool` (parts of a basis): on threads of
        # their own, so they never hold every thread of the pool they wait on.
        self._commits = ThreadPoolExecutor(WORKERS // 2, thread_name_prefix="fluxd-s3-commit")
        self._owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tree = S3Tree(self._store, self._pool)
        self._upkeep = S3Upkeep(self._store, self._tree)

    def check(self) -> None:
        """Check the bucket, the credentials and the store's conditional writes, and learn
        whether it takes checksums (at start). Raises ConfigError, Unavailable."""
        self._store.check()

    @property
    def checksums(self) -> str:
        """What the store checks what it takes against (`ObjectStore.checksums`)."""
        return self._store.checksums

    def close(self) -> None:
        for pool in (self._commits, self._pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # --- uploads -------------------------------------------------------------------------------

    def open_upload(
        self,
        path: str,
        size: int,
        chunk_size: int,
        mode: int,
        mtime_ns: int | None = None,
        grouped: bool = False,
        writer: str = "",
    ) -> S3Upload:
        """Start or resume an upload; see `base.Storage.open_upload`.

        The service refuses a geometry the store's multipart rules (`min_chunk`,
        `max_chunks`) do not take before it gets here.

        Raises:
            PermissionDenied: the path is refused. Conflict: a folder is at the path, a
            parent is a file, or another writer holds it through another node.
            Unavailable: `writer` itself holds it through another node (a connection that
            node has not seen end; its lease lapses within `lease_ttl`), or the store does
            not answer. StorageError.
        """
        rel = require_file_path(path)
        check_destination(self._store, rel)
        return open_s3_upload(
            self._store,
            self._pool,
            rel,
            (size, chunk_size),
            (mode, mtime_ns),
            grouped,
            (self._owner, writer, self._store.settings.lease_ttl),
        )

    def commit_many(self, items: Sequence[tuple[Upload, bytes]]) -> list[FluxError | None]:
        """Commit uploads of this storage, each on its own (the store has no barrier to share);
        see `base.Storage.commit_many`."""
        uploads = []
        for upload, digest in items:
            if not isinstance(upload, S3Upload):
                raise TypeError("commit_many takes uploads this storage opened")
            uploads.append((upload, digest))

        def one(item: tuple[S3Upload, bytes]) -> FluxError | None:
            try:
                item[0].commit(item[1])
            except FluxError as exc:
                return exc
            return None

        return list(self._commits.map(one, uploads))

    # --- downloads -----------------------------------------------------------------------------

    def open_download(self, path: str, chunk_size_hint: int) -> S3Download:
        """Open a stored file, pinned to the version stored now; see `base.Storage.open_download`.

        Raises:
            NotFound: no such file. Conflict: a folder or a link.
        """
        rel = require_file_path(path)
        record = self._tree.lookup(rel)
        if record is None:
            raise NotFound(f"no such file: {rel}")
        if record.kind != "file":
            raise Conflict(f"{rel} is a {'directory' if record.kind == 'dir' else 'link'}")
        return S3Download(self._store, rel, record)

    # --- metadata ------------------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        """The entry at `path` ("/" for the root). Raises NotFound, PermissionDenied."""
        rel = normalize(path)
        record = self._tree.lookup(rel)
        if record is None:
            raise NotFound(f"no such file or directory: {rel}")
        return record.entry(last_name(rel))

    def list(self, path: str, cursor: str | None, limit: int, digests: bool = False) -> EntryPage:
        """A page of a folder, sorted by name; a file lists as itself; see `base.Storage.list`."""
        rel = normalize(path)
        record = self._tree.lookup(rel)
        if record is None:
            raise NotFound(f"no such file or directory: {rel}")
        if record.kind != "dir":
            return [record.entry(last_name(rel), digests)], None
        names, more = self._tree.children(rel, cursor, max(1, limit))
        entries = self._tree.entries(rel, names, digests)
        return entries, names[-1][0] if more and names else None

    def walk(self, path: str, limit: int, digests: bool = False) -> Iterator[Entry]:
        """Everything under a folder, depth first, names sorted; see `base.Storage.walk`."""
        return self._tree.walk(normalize(path), limit, digests)

    # --- changes -------------------------------------------------------------------------------

    def mkdir(
        self,
        path: str,
        mode: int | None = None,
        mtime_ns: int | None = None,
        parents: bool = True,
    ) -> Entry:
        """Make a folder (a marker key holding its mode and mtime), or set those of the one
        there; see `base.Storage.mkdir`."""
        rel = normalize(path)
        if not rel:
            return Record("dir", 0o755).entry("/")
        check_destination(self._store, rel, folder=True)
        parent = rel.rpartition("/")[0]
        if parent and not parents and self._tree.lookup(parent) is None:
            raise NotFound(f"no such directory: {parent}")
        old = self._tree.marker(rel)
        record = Record(
            "dir",
            (mode if mode is not None else old.mode if old else 0o755) & 0o7777,
            mtime_ns if mtime_ns is not None else old.mtime_ns if old else time.time_ns(),
        )
        if record != old:
            self._store.put(marker_key(rel), record.pack(), f"making {rel}")
        return record.entry(last_name(rel))

    def symlink(
        self, path: str, target: str, within: str = "", mtime_ns: int | None = None
    ) -> Entry:
        """Make or replace a symlink (a record holding its target); see `base.Storage.symlink`."""
        rel = require_file_path(path)
        check_link_target(target, rel.rpartition("/")[0], normalize(within))
        check_destination(self._store, rel)
        old = self._tree.lookup(rel)
        if old is not None and old.kind == "file":
            raise Conflict(f"{rel} is a file")
        mtime = mtime_ns if mtime_ns is not None else time.time_ns()
        record = Record("link", 0o777, mtime, target=target)
        self._store.put(entry_key(rel), record.pack(), f"making the link {rel}")
        return record.entry(last_name(rel))

    def delete(self, path: str, recursive: bool = False, limit: int = TREE_ENTRIES) -> int:
        """Delete a file or link, or with `recursive` a folder and everything in it; see
        `base.Storage.delete`. A file's data object is retired, and stays until garbage
        collection (`staging_grace` later): a download in progress goes on reading it."""
        rel = normalize(path)
        if not rel:
            raise PermissionDenied("the root cannot be deleted")
        record = self._tree.lookup(rel)
        if record is None:
            raise NotFound(f"no such file or directory: {rel}")
        if record.kind != "dir":
            if record.kind == "file":
                self._store.put(retired_key(rel, record.nonce), b"", f"deleting {rel}")
            self._store.delete([entry_key(rel)], f"deleting {rel}")
            return 1
        if not recursive:
            raise Conflict(f"{rel} is a directory")
        return self._tree.remove(rel, limit)

    def usage(self, path: str) -> int:
        """Bytes of the files stored under `path`: each file's current version."""
        return self._tree.usage(normalize(path))

    # --- maintenance (base.Maintenance) -------------------------------------------------------

    def recover(self) -> Recovered:
        """Nothing to repair: what the store holds is whole or absent. Counts the uploads in
        progress (any node may resume them)."""
        return self._upkeep.recover()

    def collect(self, grace: float, now: float) -> Collected:
        """See `s3_upkeep.S3Upkeep.collect`."""
        return self._upkeep.collect(grace, now)

    def scrub(self) -> ScrubReport:
        """See `s3_upkeep.S3Upkeep.scrub`."""
        return self._upkeep.scrub()
