"""The UDP relay on its own, with plain sockets, and one aioquic transfer through a lossy relay.

Nothing sleeps: a test waits on the relay's counters (`wait_for`, a condition variable) or on a
socket with a timeout. Once the relay counts a datagram as forwarded it is already queued on the
receiving loopback socket, so "nothing else arrived" is a non-blocking read after the counters
say every datagram was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration

from fluxd.certs import init_certs
from fluxio.transports import aioquic_shim
from fluxproto import ALPN

from .udp_relay import C2S, S2C, Stats, UdpRelay

LONG = 10.0  # bound on waits that must succeed; never reached when the code works
MiB = 1 << 20

Address = tuple[str, int]


@pytest.fixture
def udp() -> Iterator[Callable[[], socket.socket]]:
    """Makes UDP sockets on 127.0.0.1 (blocking, with a timeout); closes them after the test."""
    socks: list[socket.socket] = []

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(s)
        s.bind(("127.0.0.1", 0))
        s.settimeout(LONG)
        return s

    yield make
    for s in socks:
        s.close()


@pytest.fixture
def server(udp: Callable[[], socket.socket]) -> socket.socket:
    return udp()


@pytest.fixture
def client(udp: Callable[[], socket.socket]) -> socket.socket:
    return udp()


@pytest.fixture
def relay(server: socket.socket) -> Iterator[UdpRelay]:
    with UdpRelay(port_of(server), seed=1) as r:
        yield r


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def to(relay: UdpRelay) -> Address:
    return ("127.0.0.1", relay.port)


def nothing_waiting(sock: socket.socket) -> bool:
    """True if no datagram is queued on `sock` (checked without blocking)."""
    return not drain(sock)


def received(relay: UdpRelay, direction: str, n: int) -> Stats:
    """Wait until the relay has read `n` datagrams in `direction` and decided their fate."""
    return relay.wait_for(lambda s: s[direction]["received"] >= n, LONG)


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on `sock` now, without waiting for more."""
    out = []
    sock.setblocking(False)  # MSG_DONTWAIT is not enough: a timeout socket polls first
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(LONG)


def open_sockets() -> int:
    """Sockets this process has open, from /proc (independent of Python objects)."""
    fds = os.listdir("/proc/self/fd")
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # the fd listdir used, closed by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


# --- forwarding and addressing ------------------------------------------------------------------


def test_forwards_both_ways(relay: UdpRelay, server: socket.socket, client: socket.socket) -> None:
    client.sendto(b"ping", to(relay))
    data, seen_from = server.recvfrom(65536)
    assert data == b"ping"
    assert seen_from == ("127.0.0.1", relay.server_side_ports[0])

    server.sendto(b"pong", seen_from)
    data, reply_from = client.recvfrom(65536)
    assert (data, reply_from) == (b"pong", to(relay))
    assert relay.client_addresses == [client.getsockname()]
    stats = relay.stats()
    assert stats[C2S]["forwarded"] == stats[S2C]["forwarded"] == 1
    assert stats[C2S]["dropped"] == stats[S2C]["dropped"] == 0


def test_follows_a_client_that_moves(
    relay: UdpRelay, server: socket.socket, udp: Callable[[], socket.socket]
) -> None:
    first, second = udp(), udp()
    first.sendto(b"a", to(relay))
    _, relay_addr = server.recvfrom(65536)

    second.sendto(b"b", to(relay))  # the client moved: a new local socket
    data, seen_from = server.recvfrom(65536)
    assert (data, seen_from) == (b"b", relay_addr)  # the server sees no change
    server.sendto(b"to-b", relay_addr)
    assert second.recv(65536) == b"to-b"
    assert nothing_waiting(first)  # the reply went only to the newest address

    first.sendto(b"a again", to(relay))  # moving back is followed too
    assert server.recv(65536) == b"a again"
    server.sendto(b"to-a", relay_addr)
    assert first.recv(65536) == b"to-a"
    assert nothing_waiting(second)
    assert relay.client_addresses == [first.getsockname(), second.getsockname()]


