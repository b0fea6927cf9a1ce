"""Tokens against a real daemon: every refusal exits 4 with one line and lands in the access log."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import BIN, Daemon, Fluxctl, _env, wait_for
from .test_errors import one_line

FULL = ("--scope", "read:/", "--scope", "write:/", "--scope", "list:/", "--scope", "delete:/")


def fluxd(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fluxd"), *args, "--certs", str(daemon.certs)],
        capture_output=True,
        text=True,
        env=_env(daemon.home),
        timeout=60,
        check=False,
    )


def issue(daemon: Daemon, sub: str, *scopes: str, ttl: str = "1h") -> str:
    p = fluxd(daemon, "token", "issue", "--sub", sub, *scopes, "--ttl", ttl)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def daemon_key(daemon: Daemon) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(
        (daemon.certs / "token-key.pem").read_bytes(), password=None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return key


def mint(key: Ed25519PrivateKey, daemon: Daemon, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": "mallory", "iat": now, "exp": now + 600, "jti": "m1"}
    body.update(aud=audience(daemon), scope="read:/ write:/ list:/ delete:/")
    body.update(claims)
    return jwt.encode(body, key, algorithm="EdDSA")


def audience(daemon: Daemon) -> str:
    return str(daemon.events("listening")[0]["audience"])


def access(daemon: Daemon, op: str | None = None) -> list[dict[str, Any]]:
    return [r for r in daemon.events("access") if op is None or r["op"] == op]


@pytest.fixture
def locked(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A loopback daemon with anonymous access switched off."""
    return make_daemon("--no-anonymous")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(50_000))
    return path


def refused_with(res: Any, text: str) -> None:
    assert res.code == 4, res.stderr
    assert text in one_line(res.stderr)


def test_no_token_is_refused_and_logged(locked: Daemon, fluxctl: Fluxctl) -> None:
    res = fluxctl("stat", locked.url("/"))
    refused_with(res, "requires a token")
    wait_for(lambda: bool(access(locked, "connect")), 10, "the access record")
    record = access(locked, "connect")[0]
    assert record["result"].startswith("error 401")
    assert record["subject"] is None and record["peer"].startswith("127.0.0.1:")


def test_scoped_token_allows_exactly_its_verbs_and_paths(
    locked: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path
) -> None:
    token = issue(locked, "alice", "--scope", "write:/in/", "--scope", "read:/in/")
    t = ("--token", token)
    assert fluxctl("send", str(small), locked.url("/in/a.bin"), *t).code == 0
    got = tmp_path / "got.bin"
    assert fluxctl("recv", locked.url("/in/a.bin"), str(got), *t).code == 0
    assert got.read_bytes() == small.read_bytes()
    assert fluxctl("stat", locked.url("/in/a.bin"), *t).code == 0  # read covers stat
    refused_with(fluxctl("send", str(small), locked.url("/out/a.bin"), *t), "write on /out")
    refused_with(fluxctl("send", str(small), locked.url("/in2/a.bin"), *t), "write on /in2")
    refused_with(fluxctl("rm", locked.url("/in/a.bin"), *t), "does not allow delete")
    refused_with(fluxctl("ls", locked.url("/"), *t), "does not allow list")
    assert not (locked.root / "out").exists() and not (locked.root / "in2").exists()
    assert (locked.root / "in" / "a.bin").exists()
    uploads = access(locked, "upload")
    assert uploads[0]["result"] == "ok"
    assert {u["subject"] for u in uploads} == {"alice"}
    assert all(u["jti"] for u in uploads)
    assert any(u["result"].startswith("error 403") for u in uploads)
    assert access(locked, "delete")[0]["result"].startswith("error 403")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-signature", "signature"),
        ("other-key", "signature"),
        ("expired", "expired"),
        ("not-yet-valid", "not valid yet"),
        ("wrong-audience", "another server"),
        ("garbage", "malformed"),
    ],
)
def test_bad_tokens_are_refused_with_exit_4_and_logged(
    locked: Daemon, fluxctl: Fluxctl, case: str, expected: str
) -> None:
    key, now = daemon_key(locked), int(time.time())
    tokens = {
        "bad-signature": lambda: issue(locked, "alice", *FULL)[:-6] + "AAAAAA",
        "other-key": lambda: mint(Ed25519PrivateKey.generate(), locked),
        "expired": lambda: mint(key, locked, iat=now - 7200, exp=now - 3600),
        "not-yet-valid": lambda: mint(key, locked, nbf=now + 3600),
        "wrong-audience": lambda: mint(key, locked, aud="fluxd:0000000000000000"),
        "garbage": lambda: "not-a-token",
    }
    res = fluxctl("ls", locked.url("/"), "--token", tokens[case](), "--json")
    refused_with(res, expected)
    assert res.json["exit_code"] == 4
    wait_for(lambda: bool(access(locked, "connect")), 10, "the access record")
    assert expected in access(locked, "connect")[0]["result"]


