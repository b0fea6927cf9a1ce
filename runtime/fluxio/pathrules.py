"""The rules a remote path must pass (PROTOCOL.md section 17), pure: no filesystem, no daemon.

Moved here from fluxd's storage/paths.py so that fluxctl can check a local tree's names against
the very rules the server applies, without importing fluxd; `normalize` keeps its signature
and behaviour, and fluxd re-exports it.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import Callable

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
#: IIS-style %uXXXX escapes: not a standard, but servers and proxies have decoded them.
_PERCENT_U = re.compile(r"%[uU]([0-9a-fA-F]{4})")
#: Most forms of one name that are checked. Every percent-decoding shortens a name, so the forms
#: run out; a name with more than this many is nested deeper than any honest name and refused
#: rather than followed further.
_MAX_READINGS = 32

__all__ = ["MAX_COMPONENT", "MAX_DEPTH", "RESERVED", "normalize", "show"]


def show(path: str) -> str:
    """A path as error messages quote it: on one line, at most 80 characters."""
    # repr escapes control characters, so the message stays on one line; long paths are cut.
    shown = repr(path)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _utf8_len(text: str, path: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise PermissionDenied(f"path {show(path)} is not valid UTF-8") from None


def normalize(path: str) -> str:
    """Canonical relative form of a remote path: "/"-separated, no leading slash, NFC.

    "/", "" and "." all name the root and give "". Repeated slashes and "." components are
    dropped. The rules are PROTOCOL.md section 17.

    Raises:
        PermissionDenied: the path has a ".." component, a control, format or separator
            character, a backslash or slash look-alike, a component over 255 bytes, more than
            128 components or MAX_PATH bytes, or starts with ".flux"; or a name that reads as
            any of these once compatibility-normalised (NFKC) or percent-decoded, any number
            of times in any order (".%ef%bc%8e", "%252e%252e", "a%0ab", "%2eflux", ...).
    """
    if _utf8_len(path, path) > MAX_PATH:
        raise PermissionDenied(f"path {show(path)} is longer than {MAX_PATH} bytes")
    fault = _fault(path)
    if fault is not None:
        raise PermissionDenied(f"path {show(path)} contains {fault}")
    parts: list[str] = []
    for part in unicodedata.normalize("NFC", path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise PermissionDenied(f"path {show(path)} has a '..' component")
        if _utf8_len(part, path) > MAX_COMPONENT:
            raise PermissionDenied(f"path {show(path)} has a name longer than 255 bytes")
        if "%" in part or not part.isascii():
            _check_readings(part, path, first=not parts)
        parts.append(part)
    if len(parts) > MAX_DEPTH:
        raise PermissionDenied(f"path {show(path)} has more than {MAX_DEPTH} components")
    # casefold: the root may sit on a case-insensitive filesystem where .FLUX is .flux.
    if parts and parts[0].casefold() == RESERVED:
        raise PermissionDenied(f"path {show(path)} is in the reserved area {RESERVED}")
    rel = "/".join(parts)
    if _utf8_len(rel, path) > MAX_PATH:  # NFC can lengthen a string
        raise PermissionDenied(f"path {show(path)} is longer than {MAX_PATH} bytes")
    return rel


def _fault(text: str) -> str | None:
    """What rules 2 and 3 refuse in `text` (a control, format or separator character, a
    backslash or a slash look-alike), as a phrase for the message; None if nothing."""
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        return "a backslash" if bad.group() == "\\" else "a control character"
    if text.isascii():
        return None
    for ch in text:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"the invisible U+{ord(ch):04X}"
        if ch in _SLASH_LOOKALIKES:
            return f"U+{ord(ch):04X}, a slash look-alike"
    return None


def _check_readings(part: str, path: str, first: bool) -> None:
    """Apply the rules for the raw text to every other form `part` can take in another layer:
    a name that reads as ".", "..", the reserved area, or text the raw rules refuse, is
    refused as if it were that text."""
    for reading in _readings(part, path)[1:]:
        if reading in (".", ".."):
            fault: str | None = repr(reading)
        elif first and reading.casefold() == RESERVED:
            fault = f"the reserved name {RESERVED}"
        elif "/" in reading:
            fault = "a slash"
        else:
            fault = _fault(reading)
        if fault is not None:
            raise PermissionDenied(f"path {show(path)} has a name that reads as {fault}")


def _readings(part: str, path: str) -> list[str]:
    """`part` and every distinct form it takes under compatibility normalisation (NFKC, as some
    tools and filesystems apply) and percent-decoding (%XX as UTF-8, and %uXXXX), each applied
    any number of times and in any order: a proxy, a shell script or an object store might
    apply any of them, and each on its own form hides nothing (fullwidth "%2e", U+FF05 U+FF12
    U+FF45, needs NFKC, then a decoding, to read as ".")."""
    forms = [part]
    steps: tuple[Callable[[str], str], ...] = (
        lambda text: unicodedata.normalize("NFKC", text),
        lambda text: _percent_decode(text, path),
        _percent_u_decode,
    )
    for form in forms:  # grows while iterated: a breadth-first closure
        for step in steps:
            new = step(form)
            if new not in forms:
                forms.append(new)
        if len(forms) > _MAX_READINGS:
            raise PermissionDenied(f"path {show(path)} has a name encoded too many times")
    return forms


def _percent_decode(text: str, path: str) -> str:
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:  # e.g. %c0%ae, the overlong "." of old exploits
        why = "hides invalid UTF-8 in percent-encoding"
        raise PermissionDenied(f"path {show(path)} {why}") from None


def _percent_u_decode(text: str) -> str:
    units = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), text)
    # %uD83D%uDE00 is how JavaScript's escape() writes one emoji: pair the surrogates up, so
    # only a lone one (never a valid name) is left for the rules to refuse.
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
