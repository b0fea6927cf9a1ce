"""Who a request comes from: the Caller (grant, account, transport) and its Presence."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fluxproto import FluxError

from ..auth.scopes import Grant
from ..limits import peer_host

__all__ = ["Caller", "Presence"]


class Presence:
    """A client connection as the service sees it: its signs of life, a way to keep it
    waiting patiently, and a way to end it.

    The transport that owns the connection supplies the readings as functions, so the service
    and the handles it returns never hold a Session or a channel: a claim asks the presence of
    whoever drives an upload now, and a later connection that attaches to the upload would only
    swap the presence.

    Args:
        peer: the client's address now (a QUIC client may move).
        heard: a reading that changes whenever bytes arrive from the client (the transport's
            last-receive time; frames taken from a queue do not count: a paced session takes
            those long after a killed client sent them).
        closed: True once the connection is gone.
        keepalive: tells the client the daemon is still working for it (a PING); called every
            KEEPALIVE seconds while a long storage call runs, so its wait does not run out.
        end: hangs up on the client, saying why (called once, by `end`).
    """

    def __init__(
        self,
        peer: Callable[[], str],
        heard: Callable[[], float],
        closed: Callable[[], bool],
        keepalive: Callable[[], None] = lambda: None,
        end: Callable[[FluxError], None] = lambda exc: None,
    ) -> None:
        self._peer, self._heard, self._closed = peer, heard, closed
        self.keepalive, self._end = keepalive, end
        #: Why the connection was ended (revoked, superseded), which then is every failing
        #: request's result in the access log.
        self.ended_by: FluxError | None = None

    @property
    def peer(self) -> str:
        return self._peer()

    @property
    def closed(self) -> bool:
        return self._closed()

    def last_heard(self) -> float:
        """What a claim of the same subject takes for a sign of life: bytes from the client,
        its answers to the keepalive included. Only compared with itself.

        The daemon's own work for the client is not one: a request takes the frames a client
        sent long before (a paced upload reaches a COMMIT queued behind its chunks seconds
        after a killed client sent it), and a live client shows itself by answering the PINGs
        that the long storage calls send (`keepalive`).
        """
        return self._heard()

    def end(self, exc: FluxError) -> None:
        """End the connection for `exc` (the first reason given wins; later calls do nothing)."""
        if self.ended_by is None:
            self.ended_by = exc
            self._end(exc)


@dataclass(frozen=True)
class Caller:
    """Who makes requests, as authenticated once for a connection.

    Attributes:
        grant: what the caller may do (scopes, root), and its subject and token id.
        account: whom per-subject limits count: the token's subject; anonymous clients per
            address (`anonymous@HOST`).
        transport: "tcp", "quic", ... for the access log.
        presence: the connection's signs of life (see `Presence`).
        details: transport details for the access log beyond its name (QUIC: `resumed`,
            `early_data`); fixed once the handshake is done.
    """

    grant: Grant
    account: str
    transport: str
    presence: Presence
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        grant: Grant,
        transport: str,
        presence: Presence,
        details: Mapping[str, Any] | None = None,
    ) -> Caller:
        """The caller for `grant` over a connection; anonymous grants count per address."""
        anonymous = grant.jti is None
        account = f"anonymous@{peer_host(presence.peer)}" if anonymous else grant.subject
        return cls(grant, account, transport, presence, dict(details or {}))

    @property
    def peer(self) -> str:
        return self.presence.peer
