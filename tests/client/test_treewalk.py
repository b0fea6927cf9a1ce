"""fluxctl.treewalk: the local walk of a real temporary tree, as a source and as a destination."""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxctl import treewalk
from fluxctl.excludes import Excluded, Excludes
from fluxctl.tree import (
    HARDLINK,
    LINK_OUTSIDE,
    LOOP,
    SPECIAL,
    Problem,
    Record,
    Skipped,
    TreeEntry,
    display_name,
    link_escapes,
    remote_name_check,
    tree_key,
)
from fluxctl.treewalk import LocalFiles, local_digest, walk
from fluxproto.digest import FileHasher

NS = 1_600_000_000_123_456_789  # an mtime with every nanosecond digit set
BAD = os.fsdecode(b"bad\xff.txt")  # a name on disk that is not UTF-8


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ holds nested and empty folders, 0-byte and unicode files, links of every kind,
    a fifo, a hard link and a name that is not UTF-8."""
    root = tmp_path / "root"
    (root / "a" / "empty").mkdir(parents=True)
    (root / "a" / "b.txt").write_bytes(b"hello")
    (root / "a" / "zero").write_bytes(b"")
    (root / "日本").mkdir()
    (root / "日本" / "файл.txt").write_text("x")
    (root / "café.txt").write_text("nfc")
    (root / "a-b").write_text("sorts after a/ in tree order, before it as a string")
    (root / "a.txt").write_text("")
    os.symlink("b.txt", root / "a" / "in")  # inside
    os.symlink("../café.txt", root / "a" / "up")  # inside, through ..
    os.symlink("../../outside", root / "a" / "out")  # leaves the tree
    os.symlink("/etc/passwd", root / "abs")  # absolute: leaves the tree
    os.symlink("nowhere", root / "dangling")  # inside, dangling: sent as text all the same
    os.mkfifo(root / "fifo")
    os.link(root / "a" / "b.txt", root / "hard")
    with open(os.path.join(os.fsencode(root), os.fsencode(BAD)), "wb") as f:
        f.write(b"?")
    (tmp_path / "outside").write_text("not in the tree")
    os.chmod(root / "a" / "b.txt", 0o640)
    os.chmod(root / "a" / "empty", 0o750)
    os.utime(root / "a" / "b.txt", ns=(NS, NS))
    os.utime(root / "a" / "empty", ns=(NS, NS + 1))
    return root


def by_name(records: Iterator[Record]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for r in records:
        assert r.name not in out, f"{r.name} twice"
        out[r.name] = r
    return out


def test_source_walk_of_a_real_tree(tree: Path) -> None:
    got = by_name(walk(str(tree)))
    assert got[""] == TreeEntry("", "dir", 0, tree.stat().st_mtime_ns, 0o755)
    assert got["a/b.txt"] == TreeEntry("a/b.txt", "file", 5, NS, 0o640)  # to the nanosecond
    assert got["a/empty"] == TreeEntry("a/empty", "dir", 0, NS + 1, 0o750)
    assert got["a/zero"].kind == "file" and got["a/zero"].size == 0  # type: ignore[union-attr]
    assert got["日本/файл.txt"].kind == "file"  # type: ignore[union-attr]
    assert got["a/in"] == TreeEntry(
        "a/in", "link", 0, os.lstat(tree / "a/in").st_mtime_ns, 0o777, "b.txt"
    )
    assert got["a/up"].target == "../café.txt"  # type: ignore[union-attr]
    assert got["dangling"].target == "nowhere"  # type: ignore[union-attr]
    assert got["a/out"] == Skipped("a/out", LINK_OUTSIDE, "../../outside")
    assert got["abs"] == Skipped("abs", LINK_OUTSIDE, "/etc/passwd")
    assert got["fifo"] == Skipped("fifo", SPECIAL, "fifo")
    assert got["hard"] == Skipped("hard", HARDLINK, "a/b.txt")  # the first name is sent
    assert isinstance(got[BAD], Problem) and got[BAD].exit_code == 4
    assert "not valid UTF-8" in got[BAD].message


def test_tree_order_is_by_component(tree: Path) -> None:
    names = [r.name for r in walk(str(tree))]
    assert names == sorted(names, key=tree_key)
    # "a-b" < "a/..." as strings, but a folder's contents come right after it.
    assert names.index("a/zero") < names.index("a-b") < names.index("a.txt")
    assert names[0] == ""


def test_destination_walk_keeps_everything_as_entries(tree: Path) -> None:
    got = by_name(walk(str(tree), role="dest"))
    assert got["fifo"].kind == "other"  # type: ignore[union-attr]
    assert got["hard"].kind == "file"  # type: ignore[union-attr]
    assert got["a/out"].target == "../../outside"  # type: ignore[union-attr]
    assert got[BAD].kind == "file"  # type: ignore[union-attr]
    assert all(isinstance(r, TreeEntry) for r in got.values())


def test_a_missing_root(tmp_path: Path) -> None:
    assert list(walk(str(tmp_path / "nope"), role="dest")) == []  # nothing there yet
    (problem,) = walk(str(tmp_path / "nope"))
    assert isinstance(problem, Problem) and problem.name == "" and problem.exit_code == 2


def test_a_single_file_is_a_tree_of_one(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    (entry,) = walk(str(tmp_path / "f"))
    assert isinstance(entry, TreeEntry) and (entry.name, entry.kind, entry.size) == ("", "file", 3)


def test_the_root_is_followed_when_it_is_a_link(tree: Path, tmp_path: Path) -> None:
    os.symlink(tree, tmp_path / "via")
    assert [r.name for r in walk(str(tmp_path / "via"))] == [r.name for r in walk(str(tree))]


def test_names_the_server_refuses(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "ok").mkdir(parents=True)
    (root / "back\\slash").write_text("")
    (root / "ok" / ".flux").write_text("")  # only a top-level .flux is reserved
    (root / ".flux").mkdir()
    (root / ".flux" / "inside").write_text("")
    (root / ("x" * 200)).mkdir()
    (root / ("x" * 200) / ("y" * 200)).write_text("")
    got = by_name(walk(str(root), check_name=remote_name_check("/")))
    assert isinstance(got["back\\slash"], Problem) and "backslash" in got["back\\slash"].message
    assert isinstance(got[".flux"], Problem) and "reserved" in got[".flux"].message
    assert ".flux/inside" not in got  # a refused folder is not entered
    assert isinstance(got["ok/.flux"], TreeEntry)
    # Under a deeper remote root, a long path crosses the server's MAX_PATH.
    deep = by_name(walk(str(root), check_name=remote_name_check("/" + ("d" * 250 + "/") * 15)))
    long = "x" * 200 + "/" + "y" * 200
    assert isinstance(deep[long], Problem) and "longer than" in deep[long].message
    assert deep[long].exit_code == 6  # a server limit, not a refused name
    assert got["back\\slash"].exit_code == 4


def test_a_folder_deeper_than_the_server_allows_fails_alone_with_all_it_holds(
    tmp_path: Path,
) -> None:
    root = tmp_path / "r"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "f").write_text("")
    (root / "a" / "ok").write_text("")
    under = "/" + "/".join(["d"] * 126)  # a/b is the 128th level: the last the server takes
    got = by_name(walk(str(root), check_name=remote_name_check(under)))
    assert isinstance(got["a/b"], TreeEntry) and isinstance(got["a/ok"], TreeEntry)
    problem = got["a/b/c"]
    assert isinstance(problem, Problem) and problem.exit_code == 6
    assert problem.message == "deeper than the server's limit of 128 levels (MAX_DEPTH): not sent"
    assert "a/b/c/f" not in got


def test_unicode_forms_are_sent_as_nfc_and_read_from_their_disk_name(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    nfd = unicodedata.normalize("NFD", "é.txt")
    (root / nfd).write_text("")
    (entry,) = [r for r in walk(str(root)) if r.name]
    assert isinstance(entry, TreeEntry)
    assert entry.name == "é.txt" and entry.local == nfd and os.path.exists(root / entry.local)
    # Both forms in one folder would be one name on the server: the second is a Problem.
    (root / "é.txt").write_text("")
    kinds = sorted(type(r).__name__ for r in walk(str(root)) if r.name)
    assert kinds == ["Problem", "TreeEntry"]
    # On a destination the second is left alone (neither compared nor deleted).
    assert [r.name for r in walk(str(root), role="dest")] == ["", "é.txt"]


def test_follow_links_walks_targets_and_stops_at_loops(tree: Path) -> None:
    os.symlink("..", tree / "a" / "loop")  # back to the root: a loop
    os.symlink("a", tree / "again")  # a folder reached twice, not a loop
    got = by_name(walk(str(tree), follow_links=True))
    assert got["a/loop"] == Skipped("a/loop", LOOP, "..")
    assert got["a/in"] == TreeEntry("a/in", "file", 5, NS, 0o640)  # the file, not the link
    assert got["a/out"].kind == "file"  # type: ignore[union-attr]  # -L follows out of the tree
    assert got["again/zero"].kind == "file"  # type: ignore[union-attr]
    # Reached again through the folder link, a file with two names is still one file.
    assert got["again/b.txt"] == Skipped("again/b.txt", HARDLINK, "a/b.txt")
    assert got["again/loop"] == Skipped("again/loop", LOOP, "..")
    # A followed link is a copy, never a "second hard link".
    assert got["hard"] == Skipped("hard", HARDLINK, "a/b.txt")
    dangling = got["dangling"]
    assert isinstance(dangling, Problem) and dangling.exit_code == 2
    assert "following the link" in dangling.message


def test_copy_hardlinks_sends_every_name(tree: Path) -> None:
    assert by_name(walk(str(tree), copy_hardlinks=True))["hard"].kind == "file"  # type: ignore[union-attr]


def test_excludes_prune_while_walking(tree: Path) -> None:
    got = by_name(walk(str(tree), excludes=Excludes(["a/", "*.txt", "!café.txt"])))
    assert got["a"] == Excluded("a", "dir")
    assert not any(name.startswith("a/") for name in got)
    assert got["a.txt"] == Excluded("a.txt", "file")
    assert got["café.txt"].kind == "file"  # type: ignore[union-attr]
    assert got["日本/файл.txt"] == Excluded("日本/файл.txt", "file")
    # An excluded entry is never an error: a name the server refuses, if excluded, is silent.
    assert by_name(walk(str(tree), excludes=Excludes(["bad*"])))[BAD] == Excluded(BAD, "file")


def test_unreadable_folder_fails_alone(tree: Path) -> None:
    os.chmod(tree / "a", 0)
    try:
        got = by_name(walk(str(tree)))
    finally:
        os.chmod(tree / "a", 0o755)
    if os.geteuid() == 0:
        # root reads a 000 folder all the same; the failure path is covered below.
        assert got["a"].kind == "dir"  # type: ignore[union-attr]
    else:
        assert isinstance(got["a"], Problem) and got["a"].exit_code == 4


def fail_on(monkeypatch: pytest.MonkeyPatch, call: str, name: str, exc: OSError) -> None:
    """Make the walk's os.`call` raise `exc` for the entry `name` (in its open folder)."""
    real = getattr(os, call)

    def failing(path: str, *args: Any, **kwargs: Any) -> object:
        if path == name:
            raise exc
        return real(path, *args, **kwargs)

    monkeypatch.setattr(treewalk.os, call, failing)


