"""`make demo` proves each step it announces: run it (on a smaller file) and expect success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_checks_every_step_and_succeeds(tmp_path: Path) -> None:
    env = dict(os.environ, FLUX_DEMO_MIB="48", TMPDIR=str(tmp_path))
    p = subprocess.run(
        [sys.executable, "-m", "fluxctl.demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "DEMO FAILED" not in p.stdout + p.stderr
    assert "fluxctl: interrupted" in p.stdout
    assert "OK: identical" in p.stdout
