"""The path sandbox: turns client-supplied remote paths into safe paths under the served root.

`normalize` is the only gate a remote path passes through; `resolve` is the only place a
normalised path meets the real filesystem. Everything that refuses a path raises
`PermissionDenied` with a one-line reason.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from pathlib import Path

from fluxproto.errors import PermissionDenied
from fluxproto.frames import MAX_PATH

#: The daemon's hidden area lives at ROOT/.flux; no remote path may name it.
RESERVED = ".flux"
MAX_COMPONENT = 255  # bytes of UTF-8, the usual NAME_MAX
MAX_DEPTH = 128  # components

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
#: Unicode categories refused anywhere in a path: controls (C0 and C1), format characters
#: (zero-width, bidi overrides: names that display as something else), line and paragraph
#: separators, surrogates.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: Characters that look like a slash or backslash without compatibility-decomposing to one.
_SLASH_LOOKALIKES = frozenset("\u2044\u2215\u2216\u2571\u2572\u29f5\u29f8\u29f9\u3033")
#: Rounds of percent-decoding tried when looking for a hidden separator or dot-dot.
_DECODE_ROUNDS = 3

__all__ = ["MAX_COMPONENT", "MAX_DEPTH", "RESERVED", "normalize", "require_file_path", "resolve"]


def _show(path: str) -> str:
    # repr escapes control characters, so the message stays on one line; long paths are cut.
    shown = repr(path)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _utf8_len(text: str, path: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise PermissionDenied(f"path {_show(path)} is not valid UTF-8") from None


def normalize(path: str) -> str:
    """Canonical relative form of a remote path: "/"-separated, no leading slash, NFC.

    "/", "" and "." all name the root and give "". Repeated slashes and "." components are
    dropped. The rules are PROTOCOL.md section 17.

    Raises:
        PermissionDenied: the path has a ".." component (also one hidden by percent-encoding
            or compatibility characters such as U+2025), a control, format or separator
            character, a backslash or slash look-alike, a component over 255 bytes, more than
            128 components or MAX_PATH bytes, or starts with ".flux".
    """
    if _utf8_len(path, path) > MAX_PATH:
        raise PermissionDenied(f"path {_show(path)} is longer than {MAX_PATH} bytes")
    bad = _FORBIDDEN.search(path)
    if bad is not None:
        what = "a backslash" if bad.group() == "\\" else "a control character"
        raise PermissionDenied(f"path {_show(path)} contains {what}")
    if not path.isascii():
        _check_unicode(path)
    parts: list[str] = []
    for part in unicodedata.normalize("NFC", path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise PermissionDenied(f"path {_show(path)} has a '..' component")
        if _utf8_len(part, path) > MAX_COMPONENT:
            raise PermissionDenied(f"path {_show(path)} has a name longer than 255 bytes")
        if "%" in part:
            _check_encoded(part, path)
        if not part.isascii():
            _check_lookalike(part, path)
        parts.append(part)
    if len(parts) > MAX_DEPTH:
        raise PermissionDenied(f"path {_show(path)} has more than {MAX_DEPTH} components")
    # casefold: the root may sit on a case-insensitive filesystem where .FLUX is .flux.
    if parts and parts[0].casefold() == RESERVED:
        raise PermissionDenied(f"path {_show(path)} is in the reserved area {RESERVED}")
    rel = "/".join(parts)
    if _utf8_len(rel, path) > MAX_PATH:  # NFC can lengthen a string
        raise PermissionDenied(f"path {_show(path)} is longer than {MAX_PATH} bytes")
    return rel


def _check_unicode(path: str) -> None:
    for ch in path:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise PermissionDenied(f"path {_show(path)} contains the invisible U+{ord(ch):04X}")
        if ch in _SLASH_LOOKALIKES:
            raise PermissionDenied(
                f"path {_show(path)} contains U+{ord(ch):04X}, a slash look-alike"
            )


def _check_lookalike(part: str, path: str) -> None:
    """Refuse a name that compatibility normalisation (NFKC, as some tools and filesystems
    apply) turns into ".", ".." or something with a separator."""
    folded = unicodedata.normalize("NFKC", part)
    if folded in (".", "..") or "/" in folded or "\\" in folded:
        raise PermissionDenied(f"path {_show(path)} has a name that reads as {folded!r}")


def _check_encoded(part: str, path: str) -> None:
    """Refuse a name that percent-decodes (up to three times) to ".", ".." or a separator:
    another layer (a proxy, a shell script, an object store) might decode it."""
    for _ in range(_DECODE_ROUNDS):
        try:
            decoded = urllib.parse.unquote(part, errors="strict")
        except UnicodeDecodeError:  # e.g. %c0%ae, the overlong "." of old exploits
            why = "hides invalid UTF-8 in percent-encoding"
            raise PermissionDenied(f"path {_show(path)} {why}") from None
        if decoded == part:
            return
        if decoded in (".", "..") or any(c in decoded for c in "/\\\x00"):
            raise PermissionDenied(f"path {_show(path)} hides {decoded!r} in percent-encoding")
        part = decoded


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
