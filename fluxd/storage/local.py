"""LocalStorage: the request and maintenance interfaces (`base.Storage`, `base.Maintenance`) on
a local directory tree, assembled from the parts that own each job.

Layout under the root (hidden from clients; `paths.normalize` refuses ".flux"):

    .flux/staging/<key of path>/{data,journal}   uploads in progress (local_staging.py)
    .flux/manifests/<key of path>                 chunk and file digests of a file (manifests.py)
    .flux/tmp/                                    symlinks and small files (local_small.py)
                                                  before they are renamed into place

The tree itself (opens beneath the root) is local_tree.py; uploads are local_upload.py, group
commits local_batch.py, downloads local_download.py, folders and symlinks local_nodes.py,
recursive listing and deletion local_walk.py, recovery, collection and scrub housekeeping.py.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from fluxio.oserrors import storage_errors
from fluxproto.errors import Conflict, FluxError, NotFound, PermissionDenied
from fluxproto.fields import MAX_CHUNKS, MIN_CHUNK
from fluxproto.frames import Entry

from .base import TREE_ENTRIES, Collected, EntryPage, Recovered, ScrubReport, Upload
from .housekeeping import LocalMaintenance
from .local_batch import GroupCommit
from .local_download import LocalDownload, open_local_download
from .local_entry import entry_of, visible
from .local_nodes import Nodes
from .local_small import SmallFile
from .local_staging import StagingArea
from .local_tree import DIR, LocalTree
from .local_upload import LocalUpload, Publisher
from .local_walk import TreeWalker
from .manifests import Manifest, ManifestStore
from .paths import RESERVED, normalize, require_file_path

__all__ = ["LocalDownload", "LocalStorage", "Manifest"]


class LocalStorage:
    """Files under `root`. Creates ROOT/.flux/{staging,manifests,tmp} (mode 0700) if missing.

    Args:
        root: the served folder.
        barrier: how `commit_many` makes a group durable (see `local_batch.GroupCommit`).
    """

    #: A local file takes any geometry the protocol allows (`base.Storage`).
    min_chunk = MIN_CHUNK
    max_chunks = MAX_CHUNKS

    def __init__(self, root: Path, barrier: str = "fsync") -> None:
        with storage_errors("opening the storage root"):
            self.root = Path(os.path.realpath(root))
            if not self.root.is_dir():
                raise NotFound(f"storage root {root} is not a directory")
            (self.root / RESERVED).mkdir(mode=0o700, exist_ok=True)
            self._staging = StagingArea(self.root / RESERVED / "staging")
            self._manifests = ManifestStore(self.root / RESERVED / "manifests", self.root)
            self._tree = LocalTree(self.root)
            self._scratch = self.root / RESERVED / "tmp"
            self._nodes = Nodes(self._tree, self._manifests, self._scratch)
        parts = (self._tree, self._manifests, self._staging)
        self._publisher = Publisher(*parts)
        self._group = GroupCommit(*parts, barrier=barrier)
        self._maintenance = LocalMaintenance(*parts)
        self._walker = TreeWalker(self._tree, self._manifests)

    # --- uploads -----------------------------------------------------------------------------

    def open_upload(
        self,
        path: str,
        size: int,
        chunk_size: int,
        mode: int,
        mtime_ns: int | None = None,
        grouped: bool = False,
        writer: str = "",
    ) -> LocalUpload:
        """Start or resume an upload; see `base.Storage.open_upload` (one node: `writer` is
        not needed).

        Raises:
            PermissionDenied: the path is refused. Conflict: it is a directory (or under a
            file), or another session is uploading it. NoSpace: no room for `size` bytes.
        """
        rel = require_file_path(path)
        self._tree.check_dest(rel)
        if grouped and not self._staging.exists(rel):
            # A small file is cheaper to write again than to read back as a basis (the
            # destination's chunks are not offered): it is stored whole at its commit.
            small = SmallFile(self._scratch, rel, size, chunk_size)
            return LocalUpload(self._publisher, rel, small, mode, None, mtime_ns)
        staged = self._staging.open(rel, size, chunk_size)
        base = self._base(rel, size, chunk_size)
        return LocalUpload(self._publisher, rel, staged, mode, base, mtime_ns)

    def _base(self, rel: str, size: int, chunk_size: int) -> Manifest | None:
        """The manifest of the file now at `rel` if it has this size and chunk size: chunks
        the new file shares with it need not cross the network again (like rsync's basis
        file), and re-sending an unchanged file costs one pass of hashing."""
        try:
            st = self._tree.stat(rel)
        except (OSError, FluxError):
            return None
        manifest = self._manifests.load(rel, st) if stat.S_ISREG(st.st_mode) else None
        if manifest is None or manifest.damaged:
            return None
        if (manifest.size, manifest.chunk_size) != (size, chunk_size):
            return None
        return manifest

    def commit_many(self, items: Sequence[tuple[Upload, bytes]]) -> list[FluxError | None]:
        """Commit uploads of this storage together; see `base.Storage.commit_many`."""
        local = []
        for upload, digest in items:
            if not isinstance(upload, LocalUpload):
                raise TypeError("commit_many takes uploads this storage opened")
            local.append((upload, digest))
        return self._group.commit(local)

    # --- downloads ---------------------------------------------------------------------------

    def open_download(self, path: str, chunk_size_hint: int) -> LocalDownload:
        """Open a stored file for reading; see `base.Storage.open_download`.

        Raises:
            NotFound: no such file. Conflict: a directory or not a regular file.
        """
        return open_local_download(self._tree, self._manifests, path, chunk_size_hint)

    # --- metadata ----------------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        """The entry at `path` ("/" for the root). Raises NotFound, PermissionDenied."""
        rel = normalize(path)
        with storage_errors(f"reading {rel or '/'}"):
            st = self._tree.stat(rel)
        return entry_of(self._manifests, rel, st)

    def list(self, path: str, cursor: str | None, limit: int, digests: bool = False) -> EntryPage:
        """A page of a directory, sorted by name; see `base.Storage.list`.

        Names the path rules would refuse or rewrite (control characters, not NFC, ".flux"
        at the root) are left out: no request could reach them. So are symlinks leading out
        of the root and entries that are neither files nor directories.
        """
        rel = normalize(path)
        inner = self._tree.inner(rel)
        with storage_errors(f"listing {rel or '/'}"), self._tree.opened(inner, os.O_PATH) as fd:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                return [entry_of(self._manifests, rel, st, with_digest=digests)], None
        with storage_errors(f"listing {rel or '/'}"), self._tree.opened(inner, DIR) as fd:
            names = sorted(n for n in os.listdir(fd) if visible(rel, n, inner))
            i = bisect.bisect_right(names, cursor) if cursor is not None else 0
            entries: list[Entry] = []
            while i < len(names) and len(entries) < max(1, limit):
                entry = self._child(rel, fd, names[i], digests)
                if entry is not None:
                    entries.append(entry)
                i += 1
        return entries, names[i - 1] if i < len(names) else None

    def _child(self, rel: str, dir_fd: int, name: str, digests: bool) -> Entry | None:
        child = f"{rel}/{name}" if rel else name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                st = self._tree.stat(child)
            return entry_of(self._manifests, child, st, with_digest=digests)
        except (OSError, PermissionDenied, Conflict):
            return None  # vanished, dangling, leading out of the root, or a fifo/socket/device

    def walk(self, path: str, limit: int, digests: bool = False) -> Iterator[Entry]:
        """Everything under a folder, depth first; see `base.Storage.walk`."""
        return self._walker.walk(normalize(path), limit, digests)

    # --- changes -----------------------------------------------------------------------------

    def mkdir(
        self,
        path: str,
        mode: int | None = None,
        mtime_ns: int | None = None,
        parents: bool = True,
    ) -> Entry:
        """Make a folder, or set the mode and mtime of the one there; see `base.Storage.mkdir`."""
        return self._nodes.mkdir(normalize(path), mode, mtime_ns, parents)

    def symlink(
        self, path: str, target: str, within: str = "", mtime_ns: int | None = None
    ) -> Entry:
        """Make or replace a symlink; see `base.Storage.symlink`."""
        rel = require_file_path(path)
        return self._nodes.symlink(rel, target, normalize(within), mtime_ns)

    def delete(self, path: str, recursive: bool = False, limit: int = TREE_ENTRIES) -> int:
        """Delete a file or symlink (the link, not its target), or with `recursive` a folder
        and everything in it; see `base.Storage.delete`. Returns the entries removed.

        Raises:
            PermissionDenied: the root or a refused path. NotFound. Conflict: a folder without
            `recursive`. LimitExceeded: a tree over `limit` entries or MAX_DEPTH (nothing is
            removed then).
        """
        if recursive:
            return self._walker.remove(normalize(path), limit)
        rel = require_file_path(path)
        parent, _, name = rel.rpartition("/")
        inner = self._tree.inner(parent)
        if not inner and name.casefold() == RESERVED:  # `parent` is a symlink to the root
            raise PermissionDenied(f"{rel} leads into the reserved area {RESERVED}")
        with storage_errors(f"deleting {rel}"), self._tree.opened(inner, DIR) as fd:
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise Conflict(f"{rel} is a directory")
            os.unlink(name, dir_fd=fd)
            self._manifests.forget(rel)
            os.fsync(fd)
        return 1

    def usage(self, path: str) -> int:
        """Bytes of the regular files under `path`, symlinks not followed (like `du -b`)."""
        rel = normalize(path)
        inner = self._tree.inner(rel)
        with storage_errors(f"measuring {rel or '/'}"):
            return self._tree.du(inner)

    # --- maintenance (base.Maintenance) -----------------------------------------------------

    def recover(self) -> Recovered:
        """See `base.Maintenance.recover` and `housekeeping.LocalMaintenance.recover`; also
        removes symlinks a crash left before they were renamed into place."""
        self._nodes.clean()
        return self._maintenance.recover()

    def collect(self, grace: float, now: float) -> Collected:
        """See `base.Maintenance.collect` and `housekeeping.LocalMaintenance.collect`."""
        return self._maintenance.collect(grace, now)

    def scrub(self) -> ScrubReport:
        """See `base.Maintenance.scrub` and `housekeeping.LocalMaintenance.scrub`."""
        return self._maintenance.scrub()
