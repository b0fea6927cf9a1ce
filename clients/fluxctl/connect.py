"""Opening a flux connection: TCP, TLS with the trust policy, ALPN, then HELLO/WELCOME."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from fluxd.buffers import POOL
from fluxd.chunkflow import expect
from fluxd.config import is_loopback
from fluxd.transports.tcp import SocketChannel, open_connection
from fluxproto import (
    DEFAULT_WINDOW,
    ConfigError,
    ConnectError,
    Connection,
    Hello,
    Role,
    Welcome,
)
from fluxproto.errors import map_exceptions

from . import __version__
from .trust import TrustPolicy, check_alpn, check_peer, client_ssl_context, translate_ssl_errors
from .url import FluxURL

TRANSPORTS = ("tcp",)


@dataclass(frozen=True)
class ClientOptions:
    """Options every fluxctl command shares (flags and FLUX_* environment variables)."""

    #: Who to trust; None means the default (trust on first use, known_hosts in the config dir).
    trust: TrustPolicy | None = None
    transport: str = "tcp"
    chunk_size: int | None = None
    retry_for: float = 300.0
    insecure_plaintext: bool = False
    window: int = DEFAULT_WINDOW
    connect_timeout: float = 10.0
    #: Seconds without any frame from the server before the link is considered dead.
    io_timeout: float = 60.0
    on_new_host: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"unknown transport {self.transport!r}: choose {', '.join(TRANSPORTS)}"
            )
        if self.retry_for < 0:
            raise ConfigError("--retry-for must be >= 0")

    @property
    def policy(self) -> TrustPolicy:
        return self.trust if self.trust is not None else TrustPolicy.from_options(None, None)


async def connect(url: FluxURL, opts: ClientOptions) -> SocketChannel:
    """Connect, verify the server per the trust policy, and complete the flux handshake.

    Raises:
        ConnectError: cannot reach the server (retryable).
        TrustError: the server's certificate is not trusted.
        ConfigError: plaintext to a non-loopback host, bad pin or CA file.
    """
    ctx = _ssl_context(url, opts)
    # ssl.SSLError is an OSError: the ssl translation must be the inner manager.
    with (
        map_exceptions({OSError: ConnectError, TimeoutError: ConnectError}),
        translate_ssl_errors(),
    ):
        sock = await open_connection(
            url.host, url.port, ctx, url.host if ctx else None, opts.connect_timeout
        )
    ch = SocketChannel(sock, Connection(Role.CLIENT, alloc=POOL.get))
    try:
        if isinstance(sock, ssl.SSLSocket):
            check_alpn(sock.selected_alpn_protocol())
            check_peer(opts.policy, url.host, url.port, sock.getpeercert(True), opts.on_new_host)
        ch.send(Hello(window=opts.window, agent=f"fluxctl/{__version__}", caps=("xxh3-128",)))
        await expect(ch, Welcome, opts.io_timeout)
    except BaseException:
        ch.abort()
        raise
    return ch


def _ssl_context(url: FluxURL, opts: ClientOptions) -> ssl.SSLContext | None:
    if opts.insecure_plaintext:
        if not is_loopback(url.host):
            raise ConfigError(f"--insecure-plaintext is refused for non-loopback host {url.host}")
        return None
    return client_ssl_context(opts.policy)
