"""fluxio.requests: the handshake helpers, and the router that carries many requests over one
channel (frames routed by rid, connection frames, the request limit, idle rules)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest
from runtime_support import LONG, Pair

from fluxio.requests import MAX_QUEUED, RequestOver, deadline, expect, handle_control
from fluxproto import (
    Ack,
    Cancel,
    Cancelled,
    Chunk,
    Conflict,
    ConnectionClosed,
    ConnectionLost,
    EndReason,
    Entries,
    Entry,
    Event,
    FluxError,
    Frame,
    Goodbye,
    Hello,
    Info,
    ListDir,
    NoSpace,
    NotFound,
    OpenUpload,
    Ping,
    Pong,
    RemoteProtocolError,
    Stat,
    Status,
    StorageError,
    TransportTimeout,
    Unavailable,
    chunk_digest,
)
from fluxproto import Error as ErrorFrame

ENTRY = Entry("a", "file", 1)


class FakeChannel:
    """Replays scripted events and records what is sent (the handshake helpers' view)."""

    peer = "peer:1"

    def __init__(self, events: list[Event] | None = None) -> None:
        self.events: deque[Event] = deque(events or [])
        self.sent: list[Frame] = []

    async def next_event(self, timeout: float | None = None) -> Event:
        return self.events.popleft()

    def send(self, frame: Frame) -> None:
        self.sent.append(frame)


# --- the connection before requests ---------------------------------------------------------


def test_ping_is_answered_and_pong_swallowed() -> None:
    ch: Any = FakeChannel()
    assert handle_control(ch, Ping(42)) is None
    assert handle_control(ch, Pong(1)) is None
    assert ch.sent == [Pong(42)]


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (404, NotFound),
        (409, Conflict),
        (507, NoSpace),
        (500, StorageError),
        (450, RemoteProtocolError),
    ],
)
def test_an_error_frame_raises_the_matching_exception(code: int, cls: type[FluxError]) -> None:
    with pytest.raises(cls, match="the message") as info:
        handle_control(FakeChannel(), ErrorFrame(code, "the message"))  # type: ignore[arg-type]
    assert type(info.value) is cls


def test_goodbye_is_unavailable_and_the_end_of_the_stream_connection_lost() -> None:
    ch: Any = FakeChannel()
    with pytest.raises(Unavailable, match=r"peer:1 closed the connection: shutting down"):
        handle_control(ch, Goodbye("shutting down"))
    with pytest.raises(Unavailable, match=r"peer:1 closed the connection: goodbye"):
        handle_control(ch, Goodbye(""))
    with pytest.raises(ConnectionLost, match="peer:1 closed the connection"):
        handle_control(ch, ConnectionClosed(True))


def test_expect_skips_control_frames_and_checks_the_type() -> None:
    hello = Hello()
    ch: Any = FakeChannel([Ping(1), Pong(2), hello])
    assert asyncio.run(expect(ch, Hello, LONG)) is hello
    assert ch.sent == [Pong(1)]
    with pytest.raises(ConnectionLost, match="expected Hello, got Stat"):
        asyncio.run(expect(FakeChannel([Ping(1), Stat(1, "x")]), Hello, LONG))  # type: ignore[arg-type]


class PingingChannel(FakeChannel):
    """A peer that sends a PING every 10 ms and nothing else (each one a whole frame)."""

    async def next_event(self, timeout: float | None = None) -> Event:
        await asyncio.sleep(0.01)
        return Ping(1)


def test_a_deadline_is_not_extended_by_frames_arriving() -> None:
    async def main() -> None:
        ch: Any = PingingChannel()
        async with asyncio.timeout(LONG):
            with pytest.raises(TransportTimeout, match=r"no HELLO from peer:1 within 0\.2 s"):
                async with deadline(ch, 0.2, "HELLO"):
                    await expect(ch, Hello, None)
        assert len(ch.sent) >= 2  # the pings were answered meanwhile

    asyncio.run(main())


def test_a_deadline_lets_other_timeouts_through() -> None:
    async def main() -> None:
        ch: Any = FakeChannel()
        with pytest.raises(TimeoutError, match="a socket's own"):  # not a TransportTimeout
            async with deadline(ch, LONG, "HELLO"):
                raise TimeoutError("a socket's own")

    asyncio.run(main())


# --- routing ----------------------------------------------------------------------------------


