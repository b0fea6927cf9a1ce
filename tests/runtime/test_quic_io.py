"""fluxio.transports.quic_io: the clock and GSO sender fluxd puts beneath aioquic."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fluxio.transports.quic_io import (
    GsoTransport,
    PreciseClock,
    drain_errors,
    udp_socket,
)

LONG = 30.0  # a bound that must never be reached
Address = tuple[str, int]


class RecordingTransport:
    """Stands in for the loop's datagram transport: records what GSO left to it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, Address]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        yield sock, sock.getsockname()


def gso(sender: socket.socket) -> tuple[GsoTransport, RecordingTransport]:
    fallback = RecordingTransport()
    return GsoTransport(fallback, sender), fallback  # type: ignore[arg-type]


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65536) for _ in range(count)]


def datagrams(sizes: list[int]) -> list[bytes]:
    return [bytes([i]) * size for i, size in enumerate(sizes)]


def test_a_burst_to_one_address_leaves_in_one_sendmsg_and_arrives_split(
    receiver: tuple[socket.socket, Address],
) -> None:
    sock, addr = receiver
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        transport, fallback = gso(sender)
        burst = datagrams([1200] * 5 + [700])  # the last of a run may be shorter
        transport.begin()
        for data in burst:
            transport.sendto(data, addr)
        transport.flush()
        assert fallback.sent == []  # nothing went the per-datagram way
        assert receive(sock, len(burst)) == burst


def test_runs_end_at_a_new_address_and_at_a_larger_datagram(
    receiver: tuple[socket.socket, Address],
) -> None:
    sock, addr = receiver
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
    ):
        other.bind(("127.0.0.1", 0))
        other.settimeout(5.0)
        transport, fallback = gso(sender)
        first, second, third = datagrams([1000, 1000]), datagrams([900]), datagrams([500, 800])
        transport.begin()
        for data in first:
            transport.sendto(data, addr)
        for data in second:
            transport.sendto(data, other.getsockname())
        for data in third:
            transport.sendto(data, addr)
        transport.flush()
        # Single datagrams (the one to `other`, the larger 800 after the 500) go the plain way.
        assert fallback.sent == [
            (second[0], other.getsockname()),
            (third[0], addr),
            (third[1], addr),
        ]
        assert receive(sock, 2) == first


def test_without_a_burst_sendto_goes_straight_through() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        transport, fallback = gso(sender)
        transport.sendto(b"x", ("127.0.0.1", 9))
        assert fallback.sent == [(b"x", ("127.0.0.1", 9))]


def test_a_failing_gso_send_falls_back_and_turns_gso_off(
    receiver: tuple[socket.socket, Address],
) -> None:
    _, addr = receiver
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.close()  # sendmsg raises OSError (bad file descriptor)
    transport, fallback = gso(sender)
    burst = datagrams([1000, 1000])
    for _ in range(2):
        transport.begin()
        for data in burst:
            transport.sendto(data, addr)
        transport.flush()
    assert fallback.sent == [(data, addr) for data in burst] * 2  # nothing lost, both times


def test_other_attributes_and_close_reach_the_loop_transport() -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sender.fileno()
    transport, fallback = gso(sender)
    assert transport.get_extra_info("peername") == "extra:peername"
    transport.close()
    assert fallback.closed
    assert sender.fileno() == -1  # detached: the descriptor belongs to the loop's transport
    socket.socket(fileno=fd).close()


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
