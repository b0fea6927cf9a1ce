"""Folders and symlinks of a local root, made on request: `mkdir` (create, or fix up the mode
and mtime of an existing folder) and `symlink` (created under a temporary name in the reserved
area, given its own mtime, then renamed into place)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from fluxio.oserrors import storage_errors
from fluxproto.errors import Conflict, NotFound, PermissionDenied
from fluxproto.frames import Entry

from .local_entry import entry_of
from .local_tree import DIR, LocalTree
from .manifests import ManifestStore
from .paths import RESERVED, check_link_target

#: Mode of a folder made without one (MKDIR's default).
DEFAULT_DIR_MODE = 0o755
#: Permission bits fluxd keeps on every folder it makes or changes: without them it could no
#: longer store into, list or delete what it serves (a mode such as 0o555 is kept as 0o755).
OWNER_RWX = 0o700

__all__ = ["DEFAULT_DIR_MODE", "Nodes"]


class Nodes:
    """Makes folders and symlinks in one root.

    Args:
        tree: the served tree. manifests: its manifests (for entries). scratch: a folder in
            the reserved area, on the same filesystem, for links before they are renamed into
            place (created, mode 0700; what a crash leaves there is removed by `clean`).
    """

    def __init__(self, tree: LocalTree, manifests: ManifestStore, scratch: Path) -> None:
        scratch.mkdir(mode=0o700, exist_ok=True)
        self._tree, self._manifests, self._scratch = tree, manifests, scratch

    def mkdir(self, rel: str, mode: int | None, mtime_ns: int | None, parents: bool) -> Entry:
        """See `base.Storage.mkdir`; `rel` is normalised. The root itself is never changed."""
        inner = self._tree.inner(rel)
        with storage_errors(f"making the folder /{rel}"):
            if not rel:  # the served root is the operator's: its attributes stay as they are
                return entry_of(self._manifests, rel, self._tree.stat(rel))
            try:
                st = self._tree.stat(rel)
            except FileNotFoundError:
                st = None
            except NotADirectoryError:
                raise Conflict(f"a parent of /{rel} is a file") from None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise Conflict(f"/{rel} exists and is not a folder")
            if st is None:
                fd = self._create(rel, inner, parents)
                mode = DEFAULT_DIR_MODE if mode is None else mode
            else:
                fd = self._tree.open_fd(inner, DIR)
            try:
                self._set(fd, mode, mtime_ns, created=st is None)
                return entry_of(self._manifests, rel, os.fstat(fd))
            finally:
                os.close(fd)

    def _create(self, rel: str, inner: str, parents: bool) -> int:
        """Make the folder (and, with `parents`, its missing parents), durably; return it open."""
        parent, _, name = inner.rpartition("/")
        if parents:
            pfd = self._tree.parent_dir(rel, inner)
        else:
            try:
                pfd = self._tree.open_fd(parent, DIR)
            except FileNotFoundError:
                raise NotFound(f"the parent folder of /{rel} does not exist") from None
            except NotADirectoryError:
                raise Conflict(f"a parent of /{rel} is a file") from None
        try:
            with contextlib.suppress(FileExistsError):  # made meanwhile: take it as it is
                os.mkdir(name, OWNER_RWX, dir_fd=pfd)
            try:
                fd = os.open(name, DIR | os.O_NOFOLLOW, dir_fd=pfd)
            except OSError as exc:  # a file or a link was made there meanwhile
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise Conflict(f"/{rel} is not a folder") from None
            os.fsync(pfd)
        finally:
            os.close(pfd)
        return fd

    def _set(self, fd: int, mode: int | None, mtime_ns: int | None, created: bool) -> None:
        """Give the open folder `fd` these attributes where they differ; sync what changed."""
        st = os.fstat(fd)
        changed = created
        if mode is not None and stat.S_IMODE(st.st_mode) != (mode & 0o777) | OWNER_RWX:
            os.fchmod(fd, (mode & 0o777) | OWNER_RWX)
            changed = True
        if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
            os.utime(fd, ns=(st.st_atime_ns, mtime_ns))
            changed = True
        if changed:
            os.fsync(fd)

    def symlink(self, rel: str, target: str, within: str, mtime_ns: int | None) -> Entry:
        """See `base.Storage.symlink`; `rel` and `within` are normalised, `rel` not the root.

        Raises:
            PermissionDenied: the target is refused (`paths.check_link_target`, checked from
                the folder the link lands in, symlinks resolved), or the path is.
            Conflict: a file or folder is at `rel`, or a parent is a file.
        """
        parent, _, name = rel.rpartition("/")
        where = self._tree.inner(parent)
        if not where and name.casefold() == RESERVED:  # `parent` is a symlink to the root
            raise PermissionDenied(f"/{rel} leads into the reserved area {RESERVED}")
        check_link_target(target, where, self._tree.inner(within) if within else "")
        inner = f"{where}/{name}" if where else name
        with storage_errors(f"making the symlink /{rel}"):
            pfd = self._tree.parent_dir(rel, inner)
            try:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
                        raise Conflict(f"/{rel} is a {kind}, not a symlink")
                self._place(target, name, pfd, mtime_ns)
                os.fsync(pfd)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)
        return entry_of(self._manifests, rel, st, target=target)

    def _place(self, target: str, name: str, pfd: int, mtime_ns: int | None) -> None:
        """Make the link under a temporary name, then rename it over `name` in `pfd`: the path
        holds the old link or the new one, never none (a crash leaves the temporary in the
        scratch folder, which `clean` removes). Its time is set before the rename, so the link
        never appears with the wrong one."""
        tmp = self._scratch / f"link-{os.getpid()}-{secrets.token_hex(8)}"
        os.symlink(target, tmp)
        try:
            if mtime_ns is not None:
                atime_ns = os.stat(tmp, follow_symlinks=False).st_atime_ns
                os.utime(tmp, ns=(atime_ns, mtime_ns), follow_symlinks=False)
            os.replace(tmp, name, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def clean(self) -> int:
        """Remove what a crash left in the scratch folder (at start, before serving): links,
        and small files of a group commit (local_small.py) that were never renamed."""
        removed = 0
        for leftover in self._scratch.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        return removed
