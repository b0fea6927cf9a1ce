# What the tree planner tells an executor to do, how deferred actions wait on disk, and -n lines.
"""Actions of a tree plan (treeplan.py), their dry-run rendering, and the spool that keeps the
deferred ones (deletes, replacements of folders) on disk until every transfer has finished.

The executor's contract, per action (names are tree-relative; the side is the destination):

- `Mkdir`: create the folder (with owner rwx, so that its content can be written; `SetAttrs`
  gives it its final mode later); `replace` names the kind of leaf in the way, removed first.
- `Copy`: transfer the file; `dest` is what is there now (None: nothing), removed first when
  it is not a file (a link is never written through).
- `MakeLink`: create a link with the text `target` and its own mtime `mtime_ns` (set without
  following it; None: the destination's clock), replacing `dest` if there is one (also a link
  with the same text whose mtime differs: made again, as the protocol has no other way).
- `SetAttrs`: set mode and mtime, once every action under that folder (or on that file) has
  finished, in the phase it appears in.
- `Delete`: remove the entry (a folder with everything in it when `recursive`); deferred only.
- `Skip`, `Ignore`, `Fail`: nothing to do; counted (and `Fail` reported) by TreeResult.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from .tree import LINK_OUTSIDE, Problem, Skipped, TreeEntry, display_name

__all__ = [
    "CHECKSUM",
    "EXCLUDED",
    "MTIME",
    "NEW",
    "SIZE",
    "TYPE",
    "Action",
    "Copy",
    "Delete",
    "Fail",
    "Ignore",
    "MakeLink",
    "Mkdir",
    "SetAttrs",
    "Skip",
    "Spool",
    "dry_run_lines",
]

# Why a file is copied (Copy.reason).
NEW = "new"
SIZE = "size"
MTIME = "mtime"
CHECKSUM = "checksum"
TYPE = "type"  # something else (a link, a folder) is there now
#: Ignore.reason of an entry left out by --exclude (the other reasons are tree.py's).
EXCLUDED = "excluded"


@dataclass(frozen=True, slots=True)
class Mkdir:
    """Create a folder; its mode and mtime are set by a SetAttrs after its content."""

    name: str
    mode: int
    mtime_ns: int
    replace: str | None = None  # kind of the leaf in the way, removed first


@dataclass(frozen=True, slots=True)
class Copy:
    """Transfer one file (reason: NEW, SIZE, MTIME, CHECKSUM or TYPE)."""

    name: str
    source: TreeEntry
    dest: TreeEntry | None
    reason: str


@dataclass(frozen=True, slots=True)
class MakeLink:
    """Create a link whose text is `target`, with the link's own mtime `mtime_ns`."""

    name: str
    target: str
    dest: TreeEntry | None
    mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class SetAttrs:
    """Give an existing folder or file its source's mode and mtime."""

    name: str
    kind: str
    mode: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove a destination entry missing from the source (or a folder a file replaces).

    `count` is how many entries go, itself included.
    """

    name: str
    dest: TreeEntry
    recursive: bool
    count: int


@dataclass(frozen=True, slots=True)
class Skip:
    """Already the same on both sides: a file by the quick check (or digests), a folder, a link
    with the same text and mtime."""

    name: str
    entry: TreeEntry


#: Not transferred by design (tree.py's reasons, or EXCLUDED); counted, named with -v. The
#: walk's record passes through the plan as it is.
Ignore = Skipped
#: An entry that fails alone: one line on stderr and in `errors` (the walk's record, or the
#: planner's own for a type conflict).
Fail = Problem

Action = Mkdir | Copy | MakeLink | SetAttrs | Delete | Skip | Ignore | Fail

_DEFERRABLE: dict[str, type[Delete | Copy | MakeLink | SetAttrs]] = {
    cls.__name__: cls for cls in (Delete, Copy, MakeLink, SetAttrs)
}


def _encode_value(value: Any) -> Any:
    if isinstance(value, TreeEntry):
        e = value
        digest = e.digest.hex() if e.digest is not None else None
        return {"entry": [e.name, e.kind, e.size, e.mtime_ns, e.mode, e.target, digest, e.disk]}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        name, kind, size, mtime_ns, mode, target, digest, disk = value["entry"]
        raw = bytes.fromhex(digest) if digest is not None else None
        return TreeEntry(name, kind, size, mtime_ns, mode, target, raw, disk)
    return value


class Spool:
    """Deferred actions, in order, in a temporary file (in memory while small): the list of
    deletes can be as long as the tree, and memory must not grow with it.

    `tell` and `truncate` let the planner take back what it spooled for a folder's content
    when one recursive delete of the folder replaces them.
    """

    def __init__(self) -> None:
        # JSON lines: ensure_ascii keeps one record per line, and names that are not UTF-8
        # (lone surrogates) travel as \\udcXX escapes that json reads back as they were.
        self._file = tempfile.SpooledTemporaryFile(max_size=256 * 1024)  # noqa: SIM115

    def write(self, action: Delete | Copy | MakeLink | SetAttrs) -> None:
        record = {f.name: _encode_value(getattr(action, f.name)) for f in fields(action)}
        record["type"] = type(action).__name__
        self._file.write(json.dumps(record).encode("ascii") + b"\n")

    def tell(self) -> int:
        return self._file.tell()

    def truncate(self, offset: int) -> None:
        self._file.truncate(offset)
        self._file.seek(offset)

    def replay(self) -> Iterator[Delete | Copy | MakeLink | SetAttrs]:
        """Every action written and not taken back, in the order written."""
        self._file.seek(0)
        for line in self._file:
            record = json.loads(line)
            cls = _DEFERRABLE[record.pop("type")]
            yield cls(**{k: _decode_value(v) for k, v in record.items()})

    def close(self) -> None:
        self._file.close()


def dry_run_lines(
    actions: Iterable[Action], *, verbose: bool = False, verb: str = "send"
) -> Iterator[str]:
    """What `--dry-run` prints for `actions` (main phase then deferred, in order): one line per
    change (`send a/b.txt`, `mkdir a/`, `link a/l -> ../x`, `delete old.txt`); with `verbose`
    also what is left as it is (`skip`, `attrs`, `ignore`) and why files are sent. Failures
    are not lines here: they go to stderr with the run's errors."""
    for action in actions:
        line = _line(action, verbose, verb)
        if line is not None:
            yield line


def _line(action: Action, verbose: bool, verb: str) -> str | None:
    shown = display_name(action.name)
    line: str | None = None
    match action:
        case Mkdir(replace=replace):
            line = f"mkdir {shown}/" + (f" (replaces a {replace})" if replace else "")
        case Copy(reason=reason):
            line = f"{verb} {shown}" + (f" ({reason})" if verbose else "")
        case MakeLink(target=target):
            line = f"link {shown} -> {display_name(target)}"
        case Delete(dest=dest, count=count):
            more = f" ({count} entries)" if verbose and count > 1 else ""
            line = f"delete {shown}{_slash(dest.kind)}{more}"
        case Skip(entry=entry) if verbose:
            line = f"skip {shown}{_slash(entry.kind)}"
        case SetAttrs(kind=kind, mode=mode) if verbose:
            line = f"attrs {shown}{_slash(kind)} ({mode:04o})"
        case Ignore(reason=reason, detail=detail) if verbose:
            if reason == LINK_OUTSIDE:
                line = f"ignore {shown} -> {display_name(detail)} (leaves the tree)"
            else:
                line = f"ignore {shown} ({reason}{': ' + display_name(detail) if detail else ''})"
    return line


def _slash(kind: str) -> str:
    return "/" if kind == "dir" else ""
