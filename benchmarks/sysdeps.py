"""The system tools the benchmarks need, installed through the `benchmarks/setup` script."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import BenchError

SETUP_SCRIPT = Path(__file__).with_name("setup")
SSHD = "/usr/sbin/sshd"
#: GNU time: peak RSS; iperf3, ip, ping: the link emulator and its self-test; nft: filters.
TOOLS = (SSHD, "scp", "ssh", "ssh-keygen", "rsync", "/usr/bin/time", "iperf3", "ip", "ping", "nft")


def missing_tools() -> list[str]:
    """The required binaries that are not installed."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ensure_tools() -> None:
    """Run `benchmarks/setup` (apt-get) if any tool is missing.

    Raises:
        BenchError: the setup script failed or the tools are still missing afterwards.
    """
    if not missing_tools():
        return
    if subprocess.run(["sh", str(SETUP_SCRIPT)], check=False).returncode != 0:
        raise BenchError(f"{SETUP_SCRIPT} failed; install the packages it names")
    if still := missing_tools():
        raise BenchError(f"still missing after setup: {', '.join(still)}")
