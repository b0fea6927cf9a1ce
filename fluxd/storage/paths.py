"""The path sandbox: turns client-supplied remote paths into safe paths under the served root.

`normalize` is the only gate a remote path passes through; `resolve` is the only place a
normalised path meets the real filesystem. Everything that refuses a path raises
`PermissionDenied` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# The rules themselves are pure and shared with fluxctl, which checks names before sending.
from fluxio.pathrules import MAX_COMPONENT, MAX_DEPTH, RESERVED, normalize
from fluxproto.errors import PermissionDenied

__all__ = [
    "MAX_COMPONENT",
    "MAX_DEPTH",
    "RESERVED",
    "normalize",
    "require_file_path",
    "reserved_key",
    "resolve",
]


def require_file_path(path: str) -> str:
    """`normalize`, refusing the root itself (a file operation needs a file path).

    Raises:
        PermissionDenied: as `normalize`, or the path names the root.
    """
    rel = normalize(path)
    if not rel:
        raise PermissionDenied("a file path is needed, not the root")
    return rel


def resolve(root: Path, rel: str) -> Path:
    """The real filesystem path of the normalised `rel` under `root`, checked to stay inside.

    Symlinks are resolved (for a path that does not exist yet, those of its deepest existing
    ancestor); if the result leaves `root` or lands in the reserved area, the path is refused.
    The check is made at call time, so call this when about to open, not earlier.

    Raises:
        PermissionDenied: the real path is outside `root` or inside ROOT/.flux.
    """
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, rel)) if rel else base
    if os.path.commonpath([base, real]) != base:
        raise PermissionDenied(f"{rel or '/'} leads outside the served root")
    inner = os.path.relpath(real, base)
    if inner.split(os.sep, 1)[0].casefold() == RESERVED:
        raise PermissionDenied(f"{rel or '/'} leads into the reserved area {RESERVED}")
    return Path(real)


def reserved_key(rel: str) -> str:
    """The name under which the reserved area keeps what belongs to the normalised `rel` (its
    staged upload, its manifest): fixed-length and free of any character of the path."""
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()
