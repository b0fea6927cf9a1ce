# `send -r`: make a tree on the server a copy of local folders, as one plan per root.
"""The executor of `fluxctl send -r LOCAL... flux://HOST/PATH` (README, "Folders").

For each (local root, remote root) pair (targets.map_roots), the local walk (treewalk) and the
server's recursive listing (treestream.RemoteTree) are merged by the planner (treeplan), in a
worker thread (treestream.PlanThread); its actions run here, many at once on one connection:

- `Mkdir` is MKDIR (owner rwx, so that its content can be written), `MakeLink` SYMLINK, `Copy`
  an Upload that keeps the file's mode and mtime (so that the next run's quick check matches);
  a leaf of another kind in the way is deleted first (an upload would write through a link).
- `SetAttrs` is MKDIR with the folder's mode and mtime, once everything under it finished; a
  file's (its mode, or with --checksum its mtime) is an upload of the same bytes, which the
  server has already: no data moves.
- The deferred phase (deletes with --delete, folders replaced by files) starts once every
  action of the first phase finished.

An action starts once those in flight on its own name and on its folders finished (a file
waits for the folder being made), a folder's attributes or recursive delete once everything
in flight under it did; meanwhile the actions after it start.

With `--transport auto` (or `--lanes`), files of several chunks go over every lane up
(lanesend.py); everything else (the listing, folders, links, files of one chunk) over the first
lane.

A failure of one entry (the server refuses a name, a file cannot be read) is counted and
reported and the run goes on. A connection failure ends the attempt: `Retrier` connects again
and the whole tree is planned again: what was sent is then unchanged by the quick check, and
an interrupted upload resumes from the chunks the server holds (so does the next run after
`kill -9`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from fluxproto import Delete as DeleteFrame
from fluxproto import (
    Deleted,
    FluxError,
    Made,
    NotFound,
    chunk_count,
)
from fluxproto import Mkdir as MkdirFrame
from fluxproto import Symlink as SymlinkFrame

from .connect import ClientOptions
from .excludes import Excludes
from .lanes import LaneSet
from .many import CONCURRENCY
from .results import chunk_size_for
from .retry import Retrier
from .session import ClientSession
from .targets import RootPair, map_roots
from .tree import remote_name_check
from .treeactions import Action, Copy, Delete, MakeLink, Mkdir, SetAttrs
from .treeplan import TreePlan
from .treeresult import TreeResult
from .treerun import TreeOptions, TreeReport, TreeView
from .treestream import PlanThread, RemoteTree
from .treewalk import LocalFiles, local_digest, walk
from .upload import LocalFileChanged, Upload
from .url import FluxURL

__all__ = ["send_tree"]

#: What a folder being filled needs of its owner on the server (its final mode comes after).
OWNER_RWX = 0o700
#: Files of several chunks sent at once (small files go CONCURRENCY at once): each reads
#: ahead a few chunks, and a few fill the server's window.
BIG_FILES = 4


async def send_tree(
    sources: Sequence[str],
    dest: FluxURL,
    options: ClientOptions,
    tree: TreeOptions,
    view: TreeView,
) -> TreeResult:
    """Make the remote tree at `dest` a copy of each local tree in `sources`.

    Args:
        sources: local paths as the user wrote them (a trailing `/` means the contents).
        dest: the remote destination (its path ending in `/`: copies go inside it).
        options: connection options. tree: the tree flags. view: where output goes.

    Returns:
        The run's totals and per-entry errors (`exit_code` is the worst).

    Raises:
        ConfigError: the arguments map to no valid roots (targets.map_roots).
        FluxError: what left the run unfinished (the connection failed for --retry-for).
    """
    pairs = map_roots(sources, dest.path, remote_dest=True)
    path = pairs[0].dest if len(pairs) == 1 else dest.path
    started = time.monotonic()
    retrier = Retrier(dest, options, view.retrying)
    carried = _Carried()

    async def attempt(session: ClientSession, n: int, lanes: LaneSet | None = None) -> TreeResult:
        if n:
            view.restart()
        report = TreeReport(TreeResult("send", path), view)
        try:
            for i, pair in enumerate(pairs):
                last = i == len(pairs) - 1
                root = _SendRoot(session, n, dest, options, tree, report, pair)
                root.lanes, root.lane_bytes = lanes, carried.lanes
                await root.run(last)
        except FluxError:
            carried.add(report)
            raise
        return report.result

    result = await retrier.run_either(attempt)
    carried.apply(result)
    result.retries, result.transport, result.node = retrier.retries, retrier.transport, retrier.node
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _Carried:
    """What attempts cut short by the connection moved: the run's totals keep it."""

    moved: int = 0
    files_sent: int = 0
    #: Bytes each lane delivered, over every attempt.
    lanes: dict[str, int] = field(default_factory=dict)

    def add(self, report: TreeReport) -> None:
        self.moved += report.result.moved
        self.files_sent += report.transferred

    def apply(self, result: TreeResult) -> None:
        # A file an earlier attempt sent is unchanged now: it was sent, not skipped.
        result.moved += self.moved
        result.skipped_files = max(0, result.skipped_files - self.files_sent)
        result.lanes = dict(self.lanes)


