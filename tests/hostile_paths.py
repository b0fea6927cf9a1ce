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
#: The disguises above, percent-encoded (in upper, lower and mixed case, once or nested), and
#: percent-encoding written in look-alikes: each reads as ".." or a separator to a layer that
#: decodes, compatibility-normalises (NFKC), or does both, in any order.
ENCODED_LOOKALIKES = [
    "%ef%bc%8e%ef%bc%8e/x",  # U+FF0E FULLWIDTH FULL STOP, twice
    "%EF%BC%8E%EF%BC%8E/x",
    "%Ef%bC%8e%eF%Bc%8E/x",
    "%e2%80%a5/x",  # U+2025 TWO DOT LEADER
    "a/%e2%80%a5",
    "%e2%80%a4%e2%80%a4/x",  # U+2024 ONE DOT LEADER, twice
    "%ef%b9%92%ef%b9%92/x",  # U+FE52 SMALL FULL STOP, twice
    ".%ef%bc%8e/x",  # partly encoded: one plain dot, one disguised
    "%e2%80%a4./x",
    "%2e\uff0e/x",
    "..%e2%88%95x",  # U+2215 DIVISION SLASH
    "..%e2%81%84x",  # U+2044 FRACTION SLASH
    "..%ef%bc%8fx",  # U+FF0F FULLWIDTH SOLIDUS
    "..%ef%bc%bcx",  # U+FF3C FULLWIDTH REVERSE SOLIDUS
    "..%e2%a7%b5x",  # U+29F5 REVERSE SOLIDUS OPERATOR
    "%25ef%25bc%258e%25ef%25bc%258e/x",  # encoded twice
    "%2525252e%2525252e/x",  # encoded four times
    "%25252525252525252e%25252525252525252e/x",  # nine times
    "\uff05\uff12\uff45\uff05\uff12\uff45/x",  # fullwidth "%2e%2e": NFKC, then decode
    "\ufe6a2e\ufe6a2e/x",  # U+FE6A SMALL PERCENT SIGN
    "%ef%bc%852e%ef%bc%852e/x",  # decode, NFKC, decode
    "%u002e%u002e/x",  # IIS-style %u escapes
    "%U002E%U002E/x",
    "..%u2215x",
    "..%u002fx",
]
#: Controls, invisible characters and invalid UTF-8 (overlong forms, surrogates, beyond
#: U+10FFFF) that only percent-decoding reveals.
ENCODED_CONTROL_AND_INVALID = [
    "a%0ab",
    "a%0Db",
    "%09x",
    "%1b[31mred",
    "a%7fb",
    "a%c2%85b",  # U+0085 NEXT LINE
    "a%C2%9Bb",  # U+009B CSI
    "%e2%80%8b../x",  # U+200B ZERO WIDTH SPACE
    "x%e2%80%aetxt.exe",  # U+202E RIGHT-TO-LEFT OVERRIDE
    "a%ef%bb%bfb",  # U+FEFF BOM
    "a%e2%80%a8b",  # U+2028 LINE SEPARATOR
    "a%250ab",  # a newline encoded twice
    "a%u000ab",
    "a%ud800b",  # a lone surrogate
    "%ed%a0%80x",  # a surrogate in UTF-8
    "%f4%90%80%80x",  # beyond U+10FFFF
    "%c0%af",  # overlong "/"
    "..%c0%afx",
    "..%c1%9cx",  # overlong backslash
    "%e0%80%af",
    "%f0%80%80%ae%f0%80%80%ae/x",  # four-byte overlong "."
]
RESERVED = [
    ".flux",
    ".flux/staging",
    "/.flux/manifests/x",
    "./.flux/x",
    ".FLUX/x",
    ".Flux",
    "%2eflux/x",
    "%2Eflux",
    "%252eflux/staging",
    "\uff0eflux/x",
    ".\uff46\uff4c\uff55\uff58",  # fullwidth "flux"
    "%ef%bc%8eflux/x",
]
REFUSED_BY_RULES = (
    DOT_DOT
    + BACKSLASH_AND_DRIVES
    + ENCODED
    + NUL_AND_CONTROL
    + OVERLONG
    + UNICODE_LOOKALIKES
    + ENCODED_LOOKALIKES
    + ENCODED_CONTROL_AND_INVALID
    + RESERVED
)

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
