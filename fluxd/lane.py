"""One request's part in a shared download (PROTOCOL.md 9.1), as the daemon sends it.

The request takes chunks from its transfer's queue only while its connection's windows have
room for them, so the connection whose acknowledgements come back sooner carries more; each
chunk is read and checked against the manifest as it is taken (a few ahead of the socket, never
kept per request). ACKs count per request; the first acknowledgement of a chunk on any request
is what counts in the access record. Once the transfer is complete and nothing of this request
is in flight, DONE ends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable

from fluxio.buffers import POOL
from fluxio.chunkflow import ChunkSender
from fluxio.requests import Request
from fluxio.staging import ChunkData
from fluxproto import Done, FluxError, ProtocolError, TransportError

from .service import DownloadHandle
from .service.sharing import Lane, SharedQueue
from .service.transfers import READ_AHEAD

__all__ = ["LaneSender"]


class LaneSender:
    """Sends one request's share of a download. `lane` is what the queue knows of it.

    Args:
        req: the request (its META said `share`).
        dl: the download, as this request opened or attached to it.
        timeout: the idle timeout on the client while chunks of this request are in flight.
        pace: the subject's rate limit, if any (see `ChunkSender`).
    """

    def __init__(
        self,
        req: Request,
        dl: DownloadHandle,
        timeout: float,
        pace: Callable[[int], float] | None = None,
    ) -> None:
        self.req, self._dl, self._timeout = req, dl, timeout
        self.lane = Lane(req.wake, dl.delivered, req.conn.peer.transfer_window)
        self._queue: SharedQueue | None = None
        self._sender = ChunkSender(req, lambda n: None, timeout, pace=pace, on_chunks=self._acked)
        self._reads: deque[tuple[int, concurrent.futures.Future[ChunkData]]] = deque()
        self._chunk = dl.version.chunk_size

    async def serve(self, queue: SharedQueue) -> None:
        """Send chunks of `queue` until the transfer is complete, then DONE once this request's
        chunks are all acknowledged.

        Raises:
            IntegrityError, StorageError: a chunk could not be served (this request's or
                another's); the transfer failed, and this request has nothing in flight.
            TransportError, ProtocolError, ...: the request or its connection failed.
        """
        self._queue = queue
        try:
            await self._send(queue)
        except FluxError as exc:
            if not isinstance(exc, TransportError | ProtocolError):
                # ERROR only once nothing of the request is in flight (PROTOCOL.md 15.33).
                await self._drop_reads()
                await self._sender.settle()
            raise
        finally:
            await self._drop_reads()
        await self._sender.settle()
        if queue.failure is not None:
            raise queue.failure
        self.req.send(Done(self.req.rid))

    async def _send(self, queue: SharedQueue) -> None:
        sender, lane = self._sender, self.lane
        while True:
            sender.take_queued()
            if queue.finished:
                return
            self._reserve(queue)
            if self._reads:
                index, read = self._reads.popleft()
                try:
                    _, digest, data = await asyncio.wrap_future(read)
                except FluxError as exc:  # corrupt or unreadable: nobody can serve it
                    queue.unsent(lane, index)
                    queue.fail(exc)
                    raise
                if queue.needed(index):
                    if not queue.first_send(index):
                        self._dl.resent()
                    await sender.send(index, digest, data)
                else:  # acknowledged on another request meanwhile
                    queue.unsent(lane, index)
                    _release(data)
                continue
            await self._idle(queue)

    async def _idle(self, queue: SharedQueue) -> None:
        """Nothing to send now: wait for ACKs (the client's part: idle timeout) or, with
        nothing in flight, for the other requests (a chunk back in the queue, the end, or
        another lane stalling, which is looked at again when it would)."""
        req, loop = self.req, asyncio.get_running_loop()
        timeout = self._timeout if req.inflight else None
        due = queue.next_stall(self.lane)
        timer = loop.call_at(due, req.wake) if due is not None else None
        try:
            await req.wait_until(lambda: self._ready(queue), timeout)
        finally:
            if timer is not None:
                timer.cancel()

    def _ready(self, queue: SharedQueue) -> bool:
        now = asyncio.get_running_loop().time()
        return queue.finished or (queue.has_work(self.lane, now) and self._room())

    def _room(self) -> bool:
        """The windows have room for one more chunk beside those being read."""
        if self._reads and not self.req.inflight:
            return False  # only one chunk passes the "nothing in flight" rule (section 7)
        ahead = len(self._reads) * self._chunk
        return self.req.conn.can_send_chunk(self.req.rid, ahead + self._chunk)

    def _reserve(self, queue: SharedQueue) -> None:
        """Take chunks the windows have room for (READ_AHEAD at most) and start reading them."""
        now = asyncio.get_running_loop().time()
        while len(self._reads) < READ_AHEAD and self._room():
            index = queue.take(self.lane, now)
            if index is None:
                return
            self._reads.append((index, self._dl.read_later(index)))

    async def _drop_reads(self) -> None:
        """Give back the chunks taken but not sent, once their reads are over (the file must
        not close under them)."""
        reads, self._reads = list(self._reads), deque()
        running = [read for _, read in reads if not read.cancel()]
        if running:
            await asyncio.wait([asyncio.wrap_future(read) for read in running])
        for index, read in reads:
            if self._queue is not None:
                self._queue.unsent(self.lane, index)
            if not read.cancelled() and read.exception() is None:
                _release(read.result()[2])

    def _acked(self, indices: list[int]) -> None:
        if self._queue is not None:
            self._queue.acked(self.lane, indices, asyncio.get_running_loop().time())


def _release(data: object) -> None:
    if isinstance(data, memoryview):
        POOL.put(data)
