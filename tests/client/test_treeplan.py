"""fluxctl.treeplan: the merge of a source and a destination tree into actions."""

from __future__ import annotations

import itertools
import os
import shutil
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from fluxctl.excludes import Excluded, Excludes, filter_stream
from fluxctl.tree import HARDLINK, LINK_OUTSIDE, Problem, Record, Skipped, TreeEntry
from fluxctl.treeactions import (
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
)
from fluxctl.treeplan import PlanOptions, TreePlan
from fluxctl.treewalk import walk
from fluxproto import Entry, LocalProtocolError, RemoteProtocolError


def d(name: str, mode: int = 0o755, mtime: int = 1) -> TreeEntry:
    return TreeEntry(name, "dir", 0, mtime, mode)


def f(name: str, size: int = 1, mtime: int = 1, mode: int = 0o644, digest: bytes | None = None):  # type: ignore[no-untyped-def]
    return TreeEntry(name, "file", size, mtime, mode, None, digest)


def ln(name: str, target: str, mtime: int = 1) -> TreeEntry:
    return TreeEntry(name, "link", 0, mtime, 0o777, target)


def plan(
    source: Iterable[object], dest: Iterable[object], **options: object
) -> tuple[list[Action], list[Action]]:
    with TreePlan(source, dest, PlanOptions(**options)) as p:  # type: ignore[arg-type]
        first = list(p.actions())
        return first, list(p.deferred())


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    """(action type, name) pairs, ignoring Skips: the changes, in order."""
    return [(type(a).__name__, a.name) for a in actions if not isinstance(a, Skip)]


TREE = [d(""), d("a"), d("a/empty"), f("a/x"), f("b", 5), ln("l", "a/x")]


def test_a_new_tree_is_created_folders_first_and_fixed_after_their_content() -> None:
    main, later = plan(TREE, [])
    assert kinds(main) == [
        ("Mkdir", ""),
        ("Mkdir", "a"),
        ("Mkdir", "a/empty"),
        ("SetAttrs", "a/empty"),  # an empty folder is kept, with its mode and mtime
        ("Copy", "a/x"),
        ("SetAttrs", "a"),
        ("Copy", "b"),
        ("MakeLink", "l"),
        ("SetAttrs", ""),
    ]
    assert later == []
    assert all(a.reason == NEW for a in main if isinstance(a, Copy))
    assert Mkdir("a", 0o755, 1) in main
    assert MakeLink("l", "a/x", None, 1) in main


def test_an_unchanged_tree_is_all_skips() -> None:
    main, later = plan(TREE, TREE, delete=True)
    assert [type(a) for a in main] == [Skip] * len(TREE)
    assert later == []


@pytest.mark.parametrize(
    ("dest_file", "reason"),
    [(f("b", 4), SIZE), (f("b", 5, mtime=2), MTIME), (f("b", 5, mtime=0), MTIME)],
)
def test_quick_check(dest_file: TreeEntry, reason: str) -> None:
    dest = [d(""), d("a"), d("a/empty"), f("a/x"), dest_file, ln("l", "a/x")]
    main, _ = plan(TREE, dest)
    (copy,) = [a for a in main if isinstance(a, Copy)]
    assert (copy.name, copy.reason, copy.dest) == ("b", reason, dest_file)
    # The root's mtime changes when b is replaced: it is set again after.
    assert main[-1] == SetAttrs("", "dir", 0o755, 1)


def test_a_mode_change_alone_moves_no_data() -> None:
    main, _ = plan([d(""), f("x", mode=0o600)], [d(""), f("x")])
    assert kinds(main) == [("SetAttrs", "x")]
    assert SetAttrs("x", "file", 0o600, 1) in main


def test_checksum_compares_digests_of_equal_sizes_only() -> None:
    same, other = b"s" * 16, b"o" * 16
    hashed: list[str] = []

    def local(entry: TreeEntry) -> bytes:
        hashed.append(entry.name)
        return same

    src = [d(""), f("eq", 5, mtime=9), f("ne", 5), f("size", 5), f("unknown", 5)]
    dst = [d(""), f("eq", 5, digest=same), f("ne", 5, digest=other), f("size", 6), f("unknown", 5)]
    main, _ = plan(src, dst, checksum=True, source_digest=local)
    copies = {a.name: a.reason for a in main if isinstance(a, Copy)}
    assert copies == {"ne": CHECKSUM, "unknown": CHECKSUM, "size": SIZE}
    assert "size" not in hashed  # different sizes are never read
    # Same content, other mtime: no data, the mtime is set.
    assert SetAttrs("eq", "file", 0o644, 9) in main


