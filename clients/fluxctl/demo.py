"""`make demo`: a daemon with its embedded defaults in a temp dir, a send, a resumed send, a recv.

Every step prints the command it runs, so the demo doubles as a usage example.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fluxd.config import DEFAULT_PORT
from fluxd.storage.staging import HEADER_SIZE, RECORD_SIZE
from fluxproto import FileHasher, format_digest

from .results import DEFAULT_CHUNK

BIN = Path(sys.executable).parent
SIZE = 256 * 1024 * 1024


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(env: dict[str, str], *args: str) -> None:
    print("$ " + shlex.join(args), flush=True)
    subprocess.run([str(BIN / args[0]), *args[1:]], env=env, check=True)


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
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = json.loads(raw)
        print("  fluxd: " + raw.decode().strip(), flush=True)
        if line.get("event") == "listening":
            return proc, line["address"]
    raise SystemExit("fluxd did not start")


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
            src, back = work / "demo.bin", work / "back.bin"
            say(f"generate {SIZE >> 20} MiB of random data")
            make_file(src, SIZE)
            url = f"flux://{address}/demo/demo.bin"
            say("send it (the first connection trusts the server's certificate, like ssh)")
            run(env, "fluxctl", "send", str(src), url, "--progress")
            say("interrupt a second send part-way (Ctrl-C), then run the same command again")
            _interrupted_send(env, src, f"flux://{address}/demo/again.bin", work / "daemon")
            run(env, "fluxctl", "send", str(src), f"flux://{address}/demo/again.bin", "--progress")
            say("look at it on the server")
            run(env, "fluxctl", "ls", f"flux://{address}/demo")
            run(env, "fluxctl", "stat", url)
            say("receive it back")
            run(env, "fluxctl", "recv", url, str(back), "--progress")
            say("verify")
            a, b = file_digest(src), file_digest(back)
            print(f"  sent     {a}\n  received {b}")
            if a != b or src.read_bytes() != back.read_bytes():
                raise SystemExit("MISMATCH: the received file differs")
            print("  OK: identical")
        finally:
            say("stop the daemon (SIGTERM: in-flight chunks reach disk, partial uploads are kept)")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _interrupted_send(env: dict[str, str], src: Path, url: str, home: Path) -> None:
    args = ["fluxctl", "send", str(src), url, "--quiet"]
    print("$ " + shlex.join(args) + "   # interrupted once a third is on the server", flush=True)
    proc = subprocess.Popen([str(BIN / "fluxctl"), *args[1:]], env=env)
    staging = home / "files" / ".flux" / "staging"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        held = sum(j.stat().st_size for j in staging.glob("*/journal") if j.exists())
        if held >= HEADER_SIZE + RECORD_SIZE * (SIZE // DEFAULT_CHUNK // 3):
            break
        time.sleep(0.002)  # demo only: watch the daemon's journal grow
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


if __name__ == "__main__":
    main()
