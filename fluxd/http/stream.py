"""A byte stream over a non-blocking (TLS) socket for the HTTP listener: read, write, close.

The same socket handling as the flux TCP transport (an `ssl.SSLSocket` driven by the event
loop's readiness callbacks: OpenSSL reads and writes the socket itself, with none of the copies
asyncio's SSL transports make). Socket and TLS failures become flux errors here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

from fluxio.transports.errors import foreign_error
from fluxio.transports.tcp import set_linger_zero, wait_fd
from fluxproto import FluxError, TransportTimeout

#: Bytes handed to OpenSSL per write: a few TLS records' worth, so one wait covers many.
WRITE_SLICE = 1024 * 1024
#: Seconds a finished response waits for the client to close first (its unread bytes would
#: otherwise make our close a reset that can destroy the end of the response in flight).
LINGER = 2.0

__all__ = ["SocketStream"]


class SocketStream:
    """One accepted connection's socket; `peer` names it in errors."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock, self.peer = sock, peer
        #: `time.monotonic()` when bytes last arrived (a sign of life for the service).
        self.last_receive = time.monotonic()
        self.closed = False

    async def read_some(self, n: int) -> bytes:
        """Up to `n` bytes, b"" at the peer's end.

        Raises:
            ConnectionLost: the connection broke.
        """
        while True:
            try:
                data = self.sock.recv(n)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                await wait_fd(self.sock, writable=False)
                continue
            except ssl.SSLWantWriteError:
                await wait_fd(self.sock, writable=True)
                continue
            except ssl.SSLEOFError:
                return b""
            except OSError as exc:
                raise self._failed(exc) from None
            self.last_receive = time.monotonic()
            return data

    async def write(self, data: bytes | memoryview, timeout: float) -> None:
        """Send all of `data`; each wait for the peer to take more may last `timeout` seconds.

        Raises:
            TransportTimeout: the peer took nothing for `timeout` seconds.
            ConnectionLost: the connection broke.
        """
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            part = view[sent : sent + WRITE_SLICE]
            try:
                sent += self.sock.send(part)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                await self._wait(True, timeout)
            except ssl.SSLWantReadError:
                await self._wait(False, timeout)
            except OSError as exc:
                raise self._failed(exc) from None
            finally:
                part.release()

    async def _wait(self, writable: bool, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await wait_fd(self.sock, writable)
        except TimeoutError:
            raise TransportTimeout(f"{self.peer} took nothing for {timeout:g} s") from None

    def _failed(self, exc: OSError) -> FluxError:
        return foreign_error(exc, self.peer)

    async def close(self) -> None:
        """Finish the connection cleanly: end our side, let the client close, then close."""
        if self.closed:
            return
        with contextlib.suppress(OSError, ValueError, TimeoutError, FluxError):
            self.sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(LINGER):
                while await self._drain():
                    pass
        self.abort(reset=False)

    async def _drain(self) -> bool:
        try:
            return bool(self.sock.recv(65536))
        except (BlockingIOError, InterruptedError):
            await wait_fd(self.sock, writable=False)
            return True

    def abort(self, reset: bool = True) -> None:
        """Close now; with `reset`, the client sees a reset, never an orderly end."""
        if self.closed:
            return
        self.closed = True
        if reset:
            set_linger_zero(self.sock)
        self.sock.close()
