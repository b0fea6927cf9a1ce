"""LocalStorage for trees (issue 12): mkdir, symlink, the recursive walk and recursive delete."""

from __future__ import annotations

import os
import stat
import tracemalloc
from pathlib import Path

import pytest
from test_local_storage import CS, content, put, ref

from fluxd.storage import LocalStorage
from fluxd.storage.manifests import ManifestStore
from fluxd.storage.paths import MAX_DEPTH
from fluxproto.errors import Conflict, LimitExceeded, NotFound, PermissionDenied

# --- mkdir ---------------------------------------------------------------------------------------


def test_mkdir_makes_a_folder_with_its_parents_durably(storage: LocalStorage, root: Path) -> None:
    entry = storage.mkdir("/a/b/c")
    assert (entry.name, entry.kind, entry.mode) == ("c", "dir", 0o755)
    assert (root / "a" / "b" / "c").is_dir()
    assert stat.S_IMODE((root / "a" / "b" / "c").stat().st_mode) == 0o755


def test_mkdir_sets_mode_and_mtime_in_ns(storage: LocalStorage, root: Path) -> None:
    mtime = 1_234_567_890_123_456_789
    entry = storage.mkdir("d", 0o750, mtime)
    assert (entry.mode, entry.mtime_ns) == (0o750, mtime)
    assert (root / "d").stat().st_mtime_ns == mtime


def test_mkdir_of_an_existing_folder_updates_only_what_is_given(
    storage: LocalStorage, root: Path
) -> None:
    put(storage, "d/f", content(CS))
    before = (root / "d").stat()
    entry = storage.mkdir("d")  # nothing given: nothing changes (idempotent)
    assert (entry.mode, entry.mtime_ns) == (stat.S_IMODE(before.st_mode), before.st_mtime_ns)
    entry = storage.mkdir("d", 0o711, 10**18)  # rsync fixing up a folder at the end
    assert (entry.mode, entry.mtime_ns) == (0o711, 10**18)
    assert (root / "d" / "f").exists()
    assert storage.mkdir("d", mtime_ns=5 * 10**17).mode == 0o711, "mode kept when not given"


def test_mkdir_keeps_the_owner_able_to_use_a_folder(storage: LocalStorage, root: Path) -> None:
    assert storage.mkdir("ro", 0o555).mode == 0o755
    put(storage, "ro/f", content(CS))  # fluxd can still store into it


def test_mkdir_without_parents(storage: LocalStorage) -> None:
    with pytest.raises(NotFound, match="parent folder of /x/y does not exist"):
        storage.mkdir("x/y", parents=False)
    storage.mkdir("x", parents=False)
    assert storage.mkdir("x/y", parents=False).kind == "dir"


def test_mkdir_refuses_a_file_in_the_way(storage: LocalStorage) -> None:
    put(storage, "f", content(CS))
    with pytest.raises(Conflict, match="/f exists and is not a folder"):
        storage.mkdir("f")
    with pytest.raises(Conflict, match="a parent of /f/sub is a file"):
        storage.mkdir("f/sub")


@pytest.mark.parametrize("path", ["/.flux/x", "a/../b", "a\x01b", ".flux"])
def test_mkdir_refuses_paths(storage: LocalStorage, path: str) -> None:
    with pytest.raises(PermissionDenied):
        storage.mkdir(path)


def test_mkdir_through_a_link_leading_out_is_refused(
    storage: LocalStorage, root: Path, tmp_path: Path
) -> None:
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(PermissionDenied, match="outside the served root"):
        storage.mkdir("out/x")
    assert not (tmp_path / "x").exists()


def test_mkdir_of_the_root_changes_nothing(storage: LocalStorage, root: Path) -> None:
    before = stat.S_IMODE(root.stat().st_mode)
    assert storage.mkdir("/", 0o700).kind == "dir"
    assert stat.S_IMODE(root.stat().st_mode) == before


# --- symlink -------------------------------------------------------------------------------------


