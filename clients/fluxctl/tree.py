# The records a tree transfer describes a tree with, their order, and the rules every side shares.
"""Tree records and their order.

Both sides of a recursive transfer describe their tree as one stream of records in **tree
order**: the root first (name ""), then depth-first, siblings by name, a folder immediately
followed by everything under it. Names are tree-relative, "/"-separated and in Unicode NFC
(the form the server stores). Tree order compares names component by component
(`tree_key`), not as whole strings: "a/x" comes before "a-b" and "a.txt" because "a" does.
The planner merges two such streams without holding either (treeplan.py); the local walk
(treewalk.py) and the server's recursive listing produce them.

Besides entries (`TreeEntry`), a stream may carry what could not be described: `Skipped`
(not transferred by design: special files, hard-linked duplicates, links leaving the tree),
`Problem` (could not be read or named: one per-entry failure with its exit code) and
`Excluded` (left out by --exclude). Each occupies its name: the planner never deletes or
replaces what the other side holds under such a name.
"""

from __future__ import annotations

import errno
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fluxio.pathrules import MAX_DEPTH, normalize
from fluxproto.errors import EXIT_AUTH, EXIT_REMOTE, EXIT_USAGE, PermissionDenied
from fluxproto.frames import MAX_PATH

from .excludes import Excluded

__all__ = [
    "HARDLINK",
    "KINDS",
    "LINK_OUTSIDE",
    "LOOP",
    "MAX_TARGET",
    "SPECIAL",
    "Excluded",
    "NameCheck",
    "Problem",
    "Record",
    "RemoteEntry",
    "Skipped",
    "TreeEntry",
    "as_entry",
    "display_name",
    "link_escapes",
    "local_exit_code",
    "nfc",
    "os_message",
    "parent_name",
    "remote_name_check",
    "tree_key",
    "utf8_check",
    "utf8_fault",
]

#: Entry kinds: "other" is a special file (fifo, socket, device) on a destination walk only;
#: a source never sends one.
KINDS = frozenset({"file", "dir", "link", "other"})
#: Longest link text the protocol carries (PROTOCOL.md section 13), in bytes of UTF-8.
MAX_TARGET = 4096

# Why an entry is skipped (Skipped.reason).
SPECIAL = "special"  # fifo, socket, device: detail names which
HARDLINK = "hardlink"  # a second name of a file already sent: detail is the first name
LINK_OUTSIDE = "link_outside"  # a link whose text leads out of the tree: detail is the text
LOOP = "loop"  # with -L, a link to a folder it is inside of: detail is the text


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One file, folder or link of a tree.

    `name` is tree-relative ("" for the root) in NFC; `disk` is the local path relative to the
    root when it differs from `name` (a name stored in another normal form), None otherwise.
    `mode` holds permission bits only. `digest` is the whole-file digest when known (a remote
    listing may carry it; a local walk never computes one).
    """

    name: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    target: str | None = None
    digest: bytes | None = None
    disk: str | None = None

    @property
    def local(self) -> str:
        """The path relative to the local root (only meaningful for a local entry)."""
        return self.name if self.disk is None else self.disk


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry not transferred by design; counted, and named with -v."""

    name: str
    reason: str  # SPECIAL, HARDLINK, LINK_OUTSIDE, LOOP
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Problem:
    """An entry that failed alone (unreadable, vanished, a name the server refuses)."""

    name: str
    message: str
    exit_code: int


Record = TreeEntry | Skipped | Problem | Excluded


class RemoteEntry(Protocol):
    """What the planner needs of a listing entry (fluxproto's Entry, with v2's `target`)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def digest(self) -> bytes | None: ...


def as_entry(record: RemoteEntry) -> TreeEntry:
    """A listing entry as a TreeEntry (itself when it already is one); `target` is read when
    the entry has one (protocol v2), None otherwise."""
    if isinstance(record, TreeEntry):
        return record
    return TreeEntry(
        record.name,
        record.kind,
        record.size,
        record.mtime_ns,
        record.mode,
        getattr(record, "target", None),
        record.digest,
    )


def tree_key(name: str) -> tuple[str, ...]:
    """The sort key of tree order: the name's components ("" → (), the root first)."""
    return tuple(name.split("/")) if name else ()


