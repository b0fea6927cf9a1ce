"""fluxio.runner: how fluxctl and fluxd run their work on uvloop, and how a run ends.

A Ctrl-C that lands while the run shuts down its default executor must come out as one
KeyboardInterrupt (the command's one line, exit 130) and nothing else: uvloop joins the
executor in a thread of its own that, once the workers were done, called back into a loop the
interrupted runner had already closed ("RuntimeError: Event loop is closed", printed from that
thread after the command's line).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fluxio.runner import run


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Python's own SIGINT handler, as a command starts with (a test runner may have another)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture
def thread_failures(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """What any thread raised and did not catch (it would print a traceback)."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    return failures


class InterruptedShutdown(ThreadPoolExecutor):
    """A default executor whose shutdown is where a Ctrl-C lands. The first shutdown raises
    SIGINT; called from another thread than the main one, it then holds on until the test saw
    the run end (the runner closed the loop), as a worker busy for a while would hold it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.run_over = threading.Event()
        self.shut_by: list[threading.Thread] = []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shut_by.append(threading.current_thread())
        if len(self.shut_by) == 1:
            signal.raise_signal(signal.SIGINT)  # in the main thread: KeyboardInterrupt here
            assert self.run_over.wait(timeout=60), "the run never ended"
        super().shutdown(wait, cancel_futures=cancel_futures)


def test_ctrl_c_while_the_default_executor_shuts_down_leaves_no_thread_behind(
    sigint_raises: None, thread_failures: list[BaseException | None]
) -> None:
    executor = InterruptedShutdown()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        return await loop.run_in_executor(None, threading.get_ident)

    with pytest.raises(KeyboardInterrupt):
        run(main())
    executor.run_over.set()
    assert executor.shut_by, "the interrupt did not land in the executor's shutdown"
    for thread in executor.shut_by:
        if thread is not threading.current_thread():
            thread.join(timeout=60)
            assert not thread.is_alive()
    executor.shutdown()
    assert thread_failures == []


def test_a_run_joins_its_default_executor_before_it_returns() -> None:
    workers: list[threading.Thread] = []

    async def main() -> str:
        worker = await asyncio.to_thread(threading.current_thread)
        workers.append(worker)
        return worker.name

    name = run(main())
    assert workers and name == workers[0].name
    assert workers[0] is not threading.current_thread()
    assert not workers[0].is_alive(), "the run left its executor's worker running"


def test_a_run_returns_what_its_coroutine_returns_and_raises_what_it_raises() -> None:
    async def value() -> Any:
        return 42

    async def failure() -> None:
        raise ValueError("x")

    assert run(value()) == 42
    with pytest.raises(ValueError, match="x"):
        run(failure())


def test_ctrl_c_as_uvloop_stops_its_run_is_an_interrupt(
    sigint_raises: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop closes its own signal sockets in Python code after each run, the wake-up already
    given back: a Ctrl-C there leaves the loop marked running, and the runner's shutdown raised
    RuntimeError ("Cannot close a running event loop": exit 1 instead of 130)."""
    closed: list[socket.socket] = []
    armed = threading.Event()
    real_close = socket.socket.close

    def close(sock: socket.socket) -> None:
        real_close(sock)
        if armed.is_set():
            closed.append(sock)
            if len(closed) == 2:  # the second of the loop's pair: nothing is left open
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(socket.socket, "close", close)

    async def main() -> None:
        armed.set()  # the next sockets closed are the loop's, as its run ends

    with pytest.raises(KeyboardInterrupt):
        run(main())
    assert len(closed) == 2, "the interrupt did not land as the run stopped"
