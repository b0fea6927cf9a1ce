"""Translation of OSError into the flux error tree, by errno, where storage calls the OS."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from fluxproto.errors import (
    Conflict,
    FluxError,
    LimitExceeded,
    NoSpace,
    NotFound,
    StorageError,
    map_exceptions,
)

# EACCES/EPERM/EROFS stay StorageError: it is the server's own storage refusing, not the
# client lacking a permission, so they must not look like PermissionDenied on the wire.
_BY_ERRNO: dict[int, type[StorageError]] = {
    errno.ENOENT: NotFound,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
    errno.EEXIST: Conflict,
    errno.EISDIR: Conflict,
    errno.ENOTDIR: Conflict,
    errno.ENOTEMPTY: Conflict,
    errno.EFBIG: LimitExceeded,
}

__all__ = ["os_error", "storage_errors"]


def os_error(exc: OSError, what: str) -> StorageError:
    """The flux error for `exc`, with a one-line message naming the operation `what`.

    The OS's file name is left out on purpose: it is a server path, and the message travels to
    the client in an ERROR frame.
    """
    cls = _BY_ERRNO.get(exc.errno or 0, StorageError)
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or type(exc).__name__)
    return cls(f"{reason[:1].lower()}{reason[1:]} while {what}")


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Raise any OSError from the body as the matching flux error; FluxErrors pass through.

    `what` describes the operation for the message, e.g. "writing chunk 7 of a/b" gives
    "no space left on device while writing chunk 7 of a/b".
    """

    def translate(exc: BaseException) -> FluxError:
        assert isinstance(exc, OSError)
        return os_error(exc, what)

    with map_exceptions({OSError: translate}):
        yield
