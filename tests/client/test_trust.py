"""The client trust policy: --ca, --pin and known_hosts (TOFU), over real TLS handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fluxctl.trust import (
    TrustPolicy,
    check_alpn,
    check_peer,
    client_ssl_context,
    config_dir,
    explain_untrusted,
    host_key,
    read_known_hosts,
)
from fluxd.certs import init_certs
from fluxio.tls import CertPaths, cert_fingerprint, fingerprint, server_ssl_context
from fluxio.transports import tcp
from fluxproto.errors import (
    ConfigError,
    ConnectError,
    RemoteProtocolError,
    TrustError,
)

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return init_certs(tmp_path / "certs")


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "config" / "fluxctl" / "known_hosts"


def tofu(known_hosts: Path) -> TrustPolicy:
    return TrustPolicy.from_options(None, None, known_hosts)


# --- real handshakes --------------------------------------------------------------------------


@dataclass
class Peer:
    port: int
    version: str | None
    alpn: str | None
    der: bytes | None


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext, port: int = 0) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that holds each connection until the client closes it."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", port, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def tls_connect(
    client_ctx: ssl.SSLContext, port: int, server_hostname: str = "127.0.0.1"
) -> Peer:
    """Connect the way fluxctl.connect does: the TCP transport maps ssl errors where they
    enter, and the client says what to check about a certificate the TLS layer refused."""
    with explain_untrusted():
        sock = await tcp.open_connection("127.0.0.1", port, client_ctx, server_hostname, 5)
    with sock:
        assert isinstance(sock, ssl.SSLSocket)
        return Peer(
            port, sock.version(), sock.selected_alpn_protocol(), sock.getpeercert(binary_form=True)
        )


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> Peer:
    async def run() -> Peer:
        async with tls_server(server_ctx) as port:
            return await tls_connect(client_ctx, port, server_hostname)

    return asyncio.run(run())


def connect_checked(
    server: CertPaths, policy: TrustPolicy, port: int = 0, on_new: list[str] | None = None
) -> str:
    """Handshake with the policy's context, then check_peer as the client does."""

    async def run() -> str:
        async with tls_server(server_ssl_context(server), port) as bound:
            peer = await tls_connect(client_ssl_context(policy), bound)
        check_alpn(peer.alpn)
        callback = on_new.append if on_new is not None else None
        return check_peer(policy, "127.0.0.1", bound, peer.der, callback)

    return asyncio.run(run())


def test_ca_handshake_negotiates_tls13_and_alpn(certs: CertPaths, known_hosts: Path) -> None:
    policy = TrustPolicy.from_options(certs.ca_cert, None, known_hosts)
    for name in ("127.0.0.1", "localhost"):
        peer = handshake(server_ssl_context(certs), client_ssl_context(policy), name)
        assert (peer.version, peer.alpn) == ("TLSv1.3", "flux/2")
        check_alpn(peer.alpn)
        fp = check_peer(policy, "127.0.0.1", peer.port, peer.der)
        assert fp == cert_fingerprint(certs.server_cert)
    assert not known_hosts.exists()  # a CA policy never writes known_hosts


def test_ca_of_another_server_is_a_trust_error(certs: CertPaths, tmp_path: Path) -> None:
    other = init_certs(tmp_path / "other")
    client = client_ssl_context(TrustPolicy.from_options(other.ca_cert, None))
    with pytest.raises(TrustError, match="not trusted") as info:
        handshake(server_ssl_context(certs), client)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert info.value.exit_code == 4
    assert not info.value.retryable


def test_ca_with_wrong_hostname_is_a_trust_error(certs: CertPaths) -> None:
    client = client_ssl_context(TrustPolicy.from_options(certs.ca_cert, None))
    with pytest.raises(TrustError, match=r"[Hh]ostname mismatch"):
        handshake(server_ssl_context(certs), client, "elsewhere.example")


def test_pin_accepts_exactly_that_certificate(certs: CertPaths, known_hosts: Path) -> None:
    pin = cert_fingerprint(certs.server_cert).upper()
    policy = TrustPolicy.from_options(None, pin, known_hosts)
    assert policy.pin == pin.lower()
    assert connect_checked(certs, policy) == pin.lower()
    assert not known_hosts.exists()


def test_wrong_pin_is_a_trust_error(certs: CertPaths, known_hosts: Path) -> None:
    policy = TrustPolicy.from_options(None, FP_A, known_hosts)
    with pytest.raises(TrustError, match="does not match --pin") as info:
        connect_checked(certs, policy)
    assert cert_fingerprint(certs.server_cert) in info.value.message
    assert FP_A in info.value.message
    assert not known_hosts.exists()


def test_ca_and_pin_together_both_apply(certs: CertPaths) -> None:
    good = TrustPolicy.from_options(certs.ca_cert, cert_fingerprint(certs.server_cert))
    connect_checked(certs, good)
    with pytest.raises(TrustError, match="--pin"):
        connect_checked(certs, TrustPolicy.from_options(certs.ca_cert, FP_A))


