"""The process guard (tests/procguard.py) has teeth: a pytest run whose tests leave processes
behind (a child, one that left the process tree, one a session fixture started) fails, naming
each, and the processes are dead afterwards; a test that waits for its child passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from .procguard import MARK, reap

REPO = Path(__file__).resolve().parent.parent

# Each leaked process blocks in signal.pause(): it lives until it is killed. Its output goes
# nowhere, so no pipe a run reads from stays open for as long as it lives.
PAUSE = "import signal; signal.pause()"
QUIET = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
CONFTEST = f"""
import os, subprocess, sys
import psutil, pytest
from tests.procguard import guard_session, guard_test

def record(pid):
    with open(os.environ["LEAKED"], "a") as f:
        f.write(f"{{pid}} {{psutil.Process(pid).create_time()}}\\n")

@pytest.fixture(scope="session")
def service():
    proc = subprocess.Popen([sys.executable, "-c", {PAUSE!r}], {QUIET})
    record(proc.pid)
    yield proc  # and never stopped
"""
TESTS = f"""
import os, subprocess, sys
import psutil
from conftest import record

KEEP = []  # the Popen objects outlive their tests, as a forgotten process would

def test_leaks_a_child():
    KEEP.append(subprocess.Popen([sys.executable, "-c", {PAUSE!r}], {QUIET}))
    record(KEEP[-1].pid)

def test_leaks_a_process_that_left_the_tree():
    # A child starts a grandchild in a new session and exits, as a daemonizing double fork
    # does: the grandchild is re-parented away from this process.
    spawn = "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {PAUSE!r}],"
    spawn += " start_new_session=True, {QUIET}).pid)"
    out = subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    record(pid)
    assert pid not in [p.pid for p in psutil.Process().children(recursive=True)]

def test_uses_a_session_service(service):
    assert service.poll() is None

def test_waits_for_its_child():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_the_mark_names_the_outer_run_too():
    # So an outer guard finds what this run starts, should this run's guard miss it.
    assert len(os.environ["{MARK}"].split()) == 2
"""


def test_the_guard_fails_a_run_that_leaves_processes_and_kills_them(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_leaky.py").write_text(TESTS)
    leaked = tmp_path / "leaked.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONPATH=str(REPO), LEAKED=str(leaked))
    try:
        # Two xdist workers, as in `make test`: each guards its own tests.
        run = subprocess.run(
            # -rN: no short summary, so each error's message appears once, in its section.
            [sys.executable, "-m", "pytest", "-q", "-rN", "-n", "2", "-p", "no:cacheprovider"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        report = run.stdout + run.stderr
        assert run.returncode == 1, report
        assert "5 passed" in report, report  # every test body passed; the guard failed them
        for test in ("test_leaks_a_child", "test_leaks_a_process_that_left_the_tree"):
            assert f"ERROR at teardown of {test}" in report, report
        # Two and no more: the tests that waited for their processes are not blamed.
        assert report.count("the test left processes running (now killed)") == 2, report
        # The session's error lands on whichever test its worker ran last.
        assert report.count("the session left processes running (now killed)") == 1, report
        recorded, alive = survivors(leaked)
        assert recorded == 3, "each leak was recorded"
        assert alive == [], "the guard killed every leaked process"
    finally:
        reap(survivors(leaked)[1])


def survivors(record: Path) -> tuple[int, list[psutil.Process]]:
    """How many processes `record` lists (pid and start time), and those still alive."""
    lines = record.read_text().split() if record.exists() else []
    alive = []
    for pid, started in zip(lines[::2], lines[1::2], strict=True):
        try:
            proc = psutil.Process(int(pid))
            if proc.create_time() == float(started) and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return len(lines) // 2, alive
