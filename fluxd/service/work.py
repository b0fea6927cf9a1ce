"""Blocking storage calls on the daemon's thread pool, and the keepalive while long ones run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from .caller import Presence

R = TypeVar("R")

#: While a storage call for a request runs long, the client hears from us this often: well
#: within any timeout a client would choose (fluxctl's default is 60 s).
KEEPALIVE = 1.0

__all__ = ["KEEPALIVE", "blocking", "busy", "pinging"]


async def blocking(pool: Executor, fn: Callable[..., R], *args: Any) -> R:
    """Run a blocking storage call; if cancelled, let the thread finish before unwinding."""
    fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


async def busy(pool: Executor, presence: Presence, fn: Callable[..., R], *args: Any) -> R:
    """`blocking` for a call that may take long (it reads whole files): `presence`'s keepalive
    runs every KEEPALIVE seconds until the call returns, so the client's wait for the reply
    does not run out however slow the disk. A live client answers it, and that answer (not
    the call) is what keeps an upload it holds alive for a claim (see `Presence.last_heard`)."""
    async with pinging(presence):
        return await blocking(pool, fn, *args)


@asynccontextmanager
async def pinging(presence: Presence) -> AsyncIterator[None]:
    """`presence`'s keepalive every KEEPALIVE seconds while the body runs (a request's step
    that may wait long: a storage call, a commit group, a quota check's turn)."""

    async def ping() -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            presence.keepalive()

    pings = asyncio.ensure_future(ping())
    try:
        yield
    finally:
        pings.cancel()
