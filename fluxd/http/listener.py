"""The HTTPS listener: accepts (within the daemon's connection limits), finishes TLS with the
daemon's certificate, and serves each connection with an `HttpConnection` on the daemon's loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from fluxio.parsing import format_hostport, is_loopback
from fluxio.transports.errors import OnFailed
from fluxio.transports.tcp import Listener

from ..context import Shared
from ..service import FileService
from .conn import HttpConnection, anonymous_grant
from .stream import SocketStream

__all__ = ["HttpListener"]


class HttpListener:
    """Serves `[http] listen` until `close`.

    Args:
        ssl_context: the daemon's certificate, with ALPN http/1.1.
        admit: a connection slot for a client address (shared with the flux listeners), or None.
        on_failed: hears of each TLS handshake that failed.
    """

    def __init__(
        self,
        shared: Shared,
        service: FileService,
        ssl_context: ssl.SSLContext,
        admit: Callable[[str], Callable[[], None] | None],
        on_failed: OnFailed,
    ) -> None:
        self.shared, self.service = shared, service
        timeout = shared.config.limits.handshake_timeout
        self._listener = Listener(ssl_context, self._on_socket, timeout, admit, on_failed)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, host: str, port: int) -> list[str]:
        """Bind and listen; returns the bound HOST:PORT addresses.

        Raises:
            ConnectError: the address cannot be bound.
        """
        bound = self._listener.start(host, port)
        self._anonymous = anonymous_grant(self.shared, is_loopback(host))
        return [format_hostport(h, p) for h, p in bound]

    def _on_socket(self, sock: socket.socket, release: Callable[[], None]) -> None:
        try:
            peer = format_hostport(*sock.getpeername()[:2])
        except OSError:
            peer = "?"
        conn = HttpConnection(
            SocketStream(sock, peer), self.shared, self.service, self._anonymous, release
        )
        task = asyncio.get_running_loop().create_task(conn.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop accepting and end every connection (a download in progress is cut off)."""
        self._listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
