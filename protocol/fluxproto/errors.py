"""The one exception tree of the project, with wire codes and CLI exit codes.

Every exception fluxd and fluxctl raise derives from `FluxError`. Each class carries the numeric
`code` sent in an ERROR frame and the `exit_code` the CLI returns, so the peer can rebuild the
same class from a code (`error_from_code`) and the CLI can map any error without a lookup table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import ClassVar

# Exit codes (README "Exit codes"). Kept here so every layer agrees on one table.
EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_AUTH = 4
EXIT_NETWORK = 5
EXIT_REMOTE = 6


class FluxError(Exception):
    """Root of every error raised by fluxproto, fluxd and fluxctl."""

    code: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_OTHER
    #: True when trying the same operation again later may succeed (network, shutdown).
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- protocol ---------------------------------------------------------------------------------


class ProtocolError(FluxError):
    """The peers disagree about the protocol."""

    code = 400


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class VersionMismatch(ProtocolError):
    """No protocol version in common with the peer (`negotiation.py` words the message)."""

    code = 505


# --- requests ---------------------------------------------------------------------------------


class Cancelled(FluxError):
    """The request was cancelled (the server's answer to CANCEL)."""

    code = 499


# --- transport --------------------------------------------------------------------------------


class TransportError(FluxError):
    """The network failed: connect, read, write or timeout."""

    code = 503
    exit_code = EXIT_NETWORK
    retryable = True


class ConnectError(TransportError):
    """Could not connect to the server."""


class ConnectionRefused(ConnectError):
    """Nothing accepts connections at the server's address (a typo, or the daemon is down)."""


class ConnectionLost(TransportError):
    """The connection closed or broke in the middle of an exchange."""


class TransportTimeout(TransportError):
    """The peer went silent for longer than the timeout."""


class Unavailable(TransportError):
    """The server is shutting down or cannot take the request now; try again."""


# --- auth, trust, permission -------------------------------------------------------------------


class AuthError(FluxError):
    """Authentication, permission or trust failure."""

    code = 401
    exit_code = EXIT_AUTH


class TrustError(AuthError):
    """The server's certificate is not trusted (unknown CA, pin mismatch, changed key)."""


class PermissionDenied(AuthError):
    """The request is not allowed (path outside the root, reserved name, missing scope)."""

    code = 403


# --- integrity --------------------------------------------------------------------------------


class IntegrityError(FluxError):
    """Data does not match its digest."""

    code = 422
    exit_code = EXIT_INTEGRITY


# --- storage / remote -------------------------------------------------------------------------


class StorageError(FluxError):
    """The storage failed or refused the operation."""

    code = 500
    exit_code = EXIT_REMOTE


class NotFound(StorageError):
    """No such file or directory."""

    code = 404


class Conflict(StorageError):
    """Another session is writing the same path, or the path has the wrong type."""

    code = 409


class LimitExceeded(StorageError):
    """A size or count is over the configured limit."""

    code = 413


class NoSpace(StorageError):
    """The storage is full."""

    code = 507


class NotSupported(StorageError):
    """The server does not support this request (yet)."""

    code = 501


# --- local configuration and usage --------------------------------------------------------------


class ConfigError(FluxError):
    """Invalid configuration or command-line usage."""

    code = 400
    exit_code = EXIT_USAGE


# Classes the peer can name in an ERROR frame. Local-only classes (LocalProtocolError,
# ConfigError, TrustError, ...) map to the nearest wire code and are rebuilt as the class below.
_BY_CODE: dict[int, type[FluxError]] = {
    cls.code: cls
    for cls in (
        RemoteProtocolError,
        VersionMismatch,
        Cancelled,
        AuthError,
        PermissionDenied,
        NotFound,
        Conflict,
        LimitExceeded,
        IntegrityError,
        StorageError,
        Unavailable,
        NoSpace,
        NotSupported,
    )
}


def error_from_code(code: int, message: str) -> FluxError:
    """Rebuild the exception a peer reported in an ERROR frame.

    An unknown code in a known family (4xx, 5xx) falls back to a generic class of that family so
    newer peers can add codes without breaking older clients.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = RemoteProtocolError if 400 <= code < 500 else StorageError
    return cls(message)


@contextmanager
def map_exceptions(
    mapping: Mapping[type[BaseException], type[FluxError] | Callable[[BaseException], FluxError]],
) -> Iterator[None]:
    """Translate foreign exceptions into the flux tree where they enter our code.

    Keys are matched with isinstance in order; a value is either a FluxError class (built with
    the foreign message) or a function returning the FluxError to raise. FluxErrors pass through.
    """
    try:
        yield
    except FluxError:
        raise
    except BaseException as exc:
        for foreign, target in mapping.items():
            if isinstance(exc, foreign):
                if isinstance(target, type):
                    raise target(str(exc) or type(exc).__name__) from exc
                raise target(exc) from exc
        raise
