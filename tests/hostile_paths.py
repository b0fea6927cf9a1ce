"""The traversal corpus: remote paths a hostile client might send, every one of them refused.

`REFUSED_BY_RULES` fail the normalisation rules themselves (PROTOCOL.md section 17);
`THROUGH_SYMLINKS` are well-formed but lead through links `plant_symlinks` puts inside the root
(out of it, into the reserved area, or round in a loop).
"""

from __future__ import annotations

import os
from pathlib import Path

DOT_DOT = [
    "..",
    "../x",
    "/../x",
    "/../../../../etc/passwd",
    "a/../../x",
    "a/..",
    "./../x",
    "a/./../../x",
    "//..//x",
    "a/b/../../../x",
    "x/../../",
    "a/b/c/../../../../x",
]
BACKSLASH_AND_DRIVES = [
    "..\\x",
    "\\..\\x",
    "a\\..\\..\\x",
    "\\etc\\passwd",
    "C:\\Windows\\win.ini",
    "\\\\server\\share\\x",
    "\\\\?\\C:\\x",
]
ENCODED = [
    "%2e%2e/x",
    "%2E%2E/x",
    "%2e%2e%2fx",
    "..%2fx",
    "%2e./x",
    ".%2e/x",
    "a/%2e%2e/%2e%2e/x",
    "%252e%252e/x",
    "%25252e%25252e/x",
    "..%5cx",
    "%5c..%5cx",
    "x%00.txt",
    "%c0%ae%c0%ae/x",
    "%e0%80%ae%e0%80%ae/x",
]
NUL_AND_CONTROL = [
    "a\x00b",
    "\x00",
    "x.txt\x00.jpg",
    "\x01",
    "a\nb",
    "a\rb",
    "a\tb",
    "\x1b[31mred",
    "a\x7fb",
    "a\x85b",
    "a\x9bb",
]
OVERLONG = [
    "x" * 256,
    "é" * 128,
    "/".join(["d" * 250] * 17),
    "a/" * 129 + "x",
]
UNICODE_LOOKALIKES = [
    "\u2025/x",
    "\u2024\u2024/x",
    "\uff0e\uff0e/x",
    "\ufe52\ufe52/x",
    "a\u2215..\u2215x",
    "..\u2044x",
    "\uff0fetc\uff0fpasswd",
    "\uff3c..\uff3cx",
    "\ufe68..\ufe68x",
    "x\u202etxt.exe",
    "\u200b../x",
    ".\u200b./x",
    "a\ufeffb",
    "a\u2028b",
    "a\u2029b",
    "a\u2066b",
]
RESERVED = [
    ".flux",
    ".flux/staging",
    "/.flux/manifests/x",
    "./.flux/x",
    ".FLUX/x",
    ".Flux",
]
REFUSED_BY_RULES = (
    DOT_DOT + BACKSLASH_AND_DRIVES + ENCODED + NUL_AND_CONTROL + OVERLONG + UNICODE_LOOKALIKES
) + RESERVED

THROUGH_SYMLINKS = [
    "out",
    "out/new.bin",
    "out/secret.txt",
    "rel",
    "rel/new.bin",
    "rel/secret.txt",
    "pw",
    "deep/link/new.bin",
    "deep/link/secret.txt",
    "loop",
    "loop/x",
    "self/.flux/staging",
    "self/.flux/x",
    "reserved-link",
    "reserved-link/x",
]

ALL = REFUSED_BY_RULES + THROUGH_SYMLINKS
#: The links themselves: a client may delete one (the link goes, never what it points to).
PLANTED = frozenset({"out", "rel", "pw", "loop", "self", "reserved-link"})


def plant_symlinks(root: Path, outside: Path) -> None:
    """Links inside `root` that lead out of it, into its reserved area, or nowhere."""
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("outside the root")
    os.symlink(outside, root / "out")
    os.symlink(os.path.relpath(outside, root), root / "rel")
    os.symlink("/etc/passwd", root / "pw")
    (root / "deep").mkdir()
    os.symlink(os.path.relpath(outside, root / "deep"), root / "deep" / "link")
    os.symlink("loop", root / "loop")
    os.symlink(root, root / "self")
    os.symlink(".flux", root / "reserved-link")
