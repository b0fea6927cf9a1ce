"""Whole trees of a local root: the recursive listing (a generator in flat memory) and the
recursive delete (bottom-up, never following a symlink), both bounded by an entry limit and
MAX_DEPTH."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from fluxio.oserrors import storage_errors
from fluxproto.errors import Conflict, FluxError, LimitExceeded, PermissionDenied
from fluxproto.frames import MAX_PATH, Entry

from .local_entry import entry_of, visible
from .local_tree import DIR, LocalTree
from .manifests import ManifestStore
from .paths import MAX_DEPTH, RESERVED, check_link_target

#: Opens a folder found inside a tree being removed: never through a symlink swapped in.
_SUBDIR = DIR | os.O_NOFOLLOW

__all__ = ["TreeWalker"]


def _depth(rel: str) -> int:
    return rel.count("/") + 1 if rel else 0


def _too_many(rel: str, limit: int) -> LimitExceeded:
    return LimitExceeded(f"/{rel} holds more than {limit} entries (limits.tree_entries)")


def _too_deep(rel: str) -> LimitExceeded:
    return LimitExceeded(f"{_shown(rel)} is nested more than {MAX_DEPTH} levels deep (MAX_DEPTH)")


def _too_long(rel: str) -> LimitExceeded:
    return LimitExceeded(f"{_shown(rel)} holds a path longer than {MAX_PATH} bytes (MAX_PATH)")


def _shown(rel: str) -> str:
    """A folder deep in a tree, for a one-line message: its path, cut in the middle past
    100 characters."""
    path = f"/{rel}"
    return path if len(path) <= 100 else f"{path[:48]}...{path[-48:]}"


@dataclass
class _Level:
    """A folder being listed: where it is, how clients name it and its entries, what is left."""

    inner: str
    rel: str
    prefix: str  # what entry names inside it start with: "" at the top, "a/b/" below
    names: list[str]
    at: int = 0


class TreeWalker:
    """Recursive listing and removal in one local root.

    Args:
        tree: the served tree. manifests: its manifests (digests to report, and to forget).
    """

    def __init__(self, tree: LocalTree, manifests: ManifestStore) -> None:
        self._tree, self._manifests = tree, manifests

    # --- listing -------------------------------------------------------------------------

    def walk(self, rel: str, limit: int, digests: bool = False) -> Iterator[Entry]:
        """Every entry under the folder `rel` (normalised), depth first, names sorted, files
        with their digests only with `digests`; see `base.Storage.walk`. Memory holds one
        folder's names per level, never the tree.

        Raises (from the iteration):
            NotFound, PermissionDenied: as `list`. LimitExceeded: more than `limit` entries,
            a folder deeper than MAX_DEPTH that is not empty, or a path longer than
            MAX_PATH. StorageError.
        """
        inner = self._tree.inner(rel)
        with storage_errors(f"listing {rel or '/'}"), self._tree.opened(inner, os.O_PATH) as fd:
            st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            yield entry_of(self._manifests, rel, st, with_digest=digests)
            return
        with storage_errors(f"listing {rel or '/'}"):
            top = _Level(inner, rel, "", self._names(inner, rel))
            yield from self._levels(top, limit, digests)

    def _levels(self, top: _Level, limit: int, digests: bool) -> Iterator[Entry]:
        stack, count, fd = [top], 0, -1
        try:
            while stack:
                level = stack[-1]
                if level.at == len(level.names):
                    stack.pop()
                    fd = _close(fd)
                    continue
                if fd < 0:
                    fd = self._reopen(level)
                    if fd < 0:
                        continue
                name = level.names[level.at]
                level.at += 1
                entry = self._entry(fd, level, name, digests)
                if entry is None:
                    continue
                count += 1
                if count > limit:
                    raise _too_many(top.rel, limit)
                yield entry
                if entry.kind == "dir":
                    fd = _close(fd)  # one descriptor open at a time, whatever the depth
                    inner, rel = _join(level.inner, name), _join(level.rel, name)
                    stack.append(_Level(inner, rel, entry.name + "/", self._names(inner, rel)))
        finally:
            _close(fd)

    def _names(self, inner: str, rel: str) -> list[str]:
        """The names a listing of this folder shows, sorted; [] if it vanished meanwhile."""
        try:
            with self._tree.opened(inner, DIR) as fd:
                names = os.listdir(fd)
        except (FileNotFoundError, NotADirectoryError, PermissionDenied):
            return []  # gone, or swapped for a file or a link since it was listed
        if names and _depth(rel) >= MAX_DEPTH:
            raise _too_deep(rel)
        # A name no request could reach is hidden (`visible`), but one hidden for its length
        # would leave a copy short without a word: said instead, as a folder too deep is.
        if any(len(os.fsencode(_join(rel, n))) > MAX_PATH for n in names):
            raise _too_long(rel)
        return sorted(n for n in names if visible(rel, n, inner))

    def _reopen(self, level: _Level) -> int:
        """The folder of `level`, open again after a descent; -1 (level ended) if it is gone."""
        try:
            return self._tree.open_fd(level.inner, DIR)
        except (FileNotFoundError, NotADirectoryError, PermissionDenied):
            level.at = len(level.names)
            return -1

    def _entry(self, fd: int, level: _Level, name: str, digests: bool) -> Entry | None:
        """The entry of `name` in the open folder `fd`, or None if it is hidden or gone."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            target = None
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=fd)
                # Links fluxd would not create (leading out, absolute) are left out like list
                # leaves out links leading out: their text may name the server's own paths.
                check_link_target(target, level.inner)
            rel = _join(level.rel, name)
            return entry_of(self._manifests, rel, st, level.prefix + name, target, digests)
        except (FileNotFoundError, NotADirectoryError, FluxError):
            return None  # vanished, a link leading out, a fifo, socket or device

    # --- removal -------------------------------------------------------------------------

    def remove(self, rel: str, limit: int) -> int:
        """Delete the entry at `rel` (normalised, not the root) and, for a folder, everything
        in it, bottom-up; returns how many entries were removed. See `base.Storage.delete`.

        Nothing is removed when the tree holds more than `limit` entries or is deeper than
        MAX_DEPTH: it is counted first.

        Raises:
            PermissionDenied: the root, or a refused path. NotFound. LimitExceeded.
            Conflict: the tree changed while it was being removed. StorageError.
        """
        if not rel:
            raise PermissionDenied("refusing to delete the root")
        parent, _, name = rel.rpartition("/")
        inner = self._tree.inner(parent)
        if not inner and name.casefold() == RESERVED:  # `parent` is a symlink to the root
            raise PermissionDenied(f"{rel} leads into the reserved area {RESERVED}")
        with storage_errors(f"deleting {rel}"), self._tree.opened(inner, DIR) as pfd:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            removed = 1
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, _SUBDIR, dir_fd=pfd)
                try:
                    self._count(fd, rel, limit)
                    removed += self._empty(fd, rel)
                finally:
                    os.close(fd)
                try:
                    os.rmdir(name, dir_fd=pfd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    raise Conflict(f"{rel} changed while it was being deleted") from None
            else:
                os.unlink(name, dir_fd=pfd)
                self._manifests.forget(rel)
            # One sync for the whole tree: its removals are ordered before the last one.
            os.fsync(pfd)
        return removed

    def _count(self, fd: int, rel: str, limit: int, seen: int = 1, top: str | None = None) -> int:
        """Entries in the tree (the folder itself counts, as `seen`), read without a stat;
        `top`: the folder being deleted, which a message about the limit names (default `rel`).

        Raises:
            LimitExceeded: more than `limit`, or deeper than MAX_DEPTH.
        """
        subdirs = []
        with os.scandir(fd) as it:
            for entry in it:
                if _depth(rel) >= MAX_DEPTH:
                    raise _too_deep(rel)
                seen += 1
                if seen > limit:
                    raise _too_many(rel if top is None else top, limit)
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
        for name in subdirs:
            sub = os.open(name, _SUBDIR, dir_fd=fd)
            try:
                seen = self._count(sub, _join(rel, name), limit, seen, rel if top is None else top)
            finally:
                os.close(sub)
        return seen

    def _empty(self, fd: int, rel: str) -> int:
        """Remove everything in the open folder `fd` (at `rel`); returns the count."""
        with os.scandir(fd) as it:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        removed = 0
        for name, is_dir in found:
            child = _join(rel, name)
            if is_dir:
                sub = os.open(name, _SUBDIR, dir_fd=fd)
                try:
                    removed += self._empty(sub, child)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)  # a symlink goes itself, never what it points at
                self._manifests.forget(child)
            removed += 1
        return removed


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _close(fd: int) -> int:
    if fd >= 0:
        os.close(fd)
    return -1
