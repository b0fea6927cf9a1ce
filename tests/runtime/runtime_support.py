"""An in-memory Channel over a real fluxproto Connection, and pairs of them past the handshake
with a Router on each side: fluxio.requests and fluxio.chunkflow without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from fluxio.requests import Request, Router
from fluxio.transports.channel import ChannelBase
from fluxproto import Chunk, Connection, Frame, RequestEnded, Role

LONG = 30.0  # upper bound for waits that must succeed; never reached when the code works


class MemChannel(ChannelBase):
    """A Channel joined in memory to another: what one sends, the other's Connection receives
    at once. Create it on the running loop."""

    transport = "mem"
    copies_on_send = False

    def __init__(self, conn: Connection, peer: str) -> None:
        super().__init__(conn, peer, 0.0)
        self.other: MemChannel | None = None
        self.sent: list[Frame] = []
        self.drains = 0
        self.max_inflight = 0  # most chunk bytes ever sent and not yet acked

    def send(self, frame: Frame) -> RequestEnded | None:
        self._check_open()
        ended = self.conn.send(frame)
        self.sent.append(frame)
        if isinstance(frame, Chunk):
            self.max_inflight = max(self.max_inflight, self.conn.sent_inflight)
        assert self.other is not None
        self.other.deliver(b"".join(bytes(b) for b in self.conn.data_to_send()))
        return ended

    def deliver(self, data: bytes) -> None:
        self._received(len(data))
        self.conn.receive_data(data)
        self._pump()

    async def drain(self, timeout: float | None = None) -> None:
        self.drains += 1
        self._check_alive()

    def close(self) -> None:
        """Close both ways: each end sees the end of the stream."""
        if self._end():
            assert self.other is not None
            self.other.close()

    def abort(self) -> None:
        self.close()


def channels(
    client: dict[str, Any] | None = None, server: dict[str, Any] | None = None
) -> tuple[MemChannel, MemChannel]:
    """A client and a server channel past HELLO/WELCOME; the keyword arguments of each
    Connection (window, transfer_window, requests)."""
    c = MemChannel(Connection(Role.CLIENT, **(client or {})), "server:7070")
    s = MemChannel(Connection(Role.SERVER, **(server or {})), "client:5555")
    c.other, s.other = s, c
    c.send(c.conn.hello())
    s.send(s.conn.welcome())
    assert s.poll() is not None and c.poll() is not None  # HELLO, WELCOME
    return c, s


class Pair:
    """Routers on both ends of a channel pair; the server's requests land in `opened`."""

    def __init__(
        self,
        client: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.client_ch, self.server_ch = channels(client, server)
        self.opened: asyncio.Queue[Request] = asyncio.Queue()
        self.client = Router(self.client_ch)
        self.server = Router(
            self.server_ch, on_request=self.opened.put_nowait, idle_timeout=idle_timeout
        )
        self.client.start()
        self.server.start()

    async def accept(self) -> Request:
        """The next request the client opened, as the server sees it."""
        async with asyncio.timeout(LONG):
            return await self.opened.get()

    async def close(self) -> None:
        await self.client.stop()
        await self.server.stop()
