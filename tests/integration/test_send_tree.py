"""`fluxctl send -r` against a real daemon (README, "Folders"): what a copy keeps and leaves
out, where it goes, what a second run moves, --delete, -n, --exclude, --checksum, -L, a run
killed with SIGKILL and run again, names the server refuses; `ls -r` and `rm -r`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fluxctl import treesend
from fluxctl.treerun import TreeOptions, TreeView
from fluxctl.url import FluxURL

from .conftest import Daemon, Fluxctl, wait_for
from .test_interrupt import slow_daemon
from .test_resume import server_held
from .test_v2 import options

MTIME = 1_600_000_000_123_456_789
TCP = ("--transport", "tcp")

Snapshot = dict[str, tuple[Any, ...]]


def write(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int = MTIME) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def make_tree(root: Path) -> None:
    """Nested and empty folders with their own modes and mtimes, files, links that stay in the
    tree and links that leave it, a fifo and a second name of a file."""
    write(root / "a" / "f.txt", b"hello", 0o600, MTIME + 1)
    write(root / "a" / "b" / "deep.bin", os.urandom(100_000), 0o640, MTIME + 2)
    write(root / "top.txt", b"top", 0o644, MTIME + 3)
    write(root / "a" / "b" / "empty.txt", b"", 0o444, MTIME + 4)
    (root / "empty").mkdir()
    os.symlink("f.txt", root / "a" / "link")
    os.symlink("../top.txt", root / "a" / "up")
    for link, mtime in (("link", 10), ("up", 11)):  # a link's own time
        os.utime(root / "a" / link, ns=(MTIME + mtime, MTIME + mtime), follow_symlinks=False)
    os.symlink("/etc/hostname", root / "abs")  # leaves the tree
    os.symlink("../../x", root / "a" / "escape")  # leaves it by climbing
    os.mkfifo(root / "fifo")
    os.link(root / "top.txt", root / "zz-second-name")
    for folder, mode, mtime in ((root / "a" / "b", 0o700, 5), (root / "a", 0o750, 6)):
        folder.chmod(mode)
        os.utime(folder, ns=(MTIME + mtime, MTIME + mtime))
    (root / "empty").chmod(0o755)
    os.utime(root / "empty", ns=(MTIME + 7, MTIME + 7))
    os.utime(root, ns=(MTIME + 8, MTIME + 8))


#: What make_tree's copy leaves out, and its counts.
LEFT_OUT = {"abs", "a/escape", "fifo", "zz-second-name"}
FILES, DIRS, LINKS = 4, 4, 2


def snapshot(root: Path) -> Snapshot:
    """Every entry under `root` (itself as ""): kind, mode, size, mtime (a link's own), link
    text, content digest."""
    out: Snapshot = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        rel = path.relative_to(root).as_posix() if path != root else ""
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
        else:
            out[rel] = ("other",)
    return out


def expected(src: Path, left_out: set[str] = LEFT_OUT) -> Snapshot:
    return {k: v for k, v in snapshot(src).items() if k not in left_out}


def uploads(d: Daemon) -> int:
    return sum(r["op"] == "upload" for r in d.events("access"))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(root)
    return root


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_a_tree_makes_a_round_trip_and_an_unchanged_rerun_moves_nothing(
    daemon: Daemon, fluxctl: Fluxctl, src: Path, transport: str
) -> None:
    res = fluxctl("send", "-r", str(src), daemon.url("/dst"), "--json", "--transport", transport)
    assert res.code == 0, res.stderr
    out = res.json
    assert (out["files"], out["dirs"], out["links"]) == (FILES, DIRS, LINKS)
    assert (out["ignored"], out["links_outside"], out["skipped_files"]) == (4, 2, 0)
    assert out["sent"] == out["bytes"] == 5 + 100_000 + 3 and out["errors"] == []
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "fluxctl: warning: a/escape -> ../../x leads out of the tree: not created",
        "fluxctl: warning: abs -> /etc/hostname leads out of the tree: not created",
    ]
    assert snapshot(daemon.root / "dst") == expected(src)

    wait_for(lambda: uploads(daemon) == FILES, what="the first run's uploads in the log")
    again = fluxctl("send", "-r", str(src), daemon.url("/dst"), "--json", "--transport", transport)
    assert again.code == 0, again.stderr
    assert (again.json["sent"], again.json["skipped_files"]) == (0, FILES)
    assert uploads(daemon) == FILES
    assert snapshot(daemon.root / "dst") == expected(src)

    # A link whose own mtime alone changed is made again with it (its folder's time kept).
    os.utime(src / "a" / "link", ns=(MTIME + 99, MTIME + 99), follow_symlinks=False)
    third = fluxctl("send", "-r", str(src), daemon.url("/dst"), "--json", "--transport", transport)
    assert third.code == 0, third.stderr
    assert (third.json["sent"], third.json["skipped_files"]) == (0, FILES)
    assert snapshot(daemon.root / "dst") == expected(src)


def test_minus_L_sends_what_links_point_to(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    write(outside, b"from outside")
    src = tmp_path / "src"
    write(src / "real.txt", b"real")
    os.symlink("real.txt", src / "inside")
    os.symlink(str(outside), src / "abs")
    os.symlink(".", src / "loop")
    res = fluxctl("send", "-r", "-L", str(src), daemon.url("/dst"), "--json", *TCP)
    assert res.code == 0, res.stderr
    dst = daemon.root / "dst"
    assert (dst / "inside").read_bytes() == b"real" and not (dst / "inside").is_symlink()
    assert (dst / "abs").read_bytes() == b"from outside"
    assert not (dst / "loop").exists()
    assert (res.json["links"], res.json["files"], res.json["ignored"]) == (0, 3, 1)


@pytest.mark.parametrize(
    ("sources", "dest", "lands"),
    [
        (["p"], "/backup", {"p": "backup"}),
        (["p/"], "/backup", {"p": "backup"}),
        (["p"], "/backup/", {"p": "backup/p"}),
        (["p/"], "/backup/", {"p": "backup"}),
        (["p", "q"], "/backup/", {"p": "backup/p", "q": "backup/q"}),
    ],
)
def test_the_text_of_the_arguments_says_where_copies_go(
    daemon: Daemon,
    fluxctl: Fluxctl,
    tmp_path: Path,
    sources: list[str],
    dest: str,
    lands: dict[str, str],
) -> None:
    for name in ("p", "q"):
        write(tmp_path / name / f"{name}.txt", name.encode())
    args = [os.path.join(str(tmp_path), s) for s in sources]
    for _ in range(2):  # the same command twice writes to the same place (not backup/p/p)
        res = fluxctl("send", "-r", *args, daemon.url(dest), *TCP)
        assert res.code == 0, res.stderr
    for name, where in lands.items():
        assert snapshot(daemon.root / where) == snapshot(tmp_path / name)
    assert not (daemon.root / "backup" / "p" / "p").exists()


def test_several_sources_need_a_destination_ending_in_a_slash(
    daemon: Daemon, fluxctl: Fluxctl, src: Path
) -> None:
    res = fluxctl("send", "-r", str(src), str(src / "a"), daemon.url("/dst"), *TCP)
    assert res.code == 2
    assert "need a destination folder ending in '/'" in res.stderr
    plain = fluxctl("send", str(src), daemon.url("/dst"), *TCP)
    assert plain.code == 2
    assert plain.stderr.strip() == f"fluxctl: {src} is a directory (use -r)"
    assert not (daemon.root / "dst").exists()


def test_changed_files_are_sent_again_and_checksum_sees_a_same_size_same_mtime_change(
    daemon: Daemon, fluxctl: Fluxctl, src: Path
) -> None:
    url = daemon.url("/dst")
    assert fluxctl("send", "-r", str(src), url, *TCP).code == 0
    write(src / "top.txt", b"longer now", 0o644, MTIME + 3)  # size
    write(src / "a" / "f.txt", b"hello", 0o600, MTIME + 100)  # mtime only
    res = fluxctl("send", "-r", str(src), url, "--json", *TCP)
    assert res.code == 0, res.stderr
    assert (res.json["sent"], res.json["skipped_files"]) == (10 + 5, FILES - 2)
    assert snapshot(daemon.root / "dst") == expected(src)

    write(src / "a" / "f.txt", b"HELLO", 0o600, MTIME + 100)  # same size, same mtime
    quick = fluxctl("send", "-r", str(src), url, "--json", *TCP)
    assert (quick.code, quick.json["sent"]) == (0, 0)
    assert (daemon.root / "dst" / "a" / "f.txt").read_bytes() == b"hello"
    checked = fluxctl("send", "-r", "--checksum", str(src), url, "--json", *TCP)
    assert checked.code == 0, checked.stderr
    assert (checked.json["sent"], checked.json["skipped_files"]) == (5, FILES - 1)
    assert snapshot(daemon.root / "dst") == expected(src)
    # Only --checksum asked the server for digests (a manifest read per file); the quick
    # check's listings went without. (The first run found no /dst, so it listed nothing.)
    wait_for(lambda: len(listings(daemon)) == 3, what="the reruns' listings in the log")
    assert [r.get("digests", False) for r in listings(daemon)] == [False, False, True]


def listings(d: Daemon) -> list[dict[str, Any]]:
    """The access records of recursive LISTs, in order."""
    return [r for r in d.events("access") if r["op"] == "list" and r.get("recursive")]


def extras(daemon: Daemon) -> None:
    """Entries in /dst the source does not have, and neighbours outside it."""
    write(daemon.root / "dst" / "old.txt", b"old")
    write(daemon.root / "dst" / "gone" / "deeper" / "x.txt", b"x")
    write(daemon.root / "dst" / "keep.log", b"log")
    write(daemon.root / "dst-sibling" / "s.txt", b"s")
    write(daemon.root / "other.txt", b"o")


def test_delete_removes_what_the_source_lacks_and_nothing_outside(
    daemon: Daemon, fluxctl: Fluxctl, src: Path
) -> None:
    extras(daemon)
    res = fluxctl("send", "-r", "--delete", str(src), daemon.url("/dst"), "--json", *TCP)
    assert res.code == 0, res.stderr
    assert res.json["deleted"] == 5  # old.txt, keep.log, gone, gone/deeper, gone/deeper/x.txt
    assert snapshot(daemon.root / "dst") == expected(src)
    assert (daemon.root / "dst-sibling" / "s.txt").read_bytes() == b"s"
    assert (daemon.root / "other.txt").read_bytes() == b"o"


def test_excluded_entries_are_neither_sent_nor_deleted(
    daemon: Daemon, fluxctl: Fluxctl, src: Path
) -> None:
    extras(daemon)
    write(src / "build" / "out.o", b"o")
    write(src / "a" / "debug.log", b"log")
    args = ("--exclude", "*.log", "--exclude", "/build", "--delete", "--json", *TCP)
    res = fluxctl("send", "-r", str(src), daemon.url("/dst"), *args)
    assert res.code == 0, res.stderr
    assert res.json["excluded"] == 2
    dst = daemon.root / "dst"
    assert (dst / "keep.log").read_bytes() == b"log"  # excluded: never deleted
    assert not (dst / "build").exists() and not (dst / "a" / "debug.log").exists()
    assert not (dst / "old.txt").exists()


def test_dry_run_prints_the_plan_and_changes_nothing(
    daemon: Daemon, fluxctl: Fluxctl, src: Path
) -> None:
    extras(daemon)
    before = snapshot(daemon.root)
    res = fluxctl("send", "-r", "-n", "--delete", str(src), daemon.url("/dst"), *TCP)
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    for line in ("mkdir a/", "send a/f.txt", "link a/link -> f.txt", "delete old.txt"):
        assert line in lines
    assert lines.index("send a/f.txt") < lines.index("delete old.txt")
    assert lines[-1].endswith("(dry run: nothing changed)")
    assert snapshot(daemon.root) == before
    verbose = fluxctl("send", "-r", "-n", "-v", str(src), daemon.url("/dst"), *TCP)
    assert "ignore fifo (special: fifo)" in verbose.stdout.splitlines()
    assert "ignore zz-second-name (hardlink: top.txt)" in verbose.stdout.splitlines()


def test_deletes_wait_for_every_transfer(
    daemon: Daemon, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the library: the first DELETE starts only after the last upload finished."""
    extras(daemon)
    events: list[str] = []
    upload, delete = treesend._SendRoot._send_file, treesend._SendRoot._delete

    async def logged_upload(self: treesend._SendRoot, name: str, local: str) -> None:
        await upload(self, name, local)
        events.append("uploaded")

    async def logged_delete(self: treesend._SendRoot, name: str, *, recursive: bool) -> int:
        events.append("delete")
        return await delete(self, name, recursive=recursive)

    monkeypatch.setattr(treesend._SendRoot, "_send_file", logged_upload)
    monkeypatch.setattr(treesend._SendRoot, "_delete", logged_delete)
    url = FluxURL("127.0.0.1", daemon.port, "/dst")
    view = TreeView(quiet=True)
    tree = TreeOptions(delete=True)
    result = uvloop.run(treesend.send_tree([str(src)], url, options(daemon, "tcp"), tree, view))
    assert result.exit_code == 0 and result.deleted == 5
    assert events.count("uploaded") == FILES and "delete" in events
    assert events.index("delete") > max(i for i, e in enumerate(events) if e == "uploaded")


HOSTILE = ["new\nline", "back\\slash", "%2e%2e", "bell\x07"]


def test_names_the_server_refuses_fail_alone(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "good.txt", b"good")
    write(src / "sub" / "fine.txt", b"fine")
    for name in HOSTILE:
        write(src / "sub" / name, b"bad")
    with open(os.fsencode(src / "sub") + b"/not-utf8-\xff", "wb") as f:
        f.write(b"bad")
    res = fluxctl("send", "-r", str(src), daemon.url("/dst"), "--json", *TCP)
    assert res.code == 4, res.stderr
    assert res.json["exit_code"] == 4 and len(res.json["errors"]) == len(HOSTILE) + 1
    assert all(e["exit_code"] == 4 for e in res.json["errors"])
    refused = [line for line in res.stderr.splitlines() if "server would refuse" in line]
    assert len(refused) == len(HOSTILE)  # one line each
    assert "fluxctl: sub/not-utf8-\\xff: the name is not valid UTF-8" in res.stderr
    assert sorted(p.name for p in (daemon.root / "dst").rglob("*")) == [
        "fine.txt",
        "good.txt",
        "sub",
    ]


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_a_tree_send_killed_mid_file_completes_when_run_again(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    tmp_path: Path,
    transport: str,
) -> None:
    d = slow_daemon(make_daemon, tmp_path)
    src = tmp_path / "src"
    big_tree(src)
    args = ("send", "-r", str(src), d.url("/dst"), "--chunk-size", "1M", "--transport", transport)
    sender = fluxctl.spawn(*args)
    wait_for(lambda: server_held(d) >= 6, 60, "a quarter of the big file on the server")
    sender.send_signal(signal.SIGKILL)
    sender.communicate(timeout=60)
    assert sender.returncode == -signal.SIGKILL
    assert not (d.root / "dst" / "m-big.bin").exists()

    rerun = fluxctl(*args, "--json")
    assert rerun.code == 0, rerun.stderr
    assert rerun.json["sent"] <= 24 * 1024 * 1024 - 4 * 1024 * 1024 + 60_000
    assert rerun.json["skipped_files"] >= 20
    assert snapshot(d.root / "dst") == snapshot(src)


def test_ls_r_lists_a_tree_and_rm_r_deletes_it(daemon: Daemon, fluxctl: Fluxctl, src: Path) -> None:
    assert fluxctl("send", "-r", str(src), daemon.url("/dst"), *TCP).code == 0
    listed = fluxctl("ls", "-r", daemon.url("/dst"), *TCP)
    assert listed.code == 0, listed.stderr
    names = [line.split(maxsplit=4)[-1] for line in listed.stdout.splitlines()]
    assert "a/b/deep.bin" in names and "a/link -> f.txt" in names and "empty/" in names
    entries = fluxctl("ls", "-r", daemon.url("/dst"), "--json", *TCP).json["entries"]
    assert {e["name"] for e in entries} == set(expected(src)) - {""}

    folder = fluxctl("rm", daemon.url("/dst"), *TCP)
    assert folder.code == 6 and folder.stderr.rstrip().endswith("(use -r)")
    root = fluxctl("rm", "-r", daemon.url("/"), *TCP)
    assert root.code == 2 and "root" in root.stderr
    gone = fluxctl("rm", "-r", daemon.url("/dst"), "--json", *TCP)
    assert gone.code == 0, gone.stderr
    assert gone.json["deleted"] == len(expected(src))
    assert not (daemon.root / "dst").exists()


def big_tree(src: Path) -> None:
    """Small files around a 24 MiB one (the slow daemon takes seconds over it)."""
    for i in range(20):
        write(src / "small" / f"{i:02}.txt", os.urandom(1000 + i))
    write(src / "m-big.bin", os.urandom(24 * 1024 * 1024))
    for i in range(20):
        write(src / "z" / f"{i:02}.txt", os.urandom(2000 + i))


def test_a_daemon_restart_mid_tree_is_retried_and_the_tree_completes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    d = slow_daemon(make_daemon, tmp_path)
    src = tmp_path / "src"
    big_tree(src)
    args = ("send", "-r", str(src), d.url("/dst"), "--chunk-size", "1M", *TCP)
    sender = fluxctl.spawn(*args)
    wait_for(lambda: server_held(d) >= 6, 60, "a quarter of the big file on the server")
    d.restart()
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert "retrying in" in err
    again = fluxctl(*args, "--json")
    assert again.code == 0 and again.json["sent"] == 0  # the tree was complete
    assert snapshot(d.root / "dst") == snapshot(src)

    # Once more, with --json: the reconnect is counted, not said.
    args = ("send", "-r", str(src), d.url("/dst2"), "--chunk-size", "1M", "--json", *TCP)
    sender = fluxctl.spawn(*args)
    wait_for(lambda: server_held(d) >= 6, 60, "a quarter of the big file on the server")
    d.restart()
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert "retrying in" not in err
    result = json.loads(out)
    assert result["retries"] >= 1 and result["files"] == 41 and result["errors"] == []
    assert result["skipped_files"] == 0  # what an attempt sent counts as sent, not unchanged
    assert snapshot(d.root / "dst2") == snapshot(src)


def test_ctrl_c_mid_tree_is_one_line_and_the_rerun_completes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    d = slow_daemon(make_daemon, tmp_path)
    src = tmp_path / "src"
    big_tree(src)
    args = ("send", "-r", str(src), d.url("/dst"), "--chunk-size", "1M", *TCP)
    sender = fluxctl.spawn(*args, "--progress")
    wait_for(lambda: server_held(d) >= 6, 60, "a quarter of the big file on the server")
    sender.send_signal(signal.SIGINT)
    _, err = sender.communicate(timeout=60)
    assert sender.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("fluxctl:")]
    assert lines[-1] == "fluxctl: interrupted; run the same command again to resume", err
    assert "Traceback" not in err
    assert fluxctl(*args).code == 0
    assert snapshot(d.root / "dst") == snapshot(src)


