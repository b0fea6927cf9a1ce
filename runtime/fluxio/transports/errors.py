"""The transports' error boundary: OSError, ssl.SSLError and QUIC close codes as flux errors.

Each failure keeps its cause (`__cause__`) and says what happened to whom, e.g. "TLS alert from
10.0.0.2:5555: unknown ca" or "connection reset by peer 10.0.0.2:5555". While connecting (or
in a handshake) a broken link is a ConnectError, afterwards a ConnectionLost; a certificate
either end refused is a TrustError. No aioquic import here: QUIC arrives as plain numbers.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fluxproto import (
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    FluxError,
    RemoteProtocolError,
    TransportError,
    TransportTimeout,
    TrustError,
)
from fluxproto.errors import map_exceptions

from ..parsing import format_hostport

#: OpenSSL's reason when the peer closed TCP without TLS's close_notify: how every flux peer
#: closes, so an EOF. Sockets are wrapped with suppress_ragged_eofs=False because the ssl
#: module reports a reset the same way as this EOF otherwise.
RAGGED_EOF = "UNEXPECTED_EOF_WHILE_READING"
#: OpenSSL reasons for a peer that speaks plaintext or an older TLS.
_NOT_TLS13 = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "UNSUPPORTED_PROTOCOL",
        "HTTP_REQUEST",
        "TLSV1_ALERT_PROTOCOL_VERSION",
    }
)
_NOT_TLS13_HINT = " (the other end does not speak TLS 1.3)"
#: TLS alerts about certificates (RFC 8446 section 6.2): one end refused the other's.
CERTIFICATE_ALERTS = {
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    48: "unknown ca",
    116: "certificate required",
}
#: The other TLS alerts, for QUIC's CRYPTO_ERROR codes (0x100 + the alert).
ALERTS = CERTIFICATE_ALERTS | {
    10: "unexpected message",
    20: "bad record mac",
    40: "handshake failure",
    47: "illegal parameter",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    109: "missing extension",
    110: "unsupported extension",
    112: "unrecognized name",
    120: "no application protocol",
}
#: QUIC transport error codes (RFC 9000 section 20.1).
QUIC_ERRORS = {
    0x1: "internal error",
    0x2: "connection refused",
    0x3: "flow control error",
    0x4: "stream limit error",
    0x5: "stream state error",
    0x6: "final size error",
    0x7: "frame encoding error",
    0x8: "transport parameter error",
    0x9: "connection id limit error",
    0xA: "protocol violation",
    0xB: "invalid token",
    0xC: "application error",
    0xD: "crypto buffer exceeded",
    0xE: "key update error",
    0xF: "aead limit reached",
    0x10: "no viable path",
}
QUIC_CRYPTO_ERROR = 0x100
QUIC_NO_VIABLE_PATH = 0x10


def _lost(connecting: bool) -> type[TransportError]:
    return ConnectError if connecting else ConnectionLost


def _reason(exc: ssl.SSLError) -> str:
    return getattr(exc, "reason", None) or ""  # only errors raised by OpenSSL carry one


def _words(reason: str) -> str:
    return reason.replace("_", " ").lower()


def is_ragged_eof(exc: ssl.SSLError) -> bool:
    """True for a peer that closed TCP without close_notify (an EOF, not a failure)."""
    return isinstance(exc, ssl.SSLEOFError) and _reason(exc) == RAGGED_EOF


def tls_error(exc: ssl.SSLError, peer: str, *, connecting: bool) -> FluxError:
    """The flux error for a TLS failure with `peer` (a handshake when `connecting`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or _words(_reason(exc)) or str(exc)
        return TrustError(f"certificate of {peer} not trusted: {reason}")
    reason = _reason(exc)
    hint = _NOT_TLS13_HINT if reason in _NOT_TLS13 else ""
    if "_ALERT_" in reason:  # the peer's TLS refused something and said so
        alert = _words(reason.split("_ALERT_", 1)[1])
        message = f"TLS alert from {peer}: {alert}{hint}"
        if alert in CERTIFICATE_ALERTS.values():
            return TrustError(message)
        return _lost(connecting)(message)
    if isinstance(exc, ssl.SSLEOFError) and not reason:
        # The socket failed under OpenSSL, which keeps the errno to itself: a reset, in
        # practice (a clean or ragged close of TCP looks different, see RAGGED_EOF).
        return _lost(connecting)(f"connection reset by peer {peer}")
    what = "TLS handshake with" if connecting else "TLS connection with"
    detail = _words(reason) if reason else (str(exc) or type(exc).__name__)
    return _lost(connecting)(f"{what} {peer} failed: {detail}{hint}")


def os_error(exc: OSError, peer: str, *, connecting: bool) -> TransportError:
    """The flux error for a socket call's OSError (not ssl's, see `tls_error`)."""
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(f"connection refused by {peer}: is fluxd running?")
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError):
        return _lost(connecting)(f"connection reset by peer {peer}")
    if isinstance(exc, BrokenPipeError):
        return _lost(connecting)(f"connection closed by peer {peer} while sending")
    if exc.errno == errno.ETIMEDOUT:  # keepalive or TCP_USER_TIMEOUT: the link went silent
        return TransportTimeout(f"connection to {peer} timed out")
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    if connecting:
        return ConnectError(f"cannot connect to {peer}: {reason}")
    return ConnectionLost(f"connection to {peer} failed: {reason}")


