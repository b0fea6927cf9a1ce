"""fluxctl.treelocal: plan actions carried out in a real temporary destination folder."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fluxctl.tree import Problem, TreeEntry
from fluxctl.treeactions import NEW, TYPE, Copy, Delete, MakeLink, Mkdir, SetAttrs
from fluxctl.treelocal import LocalDest, hide_partials, is_partial

NS = 1_600_000_000_123_456_789


def entry(name: str, kind: str, target: str | None = None) -> TreeEntry:
    return TreeEntry(name, kind, 0, NS, 0o644, target)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the destination that no action may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_text("keep")
    return path


@pytest.fixture
def dest(tmp_path: Path) -> LocalDest:
    (tmp_path / "root").mkdir()
    return LocalDest(tmp_path / "root")


def root(dest: LocalDest) -> Path:
    return Path(dest.root)


def test_folders_are_made_owner_rwx_then_get_their_mode_and_mtime(dest: LocalDest) -> None:
    dest.mkdir(Mkdir("a", 0o555, NS))
    dest.mkdir(Mkdir("a/b", 0o750, NS))
    assert stat.S_IMODE((root(dest) / "a").stat().st_mode) == 0o700
    (root(dest) / "a/b/f").write_text("content goes in while the folder is writable")
    dest.set_attrs(SetAttrs("a/b", "dir", 0o750, NS))
    dest.set_attrs(SetAttrs("a", "dir", 0o555, NS + 1))
    st = (root(dest) / "a").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o555, NS + 1)
    assert (root(dest) / "a/b").stat().st_mtime_ns == NS


def test_a_missing_root_is_created(tmp_path: Path) -> None:
    dest = LocalDest(tmp_path / "new")
    dest.mkdir(Mkdir("", 0o755, NS))
    assert (tmp_path / "new").is_dir()


def test_a_link_in_the_way_of_a_folder_is_replaced_not_followed(
    dest: LocalDest, outside: Path
) -> None:
    (root(dest) / "a").symlink_to(outside)
    dest.mkdir(Mkdir("a", 0o755, NS, replace="link"))
    assert (root(dest) / "a").is_dir() and not (root(dest) / "a").is_symlink()
    assert os.listdir(outside) == ["secret"]


def test_nothing_is_written_through_a_link_among_the_folders(
    dest: LocalDest, outside: Path
) -> None:
    """The walk saw a folder `a`; a link took its place since: every action under it fails
    instead of landing outside."""
    (root(dest) / "a").symlink_to(outside)
    actions = [
        lambda: dest.mkdir(Mkdir("a/new", 0o755, NS)),
        lambda: dest.make_link(MakeLink("a/l", "x", None)),
        lambda: place(dest, Copy("a/secret", entry("a/secret", "file"), None, NEW)),
        lambda: dest.set_attrs(SetAttrs("a/secret", "file", 0o600, NS)),
        lambda: dest.delete(Delete("a/secret", entry("a/secret", "file"), False, 1)),
    ]
    for action in actions:
        with pytest.raises(OSError) as caught:
            action()
        assert caught.value.errno == errno.ELOOP
    assert os.listdir(outside) == ["secret"]
    assert (outside / "secret").stat().st_mtime_ns != NS


def test_a_file_among_the_folders_fails_the_entry(dest: LocalDest) -> None:
    (root(dest) / "a").write_text("")
    with pytest.raises(NotADirectoryError):
        dest.mkdir(Mkdir("a/b", 0o755, NS))


def test_links_keep_their_text_and_replace_what_is_there(dest: LocalDest, outside: Path) -> None:
    dest.make_link(MakeLink("new", "../odd//text/./", None))
    assert os.readlink(root(dest) / "new") == "../odd//text/./"
    (root(dest) / "file").write_text("old")
    dest.make_link(MakeLink("file", "new", entry("file", "file")))
    assert os.readlink(root(dest) / "file") == "new"
    (root(dest) / "old").symlink_to(outside / "secret")
    dest.make_link(MakeLink("old", "file", entry("old", "link", str(outside / "secret"))))
    assert os.readlink(root(dest) / "old") == "file"
    assert (outside / "secret").read_text() == "keep"
    assert sorted(os.listdir(root(dest))) == ["file", "new", "old"]  # no temporary left


def test_links_get_their_own_mtime_never_their_targets(dest: LocalDest, outside: Path) -> None:
    secret = outside / "secret"
    before = secret.stat().st_mtime_ns
    dest.make_link(MakeLink("new", str(secret), None, NS))
    assert os.lstat(root(dest) / "new").st_mtime_ns == NS
    dest.make_link(MakeLink("new", str(secret), entry("new", "link", str(secret)), NS + 1))
    assert os.lstat(root(dest) / "new").st_mtime_ns == NS + 1, "made again with its time"
    dest.make_link(MakeLink("dangling", "nowhere", None, NS))
    assert os.lstat(root(dest) / "dangling").st_mtime_ns == NS
    assert secret.stat().st_mtime_ns == before
    assert sorted(os.listdir(root(dest))) == ["dangling", "new"]  # no temporary left


def test_a_folder_in_the_way_of_a_link_is_not_removed(dest: LocalDest) -> None:
    (root(dest) / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        dest.make_link(MakeLink("d", "x", entry("d", "dir")))
    assert (root(dest) / "d").is_dir()


def test_a_copy_clears_a_link_or_fifo_in_its_place(dest: LocalDest, outside: Path) -> None:
    (root(dest) / "l").symlink_to(outside / "secret")
    os.mkfifo(root(dest) / "p")
    for name, kind in (("l", "link"), ("p", "other")):
        place(dest, Copy(name, entry(name, "file"), entry(name, kind), TYPE))
        assert not os.path.lexists(root(dest) / name)
    # A link that appeared where the walk saw a file is removed too: the rename must not
    # land on what it points to.
    (root(dest) / "f").symlink_to(outside / "secret")
    place(dest, Copy("f", entry("f", "file"), entry("f", "file"), TYPE))
    assert not os.path.lexists(root(dest) / "f")
    assert (outside / "secret").read_text() == "keep"


def place(dest: LocalDest, action: Copy) -> None:
    with dest.copy_place(action):
        pass


def test_a_copy_stays_in_the_folder_it_started_in_when_a_link_takes_its_name(
    dest: LocalDest, outside: Path, tmp_path: Path
) -> None:
    """A folder swapped for a link to elsewhere while a file downloads into it, and before
    the next file of the folder: the first lands in the folder it started in (moved away,
    not the link's target), the second fails, and the link's target gets nothing."""
    (root(dest) / "a").mkdir()
    with dest.copy_place(Copy("a/one", entry("a/one", "file"), None, NEW)) as path:
        os.rename(root(dest) / "a", tmp_path / "moved")
        (root(dest) / "a").symlink_to(outside)
        path.write_text("staged and renamed into place by the download")
        os.replace(path, path.with_name("one-done"))
    assert sorted(os.listdir(tmp_path / "moved")) == ["one-done"]
    with pytest.raises(OSError) as caught:
        place(dest, Copy("a/two", entry("a/two", "file"), None, NEW))
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        dest.set_attrs(SetAttrs("a", "dir", 0o700, NS))  # a link now: not followed
    assert os.listdir(outside) == ["secret"]


def test_finish_copy_sets_the_bits_a_rename_does_not_carry(dest: LocalDest) -> None:
    (root(dest) / "f").write_text("x")
    source = TreeEntry("f", "file", 1, NS, 0o4750)
    dest.finish_copy(Copy("f", source, None, NEW))
    assert stat.S_IMODE((root(dest) / "f").stat().st_mode) == 0o4750


def test_set_attrs_does_not_follow_a_link_that_replaced_the_entry(
    dest: LocalDest, outside: Path
) -> None:
    (root(dest) / "f").symlink_to(outside / "secret")
    before = (outside / "secret").stat()
    with pytest.raises(FileExistsError):
        dest.set_attrs(SetAttrs("f", "file", 0o600, NS))
    after = (outside / "secret").stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


def test_deletes_remove_entries_and_whole_folders_never_what_links_point_to(
    dest: LocalDest, outside: Path
) -> None:
    base = root(dest)
    (base / "d/e").mkdir(parents=True)
    (base / "d/e/f").write_text("x")
    (base / "d/out").symlink_to(outside)
    (base / "l").symlink_to(outside)
    (base / "f").write_text("x")
    dest.delete(Delete("d", entry("d", "dir"), recursive=True, count=4))
    dest.delete(Delete("l", entry("l", "link"), recursive=False, count=1))
    dest.delete(Delete("f", entry("f", "file"), recursive=False, count=1))
    dest.delete(Delete("gone", entry("gone", "file"), recursive=False, count=1))  # done already
    assert os.listdir(base) == []
    assert os.listdir(outside) == ["secret"]


def test_the_root_is_never_deleted(dest: LocalDest) -> None:
    with pytest.raises(PermissionError):
        dest.delete(Delete("", entry("", "dir"), recursive=True, count=1))
    assert root(dest).is_dir()


def test_files_of_unfinished_downloads_are_hidden_from_the_destination_walk() -> None:
    assert is_partial("a/.f.fluxpart") and is_partial(".f.fluxpart.journal")
    assert is_partial("a/.l.fluxlink") and not is_partial("a/f.fluxpart")
    records = [
        entry("", "dir"),
        entry(".x.fluxpart", "file"),
        entry(".x.fluxpart.journal", "file"),
        entry(".y.fluxpart", "dir"),  # a folder of that name is the user's
        Problem(".z.fluxpart", "unreadable", 2),
        entry("x", "file"),
    ]
    kept = [r.name for r in hide_partials(records)]
    assert kept == ["", ".y.fluxpart", ".z.fluxpart", "x"]


def test_a_journal_left_without_its_data_file_is_collected(tmp_path: Path) -> None:
    """A run killed after a download's rename and before its journal's removal leaves one."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a/.f.fluxpart.journal").write_bytes(b"FLXJ")
    (tmp_path / "a/.g.fluxpart").write_bytes(b"")
    (tmp_path / "a/.g.fluxpart.journal").write_bytes(b"FLXJ")
    records = [
        entry("", "dir"),
        entry("a", "dir"),
        entry("a/.f.fluxpart.journal", "file"),
        entry("a/.g.fluxpart", "file"),
        entry("a/.g.fluxpart.journal", "file"),
    ]
    assert [r.name for r in hide_partials(records)] == ["", "a"]
    assert (tmp_path / "a/.f.fluxpart.journal").exists()  # not collected without a root
    assert [r.name for r in hide_partials(records, str(tmp_path))] == ["", "a"]
    assert sorted(os.listdir(tmp_path / "a")) == [".g.fluxpart", ".g.fluxpart.journal"]


def test_a_read_only_folder_of_ours_is_opened_to_change_what_it_holds(dest: LocalDest) -> None:
    """An earlier copy gave it its source's mode (0o555): the next run adds owner write and
    search access to change its content (the planner's SetAttrs restores the mode after)."""
    base = root(dest)
    (base / "ro").mkdir()
    (base / "ro/old").write_text("x")
    os.chmod(base / "ro", 0o555)
    dest.set_attrs(SetAttrs("ro/old", "file", 0o600, NS))  # no change in the folder itself
    assert stat.S_IMODE((base / "ro").stat().st_mode) == 0o555
    dest.make_link(MakeLink("ro/l", "old", None))
    assert stat.S_IMODE((base / "ro").stat().st_mode) == 0o755
    dest.set_attrs(SetAttrs("ro", "dir", 0o555, NS))
    os.chmod(base / "ro", 0o500)
    dest.delete(Delete("ro/l", entry("ro/l", "link"), recursive=False, count=1))
    assert stat.S_IMODE((base / "ro").stat().st_mode) == 0o700
