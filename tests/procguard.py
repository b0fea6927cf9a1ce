"""The process guard: a test that leaves a process running fails, and the process is killed.

Each test (and the session as a whole, for what wider fixtures start) notes the processes it
owns before it runs and after: any new one still alive afterwards is killed and named in an
error. Under pytest-xdist each worker guards its own tests.

A process is ours if it descends from this pytest process, or carries our token in
FLUX_TEST_SPAWNED_BY. The session puts the token in os.environ, which every helper passes on,
so a process that left the tree (its parent exited: a double fork, a `setsid` shell) is still
found. fluxd itself never forks or daemonizes; the token is for whatever a test may start.
A nested pytest run appends its own token, so an outer run finds what an inner one started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator

import psutil
import pytest

#: The environment variable that marks processes started under a guarded run.
MARK = "FLUX_TEST_SPAWNED_BY"
#: Ours, once checked: by (pid, start time), so a reused pid is a new process.
_Key = tuple[int, float]
_marked: dict[_Key, bool] = {}
KILL_TIMEOUT = 10.0
#: Seconds after which a process's environment is surely its final one.
SETTLED = 5.0

__all__ = ["MARK", "guard_session", "guard_test", "owned", "reap"]


def _key(proc: psutil.Process) -> _Key:
    return proc.pid, proc.create_time()


def _carries(proc: psutil.Process, token: str) -> bool:
    """Whether `proc` was started with `token` in MARK. Its environment never changes once it
    runs, so an answer is kept; but a process caught while it is still being exec'd can show an
    empty one, so a "no" is kept only for a process old enough to be settled."""
    key = _key(proc)
    if key in _marked:
        return _marked[key]
    try:
        carries = token in proc.environ().get(MARK, "").split()
    except (psutil.AccessDenied, psutil.ZombieProcess):  # not ours to read: not ours
        carries = False
    if carries or time.time() - key[1] > SETTLED:
        _marked[key] = carries
    return carries


def owned(token: str) -> dict[_Key, psutil.Process]:
    """Live processes this run owns: descendants of this process and carriers of `token`."""
    me = psutil.Process()
    descendants = {p.pid for p in me.children(recursive=True)}
    found: dict[_Key, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid == me.pid or not (proc.pid in descendants or _carries(proc, token)):
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:  # a zombie has exited already
                found[_key(proc)] = proc
        except psutil.NoSuchProcess:
            continue
    return found


def reap(procs: list[psutil.Process]) -> list[str]:
    """Kill `procs` and their descendants and wait until they are dead; describe each of
    `procs` for the error message."""
    shown, family = [], []
    for proc in procs:
        try:
            family += [proc, *proc.children(recursive=True)]
            shown.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            continue
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    # Dead means gone or a zombie: one re-parented to an init that does not reap stays a
    # zombie, which psutil's own wait would wait on until its timeout.
    deadline = time.monotonic() + KILL_TIMEOUT
    while not all(map(_dead, family)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return shown


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="session", autouse=True)
def guard_session() -> Iterator[str]:
    """Mark every process the run starts, and fail the run if any outlives it."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    outer = os.environ.get(MARK)
    os.environ[MARK] = f"{outer} {token}" if outer else token
    before = owned(token)
    yield token
    left = [p for k, p in owned(token).items() if k not in before]
    if outer is None:
        del os.environ[MARK]
    else:
        os.environ[MARK] = outer
    if left:
        pytest.fail(f"the session left processes running (now killed): {reap(left)}", pytrace=False)


@pytest.fixture(autouse=True)
def guard_test(guard_session: str) -> Iterator[None]:
    """Fail a test that leaves a process it started running, and kill the process."""
    before = owned(guard_session)
    yield
    left = [p for k, p in owned(guard_session).items() if k not in before]
    if left:
        pytest.fail(f"the test left processes running (now killed): {reap(left)}", pytrace=False)
