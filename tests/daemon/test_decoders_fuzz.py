"""Fuzz invariant for every decoder outside the wire codec (tests/protocol has that one): any
input gives a value or the decoder's one documented error, never anything else.

Decoders: remote paths, scopes, tokens, the daemon config, manifests, staging journals,
known_hosts, the client config's tokens and the session-ticket file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import tempfile
import time
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fluxctl.tickets import TicketStore
from fluxctl.tokens import resolve_token
from fluxctl.trust import read_known_hosts
from fluxd.auth.scopes import Scope
from fluxd.auth.tokens import SigningKey, Verifier
from fluxd.config import ServerConfig, load_config
from fluxd.storage.local import Manifest
from fluxd.storage.paths import MAX_DEPTH, normalize
from fluxio.staging import HEADER_SIZE, StagedFile
from fluxproto import AuthError, ConfigError, PermissionDenied, StorageError
from fluxproto.frames import MAX_PATH
from tests.fuzzing import FUZZ, FUZZ_EXAMPLES

FUZZ_FILES = settings(FUZZ, max_examples=max(1, FUZZ_EXAMPLES // 4))  # each touches the disk

# Text that reaches the interesting branches: separators, dots, escapes, look-alikes.
path_chars = st.sampled_from(
    [*"/.%\\a2eEfF5cC0", "\x00", "\x1f", "\x85", "\u200b", "\u2025", "\uff0e", "\u2215"]
)
# Pieces of disguises: escapes of dots, slashes and percent signs, whole and in halves.
path_tokens = st.sampled_from(
    [
        *("/", ".", "%", "25", "2e", "2f", "0a", "%2e", "%25", "%ef%bc%8e", "%ef%bc", "%8e"),
        *("%e2%80%a5", "%e2%88%95", "%c0%ae", "%u002e", "u", "\uff05", "\uff12\uff45", "flux"),
    ]
)
paths = st.one_of(
    st.text(max_size=300),
    st.text(path_chars, max_size=60),
    st.lists(path_tokens, max_size=12).map("".join),
)


#: Rule 3 of PROTOCOL.md section 17 (private-use and unassigned code points are names).
REFUSED_CATS = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def greedy_reading(name: str) -> list[str]:
    """What a layer that percent-decodes and NFKC-folds until nothing changes sees, one round
    at a time: a simpler order than normalize's own, for an independent check."""
    seen = [name]
    while True:
        name = unicodedata.normalize("NFKC", urllib.parse.unquote(name, errors="strict"))
        if name in seen:
            return seen
        seen.append(name)


@FUZZ
@given(paths)
@example("a/" * (MAX_DEPTH + 1))
@example("%25" * 30 + "2e")
@example("%ef%bc%8e%ef%bc%8e")
@example("\uff05\uff12\uff45\uff05\uff12\uff45")
def test_normalize_gives_a_canonical_path_or_refuses(path: str) -> None:
    try:
        rel = normalize(path)
    except PermissionDenied:
        return
    assert normalize(rel) == rel  # canonical: a fixed point
    parts = rel.split("/") if rel else []
    assert ".." not in parts and "." not in parts and "" not in parts
    assert not rel.startswith("/") and len(rel.encode()) <= MAX_PATH
    assert not any(ord(c) < 0x20 or c in "\x7f\\" for c in rel)
    assert not (parts and parts[0].casefold() == ".flux")
    for part in parts:  # nothing hides in a decoded or compatibility form either
        for reading in greedy_reading(part):
            assert reading not in (".", "..")
            assert not any(c in "/\\" or unicodedata.category(c) in REFUSED_CATS for c in reading)


@FUZZ
@given(st.one_of(st.text(max_size=80), st.text(path_chars, max_size=20).map("write:/".__add__)))
def test_scope_parse_gives_a_scope_or_value_error(text: str) -> None:
    try:
        scope = Scope.parse(text)
    except ValueError:
        return
    assert Scope.parse(str(scope)) == scope


# --- tokens: random strings, and JWT-shaped strings with random parts ---------------------------

KEY = SigningKey.load_or_create(Path(tempfile.mkdtemp(prefix="fuzz-key-")))
VERIFIER = Verifier({KEY.kid: KEY.public}, KEY.audience, lambda jti: jti == "gone", "/u/{sub}")
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
claim_names = st.sampled_from(["sub", "jti", "iat", "nbf", "exp", "aud", "scope", "iss", "x"])


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@st.composite
def jwt_shaped(draw: st.DrawFn) -> str:
    header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ"]), json_values))
    if draw(st.booleans()):
        header["alg"] = "EdDSA"
    claims = draw(st.dictionaries(claim_names, json_values, max_size=8))
    if draw(st.booleans()):  # mostly-valid claims, so later checks are reached too
        now = int(time.time())
        claims = {"sub": "s", "jti": "j", "iat": now, "exp": now + 60, "aud": KEY.audience} | claims
    body = json.dumps(claims, default=str).encode()
    signature = draw(st.binary(max_size=80))
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


