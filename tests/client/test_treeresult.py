"""fluxctl.treeresult: totals and errors of a tree run, its exit code, and its progress."""

from __future__ import annotations

import json

import pytest

from fluxctl.tree import HARDLINK, LINK_OUTSIDE, SPECIAL, TreeEntry
from fluxctl.treeactions import (
    EXCLUDED,
    NEW,
    Copy,
    Delete,
    Fail,
    Ignore,
    MakeLink,
    Mkdir,
    SetAttrs,
    Skip,
)
from fluxctl.treeresult import (
    EXIT_ORDER,
    MAX_ERRORS_LISTED,
    TreeProgress,
    TreeResult,
    worst_exit,
)


@pytest.mark.parametrize(
    ("codes", "worst"),
    [
        ([], 0),
        ([0, 0], 0),
        ([2], 2),
        ([2, 6], 6),  # a storage failure outranks a vanished local file
        ([6, 4], 4),  # a permission outranks storage
        ([4, 3], 3),  # corrupt data outranks everything per file
        ([3, 5], 5),  # the network ended the run: rerun it
        ([5, 1], 1),  # an internal or protocol error outranks all but Ctrl-C
        ([1, 130, 2], 130),
        ([2, 77], 77),  # an unknown code ranks as 1
    ],
)
def test_worst_exit(codes: list[int], worst: int) -> None:
    assert worst_exit(codes) == worst


def test_exit_order_covers_every_failure_code_of_the_readme() -> None:
    assert sorted(EXIT_ORDER) == [1, 2, 3, 4, 5, 6, 130]


def file(name: str, size: int) -> TreeEntry:
    return TreeEntry(name, "file", size)


def test_totals_and_json() -> None:
    result = TreeResult("send", "/backups/photos", transport="quic")
    plan = [
        Mkdir("", 0o755, 1),
        Skip("a", TreeEntry("a", "dir")),
        Copy("a/x", file("a/x", 100), None, NEW),
        Skip("a/y", file("a/y", 50)),
        Skip("l0", TreeEntry("l0", "link", target="a/y")),
        MakeLink("l", "a/x", None),
        SetAttrs("", "dir", 0o755, 1),
        Ignore("fifo", SPECIAL, "fifo"),
        Ignore("h", HARDLINK, "a/x"),
        Ignore("out", LINK_OUTSIDE, "/etc"),
        Ignore("tmp", EXCLUDED, "dir"),
        Fail("bad", "permission denied while reading it", 4),
    ]
    for action in plan:
        result.planned(action)
    result.done(plan[2], moved=100)
    result.done(Delete("old", TreeEntry("old", "dir"), recursive=True, count=3))
    result.fail("a/z", "no space left on device while writing it", 6)
    result.seconds = 1.25
    out = result.to_json()
    assert json.loads(json.dumps(out)) == {
        "ok": False,
        "op": "send",
        "path": "/backups/photos",
        "files": 2,
        "dirs": 2,
        "links": 2,
        "bytes": 150,
        "sent": 100,
        "skipped_files": 1,
        "deleted": 3,
        "ignored": 3,
        "links_outside": 1,
        "excluded": 1,
        "retries": 0,
        "seconds": 1.25,
        "transport": "quic",
        "errors": [
            {"path": "bad", "message": "permission denied while reading it", "exit_code": 4},
            {"path": "a/z", "message": "no space left on device while writing it", "exit_code": 6},
        ],
        "exit_code": 4,
    }
    assert result.exit_code == 4
    assert "2 failed" in result.summary()


def test_a_clean_run() -> None:
    result = TreeResult("recv", "/p")
    result.planned(Skip("", TreeEntry("", "dir")))
    out = result.to_json()
    assert out["ok"] is True and "exit_code" not in out and out["received"] == 0
    assert result.exit_code == 0


def test_errors_listed_are_bounded_but_all_counted() -> None:
    result = TreeResult("send", "/p")
    for i in range(MAX_ERRORS_LISTED + 5):
        result.fail(f"f{i}", "gone", 2)
    result.fail("x", "corrupt", 3)
    out = result.to_json()
    assert len(out["errors"]) == MAX_ERRORS_LISTED
    assert out["errors_not_listed"] == 6
    assert out["exit_code"] == 3  # the worst counts even when not listed


def test_error_paths_are_printable() -> None:
    result = TreeResult("send", "/p")
    result.fail("bad\udcff\n", "the name is not valid UTF-8", 4)
    (error,) = result.errors
    assert error.line() == "bad\\xff\\u000a: the name is not valid UTF-8"
    assert result.to_json()["errors"][0]["path"] == "bad\\xff\\u000a"


def test_progress_totals_rate_and_eta() -> None:
    progress = TreeProgress(now=100.0)
    progress.planned(Copy("a", file("a", 1000), None, NEW))
    progress.planned(Skip("b", file("b", 10**9)))  # unchanged: not part of the work
    view = progress.view(100.0)
    assert (view.files_total, view.bytes_total, view.eta, view.complete) == (1, 1000, None, False)
    progress.planned(Copy("c", file("c", 3000), None, NEW))
    progress.plan_complete()
    progress.moved(1000, now=101.0)
    progress.file_done(now=101.0)
    view = progress.view(102.0)
    assert (view.files_done, view.files_total) == (1, 2)
    assert (view.bytes_done, view.bytes_total) == (1000, 4000)
    assert view.rate == pytest.approx(500.0)  # 1000 bytes over 2 s
    assert view.eta == pytest.approx(6.0)  # 3000 bytes left at 500 B/s


def test_progress_rate_follows_the_recent_past() -> None:
    progress = TreeProgress(now=0.0)
    progress.planned(Copy("a", file("a", 10**9), None, NEW))
    progress.plan_complete()
    for second in range(1, 61):  # 1 MB/s for a minute ...
        progress.moved(10**6, now=float(second))
    for second in range(61, 71):  # ... then 10 MB/s
        progress.moved(10**7, now=float(second))
    assert progress.view(70.0).rate == pytest.approx(10**7, rel=0.25)
    assert len(progress._samples) < 60  # bounded history
