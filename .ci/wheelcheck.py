"""`make wheelcheck`: the wheel a normal `pip install .` builds works on its own.

An editable install reads the source tree, so it hides a package the wheel leaves out (fluxd.auth
once was). This builds the wheel from a copy of the tree, checks it holds every module and
py.typed of fluxproto, fluxio, fluxd and fluxctl and nothing else, installs it non-editable
into a fresh venv, and from that venv alone (cwd outside the tree) runs `fluxd version`,
`fluxctl version`, and a `fluxd serve` that a file is sent to and received from over TCP and
over QUIC, byte for byte. Everything it starts or writes is gone when it ends, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
#: Import name -> source folder, as pyproject's package discovery maps them.
PACKAGES = {
    "fluxproto": "protocol/fluxproto",
    "fluxio": "runtime/fluxio",
    "fluxd": "fluxd",
    "fluxctl": "clients/fluxctl",
}
#: What the copy of the tree leaves out: the dev venv, caches and earlier build output (a stale
#: build/lib would put deleted modules back into the wheel).
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
START_TIMEOUT = 20.0
PAYLOAD = 5 * 1024 * 1024 + 123  # more than one 4 MiB chunk, and a partial last one


Cmd = list[str | Path]


def run(cmd: Cmd, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run `cmd`, fail with its output if it fails; return its stdout."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=cwd)
    if proc.returncode != 0:
        shown = " ".join(map(str, cmd))
        raise SystemExit(f"wheelcheck: `{shown}` exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def build_wheel(tmp: Path) -> Path:
    """Build the wheel, as `pip install .` would (isolated build), from a copy of the tree."""
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", src])
    (wheel,) = (tmp / "dist").glob("fluxd-*.whl")
    return wheel


def check_contents(wheel: Path) -> None:
    """The wheel holds exactly the packages' modules, py.typed markers and the package data
    pyproject.toml declares (the admin status page), and its metadata."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    expected = set()
    for name, folder in PACKAGES.items():
        for f in (REPO / folder).rglob("*"):
            if f.suffix == ".py" or f.name == "py.typed":
                expected.add(f"{name}/{f.relative_to(REPO / folder).as_posix()}")
        for pattern in data["package-data"].get(name, []):
            for f in (REPO / folder).glob(pattern):
                if f.is_file() and "__pycache__" not in f.parts:
                    expected.add(f"{name}/{f.relative_to(REPO / folder).as_posix()}")
    with zipfile.ZipFile(wheel) as zf:
        files = {n for n in zf.namelist() if ".dist-info/" not in n}
    missing, extra = sorted(expected - files), sorted(files - expected)
    if missing or extra:
        raise SystemExit(f"wheelcheck: {wheel.name} lacks {missing}, has extra {extra}")


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv with the wheel and its declared dependencies; returns its bin folder."""
    # No pip inside: the dev venv's pip installs into it (--python), which saves ensurepip.
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-compile", wheel])
    return venv / "bin"


def clean_env(tmp: Path, bin_dir: Path) -> dict[str, str]:
    """The environment of a user who has only the fresh venv: nothing from the dev venv or the
    source tree on any path, config and data under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLUX"))}
    env.pop("VIRTUAL_ENV", None)
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    env["PYTHONNOUSERSITE"] = "1"
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    env["FLUXD_HOME"] = str(tmp / "fluxd-home")
    return env


def check_imports(bin_dir: Path, venv: Path, env: dict[str, str], cwd: Path) -> None:
    """Every module of the three packages imports, from inside the venv."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"for top in {sorted(PACKAGES)!r}:\n"
        "    pkg = importlib.import_module(top)\n"
        "    print(pkg.__file__)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, top + '.'):\n"
        "        importlib.import_module(m.name)\n"
    )
    for where in run([bin_dir / "python", "-c", code], env=env, cwd=cwd).split():
        if not Path(where).resolve().is_relative_to(venv.resolve()):
            raise SystemExit(f"wheelcheck: imported {where}, not from the fresh venv")


def start_daemon(
    bin_dir: Path, tmp: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, str]:
    """`fluxd serve` on a free loopback port; returns it with its port and fingerprint."""
    cmd: Cmd = [bin_dir / "fluxd", "serve", "--root", tmp / "root", "--certs", tmp / "certs"]
    cmd += ["--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env, cwd=tmp)
    lines: queue.Queue[bytes] = queue.Queue()
    # A reader thread drains the log, so the daemon never blocks on a full pipe.
    threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    listening: dict[str, dict[str, Any]] = {}
    while set(listening) != {"tcp", "quic"}:
        try:
            line = json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            proc.kill()
            raise SystemExit("wheelcheck: fluxd serve did not start") from None
        if line.get("event") == "listening":
            listening[line["transport"]] = line
    tcp = listening["tcp"]
    return proc, int(tcp["address"].rsplit(":", 1)[1]), str(tcp["fingerprint"])


def _drain(stream: IO[bytes], into: queue.Queue[bytes]) -> None:
    for line in stream:
        into.put(line)


def round_trips(bin_dir: Path, tmp: Path, env: dict[str, str], port: int, pin: str) -> None:
    """Send a file and receive it back over each transport; the bytes must match."""
    local = tmp / "payload.bin"
    local.write_bytes(os.urandom(PAYLOAD))
    for transport in ("tcp", "quic"):
        url = f"flux://127.0.0.1:{port}/wheelcheck/{transport}.bin"
        opts: Cmd = ["--pin", pin, "--transport", transport, "--json"]
        sends: list[Cmd] = [["send", local, url], ["recv", url, tmp / f"back-{transport}.bin"]]
        for args in sends:
            result = json.loads(run([bin_dir / "fluxctl", *args, *opts], env=env, cwd=tmp))
            if result.get("transport") != transport:
                raise SystemExit(f"wheelcheck: {args[0]} went over {result.get('transport')}")
        if (tmp / f"back-{transport}.bin").read_bytes() != local.read_bytes():
            raise SystemExit(f"wheelcheck: the file came back changed over {transport}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="fluxd-wheelcheck-"))
    daemon: subprocess.Popen[bytes] | None = None
    try:
        wheel = build_wheel(tmp)
        check_contents(wheel)
        built = time.monotonic()
        bin_dir = install(wheel, tmp / "venv")
        installed = time.monotonic()
        env = clean_env(tmp, bin_dir)
        check_imports(bin_dir, tmp / "venv", env, tmp)
        for tool in ("fluxd", "fluxctl"):
            run([bin_dir / tool, "version"], env=env, cwd=tmp)
        daemon, port, pin = start_daemon(bin_dir, tmp, env)
        round_trips(bin_dir, tmp, env, port, pin)
        stop(daemon)
        if daemon.returncode != 0:
            raise SystemExit(f"wheelcheck: fluxd serve exited {daemon.returncode} on SIGTERM")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    done = time.monotonic()
    print(
        f"wheelcheck: {wheel.name} ok in {done - started:.1f} s (build {built - started:.1f} s,"
        f" install {installed - built:.1f} s, imports, versions, round trips"
        f" {done - installed:.1f} s)"
    )


if __name__ == "__main__":
    main()
