# The local side of `recv -r`: plan actions carried out in a local folder, never outside it.
"""Carry out plan actions (treeactions.py) in the local destination folder of `recv -r`.

Every name is tree-relative and checked by the planner (no empty, `.` or `..` component). The
folder holding it is opened below the destination's root without following a link on the way
(fluxio.beneath), and the action is done relative to that descriptor: no action writes through
a link, and nothing is created, changed or deleted outside the destination, whatever the local
tree looked like when it was walked or becomes meanwhile (a folder swapped for a link to
elsewhere while the run goes on makes the entries under it fail alone). A link in the way is
replaced (removed, never followed), as the planner decided.

Files themselves arrive through `download.Download`, staged beside their destination and
published by rename; `LocalDest.copy_place` prepares the place (and holds its folder open for
the download) and `finish_copy` sets what the rename cannot (set-id bits). Folders are created
owner-rwx so their content can be written and get their final mode and mtime from the
SetAttrs that follows their content.

Each method raises OSError for its entry alone; the caller reports it with
`tree.os_message` and `tree.local_exit_code`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from fluxio.beneath import Beneath
from fluxio.staging import StagedFile
from fluxproto import PermissionDenied, StorageError

from .download import JOURNAL_SUFFIX, PARTIAL_SUFFIX, hidden_name
from .tree import Record, TreeEntry
from .treeactions import Copy, Delete, MakeLink, Mkdir, SetAttrs

__all__ = ["LINK_SUFFIX", "LocalDest", "hide_partials", "is_partial"]

#: A new link is made under this hidden name beside its place, then renamed over what is there.
LINK_SUFFIX = ".fluxlink"
_JOURNAL_SUFFIX = PARTIAL_SUFFIX + JOURNAL_SUFFIX
#: Mode bits a file gets on top of what the rename publishes (mode & 0o777).
_SPECIAL_BITS = 0o7000


def is_partial(name: str) -> bool:
    """True for the hidden files a download or a link keeps beside its destination while it is
    being made (`.NAME.fluxpart`, its journal, `.NAME.fluxlink`)."""
    last = name.rpartition("/")[2]
    return last.startswith(".") and last.endswith((PARTIAL_SUFFIX, _JOURNAL_SUFFIX, LINK_SUFFIX))


def hide_partials(records: Iterable[Record], collect: str | None = None) -> Iterator[Record]:
    """The destination walk without the files of unfinished downloads: they are not part of
    the copy, the next run resumes from them, and `--delete` must not take them (a folder
    deleted whole takes them along).

    With `collect` (the destination's root), a journal whose data file is gone is removed
    when no download holds it: a run killed between a download's rename and the removal of
    its journal leaves one, and it vouches for nothing.
    """
    for record in records:
        if not (isinstance(record, TreeEntry) and record.kind != "dir" and is_partial(record.name)):
            yield record
        elif collect is not None and record.name.endswith(_JOURNAL_SUFFIX):
            _collect(Path(collect, record.local))


def _collect(journal: Path) -> None:
    data = journal.with_name(journal.name[: -len(".journal")])
    if not os.path.lexists(data):
        with contextlib.suppress(StorageError):
            StagedFile.discard_if_idle(data, journal)


class LocalDest:
    """The destination folder of one tree (`root`, as the user named it; a link there is
    followed, as the walk follows it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = os.fspath(root)
        self._beneath: Beneath | None = None  # the root, open from the first entry in it on

    def path(self, name: str, disk: str | None = None) -> str:
        """Where `name` is on disk (`disk`: its name there when the walk found another form)."""
        rel = disk if disk is not None else name
        return os.path.join(self.root, rel) if rel else self.root

    @contextlib.contextmanager
    def _folder(
        self, name: str, disk: str | None = None, *, write: bool = False
    ) -> Iterator[tuple[int, str]]:
        """The folder holding `name` (not the root), open, and name's last component.

        The folder is opened below the root without following a link on the way (OSError
        ELOOP if a folder on the way is a link now, ENOTDIR a file, ENOENT missing), and what
        is done there is done relative to that descriptor: a folder swapped for a link in the
        meantime cannot lead it anywhere else.

        With `write` (an entry is made or removed in the folder), a folder of ours that an
        earlier copy left read-only (its source's mode) gets owner write and search access
        back, as rsync gives it: the SetAttrs that the planner sends after a change in a
        folder restores its mode.
        """
        parent, _, leaf = (disk if disk is not None else name).rpartition("/")
        if self._beneath is None:
            self._beneath = Beneath(Path(self.root))
        try:
            fd = self._beneath.open(parent, os.O_PATH | os.O_DIRECTORY)
        except PermissionDenied:
            raise OSError(
                errno.ELOOP, "a link is in the way of a folder", self.path(parent)
            ) from None
        try:
            if write:
                _open_up(fd)
            yield fd, leaf
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the root's descriptor (also done when the object is collected)."""
        if self._beneath is not None:
            self._beneath.close()

    # --- the actions -------------------------------------------------------------------------

    def mkdir(self, action: Mkdir) -> None:
        """Create the folder (owner rwx for now), removing the leaf in the way first."""
        if not action.name:
            # The root: its parent is the user's (a missing one is refused before the run).
            if action.replace is not None:
                _remove_leaf(None, self.root)
            os.makedirs(self.root, 0o700, exist_ok=True)
            return
        with self._folder(action.name, write=True) as (fd, leaf):
            if action.replace is not None:
                _remove_leaf(fd, leaf)
            os.mkdir(leaf, 0o700, dir_fd=fd)

    def make_link(self, action: MakeLink) -> None:
        """Create the link with exactly its text and its own mtime (never following it); what
        is in the way (a leaf) is replaced by one rename, so the name never points anywhere
        else meanwhile."""
        dest = action.dest
        with self._folder(action.name, dest.disk if dest else None, write=True) as (fd, leaf):
            if dest is None:
                os.symlink(action.target, leaf, dir_fd=fd)
                _set_link_time(fd, leaf, action.mtime_ns)
                return
            if dest.kind == "dir":
                raise OSError(errno.EISDIR, "a folder is in the way", self.path(action.name))
            temp = hidden_name(leaf, LINK_SUFFIX)
            _unlink_quietly(fd, temp)
            os.symlink(action.target, temp, dir_fd=fd)
            try:
                _set_link_time(fd, temp, action.mtime_ns)
                os.replace(temp, leaf, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                _unlink_quietly(fd, temp)
                raise

    @contextlib.contextmanager
    def copy_place(self, action: Copy) -> Iterator[Path]:
        """Where the download of `action` stages and publishes its file, for the length of
        the block: its place, cleared of a link or special file in the way (a file there is
        replaced by the rename itself). Below the root, the path leads through the folder
        opened for it (/proc/self/fd), so the download, its staged file and its rename stay
        in that folder even if its name is given to a link meanwhile."""
        dest = action.dest
        if not action.name:  # a tree of one file: the user named its place
            yield Path(self.root)
            return
        with self._folder(action.name, dest.disk if dest else None, write=True) as (fd, leaf):
            if dest is not None and dest.kind not in ("file", "dir"):
                _remove_leaf(fd, leaf)
            elif dest is None or dest.kind == "file":
                # The walk may be stale: never let the rename land on a link's target.
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISLNK(os.stat(leaf, dir_fd=fd, follow_symlinks=False).st_mode):
                        _remove_leaf(fd, leaf)
            yield Path(_FD_PATH.format(fd)) / leaf

    def finish_copy(self, action: Copy) -> None:
        """After the download published the file (mode & 0o777, mtime): its set-id and sticky
        bits, which the rename does not carry."""
        mode = action.source.mode
        if mode & _SPECIAL_BITS:
            self._set(action.name, action.dest.disk if action.dest else None, "file", mode, None)

    def set_attrs(self, action: SetAttrs) -> None:
        """Give the folder or file its mode and mtime (to the nanosecond), without following
        a link that replaced it meanwhile."""
        self._set(action.name, None, action.kind, action.mode, action.mtime_ns)

    def _set(self, name: str, disk: str | None, kind: str, mode: int, mtime_ns: int | None) -> None:
        if not name:
            _set_attrs(None, self.root, kind, mode, mtime_ns)
            return
        with self._folder(name, disk) as (fd, leaf):
            _set_attrs(fd, leaf, kind, mode, mtime_ns)

    def delete(self, action: Delete) -> None:
        """Remove an entry missing from the source (a folder with everything in it when
        `recursive`); never the root. Gone already is done."""
        if not action.name:
            raise OSError(errno.EPERM, "the root of the copy is never deleted", self.root)
        with self._folder(action.name, action.dest.disk, write=True) as (fd, leaf):
            try:
                st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(leaf, dir_fd=fd)
            elif action.recursive:
                # shutil's fd-based rmtree never follows a link, neither at the top nor inside.
                shutil.rmtree(leaf, dir_fd=fd)
            else:
                os.rmdir(leaf, dir_fd=fd)


#: The path of what a descriptor is open on (Linux): a folder opened once and reached again
#: by a path that no rename or link of its name can redirect.
_FD_PATH = "/proc/self/fd/{}"


def _open_up(fd: int) -> None:
    """Owner write and search access for the folder `fd` (opened O_PATH) if it is ours."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o300 != 0o300:
        os.chmod(_FD_PATH.format(fd), stat.S_IMODE(st.st_mode) | 0o300)


def _set_attrs(fd: int | None, name: str, kind: str, mode: int, mtime_ns: int | None) -> None:
    """Mode and mtime of `name` in the folder `fd` (None: `name` is a path), which must still
    be of `kind` ("dir" or "file": a link is never followed)."""
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    is_kind = stat.S_ISDIR if kind == "dir" else stat.S_ISREG
    if not is_kind(st.st_mode):
        what = "folder" if kind == "dir" else "file"
        raise OSError(errno.EEXIST, f"no longer a {what}", name)
    if stat.S_IMODE(st.st_mode) != mode & 0o7777:
        os.chmod(name, mode & 0o7777, dir_fd=fd)  # not a link: checked just above
    if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
        os.utime(name, ns=(st.st_atime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)


def _set_link_time(fd: int, name: str, mtime_ns: int | None) -> None:
    """The link `name`'s own mtime (in the folder `fd`), its atime kept; the link is never
    followed."""
    if mtime_ns is not None:
        atime_ns = os.stat(name, dir_fd=fd, follow_symlinks=False).st_atime_ns
        os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)


def _remove_leaf(fd: int | None, name: str) -> None:
    """Remove the file, link or special file `name` (in the folder `fd`; None: a path), the
    link itself, not its target."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            raise OSError(errno.EISDIR, "a folder is in the way", name)
        os.unlink(name, dir_fd=fd)


def _unlink_quietly(fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)
