"""Receive one download's chunks over several connections at once (PROTOCOL.md 9.1).

The request that opened the download shares its chunks; one request on each other session
attaches to its transfer with `share`, and the server sends each chunk on whichever connection
has room. Every request's chunks go through one group-commit writer into the one staged file:
each is acknowledged on the request it came on once durable, and a chunk that comes twice (the
server sent it again on another connection) is acknowledged there too but written once. A
connection that dies takes nothing with it: the server sends what it had in flight on the
others. The part is received once every wanted chunk is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from fluxio.chunkflow import ChunkWriter
from fluxio.requests import Request
from fluxio.staging import StagedFile
from fluxproto import Chunk, Done, FluxError, LocalProtocolError, Meta, OpenDownload, iter_indices

from .session import ClientSession, cancel_on_error

__all__ = ["LANE_GRACE", "SharedReceive"]

#: Seconds the requests still open when the file is whole get to end with DONE before they are
#: cancelled: DONE comes a round trip after the last ACK, unless a connection stalled.
LANE_GRACE = 0.5

Ranges = tuple[tuple[int, int], ...]


class SharedReceive:
    """The wanted chunks of one version of a file, over several requests, into `staged`.

    Args:
        staged: the staged file (its chunk size and size are META's).
        meta: the opener's META (`share` true, `count` > 0).
        want: the opener's `want` (None: the whole file), which the others repeat.
        timeout: the idle timeout on each request (ClientOptions.io_timeout).
        on_durable: payload bytes made durable (progress).

    Attributes:
        received: payload bytes received, copies included.
        lanes: requests that carried the download, the opener's first.
    """

    def __init__(
        self,
        staged: StagedFile,
        meta: Meta,
        want: Ranges | None,
        timeout: float,
        on_durable: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.staged, self.meta, self.want, self.timeout = staged, meta, want, timeout
        self._on_durable = on_durable
        self.received = 0
        self.lanes: list[Request] = []
        self._taken: set[int] = set()  # chunks handed to the writer, first copies
        self._left = self._wanted_bytes()
        self._whole = asyncio.Event()

    async def run(self, first: Request, others: Sequence[ClientSession], path: str) -> None:
        """Receive until every wanted chunk is durable: on `first` (the opener's request) and
        on a request attached on each of `others`.

        Raises:
            FluxError: every request ended before the file part was whole (the last one's
                error), or the staged file could not be written.
        """
        writer = ChunkWriter(first, self.staged, self._durable)
        tasks = [asyncio.ensure_future(self._carry(first, writer))]
        tasks += [asyncio.ensure_future(self._join(s, path, writer)) for s in others]
        try:
            await self._until_whole(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await writer.flush()
        if writer.error is not None:
            raise writer.error

    async def _until_whole(self, tasks: Sequence[asyncio.Future[None]]) -> None:
        whole: asyncio.Future[None] = asyncio.ensure_future(self._wait_whole())
        try:
            while not self._whole.is_set():
                running = [t for t in tasks if not t.done()]
                if not running:
                    raise _failure(tasks)
                await asyncio.wait([whole, *running], return_when=asyncio.FIRST_COMPLETED)
        finally:
            whole.cancel()
        # Whole: the requests still open end with DONE a round trip after the last ACK, unless
        # their connection stalled; those are given up.
        running = [t for t in tasks if not t.done()]
        if running:
            await asyncio.wait(running, timeout=LANE_GRACE)
        for req in self.lanes:
            with contextlib.suppress(FluxError):
                req.cancel()

    async def _wait_whole(self) -> None:
        await self._whole.wait()

    async def _join(self, session: ClientSession, path: str, writer: ChunkWriter) -> None:
        """Attach a request on `session` to the transfer and carry chunks on it. A request the
        server will not share (finished, a limit, a server that does not know `share`) is
        left out."""
        m = self.meta
        req = await session.open(
            lambda rid: OpenDownload(rid, path, self.want, m.digest, m.chunk_size, m.tid, True)
        )
        with cancel_on_error(req):
            reply = await req.expect(Meta, self.timeout)
        if not reply.share:  # it would bring every chunk again
            with contextlib.suppress(FluxError):
                req.cancel()
            return
        await self._carry(req, writer)

    async def _carry(self, req: Request, writer: ChunkWriter) -> None:
        """Take `req`'s chunks until its DONE."""
        self.lanes.append(req)
        with cancel_on_error(req):
            while True:
                frame = await req.next(self.timeout)
                if isinstance(frame, Done):
                    return
                if not isinstance(frame, Chunk):
                    raise LocalProtocolError(f"unexpected {type(frame).__name__} in a download")
                self.received += len(frame.data)
                first = frame.index not in self._taken
                self._taken.add(frame.index)
                writer.add(frame, req, write=first)

    def _durable(self, nbytes: int) -> None:
        self._left -= nbytes
        self._on_durable(nbytes)
        if self._left <= 0:
            self._whole.set()

    def _wanted_bytes(self) -> int:
        m = self.meta
        if self.want is None:
            return m.size
        return sum(min(m.chunk_size, m.size - i * m.chunk_size) for i in iter_indices(self.want))


def _failure(tasks: Sequence[asyncio.Future[None]]) -> FluxError:
    """Why the requests ended with the part not whole: the last one's error."""
    found: FluxError | None = None
    for task in tasks:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, FluxError):
            found = exc
        elif exc is not None:
            raise exc
    return found or LocalProtocolError("every request ended before the download was whole")