def test_checksum_recv_hashes_the_local_destination() -> None:
    digest = b"d" * 16
    main, _ = plan(
        [d(""), f("x", 5, mtime=7, digest=digest)],
        [d(""), f("x", 5, mtime=3)],
        checksum=True,
        remote="source",
        dest_digest=lambda entry: digest,
    )
    assert kinds(main) == [("SetAttrs", "x")]


def test_a_file_that_cannot_be_hashed_fails_alone() -> None:
    def unreadable(entry: TreeEntry) -> bytes:
        raise PermissionError(13, "Permission denied")

    main, _ = plan(
        [d(""), f("x", 5), f("y", 5)],
        [d(""), f("x", 5), f("y", 6)],
        checksum=True,
        source_digest=unreadable,
    )
    assert Fail("x", "permission denied while hashing it", 4) in main
    assert any(isinstance(a, Copy) and a.name == "y" for a in main)


def test_deletes_only_with_delete_and_after_everything() -> None:
    dest = [*TREE, d("old"), f("old/1"), d("old/sub"), f("old/sub/2"), f("z")]
    main, later = plan(TREE, dest)
    assert kinds(main) == [] and later == []
    main, later = plan(TREE, dest, delete=True)
    assert not any(isinstance(a, Delete) for a in main)
    assert later == [
        Delete("old", d("old"), recursive=True, count=4),  # one request for the whole folder
        Delete("z", f("z"), recursive=False, count=1),
        SetAttrs("", "dir", 0o755, 1),  # the root's mtime, once its entries are gone
    ]


def test_the_root_is_never_deleted() -> None:
    """A source that could not be read is a Problem, never "nothing": the destination stays."""
    main, later = plan([Problem("", "no such file or directory", 2)], TREE, delete=True)
    assert main == [Fail("", "no such file or directory", 2)]
    assert later == []
    with pytest.raises(LocalProtocolError, match="empty"):  # a caller's bug, never "delete all"
        plan([], TREE, delete=True)


@pytest.mark.parametrize(
    "bad",
    [
        [d(""), f("../x")],
        [d(""), f("a//b")],
        [d(""), f("./x")],
        [d(""), f("/abs")],
        [f("x")],  # no root first
        [d(""), f("b"), f("a")],  # out of order
        [d(""), f("a"), f("a")],  # twice
        [d(""), d("a"), f("a.txt"), f("a/x")],  # a folder's content must follow it
        [d(""), f("a"), f("a/x")],  # nothing under a file
        [d(""), TreeEntry("p", "pipe")],
    ],
)
def test_a_bad_remote_listing_ends_the_plan(bad: list[TreeEntry]) -> None:
    with pytest.raises(RemoteProtocolError):
        plan(TREE, bad, delete=True)
    with pytest.raises(LocalProtocolError):
        plan(bad, TREE)  # the local side's fault: a bug, not the server's


def test_deletes_stay_inside_the_destination() -> None:
    dest = [d(""), d("x"), f("x/w"), d("x/y"), f("x/y/z")]
    _, later = plan([d("")], dest, delete=True)
    deletes = [a for a in later if isinstance(a, Delete)]
    assert deletes == [Delete("x", d("x"), recursive=True, count=4)]
    assert all(a.name and ".." not in a.name.split("/") for a in deletes)


def test_excluded_destination_entries_are_protected() -> None:
    excludes = Excludes(["*.log", "cache/"])
    dest = [
        d(""),
        d("cache"),
        f("cache/big"),
        d("gone"),
        f("gone/z"),
        f("keep.log"),
        d("old"),
        f("old/x.log"),
        f("old/y"),
    ]
    _, later = plan([d("")], filter_stream(dest, excludes), delete=True)
    assert [a for a in later if isinstance(a, Delete)] == [
        Delete("gone", d("gone"), recursive=True, count=2),
        Delete("old/y", f("old/y"), recursive=False, count=1),  # old/ stays for old/x.log
    ]


def test_an_excluded_source_entry_protects_the_destination() -> None:
    src = walk_like([d(""), Excluded("a.log", "file"), Excluded("tmp", "dir")])
    dest = [d(""), f("a.log"), d("tmp"), f("tmp/x")]
    main, later = plan(src, dest, delete=True)
    assert later == []
    assert Ignore("tmp", EXCLUDED, "dir") in main


