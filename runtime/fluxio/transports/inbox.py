"""Events a channel has received and its session has not yet taken (both transports)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from fluxproto import Event, FluxError, TransportTimeout

#: Bytes received that count as progress for a waiting `get`, as a whole frame does. A peer must
#: send at least this much per timeout to keep a connection alive without completing frames.
PROGRESS_BYTES = 64 * 1024


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
        self._arrived = 0  # bytes received since the current wait (or its last progress) began
        #: Called after each event taken (TCP resumes reading once the queue has room).
        self._on_take = on_take

    def __len__(self) -> int:
        return len(self.events)

    async def get(self, timeout: float | None, peer: str) -> Event:
        """The next event; raises the error once the queue is empty.

        Raises TransportTimeout after `timeout` seconds without an event, unless the transport
        reported PROGRESS_BYTES received meanwhile (`received`), which starts the `timeout`
        again: a large frame arriving steadily on a slow link is alive, a peer trickling a
        few bytes of a frame is idle. Wake-ups alone never extend the wait.
        """
        await self.wait(timeout, peer)
        return self._take()

    async def wait(
        self, timeout: float | None, peer: str, ready: Callable[[], bool] = lambda: False
    ) -> None:
        """Until an event is queued, or `ready()` is true when the reader is woken; the clock
        and the error as in `get`.

        Raises:
            TransportTimeout: neither within `timeout` (nor PROGRESS_BYTES meanwhile).
            FluxError: the error, once the queue is empty.
        """
        if self.events or ready():
            return
        loop = asyncio.get_running_loop()
        self._arrived = 0
        try:
            # asyncio.timeout, not wait_for: in 3.11 wait_for returns a result that lands in
            # the same loop iteration as a cancellation and loses the cancellation (Ctrl-C).
            async with asyncio.timeout(timeout) as clock:
                while not self.events and not ready():
                    if self.error is not None:
                        raise self.error
                    if timeout is not None and self._arrived >= PROGRESS_BYTES:
                        self._arrived = 0
                        clock.reschedule(loop.time() + timeout)
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
        except TimeoutError:
            raise TransportTimeout(f"no data from {peer} for {timeout:g} s") from None

    @property
    def waiting(self) -> bool:
        """True while a reader waits in `get` or `wait`."""
        return self._waiter is not None

    def alive(self) -> None:
        """The peer showed life elsewhere (a frame of the connection, not of this queue):
        a waiting reader's clock starts again, as after PROGRESS_BYTES."""
        self._arrived = PROGRESS_BYTES
        self.wake()

    def received(self, nbytes: int) -> None:
        """The transport read `nbytes` from the peer (progress for `get`'s timeout)."""
        self._arrived += nbytes

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
