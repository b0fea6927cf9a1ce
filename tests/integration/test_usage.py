"""What a user types: bare commands, -h, typos, `-` for the standard streams, a folder as the
destination, bad daemon paths, token ids. Each mistake is one line and a distinct exit code."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from .conftest import BIN, Daemon, Fluxctl, _env, free_port
from .test_auth import daemon_key, fluxd, issue, mint
from .test_errors import one_line


def run(*cmd: str, home: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]],
        input=stdin,
        capture_output=True,
        env=_env(home),
        timeout=60,
        check=False,
    )


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(300_000))
    return path


# --- the command line itself ---------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [("fluxctl",), ("fluxd",), ("fluxd", "token"), ("fluxd", "certs")])
def test_a_bare_command_shows_its_help_and_is_a_usage_error(
    cmd: tuple[str, ...], tmp_path: Path
) -> None:
    p = run(*cmd, home=tmp_path)
    assert p.returncode == 2
    assert b"Usage:" in p.stdout + p.stderr
    assert b": \n" not in p.stderr and b"  (see" not in p.stderr, "no empty error line"


@pytest.mark.parametrize(
    "cmd",
    [
        ("fluxctl", "-h"),
        ("fluxctl", "send", "-h"),
        ("fluxd", "-h"),
        ("fluxd", "token", "revoke", "-h"),
    ],
)
def test_dash_h_is_help(cmd: tuple[str, ...], tmp_path: Path) -> None:
    p = run(*cmd, home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert b"Usage:" in p.stdout


def test_unknown_options_get_only_close_suggestions(tmp_path: Path) -> None:
    far = run("fluxd", "serve", "--frob", home=tmp_path)
    assert far.returncode == 2
    expected = "fluxd: no such option: --frob (see fluxd serve --help)"
    assert one_line(far.stderr.decode(), "fluxd") == expected
    near = run("fluxd", "serve", "--rot", home=tmp_path)
    assert "did you mean --root?" in one_line(near.stderr.decode(), "fluxd")
    dashed = run("fluxd", "token", "revoke", "-abc", home=tmp_path)
    assert "goes after --" in one_line(dashed.stderr.decode(), "fluxd")
    no_value = run("fluxd", "serve", "--listen", home=tmp_path)
    assert one_line(no_value.stderr.decode(), "fluxd").endswith("(see fluxd serve --help)")


def test_serve_help_mentions_quic(tmp_path: Path) -> None:
    assert b"QUIC" in run("fluxd", "serve", "--help", home=tmp_path).stdout


@pytest.mark.parametrize("op", ["ls", "stat", "rm"])
def test_single_requests_take_only_options_they_use(op: str, tmp_path: Path) -> None:
    shown = run("fluxctl", op, "--help", home=tmp_path).stdout.decode()
    for unused in ("--chunk-size", "--progress"):
        assert unused not in shown
        refused = run("fluxctl", op, "flux://127.0.0.1/x", unused, "4M", home=tmp_path)
        assert refused.returncode == 2
    for used in ("--token", "--transport", "--json", "--retry-for"):
        assert used in shown


def test_port_zero_is_a_usage_error(fluxctl: Fluxctl, small: Path) -> None:
    res = fluxctl("send", str(small), "flux://127.0.0.1:0/x", "--json")
    assert res.code == 2
    assert "port 0" in res.json["error"]


# --- fluxd serve: paths that cannot be a root ----------------------------------------------------


@pytest.mark.parametrize("root", ["file", "file/sub"])
def test_a_root_that_cannot_be_a_directory_is_one_line_exit_2(root: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    p = run(
        "fluxd", "serve", "--root", str(tmp_path / root), "--listen", "127.0.0.1:0", home=tmp_path
    )
    assert p.returncode == 2
    line = one_line(p.stderr.decode(), "fluxd")
    assert str(tmp_path / root) in line and "internal error" not in line


def test_a_terminal_gets_one_human_line_at_start(tmp_path: Path) -> None:
    """On a terminal fluxd also prints what it serves where; pipes get only the JSON log."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            str(BIN / "fluxd"),
            "serve",
            "--root",
            str(tmp_path / "root"),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        stderr=follower,
        env=_env(tmp_path),
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"fluxd: serving" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                seen += os.read(leader, 65536)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(leader)
    human = next(line for line in seen.decode().splitlines() if line.startswith("fluxd: serving"))
    assert str(tmp_path / "root") in human and "QUIC" in human and "sha256:" in human


