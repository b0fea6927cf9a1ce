"""fluxctl.excludes: gitignore patterns on tree-relative paths, for walks and remote listings."""

from __future__ import annotations

import pytest

from fluxctl.excludes import Excluded, Excludes, filter_stream
from fluxctl.tree import TreeEntry
from fluxproto import ConfigError

CASES = [
    # (patterns, path, is_dir, excluded)
    (["*.log"], "x.log", False, True),
    (["*.log"], "deep/er/x.log", False, True),  # no slash: matches at any depth
    (["*.log", "!keep.log"], "keep.log", False, False),  # negation re-includes
    (["*.log", "!keep.log"], "d/keep.log", False, False),
    (["!keep.log", "*.log"], "keep.log", False, True),  # the last matching pattern wins
    (["build/"], "build", True, True),  # dir-only pattern
    (["build/"], "build", False, False),  # ... does not match a file
    (["build/"], "src/build", True, True),
    (["/top.txt"], "top.txt", False, True),  # anchored at the tree's root
    (["/top.txt"], "d/top.txt", False, False),
    (["doc/*.txt"], "doc/a.txt", False, True),  # a slash inside anchors too
    (["doc/*.txt"], "x/doc/a.txt", False, False),
    (["doc/*.txt"], "doc/sub/a.txt", False, False),  # * does not cross "/"
    (["a/**/z"], "a/z", False, True),
    (["a/**/z"], "a/b/c/z", False, True),
    (["**/cache"], "x/y/cache", True, True),
    (["# a comment", "", "*.tmp"], "x.tmp", False, True),
    (["\\#not-a-comment"], "#not-a-comment", False, True),
    (["*"], "", True, False),  # the root itself is never excluded
]


@pytest.mark.parametrize(("patterns", "path", "is_dir", "excluded"), CASES)
def test_gitignore_semantics(patterns: list[str], path: str, is_dir: bool, excluded: bool) -> None:
    assert Excludes(patterns).match(path, is_dir=is_dir) is excluded


def test_no_patterns_exclude_nothing() -> None:
    empty = Excludes(["", "# only a comment"])
    assert not empty
    assert not empty.match("anything", is_dir=False)


def test_a_bad_pattern_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="bad --exclude pattern"):
        Excludes(["!"])


def test_remote_listings_are_filtered_and_excluded_folders_pruned() -> None:
    listing = [
        TreeEntry("", "dir"),
        TreeEntry("a", "dir"),
        TreeEntry("a/x.log", "file"),
        TreeEntry("a/y", "file"),
        TreeEntry("build", "dir"),
        TreeEntry("build/keep.log", "file"),  # under an excluded folder: cannot come back
        TreeEntry("build/out", "file"),
        TreeEntry("build.txt", "file"),
        TreeEntry("keep.log", "file"),
    ]
    out = list(filter_stream(listing, Excludes(["*.log", "build/", "!keep.log"])))
    assert out == [
        TreeEntry("", "dir"),
        TreeEntry("a", "dir"),
        Excluded("a/x.log", "file"),
        TreeEntry("a/y", "file"),
        Excluded("build", "dir"),
        TreeEntry("build.txt", "file"),
        TreeEntry("keep.log", "file"),
    ]


def test_filtering_streams() -> None:
    """One entry in, at most one out, nothing read ahead: the listing is never held."""
    pulled = 0

    def listing():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(10**9):
            pulled += 1
            yield TreeEntry(f"f{i:09d}", "file")

    out = filter_stream(listing(), Excludes(["*5"]))
    assert [next(out) for _ in range(3)] == [TreeEntry(f"f{i:09d}", "file") for i in range(3)]
    assert pulled == 3
