"""fluxio.transports.quic_io: the clock and the UDP endpoint (GRO reads, GSO sends) fluxd puts
beneath aioquic."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import struct
import time
from typing import Any

import pytest

from fluxio.transports import quic_io
from fluxio.transports.quic_io import (
    UDP_GRO,
    UDP_SEGMENT,
    PreciseClock,
    UdpEndpoint,
    drain_errors,
    gro_segment,
    split_train,
    udp_socket,
)

LONG = 30.0  # a bound that must never be reached
Address = tuple[str, int]


class Recorder(asyncio.DatagramProtocol):
    """The protocol of an endpoint under test: what it heard."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.datagrams: list[bytes] = []
        self.errors: list[Exception] = []
        self.lost = False
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams.append(data)
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    async def wait_for(self, count: int) -> list[bytes]:
        async with asyncio.timeout(LONG):
            while len(self.datagrams) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.datagrams


class Counting(socket.socket):
    """A socket that counts its reads."""

    reads = 0

    def recvmsg(self, *args: Any) -> Any:
        self.reads += 1
        return super().recvmsg(*args)


class NoGro(Counting):
    """A socket whose kernel refuses UDP_GRO, as one without it does."""

    def setsockopt(self, *args: Any) -> None:
        if args[:2] == (socket.SOL_UDP, UDP_GRO):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        super().setsockopt(*args)


class NoGso(socket.socket):
    """A socket whose kernel refuses GSO sends (a device without checksum offload says EIO)."""

    refused = 0

    def sendmsg(self, *args: Any) -> int:
        self.refused += 1
        raise OSError(errno.EIO, "Input/output error")


class Busy(socket.socket):
    """A socket whose send buffer is full for its first `busy` sends."""

    busy = 2

    def sendto(self, *args: Any) -> int:
        if self.busy:
            self.busy -= 1
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return super().sendto(*args)


