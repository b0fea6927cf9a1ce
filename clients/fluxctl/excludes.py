# --exclude PATTERN for recursive transfers: gitignore syntax, matched against tree-relative paths.
"""Exclude patterns, in gitignore syntax (pathspec's GitIgnoreSpec), for both sides of a tree.

A path is matched relative to the root of the tree being copied, so `/build` is anchored at
that root and `build/` only matches folders. The last matching pattern wins, so `!keep.log`
re-includes what `*.log` excluded, except under an excluded folder: an excluded folder is not
entered (as in git, nothing under it can be re-included). The same matcher serves the local
walk (which prunes while it walks) and remote listings (`filter_stream`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from fluxproto import ConfigError

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

__all__ = ["Excluded", "Excludes", "Named", "filter_stream"]


@dataclass(frozen=True, slots=True)
class Excluded:
    """A tree entry left out by the patterns (a folder: with everything under it).

    It stays in the stream so that the planner can protect it: an excluded destination entry
    is never deleted, nor is a folder that holds one.
    """

    name: str
    kind: str


class Named(Protocol):
    """What `filter_stream` needs of a record: its tree-relative name and kind."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


R = TypeVar("R", bound=Named)


class Excludes:
    """A compiled list of --exclude patterns; empty excludes nothing, at no cost."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        """Compile `patterns` (gitignore lines, in order; blank lines and `#` comments ignored).

        Raises:
            ConfigError: a pattern gitignore cannot read (a lone `!`, a trailing backslash).
        """
        self.patterns = tuple(patterns)
        self._spec: GitIgnoreSpec | None = None
        if any(p.strip() and not p.lstrip().startswith("#") for p in self.patterns):
            # Imported here: a plain transfer does not pay for pathspec.
            from pathspec import GitIgnoreSpec  # noqa: PLC0415

            try:
                self._spec = GitIgnoreSpec.from_lines(self.patterns)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"bad --exclude pattern: {exc}") from None

    def __bool__(self) -> bool:
        return self._spec is not None

    def match(self, name: str, *, is_dir: bool) -> bool:
        """True when the tree-relative `name` (no leading slash; "" is the root, never
        excluded) is excluded; `is_dir` lets `dir/` patterns match folders only."""
        if self._spec is None or not name:
            return False
        return self._spec.match_file(name + "/" if is_dir else name)


def filter_stream(records: Iterable[R], excludes: Excludes) -> Iterator[R | Excluded]:
    """`records` (a listing in tree order: a folder before what it holds) with each excluded
    entry replaced by an `Excluded` and everything under an excluded folder dropped."""
    if not excludes:
        yield from records
        return
    pruned: str | None = None  # "name/" of the excluded folder being skipped
    for record in records:
        if pruned is not None and record.name.startswith(pruned):
            continue
        pruned = None
        is_dir = record.kind == "dir"
        if excludes.match(record.name, is_dir=is_dir):
            yield Excluded(record.name, record.kind)
            if is_dir:
                pruned = record.name + "/"
            continue
        yield record