def parent_name(name: str) -> str:
    """The tree-relative name of the folder holding `name` ("" for a top-level entry)."""
    return name.rpartition("/")[0]


def nfc(name: str) -> str:
    """`name` in NFC, the form the server stores (ASCII, the usual case, costs nothing)."""
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def link_escapes(name: str, target: str) -> bool:
    """True when the link `name` with text `target` points outside its tree.

    Decided on the text alone, as the receiving side will read it: relative to the link's
    folder, each `..` climbs one level, and climbing above the root (or an absolute or empty
    text) leaves the tree. A link is created as text on the other side, so this is also what
    it will mean there, whatever exists on either side today.
    """
    if not target or target.startswith("/"):
        return True
    depth = len(tree_key(parent_name(name)))
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def display_name(name: str) -> str:
    """`name` fit for one line of output: bytes that are not UTF-8 (kept by Python as lone
    surrogates) as \\xNN, control and invisible characters as \\uNNNN; "" shows as "."."""
    if not name:
        return "."
    if name.isascii() and name.isprintable():
        return name
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape for a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


#: A check of a source name against the receiving side's rules: None, or the entry's failure.
NameCheck = Callable[[str], Problem | None]


def utf8_fault(name: str) -> str | None:
    """Why `name` cannot be sent at all (bytes on disk that are not UTF-8), or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8: the server cannot store it"
    return None


def utf8_check(name: str) -> Problem | None:
    """`utf8_fault` as a NameCheck: a name that is not UTF-8 fails alone (exit 4)."""
    fault = utf8_fault(name)
    return None if fault is None else Problem(name, fault, EXIT_AUTH)


def remote_name_check(remote_root: str) -> NameCheck:
    """The server's path rules (fluxio.pathrules, the ones fluxd applies) for names that will
    land under the remote path `remote_root`: a tree-relative name gives None when the server
    would accept `remote_root/name`, else its failure in one line. A path deeper or longer
    than the server's limits (MAX_DEPTH components, MAX_PATH bytes) is exit 6, a server limit
    (a folder too deep fails with all it holds); another refused name is exit 4."""
    try:
        base = normalize(remote_root)
    except PermissionDenied:
        base = None  # the root itself is refused: every name says why, below

    def check(name: str) -> Problem | None:
        fault = utf8_check(name)
        if fault is not None or base is None:
            return fault or _refused(name, f"{remote_root}/{name}")
        depth = len(tree_key(base)) + len(tree_key(name))
        if depth > MAX_DEPTH:
            why = f"deeper than the server's limit of {MAX_DEPTH} levels (MAX_DEPTH): not sent"
            return Problem(name, why, EXIT_REMOTE)
        if len(f"{base}/{name}".encode()) > MAX_PATH:
            why = f"its path on the server would be longer than {MAX_PATH} bytes (MAX_PATH)"
            return Problem(name, f"{why}: not sent", EXIT_REMOTE)
        return _refused(name, f"{remote_root}/{name}")

    return check


def _refused(name: str, path: str) -> Problem | None:
    try:
        normalize(path)
    except PermissionDenied as exc:
        return Problem(name, f"the server would refuse it: {exc.message}", EXIT_AUTH)
    return None


# What a local OSError means for the run's exit code (README, "Exit codes").
_EXIT_BY_ERRNO = {
    errno.EACCES: EXIT_AUTH,
    errno.EPERM: EXIT_AUTH,
    errno.EROFS: EXIT_AUTH,
    errno.ENOSPC: EXIT_REMOTE,
    errno.EDQUOT: EXIT_REMOTE,
    errno.EFBIG: EXIT_REMOTE,
}


def local_exit_code(exc: OSError) -> int:
    """The exit code of a failure to read or write one local entry: 4 for a permission
    (EACCES, EPERM, a read-only filesystem), 6 for a full disk or quota (a write while
    receiving), 2 otherwise (missing, vanished mid-run, not what it was, unreadable)."""
    return _EXIT_BY_ERRNO.get(exc.errno or 0, EXIT_USAGE)


def os_message(exc: OSError, what: str) -> str:
    """One line for a local OSError, e.g. "permission denied while listing the folder"."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason[:1].lower()}{reason[1:]} while {what}"
