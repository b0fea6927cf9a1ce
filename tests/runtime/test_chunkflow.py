"""fluxio.chunkflow: control frames, read-ahead, windowed chunk sending, group-commit writing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from fluxio.buffers import BufferPool
from fluxio.chunkflow import (
    ChunkData,
    ChunkWriter,
    deadline,
    expect,
    handle_control,
    prefetch,
    recv_frame,
    send_chunks,
)
from fluxproto import (
    MAX_RANGES,
    MIN_CHUNK,
    Ack,
    Chunk,
    Conflict,
    Connection,
    ConnectionClosed,
    ConnectionLost,
    Event,
    FluxError,
    Frame,
    Goodbye,
    Hello,
    Meta,
    NoSpace,
    NotFound,
    OpenUpload,
    Ping,
    Pong,
    RemoteProtocolError,
    Role,
    State,
    Status,
    StorageError,
    TransportTimeout,
    Unavailable,
    Welcome,
    chunk_count,
    chunk_digest,
)
from fluxproto import Error as ErrorFrame

LONG = 30.0  # upper bound for waits that must succeed; never reached when the code works


# --- fakes --------------------------------------------------------------------------------------


class FakeChannel:
    """A Channel that records what is sent and replays scripted events."""

    copies_on_send = False

    def __init__(self, state: State = State.UPLOADING, events: Iterable[Event] = ()) -> None:
        self.conn: Any = SimpleNamespace(state=state)
        self.peer = "peer:1"
        self.sent: list[Frame] = []
        self.failed: list[FluxError] = []
        self.events: deque[Event] = deque(events)
        self.send_error: FluxError | None = None

    async def next_event(self, timeout: float | None = None) -> Event:
        return self.events.popleft()

    def poll(self) -> Event | None:
        return self.events.popleft() if self.events else None

    def send(self, frame: Frame) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(frame)

    async def drain(self, timeout: float | None = None) -> None:
        pass

    def fail(self, exc: FluxError) -> None:
        self.failed.append(exc)

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    @property
    def usable(self) -> bool:
        return self.conn.state not in (State.CLOSED, State.ERROR)


class MemChannel:
    """A Channel over a real `fluxproto.Connection`, joined in memory to another MemChannel."""

    copies_on_send = False

    def __init__(self, conn: Connection, peer: str) -> None:
        self.conn = conn
        self.peer = peer
        self.other: MemChannel | None = None
        self.events: deque[Event] = deque()
        self.arrived = asyncio.Event()
        self.sent: list[Frame] = []
        self.drains = 0
        self.max_inflight = 0  # most chunks ever sent and not yet acked

    def send(self, frame: Frame) -> None:
        self.conn.send(frame)
        self.sent.append(frame)
        if isinstance(frame, Chunk) and self.conn.transfer is not None:
            self.max_inflight = max(self.max_inflight, self.conn.transfer.inflight)
        assert self.other is not None
        self.other.deliver(b"".join(bytes(b) for b in self.conn.data_to_send()))

    def deliver(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
        self.arrived.set()

    async def next_event(self, timeout: float | None = None) -> Event:
        while not self.events:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
        return self.events.popleft()

    def poll(self) -> Event | None:
        return self.events.popleft() if self.events else None

    async def drain(self, timeout: float | None = None) -> None:
        self.drains += 1

    def fail(self, exc: FluxError) -> None:
        raise AssertionError(f"unexpected fail({exc!r})")

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


CS = MIN_CHUNK
DATA = random.Random(7).randbytes(5 * CS + 123)  # six chunks, the last one short
NCHUNKS = chunk_count(len(DATA), CS)
PIECES = [DATA[i * CS : (i + 1) * CS] for i in range(NCHUNKS)]


def chunk(i: int, data: bytes | memoryview | None = None) -> Chunk:
    payload = PIECES[i] if data is None else data
    return Chunk(i, chunk_digest(payload), payload)


def uploading_pair(window_chunks: int) -> tuple[MemChannel, MemChannel]:
    """A client and server channel with an upload of DATA open and the server's window set."""
    client = MemChannel(Connection(Role.CLIENT), "server:7070")
    server = MemChannel(Connection(Role.SERVER), "client:5555")
    client.other, server.other = server, client
    client.send(Hello(window=window_chunks * CS))
    server.send(Welcome(window=window_chunks * CS))
    client.send(OpenUpload("/f", len(DATA), CS))
    server.send(Status())
    client.events.clear()
    server.events.clear()
    assert client.conn.state is State.UPLOADING
    return client, server


