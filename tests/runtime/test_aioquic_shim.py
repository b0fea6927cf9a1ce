"""fluxio.transports.aioquic_shim: the installed aioquic is one it was tested with, every
private it reaches still exists and means what it did, and the pacer it installs."""

from __future__ import annotations

import asyncio
import inspect
import ssl
from pathlib import Path

import aioquic
import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.recovery import QuicPacketPacer

from fluxd.certs import init_certs
from fluxio.transports import aioquic_shim, quic
from fluxio.transports.aioquic_shim import MIN_BURST_BYTES, MIN_BURST_TIME, TimerAwarePacer

LONG = 30.0


def test_the_installed_aioquic_is_a_tested_version() -> None:
    version = tuple(int(part) for part in aioquic.__version__.split(".")[:2])
    first, last = aioquic_shim.TESTED
    assert first <= version < last, f"aioquic {aioquic.__version__}: check aioquic_shim.py"


def test_the_pyproject_pin_matches_the_tested_range() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    (first, last) = aioquic_shim.TESTED
    assert f'"aioquic>={first[0]}.{first[1]},<{last[0]}.{last[1]}"' in pyproject


def client_config() -> QuicConfiguration:
    config = quic.configuration(is_client=True)
    config.verify_mode = ssl.CERT_NONE
    return config


def client() -> QuicConnection:
    return QuicConnection(configuration=client_config())


def test_the_pacer_is_installed() -> None:
    conn = client()
    aioquic_shim.install_pacer(conn)
    assert isinstance(conn._loss._pacer, TimerAwarePacer)


def test_unacked_data_on_a_stream() -> None:
    conn = client()
    conn.connect(("127.0.0.1", 9), now=0.0)
    stream = conn.get_next_available_stream_id()
    assert not aioquic_shim.has_unacked_data(conn, stream)  # no such stream yet
    conn.send_stream_data(stream, b"x")
    assert aioquic_shim.has_unacked_data(conn, stream)


def test_quic_server_takes_every_keyword_serve_passes_it() -> None:
    passed = set(inspect.signature(serve).parameters) - {"host", "port"}
    assert passed <= set(inspect.signature(QuicServer).parameters)


def test_who_closed_and_why() -> None:
    conn = client()
    conn.connect(("127.0.0.1", 9), now=0.0)
    assert not aioquic_shim.closed_by_peer(conn)
    conn.close()  # our close: CLOSING once sent, never DRAINING
    conn.datagrams_to_send(now=0.0)
    assert not aioquic_shim.closed_by_peer(conn)
    assert aioquic_shim.is_idle_timeout(ConnectionTerminated(1, 0, "Idle timeout"))
    assert not aioquic_shim.is_idle_timeout(ConnectionTerminated(0, None, ""))


def test_a_closed_connection_is_draining_on_the_other_side(tmp_path: Path) -> None:
    """A real pair on loopback: the server sees the client's CONNECTION_CLOSE as DRAINING,
    hears the certificate it presented, serves on the socket server_socket names, and finds
    the connection of a short-header datagram as connection_of does."""
    certs = init_certs(tmp_path / "certs")

    async def main() -> tuple[bool, bool, int]:
        config = quic.configuration(is_client=False)
        config.load_cert_chain(certs.server_cert, certs.server_key)
        protocols: list[QuicConnectionProtocol] = []

        def make(*args: object, **kwargs: object) -> QuicConnectionProtocol:
            protocols.append(QuicConnectionProtocol(*args, **kwargs))  # type: ignore[arg-type]
            return protocols[-1]

        server = await serve("127.0.0.1", 0, configuration=config, create_protocol=make)
        port = aioquic_shim.server_socket(server).getsockname()[1]
        try:
            ch = await quic.open_connection("127.0.0.1", port, client_config(), LONG)
            has_cert = aioquic_shim.peer_certificate(ch._quic) is not None
            cid = protocols[0]._quic.host_cid  # what the client addresses the server by
            assert aioquic_shim.connection_of(server, b"\x41" + cid + bytes(30)) is protocols[0]
            assert aioquic_shim.connection_of(server, b"\xc1" + cid + bytes(30)) is None  # long
            assert aioquic_shim.connection_of(server, b"\x41" + bytes(38)) is None  # unknown
            assert aioquic_shim.connection_of(server, b"") is None
            ch.abort()
            async with asyncio.timeout(LONG):
                while not aioquic_shim.closed_by_peer(protocols[0]._quic):
                    await asyncio.sleep(0.01)
            return has_cert, True, port
        finally:
            server.close()

    has_cert, draining, port = asyncio.run(main())
    assert has_cert and draining and port > 0


def paced(window: int, rtt: float) -> tuple[TimerAwarePacer, QuicPacketPacer]:
    ours, stock = TimerAwarePacer(max_datagram_size=1452), QuicPacketPacer(max_datagram_size=1452)
    for pacer in (ours, stock):
        pacer.update_rate(congestion_window=window, smoothed_rtt=rtt)
    assert ours.packet_time == stock.packet_time  # the pace itself is aioquic's
    return ours, stock


@pytest.mark.parametrize(
    ("window", "rtt"),
    [(8_900_000, 0.0002), (1_000_000, 0.001), (200_000, 0.0005)],  # 1-44 GB/s: loopback, LAN
)
def test_a_fast_path_bursts_min_burst_bytes(window: int, rtt: float) -> None:
    ours, _ = paced(window, rtt)
    assert ours.bucket_max * window / rtt == pytest.approx(MIN_BURST_BYTES)
    assert ours.bucket_max < MIN_BURST_TIME  # a burst that fits a default receive buffer


def test_a_medium_path_bursts_for_min_burst_time() -> None:
    ours, stock = paced(500_000, 0.04)  # 100 Mbit/s, 40 ms: 12.5 MB/s
    assert stock.bucket_max < MIN_BURST_TIME
    assert ours.bucket_max == pytest.approx(MIN_BURST_TIME)  # 25 KB, not 128 KiB


def test_a_slow_path_is_paced_as_aioquic_paces_it() -> None:
    ours, stock = paced(40 * 1452, 0.08)  # ~0.7 MB/s: aioquic's bursts already last 20 ms
    assert ours.bucket_max == stock.bucket_max
