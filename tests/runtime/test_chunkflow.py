"""fluxio.chunkflow: read-ahead, a request's chunks sent within both windows, group-commit
writing with ACKs for the request."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor

import pytest
from runtime_support import LONG, Pair

from fluxio.buffers import BufferPool
from fluxio.chunkflow import ChunkData, ChunkSender, ChunkWriter, prefetch, send_chunks
from fluxio.requests import Request
from fluxproto import (
    MAX_RANGES,
    MIN_CHUNK,
    Ack,
    Chunk,
    Commit,
    Committed,
    ConnectionLost,
    FluxError,
    Frame,
    FrameType,
    LocalProtocolError,
    NoSpace,
    NotFound,
    OpenUpload,
    Ping,
    Pong,
    RequestState,
    Status,
    StorageError,
    chunk_count,
    chunk_digest,
)
from fluxproto import Error as ErrorFrame

CS = MIN_CHUNK
DATA = random.Random(7).randbytes(5 * CS + 123)  # six chunks, the last one short
NCHUNKS = chunk_count(len(DATA), CS)
PIECES = [DATA[i * CS : (i + 1) * CS] for i in range(NCHUNKS)]
TID = bytes(16)


def chunk(i: int, data: bytes | memoryview | None = None, rid: int = 1) -> Chunk:
    payload = PIECES[i] if data is None else data
    return Chunk(rid, i, chunk_digest(payload), payload)


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


async def uploading(
    window_chunks: int, transfer_chunks: int | None = None
) -> tuple[Pair, Request, Request]:
    """Routers on both ends and an upload of DATA open: (pair, client's request, server's)."""
    window = window_chunks * CS
    tw = (transfer_chunks or window_chunks) * CS
    pair = Pair(server={"window": window, "transfer_window": tw})
    up = await pair.client.open(lambda rid: OpenUpload(rid, "/f", len(DATA), CS))
    served = await pair.accept()
    served.send(Status(served.rid, TID))
    await up.expect(Status, LONG)
    return pair, up, served


class AckingServer:
    """Takes the upload's chunks at the server and acks them `every` at a time (the rest at
    the end)."""

    def __init__(self, req: Request, every: int) -> None:
        self.req, self.every = req, every
        self.received: list[int] = []
        self.acked: set[int] = set()

    async def run(self, expected: int) -> None:
        batch: list[int] = []
        while len(self.received) < expected:
            frame = await self.req.expect(Chunk, LONG)
            assert bytes(frame.data) == PIECES[frame.index]
            self.received.append(frame.index)
            batch.append(frame.index)
            if len(batch) == self.every or len(self.received) == expected:
                self.req.send(Ack(self.req.rid, ((batch[0], len(batch)),)))
                self.acked.update(batch)
                batch = []


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


# --- ChunkSender --------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "every"), [(2, 2), (2, 1), (3, 3), (8, 8)])
def test_send_chunks_fills_but_never_exceeds_the_window(window: int, every: int) -> None:
    async def main() -> tuple[AckingServer, list[int], list[int], Pair]:
        pair, up, served = await uploading(window)
        server = AckingServer(served, every)
        sent: list[int] = []
        acked: list[int] = []
        receiver = asyncio.ensure_future(server.run(NCHUNKS))
        await send_chunks(up, chunks_of(range(NCHUNKS)), acked.append, LONG, on_sent=sent.append)
        await asyncio.wait_for(receiver, LONG)
        await pair.close()
        return server, sent, acked, pair

    server, sent, acked, pair = asyncio.run(main())
    assert server.received == list(range(NCHUNKS))
    # The server's Connection refuses chunks beyond its window, so reaching it is the check.
    assert pair.client_ch.max_inflight == min(window * CS, len(DATA))
    assert sent == [len(p) for p in PIECES]
    assert sum(acked) == len(DATA)
    assert pair.client_ch.conn.sent_inflight == 0
    assert pair.client_ch.drains == NCHUNKS  # the transport could push back after each chunk


def test_the_transfer_window_binds_within_the_connection_window() -> None:
    async def main() -> int:
        pair, up, served = await uploading(8, transfer_chunks=2)
        receiver = asyncio.ensure_future(AckingServer(served, 2).run(NCHUNKS))
        await send_chunks(up, chunks_of(range(NCHUNKS)), lambda n: None, LONG)
        await asyncio.wait_for(receiver, LONG)
        await pair.close()
        return pair.client_ch.max_inflight

    assert asyncio.run(main()) == 2 * CS


def test_two_uploads_share_the_connection_window() -> None:
    """The first upload fills the connection's window; the second one's sender waits for room
    and is woken when the first one's chunks are acknowledged."""

    async def main() -> tuple[list[int], list[int]]:
        pair = Pair(server={"window": 2 * CS})
        ups = [
            await pair.client.open(lambda rid: OpenUpload(rid, f"/f{rid}", len(DATA), CS))
            for _ in range(2)
        ]
        served = [await pair.accept() for _ in range(2)]
        for req in served:
            req.send(Status(req.rid, TID))
        for req in ups:
            await req.expect(Status, LONG)
        servers = [AckingServer(req, 1) for req in served]
        receivers = [asyncio.ensure_future(s.run(NCHUNKS)) for s in servers]
        await asyncio.gather(
            *(send_chunks(req, chunks_of(range(NCHUNKS)), lambda n: None, LONG) for req in ups)
        )
        await asyncio.wait_for(asyncio.gather(*receivers), LONG)
        assert pair.client_ch.max_inflight <= 2 * CS
        await pair.close()
        return servers[0].received, servers[1].received

    first, second = asyncio.run(main())
    assert first == second == list(range(NCHUNKS))


