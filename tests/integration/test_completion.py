"""`fluxctl completion SHELL`: a script each shell accepts, and one that completes in bash.

bash is always there; zsh and fish are checked where installed (skipped otherwise)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, _env
from .test_usage import run

SYNTAX_CHECK = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}


def script(shell: str, home: Path) -> str:
    p = run("fluxctl", "completion", shell, home=home)
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    return p.stdout.decode()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_is_one_the_shell_accepts(shell: str, tmp_path: Path) -> None:
    text = script(shell, tmp_path)
    assert "_FLUXCTL_COMPLETE" in text and "fluxctl" in text
    check = SYNTAX_CHECK[shell]
    if shutil.which(check[0]) is None:
        pytest.skip(f"{shell} is not installed")
    path = tmp_path / f"fluxctl.{shell}"
    path.write_text(text)
    p = subprocess.run([*check, str(path)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("fluxctl vers", {"version"}),
        ("fluxctl ver", {"verify", "version"}),
        ("fluxctl s", {"send", "stat"}),
        ("fluxctl send --tr", {"--transport"}),
    ],
)
def test_bash_completes_a_command_name(words: str, expected: set[str], tmp_path: Path) -> None:
    path = tmp_path / "fluxctl.bash"
    path.write_text(script("bash", tmp_path))
    # The script's function as bash calls it on TAB: COMP_WORDS and COMP_CWORD set, the
    # program's name as $1; the candidates come back in COMPREPLY.
    program = 'source "$1"; COMP_WORDS=($2); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ));'
    program += " _fluxctl_completion fluxctl; printf '%s\\n' \"${COMPREPLY[@]}\""
    env = _env(tmp_path) | {"PATH": f"{BIN}:{_env(tmp_path)['PATH']}"}
    p = subprocess.run(
        ["bash", "-c", program, "bash", str(path), words],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert {line.split(":")[0] for line in p.stdout.split()} == expected


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    p = run("fluxctl", "completion", "tcsh", home=tmp_path)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and b"tcsh" in p.stderr
