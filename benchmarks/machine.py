"""A description of the machine and software a run was taken on, for the results file."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from .files import filesystem

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def first_line(argv: list[str]) -> str:
    """The first line a command prints (stdout, else stderr); "unavailable" if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unavailable"
    if done.returncode != 0:
        return "unavailable"
    text = done.stdout.strip() or done.stderr.strip()
    return text.splitlines()[0] if text else ""


def _commit() -> str:
    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return rev + (" + uncommitted changes" if dirty not in ("", "unavailable") else "")


def load_average() -> str:
    """The 1-minute load average: other work on a shared machine skews absolute figures."""
    return f"{os.getloadavg()[0]:.2f}"


def describe(data_dir: Path) -> dict[str, str]:
    """CPU, cores, kernel, Python, date, load, and the filesystem holding `data_dir`."""
    fstype, mount = filesystem(data_dir)
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": first_line(["ssh", "-V"]),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_at_start": load_average(),
        "filesystem": f"{fstype} ({mount}, files in {data_dir})",
    }
