"""Run an operation against a server, reconnecting with backoff for up to `retry_for` seconds.

Only errors marked `retryable` (network failures, a server shutting down) are retried; every
attempt starts with a fresh connection, and resumable operations pick up where the last stopped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fluxio.requests import Channel
from fluxproto import ConnectionRefused, FluxError

from .connect import ClientOptions, connect
from .lanes import LaneSet, uses_lanes
from .session import ClientSession, close_sessions
from .url import FluxURL

T = TypeVar("T")

FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class Retrier:
    """Counts reconnects for `--json`'s `retries` and reports each one to `on_retry`."""

    def __init__(
        self,
        url: FluxURL,
        opts: ClientOptions,
        on_retry: Callable[[FluxError, float], None] | None = None,
        on_lanes: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`on_lanes` is told which lanes are up whenever that changes (see `run_lanes`)."""
        self.url, self.opts, self.on_retry, self.on_lanes = url, opts, on_retry, on_lanes
        self.retries = 0
        #: The transport the last attempt connected over ("tcp" or "quic"; "auto" for lanes
        #: of both), and its channel (the first lane's).
        self.transport = "tcp"
        self.channel: Channel | None = None
        #: The last attempt's lanes (`run_lanes`).
        self.lanes: LaneSet | None = None
        #: True once any attempt connected: from then on a refused connection is a daemon
        #: restarting, worth waiting for; before, it is most likely a wrong address.
        self.connected = False

    async def run(self, attempt: Callable[[ClientSession, int], Awaitable[T]]) -> T:
        """Call `attempt(session, n)` on a fresh connection until it succeeds or gives up.

        Raises:
            FluxError: the first non-retryable error, or the last one once time runs out.
        """
        return await self._retried(lambda: self._once(attempt))

    async def run_lanes(self, attempt: Callable[[LaneSet, int], Awaitable[T]]) -> T:
        """As `run`, with `attempt(lanes, n)` on fresh lanes (lanes.LaneSet): within an attempt
        each lane reconnects by itself; an attempt fails (and is retried here) once no lane
        is left to carry it."""
        return await self._retried(lambda: self._once_lanes(attempt))

    async def run_either(
        self, attempt: Callable[[ClientSession, int, LaneSet | None], Awaitable[T]]
    ) -> T:
        """`run_lanes` where the options ask for lanes (`attempt(session, n, lanes)` gets the
        first lane's connection and the lanes), else `run` (`attempt(session, n, None)`)."""
        if uses_lanes(self.opts):
            return await self.run_lanes(lambda lanes, n: attempt(lanes.first()[1], n, lanes))
        return await self.run(lambda session, n: attempt(session, n, None))

    async def _retried(self, once: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.opts.retry_for
        delay = FIRST_DELAY
        while True:
            try:
                return await once()
            except FluxError as exc:
                pause = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
                if not exc.retryable or time.monotonic() + pause > deadline:
                    raise
                if isinstance(exc, ConnectionRefused) and not self.connected:
                    raise
                if self.on_retry is not None:
                    self.on_retry(exc, pause)
                await asyncio.sleep(pause)
                delay = min(delay * 2, MAX_DELAY)
                self.retries += 1

    async def _once(self, attempt: Callable[[ClientSession, int], Awaitable[T]]) -> T:
        ch = await connect(self.url, self.opts)
        self.transport = ch.transport
        self.channel = ch
        self.connected = True
        session = ClientSession(ch)
        farewell: str | None = None
        try:
            result = await attempt(session, self.retries)
            farewell = "done"
            return result
        except asyncio.CancelledError:
            # Ctrl-C: say so, so the server lets go of this upload now, not when it notices
            # the silence (a rerun of the same command would wait for that).
            farewell = "interrupted"
            raise
        finally:
            await close_sessions([session], farewell)

    async def _once_lanes(self, attempt: Callable[[LaneSet, int], Awaitable[T]]) -> T:
        lanes = LaneSet(self.url, self.opts, self.on_lanes)
        farewell: str | None = None
        try:
            await lanes.start()
            self.transport, self.lanes, self.connected = lanes.transport, lanes, True
            self.channel = lanes.first()[1].ch
            result = await attempt(lanes, self.retries)
            farewell = "done"
            return result
        except asyncio.CancelledError:
            farewell = "interrupted"  # as in _once
            raise
        finally:
            await lanes.close(farewell)
