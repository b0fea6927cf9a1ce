"""The event loop both tools run their work on (uvloop), and how a run ends.

uvloop (0.23) shuts its default executor down in a thread of its own, which then reports back
with `call_soon_threadsafe`. A Ctrl-C that lands while asyncio.Runner waits for that thread
(the workers can be busy: fluxctl imports aioquic in one) makes the runner close the loop at
once, and the thread, once the workers were done, raised "RuntimeError: Event loop is closed":
a traceback after the command's one line. CPython's own loop checks for a closed loop there
(python/cpython#96827); uvloop does not. `Loop` joins the workers in the loop's own thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class Loop(uvloop.Loop):
    """uvloop's loop, whose default executor is shut down without a thread that can outlive
    the loop."""

    def __init__(self) -> None:
        super().__init__()
        self._executor: Any = None
        # One from the start: uvloop makes its own lazily, where no subclass can reach it.
        # No thread starts before the first job.
        self.set_default_executor(ThreadPoolExecutor(thread_name_prefix="fluxio"))

    def set_default_executor(self, executor: Any) -> None:
        super().set_default_executor(executor)
        self._executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Wait for the default executor's workers here, in the loop's thread (`timeout` is not
        applied: they are waited for).

        The runner calls this last, once every task has ended, so blocking the loop costs
        nothing. A Ctrl-C during the wait comes out as KeyboardInterrupt and leaves no thread
        that calls into the loop; a worker still busy ends on its own, and the future it would
        complete was cancelled with the task that awaited it."""
        executor, self._executor = self._executor, None
        super().set_default_executor(None)
        await super().shutdown_default_executor()  # no executor: marks it shut, starts nothing
        if executor is not None:
            executor.shutdown(wait=True)


#: Loops a Ctrl-C left marked as running (see `run`), kept to the end of the process: uvloop
#: raises when it frees one, and that would print after the command's line.
_STUCK: list[asyncio.AbstractEventLoop] = []


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new `Loop`, as `asyncio.run` would, then close the loop.

    A Ctrl-C during the run cancels `main` and comes out as KeyboardInterrupt (asyncio.Runner);
    one during the shutdown that follows comes out as KeyboardInterrupt too, and nothing else.
    After each run uvloop puts the process's signal wake-up back, then closes its own sockets
    in Python code: a Ctrl-C that lands there skips the rest of its bookkeeping, and the loop,
    still marked running, refuses to run or close for the rest of the shutdown (RuntimeError).
    """
    runner = asyncio.Runner(loop_factory=Loop)
    loop = runner.get_loop()
    try:
        with runner:
            return runner.run(main)
    except Exception as exc:
        if not _interrupted(exc):
            raise
        if not loop.is_closed():
            _STUCK.append(loop)
        raise KeyboardInterrupt from exc


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions `exc` was raised while handling."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False