def test_a_folder_that_cannot_be_listed(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on(monkeypatch, "open", "a", PermissionError(errno.EACCES, "Permission denied"))
    got = by_name(walk(str(tree)))
    assert got["a"] == Problem("a", "permission denied while listing the folder", 4)
    assert not any(name.startswith("a/") for name in got)  # the rest goes on
    assert got["日本/файл.txt"].kind == "file"  # type: ignore[union-attr]


def test_a_file_that_vanishes_mid_walk(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on(monkeypatch, "stat", "zero", FileNotFoundError(errno.ENOENT, "No such file"))
    got = by_name(walk(str(tree)))
    assert got["a/zero"] == Problem("a/zero", "no such file while reading it", 2)
    assert got["a/b.txt"].kind == "file"  # type: ignore[union-attr]


def test_an_unreadable_file_is_walked(tree: Path) -> None:
    """The walk reads metadata only: a 000 file is listed; reading it fails later, alone."""
    os.chmod(tree / "a" / "b.txt", 0)
    got = by_name(walk(str(tree)))
    assert got["a/b.txt"] == TreeEntry("a/b.txt", "file", 5, NS, 0)


def test_the_walk_streams(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    for i in range(50):
        (root / f"d{i:02d}").mkdir()
        (root / f"d{i:02d}" / "f").write_text("")
    records = walk(str(root))
    assert [next(records).name for _ in range(3)] == ["", "d00", "d00/f"]


@pytest.mark.parametrize(
    ("name", "target", "escapes"),
    [
        ("l", "x", False),
        ("l", "./x/../y", False),
        ("l", "..", True),
        ("a/l", "..", False),  # the root itself is inside
        ("a/l", "../..", True),
        ("a/b/l", "../../x", False),
        ("a/b/l", "../../../x", True),
        ("a/l", "x/../../y", False),
        ("a/l", "x/../../../y", True),
        ("l", "/abs", True),
        ("l", "", True),
    ],
)
def test_link_escapes(name: str, target: str, escapes: bool) -> None:
    assert link_escapes(name, target) is escapes


def test_display_name_is_one_printable_line() -> None:
    assert display_name(BAD) == "bad\\xff.txt"
    assert display_name("a\nb\u202e") == "a\\u000ab\\u202e"
    assert display_name("日本") == "日本"
    assert display_name("") == "."


def test_modes_are_permission_bits(tree: Path) -> None:
    os.chmod(tree / "a" / "zero", 0o4755)
    entry = by_name(walk(str(tree)))["a/zero"]
    assert isinstance(entry, TreeEntry) and entry.mode == stat.S_IMODE(0o104755)


def test_local_digest_is_the_servers_whole_file_digest(tree: Path) -> None:
    hasher = FileHasher()
    hasher.update(b"hello")
    digest = local_digest(str(tree))
    assert digest(TreeEntry("a/b.txt", "file")) == hasher.digest()
    assert digest(TreeEntry("a/zero", "file")) == FileHasher().digest()
    with pytest.raises(FileNotFoundError):
        digest(TreeEntry("a/vanished", "file"))
    with pytest.raises(OSError, match="link"):  # never read through a link
        digest(TreeEntry("a/in", "file"))
    (tree / "single").write_bytes(b"hello")
    assert local_digest(str(tree / "single"))(TreeEntry("", "file")) == hasher.digest()


def test_a_folder_swapped_for_a_link_after_it_was_listed_is_not_walked_through(
    tmp_path: Path,
) -> None:
    """What the walk reads of a folder comes from the folder it listed, by descriptor: a link
    to elsewhere that took its name since leads nowhere. The files to send are opened below
    the root (LocalFiles), so reading one fails instead of reading the other side of the link."""
    root, outside = tmp_path / "r", tmp_path / "outside"
    (root / "a" / "sub").mkdir(parents=True)
    (root / "a" / "f").write_text("inside")
    (root / "a" / "sub" / "g").write_text("inside too")
    (outside / "sub").mkdir(parents=True)
    (outside / "f").write_text("outside, and longer")
    (outside / "sub" / "g").write_text("outside")
    (outside / "sub" / "only-outside").write_text("")
    records = walk(str(root))
    assert [next(records).name for _ in range(2)] == ["", "a"]  # a is listed
    os.rename(root / "a", tmp_path / "moved")
    os.symlink(outside, root / "a")
    rest = by_name(records)
    assert set(rest) == {"a/f", "a/sub", "a/sub/g"}
    f = rest["a/f"]
    assert isinstance(f, TreeEntry) and f.size == len("inside")
    files = LocalFiles(str(root))
    with pytest.raises(OSError, match="a link is in the way") as caught:
        files.opener("a/f")(os.O_RDONLY)
    assert caught.value.errno == errno.ELOOP
    with os.fdopen(files.opener("b")(os.O_RDONLY | os.O_CREAT | os.O_WRONLY)):
        pass  # an entry whose way is clear opens
    files.close()
