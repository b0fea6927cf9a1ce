"""What fluxd changes beneath aioquic: its clock, and how its datagrams arrive and leave.

Each piece answers a measured problem (figures in the docstrings and benchmarks/RESULTS.md).
Its pacer, which reaches into aioquic, is in aioquic_shim.py.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import sys
import time
from collections.abc import Callable
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


#: Linux socket options of SOL_UDP (Python 3.11 names neither).
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # send: the size to split a buffer into
UDP_GRO = getattr(socket, "UDP_GRO", 104)  # receive: coalesced datagrams, with their size
GSO_BYTES = 65000  # a UDP payload stays below 64 KiB
RECV_BYTES = 65536  # room for one datagram or one GRO train
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)  # the kernel reports the segment size as an int
#: Bytes one wake-up reads at most (~90 datagrams of 1452 bytes), so that timers (the pacer)
#: and other sockets get their turn; the socket stays readable for the next.
READ_BUDGET = 128 * 1024
#: Datagrams held while the socket's send buffer is full; beyond that they are dropped, as a
#: full queue on the path would (QUIC resends).
BACKLOG_MAX = 1024

Address = Any  # what the socket module takes and gives: (host, port[, flowinfo, scope_id])
Datagrams = list[tuple[bytes, Address]]


def split_train(data: bytes, segment: int) -> list[bytes]:
    """The datagrams a GRO read coalesced into `data`: each `segment` bytes, the last one
    possibly shorter."""
    if segment <= 0 or segment >= len(data):
        return [data]
    return [data[i : i + segment] for i in range(0, len(data), segment)]


def gro_segment(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size a UDP_GRO control message reports (0 when there is none)."""
    for level, kind, value in ancdata:
        if level == socket.SOL_UDP and kind == UDP_GRO and value:
            return int.from_bytes(value[:4], sys.byteorder)  # an int (a u16 is read as one)
    return 0


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to hand `sock` trains of coalesced datagrams; False where it refuses."""
    try:
        sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


class UdpEndpoint(asyncio.DatagramTransport):
    """The datagram transport of a QUIC socket (a client's own, or the daemon's shared one), in
    place of the event loop's, which gives neither GRO's control messages nor GSO sends.

    Receive: one `recvmsg` takes a train of datagrams the kernel coalesced (UDP_GRO; on
    loopback, a peer's GSO send arrives whole) and the protocol hears each datagram of it.
    Without GRO it reads one datagram per call, as the loop's transport does. What this saves
    is measured in benchmarks/RESULTS.md (the quic notes).

    Send: `send_burst` collects the datagrams a transmit produces and sends each run of
    equal-size datagrams to one address as one GSO super-datagram (UDP_SEGMENT), which the
    kernel splits; one `sendto` per datagram was a tenth of the sender's CPU. Anything GSO
    cannot take, or every datagram once the kernel refused GSO, goes out one by one.

    Socket errors (an ICMP report the socket asked for, see `udp_socket`) go to the protocol's
    `error_received`, as from the loop's transport.
    """

    def __init__(self, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        """Take over `sock` (closed with the endpoint) and tell `protocol` it is connected."""
        super().__init__({"socket": sock})
        self._sock, self._protocol = sock, protocol
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        sock.setblocking(False)
        #: Whether the kernel coalesces received datagrams; whether it still takes GSO sends.
        self.gro = enable_gro(sock)
        self.gso = True
        self._burst: Datagrams | None = None
        self._backlog: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._closed = False
        self._loop.add_reader(self._fd, self._read)
        protocol.connection_made(self)

    # --- asyncio.DatagramTransport ----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname" and not self._closed:
            return self._sock.getsockname()
        return super().get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.DatagramProtocol, protocol)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._backlog:
            self._loop.remove_writer(self._fd)
            self._backlog.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address = None) -> None:
        if self._burst is not None:
            self._burst.append((bytes(data), addr))
        elif not self._closed:
            self._send_each([(bytes(data), addr)])

    # --- bursts -------------------------------------------------------------------------------

    def send_burst(self, fill: Callable[[], None]) -> None:
        """Run `fill` (which sends datagrams through this endpoint) and send what it sent with
        as few system calls as GSO allows. A burst inside a burst joins the outer one."""
        if self._burst is not None:
            fill()
            return
        self._burst = []
        try:
            fill()
        finally:
            burst, self._burst = self._burst, None
            if not self._closed:
                self._send_burst(burst)

    def _send_burst(self, burst: Datagrams) -> None:
        i = 0
        while i < len(burst):
            j = _run_end(burst, i)
            if j - i > 1 and self.gso:
                self._send_segments(burst[i:j])
            else:
                self._send_each(burst[i:j])
            i = j

    def _send_segments(self, run: Datagrams) -> None:
        size, addr = len(run[0][0]), run[0][1]
        if self._backlog:  # datagrams wait already: these go after them, in order
            self._hold(run)
            return
        try:
            self._sock.sendmsg(
                [b"".join(data for data, _ in run)],
                [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", size))],
                0,
                addr,
            )
        except (BlockingIOError, InterruptedError):
            self._hold(run)
        except ConnectionRefusedError as exc:
            # An ICMP error the socket had queued, reported on this send: it says nothing
            # about GSO, and the protocol must hear of it like any other.
            self._protocol.error_received(exc)
        except OSError:
            self.gso = False  # no GSO here: plain sends from now on
            self._send_each(run)

    def _send_each(self, datagrams: Datagrams) -> None:
        for k, (data, addr) in enumerate(datagrams):
            if self._backlog:
                self._hold(datagrams[k:])
                return
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self._hold(datagrams[k:])
                return
            except OSError as exc:
                self._protocol.error_received(exc)

    def _hold(self, datagrams: Datagrams) -> None:
        if not self._backlog:
            self._loop.add_writer(self._fd, self._write_backlog)
        room = BACKLOG_MAX - len(self._backlog)
        self._backlog.extend(datagrams[:room])

    def _write_backlog(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._backlog.popleft()
        self._loop.remove_writer(self._fd)

    # --- receiving ------------------------------------------------------------------------------

    def _read(self) -> None:
        budget = READ_BUDGET
        while budget > 0 and not self._closed:
            try:
                data, ancdata, _, addr = self._sock.recvmsg(RECV_BYTES, GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)  # the loop wakes us again for the rest
                return
            budget -= len(data)
            segment = gro_segment(ancdata) if ancdata else 0
            received = self._protocol.datagram_received
            if segment and segment < len(data):
                for datagram in split_train(data, segment):
                    received(datagram, addr)
                    if self._closed:  # the protocol closed us: the rest has nowhere to go
                        return
            else:
                received(data, addr)


def _run_end(burst: Datagrams, i: int) -> int:
    """End of the GSO run starting at i: same address, same size (the last may be shorter)."""
    size, addr = len(burst[i][0]), burst[i][1]
    limit = min(64, GSO_BYTES // max(size, 1))
    j = i + 1
    while j < len(burst) and j - i < limit and burst[j][1] == addr:
        n = len(burst[j][0])
        if n > size:
            break
        j += 1
        if n < size:
            break
    return j


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


async def bound_udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to host:port (a server's), as the loop's `create_datagram_endpoint`
    binds `local_addr`: the first address `host` resolves to that can be bound.

    Raises:
        OSError: `host` does not resolve, or none of its addresses can be bound.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    failure: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        return sock
    raise failure or OSError(f"{host} has no address")
