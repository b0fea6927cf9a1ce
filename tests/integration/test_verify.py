"""`fluxctl verify LOCAL URL`: digests compared against a real daemon, no file data moved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import xxhash

from .conftest import Daemon, Fluxctl, wait_for

CHUNK = 64 * 1024
SIZE = 5 * CHUNK + 1000  # six chunks, the last one short
TCP = ("--transport", "tcp")


@pytest.fixture
def stored(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> tuple[Path, str]:
    """A local file and its copy on the server, sent in 64 KiB chunks."""
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(SIZE))
    url = daemon.url("/dir/f.bin")
    sent = fluxctl("send", str(local), url, "--chunk-size", "64K", *TCP)
    assert sent.code == 0, sent.stderr
    return local, url


def downloads(daemon: Daemon) -> list[dict[str, Any]]:
    return [r for r in daemon.events("access") if r["op"] == "download"]


def test_identical_files_exit_0_and_nothing_moves(
    daemon: Daemon, fluxctl: Fluxctl, stored: tuple[Path, str]
) -> None:
    local, url = stored
    r = fluxctl("verify", str(local), url, *TCP)
    assert r.code == 0, r.stderr
    digest = xxhash.xxh3_128_hexdigest(local.read_bytes())
    assert r.stdout.startswith("identical: ") and f"xxh128:{digest}" in r.stdout, r.stdout
    assert "6 chunks" in r.stdout and r.stderr == ""
    wait_for(lambda: bool(downloads(daemon)), what="the download's access record")
    assert [d["bytes"] for d in downloads(daemon)] == [0]


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_one_byte_changed_is_exit_3_naming_the_chunk(
    fluxctl: Fluxctl, stored: tuple[Path, str], transport: str
) -> None:
    local, url = stored
    data = bytearray(local.read_bytes())
    data[3 * CHUNK + 17] ^= 0xFF
    local.write_bytes(data)
    r = fluxctl("verify", str(local), url, "--transport", transport)
    assert r.code == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and r.stdout == "", r.stderr
    assert "digest differs" in lines[0] and "(chunk 3 differs, at 65536 bytes each)" in lines[0]


def test_a_different_size_is_exit_3_saying_so(fluxctl: Fluxctl, stored: tuple[Path, str]) -> None:
    local, url = stored
    with local.open("ab") as f:
        f.write(os.urandom(CHUNK))
    r = fluxctl("verify", str(local), url, *TCP)
    assert r.code == 3, r.stderr
    line = r.stderr.strip()
    assert f"size differs: {SIZE + CHUNK} bytes here, {SIZE} on the server" in line, line
    assert "chunks 5-6 differ" in line, line  # the short last chunk grew, one more follows


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/dir/nope.bin", "no such file"),
        ("/dir", "/dir is a folder on the server: verify compares one file"),
    ],
)
def test_a_missing_or_folder_remote_is_exit_6_in_one_line(
    daemon: Daemon, fluxctl: Fluxctl, stored: tuple[Path, str], path: str, said: str
) -> None:
    local, _ = stored
    r = fluxctl("verify", str(local), daemon.url(path), *TCP)
    assert r.code == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0].lower(), r.stderr


@pytest.mark.parametrize("name", ["missing.bin", "."])
def test_a_missing_or_folder_local_is_exit_2_before_connecting(
    fluxctl: Fluxctl, tmp_path: Path, name: str
) -> None:
    # Port 9 on loopback: nothing listens, and verify must not even try.
    r = fluxctl("verify", str(tmp_path / name), "flux://127.0.0.1:9/f.bin", *TCP)
    assert r.code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("no such local file" in lines[0] or "is a folder" in lines[0])


def test_json_shape(fluxctl: Fluxctl, stored: tuple[Path, str]) -> None:
    local, url = stored
    same = fluxctl("verify", str(local), url, *TCP, "--json").json
    digest = f"xxh128:{xxhash.xxh3_128_hexdigest(local.read_bytes())}"
    assert same == {
        "ok": True,
        "op": "verify",
        "path": "/dir/f.bin",
        "local": str(local),
        "identical": True,
        "bytes": SIZE,
        "local_bytes": SIZE,
        "digest": digest,
        "local_digest": digest,
        "chunk_size": CHUNK,
        "differing_chunks": [],
    }
    data = bytearray(local.read_bytes())
    data[0] ^= 1
    data[-1] ^= 1
    local.write_bytes(data)
    r = fluxctl("verify", str(local), url, *TCP, "--json")
    assert r.code == 3
    differ = r.json
    assert differ["ok"] is False and differ["exit_code"] == 3 and differ["identical"] is False
    assert differ["differing_chunks"] == [0, 5] and differ["digest"] == digest
    assert differ["error"] == r.stderr.strip().removeprefix("fluxctl: ")
    missing = fluxctl("verify", str(local), url + ".gone", *TCP, "--json")
    assert missing.code == 6 and missing.json["op"] == "verify" and missing.json["ok"] is False
