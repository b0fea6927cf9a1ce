"""fluxctl.treerun: where a tree run's lines go, and the options the planner gets."""

from __future__ import annotations

import io

from fluxctl.clitree import TreeFlags
from fluxctl.tree import LINK_OUTSIDE, SPECIAL, Problem, Skipped, TreeEntry
from fluxctl.treeactions import Copy, Mkdir, Skip
from fluxctl.treeresult import TreeResult
from fluxctl.treerun import TreeOptions, TreeReport, TreeView
from fluxproto import ConnectionLost

FILE = TreeEntry("a/f", "file", 10, 1, 0o644)
ACTIONS = [
    Mkdir("a", 0o755, 1),
    Copy("a/f", FILE, None, "new"),
    Skip("a/g", FILE),
    Skipped("fifo", SPECIAL, "fifo"),
    Skipped("out", LINK_OUTSIDE, "/etc/passwd"),
    Problem("bad\nname", "the server would refuse it", 4),
]


def view(**options: object) -> tuple[TreeView, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return TreeView(out=out, err=err, clock=lambda: 0.0, **options), out, err  # type: ignore[arg-type]


WARNING = "fluxctl: warning: out -> /etc/passwd leads out of the tree: not created"
FAILED = "fluxctl: bad\\u000aname: the server would refuse it"


def test_a_plain_run_prints_only_warnings_and_failures() -> None:
    v, out, err = view()
    for action in ACTIONS:
        v.planned(action)
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [WARNING, FAILED]


def test_dry_run_prints_the_changes_and_verbose_the_rest() -> None:
    v, out, _ = view(dry_run=True)
    for action in ACTIONS:
        v.planned(action)
    assert out.getvalue().splitlines() == ["mkdir a/", "send a/f"]
    v, out, _ = view(verbose=True, verb="recv")
    for action in ACTIONS:
        v.planned(action)
    assert out.getvalue().splitlines() == [
        "mkdir a/",
        "recv a/f (new)",
        "skip a/g",
        "ignore fifo (special: fifo)",
        "ignore out -> /etc/passwd (leaves the tree)",
    ]


def test_with_json_the_lines_go_to_stderr_and_quiet_keeps_only_failures() -> None:
    v, out, err = view(dry_run=True, json=True)
    v.planned(ACTIONS[0])
    assert (out.getvalue(), err.getvalue()) == ("", "mkdir a/\n")
    v, out, err = view(quiet=True)
    for action in ACTIONS:
        v.planned(action)
    assert (out.getvalue(), err.getvalue()) == ("", FAILED + "\n")


def test_a_retried_attempt_does_not_repeat_its_warnings_and_failures() -> None:
    v, _, err = view()
    for _ in range(2):
        v.restart()
        for action in ACTIONS:
            v.planned(action)
    v.retrying(ConnectionLost("the server closed the connection"), 0.5)
    assert err.getvalue().splitlines() == [
        WARNING,
        FAILED,
        "fluxctl: the server closed the connection; retrying in 0.5 s",
    ]


def test_progress_counts_the_transfers_and_the_report_feeds_result_and_view() -> None:
    v, _, _ = view()
    report = TreeReport(TreeResult("send", "/x"), v)
    for action in ACTIONS:
        report.planned(action)
    report.done(ACTIONS[1], moved=10)
    v.moved(10)
    v.file_done()
    report.failed("a/h", "vanished", 2)
    assert (v.progress.files_total, v.progress.bytes_total, v.progress.files_done) == (1, 10, 1)
    assert report.transferred == 1
    r = report.result
    assert (r.files, r.dirs, r.moved, r.skipped_files, r.ignored, r.links_outside) == (
        2,
        1,
        10,
        1,
        2,
        1,
    )
    assert (r.error_count, r.exit_code) == (2, 4)


def test_the_planner_hashes_the_local_side_for_checksum() -> None:
    def digest(entry: TreeEntry) -> bytes:
        return b"x" * 16

    send = TreeOptions(checksum=True, delete=True).plan_options("dest", digest)
    assert (send.checksum, send.delete, send.remote) == (True, True, "dest")
    assert send.source_digest is digest and send.dest_digest(FILE) is None
    recv = TreeOptions(checksum=True).plan_options("source", digest)
    assert recv.dest_digest is digest and recv.source_digest(FILE) is None


def test_with_json_a_reconnect_is_counted_not_said() -> None:
    v, out, err = view(json=True)
    v.retrying(ConnectionLost("the server closed the connection"), 0.5)
    assert (out.getvalue(), err.getvalue()) == ("", "")


def test_tree_flags_without_r_are_a_usage_error_that_names_them() -> None:
    def flags(recursive: bool = False, **given: object) -> TreeFlags:
        base: dict[str, object] = {
            "dereference": False,
            "delete": False,
            "dry_run": False,
            "exclude": None,
            "checksum": False,
            "verbose": False,
        }
        return TreeFlags(recursive, **{**base, **given})  # type: ignore[arg-type]

    assert flags().usage() is None
    assert flags(True, delete=True, exclude=["*.o"]).usage() is None
    assert flags(delete=True).usage() == "--delete applies to folders only: add -r"
    assert (
        flags(dry_run=True, exclude=["x"]).usage() == "-n, --exclude apply to folders only: add -r"
    )
    options = flags(True, dereference=True, exclude=["a", "b"], verbose=True).options()
    assert options == TreeOptions(follow_links=True, excludes=("a", "b"), verbose=True)
