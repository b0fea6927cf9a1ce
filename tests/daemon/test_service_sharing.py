"""Shared downloads in the file service (PROTOCOL.md 9.1): who may join the queue of a download,
the limit on its requests, and that the transfer stays joinable while any of them runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from service_support import Daemon, run
from test_local_storage import CS, content, put

from fluxd.config import Limits
from fluxd.service import DownloadHandle
from fluxd.service.sharing import Lane
from fluxproto import Conflict, LimitExceeded, NotFound
from fluxproto.ranges import count

N = 6  # chunks of `content()`


def lane() -> Lane:
    return Lane(lambda: None, lambda n: None, 4 * CS)


def refused_to_join(dl: DownloadHandle, exc: type[Exception], match: str, want: Any = None) -> None:
    """`dl`'s request may not join the shared queue (with `want`)."""
    n = N if want is None else count(want)
    with pytest.raises(exc, match=match), dl.shared(want, range(n), lane()):
        pass


def test_requests_join_the_queue_the_opener_made(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "f", content())

    async def main() -> None:
        async with d.service.download(d.caller(), "f", CS) as dl:
            with dl.shared(None, range(N), lane()) as queue:
                async with d.service.download(d.caller(), "f", CS, dl.tid) as other:
                    with other.shared(None, range(N), lane()) as joined:
                        assert joined is queue and len(queue.lanes) == 2
                    refused_to_join(other, Conflict, "other chunks", ((0, 2),))
                assert len(queue.lanes) == 1

    run(main())


def test_joining_a_download_that_does_not_share_is_a_conflict(
    make: Callable[..., Daemon],
) -> None:
    d = make()
    put(d.storage, "f", content())

    async def main() -> None:
        async with (
            d.service.download(d.caller(), "f", CS) as dl,
            d.service.download(d.caller(), "f", CS, dl.tid) as other,
        ):
            refused_to_join(other, Conflict, "does not share")

    run(main())


def test_requests_per_shared_download_are_limited(make: Callable[..., Daemon]) -> None:
    d = make(limits=Limits(shares_per_transfer=2))
    put(d.storage, "f", content())

    async def main() -> None:
        async with d.service.download(d.caller(), "f", CS) as dl:
            with dl.shared(None, range(N), lane()):
                async with d.service.download(d.caller(), "f", CS, dl.tid) as second:
                    with second.shared(None, range(N), lane()):
                        async with d.service.download(d.caller(), "f", CS, dl.tid) as third:
                            refused_to_join(third, LimitExceeded, "limit 2")

    run(main())


def test_a_finished_shared_download_cannot_be_joined(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "f", content())

    async def main() -> None:
        async with d.service.download(d.caller(), "f", CS) as dl:
            first = lane()
            with dl.shared(None, range(N), first) as queue:
                for _ in range(N):
                    queue.take(first, 0.0)
                queue.acked(first, list(range(N)), 0.0)
                async with d.service.download(d.caller(), "f", CS, dl.tid) as other:
                    refused_to_join(other, NotFound, "finished")

    run(main())


def test_another_subject_cannot_join(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "f", content())

    async def main() -> None:
        async with d.service.download(d.caller(), "f", CS) as dl:
            with dl.shared(None, range(N), lane()), pytest.raises(NotFound, match="no open"):
                async with d.service.download(d.caller("bob"), "f", CS, dl.tid):
                    pass

    run(main())
    assert [r["subject"] for r in d.records() if r["result"].startswith("error 404")] == ["bob"]


def test_a_download_stays_joinable_while_a_request_of_it_runs(
    make: Callable[..., Daemon],
) -> None:
    """The opener's request ended (its connection went), another still carries the transfer:
    a third joins it, and the file stays open until the last one is done."""
    d = make()
    data = content()
    put(d.storage, "f", data)

    async def main() -> bytes:
        opened, left = asyncio.Event(), asyncio.Event()
        tid: list[bytes] = []

        async def opener() -> None:
            async with d.service.download(d.caller(), "f", CS) as dl:
                tid.append(dl.tid)
                opened.set()
                await left.wait()

        task = asyncio.ensure_future(opener())
        await opened.wait()
        async with d.service.download(d.caller(), "f", CS, tid[0]) as second:
            left.set()
            await asyncio.sleep(0)  # the opener's body ends; its exit waits for us
            assert not task.done()
            async with d.service.download(d.caller(), "f", CS, tid[0]) as third:
                got = [bytes((await asyncio.wrap_future(third.read_later(i)))[2]) for i in range(N)]
            assert second.version.size == len(data)
        await task
        with pytest.raises(NotFound):
            async with d.service.download(d.caller(), "f", CS, tid[0]):
                pass
        return b"".join(got)

    assert run(main()) == data


def test_a_cancelled_opener_still_waits_for_the_requests_that_joined(
    make: Callable[..., Daemon],
) -> None:
    d = make()
    data = content()
    put(d.storage, "f", data)

    async def main() -> bytes:
        opened = asyncio.Event()
        tid: list[bytes] = []

        async def opener() -> None:
            async with d.service.download(d.caller(), "f", CS) as dl:
                tid.append(dl.tid)
                opened.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(opener())
        await opened.wait()
        async with d.service.download(d.caller(), "f", CS, tid[0]) as other:
            task.cancel()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not task.done()  # the file it opened is still ours to read
            got = [bytes((await asyncio.wrap_future(other.read_later(i)))[2]) for i in range(N)]
        with pytest.raises(asyncio.CancelledError):
            await task
        return b"".join(got)

    assert run(main()) == data
