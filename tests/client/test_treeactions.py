"""fluxctl.treeactions: the spool of deferred actions and the --dry-run lines."""

from __future__ import annotations

import os

from fluxctl.tree import HARDLINK, LINK_OUTSIDE, SPECIAL, TreeEntry
from fluxctl.treeactions import (
    EXCLUDED,
    NEW,
    SIZE,
    TYPE,
    Copy,
    Delete,
    Fail,
    Ignore,
    MakeLink,
    Mkdir,
    SetAttrs,
    Skip,
    Spool,
    dry_run_lines,
)
from fluxctl.treeplan import PlanOptions, TreePlan

BAD = os.fsdecode(b"bad\xff")  # a local name that is not UTF-8, as a recv destination has


def test_the_spool_gives_back_what_it_kept_in_order() -> None:
    entry = TreeEntry(BAD, "file", 3, 1_600_000_000_123_456_789, 0o600, None, b"d" * 16, "nfd")
    actions = [
        Delete(BAD, entry, recursive=False, count=1),
        Copy("x", entry, None, TYPE),
        MakeLink("l", "../x", None, 1_600_000_000_123_456_789),
        SetAttrs("", "dir", 0o755, 5),
    ]
    spool = Spool()
    for action in actions:
        spool.write(action)
    assert list(spool.replay()) == actions
    spool.close()


def test_the_spool_takes_back_a_folders_content() -> None:
    spool = Spool()
    spool.write(Delete("a", TreeEntry("a", "file"), recursive=False, count=1))
    mark = spool.tell()
    for i in range(10_000):  # past the in-memory size: on disk, still truncatable
        spool.write(Delete(f"d/{i}", TreeEntry(f"d/{i}", "file"), recursive=False, count=1))
    spool.truncate(mark)
    spool.write(Delete("d", TreeEntry("d", "dir"), recursive=True, count=10_001))
    assert [a.name for a in spool.replay()] == ["a", "d"]
    spool.close()


ACTIONS = [
    Mkdir("", 0o755, 1),
    Mkdir("a", 0o755, 1),
    Mkdir("b", 0o700, 1, replace="file"),
    Copy("a/b.txt", TreeEntry("a/b.txt", "file"), None, NEW),
    Copy("a/c.txt", TreeEntry("a/c.txt", "file"), TreeEntry("a/c.txt", "file"), SIZE),
    Skip("a/same", TreeEntry("a/same", "file")),
    Skip("a", TreeEntry("a", "dir")),
    MakeLink("a/l", "../x", None, 1_600_000_000_123_456_789),
    SetAttrs("a", "dir", 0o750, 1),
    Ignore("fifo", SPECIAL, "fifo"),
    Ignore("h", HARDLINK, "a/b.txt"),
    Ignore("out", LINK_OUTSIDE, "/etc"),
    Ignore("tmp", EXCLUDED, "dir"),
    Fail("bad", "permission denied while reading it", 4),
    Delete("old.txt", TreeEntry("old.txt", "file"), recursive=False, count=1),
    Delete("old", TreeEntry("old", "dir"), recursive=True, count=12),
    Delete(BAD, TreeEntry(BAD, "file"), recursive=False, count=1),
]


def test_dry_run_lines() -> None:
    assert list(dry_run_lines(ACTIONS)) == [
        "mkdir ./",
        "mkdir a/",
        "mkdir b/ (replaces a file)",
        "send a/b.txt",
        "send a/c.txt",
        "link a/l -> ../x",
        "delete old.txt",
        "delete old/",
        "delete bad\\xff",
    ]


def test_dry_run_lines_verbose() -> None:
    assert list(dry_run_lines(ACTIONS, verbose=True, verb="recv")) == [
        "mkdir ./",
        "mkdir a/",
        "mkdir b/ (replaces a file)",
        "recv a/b.txt (new)",
        "recv a/c.txt (size)",
        "skip a/same",
        "skip a/",
        "link a/l -> ../x",
        "attrs a/ (0750)",
        "ignore fifo (special: fifo)",
        "ignore h (hardlink: a/b.txt)",
        "ignore out -> /etc (leaves the tree)",
        "ignore tmp (excluded: dir)",
        "delete old.txt",
        "delete old/ (12 entries)",
        "delete bad\\xff",
    ]


def test_a_dry_run_is_the_plan_rendered() -> None:
    """Planning reads metadata only: a dry run is the plan's lines and nothing else."""
    source = [TreeEntry("", "dir"), TreeEntry("new", "file")]
    dest = [TreeEntry("", "dir"), TreeEntry("old", "file")]

    with TreePlan(source, dest, PlanOptions(delete=True)) as plan:
        lines = list(dry_run_lines(plan.actions()))
        lines += dry_run_lines(plan.deferred())
    assert lines == ["send new", "delete old"]