def test_tofu_records_first_use_then_stays_silent(certs: CertPaths, known_hosts: Path) -> None:
    messages: list[str] = []
    fp = connect_checked(certs, tofu(known_hosts), on_new=messages)
    assert fp == cert_fingerprint(certs.server_cert)
    assert len(messages) == 1
    assert messages[0].startswith("trusting new server 127.0.0.1:")
    assert fp in messages[0]
    port = int(messages[0].split(":")[1].split(",")[0])
    assert known_hosts.read_text() == f"127.0.0.1:{port} {fp}\n"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(known_hosts.parent.stat().st_mode) == 0o700

    assert connect_checked(certs, tofu(known_hosts), port, messages) == fp
    assert len(messages) == 1  # known now: no message, no new line
    assert known_hosts.read_text() == f"127.0.0.1:{port} {fp}\n"


def test_tofu_refuses_a_changed_certificate(certs: CertPaths, known_hosts: Path) -> None:
    messages: list[str] = []
    old = connect_checked(certs, tofu(known_hosts), on_new=messages)
    port = int(messages[0].split(":")[1].split(",")[0])
    before = known_hosts.read_bytes()

    init_certs(certs.server_cert.parent, force=True)
    new = cert_fingerprint(certs.server_cert)
    with pytest.raises(TrustError, match="CHANGED") as info:
        connect_checked(certs, tofu(known_hosts), port, messages)
    message = info.value.message
    for part in (old, new, str(known_hosts), "line 1", f"--pin {new}", f"127.0.0.1:{port}"):
        assert part in message
    assert "\n" not in message
    assert known_hosts.read_bytes() == before
    assert len(messages) == 1

    # The two documented ways out: pin the new certificate, or forget the old line.
    assert connect_checked(certs, TrustPolicy.from_options(None, new, known_hosts), port) == new
    known_hosts.write_text("")
    assert connect_checked(certs, tofu(known_hosts), port, messages) == new
    assert len(messages) == 2


def test_server_without_alpn_is_a_protocol_error(certs: CertPaths) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    peer = handshake(server, client_ssl_context(TrustPolicy.from_options(certs.ca_cert, None)))
    assert peer.alpn is None
    with pytest.raises(RemoteProtocolError, match="server does not speak flux/2 or flux/1"):
        check_alpn(peer.alpn)


def test_check_alpn() -> None:
    check_alpn("flux/2")
    check_alpn("flux/1")  # a version-1 server: its ERROR 505 says what to upgrade
    with pytest.raises(RemoteProtocolError, match=r"selected 'h2'"):
        check_alpn("h2")


def test_tls12_only_server_is_a_connect_error(certs: CertPaths) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(certs.server_cert, certs.server_key)
    with pytest.raises(ConnectError):
        handshake(server, client_ssl_context(TrustPolicy.from_options(certs.ca_cert, None)))


