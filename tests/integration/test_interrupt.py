"""Ctrl-C and the rerun after it: one line, exit 130, and the same command run again at once
resumes (README "Resume"). Over QUIC a killed client sends nothing at all; its rerun waits for
the daemon to notice instead of failing with a conflict."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Daemon, Fluxctl, _env, free_port, wait_for
from .test_resume import server_held

MiB = 1024 * 1024
CHUNKS = 24
CHUNK = "1M"


def slow_daemon(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    config = tmp_path / "fluxd.toml"
    config.write_text('[limits]\nrate_per_subject = "4M"\n')  # a send takes seconds
    return make_daemon("--config", str(config))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(CHUNKS * MiB))
    return path


def interrupt_once_a_third_is_stored(
    d: Daemon, fluxctl: Fluxctl, src: Path, url: str, transport: str, sig: int
) -> tuple[int, str]:
    sender = fluxctl.spawn("send", str(src), url, "--chunk-size", CHUNK, "--transport", transport)
    wait_for(lambda: server_held(d) >= CHUNKS // 3, 60, "a third of the file on the server")
    sender.send_signal(sig)
    _, err = sender.communicate(timeout=60)
    return sender.returncode, err


@pytest.mark.parametrize("transport", ["quic", "quic", "quic", "tcp"])
def test_ctrl_c_then_the_same_command_at_once_resumes(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    tmp_path: Path,
    transport: str,
) -> None:
    d = slow_daemon(make_daemon, tmp_path)
    url = d.url("/x.bin")
    code, err = interrupt_once_a_third_is_stored(d, fluxctl, src, url, transport, signal.SIGINT)
    assert code == 130, err
    lines = [line for line in err.splitlines() if "trusting new server" not in line]
    assert lines == ["fluxctl: interrupted; run the same command again to resume"], err
    again = ("send", str(src), url, "--chunk-size", CHUNK, "--transport", transport, "--json")
    rerun = fluxctl(*again)
    assert rerun.code == 0, rerun.stderr
    assert rerun.json["skipped"] >= CHUNKS // 3 * MiB
    assert rerun.json["sent"] <= src.stat().st_size - rerun.json["skipped"] + 8 * MiB
    assert (d.root / "x.bin").read_bytes() == src.read_bytes()
    interrupted = next(r for r in d.events("access") if r["op"] == "upload")
    assert interrupted["bytes"] >= CHUNKS // 3 * MiB, "the access log counts what was stored"


def test_a_killed_quic_client_is_waited_for_by_its_rerun(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, src: Path, tmp_path: Path
) -> None:
    """SIGKILL sends no goodbye and QUIC leaves no FIN: the daemon holds the old upload until
    its idle timeout, and the rerun waits for that (bounded) instead of exiting 6."""
    d = slow_daemon(make_daemon, tmp_path)
    url = d.url("/x.bin")
    code, _ = interrupt_once_a_third_is_stored(d, fluxctl, src, url, "quic", signal.SIGKILL)
    assert code == -signal.SIGKILL
    rerun = fluxctl("send", str(src), url, "--chunk-size", CHUNK, "--transport", "quic", "--json")
    assert rerun.code == 0, rerun.stderr
    assert rerun.json["retries"] == 0 and rerun.json["skipped"] >= CHUNKS // 3 * MiB
    assert (d.root / "x.bin").read_bytes() == src.read_bytes()


def test_ctrl_c_at_any_moment_of_start_up_is_one_line(fluxctl: Fluxctl, tmp_path: Path) -> None:
    """SIGINT sampled across the first 0.3 s of a command's life (imports, option parsing, the
    connection attempt): every outcome is `fluxctl: interrupted...` with exit 130, never a
    traceback. The delays pick moments to interrupt; nothing waits on them for a result."""
    small = tmp_path / "small"
    small.write_bytes(b"x")
    url = f"flux://127.0.0.1:{free_port()}/x"
    for step in range(16):
        proc = fluxctl.spawn("send", str(small), url, "--retry-for", "30")
        with contextlib.suppress(subprocess.TimeoutExpired):  # still running: interrupt it
            proc.wait(timeout=step * 0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if any(m in err for m in CPYTHON_INIT) or _only_in_the_launcher(err):
            # CPython was still initialising itself (its `site` module, its look at argv[0]
            # for a zip archive), or the console
            # script was importing its entry point: before any line of fluxctl ran, out of
            # reach of any program's code (a window of a few milliseconds).
            continue
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()  # nothing listens: no server was ever trusted
        if proc.returncode == -signal.SIGINT:
            # Before Python installs its handler, or after it is gone at exit, the signal ends
            # the process as it would any program (the shell reports 130 all the same): at most
            # the line of a command that had already finished.
            assert lines == [] or (len(lines) == 1 and "is fluxd running?" in lines[0]), err
            continue
        assert len(lines) == 1, err
        if proc.returncode == 130:
            assert lines[0].startswith("fluxctl: interrupted"), err
        else:  # too late: the refused connection ended it first
            assert proc.returncode == 5, err


#: What CPython prints when a SIGINT lands while it initialises itself, before any of our code.
CPYTHON_INIT = ("init_import_site", "Failed checking if argv[0] is an import path entry")


def _only_in_the_launcher(err: str) -> bool:
    """A KeyboardInterrupt raised while the console script started or imported its entry
    point: the launcher's import line (or its line 0), and no frame of our code beyond the
    two-line entry modules."""
    ours = ("clients/fluxctl/", "fluxd/", "protocol/fluxproto/")
    frames = re.findall(r'File "([^"]+)"', err)
    deeper = [f for f in frames if any(o in f for o in ours) and not f.endswith(ENTRY_FILES)]
    if frames and all(f.endswith("bin/fluxctl") for f in frames) and ", line 0," in err:
        return True  # before the launcher's first line ran (CPython reports line 0)
    return "from fluxctl.__main__ import main" in err and not deeper


ENTRY_FILES = ("fluxctl/__main__.py", "fluxio/entry.py")


def test_ctrl_c_while_send_dash_reads_stdin_stops_it(daemon: Daemon, fluxctl: Fluxctl) -> None:
    """`send -` copies standard input before any connection: Ctrl-C must stop that copy (it
    used to run inside the event loop, deaf to the first Ctrl-C), and say how to resume."""
    proc = subprocess.Popen(
        fluxctl.cmd("send", "-", daemon.url("/piped.bin")),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=False,
        env=_env(fluxctl.home),
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(os.urandom(4 * MiB))  # returns once fluxctl has read most of it
    proc.stdin.flush()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.decode().strip() == (
        "fluxctl: interrupted; pipe the same data to the same command to resume"
    )
    assert not (daemon.root / "piped.bin").exists()