# --- `-`: standard input and standard output -----------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_recv_dash_writes_the_verified_file_to_stdout(
    daemon: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path, transport: str
) -> None:
    assert fluxctl("send", str(small), daemon.url("/s.bin")).code == 0
    p = subprocess.run(
        fluxctl.cmd(
            "recv", daemon.url("/s.bin"), "-", "--transport", transport, "--chunk-size", "64K"
        ),
        capture_output=True,
        env=_env(fluxctl.home),
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == small.read_bytes()
    assert not (tmp_path / "-").exists() and not Path("-").exists()


def test_recv_dash_never_writes_a_corrupt_chunk(
    daemon: Daemon, fluxctl: Fluxctl, small: Path
) -> None:
    assert fluxctl("send", str(small), daemon.url("/rot.bin"), "--chunk-size", "64K").code == 0
    stored = daemon.root / "rot.bin"
    st = stored.stat()
    data = bytearray(stored.read_bytes())
    data[200_000] ^= 0xFF  # in the fourth 64 KiB chunk
    stored.write_bytes(data)
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    p = subprocess.run(
        fluxctl.cmd("recv", daemon.url("/rot.bin"), "-", "--chunk-size", "64K"),
        capture_output=True,
        env=_env(fluxctl.home),
        timeout=60,
        check=False,
    )
    assert p.returncode == 3
    assert p.stdout == small.read_bytes()[: len(p.stdout)] and len(p.stdout) <= 3 * 65536


def test_recv_dash_with_json_is_refused(fluxctl: Fluxctl) -> None:
    res = fluxctl("recv", "flux://127.0.0.1/x", "-", "--json")
    assert res.code == 2
    assert "choose one" in res.json["error"]


def test_send_dash_reads_stdin(daemon: Daemon, fluxctl: Fluxctl, small: Path) -> None:
    p = subprocess.run(
        fluxctl.cmd("send", "-", daemon.url("/piped.bin"), "--json"),
        input=small.read_bytes(),
        capture_output=True,
        env=_env(fluxctl.home),
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["bytes"] == small.stat().st_size
    stored = daemon.root / "piped.bin"
    assert stored.read_bytes() == small.read_bytes()
    assert stored.stat().st_mode & 0o777 == 0o666 & ~_umask(), "a new file's mode, not 0600"
    to_folder = subprocess.run(
        fluxctl.cmd("send", "-", daemon.url("/dir/")),
        input=b"x",
        capture_output=True,
        env=_env(fluxctl.home),
        timeout=60,
        check=False,
    )
    assert to_folder.returncode == 2
    assert b"needs a name" in to_folder.stderr


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- a folder as the destination, like scp -----------------------------------------------------


def test_send_to_an_existing_folder_puts_the_file_inside(
    daemon: Daemon, fluxctl: Fluxctl, small: Path
) -> None:
    assert fluxctl("send", str(small), daemon.url("/dir/first.bin")).code == 0
    res = fluxctl("send", str(small), daemon.url("/dir"), "--json")
    assert res.code == 0, res.stderr
    assert res.json["path"] == "/dir/small.bin"
    assert (daemon.root / "dir" / "small.bin").read_bytes() == small.read_bytes()
    assert (daemon.root / "dir" / "first.bin").exists(), "nothing stored is lost"


# --- token ids ----------------------------------------------------------------------------------


def test_revoke_takes_ids_that_look_like_options_and_refuses_unknown_ones(
    daemon: Daemon, fluxctl: Fluxctl
) -> None:
    unknown = fluxd(daemon, "token", "revoke", "0123abcd")
    assert unknown.returncode == 2
    assert "--external" in one_line(unknown.stderr, "fluxd")
    token = mint(daemon_key(daemon), daemon, jti="-dash-first")
    assert jwt.decode(token, options={"verify_signature": False})["jti"] == "-dash-first"
    assert fluxctl("ls", daemon.url("/"), "--token", token).code == 0
    certs = ("--certs", str(daemon.certs))
    revoked = run(
        "fluxd", "token", "revoke", *certs, "--external", "--", "-dash-first", home=daemon.home
    )
    assert revoked.returncode == 0, revoked.stderr
    again = run(
        "fluxd", "token", "revoke", *certs, "--external", "--", "-dash-first", home=daemon.home
    )
    assert b"already revoked" in again.stdout
    # The daemon re-reads the list every second: the next commands are refused within a few.
    deadline = time.monotonic() + 10
    while (res := fluxctl("ls", daemon.url("/"), "--token", token)).code == 0:
        assert time.monotonic() < deadline, "the revocation never reached the daemon"
    assert res.code == 4 and "revoked" in res.stderr


def test_a_write_only_token_is_told_how_to_send_into_a_folder(
    daemon: Daemon, fluxctl: Fluxctl, small: Path
) -> None:
    """Finding out that the path is a folder takes list or read; without them the 409 says how
    to get scp's behaviour, and the trailing slash does it."""
    assert fluxctl("send", str(small), daemon.url("/d/first.bin")).code == 0
    token = issue(daemon, "writer", "--scope", "write:/d/")
    refused = fluxctl("send", str(small), daemon.url("/d"), "--token", token)
    assert refused.code == 6
    assert "end the URL with /" in one_line(refused.stderr)
    into = fluxctl("send", str(small), daemon.url("/d/"), "--token", token)
    assert into.code == 0, into.stderr
    assert (daemon.root / "d" / "small.bin").read_bytes() == small.read_bytes()
