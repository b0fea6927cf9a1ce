"""Async chunk flow shared by the daemon and the client, per request: send a request's chunks
within both of the peer's windows, and write received chunks durably in batches (group commit)
before acking them.

Both directions of a transfer use this module: the client sends with `ChunkSender` on upload and
receives with `ChunkWriter` on download; the daemon does the opposite. Requests come from
`fluxio.requests`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from fluxproto import (
    MAX_RANGES,
    Ack,
    Chunk,
    FluxError,
    Frame,
    FrameType,
    LocalProtocolError,
    RequestState,
    TransportError,
    to_ranges,
)

from .buffers import POOL
from .ratelimit import Pace, paced
from .requests import Request

T = TypeVar("T")
R = TypeVar("R")

Buffer = bytes | bytearray | memoryview
ChunkData = tuple[int, bytes, Buffer]  # index, digest, payload


async def prefetch(
    fn: Callable[[T], R], items: Iterable[T], depth: int, executor: Executor
) -> AsyncGenerator[R, None]:
    """Run blocking `fn` over `items` in `executor`, `depth` ahead, yielding results in order.

    Closing the generator cancels calls not yet started and waits for those already running,
    so whatever they use (an open file) may be closed right after.
    """
    it = iter(items)
    pending: deque[concurrent.futures.Future[R]] = deque()

    def refill() -> None:
        while len(pending) < depth:
            try:
                item = next(it)
            except StopIteration:
                return
            pending.append(executor.submit(fn, item))

    refill()
    try:
        while pending:
            result = await asyncio.wrap_future(pending.popleft())
            refill()
            yield result
    finally:
        running = [f for f in pending if not f.cancel()]
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running])


class ChunkSender:
    """Sends one request's chunks within the peer's windows and takes the ACKs for them.

    `on_sent(nbytes)` is called as each chunk is handed to the transport and `on_acked(nbytes)`
    as acknowledgements (durable on the peer) arrive. An acked chunk's buffer, if a memoryview,
    goes to `release`: by then the socket has long stopped referencing it. `pace(nbytes)`, if
    given, charges a rate limit and returns the seconds to wait before sending. `timeout` is an
    idle timeout (see fluxio.requests) on the peer's acks and on its taking our bytes.
    `on_chunks(indices)`, if given, hears which chunks each ACK acknowledged (before
    `on_acked`).

    Attributes:
        count: CHUNK frames sent (an upload's COMMIT `sent`).
    """

    def __init__(
        self,
        req: Request,
        on_acked: Callable[[int], None],
        timeout: float | None,
        on_sent: Callable[[int], None] = lambda n: None,
        release: Callable[[memoryview], None] = POOL.put,
        pace: Pace | None = None,
        early: tuple[type[Frame], ...] = (),
        on_chunks: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.req, self.timeout = req, timeout
        self._on_chunks = on_chunks
        self._early = early
        #: Frames of the `early` kinds that arrived among the ACKs, in order, for the caller
        #: (a one-flight upload's STATUS may come while its chunk waits for window room).
        self.held_back: deque[Frame] = deque()
        self._on_acked, self._on_sent, self._release, self._pace = on_acked, on_sent, release, pace
        self._sizes: dict[int, int] = {}  # chunks sent and not yet acknowledged
        self._buffers: dict[int, memoryview] = {}  # their buffers, where the transport needs them
        self.count = 0

    async def send_all(self, chunks: AsyncIterator[ChunkData]) -> None:
        """Send every chunk from `chunks`, each once both windows have room; ACKs that arrive
        meanwhile are taken. Returns once all are sent (see `settle`).

        Raises:
            FluxError: the request's ERROR, a frame it does not expect now, the connection.
        """
        async for index, digest, data in chunks:
            self.take_queued()
            await self.send(index, digest, data)
        self.take_queued()

    async def send(self, index: int, digest: bytes, data: Buffer) -> None:
        """Send one chunk once both windows have room (taking ACKs meanwhile) and the pace
        allows; the caller chose it.

        Raises:
            FluxError: as `send_all`.
        """
        req, ch = self.req, self.req.channel
        size = len(data)
        while not req.conn.can_send_chunk(req.rid, size):
            await req.wait_room(size, self.timeout)
            self.take_queued()
        await paced(self._pace, size)
        req.send(Chunk(req.rid, index, digest, data))
        self.count += 1
        self._sizes[index] = size
        if isinstance(data, memoryview):
            if ch.copies_on_send:
                self._release(data)  # the transport holds its own copy
            else:
                self._buffers[index] = data  # the socket may still read it until acked
        self._on_sent(size)
        await ch.drain(self.timeout)

    async def settle(self) -> None:
        """Until every chunk sent is acknowledged (a download's last ACK ends its request)."""
        while self.req.inflight:
            self.take(await self.req.next(self.timeout))
        self.take_queued()

    def take_queued(self) -> None:
        """Take the ACKs already queued for the request."""
        while (frame := self.req.poll()) is not None:
            self.take(frame)

    def take(self, frame: Frame) -> None:
        """Count an ACK, keep a frame of the `early` kinds in `held_back`; any other frame is
        one this transfer does not expect now.

        Raises:
            LocalProtocolError: neither.
        """
        if isinstance(frame, self._early):
            self.held_back.append(frame)
            return
        if not isinstance(frame, Ack):
            raise LocalProtocolError(
                f"unexpected {type(frame).__name__} while request {self.req.rid} sends chunks"
            )
        nbytes = 0
        indices = list(_indices(frame))
        for index in indices:
            nbytes += self._sizes.pop(index, 0)
            data = self._buffers.pop(index, None)
            if data is not None:
                self._release(data)
        if self._on_chunks is not None:
            self._on_chunks(indices)
        self._on_acked(nbytes)

    def acked_all(self) -> None:
        """COMMITTED acknowledged every chunk of the upload: count and release the rest."""
        rest = sum(self._sizes.values())
        for data in self._buffers.values():  # the peer has them all: the socket is done
            self._release(data)
        self._buffers.clear()
        self._sizes.clear()
        if rest:
            self._on_acked(rest)


async def send_chunks(
    req: Request,
    chunks: AsyncIterator[ChunkData],
    on_acked: Callable[[int], None],
    timeout: float | None,
    **options: Any,
) -> None:
    """Send every chunk from `chunks` for `req` and return once all are acknowledged;
    `options` as ChunkSender's (on_sent, release, pace, early, on_chunks)."""
    sender = ChunkSender(req, on_acked, timeout, **options)
    await sender.send_all(chunks)
    await sender.settle()


def _by_request(pending: Sequence[tuple[ChunkData, Request, bool]]) -> dict[Request, list[int]]:
    found: dict[Request, list[int]] = {}
    for (index, _, _), req, _ in pending:
        found.setdefault(req, []).append(index)
    return found


def _indices(ack: Ack) -> Iterable[int]:
    for start, cnt in ack.ranges:
        yield from range(start, start + cnt)


class BatchSink(Protocol):
    """Blocking writer (StagedFile / storage Upload): durable when it returns, unless told
    `durable=False` (the chunks are then kept for a commit that makes them so)."""

    def write_chunks(self, batch: list[ChunkData], *, durable: bool = True) -> None: ...


class ChunkWriter:
    """Group commit: chunks that arrive while a batch is being synced form the next batch.

    With `parallel` > 1 (a sink that takes several batches at once: an object store, which has
    no sync to share), up to that many batches are written at once: a chunk that arrives while
    fewer are in progress starts its own, and each is acknowledged when it is done.

    After each batch is durable, an ACK for it is sent for `req` (while the request may still
    send one) and `on_durable(nbytes)` called. A write failure is injected into the request, so
    its next receive raises it. With `until_commit` (an upload's receiver), no ACK goes once the
    request's COMMIT took effect: COMMITTED acknowledges every chunk, and small files committed
    in one flight then cost no ACK at all. With `durable` False the sink keeps the chunks for
    the commit, which alone makes them durable: no ACK and no `on_durable` for them.
    """

    def __init__(
        self,
        req: Request,
        sink: BatchSink,
        on_durable: Callable[[int], None] = lambda n: None,
        executor: Executor | None = None,
        release: Callable[[memoryview], None] = POOL.put,
        until_commit: bool = False,
        durable: bool = True,
        parallel: int = 1,
    ) -> None:
        self._until_commit, self._durable, self._parallel = until_commit, durable, parallel
        self._req, self._sink, self._on_durable, self._executor = req, sink, on_durable, executor
        self._release = release
        # Chunks waiting for the next batch: each with the request that acknowledges it and
        # whether it is to be written (False: a copy of one written before, or in this batch).
        self._pending: list[tuple[ChunkData, Request, bool]] = []
        self._running: set[asyncio.Task[None]] = set()
        self.error: FluxError | None = None
        self.written = 0

    def add(self, chunk: Chunk, req: Request | None = None, *, write: bool = True) -> None:
        """Write `chunk` with the next batch and acknowledge it once durable.

        Args:
            req: the request it came on, whose ACK it gets (default: the writer's); a shared
                download's requests write through one writer (PROTOCOL.md 9.1).
            write: False for a chunk that came again on another request, already added: it
                is not written twice, only acknowledged once the first copy is durable.

        Raises:
            FluxError: an earlier batch failed (see `error`).
        """
        if self.error is not None:
            raise self.error
        data = (chunk.index, chunk.digest, chunk.data)
        self._pending.append((data, req or self._req, write))
        self._start()

    def _start(self) -> None:
        """Start a batch of what is pending if fewer than `parallel` are in progress."""
        if self._pending and self.error is None and len(self._running) < self._parallel:
            task = asyncio.get_running_loop().create_task(self._write())
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()  # what arrived meanwhile

    async def flush(self) -> None:
        """Wait until every added chunk is durable (or has failed); write errors are not raised
        here (see `error`). A cancellation still waits for the writes in progress, then is
        raised: the caller stops, and nothing is left half-written behind it."""
        cancelled = False
        while self._running:
            try:
                await asyncio.shield(asyncio.gather(*self._running))
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _write(self) -> None:
        # What is pending when the task first runs: chunks added right after it was started
        # join its batch.
        pending, self._pending = self._pending, []
        if self.error is not None:  # an earlier batch failed: these are not written
            self._fail(pending, self.error)
            self._give_back(pending)
            return
        if not pending:
            return
        loop = asyncio.get_running_loop()
        batch = [data for data, _, write in pending if write]
        nbytes = sum(len(data) for _, _, data in batch)
        try:
            if batch:
                call = functools.partial(self._sink.write_chunks, batch, durable=self._durable)
                await loop.run_in_executor(self._executor, call)
        except FluxError as exc:
            self.error = self.error or exc
            self._fail(pending, exc)
            return
        finally:
            self._give_back(pending)
        self.written += nbytes
        if self._durable:
            for req, indices in _by_request(pending).items():
                self._ack(req, indices)
            self._on_durable(nbytes)

    def _fail(self, pending: list[tuple[ChunkData, Request, bool]], exc: FluxError) -> None:
        for req in {r: None for _, r, _ in pending} | {self._req: None}:
            req.fail(exc)

    def _give_back(self, pending: list[tuple[ChunkData, Request, bool]]) -> None:
        """Written or failed: the buffers can be reused."""
        for (_, _, data), _, _ in pending:
            if isinstance(data, memoryview):
                self._release(data)

    def _ack(self, req: Request, indices: Sequence[int]) -> None:
        ranges = to_ranges(indices)
        for start in range(0, len(ranges), MAX_RANGES):
            # Gone, cancelled or ended (COMMITTED acknowledges an upload's chunks): these
            # chunks are durable all the same, and a resume finds them.
            if not (req.channel.usable and req.can_send(FrameType.ACK)):
                return
            if self._until_commit and req.state is RequestState.COMMITTING:
                return
            try:
                req.send(Ack(req.rid, ranges[start : start + MAX_RANGES]))
            except TransportError:
                return