def test_entries_of_another_kind_are_replaced_and_a_folder_only_with_delete(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "a" / "in.txt", b"in")  # a folder where the server has a file
    write(src / "f", b"file")  # a file where the server has a link
    os.symlink("f", src / "l")  # a link where the server has a file
    write(src / "d", b"was a folder")  # a file where the server has a folder
    dst = daemon.root / "dst"
    write(dst / "a", b"a file")
    write(dst / "target", b"the link's target")
    os.symlink("target", dst / "f")
    write(dst / "l", b"a file")
    write(dst / "d" / "inside.txt", b"x")
    url = daemon.url("/dst")
    res = fluxctl("send", "-r", str(src), url, "--json", *TCP)
    assert res.code == 6, res.stderr
    assert [e["path"] for e in res.json["errors"]] == ["d"]
    assert "a folder is in the way (--delete replaces it)" in res.stderr
    assert (dst / "d" / "inside.txt").read_bytes() == b"x"
    assert (dst / "target").read_bytes() == b"the link's target"  # not written through
    assert (dst / "f").read_bytes() == b"file" and not (dst / "f").is_symlink()
    assert os.readlink(dst / "l") == "f" and (dst / "a" / "in.txt").read_bytes() == b"in"

    replaced = fluxctl("send", "-r", "--delete", str(src), url, "--json", *TCP)
    assert replaced.code == 0, replaced.stderr
    assert snapshot(dst) == snapshot(src)


