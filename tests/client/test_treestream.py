"""fluxctl.treestream: a remote listing spooled for a planner in another thread, and a plan run
in a worker thread whose actions the loop takes in two phases."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from fluxctl.excludes import Excluded, Excludes
from fluxctl.tree import TreeEntry
from fluxctl.treeactions import Copy, Delete, Mkdir, SetAttrs
from fluxctl.treeplan import PlanOptions, TreePlan
from fluxctl.treestream import BATCH, DEPTH, PlanThread, RemoteTree, Stopped
from fluxproto import Entries, Entry, LimitExceeded, LocalProtocolError

ROOT = TreeEntry("", "dir", 0, 1, 0o755)


class FakeListing:
    """A LIST request whose ENTRIES pages the test hands over one by one."""

    def __init__(self) -> None:
        self.pages: asyncio.Queue[Entries | Exception] = asyncio.Queue()
        self.cancelled = False

    async def expect(self, cls: type, timeout: float) -> Entries:
        page = await self.pages.get()
        if isinstance(page, Exception):
            raise page
        return page

    def cancel(self) -> None:
        self.cancelled = True

    def page(self, names: list[str], done: bool = False) -> None:
        entries = tuple(Entry(n, "file", 3, 5, 0o600, b"\x01" * 16) for n in names)
        self.pages.put_nowait(Entries(1, entries, done))


def read_in_thread(tree: RemoteTree) -> asyncio.Future[list[object]]:
    return asyncio.get_running_loop().run_in_executor(None, lambda: list(tree.records()))


def test_pages_reach_a_reader_in_another_thread_as_they_come() -> None:
    async def main() -> None:
        tree = RemoteTree(ROOT, Excludes(["*.log"]))
        listing = FakeListing()
        waits = threading.Semaphore(0)
        tree.before_wait = waits.release
        tree.follow(listing, 1.0)  # type: ignore[arg-type]
        reader = read_in_thread(tree)
        await asyncio.to_thread(waits.acquire)  # the reader caught up and waits for a page
        listing.page(["a", "a.log"])
        await asyncio.to_thread(waits.acquire)
        listing.page(["b"], done=True)
        records = await reader
        await tree.aclose()
        assert records == [
            ROOT,
            TreeEntry("a", "file", 3, 5, 0o600, None, b"\x01" * 16),
            Excluded("a.log", "file"),
            TreeEntry("b", "file", 3, 5, 0o600, None, b"\x01" * 16),
        ]

    asyncio.run(main())


def test_a_failed_listing_fails_its_reader_and_a_missing_root_is_an_empty_tree() -> None:
    async def main() -> None:
        tree = RemoteTree(ROOT)
        listing = FakeListing()
        tree.follow(listing, 1.0)  # type: ignore[arg-type]
        listing.page(["a"])
        listing.pages.put_nowait(LimitExceeded("too many entries"))
        with pytest.raises(LimitExceeded):
            await read_in_thread(tree)
        await tree.aclose()
        assert list(RemoteTree(None).records()) == []

    asyncio.run(main())


def test_closing_the_tree_wakes_a_waiting_reader_and_cancels_the_listing() -> None:
    async def main() -> None:
        tree = RemoteTree(ROOT)
        listing = FakeListing()
        waiting = threading.Event()
        tree.before_wait = waiting.set
        tree.follow(listing, 1.0)  # type: ignore[arg-type]
        reader = read_in_thread(tree)
        await asyncio.to_thread(waiting.wait)
        await tree.aclose()
        with pytest.raises(Stopped):
            await reader
        assert listing.cancelled

    asyncio.run(main())


def test_a_long_listing_is_not_held_in_memory() -> None:
    """30,000 entries (several MB as objects) pass through with a small peak."""

    async def main() -> int:
        tree = RemoteTree(ROOT)
        listing = FakeListing()
        tree.follow(listing, 1.0)  # type: ignore[arg-type]
        for start in range(0, 30_000, 150):
            listing.page([f"{n:06}" for n in range(start, start + 150)], start + 150 == 30_000)
        await asyncio.sleep(0)
        tracemalloc.start()
        try:
            count = await asyncio.get_running_loop().run_in_executor(
                None, lambda: sum(1 for _ in tree.records())
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        await tree.aclose()
        assert count == 30_001
        return peak

    assert asyncio.run(main()) < 2_000_000


def d(name: str) -> TreeEntry:
    return TreeEntry(name, "dir", 0, 1, 0o755)


def f(name: str, mtime: int = 1) -> TreeEntry:
    return TreeEntry(name, "file", 1, mtime, 0o644)


def many(n: int) -> Iterator[TreeEntry]:
    yield d("")
    for i in range(n):
        yield f(f"{i:06}")


def test_the_actions_come_in_two_phases_as_the_plan_gives_them() -> None:
    source = [d(""), d("a"), f("a/x", 2)]
    dest = [d(""), d("a"), f("a/x"), f("old")]
    options = PlanOptions(delete=True)
    with TreePlan(source, dest, options) as p:
        want = (list(p.actions()), list(p.deferred()))

    async def main() -> tuple[list[object], list[object]]:
        async with PlanThread(lambda: TreePlan(source, dest, options)) as plan:
            first = [a async for a in plan.actions()]
            return first, [a async for a in plan.deferred()]

    got = asyncio.run(main())
    assert got == want
    assert [type(a) for a in got[1]] == [Delete, SetAttrs]  # the root's mtime changes
    assert any(isinstance(a, Copy) for a in got[0]) and isinstance(got[0][-1], SetAttrs)


def test_a_consumer_that_leaves_early_stops_the_worker() -> None:
    """More actions than the queue holds: the worker blocks for room, and is let go."""
    n = BATCH * DEPTH * 4

    async def main() -> list[object]:
        async with PlanThread(lambda: TreePlan(many(n), [])) as plan:
            async for action in plan.actions():
                return [action]
        return []

    assert asyncio.run(main()) == [Mkdir("", 0o755, 1)]


def test_a_failing_plan_raises_on_the_loop() -> None:
    async def main() -> None:
        async with PlanThread(lambda: TreePlan([d(""), f("b"), f("a")], [])) as plan:
            async for _ in plan.actions():
                pass

    with pytest.raises(LocalProtocolError, match="out of order"):
        asyncio.run(main())
