# Between the event loop and the synchronous planner: a remote listing spooled, a plan in a thread.
"""Two bridges between the connection (asyncio) and the tree planner (synchronous, treeplan.py),
for both tree commands.

`RemoteTree` is the server's side of a tree as the planner reads it: STAT names the root, then
a recursive LIST streams the rest. ENTRIES pages are taken off the connection as soon as they
come and appended to a temporary file, which the planner reads at its own pace: a planner busy
with the local side never holds up the connection (the router stops reading a connection
whose request has too many frames queued, which would stall every transfer on it), and memory
does not grow with the listing.

`PlanThread` runs a plan in a worker thread (the local walk, and hashing for --checksum, block)
and hands its actions to the loop in small batches, through a bounded queue: the plan streams
no faster than the executor takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from fluxio.requests import Request
from fluxproto import Entries, FluxError, Info, ListDir, NotFound, Stat
from fluxproto.frames import Entry

from .excludes import Excluded, Excludes, filter_stream
from .session import ClientSession
from .tree import TreeEntry
from .treeactions import Action
from .treeplan import TreePlan

__all__ = ["PlanThread", "RemoteTree", "Stopped"]


class Stopped(Exception):
    """The loop gave up on the plan: the worker thread ends quietly."""


def _encode(entry: Entry) -> bytes:
    digest = entry.digest.hex() if entry.digest is not None else None
    fields = [entry.name, entry.kind, entry.size, entry.mtime_ns, entry.mode, entry.target, digest]
    return json.dumps(fields).encode("ascii") + b"\n"


def _decode(line: bytes) -> TreeEntry:
    name, kind, size, mtime_ns, mode, target, digest = json.loads(line)
    raw = bytes.fromhex(digest) if digest is not None else None
    return TreeEntry(name, kind, size, mtime_ns, mode, target, raw)


#: Bytes of the spool read at a time: memory does not grow when the planner lags behind.
_READ_BLOCK = 1 << 16


class RemoteTree:
    """The records of a tree on the server, in tree order, for a planner in another thread.

    Open it on the loop (`open`), read `records()` in the planner's thread, and `aclose()` it
    on the loop when done (which also wakes a reader still waiting).
    """

    def __init__(self, root: TreeEntry | None, excludes: Excludes | None = None) -> None:
        self.root = root
        self._excludes = excludes or Excludes()
        self._file: IO[bytes] | None = None  # the spool, once a listing is followed
        self._size = 0  # bytes written and flushed: what the reader may read
        self._finished = False
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._task: asyncio.Task[None] | None = None
        #: Called in the reader's thread before it waits for more of the listing.
        self.before_wait: Callable[[], None] = lambda: None

    @classmethod
    async def open(
        cls,
        session: ClientSession,
        path: str,
        timeout: float,
        excludes: Excludes | None = None,
        digests: bool = False,
    ) -> RemoteTree:
        """The tree at `path` on `session`'s server: empty if nothing is there, its one entry
        if it is a file or a link, else the folder and a listing that streams meanwhile.
        Listed files carry their digests only with `digests` (for --checksum: the quick
        check needs none, and each costs the server a manifest read); the root always does.

        Raises:
            FluxError: STAT failed (other than NotFound), or the connection did.
        """
        req = await session.open(lambda rid: Stat(rid, path))
        try:
            info = await req.expect(Info, timeout)
        except NotFound:
            return cls(None, excludes)
        e = info.entry
        root = TreeEntry("", e.kind, e.size, e.mtime_ns, e.mode, e.target, e.digest)
        tree = cls(root, excludes)
        if e.kind == "dir":
            listing = await session.open(lambda rid: ListDir(rid, path, True, digests))
            tree.follow(listing, timeout)
        return tree

    def follow(self, listing: Request, timeout: float) -> None:
        """Spool the pages of `listing` (a recursive LIST of the root) as they come."""
        self._file = tempfile.TemporaryFile(prefix="fluxctl-list-")  # noqa: SIM115
        self._task = asyncio.create_task(self._fill(listing, self._file, timeout))

    async def _fill(self, req: Request, spool: IO[bytes], timeout: float) -> None:
        error: BaseException | None = None
        try:
            while True:
                page = await req.expect(Entries, timeout)
                data = b"".join(_encode(e) for e in page.entries)
                spool.seek(0, os.SEEK_END)
                spool.write(data)
                spool.flush()
                with self._cond:
                    self._size += len(data)
                    self._cond.notify_all()
                if page.done:
                    return
        except FluxError as exc:
            error = exc
        except asyncio.CancelledError:
            error = Stopped()
            with contextlib.suppress(FluxError):
                req.cancel()  # the server stops sending pages nobody reads
            raise
        finally:
            self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._finished = True
            self._error = error
            self._cond.notify_all()

    def records(self) -> Iterator[TreeEntry | Excluded]:
        """The tree's records (the root first, named ""), excluded ones as `Excluded`.

        Runs in the planner's thread; waits for pages still on their way.

        Raises:
            FluxError: the listing failed (e.g. the connection was lost, a server limit).
            Stopped: the tree was closed while the reader waited.
        """
        if self.root is None:
            return iter(())
        return filter_stream(self._records(self.root), self._excludes)

    def _records(self, root: TreeEntry) -> Iterator[TreeEntry]:
        yield root
        if self._file is None:  # a file, a link, or a folder whose listing is not followed
            return
        offset, tail = 0, b""
        fd = self._file.fileno()
        while True:
            size = self._wait(offset)
            if size is None:
                return
            block = os.pread(fd, min(size - offset, _READ_BLOCK), offset)
            data = tail + block
            offset += len(block)
            lines = data.split(b"\n")
            tail = lines.pop()
            for line in lines:
                yield _decode(line)

    def _wait(self, offset: int) -> int | None:
        """The size readable past `offset`, waiting for it; None at the listing's end."""
        with self._cond:
            if self._size == offset and not self._finished:
                self._cond.release()
                try:
                    self.before_wait()
                finally:
                    self._cond.acquire()
            while self._size == offset and not self._finished and not self._closed:
                self._cond.wait()
            if self._closed:
                raise Stopped
            if self._size > offset:
                return self._size
            if self._error is not None:
                raise self._error
            return None

    def stop(self) -> None:
        """Wake a reader waiting for more (it raises Stopped); callable from any thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    async def aclose(self) -> None:
        """Stop the listing if it still runs, wake the reader, drop the spool (once the
        reader is done with it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stop()
        if self._file is not None:
            self._file.close()


#: Actions handed over at once, and batches the worker may have waiting.
BATCH = 64
DEPTH = 8
#: A batch waits no longer than this for more actions while the plan is slow.
BATCH_DELAY = 0.02

_END_OF_PHASE: Any = object()


class PlanThread:
    """A TreePlan run in a worker thread; the loop takes its two phases' actions.

        async with PlanThread(make_plan, wake=tree.stop) as plan:
            async for action in plan.actions(): ...
            ...  # every action of the first phase has finished
            async for action in plan.deferred(): ...

    `make_plan` builds the plan in the worker thread (the local walk starts there); `wake`
    is called on the loop when the consumer leaves, to wake a worker waiting for something
    only the loop provides (a RemoteTree's listing).
    """

    def __init__(
        self, make_plan: Callable[[], TreePlan], wake: Callable[[], None] = lambda: None
    ) -> None:
        self._make_plan = make_plan
        self._wake = wake
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[Any] | BaseException] = asyncio.Queue()
        self._slots = threading.Semaphore(DEPTH)
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fluxctl-plan")
        self._worker: asyncio.Future[None] | None = None
        self._batch: list[Any] = []
        self._since = 0.0
        self._pending: list[Any] = []

    async def __aenter__(self) -> PlanThread:
        self._worker = self._loop.run_in_executor(self._pool, self._work)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopped.set()
        self._slots.release(DEPTH + 1)  # a worker waiting for room sees the stop
        self._wake()
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker
        self._pool.shutdown(wait=False)

    def flush(self) -> None:
        """Hand over what is batched (the worker calls it before it waits for the loop)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._slots.acquire()
        if self._stopped.is_set():
            raise Stopped
        self._loop.call_soon_threadsafe(self._queue.put_nowait, batch)

    def _add(self, item: Any) -> None:
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append(item)
        if len(self._batch) >= BATCH or time.monotonic() - self._since > BATCH_DELAY:
            self.flush()

    def _work(self) -> None:
        try:
            with self._make_plan() as plan:
                for action in plan.actions():
                    self._add(action)
                self._add(_END_OF_PHASE)
                self.flush()
                for action in plan.deferred():
                    self._add(action)
                self.flush()
                self._slots.acquire()
                self._loop.call_soon_threadsafe(self._queue.put_nowait, [])
        except Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            self._batch = []
            if not self._stopped.is_set():
                self._loop.call_soon_threadsafe(self._queue.put_nowait, exc)

    async def _next(self) -> Any:
        while not self._pending:
            got = await self._queue.get()
            self._slots.release()
            if isinstance(got, BaseException):
                raise got
            if not got:
                return None  # the end of the plan
            self._pending = got
            self._pending.reverse()
        return self._pending.pop()

    async def actions(self) -> AsyncIterator[Action]:
        """The first phase."""
        while (item := await self._next()) is not _END_OF_PHASE:
            if item is None:
                return
            yield item

    async def deferred(self) -> AsyncIterator[Action]:
        """The second phase: take it only once every action of the first has finished."""
        while (item := await self._next()) is not None:
            yield item