def test_symlink_inside_the_root(storage: LocalStorage, root: Path) -> None:
    put(storage, "lib/real.txt", content(CS))
    entry = storage.symlink("/bin/tool", "../lib/real.txt")
    assert (entry.name, entry.kind, entry.target) == ("tool", "link", "../lib/real.txt")
    assert os.readlink(root / "bin" / "tool") == "../lib/real.txt"
    assert entry.size == len("../lib/real.txt")
    assert storage.stat("bin/tool").kind == "file", "requests follow it inside the root"


@pytest.mark.parametrize(
    ("path", "target", "why"),
    [
        ("l", "/etc/passwd", "is absolute"),
        ("l", "..", "leads out of the root"),
        ("a/b/l", "../../../x", "leads out of the root"),
        ("l", "a/../../x", "has '..' after a name"),
        ("l", "q/../x", "has '..' after a name"),
        ("l", ".flux/manifests", "reserved area"),
        ("a/l", "../.flux", "reserved area"),
        ("l", "", "is empty"),
        ("l", "a\nb", "control character"),
        ("l", "x" * 4097, "longer than 4096 bytes"),
    ],
)
def test_symlink_targets_refused(
    storage: LocalStorage, root: Path, path: str, target: str, why: str
) -> None:
    with pytest.raises(PermissionDenied, match=why):
        storage.symlink(path, target)
    assert not (root / path).is_symlink()


def test_symlink_target_checked_from_where_the_link_really_lands(
    storage: LocalStorage, root: Path
) -> None:
    """A folder that is itself a link to the root: `..` counts from the real folder."""
    (root / "up").symlink_to(".")
    with pytest.raises(PermissionDenied, match="leads out of the root"):
        storage.symlink("up/l", "../x")  # lexically "x", really ROOT/../x
    storage.symlink("deep/er/l", "../../x")  # from ROOT/deep/er: fine


def test_symlink_within_a_subjects_root(storage: LocalStorage) -> None:
    storage.symlink("users/alice/l", "docs/x", within="users/alice")
    with pytest.raises(PermissionDenied, match="leads out of the root"):
        storage.symlink("users/alice/l2", "../bob/secret", within="users/alice")


def test_symlink_replaces_a_link_atomically(storage: LocalStorage, root: Path) -> None:
    storage.symlink("l", "one")
    entry = storage.symlink("l", "two")
    assert (entry.target, os.readlink(root / "l")) == ("two", "two")
    assert os.listdir(root / ".flux" / "tmp") == [], "no temporary left behind"


def test_symlink_gets_its_own_mtime_never_its_targets(storage: LocalStorage, root: Path) -> None:
    put(storage, "real", content(CS))
    os.utime(root / "real", ns=(7, 7))
    entry = storage.symlink("d/l", "../real", mtime_ns=1_500_000_000_123_456_789)
    assert entry.mtime_ns == os.lstat(root / "d" / "l").st_mtime_ns == 1_500_000_000_123_456_789
    assert os.stat(root / "real").st_mtime_ns == 7, "the target is not touched"
    dangling = storage.symlink("d/gone", "nowhere", mtime_ns=5)
    assert dangling.mtime_ns == os.lstat(root / "d" / "gone").st_mtime_ns == 5
    (link,) = [e for e in storage.walk("d", 100) if e.name == "l"]
    assert link.mtime_ns == 1_500_000_000_123_456_789, (
        "a recursive listing reports the link's own time"
    )
    assert storage.symlink("d/l", "../real").mtime_ns > 1_500_000_000_123_456_789, "nil: now"


def test_symlink_refuses_a_file_or_folder_in_the_way(storage: LocalStorage, root: Path) -> None:
    put(storage, "f", content(CS))
    storage.mkdir("d")
    with pytest.raises(Conflict, match="/f is a file, not a symlink"):
        storage.symlink("f", "x")
    with pytest.raises(Conflict, match="/d is a folder, not a symlink"):
        storage.symlink("d", "x")
    assert (root / "f").is_file() and not (root / "f").is_symlink()


def test_recovery_removes_links_a_crash_left(storage: LocalStorage, root: Path) -> None:
    (root / ".flux" / "tmp" / "link-1-dead").symlink_to("x")
    storage.recover()
    assert os.listdir(root / ".flux" / "tmp") == []


