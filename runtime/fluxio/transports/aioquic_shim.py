"""Every use fluxd makes of aioquic's internals, each with what it relies on.

aioquic documents QuicConnection's methods, its events, and QuicConnectionProtocol's public
methods plus the subclassing its own examples do (`_quic`, `transmit()`,
`quic_event_received`). Everything below is undocumented and may change in any release, so
pyproject.toml pins aioquic to TESTED, and tests/runtime/test_aioquic_shim.py checks each
access against the installed version. (quic_cc.py builds on aioquic.quic.congestion.base,
which aioquic registers controllers through but does not call stable.)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.recovery import QuicPacketPacer
from cryptography.x509 import Certificate

#: The aioquic versions this was tested with, [first, last): keep pyproject.toml in step.
TESTED = ((1, 7), (1, 8))

#: The pacer lets go at once at least MIN_BURST_TIME of sending or MIN_BURST_BYTES, whichever is
#: less (see TimerAwarePacer).
MIN_BURST_TIME = 0.002  # twice an event loop's timer tick
MIN_BURST_BYTES = 128 * 1024  # below a default UDP receive buffer (~208 KiB)

L = TypeVar("L")


class TimerAwarePacer(QuicPacketPacer):
    """aioquic's pacer, with bursts of at least MIN_BURST_TIME or MIN_BURST_BYTES, the lesser.

    aioquic caps a burst at 16 packets and then asks to be woken after that many packets' worth
    of time: microseconds at a large window and a small RTT, while an event loop's timers fire
    per millisecond, so 16 small packets per millisecond (~23 MB/s) was the ceiling. A sender
    with an 8.9 MB window had 17-40 KiB in flight and moved 256 MiB in 20 s instead of 5.5 s
    (measured, 1 run in 3). A floor in time alone let fast paths burst megabytes: at 16000-byte
    datagrams 2 ms overflowed the receiver's default UDP buffer and halved throughput
    (measured); a floor in bytes alone would burst 128 KiB into slow paths, which aioquic paces
    finely. Paths whose bursts already last MIN_BURST_TIME are paced exactly as aioquic does.
    """

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        # QuicPacketPacer.update_rate sets `bucket_max`, the seconds of sending it lets go at
        # once; next_send_time and update_after_send read it.
        super().update_rate(congestion_window, smoothed_rtt)
        pacing_rate = congestion_window / max(smoothed_rtt, 1e-6)
        floor = min(MIN_BURST_TIME, MIN_BURST_BYTES / pacing_rate)
        self.bucket_max = max(self.bucket_max, floor)


def install_pacer(quic: QuicConnection) -> None:
    """Pace `quic` with TimerAwarePacer."""
    # The connection's loss recovery (`_loss`) keeps its pacer in `_pacer`; the connection's
    # datagram size is `_max_datagram_size`.
    quic._loss._pacer = TimerAwarePacer(max_datagram_size=quic._max_datagram_size)


def install_clock(
    protocol: QuicConnectionProtocol, wrap: Callable[[asyncio.AbstractEventLoop], L]
) -> L:
    """Make `protocol` use `wrap(its loop)` as its loop, and return that."""
    # QuicConnectionProtocol keeps the loop in `_loop`: it stamps each datagram it sends with
    # `_loop.time()` and arms its timer with `_loop.call_at`.
    clock = wrap(protocol._loop)
    protocol._loop = clock  # type: ignore[assignment]
    return clock


def process_events(protocol: QuicConnectionProtocol) -> None:
    """Deliver the connection's pending events to `protocol.quic_event_received`."""
    # The protocol's own datagram_received feeds the datagram and then calls
    # `_process_events()`; ours feeds it with its own clock and transmits later.
    protocol._process_events()


def has_unacked_data(quic: QuicConnection, stream_id: int) -> bool:
    """True while `stream_id` holds data the peer has not acknowledged yet."""
    # QuicConnection keeps its streams in `_streams`; a stream's `sender.buffer_is_empty`
    # becomes True once everything written was acknowledged.
    stream = quic._streams.get(stream_id)
    return stream is not None and not stream.sender.buffer_is_empty


def peer_certificate(quic: QuicConnection) -> Certificate | None:
    """The certificate the peer presented (None after a resumed handshake)."""
    # The TLS context (`tls`) keeps it in `_peer_certificate` once it verified the handshake.
    tls = getattr(quic, "tls", None)
    return getattr(tls, "_peer_certificate", None)


def closed_by_peer(quic: QuicConnection) -> bool:
    """True once the peer's CONNECTION_CLOSE arrived (aioquic reports the end only after the
    draining period, and not who closed)."""
    # A CONNECTION_CLOSE received moves `_state` to DRAINING; our own close to CLOSING.
    return quic._state is QuicConnectionState.DRAINING


def is_idle_timeout(event: ConnectionTerminated) -> bool:
    """True if aioquic ended the connection because the path was silent for idle_timeout."""
    # handle_timer ends an idle connection with this reason phrase (and INTERNAL_ERROR).
    return event.reason_phrase == "Idle timeout"


def quic_server(**settings: Any) -> QuicServer:
    """aioquic's server protocol, made as `serve(host, port, **settings)` makes it, for a
    datagram transport of the caller's own (`serve` binds one of the loop's)."""
    # serve() is create_datagram_endpoint(lambda: QuicServer(**settings), local_addr=...):
    # QuicServer takes the same keywords, reads the running loop, and sends through the
    # transport connection_made gives it.
    return QuicServer(**settings)


def connection_of(server: QuicServer, datagram: bytes) -> QuicConnectionProtocol | None:
    """The connection a short-header datagram is for, found as the server's own
    `datagram_received` finds it; None for any other datagram (a long header, an unknown or
    cut-off connection ID), which only the server may handle."""
    # A short header is a first byte with the high bit clear, then the destination connection
    # ID, `connection_id_length` bytes of the server's `_configuration` (RFC 9000 17.3);
    # QuicServer keeps its connections by every ID it issued in `_protocols`.
    if not datagram or datagram[0] & 0x80:
        return None
    cid = datagram[1 : 1 + server._configuration.connection_id_length]
    return server._protocols.get(cid)


def server_socket(server: QuicServer) -> socket.socket:
    """The UDP socket a QuicServer listens on."""
    # QuicServer keeps its datagram transport in `_transport` (set once it is serving).
    transport = server._transport
    assert transport is not None, "the server is not serving"
    sock: socket.socket = transport.get_extra_info("socket")
    return sock