async def chunks_of(
    indices: Iterable[int], pool: BufferPool | None = None
) -> AsyncIterator[ChunkData]:
    for i in indices:
        if pool is None:
            yield i, chunk_digest(PIECES[i]), PIECES[i]
        else:
            view = pool.get(len(PIECES[i]))
            view[:] = PIECES[i]
            yield i, chunk_digest(PIECES[i]), view


class AckingServer:
    """Receives chunks on the server channel and acks them `every` at a time (the rest at the
    end)."""

    def __init__(self, ch: MemChannel, every: int) -> None:
        self.ch, self.every = ch, every
        self.received: list[int] = []
        self.acked: set[int] = set()

    async def run(self, expected: int) -> None:
        batch: list[int] = []
        while len(self.received) < expected:
            event = await self.ch.next_event(LONG)
            if isinstance(event, Pong):
                continue
            assert isinstance(event, Chunk), event
            assert bytes(event.data) == PIECES[event.index]
            self.received.append(event.index)
            batch.append(event.index)
            if len(batch) == self.every or len(self.received) == expected:
                self.ch.send(Ack(((batch[0], len(batch)),)))
                self.acked.update(batch)
                batch = []


# --- handle_control / recv_frame / expect -------------------------------------------------------


def test_ping_is_answered_with_pong() -> None:
    ch = FakeChannel()
    assert handle_control(ch, Ping(42)) is None
    assert ch.sent == [Pong(42)]


def test_pong_is_swallowed() -> None:
    ch = FakeChannel()
    assert handle_control(ch, Pong(1)) is None
    assert ch.sent == []


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
def test_error_frame_raises_the_matching_exception(code: int, cls: type[FluxError]) -> None:
    with pytest.raises(cls, match="the message") as info:
        handle_control(FakeChannel(), ErrorFrame(code, "the message"))
    assert type(info.value) is cls


def test_goodbye_is_unavailable() -> None:
    with pytest.raises(Unavailable, match=r"peer:1 closed the connection: shutting down"):
        handle_control(FakeChannel(), Goodbye("shutting down"))
    with pytest.raises(Unavailable, match=r"peer:1 closed the connection: goodbye"):
        handle_control(FakeChannel(), Goodbye(""))


@pytest.mark.parametrize("clean", [True, False])
def test_connection_closed_is_connection_lost(clean: bool) -> None:
    with pytest.raises(ConnectionLost, match="peer:1 closed the connection"):
        handle_control(FakeChannel(), ConnectionClosed(clean))


def test_other_frames_are_returned() -> None:
    ch = FakeChannel()
    ack = Ack(((0, 1),))
    assert handle_control(ch, ack) is ack
    assert ch.sent == []


def test_recv_frame_skips_control_frames() -> None:
    ack = Ack(((0, 2),))
    ch = FakeChannel(events=[Ping(1), Pong(2), Ping(3), ack])
    assert asyncio.run(recv_frame(ch, LONG)) is ack
    assert ch.sent == [Pong(1), Pong(3)]


def test_expect_checks_the_frame_type() -> None:
    ack = Ack(((0, 1),))
    assert asyncio.run(expect(FakeChannel(events=[ack]), Ack, LONG)) is ack
    with pytest.raises(ConnectionLost, match="expected Meta, got Ack"):
        asyncio.run(expect(FakeChannel(events=[ack]), Meta, LONG))


class PingingChannel(FakeChannel):
    """A peer that sends a PING every 10 ms and nothing else (each one a whole frame)."""

    async def next_event(self, timeout: float | None = None) -> Event:
        await asyncio.sleep(0.01)
        return Ping(1)


def test_deadline_is_not_extended_by_frames_arriving() -> None:
    async def main() -> None:
        ch = PingingChannel(State.IDLE)
        async with asyncio.timeout(LONG):
            with pytest.raises(TransportTimeout, match=r"no HELLO from peer:1 within 0\.2 s"):
                async with deadline(ch, 0.2, "HELLO"):
                    await expect(ch, Hello, None)
        assert len(ch.sent) >= 2  # the pings were answered meanwhile

    asyncio.run(main())


