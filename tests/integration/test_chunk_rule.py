"""A storage's rule for uploads reaches the client (PROTOCOL.md 15.46): a real fluxd whose
storage announces an object store's kind of rule in WELCOME (ruledfluxd.py), and fluxctl
picking its chunk size within it, refusing a --chunk-size or a file that cannot keep it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxd.storage import LocalStorage

from . import ruledfluxd
from .conftest import Daemon, Fluxctl
from .test_errors import one_line

MiB = 1 << 20
MIN_CHUNK = 5 * MiB  # an object store's least part
MAX_CHUNKS = 3  # scaled down from 10,000 so that a test file can reach it


@pytest.fixture
def ruled(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(program=ruledfluxd.program(MIN_CHUNK, MAX_CHUNKS))


def stored_chunk_size(d: Daemon, path: str) -> int:
    download = LocalStorage(d.root).open_download(path, 0)
    try:
        return download.chunk_size
    finally:
        download.close()


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_the_client_picks_a_chunk_size_the_storage_takes(
    ruled: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    """10 MiB in the default 4 MiB chunks would be three parts below 5 MiB: 8 MiB it is."""
    src = tmp_path / "ten.bin"
    src.write_bytes(os.urandom(10 * MiB))
    sent = fluxctl("send", str(src), ruled.url("/ten.bin"), "--json", "--transport", transport)
    assert sent.code == 0, sent.stderr
    assert sent.json["bytes"] == 10 * MiB
    assert (ruled.root / "ten.bin").read_bytes() == src.read_bytes()
    assert stored_chunk_size(ruled, "ten.bin") == 8 * MiB


def test_a_tree_send_keeps_the_rule(ruled: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(os.urandom(6 * MiB))
    (tree / "small.bin").write_bytes(b"x" * 1000)
    sent = fluxctl("send", "-r", str(tree), ruled.url("/t"), "--json", "--transport", "tcp")
    assert sent.code == 0, sent.stderr
    assert (ruled.root / "t" / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()
    assert stored_chunk_size(ruled, "t/big.bin") == 8 * MiB


def test_a_chunk_size_the_storage_refuses_is_a_usage_error(
    ruled: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "ten.bin"
    src.write_bytes(os.urandom(10 * MiB))
    sent = fluxctl("send", str(src), ruled.url("/ten.bin"), "--chunk-size", "4M")
    assert sent.code == 2
    line = one_line(sent.stderr)
    assert f"--chunk-size {4 * MiB} is below {MIN_CHUNK}" in line
    assert not (ruled.root / "ten.bin").exists()
    # The same size for a file of one chunk keeps the rule.
    one = tmp_path / "one.bin"
    one.write_bytes(os.urandom(3 * MiB))
    assert fluxctl("send", str(one), ruled.url("/one.bin"), "--chunk-size", "4M").code == 0


def test_a_file_the_storage_cannot_take_is_refused_before_it_is_read(
    ruled: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """Three chunks of at most 16 MiB: 48 MiB and one byte cannot be stored there."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(3 * 16 * MiB + 1)  # sparse: nothing of it is read
    sent = fluxctl("send", str(big), ruled.url("/big.bin"), "--json")
    assert sent.code == 6
    assert "too large for this server" in one_line(sent.stderr)
    assert sent.json["ok"] is False
