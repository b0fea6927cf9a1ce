# Compares a source tree with a destination tree as two streams and says what to do, entry by entry.
"""The tree planner: a merge-join of two streams in tree order (tree.py) into actions
(treeactions.py), holding neither stream.

The same planner serves `send -r` (local walk as source, remote listing as destination) and
`recv -r` (remote listing as source, local walk as destination). Each stream starts with its
root (name ""); an empty destination stream means the destination does not exist yet. Memory
holds the folders currently open on each side (bounded by depth) and, on disk, the deferred
actions (`Spool`).

Rules (README, "Folders"):

- **Quick check**: a file whose size and mtime (to the nanosecond) match is skipped unread; with
  `checksum`, equal sizes are compared by digest instead (the digest callbacks; an unknown
  digest means send).
- **Types**: a leaf (file, link, special file) in the way of anything else is replaced, as an
  update replaces a file. A folder in the way of a file or link is replaced only with `delete`
  (after every transfer, with the deletes, and never if it holds an excluded entry); without
  it, and always at the root, that entry fails alone (exit 6) and the folder is left untouched.
- **Deletes** (only with `delete`): destination entries missing from the source, after every
  transfer, one recursive delete per folder that goes entirely, never the root, never outside
  it. Nothing is deleted or replaced under a name the source could not describe (a Problem, a
  Skipped entry) or that either side excludes, nor a folder holding such a name.
- **Folders** get their mode and mtime (SetAttrs) after their content, in each phase.
- **Links** are the same with the same text and mtime; a link whose mtime alone differs is made
  again (atomically, with its time), as a changed one is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from fluxproto import LocalProtocolError, RemoteProtocolError
from fluxproto.errors import EXIT_REMOTE

from .excludes import Excluded
from .tree import (
    LINK_OUTSIDE,
    SPECIAL,
    Problem,
    Record,
    RemoteEntry,
    Skipped,
    TreeEntry,
    as_entry,
    link_escapes,
    local_exit_code,
    os_message,
    tree_key,
)
from .treeactions import (
    CHECKSUM,
    EXCLUDED,
    MTIME,
    NEW,
    SIZE,
    TYPE,
    Action,
    Copy,
    Delete,
    Fail,
    Ignore,
    MakeLink,
    Mkdir,
    SetAttrs,
    Skip,
    Spool,
)

__all__ = ["DigestFn", "PlanOptions", "TreePlan"]

Key = tuple[str, ...]
#: The whole-file digest of an entry (None: unknown); may raise OSError for a local file.
DigestFn = Callable[[TreeEntry], bytes | None]


def _entry_digest(entry: TreeEntry) -> bytes | None:
    return entry.digest


@dataclass(frozen=True)
class PlanOptions:
    """How to compare and what may be removed.

    Attributes:
        delete: --delete: remove destination entries missing from the source.
        checksum: --checksum: compare digests of equal-sized files instead of mtimes.
        remote: which stream comes from the server ("dest" for send, "source" for recv): its
            disorder is the peer's protocol error, not ours.
        source_digest, dest_digest: digest of a source/destination file for --checksum
            (default: the entry's own `digest`, as a listing carries it); the local side's
            hashes the file.
    """

    delete: bool = False
    checksum: bool = False
    remote: Literal["source", "dest"] = "dest"
    source_digest: DigestFn = _entry_digest
    dest_digest: DigestFn = _entry_digest


#: An empty, "." or ".." component, or a NUL: never a name inside a tree.
_BAD_NAME = re.compile(r"(?:^|/)\.{0,2}(?:/|$)|\x00")
_RECORDS = (TreeEntry, Skipped, Problem, Excluded)


def _under(key: Key, prefix: Key | None) -> bool:
    return prefix is not None and key[: len(prefix)] == prefix


def _same_link(source: TreeEntry, dest: TreeEntry) -> bool:
    """Two links the quick check leaves alone: the same text and the same own mtime."""
    return (source.target, source.mtime_ns) == (dest.target, dest.mtime_ns)


class _Stream:
    """One side's records, checked as they come: tree order, clean names, the root first,
    nothing under a leaf. A violation ends the plan (the merge would be wrong)."""

    def __init__(self, records: Iterable[Record | RemoteEntry], label: str, remote: bool):
        self._records = iter(records)
        self._label = label
        self.error = RemoteProtocolError if remote else LocalProtocolError
        self._last: Key | None = None
        self._last_is_dir = False
        self.head: Record | None = None
        self.key: Key = ()
        self.advance()

    def advance(self) -> None:
        record = next(self._records, None)
        if record is None:
            self.head = None
            return
        if not isinstance(record, _RECORDS):
            record = as_entry(record)
        key = self._check(record)
        self.head, self.key = record, key
        self._last, self._last_is_dir = key, isinstance(record, TreeEntry) and record.kind == "dir"

    def take(self) -> Record:
        record = self.head
        assert record is not None
        self.advance()
        return record

    def _check(self, record: Record) -> Key:
        key = tree_key(record.name)
        if record.name and _BAD_NAME.search(record.name):
            raise self.error(f"{self._label} listing has a bad name: {record.name!r}")
        if self._last is None:
            if key:
                raise self.error(f"{self._label} listing does not start with its root")
        elif key <= self._last:
            raise self.error(f"{self._label} listing out of order at {record.name!r}")
        elif not self._last_is_dir and key[: len(self._last)] == self._last:
            raise self.error(f"{self._label} listing has {record.name!r} under a non-folder")
        if isinstance(record, TreeEntry) and record.kind not in ("file", "dir", "link", "other"):
            raise self.error(f"{self._label} listing has an unknown kind {record.kind!r}")
        return key


@dataclass
class _Dir:
    """A folder present in the source whose content is being planned."""

    key: Key
    source: TreeEntry
    dest: TreeEntry | None  # None: created by this plan
    dirty: bool = False  # content changed in the main phase: its mtime must be set again
    deferred_dirty: bool = False  # ... and in the deferred phase


@dataclass
class _Doomed:
    """A destination folder missing from the source (or in the way of a file) while its content
    streams by: deleted whole unless something in it must be kept."""

    key: Key
    dest: TreeEntry
    offset: int  # where its content's deletes start in the spool
    then: Copy | MakeLink | None = None  # what replaces it, if the source has a leaf there
    count: int = 0  # entries under it
    keep: bool = False  # it holds an entry that must not be deleted


class TreePlan:
    """The actions that make the destination a copy of the source.

    Iterate `actions()` first: what can run now, in tree order. Once it is exhausted,
    `deferred()` gives what must wait until every action of the first phase has finished
    (deletes, folders replaced by files, and those folders' parents' SetAttrs). Use as a
    context manager, or call `close()`, to drop the spool.
    """

    def __init__(
        self,
        source: Iterable[Record | RemoteEntry],
        dest: Iterable[Record | RemoteEntry],
        options: PlanOptions | None = None,
    ) -> None:
        self.options = options or PlanOptions()
        self._source = source
        self._dest = dest
        self._spool = Spool()
        self._dirs: list[_Dir] = []
        self._doomed: list[_Doomed] = []
        self._keep: Key | None = None  # destination subtree left untouched
        self._drop: Key | None = None  # source subtree not planned
        self._finished = False

    def __enter__(self) -> TreePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    def actions(self) -> Iterator[Action]:
        """The first phase, streamed; see the module docstring for the rules.

        Raises:
            RemoteProtocolError: the server's listing is not in tree order (or malformed).
            LocalProtocolError: the local walk is (a bug).
        """
        remote_source = self.options.remote == "source"
        src = _Stream(self._source, "source", remote_source)
        dst = _Stream(self._dest, "destination", not remote_source)
        if src.head is None:  # not even a Problem for its root: deleting "all of it" is wrong
            raise src.error("source listing is empty: it must start with its root")
        while src.head is not None or dst.head is not None:
            if dst.head is None or (src.head is not None and src.key < dst.key):
                key = src.key
                yield from self._close_to(key)
                yield from self._source_only(key, src.take())
            elif src.head is None or dst.key < src.key:
                key = dst.key
                yield from self._close_to(key)
                self._dest_only(key, dst.take())
            else:
                key = src.key
                yield from self._close_to(key)
                yield from self._both(key, src.take(), dst.take())
        yield from self._close_to(None)
        self._finished = True

    def deferred(self) -> Iterator[Action]:
        """The second phase: run it only after every action of `actions()` has finished."""
        if not self._finished:
            raise RuntimeError("TreePlan.deferred() before actions() was exhausted")
        yield from self._spool.replay()

    # --- the three cases of the merge --------------------------------------------------------

    def _source_only(self, key: Key, record: Record) -> Iterator[Action]:
        if _under(key, self._drop):
            return
        if not isinstance(record, TreeEntry):
            yield _note(record)
            return
        yield from self._create(key, record, None)

    def _dest_only(self, key: Key, record: Record) -> None:
        # The root is never deleted: a source that could not be read is a Problem, not absent.
        if not key or _under(key, self._keep) or not self.options.delete:
            return
        if not isinstance(record, TreeEntry):  # excluded, or not readable: keep it
            if self._doomed:
                self._doomed[-1].keep = True
            return
        if record.kind == "dir":
            self._doomed.append(_Doomed(key, record, self._spool.tell()))
            return
        self._defer(key, Delete(record.name, record, recursive=False, count=1))
        if self._doomed:
            self._doomed[-1].count += 1

    def _both(self, key: Key, source: Record, dest: Record) -> Iterator[Action]:
        if _under(key, self._drop):
            return
        if not isinstance(source, TreeEntry):
            self._keep = key  # whatever the destination holds there stays as it is
            yield _note(source)
            return
        ignored = self._unsendable(key, source)
        if ignored is not None:
            yield ignored
        elif not isinstance(dest, TreeEntry):
            yield self._refuse(key, source, _dest_blocked(dest))
        elif dest.kind == "dir" and source.kind != "dir":
            fail = self._replace_folder(key, source, dest)
            if fail is not None:
                yield fail
        elif source.kind == dest.kind == "dir":
            self._open_dir(key, source, dest)
            yield Skip(source.name, source)
        elif source.kind == dest.kind == "file":
            yield from self._compare_files(key, source, dest)
        elif source.kind == dest.kind == "link" and _same_link(source, dest):
            yield Skip(source.name, source)
        else:
            yield from self._create(key, source, dest)

    # --- pieces ------------------------------------------------------------------------------

    def _unsendable(self, key: Key, source: TreeEntry) -> Ignore | None:
        """An entry never created on the other side (whatever is there stays): a link leading
        out of the tree (the local walk skips those already; a server's listing is checked
        here), or a special file."""
        ignored = None
        if source.kind == "link" and link_escapes(source.name, source.target or ""):
            ignored = Ignore(source.name, LINK_OUTSIDE, source.target or "")
        elif source.kind == "other":
            ignored = Ignore(source.name, SPECIAL, "special file")
        if ignored is not None:
            self._keep = key
        return ignored

    def _create(self, key: Key, source: TreeEntry, dest: TreeEntry | None) -> Iterator[Action]:
        """Make `source` at the destination, replacing the leaf `dest` if there is one."""
        ignored = self._unsendable(key, source)
        if ignored is not None:
            yield ignored
            return
        self._dirty(key)
        if source.kind == "dir":
            yield Mkdir(source.name, source.mode, source.mtime_ns, dest.kind if dest else None)
            self._dirs.append(_Dir(key, source, None))
        elif source.kind == "link":
            yield MakeLink(source.name, source.target or "", dest, source.mtime_ns)
        else:
            yield Copy(source.name, source, dest, TYPE if dest is not None else NEW)

    def _compare_files(self, key: Key, source: TreeEntry, dest: TreeEntry) -> Iterator[Action]:
        if source.size != dest.size:
            reason: str | None = SIZE
        elif self.options.checksum:
            try:
                a = self.options.source_digest(source)
                b = self.options.dest_digest(dest)
            except OSError as exc:
                self._keep = key
                yield Fail(source.name, os_message(exc, "hashing it"), local_exit_code(exc))
                return
            reason = None if a is not None and a == b else CHECKSUM
        else:
            reason = None if source.mtime_ns == dest.mtime_ns else MTIME
        if reason is not None:
            self._dirty(key)
            yield Copy(source.name, source, dest, reason)
            return
        yield Skip(source.name, source)
        if (source.mode, source.mtime_ns) != (dest.mode, dest.mtime_ns):
            yield SetAttrs(source.name, "file", source.mode, source.mtime_ns)

    def _replace_folder(self, key: Key, source: TreeEntry, dest: TreeEntry) -> Fail | None:
        if not key or not self.options.delete:
            why = "the destination is a folder" if not key else "a folder is in the way"
            hint = "" if not key else " (--delete replaces it)"
            return self._refuse(key, source, f"{why}{hint}")
        # Created after the folder's recursive delete (deferred), so nothing is in the way.
        then: Copy | MakeLink
        if source.kind == "link":
            then = MakeLink(source.name, source.target or "", None, source.mtime_ns)
        else:
            then = Copy(source.name, source, None, TYPE)
        self._doomed.append(_Doomed(key, dest, self._spool.tell(), then))
        return None

    def _refuse(self, key: Key, source: TreeEntry, why: str) -> Fail:
        """`source` cannot be planned: it fails alone, nothing at `key` is touched."""
        self._keep = key
        self._drop = key
        return Fail(source.name, why, EXIT_REMOTE)

    def _open_dir(self, key: Key, source: TreeEntry, dest: TreeEntry) -> None:
        self._dirs.append(_Dir(key, source, dest))

    def _dirty(self, key: Key) -> None:
        """Something is created or replaced at `key`: its folder's mtime changes."""
        if key and self._dirs and self._dirs[-1].key == key[:-1]:
            self._dirs[-1].dirty = True

    def _defer(self, key: Key, action: Delete | Copy | MakeLink | SetAttrs) -> None:
        self._spool.write(action)
        if key and self._dirs and self._dirs[-1].key == key[:-1]:
            self._dirs[-1].deferred_dirty = True

    def _close_to(self, key: Key | None) -> Iterator[Action]:
        """Finish every open folder that `key` is not inside (all of them for None): first the
        doomed ones (deepest first), then the source folders, whose SetAttrs follow their
        content in each phase."""
        if key is None or not _under(key, self._keep):
            self._keep = None
        if key is None or not _under(key, self._drop):
            self._drop = None
        while self._doomed and (key is None or not _under(key, self._doomed[-1].key)):
            fail = self._close_doomed(self._doomed.pop())
            if fail is not None:
                yield fail
        while self._dirs and (key is None or not _under(key, self._dirs[-1].key)):
            yield from self._close_dir(self._dirs.pop())

    def _close_doomed(self, doomed: _Doomed) -> Fail | None:
        parent = self._doomed[-1] if self._doomed else None
        if doomed.keep:
            if parent is not None:
                parent.keep = True
            if doomed.then is not None:  # not replaced after all: leave its content alone
                self._spool.truncate(doomed.offset)
                why = "a folder holding excluded or unreadable entries is in the way"
                return Fail(doomed.then.name, why, EXIT_REMOTE)
            return None
        self._spool.truncate(doomed.offset)
        count = doomed.count + 1
        self._defer(doomed.key, Delete(doomed.dest.name, doomed.dest, recursive=True, count=count))
        if doomed.then is not None:
            self._spool.write(doomed.then)
        if parent is not None:
            parent.count += count
        return None

    def _close_dir(self, folder: _Dir) -> Iterator[Action]:
        source, dest = folder.source, folder.dest
        attrs = SetAttrs(source.name, "dir", source.mode, source.mtime_ns)
        changed = dest is None or (dest.mode, dest.mtime_ns) != (source.mode, source.mtime_ns)
        if changed or folder.dirty:
            yield attrs
        if folder.deferred_dirty:
            self._spool.write(attrs)


def _note(record: Skipped | Problem | Excluded) -> Action:
    """The action standing for a record that is not an entry (Fail and Ignore are the walk's
    own record types)."""
    if isinstance(record, Excluded):
        return Ignore(record.name, EXCLUDED, record.kind)
    return record


def _dest_blocked(record: Skipped | Problem | Excluded) -> str:
    if isinstance(record, Problem):
        return f"the destination cannot be read: {record.message}"
    return "an entry excluded or skipped on the destination is in the way"