def test_deadline_lets_other_timeouts_through() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError, match="a socket's own"):  # not a TransportTimeout
            async with deadline(FakeChannel(), LONG, "HELLO"):
                raise TimeoutError("a socket's own")
        async with deadline(FakeChannel(), LONG, "HELLO"):
            pass  # finishing in time raises nothing

    asyncio.run(main())


# --- prefetch -----------------------------------------------------------------------------------


class Tracker:
    """Counts calls running at once; each call blocks until its gate opens."""

    def __init__(self, n: int, open_gates: bool = False) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.started: list[int] = []
        self.start_sem = threading.Semaphore(0)
        self.gates = [threading.Event() for _ in range(n)]
        if open_gates:
            for g in self.gates:
                g.set()

    def __call__(self, i: int) -> int:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.started.append(i)
        self.start_sem.release()
        try:
            assert self.gates[i].wait(LONG)
            return i * 10
        finally:
            with self.lock:
                self.running -= 1

    async def wait_started(self, count: int) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.start_sem.acquire, True, LONG)


def test_prefetch_yields_results_in_order_even_when_later_ones_finish_first() -> None:
    done = [threading.Event() for _ in range(6)]

    def fn(i: int) -> int:
        if i == 0:
            assert done[2].wait(LONG)  # item 0 finishes only after item 2
        done[i].set()
        return i * i

    async def main() -> list[int]:
        with ThreadPoolExecutor(4) as pool:
            return [r async for r in prefetch(fn, range(6), 3, pool)]

    assert asyncio.run(main()) == [i * i for i in range(6)]


def test_prefetch_of_nothing() -> None:
    async def main() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            return [r async for r in prefetch(lambda i: i, [], 4, pool)]

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetch_runs_exactly_depth_calls_ahead(depth: int) -> None:
    n = 8
    track = Tracker(n)

    async def main() -> list[int]:
        with ThreadPoolExecutor(8) as pool:  # more workers than depth: depth is the limit
            agen = prefetch(track, range(n), depth, pool)
            first = asyncio.ensure_future(agen.__anext__())
            await track.wait_started(depth)
            # Nothing has finished, so nothing more can have been submitted.
            assert sorted(track.started) == list(range(depth))
            for g in track.gates:
                g.set()
            out = [await first]
            out += [r async for r in agen]
            return out

    assert asyncio.run(main()) == [i * 10 for i in range(n)]
    assert track.max_running == depth


def test_prefetch_exception_propagates_in_order() -> None:
    def fn(i: int) -> int:
        if i == 2:
            raise NotFound("chunk 2 is gone")
        return i

    async def main() -> list[int]:
        got: list[int] = []
        with (
            ThreadPoolExecutor(2) as pool,
            pytest.raises(NotFound, match="chunk 2 is gone"),
        ):
            async for r in prefetch(fn, range(6), 3, pool):
                got.append(r)
        return got

    assert asyncio.run(main()) == [0, 1]


def test_prefetch_stops_pulling_items_when_closed() -> None:
    pulled: list[int] = []

    def items() -> Iterable[int]:
        for i in range(100):
            pulled.append(i)
            yield i

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            agen = prefetch(lambda i: i, items(), 2, pool)
            assert await agen.__anext__() == 0
            await agen.aclose()

    asyncio.run(main())
    assert len(pulled) <= 3  # depth 2 ahead, plus the refill after the first result


def test_prefetch_close_waits_for_calls_in_flight() -> None:
    track = Tracker(10)
    track.gates[0].set()

    async def main() -> tuple[bool, int]:
        with ThreadPoolExecutor(4) as pool:
            agen = prefetch(track, range(10), 3, pool)
            assert await agen.__anext__() == 0
            await track.wait_started(4)  # item 0, then items 1-3 in flight (blocked)
            closing = asyncio.ensure_future(agen.aclose())
            for _ in range(50):  # let the close run as far as it can on its own (no I/O here)
                await asyncio.sleep(0)
            returned_early = closing.done()
            for g in track.gates:
                g.set()
            await closing
            return returned_early, track.running

    returned_early, running_after = asyncio.run(main())
    assert not returned_early, "aclose() returned while calls were still running"
    assert running_after == 0