@FUZZ
@given(st.one_of(st.text(max_size=200), jwt_shaped()))
def test_verify_gives_a_grant_or_an_auth_error(token: str) -> None:
    try:
        VERIFIER.verify(token)
    except (AuthError, PermissionDenied):
        return
    raise AssertionError("a token nobody signed was accepted")


def sign(claims: dict[str, Any]) -> str:
    """A JWS over any claims at all (PyJWT's encoder refuses some; a hostile issuer would not)."""
    head = b64(json.dumps({"alg": "EdDSA", "kid": KEY.kid}).encode())
    body = b64(json.dumps(claims, default=str).encode())
    return f"{head}.{body}.{b64(KEY.private.sign(f'{head}.{body}'.encode()))}"


@FUZZ
@given(st.sampled_from(["a", "b"]), st.dictionaries(claim_names, json_values, max_size=8))
def test_signed_tokens_with_random_claims_never_crash(sub: str, extra: dict[str, Any]) -> None:
    now = int(time.time())
    claims = {"sub": sub, "jti": "j", "iat": now, "exp": now + 60, "aud": KEY.audience}
    try:
        grant = VERIFIER.verify(sign(claims | extra))
    except (AuthError, PermissionDenied):
        return
    assert grant.root == f"u/{grant.subject}" and grant.scopes


# --- files ---------------------------------------------------------------------------------------

toml_values = st.one_of(
    st.integers(-5, 10**12), st.booleans(), st.text(max_size=12), st.floats(allow_nan=True)
)
config_keys = st.sampled_from(
    ["root", "listen", "window", "log_level", "access_log", "tcp", "bogus", "max_chunk"]
)
table_keys = st.sampled_from(
    ["anonymous", "root", "audience", "max_header", "rate", "quota", "idle_timeout", "x"]
)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float) and v != v:
        return "nan"
    return str(v)


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    top = draw(st.dictionaries(config_keys, toml_values))
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for table in draw(st.lists(st.sampled_from(["auth", "limits", "other"]), max_size=2)):
        lines.append(f"[{table}]")
        pairs = draw(st.dictionaries(table_keys, toml_values, max_size=3))
        lines += [f"{k} = {toml_value(v)}" for k, v in pairs.items()]
    return "\n".join(lines) + "\n"


@FUZZ_FILES
@given(st.one_of(config_texts(), st.text(max_size=200)))
def test_config_loads_or_says_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fluxd.toml"
        path.write_text(text)
        with contextlib.suppress(ConfigError):
            assert isinstance(load_config(path, {}), ServerConfig)


manifest_fields = st.dictionaries(
    st.sampled_from(["path", "size", "chunk_size", "digest", "digests", "mtime_ns", "ino", "x"]),
    st.one_of(st.integers(-1, 2**45), st.binary(max_size=48), st.text(max_size=8), st.none()),
)


@FUZZ
@given(st.one_of(st.binary(max_size=200), manifest_fields.map(msgpack.packb)))
def test_manifest_unpack_gives_a_manifest_or_none(raw: bytes) -> None:
    manifest = Manifest.unpack(raw)
    assert manifest is None or isinstance(manifest, Manifest)


@FUZZ_FILES
@given(st.binary(max_size=300), st.booleans())
def test_a_journal_of_any_bytes_opens_or_fails_as_storage_error(raw: bytes, keep: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, journal = Path(tmp) / "data", Path(tmp) / "journal"
        fresh = StagedFile.open(data, journal, 3 * 4096, 4096)
        fresh.close()
        # Keep the real header (so records get parsed) or replace everything.
        good = journal.read_bytes()[:HEADER_SIZE] if keep else b""
        journal.write_bytes(good + raw)
        try:
            staged = StagedFile.open(data, journal, 3 * 4096, 4096)
        except StorageError:
            return
        assert set(staged.held) <= {0, 1, 2}
        staged.close()


@FUZZ_FILES
@given(st.text(max_size=300))
def test_known_hosts_parse_or_say_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "known_hosts"
        path.write_text(text)
        with contextlib.suppress(ConfigError):
            read_known_hosts(path)


@FUZZ_FILES
@given(st.one_of(st.text(max_size=200), config_texts()))
def test_client_config_tokens_resolve_or_say_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text)
        path.chmod(0o600)
        try:
            token = resolve_token(None, "h", 7070, path)
        except ConfigError:
            return
        assert token is None or (token and token.isprintable())


@FUZZ_FILES
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_ticket_file_of_any_bytes_means_no_ticket(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tickets.json"
        path.write_bytes(raw)
        assert TicketStore(path).load("h:7070") is None
