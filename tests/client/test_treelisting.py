"""fluxctl.treelisting: a remote listing spooled as it arrives and read back in another thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from fluxctl.tree import TreeEntry
from fluxctl.treelisting import ListingAborted, RemoteListing
from fluxproto import Entries, Entry, Frame, Info, ListDir, NotFound, Stat

NS = 1_600_000_000_123_456_789
DIGEST = bytes(range(16))


class FakeRequest:
    def __init__(self, frames: list[Frame | Exception]) -> None:
        self.frames = frames
        self.cancelled = False

    async def expect(self, cls: type[Any], timeout: float) -> Any:
        frame = self.frames.pop(0)
        if isinstance(frame, Exception):
            raise frame
        assert isinstance(frame, cls)
        return frame

    def cancel(self) -> None:
        self.cancelled = True


class FakeSession:
    """Answers STAT and LIST with the frames given, and remembers what was asked."""

    def __init__(self, stat: list[Frame | Exception], pages: list[Frame | Exception]) -> None:
        self.replies: dict[type[Frame], list[Frame | Exception]] = {Stat: stat, ListDir: pages}
        self.asked: list[Frame] = []

    async def open(self, make: Callable[[int], Frame]) -> FakeRequest:
        frame = make(len(self.asked) + 1)
        self.asked.append(frame)
        return FakeRequest(self.replies[type(frame)])


def fill(listing: RemoteListing, session: FakeSession) -> None:
    asyncio.run(listing.fill(session, "/t", 5.0))  # type: ignore[arg-type]


def test_the_root_comes_first_named_empty_then_every_page_in_order() -> None:
    root = Entry("t", "dir", 0, NS, 0o750)
    pages = [
        Entries(2, (Entry("a", "dir"), Entry("a/f", "file", 3, NS, 0o600, DIGEST)), done=False),
        Entries(2, (), done=False),
        Entries(2, (Entry("a/l", "link", target="../x/./y"),), done=True),
    ]
    session = FakeSession([Info(1, root)], list(pages))
    with RemoteListing() as listing:
        fill(listing, session)
        got = list(listing.records())
    assert got == [
        TreeEntry("", "dir", 0, NS, 0o750),
        TreeEntry("a", "dir"),
        TreeEntry("a/f", "file", 3, NS, 0o600, None, DIGEST),
        TreeEntry("a/l", "link", target="../x/./y"),
    ]
    assert [type(f) for f in session.asked] == [Stat, ListDir]
    assert session.asked[1] == ListDir(2, "/t", True)


def test_a_file_is_a_tree_of_one_entry_without_a_listing() -> None:
    session = FakeSession([Info(1, Entry("f", "file", 5, NS, 0o644, DIGEST))], [])
    with RemoteListing() as listing:
        fill(listing, session)
        assert list(listing.records()) == [TreeEntry("", "file", 5, NS, 0o644, None, DIGEST)]
    assert len(session.asked) == 1


def test_the_reader_follows_the_writer_from_another_thread() -> None:
    """Records come out while the listing is still arriving: the reader waits for each page."""
    listing = RemoteListing()
    got: list[str] = []
    seen = threading.Semaphore(0)

    def read() -> None:
        for record in listing.records():
            got.append(record.name)
            seen.release()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        listing._append([b'["", "dir", 0, 0, 493, null, null]\n'])
        seen.acquire()  # the reader had it before anything else was written
        assert got == [""]
        for i in range(3):
            listing._append([f'["f{i}", "file", 0, 0, 420, null, null]\n'.encode()])
            seen.acquire()
        with listing._cond:
            listing._done = True
            listing._cond.notify_all()
        reader.join()
        assert got == ["", "f0", "f1", "f2"]
    finally:
        listing.close()
        reader.join()


def test_a_reader_waiting_for_more_stops_when_the_listing_is_given_up() -> None:
    listing = RemoteListing()
    failed: list[BaseException] = []

    def read() -> None:
        try:
            list(listing.records())
        except ListingAborted as exc:
            failed.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    listing.abort()
    reader.join()
    listing.close()
    assert len(failed) == 1


def test_a_missing_root_fails_the_fill_and_the_reader_is_told() -> None:
    session = FakeSession([NotFound("no such file: /t")], [])
    with RemoteListing() as listing:
        with pytest.raises(NotFound):
            fill(listing, session)
        listing.abort()  # what the caller's done-callback does
        with pytest.raises(ListingAborted):
            list(listing.records())