def test_rebind_changes_the_source_port_and_replies_still_arrive(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    client.sendto(b"before", to(relay))
    _, old = server.recvfrom(65536)

    new_port = relay.rebind()
    client.sendto(b"after", to(relay))
    data, new = server.recvfrom(65536)
    assert data == b"after"
    assert new == ("127.0.0.1", new_port) != old
    assert relay.server_side_ports == [old[1], new_port]

    server.sendto(b"reply", new)
    assert client.recv(65536) == b"reply"
    # Without grace the old socket is closed at once: its port is free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(old)


def test_rebind_with_grace_forwards_late_replies_to_the_old_address(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    client.sendto(b"before", to(relay))
    _, old = server.recvfrom(65536)
    relay.rebind(grace=LONG)

    server.sendto(b"late", old)
    assert client.recv(65536) == b"late"
    assert relay.stats()[S2C]["forwarded"] == 1


# --- impairments ----------------------------------------------------------------------------------


def test_loss_one_drops_everything(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    relay.set(loss=1.0)
    for i in range(50):
        client.sendto(b"%d" % i, to(relay))
    stats = received(relay, C2S, 50)
    assert stats[C2S]["dropped"] == 50
    assert stats[C2S]["forwarded"] == 0
    assert nothing_waiting(server)


def lossy_run(
    seed: int,
    udp: Callable[[], socket.socket],
    *,
    n: int = 200,
    replies_between: bool = False,
) -> tuple[int, list[bytes]]:
    """Send `n` numbered datagrams through a relay with loss=0.3; return (dropped, delivered).

    With `replies_between`, the server sends a datagram back after each one, so the other
    direction's random streams are in use at the same time.
    """
    server, client = udp(), udp()
    with UdpRelay(port_of(server), seed=seed, loss=0.3) as relay:
        for i in range(n):
            client.sendto(b"%d" % i, to(relay))
            if replies_between:
                received(relay, C2S, i + 1)
                server.sendto(b"reply", ("127.0.0.1", relay.server_side_ports[0]))
                received(relay, S2C, i + 1)
        stats = received(relay, C2S, n)
        return stats[C2S]["dropped"], drain(server)


def test_loss_is_reproducible_for_a_seed(udp: Callable[[], socket.socket]) -> None:
    # Exact counts are a function of (seed, datagram sequence): the k-th datagram of a direction
    # is dropped iff the k-th draw of that direction's loss stream is below `loss`. A QUIC stack
    # changes its sequence with timing, so QUIC tests can rely on the rate, not the count.
    dropped, delivered = lossy_run(7, udp)
    assert (dropped, delivered) == lossy_run(7, udp)
    assert 200 * 0.15 < dropped < 200 * 0.45
    assert len(delivered) == 200 - dropped
    assert [int(d) for d in delivered] == sorted(int(d) for d in delivered)

    _, other = lossy_run(8, udp)
    assert other != delivered


def test_directions_draw_from_separate_streams(udp: Callable[[], socket.socket]) -> None:
    # Server-to-client traffic interleaved with the client's does not change which client
    # datagrams are lost.
    assert lossy_run(3, udp, n=60, replies_between=True) == lossy_run(3, udp, n=60)


def test_duplicate_one_doubles_every_datagram(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    relay.set(duplicate=1.0)
    for i in range(20):
        client.sendto(b"%d" % i, to(relay))
    stats = relay.wait_for(lambda s: s[C2S]["forwarded"] >= 40, LONG)
    assert drain(server) == [b"%d" % i for i in range(20) for _ in range(2)]
    assert stats[C2S]["duplicated"] == 20
    assert stats[C2S]["forwarded"] == 40


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_reorder_one_swaps_each_pair(
    relay: UdpRelay, server: socket.socket, client: socket.socket, delay: float
) -> None:
    # A generous hold, so a slow sender cannot make the timeout release a datagram early.
    relay.set(reorder=1.0, reorder_timeout=LONG, delay=delay)
    sent_at = time.monotonic()
    for i in range(10):
        client.sendto(b"%d" % i, to(relay))
    swapped = [b"%d" % i for even in range(0, 10, 2) for i in (even + 1, even)]  # 1 0 3 2 ...
    assert [server.recv(65536) for _ in range(10)] == swapped
    assert time.monotonic() - sent_at >= delay  # a held datagram waits for the delay too
    assert relay.stats()[C2S]["reordered"] == 5


def test_a_held_datagram_without_a_follower_is_released_after_the_timeout(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    relay.set(reorder=1.0, reorder_timeout=0.05)
    sent_at = time.monotonic()
    client.sendto(b"alone", to(relay))
    assert server.recv(65536) == b"alone"
    assert time.monotonic() - sent_at >= 0.05
    assert relay.stats()[C2S]["reordered"] == 1


def test_delay_never_releases_early(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    relay.set(delay=0.2, jitter=0.05)
    sent_at = {}
    for i in range(5):
        sent_at[b"%d" % i] = time.monotonic()
        client.sendto(b"%d" % i, to(relay))
    for _ in range(5):
        data = server.recv(65536)
        assert time.monotonic() - sent_at.pop(data) >= 0.2 - 0.05
    assert not sent_at


def test_delay_without_jitter_keeps_order_and_applies_both_ways(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    client.sendto(b"hello", to(relay))
    _, relay_addr = server.recvfrom(65536)
    relay.set(delay=0.1)
    sent_at = time.monotonic()
    for i in range(5):
        server.sendto(b"%d" % i, relay_addr)
    assert [client.recv(65536) for _ in range(5)] == [b"%d" % i for i in range(5)]
    assert time.monotonic() - sent_at >= 0.1


def test_blackhole_drops_both_ways_until_cleared(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    client.sendto(b"hello", to(relay))
    _, relay_addr = server.recvfrom(65536)

    relay.set(blackhole=True)
    for i in range(10):
        client.sendto(b"%d" % i, to(relay))
        server.sendto(b"%d" % i, relay_addr)
    stats = relay.wait_for(lambda s: s[C2S]["received"] >= 11 and s[S2C]["received"] >= 10, LONG)
    assert (stats[C2S]["dropped"], stats[S2C]["dropped"]) == (10, 10)
    assert nothing_waiting(server)
    assert nothing_waiting(client)

    relay.set(blackhole=False)
    client.sendto(b"up", to(relay))
    assert server.recv(65536) == b"up"
    server.sendto(b"down", relay_addr)
    assert client.recv(65536) == b"down"


def test_blackhole_also_drops_datagrams_in_flight(
    relay: UdpRelay, server: socket.socket, client: socket.socket
) -> None:
    relay.set(delay=0.05)
    client.sendto(b"in flight", to(relay))
    received(relay, C2S, 1)  # now in the relay's timer queue
    relay.set(blackhole=True)
    stats = relay.wait_for(lambda s: s[C2S]["dropped"] >= 1, LONG)  # dropped when released
    assert stats[C2S]["forwarded"] == 0

    relay.set(blackhole=False, delay=0.0)
    client.sendto(b"after", to(relay))
    assert server.recv(65536) == b"after"
    assert nothing_waiting(server)


def test_set_rejects_unknown_or_invalid_parameters(relay: UdpRelay) -> None:
    with pytest.raises(TypeError, match="bogus"):
        relay.set(bogus=1)
    with pytest.raises(ValueError, match="loss"):
        relay.set(loss=1.5)
    with pytest.raises(ValueError, match="delay"):
        relay.set(delay=-1)
    assert relay.params.loss == 0.0


# --- lifecycle ------------------------------------------------------------------------------------


def test_close_leaves_no_thread_and_no_socket(server: socket.socket, client: socket.socket) -> None:
    before = open_sockets()
    relay = UdpRelay(port_of(server), seed=1, delay=LONG)
    client.sendto(b"queued", to(relay))  # stays in the timer heap
    relay.rebind(grace=LONG)  # an old socket kept open on a timer
    received(relay, C2S, 1)
    assert open_sockets() == before + 5  # listener, two outbound, wake pair
    name = relay._thread.name

    relay.close()
    relay.close()  # idempotent
    assert not relay._thread.is_alive()
    assert name not in [t.name for t in threading.enumerate()]
    assert open_sockets() == before
    gc.collect()  # an unclosed socket would raise ResourceWarning (an error in this suite)
    with pytest.raises(RuntimeError, match="closed"):
        relay.rebind()


# --- aioquic through the relay ------------------------------------------------------------------


async def echo_over_quic(
    certs: Path, payload: bytes, **relay_params: object
) -> tuple[bytes, Stats]:
    """Send `payload` on one stream to an aioquic echo server through a relay; return the echo."""
    paths = init_certs(certs)
    server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_config.load_cert_chain(paths.server_cert, paths.server_key)
    tasks: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.write_eof()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(echo(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await serve("127.0.0.1", 0, configuration=server_config, stream_handler=on_stream)
    try:
        server_port = aioquic_shim.server_socket(server).getsockname()[1]
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE
        )
        with UdpRelay(server_port, seed=11, **relay_params) as relay:
            async with connect("127.0.0.1", relay.port, configuration=client_config) as quic:
                reader, writer = await quic.create_stream()
                writer.write(payload)
                writer.write_eof()
                echoed = await reader.read()  # until the server's end of stream
            return echoed, relay.stats()
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_aioquic_echo_through_a_lossy_relay(tmp_path: Path) -> None:
    payload = os.urandom(MiB)
    echoed, stats = asyncio.run(echo_over_quic(tmp_path / "certs", payload, loss=0.05))
    assert echoed == payload
    assert stats[C2S]["dropped"] > 0
    assert stats[S2C]["dropped"] > 0
