"""Housekeeping of a real daemon: recovery and collection at start, periodic scrub, fluxd scrub."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import BIN, Daemon, Fluxctl, _env, wait_for


def write_random(path: Path, size: int) -> None:
    path.write_bytes(os.urandom(size))


def rot(path: Path) -> None:
    """One byte changes in place; size, inode and mtime stay, as with bit rot."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def scrub(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fluxd"), "scrub", "--root", str(d.root), *args],
        capture_output=True,
        text=True,
        env=_env(d.home),
        timeout=60,
        check=False,
    )


def test_fluxd_scrub_reports_corruption_with_exit_3(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    for name in ("a.bin", "b.bin"):
        write_random(tmp_path / name, 300_000)
        assert fluxctl("send", str(tmp_path / name), daemon.url(name)).code == 0
    clean = scrub(daemon)
    assert clean.returncode == 0, clean.stderr
    assert "checked 2 files" in clean.stdout and "0 corrupt" in clean.stdout
    rot(daemon.root / "b.bin")
    found = scrub(daemon, "--json")
    assert found.returncode == 3
    assert '"/b.bin: 1 corrupt chunk(s): 0"' in found.stdout
    got = fluxctl("recv", daemon.url("b.bin"), str(tmp_path / "b.copy"))
    assert got.code == 3, "a corrupt file is never served"


def test_daemon_recovers_and_collects_at_start_and_scrubs_periodically(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    config = tmp_path / "fluxd.toml"
    config.write_text('staging_grace = "1h"\nscrub_every = 1\n')
    d = make_daemon("--config", str(config))
    src = tmp_path / "s.bin"
    write_random(src, 3 * 1024 * 1024)
    assert fluxctl("send", str(src), d.url("kept.bin")).code == 0
    # An abandoned upload: staged two days ago, never finished.
    folder = d.root / ".flux" / "staging" / hashlib.sha256(b"abandoned.bin").hexdigest()
    folder.mkdir()
    (folder / "data").write_bytes(b"x" * 1000)
    (folder / "journal").write_bytes(b"not even a header")
    old = time.time() - 2 * 86400
    for p in (folder / "data", folder / "journal", folder):
        os.utime(p, (old, old))
    d.kill()
    d.start()
    assert d.events("recovered")[-1]["removed"] == 1  # no usable journal: nothing to keep
    assert not folder.exists()
    wait_for(lambda: bool(d.events("scrubbed")), 20, "a periodic scrub")
    assert d.events("scrubbed")[-1]["corrupt"] == 0
    rot(d.root / "kept.bin")
    wait_for(lambda: bool(d.events("corrupt-file")), 20, "the scrub to find the rot")
    assert "/kept.bin" in d.events("corrupt-file")[0]["detail"]
