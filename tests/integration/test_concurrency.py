"""Defined outcomes when clients meet on one path (README "Concurrent clients"):

- two clients resuming the same upload at once: one gets the path, the other a conflict
  (exit 6) at once; the file is then exactly one client's, never a mix;
- a download of a file being replaced: the download gets the version it started on, whole,
  and the path then holds the new version, whole.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from .conftest import Daemon, Fluxctl, wait_for

MiB = 1024 * 1024


def slow_daemon(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    config = tmp_path / "fluxd.toml"
    config.write_text('[limits]\nrate_per_subject = "4M"\n')  # transfers take seconds
    return make_daemon("--config", str(config))


def staged(d: Daemon) -> bool:
    return any(p.stat().st_size > 0 for p in (d.root / ".flux" / "staging").rglob("journal"))


def test_two_clients_resuming_one_upload_at_once(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    d = slow_daemon(make_daemon, tmp_path)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(8 * MiB))
    b.write_bytes(os.urandom(8 * MiB))  # same size, other bytes: they share a staged upload
    first = fluxctl.spawn("send", str(a), d.url("/x.bin"), "--chunk-size", "1M")
    wait_for(lambda: staged(d), 30, "a partial upload")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    # Once the daemon has seen that client go (its upload logged), the upload is free to resume.
    gone = lambda: any(r["op"] == "upload" for r in d.events("access"))  # noqa: E731
    wait_for(gone, 30, "the daemon to notice the killed client")
    racers = [
        fluxctl.spawn("send", str(src), d.url("/x.bin"), "--chunk-size", "1M", "--retry-for", "0")
        for src in (a, b)
    ]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 6], results
    loser = next(err for code, err in results if code == 6)
    assert "another session" in loser
    final = (d.root / "x.bin").read_bytes()
    assert final in (a.read_bytes(), b.read_bytes()), "bytes of two clients interleaved"


def test_download_of_a_file_being_replaced(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    d = slow_daemon(make_daemon, tmp_path)
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(os.urandom(8 * MiB))
    new.write_bytes(os.urandom(8 * MiB))
    assert fluxctl("send", str(old), d.url("/f.bin")).code == 0
    got = tmp_path / "got.bin"
    reader = fluxctl.spawn("recv", d.url("/f.bin"), str(got), "--chunk-size", "1M")
    wait_for(lambda: got.with_name(".got.bin.fluxpart").exists(), 30, "the download to start")
    writer = fluxctl("send", str(new), d.url("/f.bin"))
    assert writer.code == 0, writer.stderr
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert got.read_bytes() == old.read_bytes(), "a torn read: the download mixed versions"
    assert (d.root / "f.bin").read_bytes() == new.read_bytes()
