"""`fluxctl recv -r` against a real daemon, over TCP and QUIC: a tree round trip (nested and
empty folders, modes, mtimes to the nanosecond, links), the trailing-slash rules, reruns that
move nothing, --checksum, --delete, -n, --exclude, a run killed with SIGKILL and run again, and
a local folder that cannot be written."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, Fluxctl, Result, wait_for
from .proxy import Proxy

NS = 1_600_000_000_123_456_789
BIG = 3 * 1024 * 1024 + 17  # several chunks at --chunk-size 1M, many at 64K


def put(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int = NS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def build(top: Path, seed: int = 1) -> int:
    """A tree under `top` (written into the daemon's root): nested and empty folders, odd
    modes and mtimes, an empty file, links inside and one leading out of the tree. Returns
    the bytes of its files."""
    rng = random.Random(seed)
    files = {
        "a/b/c/deep.bin": rng.randbytes(70_000),
        "a/b/f.txt": b"hello\n",
        "a/zero": b"",
        "top.bin": rng.randbytes(BIG),
        "日本/файл.txt": "κείμενο".encode(),
    }
    for i, (name, data) in enumerate(sorted(files.items())):
        put(top / name, data, 0o600 if i % 2 else 0o644, NS + i)
    (top / "empty").mkdir()
    (top / "a/l").symlink_to("b/f.txt")
    (top / "a/b/up").symlink_to("../../top.bin")  # climbs, but stays in the tree
    (top / "out").symlink_to("../elsewhere")  # inside the daemon's root, not in the tree
    for link, mtime in (("a/l", NS + 30), ("a/b/up", NS + 31)):  # a link's own time
        os.utime(top / link, ns=(mtime, mtime), follow_symlinks=False)
    for folder, mode, mtime in (("a/b/c", 0o750, NS + 10), ("empty", 0o700, NS + 11)):
        os.chmod(top / folder, mode)
        os.utime(top / folder, ns=(mtime, mtime))
    for folder in ("a/b", "a", "日本", ""):
        os.utime(top / folder, ns=(NS + 20, NS + 20))
    return sum(len(d) for d in files.values())


def snapshot(top: Path, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every entry under `top` (itself as ""): kind, mode, mtime (a link's own) and content or
    link text."""
    out: dict[str, Any] = {}
    for here, dirs, files in os.walk(top):
        for name in ["", *dirs, *files] if here == str(top) else [*dirs, *files]:
            path = Path(here) / name
            rel = str(path.relative_to(top)) if path != top else ""
            if rel in skip:
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                data = path.read_bytes()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, data)
    return out


def recv(fluxctl: Fluxctl, *args: str, transport: str = "tcp", **kw: Any) -> Any:
    return fluxctl("recv", "-r", "--json", "--transport", transport, *args, **kw)


@pytest.fixture
def photos(daemon: Daemon) -> tuple[Path, int]:
    top = daemon.root / "photos"
    return top, build(top)


TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "quic"])


@TRANSPORTS
def test_a_tree_makes_the_round_trip_and_a_rerun_moves_nothing(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path, transport: str
) -> None:
    top, size = photos
    out = tmp_path / "out"
    first = recv(fluxctl, daemon.url("/photos"), str(out), transport=transport)
    assert first.code == 0, first.stderr
    result = first.json
    assert result["ok"] and result["received"] == size and result["transport"] == transport
    assert (result["files"], result["dirs"], result["links"]) == (
        5,
        6,
        2,
    )  # the root counts as a folder
    assert (result["links_outside"], result["ignored"], result["bytes"]) == (1, 1, size)
    assert "out -> ../elsewhere leads out of the tree" in first.stderr
    assert snapshot(out) == snapshot(top, skip=frozenset({"out"}))
    assert not os.path.lexists(out / "out")

    again = recv(fluxctl, daemon.url("/photos"), str(out), transport=transport)
    assert again.code == 0, again.stderr
    assert (again.json["received"], again.json["skipped_files"]) == (0, 5)
    assert snapshot(out) == snapshot(top, skip=frozenset({"out"}))

    # A changed file (same size, new mtime) and a file removed locally are fetched; the rest
    # is not read again. A link whose own mtime alone changed is made again with it.
    put(top / "a/b/f.txt", b"HELLO\n", 0o640, NS + 99)
    os.utime(top / "a/l", ns=(NS + 98, NS + 98), follow_symlinks=False)
    (out / "a/zero").unlink()
    third = recv(fluxctl, daemon.url("/photos"), str(out), transport=transport)
    assert third.code == 0, third.stderr
    assert (third.json["received"], third.json["skipped_files"]) == (6, 3)
    assert snapshot(out) == snapshot(top, skip=frozenset({"out"}))