def test_each_request_gets_its_own_frames_and_ends_with_its_last() -> None:
    async def main() -> None:
        pair = Pair()
        ls = await pair.client.open(lambda rid: ListDir(rid, "d"))
        st = await pair.client.open(lambda rid: Stat(rid, "a"))
        served = {r.opening.TYPE.name: r for r in [await pair.accept(), await pair.accept()]}
        assert served["LIST"].opening == ListDir(ls.rid, "d")
        # Interleaved on the wire, apart in the queues.
        served["LIST"].send(Entries(ls.rid, (ENTRY,), done=False))
        served["STAT"].send(Info(st.rid, ENTRY))
        served["LIST"].send(Entries(ls.rid, (ENTRY, ENTRY), done=True))
        assert await st.expect(Info, LONG) == Info(st.rid, ENTRY)
        assert st.ended is EndReason.ANSWERED
        with pytest.raises(RequestOver, match=f"request {st.rid} ended"):
            await st.next(LONG)
        pages = [await ls.expect(Entries, LONG) for _ in range(2)]
        assert [len(p.entries) for p in pages] == [1, 2]
        assert await ls.wait_ended(LONG) is EndReason.LISTED
        assert pair.client.requests == pair.server.requests == {}
        assert pair.client.counts["received ENTRIES"] == 2
        await pair.close()

    asyncio.run(main())


def test_an_error_ends_its_request_and_the_others_go_on() -> None:
    async def main() -> None:
        pair = Pair()
        first = await pair.client.open(lambda rid: Stat(rid, "gone"))
        second = await pair.client.open(lambda rid: Stat(rid, "here"))
        a, b = await pair.accept(), await pair.accept()
        a.send(ErrorFrame(404, "no such file", a.rid))
        b.send(Info(b.rid, ENTRY))
        with pytest.raises(NotFound, match="no such file"):
            await first.next(LONG)
        assert first.ended is EndReason.ERROR
        assert (await second.expect(Info, LONG)).entry == ENTRY
        assert not pair.client.done
        await pair.close()

    asyncio.run(main())


def test_the_server_hears_cancel_out_of_band_and_499_ends_the_request() -> None:
    async def main() -> None:
        pair = Pair()
        req = await pair.client.open(lambda rid: Stat(rid, "slow"))
        served = await pair.accept()
        heard: list[bool] = []
        served.on_cancel = lambda: heard.append(True)
        req.cancel()
        req.cancel()  # once only
        while not served.cancelled:
            await asyncio.sleep(0)
        assert heard == [True]
        assert served.poll() is None  # CANCEL is not one of the request's frames
        served.send(ErrorFrame(499, "cancelled", served.rid))
        with pytest.raises(Cancelled):
            await req.next(LONG)
        assert req.ended is EndReason.CANCELLED
        assert pair.client_ch.sent.count(Cancel(req.rid)) == 1
        await pair.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("last_word", "error"),
    [
        (Goodbye("shutting down"), Unavailable),
        (ErrorFrame(401, "token revoked"), FluxError),
        (None, ConnectionLost),
    ],
)
def test_the_connection_ending_ends_every_open_request(
    last_word: Frame | None, error: type[FluxError]
) -> None:
    async def main() -> None:
        pair = Pair()
        reqs = [await pair.client.open(lambda rid: Stat(rid, "x")) for _ in range(3)]
        if last_word is None:
            pair.server_ch.close()
        else:
            pair.server_ch.send(last_word)
        for req in reqs:
            with pytest.raises(error):
                await req.next(LONG)
        failure = await pair.client.wait()
        assert isinstance(failure, error)
        with pytest.raises(error):
            await pair.client.open(lambda rid: Stat(rid, "y"))
        await pair.close()

    asyncio.run(main())


def test_pings_are_answered_by_the_router() -> None:
    async def main() -> list[Frame]:
        pair = Pair()
        pair.server_ch.send(Ping(7))
        req = await pair.client.open(lambda rid: Stat(rid, "x"))  # after the PING, in order
        served = await pair.accept()
        served.send(Info(served.rid, ENTRY))
        await req.expect(Info, LONG)
        await pair.close()
        return pair.client_ch.sent

    assert Pong(7) in asyncio.run(main())


