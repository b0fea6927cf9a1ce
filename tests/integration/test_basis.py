"""The file at the destination as a basis, over the wire: a send that reports success leaves
exactly the bytes sent at the path, even when the stored copy it would have kept is damaged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.damage import flip_in_place

from .conftest import Daemon, Fluxctl

CHUNK = 64 * 1024
SIZE = 16 * CHUNK - 1000  # a short last chunk
#: No reconnects: repairing a damaged copy takes a second pass on the same connection.
SEND = ("--chunk-size", "64K", "--json", "--retry-for", "0")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def upload_results(daemon: Daemon) -> list[str]:
    return [r["result"].partition(":")[0] for r in daemon.events("access") if r["op"] == "upload"]


def recv(fluxctl: Fluxctl, daemon: Daemon, out: Path) -> int:
    out.unlink(missing_ok=True)
    return fluxctl("recv", daemon.url("/f.bin"), str(out), "--retry-for", "0").code


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_resending_over_a_rotten_copy_repairs_it(
    daemon: Daemon, fluxctl: Fluxctl, src: Path, tmp_path: Path, transport: str
) -> None:
    send = ("send", str(src), daemon.url("/f.bin"), *SEND, "--transport", transport)
    assert fluxctl(*send).code == 0
    stored = daemon.root / "f.bin"
    flip_in_place(stored, 5 * CHUNK + 123)
    assert recv(fluxctl, daemon, tmp_path / "out.bin") == 3, "stored file is corrupt"

    again = fluxctl(*send)
    assert again.code == 0, again.stderr
    assert stored.read_bytes() == src.read_bytes()
    assert (again.json["sent"], again.json["skipped"]) == (CHUNK, SIZE - CHUNK)
    assert (again.json["retries"], again.json["transport"]) == (0, transport)
    assert recv(fluxctl, daemon, tmp_path / "out.bin") == 0
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert [e["path"] for e in daemon.events("stored-file-damaged")] == ["f.bin"]
    # The first COMMIT found the damage (422); the second pass sent the one chunk.
    assert upload_results(daemon) == ["ok", "error 422", "ok"]
    # Repaired for good: the next send keeps the file and moves nothing.
    third = fluxctl(*send)
    assert third.code == 0 and third.json["sent"] == 0


def test_rot_in_a_chunk_a_changed_file_skips_is_resent(
    daemon: Daemon, fluxctl: Fluxctl, src: Path, tmp_path: Path
) -> None:
    assert fluxctl("send", str(src), daemon.url("/f.bin"), *SEND).code == 0
    flip_in_place(daemon.root / "f.bin", 2 * CHUNK)
    new = bytearray(src.read_bytes())
    new[9 * CHUNK + 7] ^= 0xFF  # the new version shares chunk 2 with the stored one
    src.write_bytes(new)

    changed = fluxctl("send", str(src), daemon.url("/f.bin"), *SEND)
    assert changed.code == 0, changed.stderr
    assert (daemon.root / "f.bin").read_bytes() == bytes(new)
    assert changed.json["sent"] == 2 * CHUNK, "chunk 9 (changed), then chunk 2 (damaged)"
    assert upload_results(daemon) == ["ok", "error 422", "ok"]
    assert recv(fluxctl, daemon, tmp_path / "out.bin") == 0
    assert (tmp_path / "out.bin").read_bytes() == bytes(new)
