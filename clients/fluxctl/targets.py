# Where each argument of `send -r` / `recv -r` goes: the trailing-slash rule, as one pure function.
"""Map the sources and the destination of a recursive transfer to (source root, destination
root) pairs.

The rule (README, "Folders"): the copy goes to the destination itself; when the destination
ends in `/` (or is `.`/`..`) and a source does not, the copy goes inside it, under the source's
own name. A source that ends in `/` (or is `.`, `..`, the root) stands for its contents. Several
sources need a destination ending in `/`. Only the text decides, never what exists: a second run
of the same command writes to the same place as the first (scp's and cp's "into it if it is a
folder" rule copies DIR into DIR/DIR on the second run).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from fluxio.pathrules import normalize
from fluxproto import ConfigError

__all__ = ["RootPair", "map_roots", "names_folder"]


@dataclass(frozen=True, slots=True)
class RootPair:
    """One tree to copy: `source` becomes a copy at `dest`.

    A remote side is the URL's path form (`/a/b`, `/` for the root); a local side is a path as
    the user wrote it, joined with the source's name when it goes inside a folder.
    """

    source: str
    dest: str


def names_folder(path: str) -> bool:
    """True when the text of `path` says "a folder" by itself: it ends in a slash or its last
    component is `.` or `..` (so it has no name of its own to copy under)."""
    if path.endswith(("/", os.sep)):
        return True
    last = path.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]
    return last in (".", "..")


def _remote_rel(path: str) -> str:
    # The server's own rules: a path it would refuse fails here with its message (exit 4).
    return normalize(path)


def _local_key(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _nested(a: str, b: str, sep: str) -> bool:
    """a == b, or one is inside the other (component-wise)."""
    if a == b or not a or not b:  # "" is the remote root, which holds everything
        return True
    return a.startswith(b.rstrip(sep) + sep) or b.startswith(a.rstrip(sep) + sep)


def map_roots(sources: Sequence[str], dest: str, *, remote_dest: bool) -> list[RootPair]:
    """The (source root, destination root) pairs of `send -r` (`remote_dest`) or `recv -r`.

    Args:
        sources: local paths (send) or remote URL paths (recv), in command-line order.
        dest: the remote URL path (send) or the local path (recv).
        remote_dest: True for send (local sources, remote destination).

    Returns:
        One pair per source, in order; remote roots in `/`-prefixed normalised form.

    Raises:
        ConfigError: no source, an empty path, several sources and a destination that does not
            end in `/`, or two sources that would write to the same place or inside each other.
        PermissionDenied: a remote path the server's path rules refuse.
    """
    if not sources:
        raise ConfigError("nothing to copy: give at least one source")
    if any(not s for s in (*sources, dest)):
        raise ConfigError("an empty path names nothing: use . for the current folder")
    into = names_folder(dest)
    if len(sources) > 1 and not into:
        raise ConfigError(
            f"{len(sources)} sources need a destination folder ending in '/' (got {dest!r})"
        )
    pairs = [_pair(source, dest, into=into, remote_dest=remote_dest) for source in sources]
    _refuse_overlaps(pairs, remote_dest=remote_dest)
    return pairs


def _pair(source: str, dest: str, *, into: bool, remote_dest: bool) -> RootPair:
    name = "" if names_folder(source) else _basename(source, remote=not remote_dest)
    if remote_dest:
        source_root = source
        dest_rel = _remote_rel(dest + "/" + name if into else dest)
        return RootPair(source_root, "/" + dest_rel)
    source_root = "/" + _remote_rel(source)
    local = os.path.join(dest, name) if into and name else dest
    return RootPair(source_root, os.path.normpath(local))


def _basename(path: str, *, remote: bool) -> str:
    if remote:
        # The root ("/" after normalising) has no name: it stands for its contents.
        return posixpath.basename(_remote_rel(path))
    return os.path.basename(path)


def _refuse_overlaps(pairs: list[RootPair], *, remote_dest: bool) -> None:
    """Two trees written to one place (or one inside the other) would update, and with
    --delete prune, each other's files: refused, whatever the flags."""
    seen: list[tuple[str, RootPair]] = []
    for pair in pairs:
        key = _remote_rel(pair.dest) if remote_dest else _local_key(pair.dest)
        sep = "/" if remote_dest else os.sep
        for other_key, other in seen:
            if _nested(key, other_key, sep):
                raise ConfigError(
                    f"{other.source!r} and {pair.source!r} would both write to "
                    f"{other.dest if len(other.dest) <= len(pair.dest) else pair.dest!r}: "
                    "copy them with separate commands"
                )
        seen.append((key, pair))
