"""Where the daemon listens: port 0 is a number free for TCP and for UDP both."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from fluxd.certs import ensure_certs
from fluxd.config import ServerConfig
from fluxd.server import PORT_ATTEMPTS, FluxServer
from fluxd.storage.local import LocalStorage
from fluxio.tls import server_ssl_context
from fluxio.transports.quic import QuicListener
from fluxproto import ConnectError


def make_server(tmp_path: Path, listen: str) -> FluxServer:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    config = ServerConfig(root=root, certs=tmp_path / "certs", listen=listen)
    paths = ensure_certs(config.certs)
    return FluxServer(config, LocalStorage(root), server_ssl_context(paths), paths)


def taken_udp(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """The first `times` QUIC binds find their UDP port taken (by a real socket bound to it,
    as a client's QUIC socket on that number would): the ports tried, in order."""
    real = QuicListener.start
    tried: list[int] = []

    async def start(self: QuicListener, host: str, port: int) -> Any:
        tried.append(port)
        if len(tried) > times:
            return await real(self, host, port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, port))
            return await real(self, host, port)  # fails: the number is taken

    monkeypatch.setattr(QuicListener, "start", start)
    return tried


def test_port_0_moves_on_when_tcps_number_is_taken_for_udp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = taken_udp(monkeypatch, 2)

    async def main() -> list[tuple[str, str]]:
        server = make_server(tmp_path, "127.0.0.1:0")
        try:
            return await server.start()
        finally:
            await server.shutdown()

    bound = asyncio.run(main())
    assert len(tried) == 3
    ports = {transport: int(address.rsplit(":", 1)[1]) for transport, address in bound}
    assert ports["tcp"] == ports["quic"] == tried[-1]


def test_a_port_asked_for_is_not_swapped_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = taken_udp(monkeypatch, 1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        server = make_server(tmp_path, f"127.0.0.1:{port}")
        try:
            await server.start()
        finally:
            await server.shutdown()

    with pytest.raises(ConnectError, match=f"cannot listen on 127.0.0.1:{port}"):
        asyncio.run(main())
    assert tried == [port]


def test_port_0_gives_up_after_its_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = taken_udp(monkeypatch, PORT_ATTEMPTS)

    async def main() -> None:
        server = make_server(tmp_path, "127.0.0.1:0")
        try:
            await server.start()
        finally:
            await server.shutdown()

    with pytest.raises(ConnectError, match="cannot listen"):
        asyncio.run(main())
    assert len(tried) == PORT_ATTEMPTS
