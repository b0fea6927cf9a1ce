# The local walk of a tree transfer: one generator of records in tree order, flat in memory.
"""Walk a local tree into records (tree.py) in tree order, for either side of a transfer.

As a **source** (what `send -r` sends) the walk decides what can travel: special files,
second names of hard-linked files and links whose text leaves the tree are `Skipped`; a name
the receiving side refuses (see `tree.remote_name_check`), an unreadable folder or a file that
vanished is a `Problem` for that entry alone, and the walk goes on. With `follow_links` (-L) a
link is walked as what it points to, and a link back to a folder it is inside of is a `LOOP`.

As a **destination** (the local side of `recv -r`) everything present is an entry (kind
"other" for a special file): the planner decides what to replace or delete.

Every folder is opened once (without following a link, unless -L) and what it holds is read
relative to that descriptor, never through its path again: a folder swapped for a link while
it is walked (to lead the walk out of the tree) cannot make the walk read outside the tree.

Memory holds the names of the folders being walked (one listing per level, sorted: that is
what tree order needs), a descriptor for each, and, for a source, the first name of each file
with several hard links. Nothing is kept per file walked.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fluxio.beneath import Beneath
from fluxio.crashpoints import pause_point
from fluxproto import PermissionDenied

from .excludes import Excluded, Excludes
from .tree import (
    HARDLINK,
    LINK_OUTSIDE,
    LOOP,
    MAX_TARGET,
    SPECIAL,
    NameCheck,
    Problem,
    Record,
    Skipped,
    TreeEntry,
    display_name,
    link_escapes,
    local_exit_code,
    nfc,
    os_message,
    utf8_check,
)

__all__ = ["LocalFiles", "Role", "local_digest", "walk"]

Role = Literal["source", "dest"]


@dataclass
class _Level:
    """A folder being walked, open: its names still to visit, in tree order."""

    name: str  # tree-relative name ("" for the root)
    disk: str  # path relative to the root, as on disk
    names: list[tuple[str, str]]  # (NFC name, disk name), sorted
    dev_ino: tuple[int, int]
    fd: int  # the folder: its entries are read relative to it
    next: int = 0


@dataclass(frozen=True)
class _Place:
    """Where an entry is: its name in an open folder (`at`; None: the root, by its path)."""

    at: int | None
    name: str


@dataclass
class _Walk:
    root: str
    role: Role
    follow: bool
    excludes: Excludes
    check_name: NameCheck | None
    copy_hardlinks: bool
    levels: list[_Level] = field(default_factory=list)
    #: Folders being walked, by (st_dev, st_ino): -L must not walk into one of them again.
    open_dirs: set[tuple[int, int]] = field(default_factory=set)
    #: (st_dev, st_ino) -> first name, for files with several links (a source only).
    first_names: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def source(self) -> bool:
        return self.role == "source"

    def records(self) -> Iterator[Record]:
        try:
            yield from self.top()
            while self.levels:
                level = self.levels[-1]
                if level.next == len(level.names):
                    self._pop()
                    continue
                nfc_name, disk_name = level.names[level.next]
                level.next += 1
                name = f"{level.name}/{nfc_name}" if level.name else nfc_name
                disk = f"{level.disk}/{disk_name}" if level.disk else disk_name
                collides = level.next > 1 and level.names[level.next - 2][0] == nfc_name
                yield from self.child(name, disk, _Place(level.fd, disk_name), collides)
        finally:
            while self.levels:
                self._pop()

    def _pop(self) -> None:
        level = self.levels.pop()
        self.open_dirs.discard(level.dev_ino)
        os.close(level.fd)

    def top(self) -> Iterator[Record]:
        # The root is named by the user: followed if it is a link, in either role.
        try:
            st = os.stat(self.root)
        except OSError as exc:
            if self.role == "dest" and isinstance(exc, FileNotFoundError):
                return  # a destination that does not exist yet: an empty tree
            yield Problem("", os_message(exc, "reading the root of the tree"), local_exit_code(exc))
            return
        yield from self.entry("", "", _Place(None, self.root), st, via_link=False)

    def child(self, name: str, disk: str, place: _Place, collides: bool) -> Iterator[Record]:
        if collides:
            # Two names on disk that read the same in NFC are one name on the server: the
            # first is sent; on a destination the second is left alone.
            if self.source:
                yield Problem(name, _SAME_NFC, 4)
            return
        try:
            st = os.stat(place.name, dir_fd=place.at, follow_symlinks=False)
        except OSError as exc:
            yield Problem(name, os_message(exc, "reading it"), local_exit_code(exc))
            return
        via_link = self.follow and stat.S_ISLNK(st.st_mode)
        if via_link:
            try:
                st = os.stat(place.name, dir_fd=place.at)
            except OSError as exc:
                yield Problem(name, os_message(exc, "following the link"), local_exit_code(exc))
                return
        refused = self.refuse(name, st)
        if refused is not None:
            yield refused
        elif stat.S_ISLNK(st.st_mode):
            yield from self.link(name, disk, place, st)
        else:
            yield from self.entry(name, disk, place, st, via_link=via_link)

    def refuse(self, name: str, st: os.stat_result) -> Excluded | Problem | None:
        """What stands for `name` instead of its entry: excluded (checked first, so that an
        excluded name is never an error), or a name the receiving side refuses."""
        if self.excludes.match(name, is_dir=stat.S_ISDIR(st.st_mode)):
            return Excluded(name, _kind(st.st_mode))
        return self.check_name(name) if self.check_name is not None else None

    def link(self, name: str, disk: str, place: _Place, st: os.stat_result) -> Iterator[Record]:
        try:
            target = os.readlink(place.name, dir_fd=place.at)
        except OSError as exc:
            yield Problem(name, os_message(exc, "reading the link"), local_exit_code(exc))
            return
        if self.source:
            why = _target_fault(target)
            if why is not None:
                yield Problem(name, why, 4)
            elif link_escapes(name, target):
                yield Skipped(name, LINK_OUTSIDE, target)
            else:
                yield self.make_entry(name, disk, st, "link", target=target)
            return
        yield self.make_entry(name, disk, st, "link", target=target)

    def entry(
        self, name: str, disk: str, place: _Place, st: os.stat_result, *, via_link: bool
    ) -> Iterator[Record]:
        kind = _kind(st.st_mode)
        if kind == "dir":
            yield from self.folder(name, disk, place, st, via_link=via_link)
        elif kind == "file":
            first = self.first_name(name, st, via_link)
            if first is not None:
                yield Skipped(name, HARDLINK, first)
            else:
                yield self.make_entry(name, disk, st, "file")
        elif self.source:
            yield Skipped(name, SPECIAL, _special(st.st_mode))
        else:
            yield self.make_entry(name, disk, st, "other")

    def folder(
        self, name: str, disk: str, place: _Place, st: os.stat_result, *, via_link: bool
    ) -> Iterator[Record]:
        dev_ino = (st.st_dev, st.st_ino)
        if dev_ino in self.open_dirs:  # only reachable through a followed link
            yield Skipped(name, LOOP, _readlink(place))
            return
        # Listed before the folder is reported: a folder that cannot be listed is a Problem
        # instead of an entry, so the planner keeps (never deletes) what the other side holds.
        try:
            fd = _open_folder(place, follow=via_link or place.at is None, dev_ino=dev_ino)
        except OSError as exc:
            yield Problem(name, os_message(exc, "listing the folder"), local_exit_code(exc))
            return
        try:
            with os.scandir(fd) as it:
                names = sorted((nfc(e.name), e.name) for e in it)
        except OSError as exc:
            os.close(fd)
            yield Problem(name, os_message(exc, "listing the folder"), local_exit_code(exc))
            return
        self.levels.append(_Level(name, disk, names, dev_ino, fd))
        self.open_dirs.add(dev_ino)
        pause_point("walk-listed")
        yield self.make_entry(name, disk, st, "dir")

    def first_name(self, name: str, st: os.stat_result, via_link: bool) -> str | None:
        """The name this file was already sent under, if it is a second hard link to it."""
        if not self.source or self.copy_hardlinks or via_link or st.st_nlink < 2:
            return None
        first = self.first_names.get((st.st_dev, st.st_ino))
        if first is None:
            self.first_names[(st.st_dev, st.st_ino)] = name
        return first

    def make_entry(
        self, name: str, disk: str, st: os.stat_result, kind: str, target: str | None = None
    ) -> TreeEntry:
        return TreeEntry(
            name,
            kind,
            st.st_size if kind == "file" else 0,
            st.st_mtime_ns,
            stat.S_IMODE(st.st_mode),
            target,
            None,
            None if disk == name else disk,
        )


_SAME_NFC = "another name in its folder is the same text in another Unicode form"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def _readlink(place: _Place) -> str:
    try:
        return os.readlink(place.name, dir_fd=place.at)
    except OSError:
        return ""


#: A folder opened to be walked: its descriptor is only listed and read from (os.scandir of a
#: descriptor dups it, so it stays ours).
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _open_folder(place: _Place, *, follow: bool, dev_ino: tuple[int, int]) -> int:
    """The folder at `place`, open; it must still be the one stat found (`dev_ino`), or it
    was replaced since (OSError ESTALE: the entry fails alone, as one that vanished)."""
    flags = _FOLDER if follow else _FOLDER | os.O_NOFOLLOW
    try:
        fd = os.open(place.name, flags, dir_fd=place.at)
    except NotADirectoryError:
        if follow:
            raise
        # O_DIRECTORY|O_NOFOLLOW on a link says ENOTDIR: it became a link since it was read.
        raise OSError(errno.ESTALE, "it was replaced by a link", place.name) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != dev_ino:
        os.close(fd)
        raise OSError(errno.ESTALE, "it was replaced", place.name)
    return fd


def _target_fault(target: str) -> str | None:
    try:
        size = len(target.encode("utf-8"))
    except UnicodeEncodeError:
        return f"the link text {display_name(target)!r} is not valid UTF-8"
    if size > MAX_TARGET:
        return f"the link text is longer than {MAX_TARGET} bytes"
    return None


def walk(
    root: str,
    *,
    role: Role = "source",
    follow_links: bool = False,
    excludes: Excludes | None = None,
    check_name: NameCheck | None = None,
    copy_hardlinks: bool = False,
) -> Iterator[Record]:
    """The records of the local tree at `root`, in tree order (tree.py), as a generator.

    Args:
        root: the folder (or single file) to walk; followed if it is a link. The root entry
            comes first, named "".
        role: "source" for a tree to send (see the module docstring), "dest" for the local
            destination of a receive (everything is an entry, nothing is followed).
        follow_links: -L: a link is walked as what it points to (a source only).
        excludes: patterns; an excluded folder is reported as `Excluded` and not entered.
        check_name: refuses names the receiving side cannot store (a source only), e.g.
            `tree.remote_name_check(remote_root)`. Without it, a name that is not UTF-8 is
            still refused for a source.
        copy_hardlinks: send every name of a hard-linked file as its own file, instead of
            skipping names after the first.

    Yields:
        TreeEntry, Skipped, Problem and Excluded records. A missing destination root yields
        nothing; a missing source root yields one Problem.
    """
    is_source = role == "source"
    if is_source and check_name is None:
        check_name = utf8_check
    state = _Walk(
        root,
        role,
        follow_links and is_source,
        excludes or Excludes(),
        check_name if is_source else None,
        copy_hardlinks,
    )
    return state.records()


#: Bytes read at a time when hashing for --checksum.
_HASH_BLOCK = 1 << 20


class LocalFiles:
    """Opens the files of a local tree by their path relative to its root (`TreeEntry.local`)
    below that root, following no link on the way, so that a folder swapped for a link since
    the walk (or a file for one) cannot lead a read out of the tree: the open fails instead,
    with OSError ELOOP, and that entry fails alone. With `follow_links` (-L), reaching files
    through links is the point: they are opened by their path.
    """

    def __init__(self, root: str, *, follow_links: bool = False) -> None:
        self.root = root
        # A root that is a file (a tree of one file) is opened by its path, as the walk did.
        plain = follow_links or not os.path.isdir(root)
        self._beneath = None if plain else Beneath(Path(root))

    def path(self, rel: str) -> str:
        """The local path of `rel` ("" for the root), for messages and plain opens."""
        return os.path.join(self.root, rel) if rel else self.root

    def opener(self, rel: str) -> Callable[[int], int]:
        """A function that opens `rel` with the flags given and returns the descriptor."""

        def open_fd(flags: int) -> int:
            if self._beneath is None or not rel:
                return os.open(self.path(rel), flags | os.O_CLOEXEC)
            try:
                return self._beneath.open(rel, flags)
            except PermissionDenied:
                why = "a link is in the way (the tree changed since it was walked)"
                raise OSError(errno.ELOOP, why, self.path(rel)) from None

        return open_fd

    def close(self) -> None:
        """Close the root's descriptor (also done when the object is collected)."""
        if self._beneath is not None:
            self._beneath.close()


def local_digest(root: str, *, follow_links: bool = False) -> Callable[[TreeEntry], bytes]:
    """The --checksum digest callback for the local side of a plan (PlanOptions'
    `source_digest` for send, `dest_digest` for recv): the whole-file xxh3-128 of the entry
    under `root`, as the server's listing reports it.

    The callback raises OSError when the file cannot be read (the planner turns that into a
    failure of that entry alone); no link is followed on the way (LocalFiles), unless
    `follow_links` (-L).
    """
    from fluxproto.digest import FileHasher  # noqa: PLC0415  (xxhash only when hashing)

    files = LocalFiles(root, follow_links=follow_links)

    def digest(entry: TreeEntry) -> bytes:
        hasher = FileHasher()
        with os.fdopen(files.opener(entry.local)(os.O_RDONLY), "rb", buffering=0) as f:
            while block := f.read(_HASH_BLOCK):
                hasher.update(block)
        return hasher.digest()

    return digest
