"""The daemon process: listeners, one Session task per connection, and graceful shutdown.

On SIGTERM/SIGINT the daemon stops accepting, lets chunks it already received reach disk, tells
clients it is going away, and keeps every partial upload for the clients to resume.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from fluxproto import ConnectError, Connection, Role

from . import log
from .buffers import POOL
from .claims import UploadClaims
from .config import ServerConfig, format_hostport
from .session import Session
from .storage.base import Storage
from .transports.tcp import Listener, SocketChannel

TLS_HANDSHAKE_TIMEOUT = 15.0


class FluxServer:
    """Accepts TCP (+TLS) connections and runs a `Session` for each."""

    def __init__(
        self, config: ServerConfig, storage: Storage, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.config, self.storage, self.ssl_context = config, storage, ssl_context
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fluxd-io")
        self._listener: Listener | None = None
        self._sessions: dict[asyncio.Task[None], SocketChannel] = {}
        self._claims = UploadClaims()

    async def start(self) -> list[str]:
        """Bind and start accepting; returns the bound addresses as HOST:PORT."""
        host, port = self.config.address
        self._listener = Listener(self.ssl_context, self._start_session, TLS_HANDSHAKE_TIMEOUT)
        try:
            bound = self._listener.start(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot listen on {self.config.listen}: {exc.strerror}") from None
        return [format_hostport(h, p) for h, p in bound]

    def _start_session(self, sock: socket.socket) -> None:
        ch = SocketChannel(sock, Connection(Role.SERVER, alloc=POOL.get))
        task = asyncio.get_running_loop().create_task(
            Session(ch, self.storage, self.config, self.pool, self._claims).run()
        )
        self._sessions[task] = ch
        task.add_done_callback(self._sessions.pop)

    async def shutdown(self) -> None:
        """Stop accepting, flush in-flight chunks, say goodbye, close everything."""
        if self._listener is not None:
            self._listener.close()
        # Each session flushes its received chunks, finishes a commit in progress (and replies),
        # then says goodbye itself: a goodbye sent first would stop a commit's reply.
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=self.config.shutdown_grace)
        for ch in list(self._sessions.values()):
            ch.abort()
        self.pool.shutdown(wait=True)


async def serve(
    config: ServerConfig,
    storage: Storage,
    ssl_context: ssl.SSLContext | None,
    fingerprint: str | None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    server = FluxServer(config, storage, ssl_context)
    addresses = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for address in addresses:
        log.event(
            "listening",
            address=address,
            transport="tcp" if ssl_context else "tcp-plaintext",
            fingerprint=fingerprint,
            root=str(config.root),
        )
    await stop.wait()
    log.event("stopping", sessions=len(server._sessions))
    await server.shutdown()
    log.event("stopped")
