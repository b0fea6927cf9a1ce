"""Trees that change under a run, end to end over TCP and QUIC: a folder swapped for a link
leading out of the tree (or out of the daemon's root), and a link swapped for a folder, while
`send -r` or `recv -r` goes on. Nothing is read or written outside the tree; the entries that
changed fail alone, each with one line; the rest is copied.

"Mid-run" is a pause point (FLUX_PAUSE_AT, fluxio.crashpoints): the client stops right after
its walk listed a folder, the test changes the tree, then lets it go on. No clock is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Daemon, Fluxctl, Result, wait_for

TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "quic"])
BAIT = b"BAIT: outside the tree"


class Pause:
    """The N-th arrival of a client at pause point `point`, which the test holds and releases."""

    def __init__(self, tmp_path: Path, point: str, n: int) -> None:
        self.fifo = tmp_path / f"pause-{point}-{n}"
        os.mkfifo(self.fifo)
        self.env = {"FLUX_PAUSE_AT": f"{point}:{n}:{self.fifo}"}

    @contextlib.contextmanager
    def held(self, proc: subprocess.Popen[str]) -> Iterator[None]:
        """Until `proc` waits at the point; the block runs while it waits; then it goes on."""
        fd = -1

        def there() -> bool:
            nonlocal fd
            assert proc.poll() is None, f"fluxctl ended before the pause: {proc.communicate()}"
            try:  # a writer may open a pipe only while a reader has it open: the client
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                return False
            return True

        wait_for(there, 60, "the client at its pause point")
        try:
            yield
        finally:
            os.close(fd)


def finish(proc: subprocess.Popen[str]) -> Result:
    out, err = proc.communicate(timeout=120)
    return Result(proc.returncode, out, err)


def files_under(top: Path) -> dict[str, bytes]:
    return {
        p.relative_to(top).as_posix(): p.read_bytes()
        for p in top.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def bait(top: Path) -> Path:
    """A folder outside every tree, holding the same names as `a` with other content."""
    for name in ("x.txt", "y.txt", "sub/z.txt"):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(BAIT)
    return top


def source(top: Path, tag: bytes = b"") -> None:
    """a/ (the folder swapped), then b/ and top.txt (the rest, copied whatever happens)."""
    for name in ("a/x.txt", "a/y.txt", "a/sub/z.txt", "b/ok.txt", "top.txt"):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(name.encode() + tag)


def swap_for_link(folder: Path, moved: Path, target: Path) -> None:
    """What a hostile local user does: the folder goes elsewhere, a link takes its name."""
    os.rename(folder, moved)
    os.symlink(target, folder)


@TRANSPORTS
def test_send_r_never_reads_through_a_folder_swapped_for_a_link_mid_walk(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    src, outside = tmp_path / "src", bait(tmp_path / "outside")
    source(src)
    pause = Pause(tmp_path, "walk-listed", 2)  # 1: the root, 2: a
    args = ("send", "-r", str(src), daemon.url("/dst"), "--json", "--transport", transport)
    proc = fluxctl.spawn(*args, env=pause.env)
    with pause.held(proc):
        swap_for_link(src / "a", tmp_path / "moved-a", outside)
    res = finish(proc)
    assert res.code == 2, res.stderr
    failed = {e["path"]: e for e in res.json["errors"]}
    assert set(failed) == {"a/x.txt", "a/y.txt", "a/sub/z.txt"}
    assert all(
        e["exit_code"] == 2 and "a link is in the way" in e["message"] for e in failed.values()
    )
    lines = [line for line in res.stderr.splitlines() if "link is in the way" in line]
    assert len(lines) == 3
    stored = files_under(daemon.root / "dst")
    assert stored == {"b/ok.txt": b"b/ok.txt", "top.txt": b"top.txt"}
    assert BAIT not in b"".join(files_under(daemon.root).values())


@TRANSPORTS
def test_send_r_sends_a_link_swapped_for_a_folder_mid_walk_as_the_link_it_was(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    src = tmp_path / "src"
    source(src)
    os.symlink("b", src / "l")  # walked after b, before m
    (src / "m").mkdir()
    pause = Pause(tmp_path, "walk-listed", 5)  # the root, a, a/sub, b, then m (l is read)
    args = ("send", "-r", str(src), daemon.url("/dst"), "--json", "--transport", transport)
    proc = fluxctl.spawn(*args, env=pause.env)
    with pause.held(proc):
        os.unlink(src / "l")
        (src / "l").mkdir()
        (src / "l" / "new.txt").write_bytes(b"came after the walk")
    res = finish(proc)
    assert res.code == 0, res.stderr
    dst = daemon.root / "dst"
    assert os.readlink(dst / "l") == "b"
    assert set(files_under(dst)) == {"a/x.txt", "a/y.txt", "a/sub/z.txt", "b/ok.txt", "top.txt"}
    # The next run sends the tree as it is now.
    again = fluxctl(*args)
    assert again.code == 0, again.stderr
    assert (dst / "l" / "new.txt").read_bytes() == b"came after the walk"


@TRANSPORTS
def test_send_r_into_a_served_folder_swapped_for_a_link_out_of_the_root(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    """On the daemon: the destination's folder a becomes a link leading out of the root
    after the client listed it, while the client is about to write into it."""
    src, outside = tmp_path / "src", bait(tmp_path / "outside")
    source(src)
    args = ("send", "-r", str(src), daemon.url("/dst"), "--json", "--transport", transport)
    assert fluxctl(*args).code == 0
    source(src, b" v2")  # every file changed: all are sent again
    pause = Pause(tmp_path, "walk-listed", 2)
    proc = fluxctl.spawn(*args, env=pause.env)
    with pause.held(proc):  # the client has read the destination's listing by now
        swap_for_link(daemon.root / "dst" / "a", tmp_path / "moved-dst-a", outside)
    res = finish(proc)
    assert res.code == 4, res.stderr
    failed = {e["path"] for e in res.json["errors"]}
    assert {"a/x.txt", "a/y.txt"} <= failed and all(p.startswith("a") for p in failed)
    assert all(e["exit_code"] == 4 for e in res.json["errors"])
    assert files_under(outside) == {"x.txt": BAIT, "y.txt": BAIT, "sub/z.txt": BAIT}
    stored = files_under(daemon.root / "dst")
    assert stored == {"b/ok.txt": b"b/ok.txt v2", "top.txt": b"top.txt v2"}
    assert files_under(tmp_path / "moved-dst-a") == {
        "x.txt": b"a/x.txt",
        "y.txt": b"a/y.txt",
        "sub/z.txt": b"a/sub/z.txt",
    }


@TRANSPORTS
def test_recv_r_never_writes_through_a_local_folder_swapped_for_a_link_mid_run(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    src, out, outside = tmp_path / "src", tmp_path / "out", bait(tmp_path / "outside")
    source(src)
    flags = ("--json", "--transport", transport)
    assert fluxctl("send", "-r", str(src), daemon.url("/t"), *flags).code == 0
    assert fluxctl("recv", "-r", daemon.url("/t"), str(out), *flags).code == 0
    source(src, b" v2")
    assert fluxctl("send", "-r", str(src), daemon.url("/t"), *flags).code == 0
    pause = Pause(tmp_path, "walk-listed", 2)  # the walk of out: its root, then a
    proc = fluxctl.spawn("recv", "-r", daemon.url("/t"), str(out), *flags, env=pause.env)
    with pause.held(proc):
        swap_for_link(out / "a", tmp_path / "moved-a", outside)
    res = finish(proc)
    assert res.code == 2, res.stderr
    failed = {e["path"] for e in res.json["errors"]}
    assert {"a/x.txt", "a/y.txt", "a/sub/z.txt"} <= failed
    assert all(p.startswith("a") for p in failed)
    assert all(e["exit_code"] == 2 for e in res.json["errors"])
    for error in res.json["errors"]:
        assert f"fluxctl: {error['path']}: {error['message']}" in res.stderr.splitlines()
    assert files_under(outside) == {"x.txt": BAIT, "y.txt": BAIT, "sub/z.txt": BAIT}
    assert files_under(tmp_path / "moved-a") == {
        "x.txt": b"a/x.txt",
        "y.txt": b"a/y.txt",
        "sub/z.txt": b"a/sub/z.txt",
    }
    assert (out / "b/ok.txt").read_bytes() == b"b/ok.txt v2"
    assert (out / "top.txt").read_bytes() == b"top.txt v2"
    assert os.readlink(out / "a") == str(outside)
