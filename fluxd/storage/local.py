"""LocalStorage: the request and maintenance interfaces (`base.Storage`, `base.Maintenance`) on
a local directory tree, assembled from the parts that own each job.

Layout under the root (hidden from clients; `paths.normalize` refuses ".flux"):

    .flux/staging/<key of path>/{data,journal}   uploads in progress (local_staging.py)
    .flux/manifests/<key of path>                 chunk and file digests of a file (manifests.py)

The tree itself (opens beneath the root) is local_tree.py; uploads are local_upload.py,
downloads local_download.py, recovery, collection and scrub housekeeping.py.
"""

from __future__ import annotations

import bisect
import os
import stat
from pathlib import Path

from fluxio.oserrors import storage_errors
from fluxproto.errors import Conflict, FluxError, NotFound, PermissionDenied
from fluxproto.frames import Entry

from .base import Collected, EntryPage, Recovered, ScrubReport
from .housekeeping import LocalMaintenance
from .local_download import LocalDownload, open_local_download
from .local_staging import StagingArea
from .local_tree import DIR, LocalTree
from .local_upload import LocalUpload, Publisher
from .manifests import Manifest, ManifestStore
from .paths import RESERVED, normalize, require_file_path

__all__ = ["LocalDownload", "LocalStorage", "Manifest"]


def _name(rel: str) -> str:
    return rel.rpartition("/")[2] or "/"


class LocalStorage:
    """Files under `root`. Creates ROOT/.flux/{staging,manifests} (mode 0700) if missing."""

    def __init__(self, root: Path) -> None:
        with storage_errors("opening the storage root"):
            self.root = Path(os.path.realpath(root))
            if not self.root.is_dir():
                raise NotFound(f"storage root {root} is not a directory")
            (self.root / RESERVED).mkdir(mode=0o700, exist_ok=True)
            self._staging = StagingArea(self.root / RESERVED / "staging")
            self._manifests = ManifestStore(self.root / RESERVED / "manifests")
            self._tree = LocalTree(self.root)
        parts = (self._tree, self._manifests, self._staging)
        self._publisher = Publisher(*parts)
        self._maintenance = LocalMaintenance(*parts)

    # --- uploads -----------------------------------------------------------------------------

    def open_upload(self, path: str, size: int, chunk_size: int, mode: int) -> LocalUpload:
        """Start or resume an upload; see `base.Storage.open_upload`.

        Raises:
            PermissionDenied: the path is refused. Conflict: it is a directory (or under a
            file), or another session is uploading it. NoSpace: no room for `size` bytes.
        """
        rel = require_file_path(path)
        self._tree.check_dest(rel)
        staged = self._staging.open(rel, size, chunk_size)
        return LocalUpload(self._publisher, rel, staged, mode, self._base(rel, size, chunk_size))

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

    # --- downloads ---------------------------------------------------------------------------

    def open_download(self, path: str, chunk_size_hint: int) -> LocalDownload:
        """Open a stored file for reading; see `base.Storage.open_download`.

        Raises:
            NotFound: no such file. Conflict: a directory or not a regular file.
        """
        return open_local_download(self._tree, self._manifests, path, chunk_size_hint)

    # --- metadata ----------------------------------------------------------------------------

    def _entry(self, rel: str, st: os.stat_result) -> Entry:
        if stat.S_ISDIR(st.st_mode):
            kind, digest = "dir", None
        elif stat.S_ISREG(st.st_mode):
            manifest = self._manifests.load(rel, st)
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
            st = self._tree.stat(rel)
        return self._entry(rel, st)

    def list(self, path: str, cursor: str | None, limit: int) -> EntryPage:
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
                return [self._entry(rel, st)], None
        with storage_errors(f"listing {rel or '/'}"), self._tree.opened(inner, DIR) as fd:
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
                st = self._tree.stat(child)
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
        inner = self._tree.inner(parent)
        if not inner and name.casefold() == RESERVED:  # `parent` is a symlink to the root
            raise PermissionDenied(f"{rel} leads into the reserved area {RESERVED}")
        with storage_errors(f"deleting {rel}"), self._tree.opened(inner, DIR) as fd:
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise Conflict(f"{rel} is a directory")
            os.unlink(name, dir_fd=fd)
            self._manifests.forget(rel)
            os.fsync(fd)

    def usage(self, path: str) -> int:
        """Bytes of the regular files under `path`, symlinks not followed (like `du -b`)."""
        rel = normalize(path)
        inner = self._tree.inner(rel)
        with storage_errors(f"measuring {rel or '/'}"):
            return self._tree.du(inner)

    # --- maintenance (base.Maintenance) -----------------------------------------------------

    def recover(self) -> Recovered:
        """See `base.Maintenance.recover` and `housekeeping.LocalMaintenance.recover`."""
        return self._maintenance.recover()

    def collect(self, grace: float, now: float) -> Collected:
        """See `base.Maintenance.collect` and `housekeeping.LocalMaintenance.collect`."""
        return self._maintenance.collect(grace, now)

    def scrub(self) -> ScrubReport:
        """See `base.Maintenance.scrub` and `housekeeping.LocalMaintenance.scrub`."""
        return self._maintenance.scrub()