# --- walk ----------------------------------------------------------------------------------------


def tree(storage: LocalStorage, root: Path) -> None:
    put(storage, "top/a.txt", content(CS, seed=1))
    put(storage, "top/sub/b.bin", content(2 * CS, seed=2))
    storage.mkdir("top/empty")
    storage.mkdir("top/sub/deeper/deepest")
    storage.symlink("top/sub/link", "b.bin")
    (root / "top" / "zz-out").symlink_to("/etc")  # made outside fluxd, leads out: hidden
    (root / "top" / "bad\x01name").write_bytes(b"x")  # no request could reach it: hidden
    os.mkfifo(root / "top" / "fifo")  # neither file, folder nor link: hidden


def test_walk_lists_the_tree_depth_first_sorted(storage: LocalStorage, root: Path) -> None:
    tree(storage, root)
    entries = list(storage.walk("/top", 100))
    assert [(e.name, e.kind) for e in entries] == [
        ("a.txt", "file"),
        ("empty", "dir"),
        ("sub", "dir"),
        ("sub/b.bin", "file"),
        ("sub/deeper", "dir"),
        ("sub/deeper/deepest", "dir"),
        ("sub/link", "link"),
    ]
    by_name = {e.name: e for e in entries}
    assert by_name["sub/link"].target == "b.bin"
    assert by_name["sub/b.bin"].size == 2 * CS
    assert all(e.digest is None for e in entries), "digests only when asked"


def test_walk_reads_manifests_only_for_digests(
    storage: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(storage, root)
    asked = {e.name: e for e in storage.walk("/top", 100, digests=True)}
    assert asked["a.txt"].digest == ref(content(CS, seed=1)), "the manifest's digest"
    assert asked["sub/b.bin"].digest == ref(content(2 * CS, seed=2))

    def no_manifest(*args: object) -> None:
        raise AssertionError("a listing without digests read a manifest")

    monkeypatch.setattr(ManifestStore, "load", no_manifest)
    assert len(list(storage.walk("/top", 100))) == len(asked)
    [entry] = storage.walk("/top/a.txt", 10)
    assert (entry.name, entry.digest) == ("a.txt", None)


def test_walk_of_the_root_hides_the_reserved_area(storage: LocalStorage, root: Path) -> None:
    put(storage, "f", content(CS))
    assert [e.name for e in storage.walk("/", 100)] == ["f"]


def test_walk_of_an_empty_folder_and_of_a_file(storage: LocalStorage) -> None:
    storage.mkdir("e")
    put(storage, "e2/f", content(CS))
    assert list(storage.walk("e", 10)) == []
    [entry] = storage.walk("e2/f", 10)
    assert (entry.name, entry.kind) == ("f", "file")


def test_walk_does_not_follow_links(storage: LocalStorage, root: Path) -> None:
    put(storage, "real/f", content(CS))
    storage.symlink("top/alias", "../real")
    assert [(e.name, e.kind) for e in storage.walk("top", 10)] == [("alias", "link")]


def test_walk_of_a_missing_folder(storage: LocalStorage) -> None:
    with pytest.raises(NotFound):
        list(storage.walk("nothing", 10))


def test_walk_stops_at_the_entry_limit(storage: LocalStorage, root: Path) -> None:
    tree(storage, root)
    walk = storage.walk("top", 5)
    got = [next(walk) for _ in range(5)]
    assert len(got) == 5
    with pytest.raises(LimitExceeded, match=r"more than 5 entries \(limits.tree_entries\)"):
        next(walk)


def deep(root: Path, levels: int) -> Path:
    """A chain of `levels` folders named d under ROOT/deep, made outside fluxd."""
    path = root / "deep"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY)
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    return path


def test_walk_refuses_a_tree_deeper_than_max_depth(storage: LocalStorage, root: Path) -> None:
    deep(root, MAX_DEPTH)  # deep/d/.../d: MAX_DEPTH + 1 components at the bottom
    with pytest.raises(LimitExceeded, match=r"more than 128 levels deep \(MAX_DEPTH\)"):
        list(storage.walk("deep", 10**6))