# --- send_chunks --------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "every"), [(2, 2), (2, 1), (3, 3), (8, 8)])
def test_send_chunks_fills_but_never_exceeds_the_window(window: int, every: int) -> None:
    async def main() -> tuple[AckingServer, list[int], list[int], MemChannel]:
        client, server_ch = uploading_pair(window)
        server = AckingServer(server_ch, every)
        sent: list[int] = []
        acked: list[int] = []
        receiver = asyncio.ensure_future(server.run(NCHUNKS))
        await send_chunks(client, chunks_of(range(NCHUNKS)), acked.append, LONG, sent.append)
        await asyncio.wait_for(receiver, LONG)
        return server, sent, acked, client

    server, sent, acked, client = asyncio.run(main())
    assert server.received == list(range(NCHUNKS))
    # The server's Connection refuses chunks beyond its window, so reaching it is the check.
    assert client.max_inflight == min(window, NCHUNKS)
    assert sent == [len(p) for p in PIECES]
    assert sum(acked) == len(DATA)
    assert client.conn.transfer is not None
    assert client.conn.transfer.inflight == 0
    assert client.conn.transfer.acked == NCHUNKS
    assert client.drains == NCHUNKS  # the transport got a chance to push back after each chunk


def test_send_chunks_releases_pool_buffers_only_once_acked() -> None:
    pool = BufferPool()

    async def main() -> tuple[AckingServer, list[tuple[int, bool]]]:
        client, server_ch = uploading_pair(2)
        server = AckingServer(server_ch, 2)
        released: list[tuple[int, bool]] = []
        by_view: dict[int, int] = {}

        async def chunks() -> AsyncIterator[ChunkData]:
            async for index, digest, view in chunks_of(range(NCHUNKS), pool):
                by_view[id(view)] = index
                yield index, digest, view

        def release(view: memoryview) -> None:
            index = by_view[id(view)]
            released.append((index, index in server.acked))
            pool.put(view)

        receiver = asyncio.ensure_future(server.run(NCHUNKS))
        await send_chunks(client, chunks(), lambda n: None, LONG, release=release)
        await asyncio.wait_for(receiver, LONG)
        return server, released

    _, released = asyncio.run(main())
    assert sorted(i for i, _ in released) == list(range(NCHUNKS))  # each exactly once
    assert all(was_acked for _, was_acked in released)
    assert pool.idle_bytes > 0


def test_send_chunks_does_not_release_bytes_payloads() -> None:
    released: list[memoryview] = []

    async def main() -> None:
        client, server_ch = uploading_pair(4)
        receiver = asyncio.ensure_future(AckingServer(server_ch, 2).run(NCHUNKS))
        await send_chunks(
            client, chunks_of(range(NCHUNKS)), lambda n: None, LONG, release=released.append
        )
        await asyncio.wait_for(receiver, LONG)

    asyncio.run(main())
    assert released == []


def test_send_chunks_answers_pings_while_waiting_for_the_window() -> None:
    async def main() -> tuple[list[Frame], list[int]]:
        client, server_ch = uploading_pair(1)
        server = AckingServer(server_ch, 1)

        async def pinging_server() -> None:
            server_ch.send(Ping(99))
            await server.run(NCHUNKS)

        receiver = asyncio.ensure_future(pinging_server())
        await send_chunks(client, chunks_of(range(NCHUNKS)), lambda n: None, LONG)
        await asyncio.wait_for(receiver, LONG)
        return client.sent, server.received

    sent, received = asyncio.run(main())
    assert Pong(99) in sent
    assert received == list(range(NCHUNKS))


def test_send_chunks_raises_the_peers_error() -> None:
    async def main() -> None:
        client, server_ch = uploading_pair(2)

        async def failing_server() -> None:
            await server_ch.next_event(LONG)
            server_ch.send(ErrorFrame(507, "disk full"))

        receiver = asyncio.ensure_future(failing_server())
        with pytest.raises(NoSpace, match="disk full"):
            await send_chunks(client, chunks_of(range(NCHUNKS)), lambda n: None, LONG)
        await asyncio.wait_for(receiver, LONG)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("event", "match"),
    [(Status(), "unexpected Status during a transfer"), (ConnectionClosed(False), "closed")],
)
def test_send_chunks_refuses_unexpected_events(event: Event, match: str) -> None:
    async def main() -> None:
        client, _ = uploading_pair(2)
        client.events.append(event)
        with pytest.raises(ConnectionLost, match=match):
            await send_chunks(client, chunks_of(range(NCHUNKS)), lambda n: None, LONG)

    asyncio.run(main())


# --- ChunkWriter --------------------------------------------------------------------------------