def foreign_error(exc: BaseException, peer: str, *, connecting: bool = False) -> FluxError:
    """`tls_error` or `os_error`, with `exc` as the cause."""
    if isinstance(exc, ssl.SSLError):
        failure = tls_error(exc, peer, connecting=connecting)
    elif isinstance(exc, OSError):
        failure = os_error(exc, peer, connecting=connecting)
    else:
        failure = _lost(connecting)(f"connection to {peer} failed: {exc!r}")
    failure.__cause__ = exc
    return failure


@contextmanager
def handshake_errors(peer: str, timeout: float, what: str = "handshake") -> Iterator[None]:
    """Map what connecting to (or a handshake with) `peer` raises: TimeoutError after
    `timeout` seconds, ssl.SSLError, OSError."""

    def translate(exc: BaseException) -> FluxError:
        if isinstance(exc, TimeoutError) and not isinstance(exc, ssl.SSLError):
            return ConnectError(f"no {what} from {peer} within {timeout:g} s")
        return foreign_error(exc, peer, connecting=True)

    with map_exceptions({OSError: translate}):  # TimeoutError and ssl.SSLError are OSErrors
        yield


def quic_close_error(
    code: int,
    *,
    transport_close: bool,
    reason: str,
    peer: str,
    by_peer: bool,
    connecting: bool,
) -> FluxError | None:
    """The flux error for a QUIC connection closed with `code`; None for a clean close.

    Args:
        code: the CONNECTION_CLOSE error code.
        transport_close: a transport close (frame 0x1c) rather than an application's (0x1d).
        reason: the reason phrase.
        peer: who the connection was with.
        by_peer: the peer sent the close; otherwise our QUIC stack closed (the peer broke
            QUIC, or our TLS refused its certificate).
        connecting: the handshake had not completed.
    """
    if code == 0:
        return None
    detail = f": {reason}" if reason else ""
    if transport_close and QUIC_CRYPTO_ERROR <= code < QUIC_CRYPTO_ERROR + 0x100:
        alert = ALERTS.get(code - QUIC_CRYPTO_ERROR, f"alert {code - QUIC_CRYPTO_ERROR}")
        if by_peer:
            message = f"TLS alert from {peer}: {alert} (QUIC error 0x{code:x})"
        elif alert in CERTIFICATE_ALERTS.values():
            message = f"certificate of {peer} not trusted: {reason or alert}"
        else:
            message = f"TLS handshake with {peer} failed: {reason or alert}"
        trust = alert in CERTIFICATE_ALERTS.values()
        return TrustError(message) if trust else _lost(connecting)(message)
    name = QUIC_ERRORS.get(code) if transport_close else None
    kind = f"error 0x{code:x} ({name})" if name else f"error 0x{code:x}"
    if not transport_close:
        kind = f"application {kind}"
    if by_peer:
        return _lost(connecting)(f"QUIC connection closed by peer {peer}: {kind}{detail}")
    if code == QUIC_NO_VIABLE_PATH:  # our side gave up on the path (a dead network)
        return _lost(connecting)(f"QUIC connection to {peer} lost: no usable network path")
    # Our QUIC stack closed it for any other reason: the peer broke QUIC.
    return RemoteProtocolError(f"QUIC connection with {peer} failed: {kind}{detail}")


def no_quic_answer(peer: str, seconds: float) -> ConnectError:
    """A QUIC handshake that heard nothing back (UDP is often blocked where TCP passes)."""
    return ConnectError(f"no QUIC answer from {peer} in {seconds:g} s (UDP blocked?)")


def listen_error(host: str, port: int, exc: BaseException) -> FluxError:
    """The flux error for a listener that cannot bind `host`:`port`."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConnectError(f"cannot listen on {format_hostport(host, port)}: {reason}")


#: What a listener calls when a connection fails before its session starts (a handshake).
OnFailed = Callable[[str, FluxError], None]


def ignore_failure(peer: str, failure: FluxError) -> None:
    """The default OnFailed: such a failure concerns nobody but the peer."""
