"""The kill-9 harness: fluxd (and fluxctl recv) die at every step of storing a file, and again at
random moments; each time the transfer is retried until it completes.

Asserted every time: nothing partial or wrong ever appears at the final path; the retry
completes with the right bytes; and it re-sends nothing that was durable when the process
died (the chunks durable then, read from the staging journal a crash left, are all skipped), so
what crosses the network twice is at most what was in flight.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxd.storage import local, local_batch, local_upload
from fluxio import staging
from fluxio.crashpoints import BATCH_POINTS, POINTS
from fluxio.staging import StagedFile

from . import batchcrash
from .conftest import Daemon, Fluxctl

MiB = 1024 * 1024
SIZE = 12 * MiB
CS = MiB
WINDOW = "4M"  # chunks in flight towards the daemon: at most 4


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "payload.bin"
    path.write_bytes(random.Random(6).randbytes(SIZE))
    return path


def durable_bytes(data: Path, journal: Path) -> int:
    """Bytes of the chunks a dead process's journal vouches for (re-verified, like a resume)."""
    if not journal.exists():
        return 0
    staged = StagedFile.open(data, journal, SIZE, CS)
    try:
        return sum(staged.chunk_length(i) for i in staged.held)
    finally:
        staged.close()


def daemon_staging(d: Daemon, rel: str) -> tuple[Path, Path]:
    folder = d.root / ".flux" / "staging" / hashlib.sha256(rel.encode()).hexdigest()
    return folder / "data", folder / "journal"


def assert_whole_or_absent(path: Path, payload: Path) -> None:
    if path.exists():
        assert path.read_bytes() == payload.read_bytes(), "a wrong file at the final path"


def send_args(d: Daemon, payload: Path, name: str) -> tuple[str, ...]:
    return ("send", str(payload), d.url(name), "--chunk-size", "1M", "--transport", "tcp",
            "--json", "--retry-for", "0")  # fmt: skip


def finish_send(
    d: Daemon, fluxctl: Fluxctl, payload: Path, name: str, durable: int
) -> dict[str, int]:
    """Restart the daemon (no crash point now), send again, check the bytes and the resend."""
    d.env = {}
    d.restart()  # it may be running: the random-moments test leaves its last restart up
    again = fluxctl(*send_args(d, payload, name))
    assert again.code == 0, again.stderr
    assert (d.root / name.lstrip("/")).read_bytes() == payload.read_bytes()
    assert again.json["skipped"] >= durable, "a chunk that was durable was sent again"
    assert again.json["sent"] == SIZE - again.json["skipped"]
    return again.json


@pytest.mark.parametrize(
    ("point", "arrival"),
    [(p, n) for p in POINTS[:4] for n in (1, 3)] + [(p, 1) for p in POINTS[4:]],
)
def test_daemon_killed_at_each_step(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    payload: Path,
    point: str,
    arrival: int,
) -> None:
    env = {"FLUX_CRASH_AT": f"{point}:{arrival}"}
    d = make_daemon("--window", WINDOW, env=env)
    first = fluxctl(*send_args(d, payload, "/f.bin"))
    assert first.code == 5, f"the client should see the daemon vanish: {first.stderr}"
    assert d.proc is not None
    assert d.proc.wait(timeout=30) == -signal.SIGKILL
    assert_whole_or_absent(d.root / "f.bin", payload)
    durable = durable_bytes(*daemon_staging(d, "f.bin"))
    # The harness has teeth: what each point leaves behind is what recovery must honour.
    if point == "chunks-durable":
        assert durable >= arrival * CS
    elif point in ("commit-checked", "manifest-written"):
        assert durable == SIZE and not (d.root / "f.bin").exists()
    elif point in ("renamed", "published"):
        assert (d.root / "f.bin").exists()
    result = finish_send(d, fluxctl, payload, "/f.bin", durable)
    if point in POINTS[4:]:  # the file was complete on the server: nothing crosses again
        assert result["sent"] == 0


def test_daemon_killed_at_random_moments(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, payload: Path, tmp_path: Path
) -> None:
    """Kill -9 from outside at random moments of a rate-limited upload, four times, restarting
    the daemon each time; then the upload completes, skipping everything left durable."""
    config = tmp_path / "fluxd.toml"
    config.write_text('[limits]\nrate_per_subject = "4M"\n')  # ~3 s per whole upload
    d = make_daemon("--window", WINDOW, "--config", str(config))
    rng = random.Random(11)
    for _ in range(4):
        proc = fluxctl.spawn(*send_args(d, payload, "/r.bin"))
        time.sleep(rng.uniform(0.1, 2.0))  # the random moment of the kill, not a wait
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=30)
        proc.communicate(timeout=60)
        assert_whole_or_absent(d.root / "r.bin", payload)
        d.start()
    finish_send(d, fluxctl, payload, "/r.bin", durable_bytes(*daemon_staging(d, "r.bin")))