class GatedSink:
    """A BatchSink whose first write blocks until `gate` opens; can fail on a chosen batch."""

    def __init__(self, fail_on: int | None = None, exc: FluxError | None = None) -> None:
        self.batches: list[list[int]] = []
        self.data: dict[int, bytes] = {}
        self.started = threading.Event()
        self.gate = threading.Event()
        self.fail_on, self.exc = fail_on, exc

    def write_chunks(self, batch: list[ChunkData]) -> None:
        self.batches.append([i for i, _, _ in batch])
        for i, _, data in batch:
            self.data[i] = bytes(data)  # a released buffer would raise here
        if len(self.batches) == 1:
            self.started.set()
            assert self.gate.wait(LONG)
        if self.fail_on == len(self.batches) - 1:
            assert self.exc is not None
            raise self.exc


def test_chunks_arriving_during_a_write_form_the_next_batch() -> None:
    sink = GatedSink()
    ch = FakeChannel(State.DOWNLOADING)
    durable: list[int] = []

    async def main() -> ChunkWriter:
        with ThreadPoolExecutor(1) as pool:
            writer = ChunkWriter(ch, sink, durable.append, pool)
            writer.add(chunk(0))
            assert await asyncio.to_thread(sink.started.wait, LONG)
            writer.add(chunk(2))
            writer.add(chunk(1))
            writer.add(chunk(5))
            assert sink.batches == [[0]]
            sink.gate.set()
            await writer.flush()
            writer.add(chunk(3))  # after the batches drained: a new one of its own
            await writer.flush()
        return writer

    writer = asyncio.run(main())
    assert sink.batches == [[0], [2, 1, 5], [3]]
    assert ch.sent == [Ack(((0, 1),)), Ack(((1, 2), (5, 1))), Ack(((3, 1),))]
    assert durable == [CS, 2 * CS + len(PIECES[5]), CS]
    assert writer.written == sum(durable)
    assert writer.error is None
    assert sink.data == {i: PIECES[i] for i in (0, 1, 2, 3, 5)}


def test_flush_without_chunks_returns() -> None:
    async def main() -> ChunkWriter:
        writer = ChunkWriter(FakeChannel(), GatedSink())
        await writer.flush()
        return writer

    writer = asyncio.run(main())
    assert writer.written == 0


def test_a_cancelled_flush_waits_for_the_write_then_stays_cancelled() -> None:
    """Shutdown cancels a session in its flush: the chunks still reach disk (and are acked),
    and the cancellation is not swallowed (the session would go on serving)."""
    sink = GatedSink()
    ch = FakeChannel(State.DOWNLOADING)

    async def main() -> tuple[ChunkWriter, bool]:
        writer = ChunkWriter(ch, sink)
        writer.add(chunk(0))
        flushing = asyncio.create_task(writer.flush())
        assert await asyncio.to_thread(sink.started.wait, LONG)
        flushing.cancel()
        await asyncio.sleep(0)  # one loop turn: the cancellation reaches the flush
        assert not flushing.done(), "the flush gave up on a write in progress"
        sink.gate.set()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
        return writer, flushing.cancelled()

    writer, cancelled = asyncio.run(main())
    assert cancelled
    assert writer.written == CS and ch.sent == [Ack(((0, 1),))]


def test_acks_are_canonical_and_split_at_max_ranges() -> None:
    sink = GatedSink()
    ch = FakeChannel(State.DOWNLOADING)
    # Every other index: one range each, 2 * MAX_RANGES + 1 of them, added in reverse order.
    indices = [2 * k + 2 for k in range(2 * MAX_RANGES + 1)]

    async def main() -> None:
        writer = ChunkWriter(ch, sink)
        writer.add(chunk(0))
        assert await asyncio.to_thread(sink.started.wait, LONG)
        for i in reversed(indices):
            writer.add(Chunk(i, bytes(16), b"x"))
        sink.gate.set()
        await writer.flush()

    asyncio.run(main())
    assert len(sink.batches) == 2
    acks = ch.sent[1:]
    assert all(isinstance(a, Ack) for a in acks)
    assert [len(a.ranges) for a in acks] == [MAX_RANGES, MAX_RANGES, 1]  # type: ignore[attr-defined]
    flat = [r for a in acks for r in a.ranges]  # type: ignore[attr-defined]
    assert flat == [(i, 1) for i in indices]


