"""S3Tree: the folder tree of S3Storage as its keys describe it: looking a path up, listing a
folder a page at a time, walking and removing a tree, and measuring what a tree stores.

A folder exists when a key lies under it (entries/<path>/...) or it has a marker
(folders/<path>); a folder without a marker has mode 0755 and mtime 0. Listings read each
entry's record (in parallel, on the storage's threads): the store's listing gives names and
sizes, not modes and mtimes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import Executor

from fluxproto.errors import LimitExceeded, NotFound, PermissionDenied
from fluxproto.frames import Entry

from .paths import MAX_DEPTH, normalize
from .s3_layout import (
    DATA,
    ENTRIES,
    FOLDERS,
    Record,
    UnreadableRecord,
    data_prefix,
    entry_key,
    folder_key,
    marker_key,
    markers_prefix,
    retired_key,
)
from .s3_store import DELETE_BATCH, ObjectStore

__all__ = ["S3Tree", "holds_anything"]

#: Names one page of a walk reads at a time.
WALK_PAGE = 256
#: A folder that only holds something (no marker of its own).
IMPLIED = Record("dir", 0o755, 0)

#: One name of a folder, and whether it is a folder itself.
Name = tuple[str, bool]


def holds_anything(store: ObjectStore, rel: str, what: str) -> bool:
    """Whether something lies under the folder `rel`: an entry, or a folder's marker. Lists
    the entries first and the markers only if none is there."""
    return store.any_under(folder_key(rel), what) or store.any_under(markers_prefix(rel), what)


def _child(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _complete(name: str, last: str, cursor: str | None) -> bool:
    """Whether every name of a listing cut after key `last` that sorts before `name` was in
    the page: `name` sorts by name no later than `last`, and no folder past the page does
    either. The store orders keys, where "x.txt" comes before the folder "x/", while names
    order "x" first: so no prefix `p` of `name` (after `cursor`) followed by a character below
    "/" may have `p + "/"` after `last`."""
    return name <= last and not any(
        ch < "/" and name[:i] + "/" > last and (cursor is None or name[:i] > cursor)
        for i, ch in enumerate(name)
    )


class S3Tree:
    """The tree under entries/ (see the module docstring)."""

    def __init__(self, store: ObjectStore, pool: Executor) -> None:
        self._store, self._pool = store, pool

    # --- one path ------------------------------------------------------------------------------

    def lookup(self, rel: str) -> Record | None:
        """The record of the file, link or folder at `rel` ("" is the root), or None."""
        if not rel:
            return IMPLIED
        found = self._store.get(entry_key(rel), f"reading {rel}")
        if found is not None:
            return Record.unpack(found[0], rel)
        marker = self.marker(rel)
        if marker is not None:
            return marker
        if holds_anything(self._store, rel, f"reading {rel}"):
            return IMPLIED
        return None

    def marker(self, rel: str) -> Record | None:
        """The record a folder's marker holds, or None if it has none."""
        found = self._store.get(marker_key(rel), f"reading {rel}")
        return Record.unpack(found[0], rel) if found is not None else None

    # --- one folder ----------------------------------------------------------------------------

    def children(self, rel: str, cursor: str | None, limit: int) -> tuple[list[Name], bool]:
        """Up to `limit` names of the folder `rel` after `cursor`, sorted by name, and whether
        more follow: its files and links, the folders that hold something, and the folders'
        markers, merged."""
        what = f"listing {rel or '/'}"
        held = self._store.level(folder_key(rel), cursor, limit + 1, what)
        marked = self._store.level(markers_prefix(rel), cursor, limit + 1, what)
        items = [(o.key[len(folder_key(rel)) :], False) for o in held.objects]
        items += [(p, True) for p in held.prefixes]
        items += [(o.key[len(markers_prefix(rel)) :], True) for o in marked.objects]
        items += [(p, True) for p in marked.prefixes]  # holding only folders made empty
        # A file and a folder at one name (two nodes raced): the file wins, as `lookup` says.
        seen: dict[str, bool] = {}
        for name, folder in sorted(items, key=lambda item: (item[0], item[1])):
            if (cursor is None or name > cursor) and _visible(rel, name):
                seen.setdefault(name, folder)
        names = list(seen.items())
        cuts = [listing.last for listing in (held, marked) if listing.last is not None]
        complete = [n for n in names if all(_complete(n[0], last, cursor) for last in cuts)]
        if cuts and not complete and names:
            # Every name may come after a folder past the page (a long run of "x-1", "x.2",
            # ... before "x/"): the first such folder that exists is the next name.
            first = names[0][0]
            for i, ch in enumerate(first):
                up = first[:i]
                if (
                    ch < "/"
                    and (cursor is None or up > cursor)
                    and holds_anything(self._store, _child(rel, up), what)
                ):
                    return [(up, True)], True
            complete = names[:1]
        more = bool(cuts) or len(complete) > limit
        return complete[:limit], more or len(complete) < len(names)

    def entries(self, rel: str, names: list[Name], digests: bool) -> list[Entry]:
        """The entries of names of the folder `rel` (records read in parallel); names that
        vanished meanwhile are left out."""

        def one(item: Name) -> Entry | None:
            name, folder = item
            child = _child(rel, name)
            what = f"reading {child}"
            try:
                if folder:
                    # A level listed with nothing under it: engines built on a file tree
                    # (SeaweedFS) list the folders their deletes left empty.
                    marker = self.marker(child)
                    if marker is None and not holds_anything(self._store, child, what):
                        return None
                    return (marker or IMPLIED).entry(name, digests)
                found = self._store.get(entry_key(child), f"reading {child}")
                return Record.unpack(found[0], child).entry(name, digests) if found else None
            except UnreadableRecord:
                return None  # left out, as the local tree leaves out what it cannot stat

        return [e for e in self._pool.map(one, names) if e is not None]

    # --- trees ---------------------------------------------------------------------------------

    def walk(self, rel: str, limit: int, digests: bool) -> Iterator[Entry]:
        """Everything under the folder `rel`; see `base.Storage.walk`."""
        record = self.lookup(rel)
        if record is None:
            raise NotFound(f"no such file or directory: {rel}")
        if record.kind != "dir":
            yield record.entry(rel.rpartition("/")[2] or "/", digests)
            return
        yield from self._walk(rel, "", 1, [0, limit], digests)

    def _walk(
        self, folder: str, shown: str, depth: int, count: list[int], digests: bool
    ) -> Iterator[Entry]:
        """The entries of `folder` named below `shown`, each folder followed by what it holds.
        `count`: entries yielded so far, and the most allowed."""
        cursor: str | None = None
        while True:
            names, more = self.children(folder, cursor, WALK_PAGE)
            for entry in self.entries(folder, names, digests):
                count[0] += 1
                if count[0] > count[1]:
                    raise LimitExceeded(f"the tree holds more than {count[1]} entries")
                path = _child(shown, entry.name)
                yield dataclasses.replace(entry, name=path)
                if entry.kind == "dir":
                    if depth >= MAX_DEPTH:
                        raise LimitExceeded(f"the tree is deeper than {MAX_DEPTH} levels")
                    yield from self._walk(
                        _child(folder, entry.name), path, depth + 1, count, digests
                    )
            if not more or not names:
                return
            cursor = names[-1][0]

    def remove(self, rel: str, limit: int) -> int:
        """Remove the folder `rel` and everything in it; returns the entries removed.

        Raises:
            LimitExceeded: more than `limit` entries (nothing is removed then).
        """
        what = f"deleting {rel}"
        folders, count = {rel}, 0
        for obj in self._store.walk(folder_key(rel), what):
            folders.update(_between(rel, obj.key[len(ENTRIES) :].rpartition("/")[0]))
            count += 1
            if count + len(folders) > limit:
                raise LimitExceeded(f"{rel} holds more than {limit} entries")
        for obj in self._store.walk(markers_prefix(rel), what):
            folders.update(_between(rel, obj.key[len(FOLDERS) :]))
            if count + len(folders) > limit:
                raise LimitExceeded(f"{rel} holds more than {limit} entries")
        # Versions retired first (their grace counts from now), then entries, markers last:
        # a folder interrupted halfway still lists what is left.
        for obj in self._store.walk(data_prefix(rel), what):
            path, _, nonce = obj.key[len(DATA) :].rpartition("/")
            self._store.put(retired_key(path, nonce), b"", what)
        for prefix in (folder_key(rel), markers_prefix(rel)):
            batch: list[str] = []
            for obj in self._store.walk(prefix, what):
                batch.append(obj.key)
                if len(batch) == DELETE_BATCH:
                    self._store.delete(batch, what)
                    batch = []
            self._store.delete(batch, what)
        self._store.delete([marker_key(rel)], what)
        return count + len(folders)

    def usage(self, rel: str) -> int:
        """Bytes of the current versions of the files at or under `rel`."""
        what = f"measuring {rel or '/'}"
        if rel:
            record = self.lookup(rel)
            if record is None:
                return 0
            if record.kind != "dir":
                return record.size
        files = {obj.key[len(ENTRIES) :] for obj in self._store.walk(folder_key(rel), what)}
        newest: dict[str, tuple[float, int]] = {}
        for obj in self._store.walk(data_prefix(rel), what):
            path = obj.key[len("data/") :].rpartition("/")[0]
            if path in files and newest.get(path, (-1.0, 0))[0] < obj.modified:
                newest[path] = (obj.modified, obj.size)
        return sum(size for _, size in newest.values())


def _between(top: str, folder: str) -> list[str]:
    """`folder` and every folder between it and `top` (which holds it)."""
    found = []
    while folder != top and folder:
        found.append(folder)
        folder = folder.rpartition("/")[0]
    return found


def _visible(rel: str, name: str) -> bool:
    """Whether a listing shows `name`: only names a request could reach."""
    child = _child(rel, name)
    try:
        return bool(name) and normalize(child) == child
    except PermissionDenied:
        return False
