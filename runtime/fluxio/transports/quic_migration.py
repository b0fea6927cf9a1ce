"""A QUIC client's own UDP path: its socket and endpoint, and migration (a PING on a silent
path, a move to a new local socket when the path stays silent or the socket fails).

The server validates a client's new path itself, so a transfer goes on across a NAT rebinding
or a network change without a reconnect: the client swaps the UDP transport under the same
protocol, with a socket of the same family, then changes its connection ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection

from .quic_io import PreciseClock, UdpEndpoint, drain_errors, udp_socket

#: A client whose path has been silent this long probes it with a PING ...
KEEPALIVE = 1.0
#: ... and this long moves to a new local socket (a dead NAT mapping, a changed network).
REBIND_AFTER = 1.5
WATCH_EVERY = 0.25


class ClientPath:
    """The client end of one QUIC connection's path: `sock` and what keeps the path alive.

    Args:
        protocol: the connection's aioquic protocol (it gets each new socket's transport).
        quic: its connection (for PINGs and a new connection ID).
        sock: the client's UDP socket (see quic_io.udp_socket).
        loop: the event loop, with the clock the connection's `last_receive` reads.
    """

    def __init__(
        self,
        protocol: QuicConnectionProtocol,
        quic: QuicConnection,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop | PreciseClock,
    ) -> None:
        self._protocol, self._quic, self._sock, self._loop = protocol, quic, sock, loop
        self._udp: UdpEndpoint | None = None
        #: How often this client moved to a new socket by itself (path silent or socket error).
        self.rebinds = 0
        self._last_receive: Callable[[], float] = loop.time
        self._active: Callable[[], bool] = lambda: False
        self._watchdog: asyncio.TimerHandle | None = None
        self._rebinding: asyncio.Task[None] | None = None
        self._silence_handled = -1.0  # last_receive of the silence a rebind already answered

    def open(self) -> UdpEndpoint:
        """Start receiving on the socket; returns the endpoint the protocol now sends through
        (it hears of it by `connection_made`)."""
        self._udp = UdpEndpoint(self._sock, self._protocol)
        return self._udp

    def watch(self, last_receive: Callable[[], float], active: Callable[[], bool]) -> None:
        """Watch the path from now on (the handshake is done): `last_receive()` is the loop
        time of the last datagram, `active()` False once the connection is closing."""
        self._last_receive, self._active = last_receive, active
        self._watchdog = self._loop.call_later(WATCH_EVERY, self._watch)

    def socket_error(self, exc: Exception) -> bool:
        """The socket reported `exc`. True for a refusal (the server's ICMP port unreachable,
        which the socket asks the kernel for): the caller decides. Anything else (network
        unreachable, a changed interface): move to a new socket."""
        drain_errors(self._sock)
        if isinstance(exc, ConnectionRefusedError):
            return True
        self._start_rebind()
        return False

    def close(self) -> None:
        """Stop watching and close the socket."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._udp is not None:
            self._udp.close()

    async def rebind(self) -> None:
        """Move the connection to a new local UDP socket (a new address, as a network change
        gives); raises OSError when no socket can be had."""
        old = self._udp
        assert old is not None, "not connected"
        self._sock = udp_socket(self._sock.family)
        self.open()
        old.close()
        self._quic.change_connection_id()
        self._protocol.transmit()

    def _watch(self) -> None:
        if not self._active():
            return
        last = self._last_receive()
        silent = self._loop.time() - last
        if silent > KEEPALIVE:
            self._quic.send_ping(0)  # the peer's acknowledgement proves the path again
            self._protocol.transmit()
        if silent > REBIND_AFTER and self._silence_handled != last:
            self._silence_handled = last  # one move per silence
            self._start_rebind()
        self._watchdog = self._loop.call_later(WATCH_EVERY, self._watch)

    def _start_rebind(self) -> None:
        if self._rebinding is None or self._rebinding.done():
            self.rebinds += 1
            self._rebinding = self._loop.create_task(self._rebind_quietly())

    async def _rebind_quietly(self) -> None:
        with contextlib.suppress(OSError):  # no usable network now: the next silence retries
            await self.rebind()
