"""The path sandbox: turns client-supplied remote paths into safe paths under the served root.

`normalize` is the only gate a remote path passes through; `resolve` is the only place a
normalised path meets the real filesystem. Everything that refuses a path raises
`PermissionDenied` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

# The rules themselves are pure and shared with fluxctl, which checks names before sending.
from fluxio.pathrules import MAX_COMPONENT, MAX_DEPTH, RESERVED, normalize, show
from fluxproto.errors import PermissionDenied
from fluxproto.frames import MAX_PATH

__all__ = [
    "MAX_COMPONENT",
    "MAX_DEPTH",
    "RESERVED",
    "check_link_target",
    "check_reserved",
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


def check_link_target(target: str, where: str, within: str = "") -> None:
    """Refuse a symlink target that fluxd does not create: the link is to live in the folder
    `where` (normalised, symlinks resolved) and must not lead out of `within` (normalised; ""
    the root, or a confined subject's root).

    Refused: an empty target, one over MAX_PATH bytes, with a control character or invalid
    UTF-8, an absolute one, one with more leading `..` than `where` lies below `within`, one
    that lands on the reserved area, and one with `..` after a name (`a/../b`): the kernel
    resolves such a `..` from wherever `a` leads, which no reading of the text can foresee,
    while leading `..` start from the link's own folder. So a link made by these rules, and
    every link it passes through that was made by them too, stays inside `within`.

    Raises:
        PermissionDenied: with the reason.
    """

    def refuse(why: str) -> PermissionDenied:
        return PermissionDenied(f"symlink target {show(target)} {why}")

    try:
        size = len(target.encode("utf-8"))
    except UnicodeEncodeError:
        raise refuse("is not valid UTF-8") from None
    if not size or size > MAX_PATH:
        raise refuse(f"is empty or longer than {MAX_PATH} bytes")
    if any(unicodedata.category(ch) == "Cc" for ch in target):
        raise refuse("contains a control character")
    if target.startswith("/"):
        raise refuse("is absolute")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = next((i for i, p in enumerate(parts) if p != ".."), len(parts))
    if ".." in parts[ups:]:
        raise refuse("has '..' after a name")
    base = where.split("/") if where else []
    top = within.split("/") if within else []
    if base[: len(top)] != top or ups > len(base) - len(top):
        raise refuse("leads out of the root")
    if ups == len(base) and parts[ups:] and parts[ups].casefold() == RESERVED:
        raise refuse(f"leads into the reserved area {RESERVED}")


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
    check_reserved(os.path.relpath(real, base), rel)
    return Path(real)


def check_reserved(inner: str, rel: str | None = None) -> None:
    """Refuse `inner` (relative to the root, symlinks resolved) inside the reserved area; `rel`
    is the path asked for, named in the error (`inner` itself if None).

    Raises:
        PermissionDenied: it is ROOT/.flux or below it.
    """
    if inner.split(os.sep, 1)[0].casefold() == RESERVED:
        shown = inner if rel is None else rel
        raise PermissionDenied(f"{shown or '/'} leads into the reserved area {RESERVED}")


def reserved_key(rel: str) -> str:
    """The name under which the reserved area keeps what belongs to the normalised `rel` (its
    staged upload, its manifest): fixed-length and free of any character of the path."""
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()
