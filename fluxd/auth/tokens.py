"""Bearer tokens: Ed25519-signed JWTs (PyJWT for the format, cryptography for the keys).

The daemon's signing key lives beside its certificates (`token-key.pem`, 0600, and
`token-pub.pem`). Claims of a token fluxd issues:

    iss "fluxd"   sub NAME   aud AUDIENCE   iat/nbf NOW   exp NOW+TTL   jti RANDOM
    scope "write:/backups/ read:/"          (space-separated, as OAuth's `scope`)

The header names the key (`kid`), so a verifier holding several keys (its own plus an external
issuer's public keys or JWKS) picks the right one. Only EdDSA is accepted: a token signed with
`none` or an HMAC (the classic algorithm-confusion attack) is refused before any key is tried.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fluxproto.errors import AuthError, ConfigError

from ..certs import make_private_dir, write_file
from .scopes import Grant, Scope, parse_scopes, subject_root

KEY_FILE = "token-key.pem"
PUB_FILE = "token-pub.pem"
ISSUER = "fluxd"
ALGORITHM = "EdDSA"
#: Clock difference tolerated between an external issuer and this daemon (README "Tokens and
#: access"). Tokens this daemon signed itself were stamped by its own clock: no tolerance.
LEEWAY = 30.0
_REQUIRED = ["exp", "iat", "sub", "jti", "aud"]

__all__ = ["ISSUER", "KEY_FILE", "PUB_FILE", "SigningKey", "Verifier", "key_id", "load_public_keys"]


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable name for a public key: 16 hex digits of SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """The daemon's own token key pair."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def kid(self) -> str:
        return key_id(self.public)

    @property
    def audience(self) -> str:
        """The default audience of this daemon's tokens: `fluxd:` and the key id."""
        return f"fluxd:{self.kid}"

    @classmethod
    def load_or_create(cls, directory: Path) -> SigningKey:
        """The key pair in `directory`, generated (0600) on first use.

        Raises:
            ConfigError: the key file is unreadable or not an Ed25519 private key.
        """
        path = directory / KEY_FILE
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            return cls._create(directory)
        except OSError as exc:
            raise ConfigError(f"cannot read token key {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key (PEM, unencrypted)")
        return cls(key)

    @classmethod
    def _create(cls, directory: Path) -> SigningKey:
        key = cls(Ed25519PrivateKey.generate())
        pem = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pub = key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            make_private_dir(directory)
            write_file(directory / KEY_FILE, pem, 0o600)
            write_file(directory / PUB_FILE, pub, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the token key to {directory}: {exc.strerror}"
            ) from None
        return key

    def issue(
        self, subject: str, scopes: Iterable[Scope], ttl: float, audience: str, now: float
    ) -> tuple[str, dict[str, Any]]:
        """Sign a token; returns it and its claims."""
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + max(1, int(ttl)),
            # Hex: an id never begins with "-", which a command line would take for an option.
            "jti": secrets.token_hex(12),
            "scope": " ".join(str(s) for s in scopes),
        }
        token = jwt.encode(claims, self.private, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, claims


def load_public_keys(pem_files: Iterable[Path], jwks: Path | None) -> dict[str, Ed25519PublicKey]:
    """Public keys of external issuers by key id: PEM files and/or a JWKS (OKP/Ed25519) file.

    Raises:
        ConfigError: a file is unreadable, or holds no Ed25519 public key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for path in pem_files:
        key = serialization.load_pem_public_key(_read(path))
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 public key")
        keys[key_id(key)] = key
    if jwks is not None:
        keys.update(_load_jwks(jwks))
    return keys


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _load_jwks(path: Path) -> dict[str, Ed25519PublicKey]:
    try:
        doc = json.loads(_read(path))
        entries = doc["keys"]
        assert isinstance(entries, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ConfigError(f'{path} is not a JWKS document ({{"keys": [...]}})') from None
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in entries:
        if not (isinstance(entry, dict) and entry.get("kty") == "OKP"):
            continue  # other key types cannot sign EdDSA tokens
        if entry.get("crv") != "Ed25519" or not isinstance(entry.get("x"), str):
            continue
        try:
            raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ConfigError(
                f"{path}: key {entry.get('kid')!r} is not a valid Ed25519 key"
            ) from None
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) and kid else key_id(key)] = key
    if not keys:
        raise ConfigError(f"{path} has no Ed25519 (OKP) key")
    return keys


class Verifier:
    """Checks tokens against trusted keys, audience, time and a revocation list.

    Args:
        keys: trusted public keys by key id (the daemon's own and external issuers').
        audience: the `aud` a token must carry.
        revoked: tells whether a `jti` was revoked.
        root_template: `root` from the config (`/users/{sub}`), or "" for the whole tree.
        own: ids of the keys this daemon signs with: their tokens get no clock leeway.
    """

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        audience: str,
        revoked: Callable[[str], bool],
        root_template: str = "",
        own: frozenset[str] = frozenset(),
    ) -> None:
        self.keys, self.audience, self.revoked = dict(keys), audience, revoked
        self.root_template, self.own = root_template, own

    def verify(self, token: str) -> Grant:
        """The grant a token carries.

        Raises:
            AuthError: malformed, bad signature, unknown key, expired, not yet valid, wrong
                audience, revoked, or bad scopes.
            PermissionDenied: the subject cannot have a root of its own.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("token is malformed (not a JWT)") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"token algorithm {header.get('alg')!r} is not accepted (EdDSA only)")
        kid = header.get("kid")
        candidates = [(kid, self.keys[kid])] if kid in self.keys else list(self.keys.items())
        claims, leeway = self._decode(token, candidates)
        jti, sub = claims["jti"], claims["sub"]
        if not (isinstance(jti, str) and jti and isinstance(sub, str) and sub):
            raise AuthError("token has an empty or non-string jti or sub")
        if self.revoked(jti):
            raise AuthError(f"token {jti} was revoked")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise AuthError("token scopes are not valid: `scope` must be a space-separated string")
        try:
            scopes = parse_scopes(scope)
        except ValueError as exc:
            raise AuthError(f"token scopes are not valid: {exc}") from None
        root = subject_root(self.root_template, sub) if self.root_template else ""
        # Live connections end at the same moment a new one would be refused.
        return Grant(sub, jti, scopes, root, float(claims["exp"]) + leeway)

    def _decode(
        self, token: str, keys: list[tuple[str, Ed25519PublicKey]]
    ) -> tuple[dict[str, Any], float]:
        """The verified claims, and the clock leeway they were checked with."""
        error: jwt.InvalidTokenError = jwt.InvalidSignatureError()
        for kid, key in keys:
            leeway = 0.0 if kid in self.own else LEEWAY
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    audience=self.audience,
                    leeway=leeway,
                    options={"require": _REQUIRED},
                )
                return claims, leeway
            except jwt.InvalidSignatureError as exc:
                error = exc
            except jwt.InvalidTokenError as exc:
                raise AuthError(_explain(exc)) from None
        raise AuthError(_explain(error)) from None


def _explain(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not valid yet (nbf/iat in the future)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token is for another server (audience does not match)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature is not valid (not signed by a trusted key)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim!r} claim"
    return f"token is not valid: {exc}"