def walk_like(records: list[Record]) -> Iterable[Record]:
    return iter(records)


def test_what_the_source_cannot_describe_is_never_deleted() -> None:
    src = [
        d(""),
        Problem("a", "permission denied while listing the folder", 4),
        Skipped("h", HARDLINK, "first"),
        Skipped("l", LINK_OUTSIDE, "/etc"),
    ]
    dest = [d(""), d("a"), f("a/1"), d("a/2"), f("h"), ln("l", "old")]
    main, later = plan(src, dest, delete=True)
    assert later == []
    assert Fail("a", "permission denied while listing the folder", 4) in main
    assert main == [Skip("", d("")), src[1], src[2], src[3]]  # Fail, Ignore, Ignore


class TestTypeChanges:
    def test_a_folder_in_the_way_fails_alone_without_delete(self) -> None:
        main, later = plan([d(""), f("x"), f("y")], [d(""), d("x"), f("x/keep")])
        assert Fail("x", "a folder is in the way (--delete replaces it)", 6) in main
        assert any(isinstance(a, Copy) and a.name == "y" for a in main)
        assert later == []

    def test_with_delete_the_folder_is_replaced_after_the_transfers(self) -> None:
        main, later = plan(
            [d(""), f("x"), ln("y", "x")],
            [d(""), d("x"), f("x/1"), d("y")],
            delete=True,
        )
        assert not any(a.name in ("x", "y") for a in main if not isinstance(a, SetAttrs))
        assert kinds(later) == [
            ("Delete", "x"),
            ("Copy", "x"),
            ("Delete", "y"),
            ("MakeLink", "y"),
            ("SetAttrs", ""),
        ]
        assert later[0] == Delete("x", d("x"), recursive=True, count=2)
        assert later[1] == Copy("x", f("x"), None, TYPE)

    def test_a_folder_holding_excluded_entries_is_not_replaced(self) -> None:
        dest = filter_stream([d(""), d("x"), f("x/1"), f("x/a.log")], Excludes(["*.log"]))
        main, later = plan([d(""), f("x")], dest, delete=True)
        assert later == []  # not even x/1: the entry fails alone, untouched
        assert [a.name for a in main if isinstance(a, Fail)] == ["x"]

    def test_the_root_is_never_replaced(self) -> None:
        main, later = plan([f("")], [d(""), f("a")], delete=True)
        assert main == [Fail("", "the destination is a folder", 6)]
        assert later == []

    @pytest.mark.parametrize(
        ("source", "dest", "action"),
        [
            (d("x"), f("x"), Mkdir("x", 0o755, 1, "file")),
            (d("x"), ln("x", "t"), Mkdir("x", 0o755, 1, "link")),
            (f("x"), ln("x", "t"), Copy("x", f("x"), ln("x", "t"), TYPE)),
            (ln("x", "t"), f("x"), MakeLink("x", "t", f("x"), 1)),
            (ln("x", "t"), ln("x", "u"), MakeLink("x", "t", ln("x", "u"), 1)),
            (ln("x", "t", 5), ln("x", "t"), MakeLink("x", "t", ln("x", "t"), 5)),
            (f("x"), TreeEntry("x", "other"), Copy("x", f("x"), TreeEntry("x", "other"), TYPE)),
        ],
    )
    def test_a_leaf_in_the_way_is_replaced_like_an_update(
        self, source: TreeEntry, dest: TreeEntry, action: Action
    ) -> None:
        main, later = plan([d(""), source], [d(""), dest])
        assert action in main
        assert later == []


def test_links_leaving_the_tree_from_a_remote_source_are_not_created() -> None:
    main, _ = plan(
        [d(""), ln("bad", "../../etc"), ln("ok", "sub/../x")],
        [d(""), f("bad")],
        remote="source",
        delete=True,
    )
    assert Ignore("bad", LINK_OUTSIDE, "../../etc") in main
    assert MakeLink("ok", "sub/../x", None, 1) in main
    assert not any(isinstance(a, Copy | MakeLink) and a.name == "bad" for a in main)
    # Never created, so it is in no folder's way either: the folder stays, no failure.
    main, later = plan([d(""), ln("x", "/abs")], [d(""), d("x"), f("x/1")], remote="source")
    assert main == [Skip("", d("")), Ignore("x", LINK_OUTSIDE, "/abs")]
    _, later = plan([d(""), ln("x", "/abs")], [d(""), d("x"), f("x/1")], delete=True)
    assert later == []