def bound(kind: type[socket.socket] = socket.socket) -> socket.socket:
    sock = kind(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def endpoint(kind: type[socket.socket] = socket.socket) -> tuple[UdpEndpoint, Recorder]:
    recorder = Recorder()
    return UdpEndpoint(bound(kind), recorder), recorder


def address(udp: UdpEndpoint) -> Address:
    return udp.get_extra_info("sockname")


async def receive(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` datagrams at `sock`, while the loop runs (and the endpoint sends)."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(LONG):
        return [await loop.sock_recv(sock, 65536) for _ in range(count)]


def datagrams(sizes: list[int]) -> list[bytes]:
    return [bytes([i]) * size for i, size in enumerate(sizes)]


def burst(udp: UdpEndpoint, sends: list[tuple[bytes, Address]]) -> None:
    def fill() -> None:
        for data, addr in sends:
            udp.sendto(data, addr)

    udp.send_burst(fill)


# --- receiving ------------------------------------------------------------------------------


def test_a_train_splits_into_its_datagrams_the_last_one_shorter() -> None:
    train = b"".join(datagrams([1452, 1452, 1452, 100]))
    assert split_train(train, 1452) == datagrams([1452, 1452, 1452, 100])
    assert split_train(train[:2904], 1452) == datagrams([1452, 1452])  # no empty tail
    assert split_train(b"x" * 700, 1452) == [b"x" * 700]  # one datagram, not coalesced
    assert split_train(b"x" * 700, 0) == [b"x" * 700]


def test_the_segment_size_comes_from_the_gro_control_message() -> None:
    gro = (socket.SOL_UDP, UDP_GRO, struct.pack("=i", 1452))
    other = (socket.SOL_IP, 8, b"\x01\x00\x00\x00")
    assert gro_segment([other, gro]) == 1452
    assert gro_segment([(socket.SOL_UDP, UDP_GRO, struct.pack("=H", 1200))]) == 1200
    assert gro_segment([other]) == 0
    assert gro_segment([]) == 0


@pytest.mark.parametrize(("kind", "gro"), [(Counting, True), (NoGro, False)])
def test_a_gso_send_reaches_the_protocol_datagram_by_datagram(
    kind: type[Counting], gro: bool
) -> None:
    """On loopback a GSO super-datagram reaches a GRO socket whole: one read, split here.
    Where the kernel refuses GRO, it splits them itself: one read each."""

    async def main() -> tuple[bool, list[bytes], int]:
        udp, heard = endpoint(kind)
        sent = datagrams([1200] * 5 + [700])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            size = struct.pack("H", 1200)
            sender.sendmsg([b"".join(sent)], [(socket.SOL_UDP, UDP_SEGMENT, size)], 0, address(udp))
            got = await heard.wait_for(len(sent))
        udp.close()
        return udp.gro, got, udp.get_extra_info("socket").reads

    got_gro, got, reads = asyncio.run(main())
    assert got_gro == gro
    assert got == datagrams([1200] * 5 + [700])
    assert reads <= 2 if gro else reads >= 6  # the train (then perhaps EAGAIN), or each


def test_a_wake_up_reads_at_most_its_budget_and_the_next_one_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quic_io, "READ_BUDGET", 2000)

    async def main() -> list[int]:
        udp, heard = endpoint(NoGro)
        counts: list[int] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in datagrams([1000] * 6):
                sender.sendto(data, address(udp))
            async with asyncio.timeout(LONG):
                while len(heard.datagrams) < 6:
                    await asyncio.sleep(0)
                    counts.append(len(heard.datagrams))
        udp.close()
        return counts

    counts = asyncio.run(main())
    steps = [b - a for a, b in zip([0, *counts], counts, strict=False) if b != a]
    assert steps == [2, 2, 2]  # 2000 bytes a wake-up: the loop ran other work in between


def test_a_refusal_reaches_the_protocol() -> None:
    """A client socket (IP_RECVERR) hears ICMP port unreachable as ConnectionRefusedError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound a moment ago, closed now

    async def main() -> list[Exception]:
        heard = Recorder()
        udp = UdpEndpoint(udp_socket(socket.AF_INET6), heard)
        udp.sendto(b"x", ("::ffff:127.0.0.1", closed_port, 0, 0))
        async with asyncio.timeout(LONG):
            while not heard.errors:
                heard.arrived.clear()
                await heard.arrived.wait()
        drain_errors(udp.get_extra_info("socket"))
        udp.close()
        return heard.errors

    (error,) = asyncio.run(main())
    assert isinstance(error, ConnectionRefusedError)


# --- sending -----------------------------------------------------------------------------------


def test_a_burst_to_one_address_leaves_in_one_sendmsg_and_arrives_split() -> None:
    async def main() -> tuple[list[bytes], bool]:
        udp, _ = endpoint()
        with bound() as receiver:
            sent = datagrams([1200] * 5 + [700])  # the last of a run may be shorter
            burst(udp, [(data, receiver.getsockname()) for data in sent])
            got = await receive(receiver, len(sent))
        udp.close()
        return got, udp.gso

    got, gso = asyncio.run(main())
    assert got == datagrams([1200] * 5 + [700])
    assert gso


def test_runs_end_at_a_new_address_and_at_a_larger_datagram() -> None:
    async def main() -> tuple[list[bytes], list[bytes]]:
        udp, _ = endpoint()
        with bound() as one, bound() as other:
            first, second, third = datagrams([1000, 1000]), [b"o" * 900], datagrams([500, 800])
            sends = [(d, one.getsockname()) for d in first]
            sends += [(d, other.getsockname()) for d in second]
            sends += [(d, one.getsockname()) for d in third]
            burst(udp, sends)
            got = await receive(one, 4), await receive(other, 1)
        udp.close()
        return got

    at_one, at_other = asyncio.run(main())
    assert at_one == [*datagrams([1000, 1000]), *datagrams([500, 800])]
    assert at_other == [b"o" * 900]


def test_without_a_burst_sendto_goes_straight_out() -> None:
    async def main() -> list[bytes]:
        udp, _ = endpoint(NoGso)
        with bound() as receiver:
            udp.sendto(b"x", receiver.getsockname())
            got = await receive(receiver, 1)
        udp.close()
        return got

    assert asyncio.run(main()) == [b"x"]


def test_a_refused_gso_send_falls_back_to_one_send_each_and_turns_gso_off() -> None:
    async def main() -> tuple[list[bytes], bool, int]:
        udp, _ = endpoint(NoGso)
        sock = udp.get_extra_info("socket")
        sent = datagrams([1000, 1000])
        with bound() as receiver:
            for _ in range(2):
                burst(udp, [(data, receiver.getsockname()) for data in sent])
            got = await receive(receiver, 4)
        udp.close()
        return got, udp.gso, sock.refused

    got, gso, refused = asyncio.run(main())
    assert got == datagrams([1000, 1000]) * 2  # nothing lost, both times
    assert not gso and refused == 1  # asked once, then never again


def test_a_full_send_buffer_holds_datagrams_until_writable_in_order() -> None:
    async def main() -> list[bytes]:
        udp, _ = endpoint(Busy)
        with bound() as receiver:
            for data in datagrams([300, 400, 500]):
                udp.sendto(data, receiver.getsockname())  # the first two meet EAGAIN
            got = await receive(receiver, 3)
        udp.close()
        return got

    assert asyncio.run(main()) == datagrams([300, 400, 500])


def test_close_stops_reading_closes_the_socket_and_tells_the_protocol() -> None:
    async def main() -> tuple[Recorder, socket.socket, UdpEndpoint]:
        udp, heard = endpoint()
        sock = udp.get_extra_info("socket")
        assert heard.transport is udp and not udp.is_closing()
        udp.close()
        udp.close()  # idempotent
        udp.sendto(b"late", ("127.0.0.1", 9))  # dropped, not raised
        await asyncio.sleep(0)
        return heard, sock, udp

    heard, sock, udp = asyncio.run(main())
    assert udp.is_closing() and heard.lost
    assert sock.fileno() == -1


def test_the_clock_is_time_monotonic_and_the_rest_is_the_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = PreciseClock(loop)
        before = time.monotonic()
        now = clock.time()
        assert before <= now <= time.monotonic()
        assert clock.create_future().get_loop() is loop

    asyncio.run(main())


def test_udp_socket_binds_an_ephemeral_port() -> None:
    with udp_socket(socket.AF_INET) as sock:
        host, port = sock.getsockname()
        assert host == "0.0.0.0" and port > 0


def test_a_client_socket_hears_refused_and_its_error_queue_drains() -> None:
    """Nothing listening answers with ICMP port unreachable: the unconnected client socket
    reports it (IP_RECVERR), and once drained the socket is quiet again (no spinning loop)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound a moment ago, closed now
    sock = udp_socket(socket.AF_INET6)
    try:
        sock.sendto(b"x", ("::ffff:127.0.0.1", closed_port, 0, 0))
        ready, _, _ = select.select([sock], [], [], LONG)
        assert ready, "no report of the refusal"
        with pytest.raises(ConnectionRefusedError):
            sock.recv(100, socket.MSG_DONTWAIT)
        assert drain_errors(sock) >= 1
        assert select.select([sock], [], [], 0) == ([], [], [])  # nothing left to report
    finally:
        sock.close()
