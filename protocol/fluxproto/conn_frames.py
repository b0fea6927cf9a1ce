"""Connection frames: HELLO, WELCOME, PING, PONG, GOODBYE, ERROR, and CANCEL (a request's end).

HELLO, WELCOME and ERROR keep their version-1 codes and keys so a peer of either version can
read the other's; the keys version 2 adds are optional and come after the version-1 ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import (
    DEFAULT_REQUESTS,
    DEFAULT_WINDOW,
    MAGIC,
    MAX_CAPS,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_REQUESTS,
    MAX_TEXT,
    MAX_TOKEN,
    MAX_WINDOW,
    MIN_CHUNK,
    MIN_WINDOW,
    PROTOCOL_VERSION,
    Frame,
    FrameType,
    check_int,
    check_rid,
    check_str,
    fail,
)


def _check_caps(caps: object) -> None:
    if type(caps) is not tuple or len(caps) > MAX_CAPS:
        raise fail("caps", f"expected at most {MAX_CAPS} strings")
    for c in caps:
        check_str(c, "caps", 64)


def _resolve_windows(frame: Hello | Welcome) -> None:
    # An absent transfer_window means "the same as window" (a version-1 peer sends none). It is
    # resolved here so that equal announcements compare equal however they were written.
    if frame.transfer_window is None and type(frame.window) is int:
        object.__setattr__(frame, "transfer_window", frame.window)


def _check_limits(window: object, transfer_window: object, requests: object) -> None:
    check_int(window, "window", MIN_WINDOW, MAX_WINDOW)
    check_int(transfer_window, "transfer_window", MIN_WINDOW, window)  # type: ignore[arg-type]
    check_int(requests, "requests", 1, MAX_REQUESTS)


@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Client's first frame: magic, versions it speaks, capabilities, optional bearer token.

    `window` and `transfer_window` are the bytes of chunks the client takes in flight (for all
    downloads together, and within one); `requests` is how many requests it means to keep
    open (advisory: the server's WELCOME `requests` is the binding limit).
    `transfer_window` None (absent on the wire) resolves to `window`.
    """

    TYPE = FrameType.HELLO
    WIRE_REQUIRED = ("magic",)  # a peer that does not say FLUX is not a flux peer
    versions: tuple[int, ...] = (PROTOCOL_VERSION,)
    caps: tuple[str, ...] = ()
    window: int = DEFAULT_WINDOW
    agent: str = ""
    token: str | None = None
    magic: str = MAGIC
    transfer_window: int | None = None
    requests: int = DEFAULT_REQUESTS

    def __post_init__(self) -> None:
        _resolve_windows(self)
        self.validate()

    def validate(self) -> None:
        if self.magic != MAGIC:
            raise fail("magic", "not a flux peer")
        if type(self.versions) is not tuple or not 1 <= len(self.versions) <= 16:
            raise fail("versions", "expected 1 to 16 versions")
        for v in self.versions:
            check_int(v, "versions", 0, 0xFFFF)
        _check_caps(self.caps)
        _check_limits(self.window, self.transfer_window, self.requests)
        check_str(self.agent, "agent", MAX_TEXT)
        if self.token is not None:
            check_str(self.token, "token", MAX_TOKEN)


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    """Server's answer to HELLO: the chosen version, the server's windows and request limit,
    and what its storage needs of an upload's geometry.

    `min_chunk` is the smallest `chunk_size` an upload of more than one chunk may use, and
    `max_chunks` the most chunks one file may have (an object store's multipart rules); the
    server refuses an OPEN_UPLOAD that breaks them (413). They are left out of the header when
    they are the protocol's own limits, so such a WELCOME is byte for byte what a server
    without the rule sends, and an absent key means the protocol's limit (PROTOCOL.md 15.46).
    """

    TYPE = FrameType.WELCOME
    version: int = PROTOCOL_VERSION
    caps: tuple[str, ...] = ()
    window: int = DEFAULT_WINDOW
    agent: str = ""
    transfer_window: int | None = None
    requests: int = DEFAULT_REQUESTS
    min_chunk: int = MIN_CHUNK
    max_chunks: int = MAX_CHUNKS

    def __post_init__(self) -> None:
        _resolve_windows(self)
        self.validate()

    def validate(self) -> None:
        check_int(self.version, "version", 0, 0xFFFF)
        _check_caps(self.caps)
        _check_limits(self.window, self.transfer_window, self.requests)
        check_str(self.agent, "agent", MAX_TEXT)
        check_int(self.min_chunk, "min_chunk", MIN_CHUNK, MAX_CHUNK)
        check_int(self.max_chunks, "max_chunks", 1, MAX_CHUNKS)

    def header(self) -> dict[str, Any]:
        head = Frame.header(self)
        if self.min_chunk == MIN_CHUNK:
            del head["min_chunk"]
        if self.max_chunks == MAX_CHUNKS:
            del head["max_chunks"]
        return head


@dataclass(frozen=True, slots=True)
class _Probe(Frame):
    nonce: int = 0

    def validate(self) -> None:
        check_int(self.nonce, "nonce")


@dataclass(frozen=True, slots=True)
class Ping(_Probe):
    """Liveness probe; either side, any time after the handshake."""

    TYPE = FrameType.PING


@dataclass(frozen=True, slots=True)
class Pong(_Probe):
    """Answer to PING (SHOULD echo its nonce; not paired by the state machine)."""

    TYPE = FrameType.PONG


@dataclass(frozen=True, slots=True)
class Goodbye(Frame):
    """Either side is closing the connection on purpose."""

    TYPE = FrameType.GOODBYE
    reason: str = ""

    def validate(self) -> None:
        check_str(self.reason, "reason", MAX_TEXT)


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """A failure; `code` is an errors.FluxError code.

    With `rid` (server only) it ends that request and nothing else; without, it ends the
    connection. `rid` comes after the version-1 keys and is left out of the header when None,
    so a connection ERROR is byte for byte the frame a version-1 peer expects.
    """

    TYPE = FrameType.ERROR
    code: int = 500
    message: str = ""
    rid: int | None = None

    def validate(self) -> None:
        check_int(self.code, "code", 100, 999)
        check_str(self.message, "message", MAX_TEXT)
        if self.rid is not None:
            check_rid(self.rid)

    def header(self) -> dict[str, Any]:
        head: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.rid is not None:
            head["rid"] = self.rid
        return head


@dataclass(frozen=True, slots=True)
class Cancel(Frame):
    """The client abandons request `rid`; the server answers ERROR 499 with that rid."""

    TYPE = FrameType.CANCEL
    rid: int

    def validate(self) -> None:
        check_rid(self.rid)
