"""How a local root describes what it holds to clients: the Entry of a file, folder or symlink,
and which names a listing shows."""

from __future__ import annotations

import os
import stat

from fluxproto.errors import Conflict, PermissionDenied
from fluxproto.frames import Entry

from .manifests import ManifestStore
from .paths import RESERVED, normalize

__all__ = ["entry_of", "last_name", "visible"]


def last_name(rel: str) -> str:
    """The name an entry of `rel` has on its own: its last component ("/" for the root)."""
    return rel.rpartition("/")[2] or "/"


def entry_of(
    manifests: ManifestStore,
    rel: str,
    st: os.stat_result,
    name: str | None = None,
    target: str | None = None,
    with_digest: bool = True,
) -> Entry:
    """The entry of `rel` (of stat `st`), named `name` (default: its last component); a file
    carries the digest its manifest vouches for (only `with_digest`: reading the manifest is
    what a listing costs per file), a symlink (`st` from lstat) its `target`.

    Raises:
        Conflict: neither a regular file, a directory, nor a symlink whose target is given.
    """
    digest = None
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
        manifest = manifests.load(rel, st) if with_digest else None
        # A damaged file does not hold the digest its manifest names.
        digest = manifest.digest if manifest and not manifest.damaged else None
    elif stat.S_ISLNK(st.st_mode) and target is not None:
        kind = "link"
    else:
        raise Conflict(f"{rel} is not a regular file or directory")
    mode, mtime = st.st_mode & 0o7777, max(0, st.st_mtime_ns)
    name = name if name is not None else last_name(rel)
    return Entry(name, kind, st.st_size, mtime, mode, digest, target if kind == "link" else None)


def visible(rel: str, name: str, inner: str) -> bool:
    """Whether a listing of the folder `rel` (leading to `inner`) shows `name`: not the reserved
    area at the root (also when `rel` is a symlink to the root), and not a name the path rules
    would refuse or rewrite (control characters, not NFC, too deep or long): no request could
    reach it."""
    if inner == "" and name.casefold() == RESERVED:
        return False
    child = f"{rel}/{name}" if rel else name
    try:
        return normalize(child) == child
    except PermissionDenied:
        return False
