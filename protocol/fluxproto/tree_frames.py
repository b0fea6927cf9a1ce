"""Tree frames: LIST/ENTRIES, STAT/INFO, DELETE/DELETED, MKDIR and SYMLINK answered by MADE, and
the Entry they describe files, directories and links with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .fields import (
    DIGEST_SIZE,
    MAX_I64,
    MAX_LIST_ENTRIES,
    MAX_MODE,
    MAX_PATH,
    MAX_TARGET,
    MAX_U64,
    Frame,
    FrameType,
    check_bool,
    check_int,
    check_optional_digest,
    check_optional_mtime,
    check_path,
    check_rid,
    check_str,
    fail,
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or link as ENTRIES, INFO and MADE describe it (not a frame).

    `name` is one component, or in a recursive listing the path relative to the listed
    directory (hence up to MAX_PATH bytes). `target` is a link's text, set exactly for links.
    """

    name: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    digest: bytes | None = None
    target: str | None = None

    KINDS: ClassVar[frozenset[str]] = frozenset({"file", "dir", "link"})

    def __post_init__(self) -> None:
        check_str(self.name, "name", MAX_PATH, empty=False)
        if self.kind not in self.KINDS:
            raise fail("kind", "expected 'file', 'dir' or 'link'")
        check_int(self.size, "size", 0, MAX_U64)
        check_int(self.mtime_ns, "mtime_ns", 0, MAX_I64)
        check_int(self.mode, "mode", 0, MAX_MODE)
        check_optional_digest(self.digest, "digest", DIGEST_SIZE)
        if self.kind == "link":
            check_str(self.target, "target", MAX_TARGET, empty=False)
        elif self.target is not None:
            raise fail("target", "only a link has a target")

    def to_wire(self) -> dict[str, Any]:
        """The entry as a msgpack map, keys in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_wire(cls, value: object) -> Entry:
        """Build an entry from a decoded map; unknown keys are ignored."""
        if type(value) is not dict:
            raise fail("entry", "expected a map")
        if "name" not in value or "kind" not in value:
            raise fail("entry", "name and kind are required")
        if type(value["kind"]) is not str:  # an unhashable kind must not reach the set lookup
            raise fail("kind", "expected 'file', 'dir' or 'link'")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})


@dataclass(frozen=True, slots=True)
class _PathRequest(Frame):
    """A request naming one path, optionally the whole tree below it (LIST, DELETE)."""

    rid: int
    path: str
    recursive: bool = False

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)
        check_bool(self.recursive, "recursive")


@dataclass(frozen=True, slots=True)
class ListDir(_PathRequest):
    """List a directory (or a single file); `recursive` walks the whole tree below it.

    `digests` asks for each file's whole-file digest; without it every entry's `digest` is
    nil, so that a listing for the quick check (size and mtime) costs the server no lookups.
    """

    TYPE = FrameType.LIST
    digests: bool = False

    def validate(self) -> None:
        _PathRequest.validate(self)  # zero-argument super() fails in a slotted dataclass
        check_bool(self.digests, "digests")


@dataclass(frozen=True, slots=True)
class Entries(Frame):
    """One page of a listing; `done` marks the last page, which ends the request."""

    TYPE = FrameType.ENTRIES
    WIRE_REQUIRED = ("done",)  # an absent end marker must not end (or hang) a listing silently
    rid: int
    entries: tuple[Entry, ...] = ()
    done: bool = True

    def validate(self) -> None:
        check_rid(self.rid)
        if type(self.entries) is not tuple or len(self.entries) > MAX_LIST_ENTRIES:
            raise fail("entries", f"expected at most {MAX_LIST_ENTRIES} entries")
        if not all(type(e) is Entry for e in self.entries):
            raise fail("entries", "expected entries")
        check_bool(self.done, "done")

    def header(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "entries": [e.to_wire() for e in self.entries],
            "done": self.done,
        }

    @classmethod
    def from_header(cls, header: dict[str, Any], payload: bytes | bytearray | memoryview) -> Frame:
        for key in ("rid", "done"):
            if key not in header:
                raise fail(key, "missing")
        raw = header.get("entries", ())
        # Checked before any Entry is built: a page may not cost more than MAX_LIST_ENTRIES.
        if type(raw) is not tuple or len(raw) > MAX_LIST_ENTRIES:
            raise fail("entries", f"expected at most {MAX_LIST_ENTRIES} entries")
        return cls(header["rid"], tuple(Entry.from_wire(e) for e in raw), header["done"])


@dataclass(frozen=True, slots=True)
class Stat(Frame):
    """Describe one path."""

    TYPE = FrameType.STAT
    rid: int
    path: str

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)


@dataclass(frozen=True, slots=True)
class _EntryAnswer(Frame):
    """A request's answer made of one entry (INFO, MADE)."""

    rid: int
    entry: Entry

    def validate(self) -> None:
        check_rid(self.rid)
        if type(self.entry) is not Entry:
            raise fail("entry", "expected an entry")

    def header(self) -> dict[str, Any]:
        return {"rid": self.rid, "entry": self.entry.to_wire()}

    @classmethod
    def from_header(cls, header: dict[str, Any], payload: bytes | bytearray | memoryview) -> Frame:
        for key in ("rid", "entry"):
            if key not in header:
                raise fail(key, "missing")
        return cls(header["rid"], Entry.from_wire(header["entry"]))


@dataclass(frozen=True, slots=True)
class Info(_EntryAnswer):
    """Answer to STAT."""

    TYPE = FrameType.INFO


@dataclass(frozen=True, slots=True)
class Delete(_PathRequest):
    """Delete a path; a non-empty directory only with `recursive`."""

    TYPE = FrameType.DELETE


@dataclass(frozen=True, slots=True)
class Deleted(Frame):
    """Answer to DELETE: `count` entries were removed (0 when there was nothing to remove)."""

    TYPE = FrameType.DELETED
    rid: int
    path: str
    count: int

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)
        check_int(self.count, "count", 0, MAX_U64)


@dataclass(frozen=True, slots=True)
class Mkdir(Frame):
    """Create a directory; `mode` None is 0o755, `mtime_ns` None the server's clock, `parents`
    creates missing parents (and an existing directory is no error)."""

    TYPE = FrameType.MKDIR
    rid: int
    path: str
    mode: int | None = None
    mtime_ns: int | None = None
    parents: bool = True

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)
        if self.mode is not None:
            check_int(self.mode, "mode", 0, MAX_MODE)
        check_optional_mtime(self.mtime_ns)
        check_bool(self.parents, "parents")


@dataclass(frozen=True, slots=True)
class Symlink(Frame):
    """Create a link at `path` whose text is `target` (stored as text, never followed);
    `mtime_ns` is the link's own time, None the server's clock."""

    TYPE = FrameType.SYMLINK
    rid: int
    path: str
    target: str
    mtime_ns: int | None = None

    def validate(self) -> None:
        check_rid(self.rid)
        check_path(self.path)
        check_str(self.target, "target", MAX_TARGET, empty=False)
        check_optional_mtime(self.mtime_ns)


@dataclass(frozen=True, slots=True)
class Made(_EntryAnswer):
    """Answer to MKDIR (a "dir" entry) and SYMLINK (a "link" entry)."""

    TYPE = FrameType.MADE
