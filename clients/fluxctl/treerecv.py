# `recv -r`: make a local folder a copy of a tree on the server.
"""The executor of `fluxctl recv -r URL... LOCAL`; see treerun.py for what it shares with
treesend.send_tree (same arguments, mirrored; same TreeResult).

Each source is one tree (targets.map_roots decides where it lands). Its remote listing
(treestream.RemoteTree) and the local destination walk (treewalk, role "dest") are merged by
the planner in a worker thread (treestream.PlanThread), batch by batch as the executor
(treefetch.Fetcher) takes actions; the deferred actions (deletes, folders replaced) follow
once every download of the tree has finished. Memory holds a few batches of actions, the
downloads in flight and the open folders, never the tree.

With `--transport auto` or `--lanes N` the run has lanes (lanes.py): the listing and files of
one chunk go over the first lane, larger files over every lane (treefetch.Fetcher). A failed
connection (with lanes: no lane left) starts the whole run again on a new one (retry.Retrier):
the plan is made again, files already in place are skipped by the quick check, and downloads
resume from their staged chunks. A run killed outright resumes the same way when it is run
again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from fluxproto import ConfigError, FluxError
from fluxproto.errors import EXIT_REMOTE

from .connect import ClientOptions
from .excludes import Excludes
from .lanes import LaneSet
from .retry import Retrier
from .session import ClientSession
from .targets import RootPair, map_roots
from .treeactions import Action
from .treefetch import Fetcher, ends_run
from .treelocal import LocalDest, hide_partials
from .treeplan import TreePlan
from .treeresult import TreeResult
from .treerun import TreeOptions, TreeReport, TreeView
from .treesend import _Carried  # shared with send -r: a file received before a reconnect
from .treestream import PlanThread, RemoteTree
from .treewalk import local_digest, walk
from .url import FluxURL

__all__ = ["recv_tree"]


async def recv_tree(
    sources: Sequence[FluxURL],
    dest: str,
    options: ClientOptions,
    tree: TreeOptions,
    view: TreeView,
) -> TreeResult:
    """Make `dest` (a local path) a copy of each remote tree in `sources` (one server).

    Args:
        sources: the remote trees, as URLs of one server (the CLI checks that).
        dest: the local path as the user wrote it (treewalk/targets.map_roots rules).
        options: connection options. tree: the tree flags. view: where output goes.

    Returns:
        The run's totals and per-entry errors.

    Raises:
        FluxError: what left the run unfinished (ConfigError: bad arguments, or a destination
            whose parent folder is missing).
    """
    pairs = map_roots([s.path for s in sources], dest, remote_dest=False)
    for pair in pairs:
        _check_parent(pair.dest)
    first = sources[0]
    path = first.path if len(sources) == 1 else dest
    started = time.monotonic()
    retrier = Retrier(first, options, view.retrying)
    carried = _Carried()  # what attempts the connection cut short received

    async def attempt(session: ClientSession, n: int, lanes: LaneSet | None = None) -> TreeResult:
        if n:
            view.restart()
        result = TreeResult("recv", path)
        several = len(pairs) > 1
        reports = [_report(result, view, dest, pair, several=several) for pair in pairs]
        try:
            for pair, report in zip(pairs, reports, strict=True):
                remote = FluxURL(first.host, first.port, pair.source)
                copy = _TreeCopy(session, remote, pair, options, tree, report)
                await copy.run(lanes, carried.lanes)
        except FluxError:
            for report in reports:
                carried.add(report)
            raise
        view.plan_complete()
        return result

    done = await retrier.run_either(attempt)
    carried.apply(done)
    done.retries, done.transport, done.node = retrier.retries, retrier.transport, retrier.node
    done.seconds = time.monotonic() - started
    return done


class _NamedReport(TreeReport):
    """The report of one tree among several: its entries are named from the destination
    given (`photos/a.txt`, not `a.txt`), in lines and in `errors`."""

    def __init__(self, result: TreeResult, view: TreeView, prefix: str) -> None:
        super().__init__(result, view)
        self.prefix = prefix

    def planned(self, action: Action) -> None:
        name = f"{self.prefix}/{action.name}" if action.name else self.prefix
        super().planned(replace(action, name=name))

    def failed(self, path: str, message: str, exit_code: int) -> None:
        super().failed(f"{self.prefix}/{path}" if path else self.prefix, message, exit_code)


def _report(
    result: TreeResult, view: TreeView, dest: str, pair: RootPair, *, several: bool
) -> TreeReport:
    prefix = os.path.relpath(pair.dest, dest) if several else "."
    return TreeReport(result, view) if prefix == "." else _NamedReport(result, view, prefix)


def _check_parent(local: str) -> None:
    """A destination's folder must exist (as for a single file): a typo should not create a
    new tree somewhere unexpected."""
    parent = os.path.dirname(os.path.abspath(local))
    if not os.path.isdir(parent):
        raise ConfigError(f"no such local folder: {parent}")


@dataclass(frozen=True)
class _TreeCopy:
    """One remote tree copied on the run's connection."""

    session: ClientSession
    remote: FluxURL
    pair: RootPair
    opts: ClientOptions
    tree: TreeOptions
    report: TreeReport

    async def run(self, lanes: LaneSet | None, lane_bytes: dict[str, int]) -> None:
        """Plan and carry out the copy (files of several chunks over `lanes`, if any, the bytes
        each lane brought added to `lane_bytes`); a root the server refuses or lacks fails
        alone (a second source may still be copied)."""
        excludes = Excludes(self.tree.excludes)
        try:
            remote = await RemoteTree.open(
                self.session,
                self.pair.source,
                self.opts.io_timeout,
                excludes,
                digests=self.tree.checksum,
            )
        except FluxError as exc:
            if ends_run(exc):
                raise
            self.report.failed("", exc.message, exc.exit_code)
            return
        try:
            if remote.root is None:
                why = f"no such file or folder on the server: {self.pair.source}"
                self.report.failed("", why, EXIT_REMOTE)
                return
            async with PlanThread(self._plan_maker(remote, excludes), remote.stop) as plan:
                remote.before_wait = plan.flush
                await self.carry_out(plan, lanes, lane_bytes)
        finally:
            await remote.aclose()

    def _plan_maker(self, remote: RemoteTree, excludes: Excludes) -> Callable[[], TreePlan]:
        pair, tree = self.pair, self.tree
        options = tree.plan_options("source", local_digest(pair.dest) if tree.checksum else None)
        collect = None if tree.dry_run else pair.dest

        def make() -> TreePlan:
            dest = hide_partials(walk(pair.dest, role="dest", excludes=excludes), collect)
            return TreePlan(remote.records(), dest, options)

        return make

    async def carry_out(
        self, plan: PlanThread, lanes: LaneSet | None, lane_bytes: dict[str, int]
    ) -> None:
        report = self.report
        if self.tree.dry_run:
            await _phase(plan.actions(), report, None)
            await _phase(plan.deferred(), report, None)
            return
        local = LocalDest(self.pair.dest)
        try:
            async with asyncio.TaskGroup() as group:
                fetcher = Fetcher(
                    self.session, local, self.remote, self.opts, report, group,
                    lanes=lanes, lane_bytes=lane_bytes,
                )  # fmt: skip
                await _phase(plan.actions(), report, fetcher)
                await fetcher.drain()
                await _phase(plan.deferred(), report, fetcher)
                await fetcher.drain()
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        finally:
            local.close()


async def _phase(
    actions: AsyncIterator[Action], report: TreeReport, fetcher: Fetcher | None
) -> None:
    async for action in actions:
        report.planned(action)
        if fetcher is not None:
            await fetcher.run(action)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The error a task group ended with (its first; FluxErrors before anything else)."""
    flux = group.subgroup(FluxError)
    leaves = list(_leaves(flux if flux is not None else group))
    return leaves[0]


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
