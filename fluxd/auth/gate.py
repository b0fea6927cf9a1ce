"""The daemon's door: a HELLO's token (or its absence) becomes a Grant, or an AuthError."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fluxproto.errors import AuthError

from .registry import Revocations, TokenRegistry
from .scopes import Grant, parse_scopes
from .tokens import SigningKey, Verifier, load_public_keys

if TYPE_CHECKING:
    from ..config import ServerConfig

ANONYMOUS = "anonymous"

__all__ = ["ANONYMOUS", "Authenticator", "bearer_token"]


class Authenticator:
    """Checks tokens, serves anonymous clients when allowed, and follows revocations.

    Args:
        verifier: checks signatures, audience, times and scopes.
        revocations: the revocation list `verifier` consults; `refresh` re-reads it.
        anonymous: the grant of clients without a token, or None if they are refused.
    """

    def __init__(
        self, verifier: Verifier, revocations: Revocations, anonymous: Grant | None
    ) -> None:
        self.verifier, self.revocations, self.anonymous = verifier, revocations, anonymous

    @classmethod
    def from_config(cls, config: ServerConfig) -> Authenticator:
        """Load (or create) the daemon's token key, external keys and the revocation list.

        Raises:
            ConfigError: a key or JWKS file is unreadable or invalid.
        """
        auth = config.auth
        own = SigningKey.load_or_create(config.certs)
        keys = {own.kid: own.public, **load_public_keys(auth.trusted_keys, auth.jwks)}
        revocations = Revocations(TokenRegistry(config.certs))
        verifier = Verifier(
            keys,
            auth.audience or own.audience,
            revocations.__contains__,
            auth.root,
            own=frozenset({own.kid}),
        )
        anonymous = None
        if config.anonymous:
            anonymous = Grant(ANONYMOUS, None, parse_scopes(auth.anonymous_scope))
        return cls(verifier, revocations, anonymous)

    def authenticate(self, token: str | None) -> Grant:
        """The grant for a HELLO's token.

        Raises:
            AuthError: no token where one is required, or the token is not valid.
            PermissionDenied: the token's subject cannot have a root of its own.
        """
        if token is None:
            if self.anonymous is None:
                raise AuthError("this server requires a token (fluxctl --token or FLUX_TOKEN)")
            return self.anonymous
        return self.verifier.verify(token)

    def refresh(self) -> bool:
        """Re-read the revocation list if it changed; True if it did."""
        return self.revocations.refresh()

    def invalid_reason(self, grant: Grant, now: float | None = None) -> str | None:
        """Why a grant given earlier no longer holds (revoked, expired), or None."""
        if grant.jti is not None and grant.jti in self.revocations:
            return f"token {grant.jti} was revoked"
        if grant.expires is not None and (now if now is not None else time.time()) > grant.expires:
            return "token has expired"
        return None


def bearer_token(authorization: str) -> str | None:
    """The token of an HTTP `Authorization: Bearer TOKEN` value, or None for another form."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
