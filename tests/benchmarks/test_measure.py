"""benchmarks.measure: a measured command, run to its end or taken down with its group."""

from __future__ import annotations

import sys

import pytest

from benchmarks import BenchError
from benchmarks.measure import MeasuredCommand, run_measured


def test_a_measured_run_has_its_exit_code_output_and_time() -> None:
    run = run_measured([sys.executable, "-c", "print('hi'); raise SystemExit(3)"])
    assert (run.exit_code, run.stdout) == (3, "hi\n")
    assert run.seconds > 0 and run.maxrss_kib > 0


def test_a_command_still_running_at_the_end_is_killed_with_its_group() -> None:
    argv = [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '60'])"]
    with pytest.raises(BenchError, match="did not finish within"), MeasuredCommand(argv) as command:
        assert command.poll() is None
        command.wait(timeout=0.2)
    assert command.poll() == -9  # GNU time killed, and reaped
