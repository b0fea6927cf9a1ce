"""Which session is writing which path, so a second writer is refused while the first is alive.

A client that reconnects right after its old connection dropped may arrive while the daemon is
still flushing that connection's last chunks; its claim waits for the release instead of failing.
Across processes, the staging layer's file lock still guarantees one writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fluxproto import Conflict


class UploadClaims:
    def __init__(self) -> None:
        self._held: dict[str, tuple[Callable[[], bool], asyncio.Event]] = {}

    @asynccontextmanager
    async def claim(
        self, key: str, is_closed: Callable[[], bool], grace: float
    ) -> AsyncIterator[None]:
        """Hold `key` for the body. `is_closed` tells whether the holder's connection is gone.

        Raises:
            Conflict: a live session holds `key`, or a closing one does not let go within `grace`.
        """
        while (held := self._held.get(key)) is not None:
            holder_closed, released = held
            if not holder_closed():
                raise Conflict(f"/{key} is being uploaded by another session")
            try:
                await asyncio.wait_for(released.wait(), grace)
            except TimeoutError:
                raise Conflict(f"/{key} is still being closed by a previous session") from None
        released = asyncio.Event()
        self._held[key] = (is_closed, released)
        try:
            yield
        finally:
            del self._held[key]
            released.set()
