"""What fluxd changes beneath aioquic: its clock, and how the client's datagrams leave.

Each piece answers a measured problem (figures in the docstrings and benchmarks/RESULTS.md).
Its pacer, which reaches into aioquic, is in aioquic_shim.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any, cast


class PreciseClock:
    """The event loop as aioquic sees it, with a clock that does not tick in milliseconds.

    aioquic timestamps every packet with `loop.time()`. uvloop's advances in whole
    milliseconds, which wrecks aioquic's RTT estimate and pacing on a fast link (measured:
    1.6-5.8 MB/s instead of ~20). Both clocks count CLOCK_MONOTONIC seconds, so timers armed
    from these timestamps still fire within a millisecond of when they should.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux; Python 3.11 does not export it
GSO_BYTES = 65000  # a UDP payload stays below 64 KiB


class GsoTransport:
    """The client's UDP transport, sending each burst of datagrams with as few sendmsg calls
    as the kernel allows: equal-size datagrams to one address travel as one GSO super-datagram
    (UDP_SEGMENT), which the kernel splits. Profiled, one sendto per datagram was a tenth of
    the client's CPU. Anything GSO cannot take goes through the event loop's transport.
    """

    def __init__(self, transport: asyncio.DatagramTransport, sock: socket.socket) -> None:
        self._transport, self._sock = transport, sock
        self._batch: list[tuple[bytes, Any]] | None = None
        self._gso = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._batch is None:
            self._transport.sendto(data, addr)
        else:
            self._batch.append((data, addr))

    def begin(self) -> None:
        self._batch = []

    def flush(self) -> None:
        batch, self._batch = self._batch or [], None
        i = 0
        while i < len(batch):
            j = self._run_end(batch, i)
            if j - i > 1 and self._gso:
                self._send_segments(batch[i:j])
            else:
                for data, addr in batch[i:j]:
                    self._transport.sendto(data, addr)
            i = j

    @staticmethod
    def _run_end(batch: list[tuple[bytes, Any]], i: int) -> int:
        """End of the GSO run starting at i: same address, same size (the last may be shorter)."""
        size, addr = len(batch[i][0]), batch[i][1]
        limit = min(64, GSO_BYTES // size)
        j = i + 1
        while j < len(batch) and j - i < limit and batch[j][1] == addr:
            n = len(batch[j][0])
            if n > size:
                break
            j += 1
            if n < size:
                break
        return j

    def _send_segments(self, run: list[tuple[bytes, Any]]) -> None:
        size, addr = len(run[0][0]), run[0][1]
        try:
            self._sock.sendmsg(
                [b"".join(data for data, _ in run)],
                [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", size))],
                0,
                addr,
            )
        except ConnectionRefusedError as exc:
            # An ICMP error the socket had queued (see udp_socket), reported on this send: it
            # says nothing about GSO, and the protocol must hear of it like any other.
            cast(asyncio.DatagramProtocol, self._transport.get_protocol()).error_received(exc)
            return
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):
                self._gso = False  # no GSO here (or no socket any more): plain sends from now on
            for data, _ in run:
                self._transport.sendto(data, addr)

    def close(self) -> None:
        self._transport.close()
        with contextlib.suppress(OSError):
            self._sock.detach()  # the loop closes the descriptor; ours must not close it again


#: linux/in.h and linux/in6.h (Python's socket module does not name them).
IP_RECVERR = 11
IPV6_RECVERR = 25


def drain_errors(sock: socket.socket) -> int:
    """Empty the socket's error queue (see `udp_socket`), all of it: a report left behind keeps
    the socket readable without anything to read. The kernel bounds the queue by the socket's
    receive buffer. Returns how many reports it held."""
    n = 0
    while True:
        try:
            sock.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:
            return n
        n += 1


def udp_socket(family: int) -> socket.socket:
    """A UDP socket on an ephemeral port of every local address (a client's own socket).

    It asks for ICMP errors (IP_RECVERR): a server port with nothing behind it then answers
    the first datagram with "refused" at once, not with the silence of a lost packet. The
    socket stays unconnected, so a server that replies from another of its addresses is
    still heard. Whoever handles the errors must `drain_errors`, or the queued reports keep
    the socket readable and the loop spins.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            sock.bind(("::", 0, 0, 0))
        else:
            sock.bind(("0.0.0.0", 0))  # noqa: S104 - an ephemeral client port, not a server
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # IPv4 (and v4-mapped) destinations
    except BaseException:
        sock.close()
        raise
    return sock
