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
    __slots__ = ("account", "done", "handle", "idle", "joinable", "users")

    def __init__(self, account: str, handle: H) -> None:
        self.account, self.handle = account, handle
        self.users = 0
        self.joinable = True
        self.done = False
        self.idle = asyncio.Event()
        self.idle.set()


class TransferRegistry(Generic[H]):
    """The open transfers of one kind (uploads, or downloads) by tid."""

    def __init__(self) -> None:
        self._open: dict[bytes, _Open[H]] = {}

    @asynccontextmanager
    async def opened(self, account: str, handle: H) -> AsyncIterator[bytes]:
        """Register `handle` for the body under a new tid (yielded). On leaving, the exit waits
        until no attached request uses it; requests may still attach meanwhile (another lane
        of the client that opened it), and none once it is left. A cancellation meanwhile
        (the opener's connection ended, and its session stops its requests) waits all the
        same, then is raised (unless the body's own failure is on its way out, which ends the
        task anyway): the transfer is not closed under the requests that drive it."""
        tid = os.urandom(TID_SIZE)
        entry = self._open[tid] = _Open(account, handle)
        cancelled = False
        try:
            yield tid
        finally:
            try:
                while entry.users and not entry.done:  # an attach may come meanwhile: it too
                    try:
                        await entry.idle.wait()
                    except asyncio.CancelledError:
                        cancelled = True
            finally:
                # No await between the last look at `users` and here: nobody attaches unseen.
                entry.joinable = False
                del self._open[tid]
        if cancelled:
            raise asyncio.CancelledError

    def done(self, tid: bytes) -> None:
        """Transfer `tid` needs no request any more (an upload was committed): none may attach,
        and its opener leaves without waiting for those attached, which can only find it
        done (a lane whose connection died unnoticed would hold it until the server's idle
        timeout)."""
        entry = self._open.get(tid)
        if entry is not None:
            entry.done, entry.joinable = True, False
            entry.idle.set()

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
                entry.idle.set()
