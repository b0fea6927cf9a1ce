"""fluxd.transports.inbox: the event queue both transports hand their sessions."""

from __future__ import annotations

import asyncio

import pytest

from fluxd.transports.inbox import Inbox
from fluxproto import ConnectionLost, Ping, RemoteProtocolError, TransportTimeout

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


def test_a_waiting_reader_is_woken_by_wake_not_by_put() -> None:
    async def main() -> None:
        inbox = Inbox()
        reader = asyncio.ensure_future(inbox.get(LONG, "peer"))
        await asyncio.sleep(0)
        inbox.put(Ping(nonce=7))
        await asyncio.sleep(0)
        assert not reader.done()  # a batch is handed over by one wake
        inbox.wake()
        assert await asyncio.wait_for(reader, LONG) == Ping(nonce=7)

    asyncio.run(main())


def test_an_error_wakes_a_waiting_reader() -> None:
    async def main() -> None:
        inbox = Inbox()
        reader = asyncio.ensure_future(inbox.get(LONG, "peer"))
        await asyncio.sleep(0)
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
