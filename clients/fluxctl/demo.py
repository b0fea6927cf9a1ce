"""`make demo`: a daemon with its embedded defaults in a temp dir, a send, a resumed send, a recv.

Every step prints the command it runs, so the demo doubles as a usage example.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, NoReturn

from fluxio.parsing import DEFAULT_PORT
from fluxio.staging import HEADER_SIZE, RECORD_SIZE
from fluxproto import DEFAULT_WINDOW as WINDOW
from fluxproto import FileHasher, format_digest

from .results import DEFAULT_CHUNK

BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1  # linux/prctl.h
MiB = 1024 * 1024
#: The file the demo moves; FLUX_DEMO_MIB makes it smaller (the test of the demo itself).
SIZE = int(os.environ.get("FLUX_DEMO_MIB", "256")) * MiB


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(env: dict[str, str], *args: str) -> None:
    print("$ " + shlex.join(args), flush=True)
    code = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, check=False).returncode
    if code != 0:
        fail(f"`{shlex.join(args)}` exited {code}")


def file_digest(path: Path) -> str:
    h = FileHasher()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return format_digest(h.digest())


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))


def start_daemon(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    listen = [] if _port_free(DEFAULT_PORT) else ["--listen", "127.0.0.1:0"]
    cmd = [str(BIN / "fluxd"), "serve", *listen]
    print("$ " + shlex.join(["fluxd", "serve", *listen]) + " &", flush=True)
    # No thread runs yet (the log drain starts below), so preexec_fn is safe here.
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)  # noqa: PLW1509
    assert proc.stderr is not None
    try:
        for raw in proc.stderr:
            print("  fluxd: " + raw.decode(errors="replace").strip(), flush=True)
            with contextlib.suppress(ValueError):  # a line that is not JSON is just shown
                line = json.loads(raw)
                if isinstance(line, dict) and line.get("event") == "listening":
                    # Keep reading its log, or a full pipe would stall the daemon.
                    threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
                    return proc, str(line["address"])
        fail(f"fluxd exited with {proc.wait(timeout=30)} before listening")
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise


def _drain(stream: IO[bytes]) -> None:
    for _ in stream:
        pass


def _die_with_parent() -> None:
    """In the daemon's process, before exec: SIGTERM it if the demo itself dies (killed by a
    test's timeout, say), so no daemon outlives the demo."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="flux-demo-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, FLUXD_HOME=str(work / "daemon"), XDG_CONFIG_HOME=str(work / "cfg"))
        say("start the daemon (data, files and certificates under $FLUXD_HOME)")
        proc, address = start_daemon(env)
        try:
            _steps(env, work, address)
        finally:
            say("stop the daemon (SIGTERM: in-flight chunks reach disk, partial uploads are kept)")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _steps(env: dict[str, str], work: Path, address: str) -> None:
    src, back = work / "demo.bin", work / "back.bin"
    say(f"generate {SIZE >> 20} MiB of random data")
    make_file(src, SIZE)
    url = f"flux://{address}/demo/demo.bin"
    say("send it over TCP (the first connection trusts the server's certificate, like ssh)")
    print(
        "  (--transport tcp: one TCP connection; the default, auto, adds a QUIC lane, which\n"
        "   rides through address changes but costs far more CPU per byte, where it helps)"
    )
    run(env, "fluxctl", "send", str(src), url, "--transport", "tcp", "--progress")
    again = f"flux://{address}/demo/again.bin"
    say("send it again under another name, and interrupt it (Ctrl-C) once a third is there")
    _interrupted_send(env, src, again, work / "daemon")
    say("run the same command again: it resumes (--json lets the demo check what moved)")
    result = _resumed_send(env, src, again)
    print(
        f"  already on the server: {result['skipped'] / MiB:.1f} MiB, sent now: "
        f"{result['sent'] / MiB:.1f} MiB of {SIZE / MiB:.0f} MiB"
    )
    say("look at it on the server")
    run(env, "fluxctl", "ls", f"flux://{address}/demo")
    run(env, "fluxctl", "stat", url)
    say("receive it back")
    run(env, "fluxctl", "recv", url, str(back), "--transport", "tcp", "--progress")
    say("verify")
    a, b = file_digest(src), file_digest(back)
    print(f"  sent     {a}\n  received {b}")
    if a != b or src.read_bytes() != back.read_bytes():
        fail("the received file differs from the one sent")
    print("  OK: identical")


def fail(why: str) -> NoReturn:
    """A step did not do what the demo announced: say so and stop with an error."""
    raise SystemExit(f"\nDEMO FAILED: {why}")


def _interrupted_send(env: dict[str, str], src: Path, url: str, home: Path) -> None:
    args = ["fluxctl", "send", str(src), url]
    print("$ " + shlex.join(args) + "   # Ctrl-C once a third is on the server", flush=True)
    proc = subprocess.Popen(
        [str(BIN / "fluxctl"), *args[1:]], env=env, stderr=subprocess.PIPE, text=True
    )
    staging = home / "files" / ".flux" / "staging"
    third = HEADER_SIZE + RECORD_SIZE * (SIZE // DEFAULT_CHUNK // 3)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if sum(j.stat().st_size for j in staging.glob("*/journal") if j.exists()) >= third:
            break
        time.sleep(0.002)  # demo only: watch the daemon's journal grow
    if proc.poll() is not None:
        fail(f"the send ended (exit {proc.returncode}) before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    print("  " + err.strip().replace("\n", "\n  "), flush=True)
    if proc.returncode != 130 or "interrupted" not in err:
        fail(f"the interrupted send exited {proc.returncode}, not 130 (interrupted)")


def _resumed_send(env: dict[str, str], src: Path, url: str) -> dict[str, Any]:
    args = ["fluxctl", "send", str(src), url, "--json"]
    print("$ " + shlex.join(args), flush=True)
    done = subprocess.run(
        [str(BIN / "fluxctl"), *args[1:]], env=env, capture_output=True, text=True, check=False
    )
    print("  " + done.stdout.strip(), flush=True)
    if done.returncode != 0:
        fail(f"the resumed send exited {done.returncode}: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    # Resumed: a part was already there, and only (about) the rest crossed the wire again.
    if not SIZE // 4 <= result["skipped"] < SIZE:
        fail(f"the rerun found {result['skipped']} bytes already there, not a part of the file")
    if result["sent"] > SIZE - result["skipped"] + WINDOW:
        fail(f"the rerun sent {result['sent']} bytes: more than the part that was missing")
    return result


if __name__ == "__main__":
    main()
