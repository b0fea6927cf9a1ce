"""Receive one download's chunks over several requests at once (PROTOCOL.md 9.1).

The request that opened the download shares its chunks; requests on other connections attach
to its transfer with `share`, and the server sends each chunk on whichever connection has room.
Requests may join and leave while the download runs (`carry`, `attach`): lanes.py's lanes come
up late, fail and come back (lanerecv.py drives them). Every request's chunks go through one
group-commit writer into the one staged file: each is acknowledged on the request it came on
once durable, and a chunk that comes twice (the server sent it again on another connection) is
acknowledged there too but written once. A request that ends takes nothing with it: the server
sends what it had in flight on the others. The part is received once every wanted chunk is
durable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from fluxio.chunkflow import ChunkWriter
from fluxio.ratelimit import Pace, paced
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
        tally: where each lane's `received` bytes are added too, as they come (a run's
            count over its passes).

    Attributes:
        received: payload bytes received, each chunk once (the copy written).
        resent: payload bytes of copies: chunks that came again on another request.
        lanes: `received` by the name each request was carried under (`carry`).
        requests: requests that carried the download, the opener's first.
    """

    def __init__(
        self,
        staged: StagedFile,
        meta: Meta,
        want: Ranges | None,
        timeout: float,
        on_durable: Callable[[int], None] = lambda n: None,
        tally: dict[str, int] | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.staged, self.meta, self.want, self.timeout = staged, meta, want, timeout
        self._pace = pace  # --bwlimit: a lane waits before it takes its next chunk
        self._on_durable = on_durable
        self._tally = {} if tally is None else tally
        self.received = 0
        self.resent = 0
        self.lanes: dict[str, int] = {}
        self.requests: list[Request] = []
        self._writer: ChunkWriter | None = None
        self._taken: set[int] = set()  # chunks handed to the writer, first copies
        self._left = self._wanted_bytes()
        self._whole = asyncio.Event()

    @property
    def whole(self) -> bool:
        """True once every wanted chunk is durable."""
        return self._whole.is_set()

    async def wait_whole(self) -> None:
        await self._whole.wait()

    async def run(self, first: Request, others: Sequence[ClientSession], path: str) -> None:
        """Receive until every wanted chunk is durable: on `first` (the opener's request) and
        on a request attached on each of `others`.

        Raises:
            FluxError: every request ended before the file part was whole (the last one's
                error), or the staged file could not be written.
        """
        tasks = [asyncio.ensure_future(self.carry(first, first.channel.transport))]
        tasks += [asyncio.ensure_future(self._join(s, path)) for s in others]
        try:
            await self._until_whole(tasks)
        finally:
            await self.finish(tasks)

    async def attach(self, session: ClientSession, path: str) -> Request | None:
        """A request on `session` attached to the transfer (META's `tid`) with `share`; None
        if the server will not share it (finished, a limit, a server that does not know
        `share`): it is cancelled.

        Raises:
            NotFound: the server knows the transfer no more (every request of it ended), or
                not for this connection's subject.
            FluxError: the request or the connection failed.
        """
        m = self.meta
        req = await session.open(
            lambda rid: OpenDownload(rid, path, self.want, m.digest, m.chunk_size, m.tid, True)
        )
        with cancel_on_error(req):
            reply = await req.expect(Meta, self.timeout)
        if not reply.share:  # it would bring every chunk again
            with contextlib.suppress(FluxError):
                req.cancel()
            return None
        return req

    async def carry(self, req: Request, name: str) -> None:
        """Take `req`'s chunks until its DONE; the chunks it brings first count under `name`.

        Raises:
            FluxError: the request or its connection failed (it is cancelled).
        """
        if self._writer is None:
            self._writer = ChunkWriter(req, self.staged, self._durable)
        writer = self._writer
        self.requests.append(req)
        with cancel_on_error(req):
            while True:
                frame = await req.next(self.timeout)
                if isinstance(frame, Done):
                    return
                if not isinstance(frame, Chunk):
                    raise LocalProtocolError(f"unexpected {type(frame).__name__} in a download")
                first = frame.index not in self._taken
                if first:
                    self._taken.add(frame.index)
                    self.received += len(frame.data)
                    self.lanes[name] = self.lanes.get(name, 0) + len(frame.data)
                    self._tally[name] = self._tally.get(name, 0) + len(frame.data)
                else:
                    self.resent += len(frame.data)
                writer.add(frame, req, write=first)
                await paced(self._pace, len(frame.data))

    async def finish(self, carriers: Sequence[asyncio.Future[None]]) -> None:
        """End the download: once whole, the `carriers` still running (tasks of `carry`) get
        LANE_GRACE seconds for their DONE; then they are cancelled, every request is, and what
        the writer holds is made durable.

        Raises:
            FluxError: the staged file could not be written.
        """
        running = [t for t in carriers if not t.done()]
        if running and self.whole:
            await asyncio.wait(running, timeout=LANE_GRACE)
        for task in carriers:
            task.cancel()
        await asyncio.gather(*carriers, return_exceptions=True)
        for req in self.requests:
            with contextlib.suppress(FluxError):
                req.cancel()
        if self._writer is not None:
            await self._writer.flush()
            if self._writer.error is not None:
                raise self._writer.error

    async def _until_whole(self, tasks: Sequence[asyncio.Future[None]]) -> None:
        whole: asyncio.Future[None] = asyncio.ensure_future(self.wait_whole())
        try:
            while not self.whole:
                running = [t for t in tasks if not t.done()]
                if not running:
                    raise _failure(tasks)
                await asyncio.wait([whole, *running], return_when=asyncio.FIRST_COMPLETED)
        finally:
            whole.cancel()

    async def _join(self, session: ClientSession, path: str) -> None:
        """Attach a request on `session` to the transfer and carry chunks on it (see
        `attach`: one the server will not share is left out)."""
        req = await self.attach(session, path)
        if req is not None:
            await self.carry(req, session.transport)

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
