"""Disk full, I/O and permission errors in the middle of an upload (injected at the storage
boundary with FLUX_FAULT_AT): a clear error and exit 6 for that client, the daemon serving
others throughout, and the upload resumable once the disk behaves again."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Daemon, Fluxctl
from .test_crash import SIZE, daemon_staging, durable_bytes
from .test_errors import one_line

MESSAGES = {
    "ENOSPC": "on the server: no space left on device",
    "EIO": "on the server: input/output error",
    "EACCES": "on the server: permission denied",
}


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "payload.bin"
    path.write_bytes(random.Random(8).randbytes(SIZE))
    return path


@pytest.mark.parametrize("point", ["chunk-write", "record-write"])
@pytest.mark.parametrize("code", sorted(MESSAGES))
def test_a_storage_fault_mid_upload(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    payload: Path,
    tmp_path: Path,
    point: str,
    code: str,
) -> None:
    d = make_daemon("--window", "4M", env={"FLUX_FAULT_AT": f"{point}:3:{code}"})
    send = ("send", str(payload), d.url("/f.bin"), "--chunk-size", "1M", "--json")
    failed = fluxctl(*send)
    assert failed.code == 6, failed.stderr
    line = one_line(failed.stderr)
    assert MESSAGES[code] in line and "f.bin" in line, line
    assert not (d.root / "f.bin").exists()
    # The daemon goes on serving: another client lists and uploads meanwhile.
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 10_000)
    assert fluxctl("send", str(other), d.url("/other.bin")).code == 0
    assert fluxctl("ls", d.url("/")).code == 0
    # The disk behaves again (the fault was one-shot): the upload resumes where it stopped.
    # What was durable before the failing batch (group commit decides how much) is kept.
    durable = durable_bytes(*daemon_staging(d, "f.bin"))
    again = fluxctl(*send)
    assert again.code == 0, again.stderr
    assert again.json["skipped"] >= durable
    assert (d.root / "f.bin").read_bytes() == payload.read_bytes()
