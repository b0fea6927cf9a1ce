"""Which session is writing which path, so a second writer is refused while the first is alive.

A client that comes back right after its old connection dropped (Ctrl-C and run it again, a
crash, a new address) may find that connection still holding the path: the daemon has not yet
noticed it is dead (over QUIC that takes up to the 8 s idle timeout). Such a claim, by the same
subject, waits instead of failing: for the old connection to end by itself, and if it stays
silent for `stale_after` seconds, it is ended as superseded. A holder that shows any life
meanwhile (bytes arrive from its client, answers to the daemon's keepalive PINGs included)
keeps the path, and the newcomer gets a conflict at once. The wait PINGs the holder's client
itself (`Holder.ping`, every PING_EVERY): a live client with every chunk in flight and its
COMMIT sent has nothing to say until the daemon acknowledges, and over TCP nothing else would
show it is there (QUIC's own acknowledgements do). What the daemon still does for a
silent holder is no sign of life: it works through frames a killed client left queued (its
chunks, and a COMMIT right behind them) for seconds after the client died. Across processes
the staging file lock still guarantees one writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fluxproto import Conflict

#: How long a holder of the same subject may stay silent before it is presumed dead: just over
#: the QUIC idle timeout, after which the daemon would have noticed by itself anyway.
STALE_AFTER = 10.0
#: How often a waiting claim looks at the holder's signs of life ...
POLL = 0.1
#: ... and asks its client for one (a PING, which a live client answers).
PING_EVERY = 1.0


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a path: enough to tell a live writer from a dead connection."""

    #: Whom per-subject limits count (a token's subject; anonymous clients per address).
    account: str
    #: True once the holder's connection is gone.
    is_closed: Callable[[], bool]
    #: A reading that changes whenever the holder shows life (the time bytes last arrived
    #: from its client); only compared with itself.
    last_heard: Callable[[], float]
    #: End the holder's connection: it is superseded by a new one of the same subject.
    end: Callable[[], None]
    #: Ask the holder's client for a sign of life (a PING; its PONG shows in `last_heard`).
    ping: Callable[[], None] = lambda: None


class UploadClaims:
    def __init__(
        self, stale_after: float = STALE_AFTER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._held: dict[str, tuple[Holder, asyncio.Event]] = {}
        self.stale_after, self._clock = stale_after, clock

    @asynccontextmanager
    async def claim(self, key: str, holder: Holder, grace: float) -> AsyncIterator[None]:
        """Hold `key` for the body.

        Raises:
            Conflict: a live session holds `key` (another subject's, or one of the same subject
                that shows life), or a closing one does not let go within `grace`.
        """
        while (held := self._held.get(key)) is not None:
            other, released = held
            if not other.is_closed():
                if other.account != holder.account:
                    raise Conflict(f"/{key} is being uploaded by another session")
                await self._outwait(key, other, released)
            try:
                async with asyncio.timeout(grace):
                    await released.wait()
            except TimeoutError:
                raise Conflict(f"/{key} is still being closed by a previous session") from None
        released = asyncio.Event()
        self._held[key] = (holder, released)
        try:
            yield
        finally:
            del self._held[key]
            released.set()

    async def _outwait(self, key: str, other: Holder, released: asyncio.Event) -> None:
        """Wait while a holder of the same subject stays silent; end it once it is stale.

        Returns once the holder is closed, released, or ended; raises Conflict if it shows life.
        """
        heard = other.last_heard()
        deadline = self._clock() + self.stale_after
        pinged = -PING_EVERY
        while not (other.is_closed() or released.is_set()):
            if other.last_heard() != heard:
                raise Conflict(f"/{key} is being uploaded by another session of yours")
            if self._clock() - pinged >= PING_EVERY:
                pinged = self._clock()
                other.ping()
            left = deadline - self._clock()
            if left <= 0:
                other.end()
                return
            try:
                async with asyncio.timeout(min(left, POLL)):
                    await released.wait()
            except TimeoutError:
                continue
