"""A throwaway sshd on 127.0.0.1 with its own host and client keys, and scp into it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .. import BenchError
from ..measure import TreePeakSampler, run_measured
from ..sysdeps import SSHD
from .base import Service, Transfer

CIPHER = "aes128-gcm@openssh.com"
PRIVSEP_DIR = Path("/run/sshd")
# In-process SFTP: an external sftp-server is started through root's login shell, whose
# start-up files (pyenv and the like) would add a machine-dependent delay to every scp.
SFTP_SERVER = "internal-sftp"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _sshd_config(tmp: Path, port: int) -> str:
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {tmp / 'host_key'}",
            f"PidFile {tmp / 'sshd.pid'}",
            f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "LogLevel ERROR",
            f"Subsystem sftp {SFTP_SERVER}",  # scp in OpenSSH 9 speaks SFTP by default
            "",
        ]
    )


def _wait_accepts(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"sshd exited with {proc.returncode}: {log.read_text().strip()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"sshd did not accept on 127.0.0.1:{port} within {timeout:.0f} s")


class SshPeer(Service):
    """sshd in the foreground (`-D`) for the life of the context; scp sends into `dest_dir`."""

    tool = "scp"

    def __init__(self, dest_dir: Path, cipher: str = CIPHER) -> None:
        self.dest_dir, self.cipher = dest_dir, cipher
        self.port = 0
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._made_privsep_dir = False

    def _start(self) -> None:
        self._tmp = tmp = Path(tempfile.mkdtemp(prefix="bench-sshd-"))
        _keygen(tmp / "host_key")
        _keygen(tmp / "client_key")
        shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
        self.port = free_port()
        (tmp / "sshd_config").write_text(_sshd_config(tmp, self.port))
        if not PRIVSEP_DIR.exists():  # normally made by the ssh service, which may not run here
            PRIVSEP_DIR.mkdir(mode=0o755)
            self._made_privsep_dir = True
        log = tmp / "sshd.log"
        with log.open("wb") as out:
            argv = [SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")]
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=out)
        _wait_accepts(self.port, self._proc, log, timeout=15)

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._made_privsep_dir:
            PRIVSEP_DIR.rmdir()
            self._made_privsep_dir = False

    def dest(self, name: str) -> Path:
        return self.dest_dir / name

    def scp_argv(self, src: Path, name: str) -> list[str]:
        assert self._tmp is not None, "sshd is not running"
        return [
            "scp", "-q", "-i", str(self._tmp / "client_key"),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-c", self.cipher, "-P", str(self.port),
            str(src), f"root@127.0.0.1:{self.dest(name)}",
        ]  # fmt: skip

    def send(self, src: Path, name: str) -> Transfer:
        """scp `src` to `dest(name)`; server RSS is sampled over sshd's session processes."""
        assert self._proc is not None, "sshd is not running"
        size = src.stat().st_size
        with TreePeakSampler(self._proc.pid) as sampler:
            run = run_measured(self.scp_argv(src, name), timeout=max(600.0, size / 5e6))
        if run.exit_code != 0:
            raise BenchError(f"scp exited with {run.exit_code}: {run.stderr.strip()}")
        return Transfer(
            self.tool,
            size,
            run.seconds,
            run.maxrss_kib,
            sampler.peak_kib or None,
            run.cpu_seconds,
            {
                "cipher": self.cipher,
                "sftp_server": SFTP_SERVER,
                "server_rss": "sampled sum of VmHWM over sshd's session processes",
            },
        )