def test_walk_refuses_a_name_longer_than_max_path_instead_of_leaving_it_out(
    storage: LocalStorage, root: Path
) -> None:
    """17 folders of 250 bytes: the 17th is named by 4266 bytes from ROOT/long, more than an
    entry can carry. The listing says so rather than end without it (a copy would look whole)."""
    fd = os.open(root, os.O_RDONLY)
    for i, letter in enumerate(["long", *"abcdefghijklmnopq"]):
        name = letter * 250 if i else letter
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    walk = storage.walk("long", 10**6)
    assert len([next(walk) for _ in range(16)]) == 16  # what fits comes first
    shown = r"^/long/a{42}\.\.\.p{48}"  # cut in the middle
    with pytest.raises(LimitExceeded, match=shown + " holds a path longer than 4096 bytes"):
        next(walk)


def test_walk_takes_flat_memory(storage: LocalStorage, root: Path) -> None:
    """100,000 entries (100 folders of 1,000 empty files) walked with tracemalloc on: the peak
    is what one folder's names take, not the tree's (85 KiB measured; 79 KiB for 10,000)."""
    for d in range(100):
        folder = root / "big" / f"d{d:03}"
        folder.mkdir(parents=True)
        fd = os.open(folder, os.O_RDONLY)
        for f in range(999):  # os.open, not Path.touch: three times faster
            os.close(os.open(f"f{f:04}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.close(fd)
    tracemalloc.start()
    try:
        count = sum(1 for _ in storage.walk("big", 10**6))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 100_000
    print(f"walk of {count} entries: peak {peak / 1024:.0f} KiB traced")
    assert peak < 512 * 1024, f"peak {peak} bytes"


# --- recursive delete ----------------------------------------------------------------------------


def test_recursive_delete_removes_the_tree_and_counts(storage: LocalStorage, root: Path) -> None:
    tree(storage, root)
    # 7 listed entries + 3 hidden ones (fifo, odd name, link leading out) + the folder itself
    assert storage.delete("top", recursive=True) == 11
    assert not (root / "top").exists()
    assert list((root / ".flux" / "manifests").iterdir()) == [], "their manifests are forgotten"


def test_recursive_delete_never_follows_links(
    storage: LocalStorage, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    put(storage, "inside/keep", content(CS))
    storage.mkdir("t")
    (root / "t" / "out").symlink_to(outside)
    storage.symlink("t/in", "../inside")
    assert storage.delete("t", recursive=True) == 3
    assert (outside / "keep").exists() and (root / "inside" / "keep").exists()
    storage.symlink("l", "inside")
    assert storage.delete("l", recursive=True) == 1, "a link is removed as a link"
    assert (root / "inside" / "keep").exists()


@pytest.mark.parametrize("path", ["/", "", "."])
def test_recursive_delete_refuses_the_root(storage: LocalStorage, path: str) -> None:
    put(storage, "f", content(CS))
    with pytest.raises(PermissionDenied, match="refusing to delete the root"):
        storage.delete(path, recursive=True)


def test_recursive_delete_of_a_file_and_a_missing_path(storage: LocalStorage) -> None:
    put(storage, "f", content(CS))
    assert storage.delete("f", recursive=True) == 1
    with pytest.raises(NotFound):
        storage.delete("f", recursive=True)


def test_a_folder_needs_recursive(storage: LocalStorage) -> None:
    storage.mkdir("d")
    with pytest.raises(Conflict, match="is a directory"):
        storage.delete("d")
    assert storage.delete("d", recursive=True) == 1


def test_recursive_delete_over_the_limit_removes_nothing(storage: LocalStorage, root: Path) -> None:
    tree(storage, root)
    with pytest.raises(LimitExceeded, match=r"^/top holds more than 10 entries"):
        storage.delete("top", recursive=True, limit=10)
    assert (root / "top" / "sub" / "b.bin").exists()
    deep(root, MAX_DEPTH)
    with pytest.raises(LimitExceeded, match="MAX_DEPTH"):
        storage.delete("deep", recursive=True)
    assert (root / "deep" / "d").exists()
