"""Run an operation against a server, reconnecting with backoff for up to `retry_for` seconds.

Only errors marked `retryable` (network failures, a server shutting down) are retried; every
attempt starts with a fresh connection, and resumable operations pick up where the last stopped.
Where the server's name leads to several nodes (nodes.py), connecting passes over nodes that do
not answer, and an attempt that failed is retried on the next node.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fluxio.requests import Channel
from fluxproto import ConnectError, ConnectionRefused, FluxError

from .connect import ClientOptions, connect
from .lanes import LaneSet, uses_lanes
from .nodes import NodeRing, Resolver
from .session import ClientSession, close_sessions
from .url import FluxURL

T = TypeVar("T")
S = TypeVar("S")

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
        resolver: Resolver | None = None,
    ) -> None:
        """`on_lanes` is told which lanes are up whenever that changes (see `run_lanes`);
        `resolver` resolves the name to its nodes' addresses (nodes.py; tests give their
        own)."""
        self.url, self.opts, self.on_retry, self.on_lanes = url, opts, on_retry, on_lanes
        #: The nodes the name leads to: `opts.nodes`, else what it resolves to.
        self.nodes = NodeRing(url, opts.nodes, resolver)
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

    @property
    def node(self) -> str | None:
        """The node the last attempt connected to, where the name leads to several (`--json`
        reports it); None for a name of one node."""
        return self.nodes.node if self.connected else None

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

    async def connect_node(self, connect_one: Callable[[FluxURL], Awaitable[S]]) -> S:
        """`connect_one(url)` to the node the run is on, else to each next node in turn while
        one fails in a way worth retrying (refused, silent, unavailable): the first that
        connects is where the run is from then on.

        Raises:
            FluxError: a failure retrying cannot mend (trust, a token) at once; otherwise,
                once every node failed, ConnectionRefused if every one refused, else
                ConnectError naming each node's failure.
        """
        failures: dict[str, FluxError] = {}
        while len(failures) < self.nodes.count:
            url = await self.nodes.current()  # resolves the name the first time
            try:
                return await connect_one(url)
            except FluxError as exc:
                if not exc.retryable or self.nodes.count == 1:
                    raise
                failures[url.where] = exc
                self.nodes.move_on()
        reasons = "; ".join(f"{where}: {exc.message}" for where, exc in failures.items())
        if all(isinstance(exc, ConnectionRefused) for exc in failures.values()):
            raise ConnectionRefused(f"no node of {self.url.address} answers ({reasons})")
        raise ConnectError(f"cannot reach any node of {self.url.address} ({reasons})")

    def _failed_on_node(self, exc: FluxError) -> None:
        """An attempt that connected failed: a retry starts on the next node."""
        if exc.retryable:
            self.nodes.move_on()

    async def _once(self, attempt: Callable[[ClientSession, int], Awaitable[T]]) -> T:
        ch = await self.connect_node(lambda url: connect(url, self.opts))
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
        except FluxError as exc:
            self._failed_on_node(exc)
            raise
        finally:
            await close_sessions([session], farewell)

    async def _once_lanes(self, attempt: Callable[[LaneSet, int], Awaitable[T]]) -> T:
        lanes = await self.connect_node(self._lanes_up)
        farewell: str | None = None
        try:
            self.transport, self.lanes, self.connected = lanes.transport, lanes, True
            self.channel = lanes.first()[1].ch
            result = await attempt(lanes, self.retries)
            farewell = "done"
            return result
        except asyncio.CancelledError:
            farewell = "interrupted"  # as in _once
            raise
        except FluxError as exc:
            self._failed_on_node(exc)
            raise
        finally:
            await lanes.close(farewell)

    async def _lanes_up(self, url: FluxURL) -> LaneSet:
        """Lanes to `url`'s node, once one is up (all to one node: they carry one upload)."""
        lanes = LaneSet(url, self.opts, self.on_lanes)
        try:
            await lanes.start()
        except BaseException:
            await lanes.close(None)
            raise
        return lanes
