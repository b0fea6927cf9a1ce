"""The event loop both tools run their work on (uvloop), and how a run ends."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new uvloop loop, as `asyncio.run` would, then close the loop.

    A Ctrl-C during the run cancels `main` and comes out as KeyboardInterrupt (asyncio.Runner).
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
