"""Tokens, scopes, revocation and the daemon's door (fluxd.auth), without a network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxd.auth.gate import Authenticator
from fluxd.auth.registry import Revocations, TokenRegistry
from fluxd.auth.scopes import Grant, Scope, parse_scopes, subject_root
from fluxd.auth.tokens import LEEWAY, SigningKey, Verifier, key_id, load_public_keys
from fluxd.cli import parse_ttl
from fluxd.config import AuthConfig, ServerConfig
from fluxproto import AuthError, ConfigError, PermissionDenied

# --- scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verb", "prefix"),
    [
        ("write:/backups/", "write", "backups"),
        ("read:/", "read", ""),
        ("list:/a//b/./c", "list", "a/b/c"),
        ("delete:/x", "delete", "x"),
    ],
)
def test_scope_parse_normalises_the_prefix(text: str, verb: str, prefix: str) -> None:
    assert Scope.parse(text) == Scope(verb, prefix)


@pytest.mark.parametrize(
    "text", ["write", "fly:/x", "write:x", "write:/../x", "read:/.flux/", "write:/a\x00b", ""]
)
def test_bad_scopes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        Scope.parse(text)


def test_scope_prefix_is_a_subtree_not_a_string_prefix() -> None:
    s = Scope.parse("write:/backups/")
    assert s.covers("write", "backups")
    assert s.covers("write", "backups/2026/x.tar")
    assert not s.covers("write", "backups2/x")
    assert not s.covers("read", "backups/x")
    assert Scope.parse("read:/").covers("read", "anything/at/all")


def test_parse_scopes_accepts_a_string_or_a_list_and_drops_duplicates() -> None:
    assert parse_scopes("read:/ write:/a") == parse_scopes(["read:/", "write:/a", "read:/"])
    assert str(parse_scopes("write:/a/b")[0]) == "write:/a/b/"
    with pytest.raises(ValueError, match="no scope"):
        parse_scopes(" ")


def test_grant_check_maps_paths_into_the_subjects_root() -> None:
    grant = Grant("alice", "j1", parse_scopes("write:/ read:/pub/"), root="users/alice")
    assert grant.check("/a/b.bin", "write") == "users/alice/a/b.bin"
    assert grant.check("/", "write") == "users/alice"
    assert grant.check("/pub/x", "read") == "users/alice/pub/x"
    with pytest.raises(PermissionDenied, match="does not allow read on /secret"):
        grant.check("/secret", "read")
    with pytest.raises(PermissionDenied):
        grant.check("/../bob/x", "write")


def test_grant_check_accepts_any_of_several_verbs() -> None:
    grant = Grant("a", "j", parse_scopes("read:/r/"))
    assert grant.check("/r/x", "list", "read") == "r/x"
    with pytest.raises(PermissionDenied, match="does not allow list"):
        grant.check("/other", "list", "read")


@pytest.mark.parametrize("sub", ["..", ".", "a/b", "", "a\x01", "x/..", "\\", "a" * 256])
def test_subject_root_refuses_subjects_that_are_not_one_name(sub: str) -> None:
    with pytest.raises(PermissionDenied, match="cannot name a folder"):
        subject_root("/users/{sub}", sub)


def test_subject_root() -> None:
    assert subject_root("/users/{sub}", "alice") == "users/alice"
    assert subject_root("/{sub}", "bob") == "bob"
    assert subject_root("/shared", "anyone") == "shared"
    with pytest.raises(PermissionDenied):
        subject_root("/{sub}", ".flux")  # the reserved area, at the root


# --- tokens -------------------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "certs")


def verifier(
    key: SigningKey, revoked: set[str] | None = None, root: str = "", *, own: bool = True
) -> Verifier:
    """A daemon's verifier whose own key is `key` (own=False: `key` is an external issuer's)."""
    gone = revoked or set()
    kids = frozenset({key.kid}) if own else frozenset()
    return Verifier({key.kid: key.public}, key.audience, gone.__contains__, root, own=kids)


def mint(private: Ed25519PrivateKey, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "alice", "aud": "", "iat": now, "exp": now + 3600, "jti": "j1"}
    body["scope"] = "read:/"
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": kid} if kid else None)


def test_key_is_created_once_with_private_mode(tmp_path: Path) -> None:
    first = SigningKey.load_or_create(tmp_path / "c")
    again = SigningKey.load_or_create(tmp_path / "c")
    assert first.kid == again.kid
    assert (tmp_path / "c" / "token-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "c" / "token-pub.pem").exists()
    assert first.audience == f"fluxd:{first.kid}"


def test_key_file_that_is_not_ed25519_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "token-key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not an Ed25519 private key"):
        SigningKey.load_or_create(tmp_path)


def test_issued_token_verifies_to_its_grant(key: SigningKey) -> None:
    token, claims = key.issue("alice", parse_scopes("write:/b/"), 60, key.audience, time.time())
    grant = verifier(key).verify(token)
    assert grant == Grant("alice", claims["jti"], parse_scopes("write:/b/"), "", claims["exp"])
    assert jwt.get_unverified_header(token)["kid"] == key.kid
    assert set(claims) == {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope"}


def test_grant_carries_the_subjects_root(key: SigningKey) -> None:
    token, _ = key.issue("bob", parse_scopes("read:/"), 60, key.audience, time.time())
    assert verifier(key, root="/users/{sub}").verify(token).root == "users/bob"


def test_every_token_gets_a_new_jti(key: SigningKey) -> None:
    jtis = {key.issue("a", parse_scopes("read:/"), 60, "x", 0)[1]["jti"] for _ in range(50)}
    assert len(jtis) == 50


def tampered(token: str) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["scope"] = "write:/ read:/ list:/ delete:/"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def refusal(key: SigningKey, token: str, revoked: set[str] | None = None) -> str:
    with pytest.raises(AuthError) as info:
        verifier(key, revoked).verify(token)
    return info.value.message


def test_refusals_say_why(key: SigningKey) -> None:
    aud = key.audience
    other = Ed25519PrivateKey.generate()
    now = int(time.time())
    good, _ = key.issue("alice", parse_scopes("read:/"), 60, aud, now)
    assert "signature" in refusal(key, tampered(good))
    assert "signature" in refusal(key, mint(other, aud=aud))
    assert "signature" in refusal(key, mint(other, kid=key.kid, aud=aud))
    assert "expired" in refusal(key, mint(key.private, aud=aud, iat=now - 7200, exp=now - 3600))
    assert "not valid yet" in refusal(key, mint(key.private, aud=aud, nbf=now + 3600))
    assert "not valid yet" in refusal(key, mint(key.private, aud=aud, iat=now + 3600))
    assert "another server" in refusal(key, mint(key.private, aud="fluxd:someone-else"))
    assert "revoked" in refusal(key, mint(key.private, aud=aud, jti="gone"), {"gone"})
    assert "malformed" in refusal(key, "not.a.token")
    assert "malformed" in refusal(key, "")
    assert "'jti'" in refusal(key, mint(key.private, aud=aud, jti=None))
    assert "'exp'" in refusal(key, mint(key.private, aud=aud, exp=None))
    assert "'sub'" in refusal(key, mint(key.private, aud=aud, sub=None))
    assert "scopes" in refusal(key, mint(key.private, aud=aud, scope="root:/"))
    assert "scopes" in refusal(key, mint(key.private, aud=aud, scope=""))
    assert "non-string" in refusal(key, mint(key.private, aud=aud, jti=""))


def test_clock_skew_of_an_external_issuer_within_the_leeway_is_tolerated(key: SigningKey) -> None:
    now = int(time.time())
    token = mint(key.private, aud=key.audience, iat=now + 10, nbf=now + 10)
    assert verifier(key, own=False).verify(token).subject == "alice"
    with pytest.raises(AuthError, match="not valid yet"):
        verifier(key).verify(token)  # our own tokens come from our own clock


def test_algorithm_confusion_and_none_are_refused(key: SigningKey) -> None:
    pub_pem = key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"sub": "a", "aud": key.audience, "iat": now, "exp": now + 60, "jti": "j"}
    claims["scope"] = "write:/"
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    mac = hmac.new(pub_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    hs = f"{header}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert "not accepted" in refusal(key, hs)
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert "not accepted" in refusal(key, f"{none_header}.{body}.")


# --- external issuers ---------------------------------------------------------------------------


def test_trusted_pem_key_and_jwks(tmp_path: Path) -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(
        a.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    raw = b.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(
        json.dumps(
            {
                "keys": [
                    {"kty": "RSA", "n": "xx", "e": "AQAB", "kid": "rsa"},  # ignored
                    {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "idp-2026"},
                ]
            }
        )
    )
    keys = load_public_keys([pem], jwks)
    assert set(keys) == {key_id(a.public_key()), "idp-2026"}
    v = Verifier(keys, "fluxd:prod", lambda j: False)
    assert v.verify(mint(a, aud="fluxd:prod")).subject == "alice"
    assert v.verify(mint(b, kid="idp-2026", aud="fluxd:prod", sub="svc")).subject == "svc"
    with pytest.raises(AuthError, match="signature"):
        v.verify(mint(Ed25519PrivateKey.generate(), kid="idp-2026", aud="fluxd:prod"))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{}", "not a JWKS"),
        ('{"keys": 5}', "not a JWKS"),
        ('{"keys": [{"kty": "RSA"}]}', "no Ed25519"),
        ('{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}', "not a valid Ed25519"),
        ("not json", "not a JWKS"),
    ],
)
def test_bad_jwks_is_a_config_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_public_keys([], path)


def test_missing_or_wrong_pem_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_keys([tmp_path / "absent.pem"], None)


# --- registry and revocations -------------------------------------------------------------------


def test_registry_records_without_the_token_and_revokes(tmp_path: Path) -> None:
    reg = TokenRegistry(tmp_path)
    reg.record({"jti": "a", "sub": "s", "scope": "read:/", "iat": 1, "exp": 2, "aud": "x"})
    assert reg.issued() == [
        {"jti": "a", "sub": "s", "aud": "x", "scope": "read:/", "iat": 1, "exp": 2}
    ]
    assert reg.revoked() == {}
    reg.revoke("a")
    assert set(reg.revoked()) == {"a"}
    assert (tmp_path / "revoked.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    reg = TokenRegistry(tmp_path)
    reg.revoke("a")
    with open(tmp_path / "revoked.jsonl", "ab") as f:
        f.write(b'{"jti": "b", "a')
    assert set(reg.revoked()) == {"a"}


@pytest.mark.parametrize("jti", ["", "x" * 300, "a\nb"])
def test_revoke_refuses_bad_ids(tmp_path: Path, jti: str) -> None:
    with pytest.raises(ConfigError, match="not a token id"):
        TokenRegistry(tmp_path).revoke(jti)


def test_revocations_refresh_only_when_the_file_changes(tmp_path: Path) -> None:
    reg = TokenRegistry(tmp_path)
    rev = Revocations(reg)
    assert "a" not in rev
    assert rev.refresh() is False
    reg.revoke("a")
    assert rev.refresh() is True
    assert "a" in rev
    assert rev.refresh() is False
    os.unlink(reg.revoked_path)
    assert rev.refresh() is True
    assert "a" not in rev


# --- the door -----------------------------------------------------------------------------------


def authenticator(tmp_path: Path, **auth: Any) -> Authenticator:
    cfg = ServerConfig(root=tmp_path / "root", certs=tmp_path / "certs", auth=AuthConfig(**auth))
    return Authenticator.from_config(cfg)


def test_anonymous_on_loopback_by_default_with_every_scope(tmp_path: Path) -> None:
    grant = authenticator(tmp_path).authenticate(None)
    assert grant.subject == "anonymous" and grant.jti is None
    assert grant.check("/x", "delete") == "x"


def test_anonymous_scope_is_configurable(tmp_path: Path) -> None:
    grant = authenticator(tmp_path, anonymous_scope="read:/pub/").authenticate(None)
    assert grant.check("/pub/a", "read") == "pub/a"
    with pytest.raises(PermissionDenied):
        grant.check("/pub/a", "write")


def test_no_token_is_refused_when_anonymous_is_off(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="requires a token"):
        authenticator(tmp_path, anonymous=False).authenticate(None)


def test_a_bad_token_is_refused_even_where_anonymous_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="malformed"):
        authenticator(tmp_path).authenticate("garbage")


def test_invalid_reason_follows_revocation_and_expiry(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, audience="fluxd:test")
    key = SigningKey.load_or_create(tmp_path / "certs")
    token, claims = key.issue("a", parse_scopes("read:/"), 60, "fluxd:test", time.time())
    grant = auth.authenticate(token)
    assert auth.invalid_reason(grant) is None
    assert auth.invalid_reason(grant, now=claims["exp"] + 1) == "token has expired"
    TokenRegistry(tmp_path / "certs").revoke(claims["jti"])
    assert auth.refresh() is True
    assert auth.invalid_reason(grant) == f"token {claims['jti']} was revoked"
    with pytest.raises(AuthError, match="revoked"):
        auth.authenticate(token)
    assert auth.invalid_reason(auth.authenticate(None)) is None  # anonymous never expires


# --- fluxd token --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600", 3600)]
)
def test_ttl_parses(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0", "0d", "soon", "-1h", "1y", ""])
def test_bad_ttl_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_ttl(text)


def test_token_ids_are_hex_and_never_look_like_options(key: SigningKey) -> None:
    for _ in range(200):  # base64url ids began with "-" about once in 32
        _, claims = key.issue("a", parse_scopes("read:/"), 60, key.audience, time.time())
        assert int(claims["jti"], 16) >= 0 and not claims["jti"].startswith("-")


def test_own_tokens_get_no_clock_leeway_external_ones_do(key: SigningKey) -> None:
    now = int(time.time())
    just_expired = mint(key.private, aud=key.audience, iat=now - 60, exp=now - 5)
    with pytest.raises(AuthError, match="expired"):
        verifier(key).verify(just_expired)
    # An external issuer's clock may be ahead or behind: LEEWAY tolerates that, and a live
    # grant then ends at the same moment a new connection would be refused.
    grant = verifier(key, own=False).verify(just_expired)
    assert grant.expires == now - 5 + LEEWAY
