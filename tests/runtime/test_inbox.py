"""fluxio.transports.inbox: the event queue both transports hand their sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from fluxio.transports.inbox import PROGRESS_BYTES, Inbox
from fluxproto import ConnectionLost, Event, Ping, RemoteProtocolError, TransportTimeout

LONG = 30.0  # bound on waits that must succeed; never reached when the code works


def test_get_returns_events_in_order_then_the_error_every_time() -> None:
    async def main() -> None:
        inbox = Inbox()
        inbox.put(Ping(nonce=1))
        inbox.put(Ping(nonce=2))
        inbox.set_error(RemoteProtocolError("bad frame"))
        assert await inbox.get(LONG, "peer") == Ping(nonce=1)
        assert inbox.poll() == Ping(nonce=2)
        for _ in range(2):
            with pytest.raises(RemoteProtocolError, match="bad frame"):
                await inbox.get(LONG, "peer")
            with pytest.raises(RemoteProtocolError, match="bad frame"):
                inbox.poll()

    asyncio.run(main())


def test_the_first_error_wins() -> None:
    inbox = Inbox()
    inbox.set_error(ConnectionLost("first"))
    inbox.set_error(RemoteProtocolError("second"))
    with pytest.raises(ConnectionLost, match="first"):
        inbox.poll()


def test_fail_drops_queued_events() -> None:
    inbox = Inbox()
    inbox.put(Ping(nonce=1))
    inbox.fail(ConnectionLost("disk full"))
    assert len(inbox) == 0
    with pytest.raises(ConnectionLost, match="disk full"):
        inbox.poll()


def test_poll_on_an_empty_inbox_is_none() -> None:
    assert Inbox().poll() is None


async def waiting_reader(inbox: Inbox) -> asyncio.Future[Event]:
    """A task blocked in `inbox.get`."""
    reader = asyncio.ensure_future(inbox.get(LONG, "peer"))
    await asyncio.sleep(0)
    return reader


def test_a_waiting_reader_is_woken_by_wake_not_by_put() -> None:
    async def main() -> None:
        inbox = Inbox()
        reader = await waiting_reader(inbox)
        inbox.put(Ping(nonce=7))
        await asyncio.sleep(0)
        assert not reader.done()  # a batch is handed over by one wake
        inbox.wake()
        assert await asyncio.wait_for(reader, LONG) == Ping(nonce=7)

    asyncio.run(main())


def test_an_error_wakes_a_waiting_reader() -> None:
    async def main() -> None:
        inbox = Inbox()
        reader = await waiting_reader(inbox)
        inbox.set_error(ConnectionLost("gone"))
        with pytest.raises(ConnectionLost, match="gone"):
            await asyncio.wait_for(reader, LONG)

    asyncio.run(main())


def test_get_times_out_naming_the_peer() -> None:
    async def main() -> None:
        with pytest.raises(TransportTimeout, match=r"no data from 10\.0\.0\.1:7070 for 0\.01 s"):
            await Inbox().get(0.01, "10.0.0.1:7070")

    asyncio.run(main())


def test_on_take_runs_after_each_event_taken() -> None:
    async def main() -> None:
        sizes: list[int] = []
        inbox = Inbox(on_take=lambda: sizes.append(len(inbox)))
        for nonce in range(3):
            inbox.put(Ping(nonce=nonce))
        await inbox.get(LONG, "peer")
        inbox.poll()
        inbox.poll()
        assert sizes == [2, 1, 0]

    asyncio.run(main())


# --- deadlines: bytes that complete no frame must not keep a wait alive ---------------------

BOUND = 5.0  # a wait that should end at a short timeout but has not after this is a failure


class Ticker:
    """Calls `action` every `seconds` until cancelled: a peer trickling bytes in."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds, self._action = seconds, action
        self._handle = self._loop.call_later(seconds, self._tick)

    def _tick(self) -> None:
        self._action()
        self._handle = self._loop.call_later(self._seconds, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()


async def times_out_while_trickling(inbox: Inbox, timeout: float) -> None:
    """`inbox.get(timeout)` raises TransportTimeout while a byte arrives every 10 ms, as a
    transport reports a byte that completes no frame."""

    def one_byte() -> None:
        inbox.received(1)
        inbox.wake()

    trickle = Ticker(0.01, one_byte)
    try:
        async with asyncio.timeout(BOUND):
            with pytest.raises(TransportTimeout):
                await inbox.get(timeout, "peer")
    finally:
        trickle.cancel()


def test_bytes_trickling_in_do_not_extend_the_timeout() -> None:
    async def main() -> None:
        started = asyncio.get_running_loop().time()
        await times_out_while_trickling(Inbox(), 0.2)
        assert asyncio.get_running_loop().time() - started >= 0.2

    asyncio.run(main())


def test_progress_of_a_large_frame_keeps_the_wait_alive() -> None:
    async def main() -> None:
        inbox = Inbox()
        fed = 0

        def a_slice() -> None:  # a big frame arriving steadily on a slow link
            nonlocal fed
            inbox.received(PROGRESS_BYTES)
            fed += 1
            if fed == 40:  # 2 s of steady progress against a 1 s timeout: the frame completes
                inbox.put(Ping(nonce=9))
            inbox.wake()

        feed = Ticker(0.05, a_slice)
        try:
            async with asyncio.timeout(BOUND * 2):
                assert await inbox.get(1.0, "peer") == Ping(nonce=9)
        finally:
            feed.cancel()

    asyncio.run(main())


def test_progress_is_counted_from_the_start_of_each_wait() -> None:
    async def main() -> None:
        inbox = Inbox()
        inbox.received(10 * PROGRESS_BYTES)  # arrived before the wait: not progress within it
        inbox.put(Ping(nonce=1))
        assert await inbox.get(0.2, "peer") == Ping(nonce=1)  # a whole frame restarts the clock
        await times_out_while_trickling(inbox, 0.2)

    asyncio.run(main())


def test_a_cancellation_arriving_with_the_event_is_not_swallowed() -> None:
    # What Ctrl-C under asyncio.run does: cancel a reader in the same loop iteration as its
    # event arrives. asyncio.wait_for (3.11) returned the event and lost the cancellation.
    async def main() -> None:
        inbox = Inbox()
        reader = await waiting_reader(inbox)
        inbox.put(Ping(nonce=3))
        inbox.wake()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert inbox.poll() == Ping(nonce=3)  # not taken: the next reader gets it

    asyncio.run(main())
