"""Trees at the edges of the limits, end to end over TCP and QUIC: names of 255 bytes (the
longest a filesystem takes) round-trip through send, recv, send -r and recv -r, resume
included; a tree nested deeper than MAX_DEPTH, a listing over `tree_entries` and a quota each
fail with one line and exit 6 while what fits is stored whole."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Daemon, Fluxctl
from .test_auth import FULL, issue
from .test_hostile import configured
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
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path, name: str
) -> None:
    # Paced at 4 MB/s, the 64 KiB chunks arrive one by one, so the client makes each durable
    # in a batch of its own: unpaced on a busy machine, all of them could make one batch and
    # the crash point below would never be reached.
    daemon = configured(make_daemon, tmp_path, '[limits]\nrate_per_subject = "4M"\n')
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


def chain(top: Path, names: list[str], leaf: bytes = b"leaf") -> None:
    """Folders `names`, each in the one before, under `top`, made by descriptor (their path
    may be longer than PATH_MAX), with a file `leaf` at the bottom."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        fd, old = os.open(name, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    with os.fdopen(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "wb") as f:
        f.write(leaf)
    os.close(fd)


def one_error_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("fluxctl: trusting")]


@TRANSPORTS
def test_a_local_tree_deeper_than_the_server_allows_sends_what_fits(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    src = tmp_path / "src"
    chain(src, ["d"] * 130)
    (src / "ok.txt").write_bytes(b"ok")
    res = fluxctl("send", "-r", str(src), daemon.url("/deep"), "--json", "--transport", transport)
    assert res.code == 6, res.stderr
    too_deep = "/".join(["d"] * 128)  # /deep/d/.../d: its 129th level
    why = "deeper than the server's limit of 128 levels (MAX_DEPTH): not sent"
    assert res.json["errors"] == [{"path": too_deep, "message": why, "exit_code": 6}]
    assert one_error_line(res.stderr) == [f"fluxctl: {too_deep}: {why}"]
    dst = daemon.root / "deep"
    assert (dst / "ok.txt").read_bytes() == b"ok"
    stored = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*"))
    assert stored == sorted(["ok.txt", *("/".join(["d"] * n) for n in range(1, 128))])


@TRANSPORTS
def test_trees_over_tree_entries_fail_whole_with_one_line_and_write_nothing(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    d = configured(make_daemon, tmp_path, "[limits]\ntree_entries = 10\n")
    src = tmp_path / "src"
    for i in range(8):
        (src / f"f{i}").mkdir(parents=True)
        (src / f"f{i}" / "x").write_bytes(b"x")
    flags = ("--json", "--transport", transport)
    first = fluxctl("send", "-r", str(src), d.url("/many"), *flags)  # into nothing: no limit
    assert first.code == 0, first.stderr
    why = "/many holds more than 10 entries (limits.tree_entries)"
    out = tmp_path / "out"
    for run in (
        fluxctl("send", "-r", str(src), d.url("/many"), *flags),  # it reads /many first
        fluxctl("recv", "-r", d.url("/many"), str(out), *flags),
        fluxctl("ls", "-r", d.url("/many"), *flags),
        fluxctl("rm", "-r", d.url("/many"), *flags),
    ):
        assert run.code == 6, run.stderr
        assert (run.json["error"], run.json["exit_code"]) == (why, 6)
        assert one_error_line(run.stderr) == [f"fluxctl: {why}"]
    assert not out.exists()
    assert sorted(p.name for p in (d.root / "many").iterdir()) == [f"f{i}" for i in range(8)]


@TRANSPORTS
def test_a_server_tree_deeper_or_longer_than_a_listing_can_carry_is_refused_whole(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    """Made on the server's own disk: 130 levels, and 17 levels of 250-byte names (4266
    bytes). Leaving their bottom out would make a copy that looks whole."""
    chain(daemon.root / "deep", ["d"] * 130)
    chain(daemon.root / "long", [c * 250 for c in "abcdefghijklmnopq"])
    flags = ("--json", "--transport", transport)
    for top, why in (
        ("deep", "is nested more than 128 levels deep (MAX_DEPTH)"),
        ("long", "holds a path longer than 4096 bytes (MAX_PATH)"),
    ):
        out = tmp_path / f"out-{top}"
        for run in (
            fluxctl("recv", "-r", daemon.url(f"/{top}"), str(out), *flags),
            fluxctl("ls", "-r", daemon.url(f"/{top}"), *flags),
        ):
            assert run.code == 6, run.stderr
            assert run.json["error"].startswith(f"/{top}/") and run.json["error"].endswith(why)
            assert len(run.json["error"]) < 200
            assert len(one_error_line(run.stderr)) == 1
        assert not out.exists()


@TRANSPORTS
def test_a_tree_over_the_quota_stores_whole_files_and_fails_the_rest_alone(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    auth = '[auth]\nanonymous = false\nroot = "/users/{sub}"\n'
    d = configured(make_daemon, tmp_path, auth + '[limits]\nquota = "300K"\n')
    token = issue(d, "carol", *FULL)
    src = tmp_path / "src"
    for i in range(6):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f.bin").write_bytes(os.urandom(100_000))
    args = ("send", "-r", str(src), d.url("/q"), "--token", token, "--transport", transport)
    res = fluxctl(*args, "--json")
    assert res.code == 6, res.stderr
    errors = res.json["errors"]
    assert len(errors) == 3 and all(e["exit_code"] == 6 and "quota" in e["message"] for e in errors)
    assert len(one_error_line(res.stderr)) == 3
    failed = {e["path"] for e in errors}
    dst = d.root / "users" / "carol" / "q"
    for i in range(6):
        name = f"d{i}/f.bin"
        if name in failed:
            assert not (dst / name).exists()
        else:
            assert (dst / name).read_bytes() == (src / name).read_bytes()
    staging = d.root / ".flux" / "staging"
    assert not staging.exists() or not any(staging.iterdir())  # nothing half-written


def read_chain(top: Path, names: list[str]) -> bytes:
    """The leaf at the bottom of `names` under `top`, read by descriptor (past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY)
    for name in names:
        fd, old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), fd
        os.close(old)
    with os.fdopen(os.open("leaf", os.O_RDONLY, dir_fd=fd), "rb") as f:
        data = f.read()
    os.close(fd)
    return data


@TRANSPORTS
def test_trees_whose_local_paths_pass_path_max_go_both_ways(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    """16 folders of 250-byte names: 4016 bytes under the tree's root, within the server's
    limits, but more than PATH_MAX (4096) once LOCAL's own path is in front. Everything is
    read and made relative to folders opened one below the other, so the copy is whole."""
    names = [c * 250 for c in "abcdefghijklmnop"]
    data = os.urandom(BIG)
    chain(daemon.root / "long", names, data)
    out = tmp_path / "out"
    flags = ("--json", "--transport", transport, "--chunk-size", "1M")
    got = fluxctl("recv", "-r", daemon.url("/long"), str(out), *flags)
    assert got.code == 0, got.stderr
    assert (got.json["files"], got.json["dirs"], got.json["errors"]) == (1, 17, [])
    assert read_chain(out, names) == data
    again = fluxctl("recv", "-r", "--checksum", daemon.url("/long"), str(out), *flags)
    assert again.code == 0, again.stderr
    assert (again.json["received"], again.json["skipped_files"]) == (0, 1)
    sent = fluxctl("send", "-r", str(out), daemon.url("/back"), *flags)
    assert sent.code == 0, sent.stderr
    assert (sent.json["files"], sent.json["errors"]) == (1, [])
    assert read_chain(daemon.root / "back", names) == data