def test_folder_attributes_are_set_after_their_content_only_when_needed() -> None:
    same = [d(""), d("a", 0o700), f("a/x")]
    main, _ = plan(same, same)
    assert kinds(main) == []
    main, _ = plan([d(""), d("a", 0o700), f("a/x")], [d(""), d("a"), f("a/x")])
    assert kinds(main) == [("SetAttrs", "a")]
    main, later = plan(same, [*same, f("a/y")], delete=True)
    assert kinds(main) == []
    assert kinds(later) == [("Delete", "a/y"), ("SetAttrs", "a")]


def test_remote_listing_entries_are_accepted_as_they_come() -> None:
    """A listing's fluxproto Entry (no `target` until v2) needs no conversion by the caller."""
    dest = [d(""), Entry("a", "dir", 0, 1, 0o755), Entry("a/x", "file", 1, 1, 0o644)]
    main, _ = plan([d(""), d("a"), f("a/x")], dest)
    assert kinds(main) == []


def test_deferred_needs_the_first_phase_done() -> None:
    with TreePlan(TREE, []) as p, pytest.raises(RuntimeError):
        next(p.deferred())


def test_a_second_run_over_a_real_copy_moves_nothing(tmp_path: Path) -> None:
    """recv -r's shape: a local destination walk against a source with the same metadata."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"x" * 100)
    (src / "a" / "empty").mkdir()
    (src / "g").write_bytes(b"")
    os.symlink("a/b/f", src / "l")
    os.utime(src / "l", ns=(1, 987_654_321), follow_symlinks=False)
    os.utime(src / "a", ns=(1, 1_234_567_891))
    dst = tmp_path / "dst"
    shutil.copytree(src, dst, symlinks=True)  # copystat keeps nanosecond mtimes
    os.utime(dst / "a", ns=(1, 1_234_567_891))  # copytree sets a folder's times before its files
    os.utime(dst, ns=(1, src.stat().st_mtime_ns))
    main, later = plan(walk(str(src)), walk(str(dst), role="dest"), delete=True)
    assert [type(a) for a in main] == [Skip] * 7
    assert later == []
    # A link whose own mtime alone differs is made again, with its time.
    os.utime(dst / "l", ns=(1, 5), follow_symlinks=False)
    main, _ = plan(walk(str(src)), walk(str(dst), role="dest"), delete=True)
    assert kinds(main) == [("MakeLink", "l"), ("SetAttrs", "")]
    assert [a.mtime_ns for a in main if isinstance(a, MakeLink)] == [987_654_321]


def synthetic(dirs: int, files: int, *, dest: bool) -> Iterator[TreeEntry]:
    """A tree of dirs x files entries, made as it streams; the destination has every 7th file
    changed, every 10th one extra (to delete), and a folder of 5,000 more."""
    yield d("")
    for i in range(dirs):
        yield d(f"d{i:04d}")
        for j in range(files):
            yield f(f"d{i:04d}/f{j:04d}", 100, 2 if dest and j % 7 == 0 else 1)
            if dest and j % 10 == 9:
                yield f(f"d{i:04d}/f{j:04d}.old")
    if dest:
        yield d("zzz")
        for j in range(5000):
            yield f(f"zzz/{j:05d}")


def test_memory_stays_flat_in_the_number_of_files() -> None:
    """100,000 files against 115,001 destination entries, both streamed: the plan holds the
    open folders and a bounded spool buffer. Measured: ~0.4 MiB peak (tracemalloc), where a
    list of the destination entries alone takes ~18 MiB."""
    counts: dict[str, int] = {}
    tracemalloc.start()
    try:
        with TreePlan(
            synthetic(100, 1000, dest=False),
            synthetic(100, 1000, dest=True),
            PlanOptions(delete=True),
        ) as p:
            for action in itertools.chain(p.actions(), p.deferred()):
                counts[type(action).__name__] = counts.get(type(action).__name__, 0) + 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts == {"Skip": 85_801, "Copy": 14_300, "SetAttrs": 201, "Delete": 10_001}
    assert peak < 2 * 1024 * 1024, f"peak {peak / 1024:.0f} KiB"