@pytest.mark.parametrize(
    ("point", "arrival"),
    [(p, n) for p in POINTS[:4] for n in (1, 4)] + [("renamed", 1)],
)
def test_fluxctl_recv_killed_at_each_step(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    payload: Path,
    tmp_path: Path,
    point: str,
    arrival: int,
) -> None:
    # The client's window takes the whole file: on a fast link its group commit could write it
    # in fewer batches than `arrival`. At 8 MB/s a chunk arrives every ~130 ms, each its own.
    config = tmp_path / "fluxd.toml"
    config.write_text('[limits]\nrate_per_subject = "8M"\n')
    daemon = make_daemon("--config", str(config))
    assert fluxctl(*send_args(daemon, payload, "/src.bin")).code == 0
    dest = tmp_path / "out" / "got.bin"
    dest.parent.mkdir()
    args = ("recv", daemon.url("/src.bin"), str(dest), "--chunk-size", "1M", "--json")
    first = fluxctl(*args, env={"FLUX_CRASH_AT": f"{point}:{arrival}"})
    assert first.code == -signal.SIGKILL, first.stderr
    assert_whole_or_absent(dest, payload)
    part = dest.with_name(f".{dest.name}.fluxpart")
    durable = durable_bytes(part, part.with_name(part.name + ".journal"))
    again = fluxctl(*args)
    assert again.code == 0, again.stderr
    assert dest.read_bytes() == payload.read_bytes()
    if point != "renamed":  # after the rename the file is complete: nothing to fetch at all
        assert again.json["skipped"] >= durable, "a chunk that was durable was fetched again"
    assert [p.name for p in dest.parent.iterdir()] == ["got.bin"], "no staging left behind"


def commit_group(root: Path, count: int, seed: int, crash: str | None) -> int:
    """Run batchcrash.py (one group commit of `count` files, generation `seed`); its exit."""
    env = {k: v for k, v in os.environ.items() if k != "FLUX_CRASH_AT"}
    if crash is not None:
        env["FLUX_CRASH_AT"] = crash
    argv = [sys.executable, batchcrash.__file__, str(root), str(count), str(seed)]
    return subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False).returncode


@pytest.mark.parametrize(
    ("point", "arrival", "renamed"),
    [
        ("batch-written", 1, 0),
        ("batch-synced", 1, 0),
        ("batch-renamed", 1, 1),
        ("batch-renamed", 7, 7),
    ],
)
def test_group_commit_killed_at_each_step(
    tmp_path: Path, point: str, arrival: int, renamed: int
) -> None:
    """A group of 20 small files, 10 replacing older versions, killed at each step: every path
    is absent, old or new and whole, exactly the files renamed before the kill are new, and a
    new run after recovery commits them all and leaves nothing behind."""
    root = tmp_path / "root"
    root.mkdir()
    assert commit_group(root, 10, seed=1, crash=None) == 0
    assert commit_group(root, 20, seed=2, crash=f"{point}:{arrival}") == -signal.SIGKILL
    new = 0
    for i in range(20):
        final = root / batchcrash.path(i)
        if not final.exists():
            assert i >= 10, f"{final.name} had an old version, which must stay until replaced"
            continue
        got = final.read_bytes()
        assert got in (batchcrash.payload(i, 1), batchcrash.payload(i, 2)), "a torn file"
        new += got == batchcrash.payload(i, 2)
    assert new == renamed
    assert commit_group(root, 20, seed=2, crash=None) == 0
    for i in range(20):
        assert (root / batchcrash.path(i)).read_bytes() == batchcrash.payload(i, 2)
    assert sorted(p.name for p in root.iterdir()) == [".flux", "d0", "d1", "d2"]
    assert all(p.name.startswith("f") for d in ("d0", "d1", "d2") for p in (root / d).iterdir())
    assert list((root / ".flux" / "tmp").iterdir()) == []


def test_every_crash_point_is_in_the_code() -> None:
    # Guards the harness itself: a point renamed in the code would silently test nothing.
    sources = [Path(m.__file__).read_text() for m in (local, local_upload, staging)]
    for point in POINTS:
        assert any(f'crash_point("{point}")' in src for src in sources), point
    batch = Path(local_batch.__file__).read_text()
    for point in BATCH_POINTS:
        assert f'crash_point("{point}")' in batch, point
