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
from .chunkflow import Channel
from .claims import UploadClaims
from .config import ServerConfig, format_hostport
from .session import Session
from .storage.base import Storage
from .tls import CertPaths
from .transports.quic import QuicListener
from .transports.tcp import Listener, SocketChannel

TLS_HANDSHAKE_TIMEOUT = 15.0


class FluxServer:
    """Accepts TCP (+TLS) and QUIC connections and runs a `Session` for each."""

    def __init__(
        self,
        config: ServerConfig,
        storage: Storage,
        ssl_context: ssl.SSLContext | None,
        certs: CertPaths | None = None,
    ) -> None:
        self.config, self.storage, self.ssl_context = config, storage, ssl_context
        self.certs = certs
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fluxd-io")
        self._listener: Listener | None = None
        self._quic: QuicListener | None = None
        self._sessions: dict[asyncio.Task[None], Channel] = {}
        self._claims = UploadClaims()

    async def start(self) -> list[tuple[str, str]]:
        """Bind and start accepting; returns (transport, HOST:PORT) for every listener.

        QUIC listens on the UDP port with the TCP listener's number (port 0: the one TCP got).
        QUIC always runs TLS, so it is off when TLS is.
        """
        host, port = self.config.address
        bound: list[tuple[str, str]] = []
        try:
            if self.config.tcp:
                self._listener = Listener(
                    self.ssl_context, self._start_tcp_session, TLS_HANDSHAKE_TIMEOUT
                )
                tcp = self._listener.start(host, port)
                name = "tcp" if self.ssl_context else "tcp-plaintext"
                bound += [(name, format_hostport(h, p)) for h, p in tcp]
                port = tcp[0][1]
            if self.config.quic and self.certs is not None:
                self._quic = QuicListener(
                    self.certs, self._start_session, self.config.quic_datagram_size
                )
                udp = await self._quic.start(host, port)
                bound += [("quic", format_hostport(h, p)) for h, p in udp]
        except OSError as exc:
            self._close_listeners()
            raise ConnectError(f"cannot listen on {self.config.listen}: {exc.strerror}") from None
        return bound

    def _start_tcp_session(self, sock: socket.socket) -> None:
        self._start_session(SocketChannel(sock, Connection(Role.SERVER, alloc=POOL.get)))

    def _start_session(self, ch: Channel) -> None:
        task = asyncio.get_running_loop().create_task(
            Session(ch, self.storage, self.config, self.pool, self._claims).run()
        )
        self._sessions[task] = ch
        task.add_done_callback(self._sessions.pop)

    def _close_listeners(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._quic is not None:
            self._quic.close()

    async def shutdown(self) -> None:
        """Stop accepting, flush in-flight chunks, say goodbye, close everything."""
        self._close_listeners()
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
    certs: CertPaths | None,
    fingerprint: str | None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    server = FluxServer(config, storage, ssl_context, certs)
    listeners = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for transport, address in listeners:
        log.event(
            "listening",
            address=address,
            transport=transport,
            fingerprint=fingerprint,
            root=str(config.root),
        )
    await stop.wait()
    log.event("stopping", sessions=len(server._sessions))
    await server.shutdown()
    log.event("stopped")
