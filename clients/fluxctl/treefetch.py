# Runs the actions of a `recv -r` plan: local changes in place, many downloads on one connection.
"""The executor of one `recv -r` plan (treeplan.py) on the event loop.

Folders and links are made at once (treelocal.LocalDest: a few system calls each), downloads
run as tasks, `CONCURRENCY` at a time, on the run's one connection (`download.Download`: staged,
resumable, verified, published by rename with its mode and mtime). With lanes (`--transport
auto`, `--lanes`), files of more than one chunk go over every lane (lanerecv.py), BIG_FILES at
a time; the rest over the first lane. A `SetAttrs` waits until
every download started before it has finished, so a folder gets its mtime after the last file
renamed into it, without holding up the downloads that follow. Deletes run in a worker thread
(a large folder takes a while).

An entry that fails fails alone (one `TreeReport.failed`); the entries under a folder that
could not be made are not tried. A failure of the connection itself (or a protocol error)
ends the plan: it is raised out of the task group the caller runs the executor in, and the
run starts again on a new connection, where the downloads resume.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fluxproto import FluxError, ProtocolError, StorageError, TransportError

from .download import Download
from .many import CONCURRENCY
from .results import DEFAULT_CHUNK, ProgressFn
from .tree import local_exit_code, os_message, tree_key
from .treeactions import Action, Copy, Delete, MakeLink, Mkdir, SetAttrs
from .url import FluxURL

if TYPE_CHECKING:
    from .connect import ClientOptions
    from .lanes import LaneSet
    from .session import ClientSession
    from .treelocal import LocalDest
    from .treerun import TreeReport

__all__ = ["BIG_FILES", "Fetcher", "ends_run"]

#: Files of more than one chunk downloaded over the lanes at once.
BIG_FILES = 4


def ends_run(exc: FluxError) -> bool:
    """True for a failure of the connection or of the protocol rather than of one entry."""
    return exc.retryable or isinstance(exc, TransportError | ProtocolError)


def _entry_failure(exc: FluxError) -> tuple[str, int]:
    """Message and exit code of a download that failed alone: a local file system error
    (wrapped as StorageError by the staging code) counts by its errno, as for send."""
    cause = exc.__cause__
    if isinstance(exc, StorageError) and isinstance(cause, OSError):
        return exc.message, local_exit_code(cause)
    return exc.message, exc.exit_code


class Fetcher:
    """Carries out the actions of a plan whose destination is `local` and whose source is the
    remote folder `remote` (a URL), in `group` (the caller's TaskGroup). With `lanes`, files
    of more than one chunk go over them, and the bytes each lane brought add up in
    `lane_bytes`."""

    def __init__(
        self,
        session: ClientSession,
        local: LocalDest,
        remote: FluxURL,
        opts: ClientOptions,
        report: TreeReport,
        group: asyncio.TaskGroup,
        concurrency: int = CONCURRENCY,
        *,
        lanes: LaneSet | None = None,
        lane_bytes: dict[str, int] | None = None,
    ) -> None:
        self.session, self.local, self.remote, self.opts = session, local, remote, opts
        self.report, self.group = report, group
        self.lanes = lanes
        self.lane_bytes = {} if lane_bytes is None else lane_bytes
        self._big_files = asyncio.Semaphore(BIG_FILES)
        self._gate = asyncio.Semaphore(max(1, concurrency))
        self._seq = 0  # downloads started so far
        self._running: list[int] = []  # heap of their sequence numbers
        self._waiting: deque[tuple[int, SetAttrs]] = deque()  # (downloads started before it)
        self._idle = asyncio.Event()
        self._idle.set()
        self._broken: tuple[str, ...] | None = None  # a folder that could not be made

    async def run(self, action: Action) -> None:
        """Carry out one action (Skip, Ignore and Fail need nothing); a download is only
        started: `drain` waits for it."""
        if self._broken is not None and tree_key(action.name)[: len(self._broken)] == self._broken:
            if isinstance(action, Copy):
                self.report.view.file_done()
            return
        self._broken = None
        match action:
            case Mkdir():
                if not self._local(action, self.local.mkdir, "creating the folder"):
                    self._broken = tree_key(action.name)
            case MakeLink():
                self._local(action, self.local.make_link, "creating the link")
            case SetAttrs():
                self._waiting.append((self._seq, action))
                self._settle()
            case Copy():
                await self._gate.acquire()
                self._seq += 1
                heapq.heappush(self._running, self._seq)
                self._idle.clear()
                self.group.create_task(self._copy(action, self._seq))
            case Delete():
                await self._delete(action)

    async def drain(self) -> None:
        """Until every download started has finished and every SetAttrs has been applied."""
        await self._idle.wait()
        self._settle()

    def _local(
        self, action: Mkdir | MakeLink | SetAttrs, do: Callable[[Any], None], what: str
    ) -> bool:
        try:
            do(action)
        except OSError as exc:
            self.report.failed(action.name, os_message(exc, what), local_exit_code(exc))
            return False
        self.report.done(action)
        return True

    def _settle(self) -> None:
        """Apply the SetAttrs whose downloads (all started before them) have finished."""
        oldest = self._running[0] if self._running else self._seq + 1
        while self._waiting and self._waiting[0][0] < oldest:
            _, attrs = self._waiting.popleft()
            self._local(attrs, self.local.set_attrs, "setting its mode and mtime")

    async def _delete(self, action: Delete) -> None:
        try:
            await asyncio.to_thread(self.local.delete, action)
        except OSError as exc:
            self.report.failed(action.name, os_message(exc, "deleting it"), local_exit_code(exc))
            return
        self.report.done(action)

    async def _copy(self, action: Copy, seq: int) -> None:
        download: Download | None = None
        received = False
        try:
            with self.local.copy_place(action) as path:
                url, label = self._url(action.name), self.local.path(action.name)
                download = Download(url, path, self.opts, self._progress(), exact=True, label=label)
                await self._fetch(download, action.source.size)
            self.local.finish_copy(action)
            received = True
        except FluxError as exc:
            if ends_run(exc):
                raise
            self.report.failed(action.name, *_entry_failure(exc))
        except OSError as exc:
            self.report.failed(action.name, os_message(exc, "writing it"), local_exit_code(exc))
        finally:
            moved = download.received if download is not None else 0
            for lane, nbytes in download.lanes.items() if download is not None else ():
                self.lane_bytes[lane] = self.lane_bytes.get(lane, 0) + nbytes
            # Cut short after its rename: it is in place, and the next attempt finds it so.
            if received or (download is not None and download.published):
                self.report.done(action, moved=moved)
            else:  # what arrived of a file that failed (or was cut short) crossed the wire
                self.report.result.done(action, moved=moved)
            self.report.view.file_done()
            self._running.remove(seq)
            heapq.heapify(self._running)
            self._gate.release()
            if not self._running:
                self._idle.set()
            self._settle()

    async def _fetch(self, download: Download, size: int) -> None:
        """One attempt at `download`: over the lanes if it has more than one chunk (at the
        chunk size asked for; the server may store it with another), else on the session."""
        if self.lanes is None or size <= (self.opts.chunk_size or DEFAULT_CHUNK):
            await download.attempt(self.session, 0)
            return
        async with self._big_files:
            await download.attempt_lanes(self.lanes, 0)

    def _url(self, name: str) -> FluxURL:
        base = self.remote.path.rstrip("/")
        path = f"{base}/{name}" if name else self.remote.path
        return FluxURL(self.remote.host, self.remote.port, path)

    def _progress(self) -> ProgressFn:
        last = 0

        def progress(done: int, total: int) -> None:
            nonlocal last
            if done > last:
                self.report.view.moved(done - last)
            last = done

        return progress
