"""Opening a flux connection over TCP+TLS or QUIC: trust policy, ALPN, then HELLO/WELCOME.

`auto` (the default) for one connection (ls, stat, rm, `recv -`, a tree's listing) connects
over TCP first, the cheaper transport per byte and the one that passes everywhere: QUIC is
tried too when TCP is not up within HEAD_START or fails (happy eyeballs the other way round),
and the first to connect wins. The first lane of a transfer over lanes (lanes.py) follows the
same rule. `--transport tcp|quic` means exactly that one transport.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fluxio.buffers import POOL
from fluxio.parsing import is_loopback
from fluxio.ratelimit import Pace
from fluxio.requests import Channel, expect
from fluxio.transports import DEFAULT_DATAGRAM_SIZE, tcp
from fluxproto import (
    DEFAULT_WINDOW,
    ConfigError,
    ConnectError,
    Connection,
    ConnectionRefused,
    FluxError,
    Hello,
    Role,
    VersionMismatch,
    Welcome,
)

from . import __version__
from .trust import (
    TrustPolicy,
    check_alpn,
    check_peer,
    client_ssl_context,
    explain_untrusted,
    host_key,
)
from .url import FluxURL

if TYPE_CHECKING:
    from aioquic.tls import SessionTicket

    from .tickets import TicketStore

TRANSPORTS = ("auto", "quic", "tcp")
#: Most TCP lanes a transfer may open (`--lanes`).
MAX_LANES = 16
#: How long TCP may take to come up before QUIC is tried too: TCP+TLS and flux's handshake
#: take three round trips (240 ms at 80 ms).
HEAD_START = 1.0
#: How much longer QUIC may try once TCP failed (a QUIC-only server answers well within this).
QUIC_LAST_CHANCE = 1.0


@dataclass(frozen=True)
class ClientOptions:
    """Options every fluxctl command shares (flags and FLUX_* environment variables)."""

    #: Who to trust; None means the default (trust on first use, known_hosts in the config dir).
    trust: TrustPolicy | None = None
    transport: str = "auto"
    chunk_size: int | None = None
    retry_for: float = 300.0
    insecure_plaintext: bool = False
    window: int = DEFAULT_WINDOW
    connect_timeout: float = 10.0
    #: Seconds without any frame from the server before the link is considered dead.
    io_timeout: float = 60.0
    quic_datagram_size: int = DEFAULT_DATAGRAM_SIZE
    on_new_host: Callable[[str], None] | None = None
    #: Bearer token sent in HELLO (see tokens.resolve_token), or None for anonymous access.
    token: str | None = None
    #: TCP lanes a transfer runs over (`--lanes`; see lanes.py), beside QUIC's with `auto`.
    lanes: int = 1
    #: The nodes the server's name leads to, (host, port) each, from the config file
    #: (nodes.configured_nodes); empty: the addresses the name resolves to.
    nodes: tuple[tuple[str, int], ...] = ()
    #: `--bwlimit`: one bucket's `charge` (fluxio.ratelimit) for every lane and every file of
    #: the command, so their payload together keeps to the rate; None: no limit.
    pace: Pace | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"unknown transport {self.transport!r}: choose {', '.join(TRANSPORTS)}"
            )
        if not 0 <= self.retry_for < math.inf:  # also refuses nan
            raise ConfigError("--retry-for must be a number of seconds >= 0")
        if not 0 < self.io_timeout < math.inf:
            raise ConfigError("--io-timeout must be a number of seconds > 0")
        if self.insecure_plaintext and self.transport == "quic":
            raise ConfigError("QUIC always uses TLS: --insecure-plaintext needs --transport tcp")
        if not 1200 <= self.quic_datagram_size <= 16000:
            raise ConfigError("the QUIC datagram size must be between 1200 and 16000 bytes")
        if not 1 <= self.lanes <= MAX_LANES:
            raise ConfigError(f"--lanes must be between 1 and {MAX_LANES}")
        if self.lanes > 1 and self.transport == "quic":
            raise ConfigError("--lanes adds TCP lanes: it needs --transport auto or tcp")

    @staticmethod
    def datagram_size_from_env() -> int:
        """FLUX_QUIC_DATAGRAM_SIZE: larger QUIC datagrams for paths known to carry them."""
        text = os.environ.get("FLUX_QUIC_DATAGRAM_SIZE", "")
        if not text:
            return DEFAULT_DATAGRAM_SIZE
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"FLUX_QUIC_DATAGRAM_SIZE is not a number: {text!r}") from None

    @property
    def policy(self) -> TrustPolicy:
        return self.trust if self.trust is not None else TrustPolicy.from_options(None, None)


async def connect(url: FluxURL, opts: ClientOptions) -> Channel:
    """Connect, verify the server per the trust policy, and complete the flux handshake
    (protocol version 2).

    Raises:
        ConnectError: cannot reach the server (retryable).
        TrustError: the server's certificate is not trusted.
        ConfigError: plaintext to a non-loopback host, bad pin or CA file.
        VersionMismatch: the server speaks another protocol version; the message says
            which program to upgrade.
    """
    if opts.transport == "tcp" or opts.insecure_plaintext:
        return await connect_tcp(url, opts)
    if opts.transport == "quic":
        return await connect_quic(url, opts)
    return await _race(url, opts)


async def _race(url: FluxURL, opts: ClientOptions) -> Channel:
    """TCP first; QUIC too once TCP is not up within HEAD_START or failed; the first to
    connect wins (see the module docstring)."""
    loop = asyncio.get_running_loop()
    tcp_attempt = asyncio.ensure_future(connect_tcp(url, opts))
    attempts = {tcp_attempt}
    everyone = set(attempts)
    errors: dict[str, FluxError] = {}
    deadline: float | None = None  # set once TCP failed: QUIC then gets a last short chance
    head_start: float | None = loop.time() + HEAD_START  # None once QUIC is tried
    winner: Channel | None = None
    try:
        while attempts:
            wake = head_start if head_start is not None else deadline
            left = None if wake is None else max(0.0, wake - loop.time())
            done, attempts = await asyncio.wait(
                attempts, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                exc = task.exception()
                if exc is None:
                    winner = task.result()
                    return winner
                if not isinstance(exc, FluxError) or not exc.retryable:
                    raise exc  # a trust or usage failure would fail the other way too
                errors["TCP" if task is tcp_attempt else "QUIC"] = exc
            if "TCP" in errors and deadline is None:
                deadline = loop.time() + QUIC_LAST_CHANCE
            if head_start is not None and ("TCP" in errors or loop.time() >= head_start):
                head_start = None  # TCP is slow or failed: QUIC may get through
                quic_attempt = asyncio.ensure_future(connect_quic(url, opts))
                attempts.add(quic_attempt)
                everyone.add(quic_attempt)
            elif not done and deadline is not None and loop.time() >= deadline:
                break  # QUIC is silent and TCP failed: nothing is answering
    finally:
        await _settle(attempts, everyone, winner)
    errors.setdefault("QUIC", ConnectError("no answer"))
    raise unreachable(url, errors)


def unreachable(url: FluxURL, errors: dict[str, FluxError]) -> FluxError:
    """The error for a server no transport reached, from each transport's (or lane's) first
    failure by name ("tcp", "quic", ...): a TCP refusal is the answer when nothing else
    answered (nothing listens at this address); otherwise every reason, in one line."""
    named = {name.upper(): exc for name, exc in errors.items()}
    for name, exc in sorted(named.items()):
        if name.startswith("TCP") and isinstance(exc, ConnectionRefused):
            return exc
    reasons = "; ".join(f"{name}: {exc}" for name, exc in sorted(named.items()))
    return ConnectError(f"cannot reach {url.where} ({reasons})")


async def _settle(
    pending: set[asyncio.Task[Channel]],
    everyone: set[asyncio.Task[Channel]],
    winner: Channel | None,
) -> None:
    """End a race: cancel what still runs, and close every channel but the winner's (both may
    have connected in the same loop turn). Every outcome is collected, so an interrupted race
    leaves no unretrieved failure behind."""
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in everyone:
        done = task.done() and not task.cancelled() and task.exception() is None
        if done and task.result() is not winner:
            task.result().abort()


async def connect_tcp(url: FluxURL, opts: ClientOptions) -> Channel:
    ctx = _ssl_context(url, opts)
    host, port = url.dial  # a node of several: its certificate names url.host all the same
    with explain_untrusted():
        sock = await tcp.open_connection(
            host, port, ctx, url.host if ctx else None, opts.connect_timeout
        )
    ch = tcp.SocketChannel(sock, Connection(Role.CLIENT, alloc=POOL.get, window=opts.window))
    try:
        if isinstance(sock, ssl.SSLSocket):
            check_alpn(sock.selected_alpn_protocol())
            check_peer(opts.policy, url.host, url.port, sock.getpeercert(True), opts.on_new_host)
        ch.send(_make_hello(ch, opts))
        await _welcome(ch, url, opts)
    except BaseException:
        ch.abort()
        raise
    return ch


async def connect_quic(url: FluxURL, opts: ClientOptions) -> Channel:
    # Imported here: aioquic costs ~0.1 s of start-up that a TCP-only command does not need.
    from fluxio.transports import quic  # noqa: PLC0415

    from .tickets import TicketStore  # noqa: PLC0415

    policy = opts.policy
    config = quic.configuration(is_client=True, datagram_size=opts.quic_datagram_size)
    if policy.ca is not None:
        config.load_verify_locations(cafile=str(policy.ca))
    config.verify_mode = quic.ssl_verify_mode(str(policy.ca) if policy.ca else None)
    config.server_name = url.host  # the name the certificate must carry, whichever node
    # A ticket is one node's (another cannot resume its session): keyed by where it goes.
    key = host_key(*url.dial)
    store = TicketStore()
    # With --ca the chain is only verified in a full handshake: no resumption then.
    stored = store.load(key) if policy.ca is None else None
    if stored is not None:
        config.session_ticket = stored[0]
    tickets = _TicketKeeper(store, key, enabled=policy.ca is None)
    # With a ticket, HELLO (idempotent) rides in 0-RTT early data; every request waits for
    # WELCOME, which only comes once the handshake completed.
    early = config.session_ticket is not None
    with explain_untrusted():
        ch = await quic.open_connection(
            *url.dial,
            config,
            opts.connect_timeout,
            tickets.received,
            (lambda channel: _make_hello(channel, opts)) if early else None,
            window=opts.window,
        )
    try:
        # A resumed session shows no certificate: check the one the ticket was issued under.
        der = stored[1] if ch.session_resumed and stored else quic.peer_certificate_der(ch)
        check_peer(policy, url.host, url.port, der, opts.on_new_host)
        if der is not None:
            tickets.trusted(der)
        if not early:
            ch.send(_make_hello(ch, opts))
        await _welcome(ch, url, opts)
    except BaseException:
        ch.abort()
        raise
    return ch


class _TicketKeeper:
    """Holds tickets the server sends until the connection's certificate passed the check."""

    def __init__(self, store: TicketStore, key: str, *, enabled: bool) -> None:
        self._store, self._key, self._enabled = store, key, enabled
        self._pending: list[SessionTicket] = []
        self._certificate: bytes | None = None

    def received(self, ticket: SessionTicket) -> None:
        if self._certificate is not None:
            self._save(ticket)
        else:
            self._pending.append(ticket)

    def trusted(self, certificate: bytes) -> None:
        self._certificate = certificate
        for ticket in self._pending:
            self._save(ticket)
        self._pending.clear()

    def _save(self, ticket: SessionTicket) -> None:
        if self._enabled and self._certificate is not None:
            self._store.save(self._key, ticket, self._certificate)


def _make_hello(ch: Channel, opts: ClientOptions) -> Hello:
    """HELLO offering version 2 and announcing the windows the connection enforces."""
    return ch.conn.hello(agent=f"fluxctl/{__version__}", caps=("xxh3-128",), token=opts.token)


async def _welcome(ch: Channel, url: FluxURL, opts: ClientOptions) -> None:
    try:
        await expect(ch, Welcome, opts.io_timeout)
    except VersionMismatch as exc:
        # The server's own words cannot know the remedy; fluxproto says which side to upgrade.
        raise ch.conn.version_mismatch(url.where) or exc from None


def _ssl_context(url: FluxURL, opts: ClientOptions) -> ssl.SSLContext | None:
    if opts.insecure_plaintext:
        host = url.dial[0]
        if not is_loopback(host):
            raise ConfigError(f"--insecure-plaintext is refused for non-loopback host {host}")
        return None
    return client_ssl_context(opts.policy)


__all__ = [
    "MAX_LANES",
    "TRANSPORTS",
    "ClientOptions",
    "connect",
    "connect_quic",
    "connect_tcp",
    "unreachable",
]
