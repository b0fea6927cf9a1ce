"""Open transfers by transfer id (`tid`), per account: what a request that attaches finds.

A transfer outlives the request that opened it as long as requests attached to it run: the
opener's operation waits for them before it closes the transfer, and until none is left more may
attach (PROTOCOL.md 6.3): a client whose lanes carry one upload can lose the lane that opened it,
go on over the others, and bring that lane back to the same transfer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from fluxproto import TID_SIZE, NotFound

H = TypeVar("H")

__all__ = ["TransferRegistry"]


class _Open(Generic[H]):
    __slots__ = ("account", "handle", "idle", "joinable", "opener_gone", "users")

    def __init__(self, account: str, handle: H) -> None:
        self.account, self.handle = account, handle
        self.users = 0
        self.joinable = True
        self.opener_gone = False
        self.idle = asyncio.Event()
        self.idle.set()


class TransferRegistry(Generic[H]):
    """The open transfers of one kind (uploads, or downloads) by tid.

    Args:
        linger: a transfer stays joinable after its opener's body ended, as long as a request
            that attached to it runs (a lane that came back joins the upload or shared
            download its other lanes still carry, PROTOCOL.md 6.3 and 15.44). Its opener's exit then
            waits for them even when cancelled, since it closes what they use.
    """

    def __init__(self, linger: bool = False) -> None:
        self._open: dict[bytes, _Open[H]] = {}
        self._linger = linger

    @asynccontextmanager
    async def opened(self, account: str, handle: H) -> AsyncIterator[bytes]:
        """Register `handle` for the body under a new tid (yielded). On leaving, no request may
        attach any more (with `linger`: once none is attached), and the exit waits until the
        attached ones are done with it (or the transfer is `done`)."""
        tid = os.urandom(TID_SIZE)
        entry = self._open[tid] = _Open(account, handle)
        try:
            yield tid
        finally:
            entry.opener_gone = True
            if not (self._linger and entry.users):
                entry.joinable = False
            try:
                await self._idle(entry)
            finally:
                entry.joinable = False
                del self._open[tid]

    def done(self, tid: bytes) -> None:
        """Transfer `tid` needs no request any more (an upload was committed): none may attach,
        and its opener leaves without waiting for those attached, which can only find it
        done (a lane whose connection died unnoticed would hold it until the server's idle
        timeout)."""
        entry = self._open.get(tid)
        if entry is not None:
            entry.joinable = False
            entry.idle.set()

    async def _idle(self, entry: _Open[H]) -> None:
        if not self._linger:
            await entry.idle.wait()
            return
        cancelled = False
        while not entry.idle.is_set():
            try:
                await entry.idle.wait()
            except asyncio.CancelledError:
                cancelled = True  # the attached requests still read through the handle
        if cancelled:
            raise asyncio.CancelledError

    @asynccontextmanager
    async def attached(self, account: str, tid: bytes) -> AsyncIterator[H]:
        """The transfer `tid` of `account`, held open for the body.

        Raises:
            NotFound: no such transfer, it is finishing, or it is another account's (the
                same answer: a tid names nothing to anyone else).
        """
        entry = self._open.get(tid)
        if entry is None or entry.account != account or not entry.joinable:
            raise NotFound(f"no open transfer {tid.hex()} to attach to")
        entry.users += 1
        entry.idle.clear()
        try:
            yield entry.handle
        finally:
            entry.users -= 1
            if not entry.users:
                if entry.opener_gone:
                    entry.joinable = False
                entry.idle.set()
