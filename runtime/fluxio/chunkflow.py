"""Async chunk flow shared by the daemon and the client: receive frames, send chunks within the
peer's window, and write received chunks durably in batches (group commit) before acking them.

Both directions of a transfer use this module: the client sends with `send_chunks` on upload and
receives with `ChunkWriter` on download; the daemon does the opposite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from fluxproto import (
    MAX_RANGES,
    Ack,
    Chunk,
    Connection,
    ConnectionClosed,
    ConnectionLost,
    Event,
    FluxError,
    Frame,
    Goodbye,
    Ping,
    Pong,
    TransportError,
    TransportTimeout,
    Unavailable,
    error_from_code,
    to_ranges,
)
from fluxproto import Error as ErrorFrame

from .buffers import POOL

T = TypeVar("T")
R = TypeVar("R")

Buffer = bytes | bytearray | memoryview
ChunkData = tuple[int, bytes, Buffer]  # index, digest, payload


class Channel(Protocol):
    """What sessions need from a transport (both are a transports.channel.ChannelBase)."""

    #: The conversation's state machine; only the chunk flow here reads it (its transfer).
    conn: Connection
    peer: str
    #: "tcp" or "quic", for logs and --json.
    transport: str
    #: True if send() copies a frame's bytes (QUIC), so its buffer is free once send() returns.
    copies_on_send: bool
    #: Loop time of the last bytes (or datagram) received from the peer: a sign of life.
    last_receive: float

    async def next_event(self, timeout: float | None = None) -> Event: ...
    def poll(self) -> Event | None: ...
    def send(self, frame: Frame) -> None: ...
    async def drain(self, timeout: float | None = None) -> None: ...
    def fail(self, exc: FluxError) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    async def wait_closed(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def usable(self) -> bool: ...
    @property
    def broken(self) -> bool: ...
    @property
    def ended(self) -> bool: ...


def handle_control(ch: Channel, event: Event) -> Frame | None:
    """Answer pings and turn ERROR/GOODBYE/EOF into exceptions; return any other frame."""
    if isinstance(event, ConnectionClosed):
        raise ConnectionLost(f"{ch.peer} closed the connection")
    if isinstance(event, Ping):
        ch.send(Pong(event.nonce))
        return None
    if isinstance(event, Pong):
        return None
    if isinstance(event, ErrorFrame):
        raise error_from_code(event.code, event.message)
    if isinstance(event, Goodbye):
        raise Unavailable(f"{ch.peer} closed the connection: {event.reason or 'goodbye'}")
    return event


@contextlib.asynccontextmanager
async def deadline(ch: Channel, seconds: float, what: str) -> AsyncIterator[None]:
    """Raise TransportTimeout unless the body finishes within `seconds` of entering, however
    much the peer sends meanwhile (the timeouts of `recv_frame` restart on every frame).

    Raises:
        TransportTimeout: naming `what` was awaited from `ch.peer`.
    """
    timer = asyncio.timeout(seconds)
    try:
        async with timer:
            yield
    except TimeoutError:
        if not timer.expired():
            raise  # not ours: a socket's own timeout, say
        raise TransportTimeout(f"no {what} from {ch.peer} within {seconds:g} s") from None


async def recv_frame(ch: Channel, timeout: float | None) -> Frame:
    """The next request or reply frame, with control frames handled.

    `timeout` is an idle timeout: it restarts on each frame received (a PING included) and on
    each PROGRESS_BYTES of a frame in progress (see transports.inbox), never on fewer bytes.
    """
    while True:
        frame = handle_control(ch, await ch.next_event(timeout))
        if frame is not None:
            return frame


async def expect(ch: Channel, cls: type[T], timeout: float | None) -> T:
    """Receive the next frame and require it to be `cls` (the state table already allows it)."""
    frame = await recv_frame(ch, timeout)
    if not isinstance(frame, cls):
        raise ConnectionLost(f"expected {cls.__name__}, got {type(frame).__name__}")
    return frame


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


async def send_chunks(
    ch: Channel,
    chunks: AsyncIterator[ChunkData],
    on_acked: Callable[[int], None],
    timeout: float | None,
    on_sent: Callable[[int], None] = lambda n: None,
    release: Callable[[memoryview], None] = POOL.put,
    pace: Callable[[int], float] | None = None,
) -> None:
    """Send every chunk from `chunks` within the peer's window; return once all are acked.

    `on_sent(nbytes)` is called as each chunk is handed to the transport and `on_acked(nbytes)`
    as acknowledgements (durable on the peer) arrive. An acked chunk's buffer, if a memoryview,
    goes to `release`: by then the socket has long stopped referencing it. `pace(nbytes)`, if
    given, charges a rate limit and returns the seconds to wait before sending. `timeout` is an
    idle timeout (see `recv_frame`) on the peer's acks and on its taking our bytes (`drain`).
    """
    transfer = ch.conn.transfer
    assert transfer is not None
    unacked: dict[int, Buffer] = {}

    def take(event: Event) -> None:
        frame = handle_control(ch, event)
        if isinstance(frame, Ack):
            on_acked(sum(transfer.chunk_length(i) for i in _indices(frame)))
            for i in _indices(frame):
                data = unacked.pop(i, None)
                if isinstance(data, memoryview):
                    release(data)
        elif frame is not None:
            raise ConnectionLost(f"unexpected {type(frame).__name__} during a transfer")

    async for index, digest, data in chunks:
        while (event := ch.poll()) is not None:
            take(event)
        while not ch.conn.can_send_chunk:
            take(await ch.next_event(timeout))
        size = len(data)
        if pace is not None and (wait := pace(size)) > 0:
            await asyncio.sleep(wait)
        ch.send(Chunk(index, digest, data))
        if ch.copies_on_send and isinstance(data, memoryview):
            release(data)  # the transport holds its own copy: no need to keep ours until the ACK
        else:
            unacked[index] = data
        on_sent(size)
        await ch.drain(timeout)
    while transfer.inflight:
        take(await ch.next_event(timeout))
    while (event := ch.poll()) is not None:
        take(event)


def _indices(ack: Ack) -> Iterable[int]:
    for start, cnt in ack.ranges:
        yield from range(start, start + cnt)


class BatchSink(Protocol):
    """Blocking durable writer (StagedFile / storage Upload)."""

    def write_chunks(self, batch: list[ChunkData]) -> None: ...


class ChunkWriter:
    """Group commit: chunks that arrive while a batch is being synced form the next batch.

    After each batch is durable, an ACK for it is sent on `ch` and `on_durable(nbytes)` called.
    A write failure is injected into the channel, so the session's next receive raises it.
    """

    def __init__(
        self,
        ch: Channel,
        sink: BatchSink,
        on_durable: Callable[[int], None] = lambda n: None,
        executor: Executor | None = None,
        release: Callable[[memoryview], None] = POOL.put,
    ) -> None:
        self._ch, self._sink, self._on_durable, self._executor = ch, sink, on_durable, executor
        self._release = release
        self._pending: list[ChunkData] = []
        self._task: asyncio.Task[None] | None = None
        self.error: FluxError | None = None
        self.written = 0

    def add(self, chunk: Chunk) -> None:
        if self.error is not None:
            raise self.error
        self._pending.append((chunk.index, chunk.digest, chunk.data))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Wait until every added chunk is durable (or has failed); write errors are not raised
        here (see `error`). A cancellation still waits for the writes in progress, then is
        raised: the caller stops, and nothing is left half-written behind it."""
        cancelled = False
        while self._task is not None and not self._task.done():
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and self.error is None:
            batch, self._pending = self._pending, []
            nbytes = sum(len(data) for _, _, data in batch)
            indices = [index for index, _, _ in batch]
            try:
                await loop.run_in_executor(self._executor, self._sink.write_chunks, batch)
            except FluxError as exc:
                self.error = exc
                self._ch.fail(exc)
                return
            finally:
                for _, _, data in batch:  # written or failed: the buffers can be reused
                    if isinstance(data, memoryview):
                        self._release(data)
            self.written += nbytes
            self._ack(indices)
            self._on_durable(nbytes)

    def _ack(self, indices: Sequence[int]) -> None:
        if not self._ch.usable:
            return  # the peer is gone; these chunks are durable and will be reported on resume
        ranges = to_ranges(indices)
        for start in range(0, len(ranges), MAX_RANGES):
            try:
                self._ch.send(Ack(ranges[start : start + MAX_RANGES]))
            except TransportError:
                return
