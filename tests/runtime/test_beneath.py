"""Opens beneath the root that follow no symlink: openat2 and the portable walk alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fluxio.beneath import Beneath
from fluxproto import PermissionDenied


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Beneath:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("outside")
    os.symlink(tmp_path / "outside", root / "out")
    os.symlink("b", root / "a" / "inner-link")
    os.symlink("f.txt", root / "a" / "b" / "file-link")
    return Beneath(root, use_openat2=request.param)


def read(tree: Beneath, inner: str) -> str:
    fd = tree.open(inner, os.O_RDONLY)
    with os.fdopen(fd) as f:
        return f.read()


def test_plain_paths_open(tree: Beneath) -> None:
    assert read(tree, "a/b/f.txt") == "inside"
    fd = tree.open("", os.O_RDONLY | os.O_DIRECTORY)
    assert sorted(os.listdir(fd)) == ["a", "out"]
    os.close(fd)


@pytest.mark.parametrize(
    "inner", ["out/secret", "out", "a/inner-link/f.txt", "a/b/file-link"], ids=str
)
def test_any_symlink_on_the_way_is_refused(tree: Beneath, inner: str) -> None:
    # resolve() hands over symlink-free paths: a link here means the tree changed since.
    with pytest.raises(PermissionDenied, match="changed while it was being opened"):
        tree.open(inner, os.O_RDONLY)


def test_a_trailing_link_is_refused_with_o_path_too(tree: Beneath) -> None:
    with pytest.raises(PermissionDenied):
        tree.open("a/b/file-link", os.O_PATH)
    with pytest.raises(PermissionDenied):
        tree.open("out", os.O_PATH)


def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(
    tree: Beneath, tmp_path: Path
) -> None:
    root = tree.root
    inner = "a/b/f.txt"  # what resolve() returned a moment ago
    os.rename(root / "a" / "b", root / "a" / "b-moved")
    os.symlink(tmp_path / "outside", root / "a" / "b")  # the race a local user could win
    (tmp_path / "outside" / "f.txt").write_text("planted outside")
    with pytest.raises(PermissionDenied):
        tree.open(inner, os.O_RDONLY)


@pytest.mark.parametrize("inner", ["../x", "a/../../x", "/etc/passwd"])
def test_dot_dot_and_absolute_never_leave(tree: Beneath, inner: str) -> None:
    with pytest.raises((PermissionDenied, OSError)):
        tree.open(inner, os.O_RDONLY)


def test_missing_paths_raise_the_os_error(tree: Beneath) -> None:
    with pytest.raises(FileNotFoundError):
        tree.open("a/nope", os.O_RDONLY)
    with pytest.raises(NotADirectoryError):
        tree.open("a/b/f.txt/x", os.O_RDONLY)


@pytest.mark.parametrize(
    ("inner", "plain"),
    [
        ("a/b/f.txt", True),  # there, no link on the way
        ("a/b/new.txt", True),  # missing: the walk stops before any link
        ("a/new/deeper/x", True),
        ("a/b/f.txt/under", True),  # a file as a parent ends the walk too
        ("out/secret", False),  # a link on the way
        ("out", False),  # a trailing link
        ("a/inner-link/f.txt", False),
        ("a/inner-link/missing", False),  # the link comes before the missing name
    ],
    ids=str,
)
def test_plain_says_whether_the_walk_meets_a_link(tree: Beneath, inner: str, plain: bool) -> None:
    # Without openat2 it cannot tell, and says False: callers then resolve the slow way.
    assert tree.plain(inner) is (plain and tree._openat2)
