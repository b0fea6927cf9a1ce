"""LocalTree: the served directory tree as storage sees it: where a normalised path leads, and
opens, stats, parent folders and sizes taken beneath the root without following a symlink."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from fluxio.beneath import Beneath
from fluxio.oserrors import storage_errors
from fluxproto.errors import Conflict, PermissionDenied

from .paths import RESERVED, check_reserved, resolve

#: Flags that open a directory to list it or to act on its entries.
DIR = os.O_RDONLY | os.O_DIRECTORY

__all__ = ["DIR", "LocalTree", "require_file"]


def require_file(rel: str, st: os.stat_result) -> None:
    """Refuse anything but a regular file at `rel` (of stat `st`).

    Raises:
        Conflict: a directory, or not a regular file.
    """
    if stat.S_ISDIR(st.st_mode):
        raise Conflict(f"{rel} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise Conflict(f"{rel} is not a regular file")


class LocalTree:
    """The tree under `root` (a real path: no symlink in it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._beneath = Beneath(root)

    def inner(self, rel: str) -> str:
        """Where `rel` leads (see `paths.resolve`), relative to the root and free of symlinks:
        what `open_fd` may open.

        Raises:
            PermissionDenied: it leads outside the root or into the reserved area.
        """
        if rel and self._beneath.plain(rel):
            check_reserved(rel)  # no symlink on the way: where it leads is `rel` itself
            return rel
        inner = os.path.relpath(resolve(self.root, rel), self.root)
        return "" if inner == "." else inner

    def open_fd(self, inner: str, flags: int) -> int:
        """Open `inner` beneath the root; see `Beneath.open`. The caller closes it."""
        return self._beneath.open(inner, flags)

    @contextlib.contextmanager
    def opened(self, inner: str, flags: int) -> Iterator[int]:
        """`open_fd` for the length of a `with` block."""
        fd = self._beneath.open(inner, flags)
        try:
            yield fd
        finally:
            os.close(fd)

    def stat(self, rel: str) -> os.stat_result:
        """stat(2) of where `rel` leads, opened beneath the root.

        Raises:
            OSError (FileNotFoundError, ...), PermissionDenied: as `inner` and `open_fd`.
        """
        with self.opened(self.inner(rel), os.O_PATH) as fd:
            return os.fstat(fd)

    def check_dest(self, rel: str) -> None:
        """Refuse `rel` as where a file is to be written, unless it is one or nothing.

        Raises:
            Conflict: a directory or other non-file is there, or a parent is a file.
        """
        with storage_errors(f"checking {rel}"):
            try:
                require_file(rel, self.stat(rel))
            except FileNotFoundError:
                return
            except NotADirectoryError:
                raise Conflict(f"a parent of {rel} is a file") from None

    def parent_dir(self, rel: str, inner: str) -> int:
        """mkdir -p for the parents of `inner` (where `rel` leads); returns the parent
        directory, open. The caller closes it.

        Every step is opened beneath the root without following symlinks, so a folder swapped
        for a link meanwhile makes this fail instead of creating anything outside.

        Raises:
            Conflict: a parent is a file. PermissionDenied: a symlink appeared on the way.
        """
        parts = inner.split("/")[:-1]
        with storage_errors(f"creating the folders of {rel}"):
            fd = self._beneath.open("", DIR)
            try:
                for i, part in enumerate(parts):
                    sub = "/".join(parts[: i + 1])
                    try:
                        nxt = self._beneath.open(sub, DIR)
                    except FileNotFoundError:
                        with contextlib.suppress(FileExistsError):  # a concurrent mkdir
                            os.mkdir(part, dir_fd=fd)
                            os.fsync(fd)
                        nxt = self._beneath.open(sub, DIR)
                    os.close(fd)
                    fd = nxt
            except NotADirectoryError:
                os.close(fd)
                raise Conflict(f"a parent of {rel} is a file") from None
            except BaseException:
                os.close(fd)
                raise
        return fd

    def du(self, inner: str) -> int:
        """Bytes of the regular files under `inner`, symlinks not followed (like `du -b`); the
        reserved area is not counted. Raises OSError."""
        total = 0
        todo = [inner]
        while todo:
            inner = todo.pop()
            try:
                fd = self._beneath.open(inner, DIR)
            except (FileNotFoundError, NotADirectoryError, PermissionDenied):
                continue  # gone, a file, or swapped for a link meanwhile
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        sub = f"{inner}/{entry.name}" if inner else entry.name
                        if entry.is_dir(follow_symlinks=False):
                            if sub != RESERVED:
                                todo.append(sub)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
            finally:
                os.close(fd)
        return total
