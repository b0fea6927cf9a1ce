"""The admin listener's own thread and event loop, so that it answers while the daemon's loop
is busy (a burst of TLS handshakes held its probes up to a second)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .. import log

#: Seconds `close` waits for the thread to end.
JOIN_TIMEOUT = 5.0

__all__ = ["AdminLoop"]


class AdminLoop:
    """One thread running one asyncio loop, serving one TCP listener.

    Args:
        serve: the connection handler (runs on this thread's loop).
        limit: the StreamReader's buffer limit.
    """

    def __init__(
        self,
        serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
        limit: int,
    ) -> None:
        self._serve, self._limit = serve, limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    async def start(self, host: str, port: int) -> tuple[Any, ...]:
        """Start the thread and bind there; returns the bound socket address.

        Raises:
            OSError: the address cannot be bound (the thread has ended).
        """
        bound: concurrent.futures.Future[tuple[Any, ...]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(host, port, bound), name="fluxd-admin-loop", daemon=True
        )
        self._thread.start()
        return await asyncio.wrap_future(bound)

    def close(self) -> None:
        """Stop serving and join the thread (connections still open are cut)."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.event("admin-thread-stuck", logging.ERROR, seconds=JOIN_TIMEOUT)

    def _run(self, host: str, port: int, bound: concurrent.futures.Future[tuple[Any, ...]]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(host, port, bound))
        except Exception as exc:  # noqa: BLE001 - the thread's last word: never a silent death
            log.event("admin-thread-failed", logging.ERROR, error=repr(exc), exc_info=True)
            if not bound.done():
                bound.set_exception(exc)
        finally:
            with contextlib.suppress(Exception):
                _cancel_all(loop)
            loop.close()

    async def _main(
        self, host: str, port: int, bound: concurrent.futures.Future[tuple[Any, ...]]
    ) -> None:
        self._stop = stop = asyncio.Event()
        try:
            server = await asyncio.start_server(self._serve, host, port, limit=self._limit)
        except OSError as exc:
            bound.set_exception(exc)
            return
        bound.set_result(server.sockets[0].getsockname())
        async with server:
            await stop.wait()
            server.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the connections still being served and let them finish their `finally`."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