def test_send_chunks_releases_pool_buffers_only_once_acked() -> None:
    pool = BufferPool()

    async def main() -> list[tuple[int, bool]]:
        pair, up, served = await uploading(2)
        server = AckingServer(served, 2)
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
        await send_chunks(up, chunks(), lambda n: None, LONG, release=release)
        await asyncio.wait_for(receiver, LONG)
        await pair.close()
        return released

    released = asyncio.run(main())
    assert sorted(i for i, _ in released) == list(range(NCHUNKS))  # each exactly once
    assert all(was_acked for _, was_acked in released)
    assert pool.idle_bytes > 0


def test_send_chunks_does_not_release_bytes_payloads() -> None:
    released: list[memoryview] = []

    async def main() -> None:
        pair, up, served = await uploading(4)
        receiver = asyncio.ensure_future(AckingServer(served, 2).run(NCHUNKS))
        await send_chunks(
            up, chunks_of(range(NCHUNKS)), lambda n: None, LONG, release=released.append
        )
        await asyncio.wait_for(receiver, LONG)
        await pair.close()

    asyncio.run(main())
    assert released == []


def test_pings_are_answered_while_a_sender_waits_for_the_window() -> None:
    async def main() -> tuple[list[Frame], list[int]]:
        pair, up, served = await uploading(1)
        server = AckingServer(served, 1)

        async def pinging_server() -> None:
            pair.server_ch.send(Ping(99))
            await server.run(NCHUNKS)

        receiver = asyncio.ensure_future(pinging_server())
        await send_chunks(up, chunks_of(range(NCHUNKS)), lambda n: None, LONG)
        await asyncio.wait_for(receiver, LONG)
        await pair.close()
        return pair.client_ch.sent, server.received

    sent, received = asyncio.run(main())
    assert Pong(99) in sent
    assert received == list(range(NCHUNKS))


def test_send_chunks_raises_the_requests_error_and_the_connection_goes_on() -> None:
    async def main() -> None:
        pair, up, served = await uploading(2)

        async def failing_server() -> None:
            await served.expect(Chunk, LONG)
            served.send(ErrorFrame(507, "disk full", served.rid))

        receiver = asyncio.ensure_future(failing_server())
        with pytest.raises(NoSpace, match="disk full"):
            await send_chunks(up, chunks_of(range(NCHUNKS)), lambda n: None, LONG)
        await asyncio.wait_for(receiver, LONG)
        assert pair.client_ch.usable and not pair.client.done
        await pair.close()

    asyncio.run(main())


