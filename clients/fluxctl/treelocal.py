# The local side of `recv -r`: plan actions carried out in a local folder, never outside it.
"""Carry out plan actions (treeactions.py) in the local destination folder of `recv -r`.

Every name is tree-relative and checked by the planner (no empty, `.` or `..` component). The
folders on the way to it are checked here before anything is written: none of them may be a
link (or anything but a folder), so no action writes through a link, and nothing is created,
changed or deleted outside the destination, whatever the local tree looked like when it was
walked. A link in the way is replaced (removed, never followed), as the planner decided.

Files themselves arrive through `download.Download`, staged beside their destination and
published by rename; `LocalDest.copy_path` prepares the place and `finish_copy` sets what the
rename cannot (set-id bits). Folders are created owner-rwx so their content can be written and
get their final mode and mtime from the SetAttrs that follows their content.

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

from fluxio.staging import StagedFile
from fluxproto import StorageError

from .download import JOURNAL_SUFFIX, PARTIAL_SUFFIX, hidden_name
from .tree import Record, TreeEntry, parent_name
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
        self._checked: str | None = None  # the last parent found to be a plain folder
        self._opened: str | None = None  # the last parent made writable (see _place)

    def path(self, name: str, disk: str | None = None) -> str:
        """Where `name` is on disk (`disk`: its name there when the walk found another form)."""
        rel = disk if disk is not None else name
        return os.path.join(self.root, rel) if rel else self.root

    def _place(self, name: str, disk: str | None = None, *, write: bool = False) -> str:
        """The path of `name` once every folder on the way to it is known to be a folder and
        not a link (OSError ELOOP or ENOTDIR otherwise; ENOENT when one is missing).

        With `write` (an entry is made or removed in the folder), a folder of ours that an
        earlier copy left read-only (its source's mode) gets owner write and search access
        back, as rsync gives it: the SetAttrs that the planner sends after a change in a
        folder restores its mode.
        """
        parent = parent_name(disk if disk is not None else name)
        if name and parent != self._checked:
            here = self.root
            for part in parent.split("/") if parent else ():
                here = os.path.join(here, part)
                mode = os.lstat(here).st_mode
                if stat.S_ISLNK(mode):
                    raise OSError(errno.ELOOP, "a link is in the way of a folder", here)
                if not stat.S_ISDIR(mode):
                    raise OSError(errno.ENOTDIR, "a file is in the way of a folder", here)
            self._checked = parent
        if write and name and parent != self._opened:
            self._open_up(parent)
            self._opened = parent
        return self.path(name, disk)

    def _open_up(self, parent: str) -> None:
        folder = self.path(parent)
        st = os.lstat(folder) if parent else os.stat(folder)  # the root: followed, as walked
        if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o300 != 0o300:
            os.chmod(folder, stat.S_IMODE(st.st_mode) | 0o300)

    def forget(self) -> None:
        """Check folders again from now on (after something may have replaced one)."""
        self._checked = self._opened = None

    # --- the actions -------------------------------------------------------------------------

    def mkdir(self, action: Mkdir) -> None:
        """Create the folder (owner rwx for now), removing the leaf in the way first."""
        path = self._place(action.name, write=True)
        if action.replace is not None:
            _remove_leaf(path)
        if not action.name:
            # The root: its parent is the user's (a missing one is refused before the run).
            os.makedirs(path, 0o700, exist_ok=True)
        else:
            os.mkdir(path, 0o700)

    def make_link(self, action: MakeLink) -> None:
        """Create the link with exactly its text; what is in the way (a leaf) is replaced by
        one rename, so the name never points anywhere else meanwhile."""
        path = self._place(action.name, action.dest.disk if action.dest else None, write=True)
        if action.dest is None:
            os.symlink(action.target, path)
            return
        if action.dest.kind == "dir":
            raise OSError(errno.EISDIR, "a folder is in the way", path)
        head, tail = os.path.split(path)
        temp = os.path.join(head, hidden_name(tail, LINK_SUFFIX))
        _unlink_quietly(temp)
        os.symlink(action.target, temp)
        try:
            os.replace(temp, path)
        except OSError:
            _unlink_quietly(temp)
            raise

    def copy_path(self, action: Copy) -> Path:
        """Where the download of `action` publishes its file: its place, cleared of a link or
        special file in the way (a file there is replaced by the rename itself)."""
        dest = action.dest
        path = self._place(action.name, dest.disk if dest else None, write=True)
        if dest is not None and dest.kind not in ("file", "dir"):
            _remove_leaf(path)
        elif dest is None or dest.kind == "file":
            # The walk may be stale: never let the rename land on a folder or a link's target.
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    _remove_leaf(path)
        return Path(path)

    def finish_copy(self, action: Copy) -> None:
        """After the download published the file (mode & 0o777, mtime): its set-id and sticky
        bits, which the rename does not carry."""
        mode = action.source.mode
        if mode & _SPECIAL_BITS:
            path = self._place(action.name, action.dest.disk if action.dest else None)
            _check_kind(path, "file")
            os.chmod(path, mode & 0o7777)

    def set_attrs(self, action: SetAttrs) -> None:
        """Give the folder or file its mode and mtime (to the nanosecond), without following
        a link that replaced it meanwhile."""
        path = self._place(action.name)
        st = _check_kind(path, action.kind)
        if stat.S_IMODE(st.st_mode) != action.mode:
            os.chmod(path, action.mode & 0o7777)
        if st.st_mtime_ns != action.mtime_ns:
            os.utime(path, ns=(st.st_atime_ns, action.mtime_ns), follow_symlinks=False)

    def delete(self, action: Delete) -> None:
        """Remove an entry missing from the source (a folder with everything in it when
        `recursive`); never the root. Gone already is done."""
        if not action.name:
            raise OSError(errno.EPERM, "the root of the copy is never deleted", self.root)
        path = self._place(action.name, action.dest.disk, write=True)
        self.forget()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
        elif action.recursive:
            # shutil's fd-based rmtree never follows a link, neither at the top nor inside.
            shutil.rmtree(path)
        else:
            os.rmdir(path)


def _check_kind(path: str, kind: str) -> os.stat_result:
    st = os.lstat(path)
    is_kind = stat.S_ISDIR if kind == "dir" else stat.S_ISREG
    if not is_kind(st.st_mode):
        raise OSError(errno.EEXIST, f"no longer a {'folder' if kind == 'dir' else 'file'}", path)
    return st


def _remove_leaf(path: str) -> None:
    """Remove the file, link or special file at `path` (a link itself, not its target)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise OSError(errno.EISDIR, "a folder is in the way", path)
        os.unlink(path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
