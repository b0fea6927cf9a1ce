"""Opening paths inside a folder so that no race can lead the open outside it.

fluxd opens everything under its served root this way: `paths.resolve` decides, with the tree
as it is, where a remote path leads (symlinks inside the root are followed) and refuses what
leaves the root or enters the reserved area. What it returns has no symlinks left in it, so
the open that follows can refuse every symlink: if one appeared in between (a local user
swapping a directory for a link), the open fails instead of following it. fluxctl opens the
files of a tree it sends the same way, below the tree's root. The open is relative to a
directory descriptor of the root taken at start:

- Linux >= 5.6: one `openat2(root_fd, path, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS)` call; the kernel refuses any step out of the root.
- elsewhere: the same walk done by hand, one `openat(..., O_NOFOLLOW)` per component.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

from fluxproto.errors import PermissionDenied

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
#: openat2's syscall number: the same on every Linux architecture (added after the unification).
SYS_OPENAT2 = 437

__all__ = ["Beneath"]


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def _libc_syscall() -> Callable[..., int] | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall
    except (OSError, AttributeError):
        return None


_SYSCALL = _libc_syscall()


class Beneath:
    """A directory opened once, and opens of symlink-free relative paths below it.

    Args:
        root: the directory (kept open for the life of this object).
        use_openat2: False forces the portable walk (tests of the fallback).
    """

    def __init__(self, root: Path, *, use_openat2: bool = True) -> None:
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._openat2 = use_openat2 and _SYSCALL is not None

    def open(self, inner: str, flags: int, mode: int = 0o600) -> int:
        """Open `inner` ("a/b", "" for the root itself) with `flags`, following no symlink.

        Raises:
            PermissionDenied: a symlink appeared on the way (the tree changed since `resolve`),
                or the path would leave the root.
            OSError: as open(2) (FileNotFoundError, NotADirectoryError, ...).
        """
        flags |= os.O_CLOEXEC
        if not inner:
            return os.open(".", flags, mode, dir_fd=self.fd)
        fd = self._open2(inner, flags, mode) if self._openat2 else None
        if fd is None:
            fd = self._walk(inner, flags, mode)
        if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)  # O_PATH opens a trailing symlink itself: it appeared since resolve
            raise _changed(inner)
        return fd

    def plain(self, inner: str) -> bool:
        """Whether the walk to `inner` ("a/b", not empty) meets no symlink up to where it ends:
        the whole path, or its first missing component or non-folder parent. Where that holds,
        `inner` is already where it leads, and `paths.resolve` (a realpath: an lstat per
        component) has nothing to resolve. False when unsure (no openat2, any other error).
        """
        if not self._openat2:
            return False
        fd, err = self._syscall(inner, os.O_PATH | os.O_CLOEXEC, 0)
        if fd >= 0:
            os.close(fd)
            return True
        # The kernel walks in order and stops at the first symlink (ELOOP) or the first
        # missing name or non-folder parent: stopping at the latter means no link before it.
        return err in (errno.ENOENT, errno.ENOTDIR)

    def _open2(self, inner: str, flags: int, mode: int) -> int | None:
        """openat2, or None where the kernel does not have it."""
        fd, err = self._syscall(inner, flags, mode if flags & os.O_CREAT else 0)
        if fd >= 0:
            return fd
        if err == errno.ENOSYS:
            return None
        if err in (errno.ELOOP, errno.EXDEV):
            raise _changed(inner)
        raise OSError(err, os.strerror(err), inner)

    def _syscall(self, inner: str, flags: int, mode: int) -> tuple[int, int]:
        """One openat2 beneath the root, following no symlink: (fd, 0) or (-1, errno). ENOSYS
        (an old kernel) turns openat2 off: callers walk by hand from then on."""
        how = _OpenHow(flags, mode, _RESOLVE)
        assert _SYSCALL is not None
        fd = int(_SYSCALL(SYS_OPENAT2, self.fd, os.fsencode(inner), ctypes.byref(how), 24))
        if fd >= 0:
            return fd, 0
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            self._openat2 = False
        return -1, err

    def _walk(self, inner: str, flags: int, mode: int) -> int:
        parts = inner.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise PermissionDenied(f"{inner} is not a plain relative path")
        cur = self.fd
        try:
            for part in parts[:-1]:
                step = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    nxt = _no_link(partial(os.open, part, step, dir_fd=cur), inner)
                except NotADirectoryError:
                    # O_DIRECTORY|O_NOFOLLOW on a link says ENOTDIR: tell the two apart.
                    if stat.S_ISLNK(os.stat(part, dir_fd=cur, follow_symlinks=False).st_mode):
                        raise _changed(inner) from None
                    raise
                if cur != self.fd:
                    os.close(cur)
                cur = nxt
            last = parts[-1]
            return _no_link(partial(os.open, last, flags | os.O_NOFOLLOW, mode, dir_fd=cur), inner)
        finally:
            if cur != self.fd:
                os.close(cur)

    def close(self) -> None:
        """Close the root's descriptor (also done when the object is collected)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.close()


_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


def _changed(inner: str) -> PermissionDenied:
    return PermissionDenied(f"/{inner} changed while it was being opened (a symlink); refused")


def _no_link(opener: Callable[[], int], inner: str) -> int:
    try:
        return opener()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _changed(inner) from None
        raise