def test_a_frame_the_sender_does_not_expect_is_a_bug() -> None:
    async def main() -> None:
        pair, up, _ = await uploading(2)
        sender = ChunkSender(up, lambda n: None, LONG)
        with pytest.raises(LocalProtocolError, match="unexpected Status while request 1"):
            sender.take(Status(1, TID))
        await pair.close()

    asyncio.run(main())


def test_commit_right_after_the_last_chunk_and_committed_acknowledges_the_rest() -> None:
    async def main() -> tuple[list[int], int]:
        pair, up, served = await uploading(8)
        acked: list[int] = []
        sender = ChunkSender(up, acked.append, LONG)
        await sender.send_all(chunks_of(range(NCHUNKS)))
        up.send(Commit(up.rid, chunk_digest(DATA), sender.count))
        for _ in range(NCHUNKS):
            await served.expect(Chunk, LONG)
        await served.expect(Commit, LONG)
        served.send(Ack(served.rid, ((0, 2),)))  # some ACKs may come before COMMITTED
        served.send(Committed(served.rid, len(DATA), chunk_digest(DATA)))
        sender.take(await up.next(LONG))
        assert isinstance(await up.next(LONG), Committed)
        sender.acked_all()
        await pair.close()
        return acked, pair.client_ch.conn.sent_inflight

    acked, inflight = asyncio.run(main())
    assert acked == [2 * CS, len(DATA) - 2 * CS]
    assert inflight == 0


def test_the_connection_failing_fails_the_sender() -> None:
    async def main() -> None:
        pair, up, _ = await uploading(1)
        pair.server_ch.close()
        with pytest.raises(ConnectionLost):
            await send_chunks(up, chunks_of(range(NCHUNKS)), lambda n: None, LONG)
        await pair.close()

    asyncio.run(main())


# --- ChunkWriter --------------------------------------------------------------------------------


class FakeRequest:
    """What ChunkWriter needs of a request: its rid, send, whether an ACK may go, fail."""

    def __init__(self, may_ack: bool = True, usable: bool = True) -> None:
        self.rid = 1
        self.sent: list[Frame] = []
        self.failed: list[FluxError] = []
        self.send_error: FluxError | None = None
        self.may_ack = may_ack
        self.state: RequestState | None = RequestState.UPLOADING
        self.channel = type("Ch", (), {"usable": usable})()

    def send(self, frame: Frame) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(frame)

    def can_send(self, ftype: FrameType) -> bool:
        return ftype is FrameType.ACK and self.may_ack

    def fail(self, exc: FluxError) -> None:
        self.failed.append(exc)


class GatedSink:
    """A BatchSink whose first write blocks until `gate` opens; can fail on a chosen batch."""

    def __init__(self, fail_on: int | None = None, exc: FluxError | None = None) -> None:
        self.batches: list[list[int]] = []
        self.data: dict[int, bytes] = {}
        self.started = threading.Event()
        self.gate = threading.Event()
        self.fail_on, self.exc = fail_on, exc

    def write_chunks(self, batch: list[ChunkData], *, durable: bool = True) -> None:
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
    ch = FakeRequest()
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
    assert ch.sent == [Ack(1, ((0, 1),)), Ack(1, ((1, 2), (5, 1))), Ack(1, ((3, 1),))]
    assert durable == [CS, 2 * CS + len(PIECES[5]), CS]
    assert writer.written == sum(durable)
    assert writer.error is None
    assert sink.data == {i: PIECES[i] for i in (0, 1, 2, 3, 5)}


