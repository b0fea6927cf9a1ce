"""The shipped systemd unit (deploy/fluxd.service): it verifies, its exposure score is "OK"
(2.0 or better), and the command and config it runs exist in this fluxd."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fluxd.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "fluxd.service"
BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is absent (Debian package systemd; make sysdeps)"
)


def service() -> dict[str, list[str]]:
    """[Service] as NAME -> every value it is given (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def exec_start() -> list[str]:
    (line,) = service()["ExecStart"]
    return shlex.split(line)


@needs_analyze
def test_exposure_score_is_ok(tmp_path: Path) -> None:
    assert ANALYZE is not None
    p = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for fluxd\.service: (\d+\.\d+) (\w+)", p.stdout)
    assert found, p.stdout + p.stderr
    assert float(found[1]) <= 2.0, p.stdout
    assert found[2] == "OK"


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say, with ExecStart pointing at this fluxd
    (it checks the program is executable)."""
    assert ANALYZE is not None
    unit = tmp_path / "fluxd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/fluxd", str(BIN / "fluxd")))
    p = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False)
    ours = [line for line in (p.stdout + p.stderr).splitlines() if "fluxd.service" in line]
    assert p.returncode == 0 and not ours, p.stdout + p.stderr


def test_exec_start_runs_the_console_script_with_options_it_has() -> None:
    program, command, *args = exec_start()
    assert Path(program).name == "fluxd"
    scripts = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert "fluxd" in scripts
    helped = subprocess.run(
        [str(BIN / "fluxd"), command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"COLUMNS": "200"},
    ).stdout
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    assert flags, args
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", helped), f"fluxd {command} has no {flag}"


def test_the_shipped_config_loads_and_data_lives_in_the_state_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unit = service()
    args = exec_start()
    config = Path(args[args.index("--config") + 1])
    assert config.parent == Path("/etc") / unit["ConfigurationDirectory"][0]
    cfg = load_config(DEPLOY / config.name, {})
    assert cfg.address[1] > 0
    (state,) = unit["StateDirectory"]
    home = dict(v.split("=", 1) for v in unit["Environment"])["FLUXD_HOME"]
    assert home == f"/var/lib/{state}"
    monkeypatch.setenv("FLUXD_HOME", home)
    cfg = load_config(DEPLOY / config.name, {})
    assert cfg.root.is_relative_to(home) and cfg.certs.is_relative_to(home)


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser["Service"]["Type"] == "notify"
    assert parser["Service"]["WatchdogSec"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"