def test_files_of_several_chunks_go_a_few_at_a_time(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reads ahead its own buffers: BIG_FILES at once, while small files go many at once."""
    src = tmp_path / "src"
    for i in range(12):
        write(src / f"big{i:02}", os.urandom(3 * 64 * 1024))  # 3 chunks of 64 KiB (test_v2.CS)
        write(src / f"small{i:02}", os.urandom(100))
    running = {"big": 0, "small": 0}
    most = {"big": 0, "small": 0}
    send_file = treesend._SendRoot._send_file

    async def counted(self: treesend._SendRoot, name: str, local: str) -> None:
        kind = "big" if name.startswith("big") else "small"
        running[kind] += 1
        most[kind] = max(most[kind], running[kind])
        try:
            await send_file(self, name, local)
        finally:
            running[kind] -= 1

    monkeypatch.setattr(treesend._SendRoot, "_send_file", counted)
    url = FluxURL("127.0.0.1", daemon.port, "/dst")
    view = TreeView(quiet=True)
    result = uvloop.run(
        treesend.send_tree([str(src)], url, options(daemon, "tcp"), TreeOptions(), view)
    )
    assert result.exit_code == 0 and result.files == 24
    assert most["big"] == treesend.BIG_FILES
    assert most["small"] > treesend.BIG_FILES
    assert snapshot(daemon.root / "dst") == snapshot(src)