def test_a_client_opens_no_more_requests_than_the_server_allows() -> None:
    async def main() -> None:
        pair = Pair(server={"requests": 2})
        first = await pair.client.open(lambda rid: Stat(rid, "1"))
        await pair.client.open(lambda rid: Stat(rid, "2"))
        third = asyncio.ensure_future(pair.client.open(lambda rid: Stat(rid, "3")))
        served = [await pair.accept(), await pair.accept()]
        for _ in range(10):
            await asyncio.sleep(0)
        assert not third.done(), "a third request while two are open"
        assert pair.client.idle_opens == 1  # the second went with the first: no round trip
        served[0].send(Info(served[0].rid, ENTRY))
        await first.expect(Info, LONG)
        req = await asyncio.wait_for(third, LONG)
        assert (await pair.accept()).rid == req.rid
        await pair.close()

    asyncio.run(main())


def test_a_request_that_does_not_take_its_frames_holds_the_router_back() -> None:
    async def main() -> None:
        pair = Pair()
        flood = await pair.client.open(lambda rid: ListDir(rid, "big"))
        other = await pair.client.open(lambda rid: Stat(rid, "a"))
        listing, stat = await pair.accept(), await pair.accept()
        for _ in range(MAX_QUEUED + 5):
            listing.send(Entries(listing.rid, (ENTRY,), done=False))
        stat.send(Info(stat.rid, ENTRY))
        for _ in range(20):
            await asyncio.sleep(0)
        assert other.poll() is None, "routed past a full queue"
        for _ in range(MAX_QUEUED // 2 + 1):
            await flood.expect(Entries, LONG)
        assert await other.expect(Info, LONG) == Info(stat.rid, ENTRY)
        await pair.close()

    asyncio.run(main())


def test_an_idle_connection_is_given_up_only_while_no_request_is_open() -> None:
    async def main() -> None:
        pair = Pair(idle_timeout=0.05)
        req = await pair.client.open(lambda rid: Stat(rid, "x"))
        served = await pair.accept()
        # With a request open the requests' own waits apply, however long it takes.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pair.server.wait()), 0.2)
        served.send(Info(served.rid, ENTRY))
        await req.expect(Info, LONG)
        failure = await asyncio.wait_for(pair.server.wait(), LONG)
        assert isinstance(failure, TransportTimeout)
        assert "no data from client:5555 for 0.05 s" in str(failure)
        await pair.close()

    asyncio.run(main())


def test_a_request_waiting_for_its_peer_times_out() -> None:
    async def main() -> None:
        pair = Pair()
        req = await pair.client.open(lambda rid: Stat(rid, "x"))
        await pair.accept()
        with pytest.raises(TransportTimeout, match="no data from server:7070"):
            await req.next(0.05)
        await pair.close()

    asyncio.run(main())


def test_a_local_failure_fails_the_request_at_once() -> None:
    async def main() -> None:
        pair = Pair()
        req = await pair.client.open(lambda rid: ListDir(rid, "d"))
        served = await pair.accept()
        served.send(Entries(served.rid, (ENTRY,), done=False))
        req.fail(NoSpace("disk full"))
        with pytest.raises(NoSpace, match="disk full"):
            await req.next(LONG)  # not the page that was queued
        await pair.close()

    asyncio.run(main())


def test_acks_of_one_request_wake_another_that_waits_for_window_room() -> None:
    """wait_room returns when the connection window has room again, whichever request's ACK
    made it."""

    async def main() -> None:
        cs = 4096
        data = bytes(cs)
        pair = Pair(server={"window": cs})
        a = await pair.client.open(lambda rid: OpenUpload(rid, "/a", 2 * cs, cs))
        b = await pair.client.open(lambda rid: OpenUpload(rid, "/b", cs, cs))
        sa, sb = await pair.accept(), await pair.accept()
        for served in (sa, sb):
            served.send(Status(served.rid, bytes(16)))
        await a.expect(Status, LONG)
        await b.expect(Status, LONG)
        a.send(Chunk(a.rid, 0, chunk_digest(data), data))
        assert not pair.client_ch.conn.can_send_chunk(b.rid, cs)
        waiting = asyncio.ensure_future(b.wait_room(cs, LONG))
        await asyncio.sleep(0)
        assert not waiting.done()
        await sa.expect(Chunk, LONG)
        sa.send(Ack(sa.rid, ((0, 1),)))
        await asyncio.wait_for(waiting, LONG)
        assert pair.client_ch.conn.can_send_chunk(b.rid, cs)
        await pair.close()

    asyncio.run(main())
