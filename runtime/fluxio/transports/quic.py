"""QUIC transport (aioquic): one flux conversation per QUIC connection, chunks spread on streams.

Which frame travels on which stream (a stream per request, chunk streams for large transfers)
is fluxproto.streams' business (sans-IO); a client's path
upkeep (keepalive, rebinding) is quic_migration's; every aioquic internal goes through
aioquic_shim. This module moves bytes between them, maps how a connection ended
(errors.quic_close_error), and serves or opens connections.

aioquic buffers without limit in both directions; memory is bounded by the protocol's window
(at most `window` bytes of chunks unacknowledged), which a peer cannot exceed without a
protocol error.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeGuard, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.serialization import Encoding

from fluxproto import (
    ALPN_ACCEPT,
    ALPN_OFFER,
    DEFAULT_WINDOW,
    MAX_HEADER,
    ConnectError,
    Connection,
    FluxError,
    Frame,
    RemoteProtocolError,
    RequestEnded,
    Role,
    TransportTimeout,
)
from fluxproto.errors import map_exceptions
from fluxproto.streams import StreamMap, is_chunk_stream

from ..buffers import POOL
from ..parsing import format_hostport
from . import DEFAULT_DATAGRAM_SIZE, aioquic_shim, quic_cc
from .channel import ChannelBase
from .errors import (
    OnFailed,
    foreign_error,
    ignore_failure,
    listen_error,
    no_quic_answer,
    quic_close_error,
)
from .quic_io import PreciseClock, UdpEndpoint, bound_udp_socket, udp_socket
from .quic_migration import ClientPath

#: Connection and stream flow-control credit; the protocol window is the real bound.
FLOW_CREDIT = 64 * 1024 * 1024
IDLE_TIMEOUT = 8.0  # a path silent this long is dead: the client reconnects and resumes
CLOSE_FLUSH = 2.0  # seconds close() waits for the control stream to be acknowledged


def configuration(
    *,
    is_client: bool,
    datagram_size: int = DEFAULT_DATAGRAM_SIZE,
    idle_timeout: float = IDLE_TIMEOUT,
) -> QuicConfiguration:
    """The QUIC settings both ends use; TLS 1.3 and ALPN as over TCP (a client offers flux/2
    then flux/1, a server accepts both and prefers flux/2)."""
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(ALPN_OFFER if is_client else ALPN_ACCEPT),
        max_datagram_size=datagram_size,
        idle_timeout=idle_timeout,
        max_data=FLOW_CREDIT,
        max_stream_data=FLOW_CREDIT,
        congestion_control_algorithm=quic_cc.NAME,
    )


class QuicChannel(ChannelBase, QuicConnectionProtocol):
    """A channel (see ChannelBase) that is also the aioquic protocol of its connection."""

    transport = "quic"
    copies_on_send = True  # aioquic copies stream data into its own buffer

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        on_ready: Callable[[QuicChannel], None] | None = None,
        max_header: int = MAX_HEADER,
        alloc: Callable[[int], memoryview] = POOL.get,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        """`window` is this end's receive window (what its HELLO or WELCOME announces)."""
        QuicConnectionProtocol.__init__(self, quic, stream_handler)
        #: The event loop, with a finer clock (shared with aioquic, see PreciseClock).
        self.loop = aioquic_shim.install_clock(self, PreciseClock)
        aioquic_shim.install_pacer(quic)
        is_client = quic.configuration.is_client
        role = Role.CLIENT if is_client else Role.SERVER
        conn = Connection(role, alloc=alloc, max_header=max_header, window=window)
        ChannelBase.__init__(self, conn, "?", self.loop.time())
        self._streams = StreamMap(
            conn,
            open_stream=self._open_stream,
            write=self._quic.send_stream_data,  # type: ignore[arg-type]
            alloc=alloc,
            on_freed=self._freed,
        )
        self._peer_addr: NetworkAddress | None = None
        #: Called each time the peer moved to another address (a daemon counts migrations).
        self.on_migrated: Callable[[], None] = _nothing
        #: A client's own socket and its upkeep (None on the server: all its connections share
        #: one socket).
        self._path: ClientPath | None = None
        #: fluxd's own endpoint (a client's, or the daemon's shared one), which sends each
        #: transmit's datagrams as one burst.
        self._udp: UdpEndpoint | None = None
        self._on_ready = on_ready
        self._flush_handle: asyncio.Handle | None = None
        #: While _flush handles a round of events: chunk-stream data not handed over yet.
        self._gathered: dict[int, list[bytes]] | None = None
        #: The peer's CONNECTION_CLOSE arrived (aioquic tells only after its draining period).
        self._close_received = False
        # Ours, not aioquic's wait_connected(): that one misses a handshake completed before it
        # is awaited, which uvloop makes likely on a fast link.
        self.handshake: asyncio.Future[None] = self.loop.create_future()
        self.handshake.add_done_callback(_retrieve)  # a failure nobody awaits is not an error
        #: Set by the handshake: the ALPN protocol, TLS session resumed from a ticket, 0-RTT
        #: data accepted.
        self.alpn: str | None = None
        self.session_resumed = False
        self.early_data_accepted = False

    # --- how bytes leave ----------------------------------------------------------------------

    def send(self, frame: Frame) -> RequestEnded | None:
        """Queue a frame on its stream (see fluxproto.streams); the request it ended, if any.
        Raises ConnectionLost if the connection is closing or gone."""
        self._check_open()
        ended = self._streams.send(frame)
        self._schedule_transmit()
        return ended

    @property
    def requests_in_use(self) -> int:
        """Open requests, and at a client those whose stream the server has not finished
        (a download ends at the client before the server knows, PROTOCOL.md 15.32)."""
        return self._streams.requests_in_use

    async def drain(self, timeout: float | None = None) -> None:
        """Returns at once: aioquic takes everything, and the protocol window bounds what it
        holds (module docstring). Raises why if the connection is gone."""
        self._check_alive()

    def close(self, error_code: int = QuicErrorCode.NO_ERROR, reason_phrase: str = "") -> None:
        """Close once the control stream's data is acknowledged (at most CLOSE_FLUSH seconds).

        aioquic drops unsent stream data when a connection closes: without the wait, an ERROR
        or GOODBYE sent just before closing would never reach the peer.
        """
        if self._closing or self._lost:
            return
        self._closing = True
        self._close_when_flushed(self.loop.time() + CLOSE_FLUSH, error_code, reason_phrase)

    def _close_when_flushed(self, deadline: float, error_code: int, reason: str) -> None:
        control = self._streams.control
        pending = control is not None and aioquic_shim.has_unacked_data(self._quic, control)
        if pending and not self._lost and self.loop.time() < deadline:
            self.loop.call_later(0.005, self._close_when_flushed, deadline, error_code, reason)
            return
        QuicConnectionProtocol.close(self, error_code, reason)  # CONNECTION_CLOSE leaves now
        if self._quic.configuration.is_client:
            self._connection_gone()  # a client has no use for aioquic's draining period

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        if not (self._closing or self._lost):
            self._closing = True
            QuicConnectionProtocol.close(self)
        self._connection_gone()

    def silence(self) -> float:
        """See ChannelBase.silence: the time since the last datagram came. A live client path
        is never silent long, data or not: its PINGs are answered (quic_migration)."""
        return max(0.0, self.loop.time() - self.last_receive)

    def describe(self) -> dict[str, Any]:
        """Transport details for the daemon's request log."""
        return {
            **super().describe(),
            "resumed": self.session_resumed,
            "early_data": self.early_data_accepted,
        }

    # --- aioquic ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A download's data leaves the daemon as a client's upload leaves the client: in
        # bursts of full datagrams to one address, which GSO sends with one call each.
        self._udp = transport if isinstance(transport, UdpEndpoint) else None

    def transmit(self) -> None:
        if self._udp is None:
            super().transmit()
        else:
            self._udp.send_burst(super().transmit)

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        self.last_receive = now = self.loop.time()
        self._quic.receive_datagram(cast(bytes, data), addr, now=now)
        if addr != self._peer_addr:
            self._follow(addr)
        # aioquic handles the events and transmits after every datagram; fluxd does both once
        # per loop iteration (_flush), for every datagram the endpoint read (GRO trains, up to
        # READ_BUDGET bytes per wake-up).
        self._schedule_transmit()

    def _follow(self, addr: NetworkAddress) -> None:
        # A datagram from another address moves the peer only once aioquic sends there: it
        # promotes a path for a packet that is not a probe and newer than any before, so a
        # late packet from the old address or a forged one moves nothing.
        if self._peer_addr is not None:
            if self._quic.get_peer_address() != addr:
                return
            self.on_migrated()
        self._peer_addr, self.peer = addr, _address(addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        gathered = self._gathered
        if gathered is not None:
            # Handed over at the end of the round (_handle_events), or before any other event,
            # which keeps the order of everything but the chunk streams among themselves.
            if _gatherable(event):
                gathered.setdefault(event.stream_id, []).append(event.data)
                return
            self._hand_over(gathered)
        if isinstance(event, StreamDataReceived):
            self._stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
            self.session_resumed = event.session_resumed
            self.early_data_accepted = event.early_data_accepted
            if not self.handshake.done():
                self.handshake.set_result(None)
            if self._path is not None:
                self._path.watch(
                    lambda: self.last_receive, lambda: not (self._closing or self._lost)
                )
            if self._on_ready is not None:
                self._on_ready(self)
        elif isinstance(event, ConnectionTerminated):
            self._terminated(event)
        elif isinstance(event, StreamReset):
            self._protocol_error(f"stream {event.stream_id} was reset")

    # --- internals ----------------------------------------------------------------------------

    def _terminated(self, event: ConnectionTerminated) -> None:
        connecting = not self.handshake.done()
        failure = self._termination_error(event, connecting)
        if connecting:
            self.handshake.set_exception(
                failure or ConnectError(f"{self.peer} closed the QUIC connection in its handshake")
            )
        self._connection_gone(failure, by_peer=self._close_received)

    def _termination_error(self, event: ConnectionTerminated, connecting: bool) -> FluxError | None:
        """Why the connection ended, as a flux error; None for a clean close."""
        if not self._close_received:  # the peer did not close it: its code says how if it did
            if self._closing:
                return None  # we did
            if aioquic_shim.is_idle_timeout(event):
                silent = self._quic.configuration.idle_timeout
                if connecting:
                    return no_quic_answer(self.peer, silent)
                return TransportTimeout(f"no QUIC packets from {self.peer} for {silent:g} s")
        return quic_close_error(
            event.error_code,
            transport_close=event.frame_type is not None,  # None: an application's close
            reason=event.reason_phrase,
            peer=self.peer,
            by_peer=self._close_received,
            connecting=connecting,
        )

    def _open_stream(self, unidirectional: bool) -> int:
        return self._quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def _handle_events(self) -> None:
        # aioquic reports a STREAM frame at a time: a chunk's 4 MiB as ~2,900 events. Each
        # chunk stream's data of the round goes to the stream map in one piece instead.
        gathered: dict[int, list[bytes]] = {}
        self._gathered = gathered
        try:
            aioquic_shim.process_events(self)
        finally:
            self._gathered = None
            self._hand_over(gathered)

    def _hand_over(self, gathered: dict[int, list[bytes]]) -> None:
        for stream_id, parts in gathered.items():
            self._stream_data(stream_id, parts[0] if len(parts) == 1 else b"".join(parts), False)
        gathered.clear()

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._received(len(data))
        try:
            self._streams.receive(stream_id, data, end_stream)
        except FluxError as exc:
            self._take_events()  # what the frames before the bad one produced comes first
            self._inbox.set_error(exc)
            return
        self._pump()

    def _protocol_error(self, why: str) -> None:
        self._inbox.set_error(RemoteProtocolError(why))

    def _connection_gone(self, failure: FluxError | None = None, *, by_peer: bool = False) -> None:
        if self._end(failure, by_peer=by_peer) and self._path is not None:
            self._path.close()  # a server's socket is shared: it stays

    def _schedule_transmit(self) -> None:
        # Datagrams received and frames sent in one loop iteration: one round of event
        # handling, then one burst of datagrams.
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._close_received and aioquic_shim.closed_by_peer(self._quic):
            self._close_received = True
        self._handle_events()
        self.transmit()

    # --- a client's path ------------------------------------------------------------------------

    def error_received(self, exc: Exception) -> None:
        """The socket reported an error. Refused during the handshake: nothing listens there,
        the attempt is over. Refused later: ignored, as QUIC ignores unauthenticated signals
        (the idle timeout ends a dead connection). Anything else: the client moves (see
        ClientPath). A server's socket is shared by all its connections: ignored."""
        if self._path is not None and self._path.socket_error(exc) and not self.handshake.done():
            self.handshake.set_exception(foreign_error(exc, self.peer, connecting=True))

    async def rebind(self) -> None:
        """Move this client's connection to a new local UDP socket (see ClientPath.rebind)."""
        assert self._path is not None, "only a client has a path of its own"
        await self._path.rebind()


def _gatherable(event: QuicEvent) -> TypeGuard[StreamDataReceived]:
    return (
        isinstance(event, StreamDataReceived)
        and is_chunk_stream(event.stream_id)
        and not event.end_stream
    )


def _abort_unless_ready(channel: QuicChannel, timeout: float) -> None:
    if not channel.handshake.done():
        late = ConnectError(f"no QUIC handshake from {channel.peer} within {timeout:g} s")
        channel.handshake.set_exception(late)
        channel.abort()


def _nothing() -> None:
    pass


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def peer_certificate_der(channel: QuicChannel) -> bytes | None:
    """The server certificate from the handshake (None when the session was resumed)."""
    cert = aioquic_shim.peer_certificate(channel._quic)
    return cert.public_bytes(Encoding.DER) if cert is not None else None


def _address(addr: NetworkAddress) -> str:
    host, port = str(addr[0]), int(addr[1])
    host = host.removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_connection(
    host: str,
    port: int,
    config: QuicConfiguration,
    timeout: float,
    session_ticket_handler: Callable[[Any], None] | None = None,
    early: Callable[[QuicChannel], Frame] | None = None,
    window: int = DEFAULT_WINDOW,
) -> QuicChannel:
    """Connect over QUIC and finish the handshake.

    Raises:
        ConnectionRefused: nothing listens there (the server's ICMP said so).
        ConnectError: no answer within `timeout` seconds, or the handshake failed.
        TrustError: the server's certificate failed `config`'s verification.
        RemoteProtocolError: the server does not speak flux over QUIC.
    """
    loop = asyncio.get_running_loop()
    where = format_hostport(host, port)
    with map_exceptions({OSError: lambda e: foreign_error(e, where, connecting=True)}):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, addr = infos[0][0], cast(NetworkAddress, infos[0][4])
        try:
            sock = udp_socket(socket.AF_INET6)
            if family == socket.AF_INET:
                addr = (f"::ffff:{addr[0]}", int(addr[1]), 0, 0)
        except OSError:  # no IPv6 in this kernel: a plain IPv4 socket
            sock = udp_socket(socket.AF_INET)
        config.server_name = config.server_name or host
        quic = QuicConnection(configuration=config, session_ticket_handler=session_ticket_handler)

        try:
            channel = QuicChannel(quic, window=window)
            channel._path = ClientPath(channel, quic, sock, channel.loop)
            channel._path.open()
        except BaseException:
            sock.close()
            raise
    channel.peer = _address(infos[0][4])
    channel.connect(addr)
    if early is not None:
        channel.send(early(channel))  # 0-RTT data when config.session_ticket allows it
    try:
        # Shielded: the future is the channel's own, and a timeout must not cancel it.
        async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancellation
            await asyncio.shield(channel.handshake)  # raises the flux error it failed with
    except TimeoutError:
        channel.abort()
        raise no_quic_answer(channel.peer, timeout) from None
    except BaseException:
        channel.abort()
        raise
    if channel.alpn not in ALPN_OFFER:
        channel.abort()
        raise RemoteProtocolError(f"server does not speak {' or '.join(ALPN_OFFER)} over QUIC")
    return channel


class QuicListener:
    """Serves QUIC on one UDP address and hands each new connection's channel to `on_channel`;
    `on_failed(peer, error)` hears of each handshake that failed."""

    def __init__(
        self,
        paths: Any,
        on_channel: Callable[[QuicChannel], None],
        datagram_size: int,
        handshake_timeout: float,
        max_header: int = MAX_HEADER,
        alloc: Callable[[int], memoryview] = POOL.get,
        on_failed: OnFailed = ignore_failure,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        """A connection whose QUIC handshake has not completed `handshake_timeout` seconds
        after its first packet is closed. `window` is what each connection's WELCOME
        announces."""
        self._config = configuration(is_client=False, datagram_size=datagram_size)
        self._max_header, self._alloc, self._window = max_header, alloc, window
        self._handshake_timeout = handshake_timeout
        self._config.load_cert_chain(paths.server_cert, paths.server_key)
        self._on_channel, self._on_failed = on_channel, on_failed
        self._server: QuicServer | None = None
        #: Connections whose client moved to another address (NAT rebinding, a new network),
        #: since the listener started.
        self.migrations = 0
        self._tickets: dict[bytes, Any] = {}

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Bind host:port over UDP; returns the bound (host, port).

        Raises:
            ConnectError: the address cannot be resolved or bound.
        """
        with map_exceptions({OSError: functools.partial(listen_error, host, port)}):
            sock = await bound_udp_socket(host, port)
        self._server = aioquic_shim.quic_server(
            configuration=self._config,
            create_protocol=self._channel,
            # Single use: a replayed 0-RTT ticket finds nothing and gets a full handshake.
            session_ticket_fetcher=lambda ticket: self._tickets.pop(ticket, None),
            session_ticket_handler=self._store_ticket,
        )
        UdpEndpoint(sock, _Router(self._server))  # the server's transport; it closes it
        return [sock.getsockname()[:2]]

    def _channel(self, quic: QuicConnection, stream_handler: Any = None) -> QuicChannel:
        channel = QuicChannel(
            quic,
            stream_handler,
            on_ready=self._on_channel,
            max_header=self._max_header,
            alloc=self._alloc,
            window=self._window,
        )
        channel.on_migrated = self._migrated
        # aioquic restarts its idle timer on every packet: a peer sending PINGs, or its flight
        # a packet at a time, would keep an unfinished handshake alive without a deadline.
        expire = asyncio.get_running_loop().call_later(
            self._handshake_timeout, _abort_unless_ready, channel, self._handshake_timeout
        )
        channel.handshake.add_done_callback(
            functools.partial(self._handshake_done, channel, expire)
        )
        return channel

    def _handshake_done(
        self, channel: QuicChannel, expire: asyncio.TimerHandle, done: asyncio.Future[None]
    ) -> None:
        expire.cancel()
        failure = None if done.cancelled() else done.exception()
        if isinstance(failure, FluxError):
            self._on_failed(channel.peer, failure)

    def _migrated(self) -> None:
        self.migrations += 1

    def _store_ticket(self, ticket: Any) -> None:
        # Tickets live as long as the daemon: a restart costs clients one full handshake.
        self._tickets[ticket.ticket] = ticket

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class _Router(asyncio.DatagramProtocol):
    """The daemon's endpoint protocol: aioquic's server, short-cut for most datagrams.

    The server parses every datagram's header to find its connection, which parses it again;
    a datagram with a short header (all of them once connected) for a known connection goes
    straight to it. Profiled on an upload (py-spy), the server's own parse and lookup took
    ~6 % of the daemon's samples.
    """

    def __init__(self, server: QuicServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server.connection_made(transport)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        channel = aioquic_shim.connection_of(self._server, data)
        if channel is None:
            self._server.datagram_received(data, addr)
        else:
            channel.datagram_received(data, addr)


def ssl_verify_mode(cafile: str | None) -> int:
    """CERT_REQUIRED with a CA; otherwise the pin/TOFU check runs after the handshake."""
    return ssl.CERT_REQUIRED if cafile else ssl.CERT_NONE


__all__ = [
    "QuicChannel",
    "QuicListener",
    "configuration",
    "open_connection",
    "peer_certificate_der",
    "ssl_verify_mode",
]