class _SendRoot:
    """One root pair of one attempt: its plan, and its actions run on `session`."""

    def __init__(
        self,
        session: ClientSession,
        n: int,
        url: FluxURL,
        opts: ClientOptions,
        tree: TreeOptions,
        report: TreeReport,
        pair: RootPair,
    ) -> None:
        self.session, self.n, self.url, self.opts = session, n, url, opts
        self.tree, self.report, self.pair = tree, report, pair
        self.timeout = opts.io_timeout
        #: Every action's task until it ends, and by name the last one started there.
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.gate = asyncio.Semaphore(CONCURRENCY)
        #: Files of several chunks in flight: each reads ahead and holds its own buffers.
        self.big_files = asyncio.Semaphore(BIG_FILES)
        #: The first failure that ends the attempt (the connection's), raised by `run`.
        self.fatal: BaseException | None = None
        #: Opens the files to send below the local root (none is read through a link that
        #: appeared since the walk), opened by `run`.
        self.files: LocalFiles | None = None
        #: The attempt's lanes, when files of several chunks go over them (else None), and
        #: where the bytes each lane delivered are added up.
        self.lanes: LaneSet | None = None
        self.lane_bytes: dict[str, int] = {}

    async def run(self, last: bool = True) -> None:
        """Plan and copy this root; `last`: no root follows (the plan's totals are final
        once its first phase is read)."""
        excludes = Excludes(self.tree.excludes)
        remote = await RemoteTree.open(
            self.session, self.pair.dest, self.timeout, excludes, digests=self.tree.checksum
        )
        self.files = LocalFiles(self.pair.source, follow_links=self.tree.follow_links)
        try:
            planner = PlanThread(self._plan_maker(remote, excludes), remote.stop)
            remote.before_wait = planner.flush  # what is planned goes before the planner waits
            async with planner as plan:
                try:
                    complete = self.report.view.plan_complete if last else None
                    await self._phase(plan.actions(), complete)
                    await self._phase(plan.deferred())
                finally:
                    await self._cancel_all()
        finally:
            self.files.close()
            await remote.aclose()

    def _plan_maker(self, remote: RemoteTree, excludes: Excludes) -> Callable[[], TreePlan]:
        root = self.pair.source
        follow = self.tree.follow_links
        digest = local_digest(root, follow_links=follow) if self.tree.checksum else None
        options = self.tree.plan_options("dest", digest)

        def make() -> TreePlan:
            source = walk(
                root,
                follow_links=follow,
                excludes=excludes,
                check_name=remote_name_check(self.pair.dest),
            )
            return TreePlan(source, remote.records(), options)

        return make

    async def _phase(
        self, actions: AsyncIterator[Action], planned: Callable[[], None] | None = None
    ) -> None:
        """Start every action of a phase (at most CONCURRENCY at once), then wait for them;
        `planned` is called once the phase's plan is read."""
        async for action in actions:
            self._check()
            self.report.planned(action)
            if self.tree.dry_run or not isinstance(action, _RUNNABLE):
                continue
            await self.gate.acquire()
            self._start(action, self._in_the_way(action))
        if planned is not None:
            planned()
        await self._wait(list(self.tasks))
        self._check()

    def _check(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def _start(self, action: Action, after: list[asyncio.Task[None]]) -> None:
        name = action.name
        task = asyncio.create_task(self._run(action, after))
        self.inflight[name] = task
        self.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            if self.inflight.get(name) is t:
                del self.inflight[name]
            self.tasks.discard(t)
            self.gate.release()

        task.add_done_callback(finished)

    def _in_the_way(self, action: Action) -> list[asyncio.Task[None]]:
        """What in flight must finish before `action` runs: on the same name, on a folder of
        it, and for a folder's attributes or its recursive delete, anything under it."""
        name = action.name
        parts = name.split("/") if name else []
        ancestors = ("/".join(parts[:depth]) for depth in range(len(parts) + 1))
        tasks = [t for a in ancestors if (t := self.inflight.get(a)) is not None]
        whole = isinstance(action, SetAttrs) and action.kind == "dir"
        if whole or (isinstance(action, Delete) and action.recursive):
            prefix = f"{name}/" if name else ""
            tasks += [t for n, t in self.inflight.items() if n.startswith(prefix) and n != name]
        return tasks

    @staticmethod
    async def _wait(tasks: list[asyncio.Task[None]]) -> None:
        if tasks:
            await asyncio.wait(tasks)

    async def _cancel_all(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # --- one action ---------------------------------------------------------------------

    def remote(self, name: str) -> str:
        """The remote path of the tree-relative `name`."""
        root = self.pair.dest
        return f"{root.rstrip('/')}/{name}" if name else root

    def local(self, rel: str) -> Path:
        """The local path of `rel`, a path relative to the local root ("" for the root)."""
        return Path(os.path.join(self.pair.source, rel) if rel else self.pair.source)

    async def _run(self, action: Action, after: list[asyncio.Task[None]]) -> None:
        try:
            await self._wait(after)
            if self.fatal is not None:
                return
            removed = await self._act(action)
        except FluxError as exc:
            if exc.retryable:  # the connection: the attempt ends, Retrier connects again
                if self.fatal is None:
                    self.fatal = exc
                return
            self.report.failed(action.name, exc.message, exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - a bug: end the run with it
            if self.fatal is None:
                self.fatal = exc
        else:
            self.report.done(action, removed=removed)
        finally:
            if isinstance(action, Copy):
                self.report.view.file_done()

    async def _act(self, action: Action) -> int | None:
        """Run `action`; for a Delete, the entries removed."""
        match action:
            case Mkdir(name=name, mode=mode, replace=kind):
                if kind is not None:
                    await self._delete(name, recursive=False)
                await self._mkdir(name, mode | OWNER_RWX, None)
            case Copy(name=name, source=source, dest=dest):
                if dest is not None and dest.kind != "file":
                    await self._delete(name, recursive=False)
                await self._upload(name, source.local, source.size)
            case MakeLink(name=name, target=target, dest=dest, mtime_ns=mtime_ns):
                if dest is not None and dest.kind != "link":
                    await self._delete(name, recursive=False)
                await self._symlink(name, target, mtime_ns)
            case SetAttrs(name=name, kind="dir", mode=mode, mtime_ns=mtime_ns):
                if self.remote(name) != "/":  # the server's root is not the copy's to change
                    await self._mkdir(name, mode, mtime_ns)
            case SetAttrs(name=name):
                await self._upload(name, name, None)
            case Delete(name=name, recursive=recursive):
                return await self._delete(name, recursive=recursive)
        return None

    async def _mkdir(self, name: str, mode: int, mtime_ns: int | None) -> None:
        path = self.remote(name)
        req = await self.session.open(lambda rid: MkdirFrame(rid, path, mode, mtime_ns))
        await req.expect(Made, self.timeout)

    async def _symlink(self, name: str, target: str, mtime_ns: int | None) -> None:
        path = self.remote(name)
        req = await self.session.open(lambda rid: SymlinkFrame(rid, path, target, mtime_ns))
        await req.expect(Made, self.timeout)

    async def _delete(self, name: str, *, recursive: bool) -> int:
        path = self.remote(name)
        req = await self.session.open(lambda rid: DeleteFrame(rid, path, recursive))
        try:
            return (await req.expect(Deleted, self.timeout)).count
        except NotFound:
            return 0  # already gone: what a delete is for

    async def _upload(self, name: str, local: str, size: int | None) -> None:
        """Send one file (`size`: as planned, None if unknown), keeping its mode and mtime;
        what it put on the wire counts in `sent` whether it completes or not. Files of one
        chunk go CONCURRENCY at once; larger ones BIG_FILES at once."""
        if size is None:
            small = False
        else:
            chunk_size = chunk_size_for(size, self.opts.chunk_size, self.session.welcome)
            small = chunk_count(size, chunk_size) <= 1
        async with contextlib.nullcontext() if small else self.big_files:
            await self._send_file(name, local)

    async def _send_file(self, name: str, local: str) -> None:
        url = replace(self.url, path=self.remote(name))
        assert self.files is not None  # run() opened them
        opener = self.files.opener(local)
        up = Upload(self.local(local), url, self.opts, name="", keep_mtime=True, opener=opener)
        view, done = self.report.view, 0

        def progress(now_done: int, total: int) -> None:
            nonlocal done
            if now_done > done:
                view.moved(now_done - done)
            done = now_done

        up.progress = progress
        try:
            while True:
                try:
                    if self.lanes is None:
                        await up.attempt(self.session, self.n)
                    else:  # a file of one chunk: in one flight on the first lane
                        await up.attempt_lanes(self.lanes, self.n)
                    return
                except LocalFileChanged:
                    continue  # read it again at once (Upload gives up after a few rescans)
        finally:
            self.report.result.moved += up.sent
            for lane, nbytes in up.lanes.items():
                self.lane_bytes[lane] = self.lane_bytes.get(lane, 0) + nbytes


_RUNNABLE = (Mkdir, Copy, MakeLink, SetAttrs, Delete)
