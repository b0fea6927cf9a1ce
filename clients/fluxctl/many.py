"""Many transfers at once over one connection: each file is its own request, so small files
share round trips instead of paying one each (protocol version 2). The tree commands build on
this."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence

from fluxproto import FluxError

from .download import Download
from .results import TransferResult
from .session import ClientSession
from .upload import Upload

#: Transfers in progress at once by default; the server's `requests` limit applies on top.
CONCURRENCY = 64

Outcome = TransferResult | FluxError

__all__ = ["CONCURRENCY", "Outcome", "download_many", "upload_many"]


async def upload_many(
    session: ClientSession, uploads: Sequence[Upload], concurrency: int = CONCURRENCY
) -> list[Outcome]:
    """Run one attempt of every upload on `session`, `concurrency` at a time; each file's
    result, or the flux error that ended it, in the order given (a failure ends that file
    alone unless the connection failed, which every file still running then reports).
    """

    async def one(up: Upload) -> TransferResult:
        started = time.monotonic()
        digest, size = await up.attempt(session, 0)
        return up.result(digest, size, 0, time.monotonic() - started, session.transport)

    return await _all([functools.partial(one, up) for up in uploads], concurrency)


async def download_many(
    session: ClientSession, downloads: Sequence[Download], concurrency: int = CONCURRENCY
) -> list[Outcome]:
    """As `upload_many`, for downloads into local files."""

    async def one(dl: Download) -> TransferResult:
        started = time.monotonic()
        meta = await dl.attempt(session, 0)
        return dl.result(meta, 0, time.monotonic() - started, session.transport)

    return await _all([functools.partial(one, dl) for dl in downloads], concurrency)


async def _all(
    jobs: Sequence[Callable[[], Awaitable[TransferResult]]], concurrency: int
) -> list[Outcome]:
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run(job: Callable[[], Awaitable[TransferResult]]) -> Outcome:
        async with gate:
            try:
                return await job()
            except FluxError as exc:
                return exc

    return list(await asyncio.gather(*(run(job) for job in jobs)))