def test_plaintext_server_is_a_connect_error(known_hosts: Path) -> None:
    async def run() -> None:
        async def speak_http(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(speak_http, "127.0.0.1", 0)
        try:
            await tls_connect(
                client_ssl_context(tofu(known_hosts)), server.sockets[0].getsockname()[1]
            )
        finally:
            server.close()
            await server.wait_closed()

    with pytest.raises(ConnectError, match=r"TLS handshake with 127\.0\.0\.1:\d+ failed") as info:
        asyncio.run(run())
    assert "does not speak TLS 1.3" in info.value.message
    assert isinstance(info.value.__cause__, ssl.SSLError)
    assert info.value.retryable


def test_explain_untrusted_adds_what_to_check_and_keeps_the_cause() -> None:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    hinted = r"not trusted: x \(is --ca the ca\.pem"
    with pytest.raises(TrustError, match=hinted) as info, explain_untrusted():
        raise TrustError("certificate of h:1 not trusted: x") from cause
    assert info.value.__cause__ is cause
    with pytest.raises(ConnectError, match=r"^as it was$"), explain_untrusted():
        raise ConnectError("as it was")


# --- check_peer and known_hosts ---------------------------------------------------------------


def test_missing_certificate_is_a_trust_error(known_hosts: Path) -> None:
    for der in (None, b""):
        with pytest.raises(TrustError, match="no certificate"):
            check_peer(tofu(known_hosts), "h", 1, der)
    assert not known_hosts.exists()


def test_known_hosts_keys_are_normalised(known_hosts: Path) -> None:
    assert host_key("::1", 7070) == "[::1]:7070"
    assert host_key("[0:0::1]", 7070) == "[::1]:7070"
    assert host_key("Files.Example.com.", 1) == "files.example.com:1"
    assert host_key("10.0.0.1", 2) == "10.0.0.1:2"
    seen: list[str] = []
    check_peer(tofu(known_hosts), "::1", 7070, b"cert", seen.append)
    check_peer(tofu(known_hosts), "[::1]", 7070, b"cert", seen.append)
    assert known_hosts.read_text() == f"[::1]:7070 {fingerprint(b'cert')}\n"
    assert len(seen) == 1


def test_known_hosts_is_per_port(known_hosts: Path) -> None:
    check_peer(tofu(known_hosts), "h", 1, b"one")
    check_peer(tofu(known_hosts), "h", 2, b"two")
    with pytest.raises(TrustError):
        check_peer(tofu(known_hosts), "h", 1, b"two")


def test_known_hosts_tolerates_comments_blank_lines_and_case(known_hosts: Path) -> None:
    known_hosts.parent.mkdir(parents=True)
    known_hosts.write_text(
        f"# servers I trust\n\n  FILES.example.com:7070   {FP_A.upper()}  \n[::1]:9 {FP_B}\n"
    )
    entries = read_known_hosts(known_hosts)
    assert [e.fingerprint for e in entries["files.example.com:7070"]] == [FP_A]
    assert [e.line for e in entries["[::1]:9"]] == [4]


def test_any_matching_line_is_accepted(known_hosts: Path) -> None:
    # Lets an admin add the next certificate's fingerprint before rotating.
    known_hosts.parent.mkdir(parents=True)
    known_hosts.write_text(f"h:1 {FP_A}\nh:1 {fingerprint(b'next')}\n")
    check_peer(tofu(known_hosts), "h", 1, b"next")


def test_append_after_a_line_without_newline(known_hosts: Path) -> None:
    known_hosts.parent.mkdir(parents=True)
    known_hosts.write_text(f"a:1 {FP_A}")
    check_peer(tofu(known_hosts), "b", 2, b"cert")
    assert known_hosts.read_text() == f"a:1 {FP_A}\nb:2 {fingerprint(b'cert')}\n"


@pytest.mark.parametrize(
    "line",
    [
        "justonefield",
        f"host {FP_A}",
        f"host:99999 {FP_A}",
        f"host:1 {FP_A} extra",
        "host:1 sha256:abc",
        f"host:1 md5:{'a' * 64}",
        f"::1:7070 {FP_A}",
        f"[nope]:7070 {FP_A}",
    ],
)
def test_malformed_known_hosts_names_file_and_line(known_hosts: Path, line: str) -> None:
    known_hosts.parent.mkdir(parents=True)
    known_hosts.write_text(f"# ok\nh:1 {FP_A}\n{line}\n")
    with pytest.raises(ConfigError, match="line 3") as info:
        check_peer(tofu(known_hosts), "h", 1, b"cert")
    assert str(known_hosts) in info.value.message


def test_unwritable_known_hosts_is_a_config_error(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: str, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "open", refuse)  # tests run as root, so chmod would not stop us
    with pytest.raises(ConfigError, match=r"cannot record .*Permission denied.*--pin sha256:"):
        check_peer(tofu(known_hosts), "h", 1, b"cert")


def test_unreadable_known_hosts_is_a_config_error(known_hosts: Path) -> None:
    known_hosts.mkdir(parents=True)
    with pytest.raises(ConfigError, match="cannot read"):
        check_peer(tofu(known_hosts), "h", 1, b"cert")


def test_known_hosts_permissions_survive_umask(known_hosts: Path) -> None:
    old = os.umask(0)
    try:
        check_peer(tofu(known_hosts), "h", 1, b"cert")
    finally:
        os.umask(old)
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(known_hosts.parent.stat().st_mode) == 0o700


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pin",
    ["", "a" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "g" * 64, "sha1:ab"],
)
def test_malformed_pin_is_a_config_error(pin: str) -> None:
    with pytest.raises(ConfigError, match="sha256: followed by 64 hex"):
        TrustPolicy.from_options(None, pin)


def test_pin_is_normalised_however_the_policy_is_built() -> None:
    assert TrustPolicy(pin=FP_A.upper()).pin == FP_A
    assert TrustPolicy.from_options(None, f" {FP_A.upper()} ").pin == FP_A


def test_bad_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        TrustPolicy.from_options(tmp_path / "missing.pem", None)
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="no valid PEM certificate"):
        TrustPolicy.from_options(tmp_path / "bad.pem", None)
    with pytest.raises(ConfigError):
        TrustPolicy.from_options(tmp_path, None)


def test_ca_removed_after_validation_is_a_config_error(certs: CertPaths, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certs.ca_cert.read_bytes())
    policy = TrustPolicy.from_options(ca, None)
    ca.unlink()
    with pytest.raises(ConfigError, match="cannot load --ca"):
        client_ssl_context(policy)


def test_client_context_settings(certs: CertPaths) -> None:
    with_ca = client_ssl_context(TrustPolicy.from_options(certs.ca_cert, None))
    assert with_ca.verify_mode == ssl.CERT_REQUIRED
    assert with_ca.check_hostname
    for policy in (TrustPolicy.from_options(None, FP_A), TrustPolicy.from_options(None, None)):
        ctx = client_ssl_context(policy)
        assert ctx.verify_mode == ssl.CERT_NONE
        assert not ctx.check_hostname
    for ctx in (with_ca, client_ssl_context(TrustPolicy())):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "fluxctl"
    assert TrustPolicy().known_hosts == tmp_path / "xdg" / "fluxctl" / "known_hosts"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("", "relative/dir"):
        monkeypatch.setenv("XDG_CONFIG_HOME", unset)
        assert config_dir() == tmp_path / "home" / ".config" / "fluxctl"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config_dir() == tmp_path / "home" / ".config" / "fluxctl"
