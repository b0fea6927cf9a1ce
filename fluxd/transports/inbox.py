"""Events a channel has received and its session has not yet taken (both transports)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from fluxproto import Event, FluxError, TransportTimeout


class Inbox:
    """A queue of protocol events with one waiting reader and a sticky error.

    The transport puts events and wakes the reader once per batch; the session takes them with
    `get` or `poll`. Once an error is set, the reader gets the events queued before it (unless
    the error came from `fail`, which drops them) and then the error, on every call.
    """

    def __init__(self, on_take: Callable[[], None] | None = None) -> None:
        self.events: deque[Event] = deque()
        self.error: FluxError | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Called after each event taken (TCP resumes reading once the queue has room).
        self._on_take = on_take

    def __len__(self) -> int:
        return len(self.events)

    async def get(self, timeout: float | None, peer: str) -> Event:
        """The next event; raises the error once the queue is empty, TransportTimeout if
        nothing arrives from `peer` within `timeout` seconds."""
        while not self.events:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                raise TransportTimeout(f"no data from {peer} for {timeout:g} s") from None
            finally:
                self._waiter = None
        return self._take()

    def poll(self) -> Event | None:
        """The next event if one is queued, the error if the queue is empty, else None."""
        if self.events:
            return self._take()
        if self.error is not None:
            raise self.error
        return None

    def put(self, event: Event) -> None:
        """Queue an event; the reader is woken by `wake` (once per batch)."""
        self.events.append(event)

    def set_error(self, exc: FluxError) -> None:
        """End the queue with `exc` after the events already in it (the first error wins)."""
        if self.error is None:
            self.error = exc
        self.wake()

    def fail(self, exc: FluxError) -> None:
        """End the queue with `exc` now, dropping queued events (a local failure)."""
        self.events.clear()
        self.set_error(exc)

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take(self) -> Event:
        event = self.events.popleft()
        if self._on_take is not None:
            self._on_take()
        return event