def test_where_the_copy_goes(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    build(daemon.root / "photos")
    build(daemon.root / "more", seed=2)
    os.chdir(tmp_path)
    assert recv(fluxctl, daemon.url("/photos"), "out").code == 0
    assert (tmp_path / "out/top.bin").is_file()
    assert recv(fluxctl, daemon.url("/photos"), "into/").code == 2  # its folder must exist
    (tmp_path / "into").mkdir()
    assert recv(fluxctl, daemon.url("/photos"), "into/").code == 0
    assert (tmp_path / "into/photos/top.bin").is_file()
    both = recv(fluxctl, daemon.url("/photos"), daemon.url("/more/"), "two/")
    assert both.code == 2  # several sources need a destination ending in '/'; two exists not
    (tmp_path / "two").mkdir()
    both = recv(fluxctl, daemon.url("/photos"), daemon.url("/more/a"), "two/")
    assert both.code == 0, both.stderr
    assert (tmp_path / "two/photos/top.bin").is_file() and (tmp_path / "two/a/zero").is_file()
    assert sorted(os.listdir(tmp_path / "two")) == ["a", "photos"]
    assert recv(fluxctl, daemon.url("/photos"), daemon.url("/more"), "three").code == 2


def test_checksum_finds_a_change_the_quick_check_cannot_see(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert recv(fluxctl, daemon.url("/photos"), str(out)).code == 0
    # Same size and mtime, other bytes: the quick check skips it.
    target = out / "a/b/c/deep.bin"
    st = target.stat()
    target.write_bytes(b"x" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    quick = recv(fluxctl, daemon.url("/photos"), str(out))
    assert quick.json["received"] == 0 and target.read_bytes() == b"x" * st.st_size
    checked = recv(fluxctl, "--checksum", daemon.url("/photos"), str(out))
    assert checked.code == 0, checked.stderr
    assert checked.json["received"] == st.st_size  # that file alone: the rest matches
    assert snapshot(out) == snapshot(photos[0], skip=frozenset({"out"}))


def test_delete_removes_local_extras_only_inside_the_copy(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    put(outside / "keep.txt", b"keep")
    assert recv(fluxctl, daemon.url("/photos"), str(out)).code == 0
    put(out / "extra.txt", b"extra")
    put(out / "a/gone/deeper/x", b"x")
    (out / "a/b/to-outside").symlink_to(outside)
    (out / "folder-link").symlink_to(outside / "keep.txt")
    kept = recv(fluxctl, daemon.url("/photos"), str(out))
    assert kept.code == 0 and kept.json["deleted"] == 0 and (out / "extra.txt").exists()

    deleted = recv(fluxctl, "--delete", daemon.url("/photos"), str(out))
    assert deleted.code == 0, deleted.stderr
    assert deleted.json["deleted"] == 6  # extra.txt, a/gone (3 entries), two links
    assert snapshot(out) == snapshot(photos[0], skip=frozenset({"out"}))
    assert (outside / "keep.txt").read_bytes() == b"keep"


def test_dry_run_changes_nothing(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    put(out / "extra.txt", b"extra")
    before = snapshot(out)
    run = fluxctl("recv", "-r", "-n", "--delete", daemon.url("/photos"), str(out))
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "recv a/b/c/deep.bin" in lines and "mkdir a/" in lines
    assert "link a/l -> b/f.txt" in lines and "delete extra.txt" in lines
    assert snapshot(out) == before


def test_excluded_entries_are_not_received(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = recv(fluxctl, "--exclude", "*.bin", "--exclude", "/a/b/", daemon.url("/photos"), str(out))
    assert run.code == 0, run.stderr
    assert run.json["excluded"] == 2  # top.bin, and a/b with all it holds
    got = snapshot(out)
    assert "top.bin" not in got and "a/b" not in got and "a/zero" in got
    assert not any(name.endswith(".bin") for name in got)


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """`folder` refuses new entries, even to root (immutable), until the block ends."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("root needs chattr to make a folder unwritable")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {made.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_unwritable_local_folder_fails_its_entries_alone(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "a/b").mkdir(parents=True)
    with unwritable(out / "a/b"):
        run = recv(fluxctl, daemon.url("/photos"), str(out))
    assert run.code == 4, run.stderr
    failed = {e["path"] for e in run.json["errors"]}
    assert {"a/b/c", "a/b/f.txt"} <= failed and all(p.startswith("a/b") for p in failed)
    assert "a/b/c/deep.bin" not in failed  # under a folder that could not be made: not tried
    assert (out / "top.bin").read_bytes() == (photos[0] / "top.bin").read_bytes()
    assert (out / "a/l").is_symlink() and (out / "日本/файл.txt").is_file()
    # Writable again: the next run completes the copy.
    assert recv(fluxctl, daemon.url("/photos"), str(out)).code == 0
    assert snapshot(out) == snapshot(photos[0], skip=frozenset({"out"}))


def big_files(top: Path, count: int) -> Path:
    """`count` files of several chunks each, one a folder, under `top`."""
    rng = random.Random(count)
    for i in range(count):
        put(top / f"d{i}/file.bin", rng.randbytes(BIG), mtime_ns=NS + i)
    return top


@TRANSPORTS
def test_a_run_killed_mid_tree_completes_when_run_again(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    top = big_files(daemon.root / "big", 4)
    out = tmp_path / "out"
    args = ("--chunk-size", "64K", daemon.url("/big"), str(out))
    # The client kills itself (SIGKILL) once a 2nd batch of chunks is durable: every file
    # ends with a batch of its own, so at least two of the four are not complete yet.
    killed = recv(fluxctl, *args, transport=transport, env={"FLUX_CRASH_AT": "chunks-durable:2"})
    assert killed.code == -9, killed.stderr
    partial = [p for p in out.rglob(".*.fluxpart")]
    assert partial, "a download was cut short"
    again = recv(fluxctl, *args, transport=transport)
    assert again.code == 0, again.stderr
    assert again.json["received"] < 4 * BIG  # what was durable was not fetched again
    assert snapshot(out) == snapshot(top)
    assert not list(out.rglob(".*.flux*"))


@contextlib.contextmanager
def stalled_recv(
    daemon: Daemon, fluxctl: Fluxctl, out: Path, limit: int, *extra: str
) -> Iterator[tuple[subprocess.Popen[str], Proxy]]:
    """`recv -r` of /big over TCP through a proxy that stalls the server's side after `limit`
    bytes: the run, once stalled mid-tree, and the proxy."""
    proxy = Proxy(daemon.port, limit=limit, upstream=False)
    try:
        args = ("recv", "-r", "--transport", "tcp", "--chunk-size", "1M", *extra)
        proc = fluxctl.spawn(*args, daemon.url("/big", port=proxy.port), str(out))
        wait_for(proxy.stalled.is_set, what="the link to stall mid-tree")
        yield proc, proxy
    finally:
        proxy.close()


def test_a_link_that_drops_mid_tree_is_retried_and_the_downloads_resume(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    top = big_files(daemon.root / "big", 3)
    put(top / "a-small.txt", b"done long before the cut")
    out = tmp_path / "out"
    with stalled_recv(daemon, fluxctl, out, 7 * 1024 * 1024, "--json") as (proc, proxy):
        proxy.cut()
        proxy.release()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    result = Result(0, stdout, stderr).json
    small = len(b"done long before the cut")
    assert result["retries"] >= 1 and result["received"] >= 3 * BIG + small
    assert result["skipped_files"] == 0  # received before the cut: received, not unchanged
    # What was durable before the cut (most of 7 MiB) was not fetched again: at most what was
    # in flight then.
    assert result["received"] - 3 * BIG - small <= 3 * 1024 * 1024
    assert snapshot(out) == snapshot(top)


def test_what_is_in_the_way_is_replaced_a_folder_only_with_delete(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    put(out / "top.bin/inside", b"a folder where the server has a file")
    put(out / "a/l", b"a file where the server has a link")
    put(out / "empty", b"a file where the server has a folder")
    kept = recv(fluxctl, daemon.url("/photos"), str(out))
    assert kept.code == 6, kept.stderr
    assert [e["path"] for e in kept.json["errors"]] == ["top.bin"]
    assert (out / "top.bin/inside").is_file()  # a folder goes only with --delete
    assert os.readlink(out / "a/l") == "b/f.txt" and (out / "empty").is_dir()

    replaced = recv(fluxctl, "--delete", daemon.url("/photos"), str(out))
    assert replaced.code == 0, replaced.stderr
    assert snapshot(out) == snapshot(photos[0], skip=frozenset({"out"}))


def test_a_missing_source_fails_alone_and_entries_are_named_by_their_tree(
    daemon: Daemon, fluxctl: Fluxctl, photos: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    urls = (daemon.url("/photos"), daemon.url("/missing"))
    dry = fluxctl("recv", "-r", "-n", *urls, f"{out}/")
    assert "recv photos/a/b/c/deep.bin" in dry.stdout.splitlines(), dry.stdout
    run = recv(fluxctl, *urls, f"{out}/")
    assert run.code == 6, run.stderr
    assert [e["path"] for e in run.json["errors"]] == ["missing"]
    assert "missing" in run.stderr
    assert snapshot(out / "photos") == snapshot(photos[0], skip=frozenset({"out"}))
    assert sorted(os.listdir(out)) == ["photos"]


@TRANSPORTS
def test_send_r_then_recv_r_gives_back_the_same_tree(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    original = tmp_path / "original"
    build(original, seed=3)
    (original / "out").unlink()  # a link leaving the tree is not sent
    send = ("send", "-r", "--json", "--transport", transport)
    sent = fluxctl(*send, str(original), daemon.url("/b"))
    assert sent.code == 0, sent.stderr
    back = tmp_path / "back"
    got = recv(fluxctl, "--checksum", daemon.url("/b"), str(back), transport=transport)
    assert got.code == 0, got.stderr
    assert snapshot(back) == snapshot(original)
    # Every listed digest matches the files received: --checksum finds nothing to fetch.
    again = recv(fluxctl, "--checksum", daemon.url("/b"), str(back), transport=transport)
    assert (again.json["received"], again.json["skipped_files"]) == (0, 5)


def test_ctrl_c_mid_tree_is_one_line_and_the_rerun_completes(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    top = big_files(daemon.root / "big", 3)
    out = tmp_path / "out"
    with stalled_recv(daemon, fluxctl, out, 4 * 1024 * 1024, "--progress") as (proc, _):
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("fluxctl:")]
    assert lines[-1] == "fluxctl: interrupted; run the same command again to resume", err
    assert "Traceback" not in err
    again = recv(fluxctl, daemon.url("/big"), str(out))
    assert again.code == 0, again.stderr
    assert snapshot(out) == snapshot(top)