def test_revocation_reaches_a_running_daemon_and_its_live_transfers(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    config = tmp_path / "fluxd.toml"
    config.write_text('[limits]\nrate_per_subject = "1M"\n')
    d = make_daemon("--no-anonymous", "--config", str(config))
    token = issue(d, "alice", *FULL)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert fluxctl("ls", d.url("/"), "--token", token).code == 0
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(30 * 1024 * 1024))  # ~30 s at 1 MB/s: still running below
    sender = fluxctl.spawn("send", str(big), d.url("/big.bin"), "--token", token)
    wait_for(lambda: bool(access(d, "connect")) or _staged(d), 30, "the upload to start")
    p = fluxd(d, "token", "revoke", jti)
    assert p.returncode == 0 and f"revoked {jti}" in p.stdout
    revoked_at = time.monotonic()
    _, err = sender.communicate(timeout=60)
    assert sender.returncode == 4, err
    assert "revoked" in err
    assert time.monotonic() - revoked_at < 5 + 1  # the 5 s promise, plus process exit
    refused_with(fluxctl("ls", d.url("/"), "--token", token), "revoked")
    assert not (d.root / "big.bin").exists()
    listed = fluxd(d, "token", "list")
    assert f"{jti}  revoked" in listed.stdout


def _staged(d: Daemon) -> bool:
    staging = d.root / ".flux" / "staging"
    return any(p.name == "data" and p.stat().st_size > 0 for p in staging.rglob("data"))


def test_subjects_are_confined_to_their_own_root(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, small: Path, tmp_path: Path
) -> None:
    config = tmp_path / "fluxd.toml"
    config.write_text('[auth]\nanonymous = false\nroot = "/users/{sub}"\n')
    d = make_daemon("--config", str(config))
    alice, bob = issue(d, "alice", *FULL), issue(d, "bob", *FULL)
    empty = fluxctl("ls", d.url("/"), "--token", bob, "--json")
    assert empty.code == 0 and empty.json["entries"] == []
    assert fluxctl("send", str(small), d.url("/a.bin"), "--token", alice).code == 0
    assert (d.root / "users" / "alice" / "a.bin").read_bytes() == small.read_bytes()
    listing = fluxctl("ls", d.url("/"), "--token", alice, "--json")
    assert [e["name"] for e in listing.json["entries"]] == ["a.bin"]
    assert fluxctl("ls", d.url("/"), "--token", bob, "--json").json["entries"] == []
    out = tmp_path / "stolen"
    refused_with(fluxctl("recv", d.url("/../alice/a.bin"), str(out), "--token", bob), "'..'")
    assert fluxctl("recv", d.url("/a.bin"), str(out), "--token", bob).code == 6  # not found
    assert not out.exists()


def test_token_from_environment_and_from_the_config_file(
    locked: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    token = issue(locked, "carol", "--scope", "list:/")
    assert fluxctl("ls", locked.url("/"), env={"FLUX_TOKEN": token}).code == 0
    conf_dir = locked.home / "client-config" / "fluxctl"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "config.toml"
    conf.write_text(f'[servers."127.0.0.1:{locked.port}"]\ntoken = "{token}"\n')
    conf.chmod(0o600)
    assert fluxctl("ls", locked.url("/")).code == 0
    conf.chmod(0o644)
    res = fluxctl("ls", locked.url("/"))
    assert res.code == 2
    assert "chmod 600" in one_line(res.stderr)
    # The flag wins over the file: a bad flag token is refused even with a good file entry.
    conf.chmod(0o600)
    refused_with(fluxctl("ls", locked.url("/"), "--token", "nope"), "malformed")


def test_external_issuer_key(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    issuer = Ed25519PrivateKey.generate()
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(
        issuer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = tmp_path / "fluxd.toml"
    config.write_text(
        f'[auth]\nanonymous = false\naudience = "fluxd:test"\ntrusted_keys = ["{pem}"]\n'
    )
    d = make_daemon("--config", str(config))
    now = int(time.time())
    claims = {"sub": "svc", "aud": "fluxd:test", "iat": now, "exp": now + 60, "jti": "ext-1"}
    token = jwt.encode({**claims, "scope": "list:/"}, issuer, algorithm="EdDSA")
    assert fluxctl("ls", d.url("/"), "--token", token).code == 0
    assert access(d, "list")[0]["subject"] == "svc"
    assert access(d, "list")[0]["jti"] == "ext-1"
