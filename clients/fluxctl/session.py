"""One connection to a server as the client library drives it: the channel and the router that
carries many requests over it at once (protocol version 2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence

from fluxio.requests import Channel, Request, Router
from fluxproto import FluxError, Frame, Goodbye, Welcome

__all__ = ["CLOSE_WAIT", "ClientSession", "cancel_on_error", "close_sessions"]

#: How long closing waits for what is queued on a connection (a GOODBYE) to leave.
CLOSE_WAIT = 2.0


class ClientSession:
    """A connected channel, past HELLO/WELCOME, with its requests routed.

    Every operation of the library (upload, download, ls, ...) opens its requests here;
    several may run at once on one session (`many.upload_many`). Start it on the loop that
    will use it; `close` stops the router (closing the channel is the caller's).

    Attributes:
        ch: the channel.
        router: its requests (see fluxio.requests); `router.counts` counts frames.
    """

    def __init__(self, ch: Channel) -> None:
        self.ch = ch
        self.router = Router(ch)
        self.router.start()

    @property
    def transport(self) -> str:
        """ "tcp" or "quic"."""
        return self.ch.transport

    @property
    def peer(self) -> str:
        return self.ch.peer

    @property
    def welcome(self) -> Welcome:
        """The server's WELCOME: its limits and its storage's rule for uploads (`min_chunk`,
        `max_chunks`), which every chunk size picked for this session must keep."""
        welcome = self.ch.conn.welcomed
        assert welcome is not None  # a session starts past the handshake
        return welcome

    async def open(self, make: Callable[[int], Frame]) -> Request:
        """Open a request (`make(rid)` builds its opening frame) once the server's request
        limit has room; see `Router.open`.

        Raises:
            FluxError: the connection failed.
        """
        return await self.router.open(make)

    async def close(self) -> None:
        """Stop routing (every request still open gets ConnectionLost)."""
        await self.router.stop()


@contextlib.contextmanager
def cancel_on_error(req: Request) -> Iterator[None]:
    """Give `req` up (CANCEL) if the body fails while it is open: the connection may serve
    other requests, and the server stops working on this one."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FluxError):
            req.cancel()
        raise


async def close_sessions(sessions: Sequence[ClientSession], farewell: str | None) -> None:
    """Say `farewell` (GOODBYE) on each of `sessions` (None: say nothing), stop them and close
    their connections. Closing flushes what is queued; bounded by CLOSE_WAIT, it cannot hold
    up a result, and what is still unsent then is dropped: no socket outlives the run (one
    whose path went dark would stay open for the transport's close timeout)."""
    for session in sessions:
        if farewell is not None:
            with contextlib.suppress(FluxError):  # a lost goodbye changes nothing here
                session.ch.send(Goodbye(farewell))
        await session.close()
        session.ch.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT):
            await asyncio.gather(*(session.ch.wait_closed() for session in sessions))
    for session in sessions:
        session.ch.abort()
