"""The command lines themselves: FLUX_* variables, output modes, progress, versions, `certs`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from fluxctl import __version__ as fluxctl_version
from fluxd import __version__ as fluxd_version

from .conftest import BIN, Daemon, Fluxctl, Result, _env

SIZE = 100_000
HUMAN_SIZE = "97.7 KiB"
BAR = "\u2501"  # the heavy horizontal line rich draws bars with
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


class EnvFluxctl(Fluxctl):
    """The conftest runner (whose environment has no FLUX_* variables) plus chosen ones."""

    def __call__(self, *args: str, timeout: float = 120, **env: str) -> Result:
        full = _env(self.home)
        full.update(env)
        p = subprocess.run(
            self.cmd(*args), capture_output=True, text=True, env=full, timeout=timeout, check=False
        )
        return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def cli(tmp_path: Path) -> EnvFluxctl:
    return EnvFluxctl(tmp_path / "d")  # the same client home as the `fluxctl` fixture


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def fluxd_cmd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fluxd"), *args],
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=60,
        check=False,
    )


# --- FLUX_* environment variables ---------------------------------------------------------------


def test_flux_pin(daemon: Daemon, cli: EnvFluxctl, small: Path) -> None:
    assert daemon.fingerprint is not None
    wrong = "sha256:" + "0" * 64
    ok = cli("send", str(small), daemon.url("/pin"), FLUX_PIN=daemon.fingerprint)
    assert ok.code == 0, ok.stderr
    assert "trusting new" not in ok.stderr  # a pin bypasses known_hosts
    bad = cli("stat", daemon.url("/pin"), FLUX_PIN=wrong)
    assert bad.code == 4, bad.stderr
    assert "does not match --pin" in bad.stderr
    flag_wins = cli("stat", daemon.url("/pin"), "--pin", daemon.fingerprint, FLUX_PIN=wrong)
    assert flag_wins.code == 0, flag_wins.stderr


def test_flux_ca(daemon: Daemon, cli: EnvFluxctl, small: Path, tmp_path: Path) -> None:
    ok = cli("send", str(small), daemon.url("/ca"), FLUX_CA=str(daemon.certs / "ca.pem"))
    assert ok.code == 0, ok.stderr
    assert "trusting new" not in ok.stderr
    missing = cli("stat", daemon.url("/ca"), FLUX_CA=str(tmp_path / "no-such-ca.pem"))
    assert missing.code == 2, missing.stderr
    assert "cannot load --ca" in missing.stderr


def test_flux_transport_bogus_is_a_usage_error(cli: EnvFluxctl, small: Path) -> None:
    # Options are checked before any connection: no daemon is needed to see the error.
    res = cli("send", str(small), "flux://127.0.0.1:9/x", "--json", FLUX_TRANSPORT="bogus")
    assert res.code == 2, res.stderr
    assert "unknown transport 'bogus'" in res.stderr
    assert res.json == {**res.json, "ok": False, "exit_code": 2}
    assert "Traceback" not in res.stderr


# --- output modes -------------------------------------------------------------------------------


def test_quiet_send_prints_nothing(daemon: Daemon, cli: EnvFluxctl, small: Path) -> None:
    assert daemon.fingerprint is not None
    res = cli("send", str(small), daemon.url("/q.bin"), "--quiet", "--pin", daemon.fingerprint)
    assert res.code == 0
    assert (res.stdout, res.stderr) == ("", "")
    assert (daemon.root / "q.bin").read_bytes() == small.read_bytes()


def test_human_summaries_name_size_and_digest(
    daemon: Daemon, cli: EnvFluxctl, small: Path, tmp_path: Path
) -> None:
    digest = "xxh128:" + xxhash.xxh3_128_hexdigest(small.read_bytes())
    sent = cli("send", str(small), daemon.url("/h.bin"), "--no-progress")
    assert sent.code == 0, sent.stderr
    lines = sent.stdout.splitlines()
    assert len(lines) == 1, sent.stdout
    assert lines[0].startswith("sent /h.bin: ")
    assert HUMAN_SIZE in lines[0]
    assert lines[0].endswith(digest)
    assert "0 retries" in lines[0]

    got = cli("recv", daemon.url("/h.bin"), str(tmp_path / "back.bin"), "--no-progress")
    assert got.code == 0, got.stderr
    assert got.stdout.startswith("received /h.bin: ")
    assert HUMAN_SIZE in got.stdout and digest in got.stdout
    assert (tmp_path / "back.bin").read_bytes() == small.read_bytes()


def test_progress_bar_is_drawn_only_when_asked_for_on_a_pipe(
    daemon: Daemon, cli: EnvFluxctl, small: Path
) -> None:
    assert daemon.fingerprint is not None
    pin = ("--pin", daemon.fingerprint)  # no trust notice in stderr
    shown = cli("send", str(small), daemon.url("/p.bin"), "--progress", *pin)
    assert shown.code == 0, shown.stderr
    assert BAR * 5 in shown.stderr
    assert "send small.bin" in shown.stderr
    assert f"{HUMAN_SIZE[:-4]}/{HUMAN_SIZE}" in shown.stderr  # 97.7/97.7 KiB: done/total
    assert BAR not in shown.stdout

    hidden = cli("send", str(small), daemon.url("/p.bin"), "--no-progress", *pin)
    assert hidden.code == 0, hidden.stderr
    assert hidden.stderr == ""
    assert hidden.stdout.startswith("sent /p.bin: ")

    default = cli("send", str(small), daemon.url("/p.bin"), *pin)  # stderr is a pipe: no bar
    assert default.code == 0, default.stderr
    assert default.stderr == ""


# --- versions and certificates ------------------------------------------------------------------


def test_versions(cli: EnvFluxctl, tmp_path: Path) -> None:
    ctl = cli("version")
    assert (ctl.code, ctl.stdout, ctl.stderr) == (0, f"fluxctl {fluxctl_version}\n", "")
    d = fluxd_cmd(tmp_path, "version")
    assert (d.returncode, d.stdout, d.stderr) == (0, f"fluxd {fluxd_version}\n", "")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", fluxd_version)


def test_certs_fingerprint_matches_what_the_daemon_announces(
    make_daemon: Callable[..., Daemon], cli: EnvFluxctl, tmp_path: Path
) -> None:
    home = tmp_path / "d"
    certs = home / "certs"  # where make_daemon(name="d") points `fluxd serve --certs`
    init = fluxd_cmd(home, "certs", "init", "--dir", str(certs))
    assert init.returncode == 0, init.stderr
    announced = FINGERPRINT.findall(init.stdout)
    assert len(announced) == 1, init.stdout
    assert sorted(p.name for p in certs.iterdir()) == [
        "ca-key.pem",
        "ca.pem",
        "server-key.pem",
        "server.pem",
    ]

    printed = fluxd_cmd(home, "certs", "fingerprint", "--dir", str(certs))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == announced[0]

    again = fluxd_cmd(home, "certs", "init", "--dir", str(certs))
    assert again.returncode == 2
    assert "already has" in again.stderr
    assert fluxd_cmd(home, "certs", "fingerprint", "--dir", str(certs)).stdout == printed.stdout

    daemon = make_daemon(name="d")
    assert daemon.fingerprint == announced[0]
    assert cli("stat", daemon.url("/"), "--pin", announced[0]).code == 0


def test_certs_fingerprint_of_an_empty_dir_is_a_usage_error(tmp_path: Path) -> None:
    res = fluxd_cmd(tmp_path, "certs", "fingerprint", "--dir", str(tmp_path / "none"))
    assert res.returncode == 2
    assert res.stderr.startswith("fluxd: ")
    assert "Traceback" not in res.stderr
