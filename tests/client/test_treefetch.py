"""fluxctl.treefetch: the recv -r executor's order and failures, with downloads the test holds."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fluxctl import treefetch
from fluxctl.tree import TreeEntry
from fluxctl.treeactions import NEW, Copy, MakeLink, Mkdir, SetAttrs
from fluxctl.treefetch import Fetcher
from fluxctl.treelocal import LocalDest
from fluxctl.treeresult import TreeResult
from fluxctl.treerun import TreeReport, TreeView
from fluxctl.url import FluxURL
from fluxproto import ConnectionLost, FluxError, NotFound

NS = 1_600_000_000_123_456_789


class HeldDownload:
    """A download that lands its file only when the test releases it (or fails as told)."""

    made: ClassVar[dict[str, HeldDownload]] = {}

    def __init__(
        self, url: FluxURL, path: Path, opts: Any, progress: Any, exact: bool, label: str
    ) -> None:
        self.url, self.path, self.progress = url, path, progress
        self.go = asyncio.Event()
        self.error: FluxError | None = None
        self.received, self.published = 0, False
        self.lanes: dict[str, int] = {}
        HeldDownload.made[url.path] = self

    async def attempt(self, session: Any, n: int) -> None:
        await self.go.wait()
        if self.error is not None:
            raise self.error
        self.path.write_bytes(b"data")
        self.received, self.published = 4, True
        self.progress(4, 4)


@pytest.fixture(autouse=True)
def held(monkeypatch: pytest.MonkeyPatch) -> dict[str, HeldDownload]:
    HeldDownload.made = {}
    monkeypatch.setattr(treefetch, "Download", HeldDownload)
    return HeldDownload.made


def file(name: str) -> Copy:
    return Copy(name, TreeEntry(name, "file", 4, NS, 0o644), None, NEW)


async def until(predicate: Any) -> None:
    """Let the loop run until `predicate()` holds (the fetcher's tasks make progress)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the fetcher made no progress")


def run(tmp_path: Path, body: Any) -> TreeResult:
    result = TreeResult("recv", "/t")
    report = TreeReport(result, TreeView(verb="recv", err=io.StringIO(), out=io.StringIO()))
    local = LocalDest(tmp_path / "out")
    remote = FluxURL("h", 7070, "/t")

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            fetcher = Fetcher(None, local, remote, None, report, group)  # type: ignore[arg-type]
            await body(fetcher)

    asyncio.run(main())
    return result


def test_a_folder_gets_its_mtime_only_after_the_files_renamed_into_it(
    tmp_path: Path, held: dict[str, HeldDownload]
) -> None:
    out = tmp_path / "out"

    async def body(fetcher: Fetcher) -> None:
        for action in (
            Mkdir("", 0o755, NS),
            Mkdir("a", 0o750, NS),
            file("a/f"),
            SetAttrs("a", "dir", 0o750, NS + 1),
            MakeLink("l", "a/f", None),  # not held up by the download before it
        ):
            await fetcher.run(action)
        assert os.readlink(out / "l") == "a/f"
        await until(lambda: "/t/a/f" in held)
        assert (out / "a").stat().st_mtime_ns != NS + 1  # the download is still going
        held["/t/a/f"].go.set()
        await fetcher.drain()
        st = (out / "a").stat()
        assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o750, NS + 1)

    result = run(tmp_path, body)
    assert (out / "a/f").read_bytes() == b"data" and result.moved == 4


def test_a_file_fails_alone_and_a_folder_that_cannot_be_made_takes_its_content(
    tmp_path: Path, held: dict[str, HeldDownload]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked").write_text("a file where a folder must go")

    async def body(fetcher: Fetcher) -> None:
        await fetcher.run(file("gone"))
        await until(lambda: "/t/gone" in held)
        held["/t/gone"].error = NotFound("no such file: /t/gone")
        held["/t/gone"].go.set()
        await fetcher.run(file("ok"))
        await until(lambda: "/t/ok" in held)
        held["/t/ok"].go.set()
        await fetcher.run(Mkdir("blocked", 0o755, NS))
        await fetcher.run(file("blocked/x"))
        await fetcher.run(SetAttrs("blocked", "dir", 0o755, NS))
        await fetcher.drain()

    result = run(tmp_path, body)
    assert [(e.path, e.exit_code) for e in result.errors] == [("gone", 6), ("blocked", 2)]
    assert "/t/blocked/x" not in held  # not tried: its folder could not be made
    assert (out / "ok").read_bytes() == b"data"


def test_a_failed_connection_ends_the_plan(tmp_path: Path, held: dict[str, HeldDownload]) -> None:
    async def body(fetcher: Fetcher) -> None:
        await fetcher.run(Mkdir("", 0o755, NS))
        await fetcher.run(file("f"))
        await until(lambda: "/t/f" in held)
        held["/t/f"].error = ConnectionLost("the link dropped")
        held["/t/f"].go.set()
        await fetcher.drain()

    with pytest.raises(BaseExceptionGroup) as caught:
        run(tmp_path, body)
    assert caught.group_contains(ConnectionLost)