def test_a_parallel_writer_writes_a_batch_while_another_waits() -> None:
    """`parallel=2`: the second chunk starts its own batch while the first is held, and is
    acknowledged first; a third waits for a free slot and takes what arrived meanwhile."""
    sink = GatedSink()
    ch = FakeRequest()

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            writer = ChunkWriter(ch, sink, executor=pool, parallel=2)
            writer.add(chunk(0))
            assert await asyncio.to_thread(sink.started.wait, LONG)
            writer.add(chunk(1))
            while not ch.sent:  # the second batch goes through while the first is held
                await asyncio.sleep(0)
            writer.add(chunk(2))
            writer.add(chunk(3))
            while len(ch.sent) < 2:
                await asyncio.sleep(0)
            assert sink.batches == [[0], [1], [2, 3]]
            sink.gate.set()
            await writer.flush()

    asyncio.run(main())
    assert ch.sent == [Ack(1, ((1, 1),)), Ack(1, ((2, 2),)), Ack(1, ((0, 1),))]


def test_flush_without_chunks_returns() -> None:
    async def main() -> ChunkWriter:
        writer = ChunkWriter(FakeRequest(), GatedSink())
        await writer.flush()
        return writer

    writer = asyncio.run(main())
    assert writer.written == 0


def test_a_cancelled_flush_waits_for_the_write_then_stays_cancelled() -> None:
    """Shutdown cancels a session in its flush: the chunks still reach disk (and are acked),
    and the cancellation is not swallowed (the session would go on serving)."""
    sink = GatedSink()
    ch = FakeRequest()

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
    assert writer.written == CS and ch.sent == [Ack(1, ((0, 1),))]


def test_acks_are_canonical_and_split_at_max_ranges() -> None:
    sink = GatedSink()
    ch = FakeRequest()
    # Every other index: one range each, 2 * MAX_RANGES + 1 of them, added in reverse order.
    indices = [2 * k + 2 for k in range(2 * MAX_RANGES + 1)]

    async def main() -> None:
        writer = ChunkWriter(ch, sink)
        writer.add(chunk(0))
        assert await asyncio.to_thread(sink.started.wait, LONG)
        for i in reversed(indices):
            writer.add(Chunk(1, i, bytes(16), b"x"))
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
    ch = FakeRequest()
    sink = GatedSink()
    sink.gate.set()

    async def main() -> None:
        writer = ChunkWriter(ch, sink)
        for i in (4, 2, 3):
            writer.add(chunk(i))
        await writer.flush()

    asyncio.run(main())
    # add() of 4 starts a write; 2 and 3 are added before the task first runs: one batch.
    assert ch.sent == [Ack(1, ((2, 3),))]


def test_storage_error_fails_the_request_and_later_adds() -> None:
    exc = NoSpace("disk full")
    sink = GatedSink(fail_on=0, exc=exc)
    sink.gate.set()
    ch = FakeRequest()
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
    ch = FakeRequest()

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
    ch = FakeRequest()

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
        writer = ChunkWriter(FakeRequest(), sink, release=pool.put)
        view = pool.get(CS)
        view[:] = PIECES[0]
        writer.add(chunk(0, view))
        await writer.flush()

    asyncio.run(main())
    assert pool.idle_bytes == CS


@pytest.mark.parametrize(("usable", "may_ack"), [(False, True), (True, False)])
def test_no_ack_once_the_connection_is_gone_or_the_request_takes_none(
    usable: bool, may_ack: bool
) -> None:
    """Gone, or the request ended (COMMITTED acknowledged everything) or was cancelled."""
    sink = GatedSink()
    sink.gate.set()
    ch = FakeRequest(may_ack, usable)
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
    ch = FakeRequest()
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


@pytest.mark.parametrize("until_commit", [True, False])
def test_an_upload_takes_no_ack_once_its_commit_took_effect(until_commit: bool) -> None:
    """COMMITTED acknowledges every chunk: a small file in one flight costs no ACK."""
    sink = GatedSink()
    sink.gate.set()
    req = FakeRequest()
    req.state = RequestState.COMMITTING

    async def main() -> None:
        writer = ChunkWriter(req, sink, until_commit=until_commit)  # type: ignore[arg-type]
        writer.add(chunk(0))
        await writer.flush()

    asyncio.run(main())
    assert req.sent == ([] if until_commit else [Ack(1, ((0, 1),))])
