"""fluxio.transports.quic.QuicListener: the deadline on an unfinished QUIC handshake, how the
daemon's shared socket sends, and how a client takes what it sent.

aioquic restarts its idle timer on every packet it accepts, so a client that keeps sending
packets without finishing the handshake stays until the listener's own deadline closes it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicPacketType, QuicProtocolVersion, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder

from fluxd.certs import init_certs
from fluxio.transports import aioquic_shim, quic
from fluxio.transports.quic import QuicChannel, QuicListener
from fluxio.transports.quic_io import UdpEndpoint
from fluxproto import ConnectError, FluxError

DEADLINE = 0.5
MARGIN = 3.0  # scheduling slack; aioquic's own idle timeout (8 s) lies far beyond
STEP = 0.05  # seconds between two packets of the client
LONG = 30.0
VERSION = QuicProtocolVersion.VERSION_1


def first_flight(host: str, port: int) -> tuple[bytes, bytes, bytes]:
    """A real client's first datagram (its ClientHello) and the connection IDs it chose."""
    config = quic.configuration(is_client=True)
    config.verify_mode = ssl.CERT_NONE
    client = QuicConnection(configuration=config)
    client.connect((host, port), now=0.0)
    ((datagram, _),) = client.datagrams_to_send(now=0.0)
    header = pull_quic_header(Buffer(data=datagram))
    return datagram, header.destination_cid, header.source_cid


def initial_ping(dcid: bytes, scid: bytes, number: int) -> bytes:
    """A client Initial packet holding one PING: the server accepts it, nothing completes."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=dcid, is_client=True, version=VERSION)
    builder = QuicPacketBuilder(
        host_cid=scid,
        peer_cid=dcid,
        version=VERSION,
        is_client=True,
        max_datagram_size=1200,
        packet_number=number,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    builder.start_frame(QuicFrameType.PING)
    datagrams, _ = builder.flush()
    return datagrams[0]


def test_a_handshake_kept_alive_by_pings_is_closed_at_the_deadline(tmp_path: Path) -> None:
    async def main() -> tuple[str, FluxError, int]:
        ready: list[QuicChannel] = []
        failed: asyncio.Future[tuple[str, FluxError]] = asyncio.get_running_loop().create_future()
        listener = QuicListener(
            init_certs(tmp_path / "certs"),
            ready.append,
            1452,
            DEADLINE,
            on_failed=lambda peer, exc: failed.set_result((peer, exc)),
        )
        host, port = (await listener.start("127.0.0.1", 0))[0]
        loop = asyncio.get_running_loop()
        hello, dcid, scid = first_flight(host, port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(hello, (host, port))
            started = loop.time()
            number = 100  # above the ClientHello's
            while not failed.done():
                sock.sendto(initial_ping(dcid, scid, number), (host, port))
                number += 1
                await asyncio.wait([failed], timeout=STEP)
                assert loop.time() - started < DEADLINE + MARGIN, "still open"
            client_port = sock.getsockname()[1]
        listener.close()
        assert loop.time() - started >= DEADLINE - STEP
        assert not ready
        return *failed.result(), client_port

    peer, failure, client_port = asyncio.run(main())
    assert peer == f"127.0.0.1:{client_port}"
    assert isinstance(failure, ConnectError)
    assert failure.message == f"no QUIC handshake from {peer} within {DEADLINE:g} s"


def test_a_burst_leaves_the_daemon_in_gso_runs_and_the_client_takes_it_in_one_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download's data leaves the daemon's shared socket as GSO runs, not a sendto each, and
    the client handles the train it reads with one round of events, not one per datagram."""
    runs: list[tuple[int, int]] = []  # (sending port, datagrams in the run)
    received: collections.Counter[QuicChannel] = collections.Counter()
    rounds: collections.Counter[object] = collections.Counter()
    send_segments, datagram_received = UdpEndpoint._send_segments, QuicChannel.datagram_received
    process_events = aioquic_shim.process_events

    def sent(self: UdpEndpoint, run: list[tuple[bytes, Any]]) -> None:
        runs.append((self.get_extra_info("sockname")[1], len(run)))
        send_segments(self, run)

    def heard(self: QuicChannel, data: bytes, addr: Any) -> None:
        received[self] += 1
        datagram_received(self, data, addr)

    def handled(protocol: Any) -> None:
        rounds[protocol] += 1
        process_events(protocol)

    monkeypatch.setattr(UdpEndpoint, "_send_segments", sent)
    monkeypatch.setattr(QuicChannel, "datagram_received", heard)
    monkeypatch.setattr(aioquic_shim, "process_events", handled)

    async def main() -> tuple[int, int, int]:
        ready: list[QuicChannel] = []
        listener = QuicListener(init_certs(tmp_path / "certs"), ready.append, 1452, LONG)
        host, port = (await listener.start("127.0.0.1", 0))[0]
        config = quic.configuration(is_client=True)
        config.verify_mode = ssl.CERT_NONE
        client = await quic.open_connection(host, port, config, LONG)
        try:
            async with asyncio.timeout(LONG):
                while not ready:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the handshake's last packets are gone
            server = ready[0]
            runs.clear()
            received.clear()
            rounds.clear()
            stream = server._quic.get_next_available_stream_id(is_unidirectional=True)
            server._quic.send_stream_data(stream, bytes(10_000))
            server.transmit()  # within the first congestion window: one burst
            burst = sum(n for sender, n in runs if sender == port)
            async with asyncio.timeout(LONG):
                while received[client] < burst:
                    await asyncio.sleep(0.01)
        finally:
            client.abort()
            listener.close()
        return port, received[client], rounds[client]

    port, datagrams, handled_in = asyncio.run(main())
    assert [n for sender, n in runs if sender == port and n > 1], runs
    # One round for the train (aioquic's own protocol: one per datagram); a late packet of the
    # handshake may add a round of its own on a slow machine.
    assert datagrams > 1 and handled_in * 2 <= datagrams


def test_a_port_taken_or_a_host_unknown_is_a_connect_error(tmp_path: Path) -> None:
    async def main() -> list[FluxError]:
        failures: list[FluxError] = []
        listener = QuicListener(init_certs(tmp_path / "certs"), lambda ch: None, 1452, LONG)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            for host, port in [("127.0.0.1", taken.getsockname()[1]), ("no-such-host.invalid", 0)]:
                try:
                    await listener.start(host, port)
                except FluxError as exc:
                    failures.append(exc)
        return failures

    taken, unknown = asyncio.run(main())
    assert isinstance(taken, ConnectError) and "Address already in use" in taken.message
    assert taken.message.startswith("cannot listen on 127.0.0.1:")
    assert isinstance(unknown, ConnectError)
    assert unknown.message.startswith("cannot listen on no-such-host.invalid:0")