def test_adjacent_indices_merge_into_one_range() -> None:
    ch = FakeChannel(State.DOWNLOADING)
    sink = GatedSink()
    sink.gate.set()

    async def main() -> None:
        writer = ChunkWriter(ch, sink)
        for i in (4, 2, 3):
            writer.add(chunk(i))
        await writer.flush()

    asyncio.run(main())
    # add() of 4 starts a write; 2 and 3 are added before the task first runs: one batch.
    assert ch.sent == [Ack(((2, 3),))]


def test_storage_error_fails_the_channel_and_later_adds() -> None:
    exc = NoSpace("disk full")
    sink = GatedSink(fail_on=0, exc=exc)
    sink.gate.set()
    ch = FakeChannel(State.DOWNLOADING)
    durable: list[int] = []

    async def main() -> ChunkWriter:
        writer = ChunkWriter(ch, sink, durable.append)
        writer.add(chunk(0))
        await writer.flush()  # never raises
        with pytest.raises(NoSpace, match="disk full"):
            writer.add(chunk(1))
        return writer

    writer = asyncio.run(main())
    assert writer.error is exc
    assert ch.failed == [exc]
    assert ch.sent == []  # nothing acked
    assert durable == []
    assert writer.written == 0
    assert sink.batches == [[0]]


def test_failure_stops_the_batches_queued_behind_it() -> None:
    exc = StorageError("io error")
    sink = GatedSink(fail_on=0, exc=exc)
    ch = FakeChannel(State.DOWNLOADING)

    async def main() -> None:
        writer = ChunkWriter(ch, sink)
        writer.add(chunk(0))
        assert await asyncio.to_thread(sink.started.wait, LONG)
        writer.add(chunk(1))
        sink.gate.set()
        await writer.flush()

    asyncio.run(main())
    assert sink.batches == [[0]]
    assert ch.failed == [exc]
    assert ch.sent == []


def test_pool_buffers_are_released_after_the_write() -> None:
    pool = BufferPool()
    sink = GatedSink()
    sink.gate.set()
    ch = FakeChannel(State.DOWNLOADING)

    async def main() -> list[memoryview]:
        writer = ChunkWriter(ch, sink, release=pool.put)
        views = []
        for i in range(3):
            view = pool.get(len(PIECES[i]))
            view[:] = PIECES[i]
            views.append(view)
            writer.add(chunk(i, view))
        writer.add(chunk(3))  # bytes payloads are not the pool's
        await writer.flush()
        return views

    views = asyncio.run(main())
    assert sink.data == {i: PIECES[i] for i in range(4)}  # read intact by the sink
    assert pool.idle_bytes == 3 * CS
    for view in views:
        with pytest.raises(ValueError, match="released"):
            len(view)


def test_failed_batch_buffers_are_released_too() -> None:
    pool = BufferPool()
    sink = GatedSink(fail_on=0, exc=StorageError("bad sector"))
    sink.gate.set()

    async def main() -> None:
        writer = ChunkWriter(FakeChannel(State.DOWNLOADING), sink, release=pool.put)
        view = pool.get(CS)
        view[:] = PIECES[0]
        writer.add(chunk(0, view))
        await writer.flush()

    asyncio.run(main())
    assert pool.idle_bytes == CS


@pytest.mark.parametrize("state", [State.CLOSED, State.ERROR])
def test_no_ack_once_the_connection_is_gone(state: State) -> None:
    sink = GatedSink()
    sink.gate.set()
    ch = FakeChannel(state)
    durable: list[int] = []

    async def main() -> None:
        writer = ChunkWriter(ch, sink, durable.append)
        writer.add(chunk(0))
        await writer.flush()

    asyncio.run(main())
    assert ch.sent == []
    assert durable == [CS]  # durable all the same: reported on resume
    assert ch.failed == []


def test_ack_send_failure_is_not_a_write_failure() -> None:
    sink = GatedSink()
    sink.gate.set()
    ch = FakeChannel(State.DOWNLOADING)
    ch.send_error = ConnectionLost("gone")
    durable: list[int] = []

    async def main() -> ChunkWriter:
        writer = ChunkWriter(ch, sink, durable.append)
        writer.add(chunk(0))
        await writer.flush()
        writer.add(chunk(1))  # still accepted: the data is durable, the peer will resume
        await writer.flush()
        return writer

    writer = asyncio.run(main())
    assert writer.error is None
    assert ch.failed == []
    assert durable == [CS, CS]
