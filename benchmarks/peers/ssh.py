"""A throwaway sshd with its own host and client keys, and scp or rsync into it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .. import BenchError
from ..measure import Run, TreePeakSampler, run_measured
from ..netem.topology import wait_listening
from ..sysdeps import SSHD
from .base import LOOPBACK, Placement, Service, Transfer

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


def _sshd_config(tmp: Path, port: int, host: str) -> str:
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {host}",
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


def _answers_ssh(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether sshd on 127.0.0.1:`port` sends its banner within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def _wait_accepts(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float, placement: Placement
) -> None:
    if placement.loopback:
        ready = _answers_ssh(port, proc, timeout)
    else:  # another namespace: this process cannot connect there, `ss` inside it can tell
        ready = wait_listening(placement.server_prefix, port, proc, timeout)
    if ready:
        return
    if proc.poll() is not None:
        raise BenchError(f"sshd exited with {proc.returncode}: {log.read_text().strip()}")
    raise BenchError(f"sshd did not accept on {placement.host}:{port} within {timeout:.0f} s")


class SshPeer(Service):
    """sshd in the foreground (`-D`) for the life of the context; scp sends into `dest_dir`."""

    tool = "scp"

    def __init__(
        self, dest_dir: Path, cipher: str = CIPHER, placement: Placement = LOOPBACK
    ) -> None:
        self.dest_dir, self.cipher, self.placement = dest_dir, cipher, placement
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
        (tmp / "sshd_config").write_text(_sshd_config(tmp, self.port, self.placement.host))
        if not PRIVSEP_DIR.exists():  # normally made by the ssh service, which may not run here
            PRIVSEP_DIR.mkdir(mode=0o755)
            self._made_privsep_dir = True
        log = tmp / "sshd.log"
        with log.open("wb") as out:
            argv = [*self.placement.server_prefix, SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")]
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=out)
        _wait_accepts(self.port, self._proc, log, 15, self.placement)

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

    def ssh_options(self) -> list[str]:
        assert self._tmp is not None, "sshd is not running"
        return [
            "-i", str(self._tmp / "client_key"),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-c", self.cipher,
        ]  # fmt: skip

    def remote_shell(self) -> str:
        """The ssh command (for rsync's `-e`) that logs into this sshd."""
        return " ".join(["ssh", *self.ssh_options(), "-p", str(self.port)])

    def client_argv(self, src: Path, name: str) -> list[str]:
        target = f"root@{self.placement.host}:{self.dest(name)}"
        scp = ["scp", "-q", *self.ssh_options(), "-P", str(self.port), str(src), target]
        return [*self.placement.client_prefix, *scp]

    def send(self, src: Path, name: str, timeout: float | None = None) -> Transfer:
        """Send `src` to `dest(name)`; server RSS is sampled over sshd's session processes."""
        size = src.stat().st_size
        run, server_kib = self.measure(
            self.client_argv(src, name), timeout or max(600.0, size / 5e6)
        )
        return Transfer.from_run(self.tool, size, run, server_kib, self.details())

    def measure(self, argv: list[str], timeout: float) -> tuple[Run, int | None]:
        """Run any client command against this sshd: (the run, the peak RSS in KiB sampled over
        sshd's session processes, None if none was seen).

        Raises:
            BenchError: the client exited with a non-zero status or timed out.
        """
        assert self._proc is not None, "sshd is not running"
        with TreePeakSampler(self._proc.pid) as sampler:
            run = run_measured(argv, timeout=timeout)
        if run.exit_code != 0:
            raise BenchError(f"{self.tool} exited with {run.exit_code}: {run.stderr.strip()}")
        return run, sampler.peak_kib or None

    def details(self) -> dict[str, str]:
        """What a report says about how this peer ran."""
        return {
            "cipher": self.cipher,
            "sftp_server": SFTP_SERVER,
            "server_rss": "sampled sum of VmHWM over sshd's session processes",
        }


class RsyncPeer(SshPeer):
    """The same throwaway sshd; `rsync` over ssh (same cipher) sends into `dest_dir`."""

    tool = "rsync"

    def client_argv(self, src: Path, name: str) -> list[str]:
        ssh = self.remote_shell()
        target = f"root@{self.placement.host}:{self.dest(name)}"
        return [*self.placement.client_prefix, "rsync", "-q", "-e", ssh, str(src), target]
