"""Certificate generation, the certificate directory and the server TLS context."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fluxd.certs import ensure_certs, init_certs
from fluxio.tls import CertPaths, cert_fingerprint, fingerprint, server_ssl_context
from fluxproto.errors import ConfigError


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return init_certs(tmp_path / "certs")


# --- init_certs -------------------------------------------------------------------------------


def test_init_writes_four_files_with_private_modes(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "certs"
    paths = init_certs(directory)
    assert paths == CertPaths.in_dir(directory)
    assert [p.name for p in paths] == ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"]
    assert mode(directory) == 0o700
    assert mode(paths.ca_key) == mode(paths.server_key) == 0o600
    assert mode(paths.ca_cert) == mode(paths.server_cert) == 0o644
    assert sorted(os.listdir(directory)) == sorted(p.name for p in paths)  # no temp files left


def test_keys_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = init_certs(tmp_path / "certs")
    finally:
        os.umask(old)
    assert mode(paths.ca_key) == mode(paths.server_key) == 0o600
    assert mode(tmp_path / "certs") == 0o700


def test_keys_are_created_private_not_chmodded_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    init_certs(tmp_path)
    keys = [(p, f, m) for p, f, m in opened if "-key.pem" in p]
    assert len(keys) == 2
    for _, flags, key_mode in keys:
        assert key_mode == 0o600
        assert flags & os.O_EXCL  # a fresh file, never an old one with looser permissions


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    init_certs(tmp_path)
    assert mode(tmp_path) == 0o755


def test_refuses_to_overwrite_without_force(certs: CertPaths) -> None:
    before = {p: p.read_bytes() for p in certs}
    with pytest.raises(ConfigError, match="--force"):
        init_certs(certs.server_cert.parent)
    assert {p: p.read_bytes() for p in certs} == before


def test_refuses_when_any_single_file_exists(tmp_path: Path) -> None:
    (tmp_path / "server-key.pem").write_text("mine")
    with pytest.raises(ConfigError, match=r"server-key\.pem"):
        init_certs(tmp_path)
    assert os.listdir(tmp_path) == ["server-key.pem"]


def test_force_replaces_and_tightens_old_loose_key(certs: CertPaths) -> None:
    old = cert_fingerprint(certs.server_cert)
    certs.server_key.chmod(0o644)
    init_certs(certs.server_cert.parent, force=True)
    assert cert_fingerprint(certs.server_cert) != old
    assert mode(certs.server_key) == 0o600


def test_certificate_profile(certs: CertPaths) -> None:
    ca, server = load(certs.ca_cert), load(certs.server_cert)
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
    now = datetime.datetime.now(datetime.UTC)
    assert ca.not_valid_before_utc < now < ca.not_valid_after_utc
    assert server.not_valid_before_utc < now < server.not_valid_after_utc
    ca_days = (ca.not_valid_after_utc - now).days
    server_days = (server.not_valid_after_utc - now).days
    assert 3649 <= ca_days <= 3650
    assert 729 <= server_days <= 730


def sans(cert: x509.Certificate) -> tuple[list[str], Sequence[object]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), ext.get_values_for_type(x509.IPAddress)


def test_default_and_extra_subject_alt_names(tmp_path: Path) -> None:
    extra = ["files.example.com", "10.1.2.3", "2001:db8::7", "[fe80::1]", "Files.Example.COM."]
    dns, ips = sans(load(init_certs(tmp_path, extra).server_cert))
    assert dns[0] == "localhost"
    assert socket.gethostname().lower() in dns
    assert dns.count("files.example.com") == 1  # case and trailing dot normalised, deduplicated
    assert ips == [
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "2001:db8::7", "fe80::1")
    ]


def test_unusable_machine_name_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "my laptop")
    dns, _ = sans(load(init_certs(tmp_path).server_cert))
    assert dns == ["localhost"]


def test_internationalised_name_is_stored_as_punycode(tmp_path: Path) -> None:
    dns, _ = sans(load(init_certs(tmp_path, ["bücher.example"]).server_cert))
    assert "xn--bcher-kva.example" in dns


@pytest.mark.parametrize("bad", ["", "two words", "a/b", "host:22", "a..b", "x" * 64 + ".com"])
def test_invalid_host_is_a_config_error_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid host"):
        init_certs(tmp_path / "certs", [bad])
    assert not (tmp_path / "certs").exists()


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        init_certs(blocker / "certs")


def test_strict_x509_verification_accepts_the_chain(certs: CertPaths) -> None:
    # Python 3.13 turns on VERIFY_X509_STRICT by default; the certificates must pass it.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=certs.ca_cert)
    assert handshake(server_ssl_context(certs), ctx, "localhost") == ("TLSv1.3", None)


# --- ensure_certs -----------------------------------------------------------------------------


def test_ensure_creates_when_missing_then_reuses(tmp_path: Path) -> None:
    paths = ensure_certs(tmp_path / "certs")
    fp = cert_fingerprint(paths.server_cert)
    assert ensure_certs(tmp_path / "certs") == paths
    assert cert_fingerprint(paths.server_cert) == fp


def test_ensure_creates_in_existing_empty_directory(tmp_path: Path) -> None:
    assert ensure_certs(tmp_path).server_key.exists()


def test_ensure_refuses_partial_directory(certs: CertPaths) -> None:
    certs.server_key.unlink()
    certs.ca_key.unlink()
    with pytest.raises(ConfigError, match=r"missing ca-key\.pem, server-key\.pem.*--force") as info:
        ensure_certs(certs.server_cert.parent)
    assert "\n" not in info.value.message
    assert not certs.server_key.exists()  # nothing regenerated behind the user's back


# --- server context ---------------------------------------------------------------------------


def test_server_context_settings(certs: CertPaths) -> None:
    ctx = server_ssl_context(certs)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["flux/2", "flux/1"], "flux/2"),  # a version-2 client
        (["flux/1", "flux/2"], "flux/2"),  # the server's preference wins
        (["flux/1"], "flux/1"),  # a version-1 client still reaches HELLO and hears ERROR 505
    ],
)
def test_server_handshake_negotiates_tls13_and_alpn(
    certs: CertPaths, offered: list[str], selected: str
) -> None:
    client = ssl.create_default_context(cafile=certs.ca_cert)
    client.set_alpn_protocols(offered)
    assert handshake(server_ssl_context(certs), client, "127.0.0.1") == ("TLSv1.3", selected)


def test_server_refuses_tls12(certs: CertPaths) -> None:
    client = ssl.create_default_context(cafile=certs.ca_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(server_ssl_context(certs), client, "localhost")


@pytest.mark.parametrize("broken", ["server_cert", "server_key"])
def test_garbage_file_is_a_one_line_config_error(certs: CertPaths, broken: str) -> None:
    getattr(certs, broken).write_text("not pem\n")
    with pytest.raises(ConfigError, match="not a valid PEM") as info:
        server_ssl_context(certs)
    assert "\n" not in info.value.message


def test_missing_file_is_a_config_error(certs: CertPaths) -> None:
    certs.server_key.unlink()
    with pytest.raises(ConfigError, match="No such file"):
        server_ssl_context(certs)


def test_key_of_another_certificate_is_a_config_error(certs: CertPaths, tmp_path: Path) -> None:
    other = init_certs(tmp_path / "other")
    mixed = CertPaths(certs.ca_cert, certs.ca_key, certs.server_cert, other.server_key)
    with pytest.raises(ConfigError, match="does not belong"):
        server_ssl_context(mixed)


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_der(certs: CertPaths) -> None:
    der = ssl.PEM_cert_to_DER_cert(certs.server_cert.read_text())
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert fingerprint(der) == expected
    assert cert_fingerprint(certs.server_cert) == expected


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_fingerprint_matches_openssl(certs: CertPaths) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(certs.server_cert), "-noout", "-fingerprint", "-sha256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    hexdigits = out.strip().split("=", 1)[1].replace(":", "").lower()
    assert cert_fingerprint(certs.server_cert) == f"sha256:{hexdigits}"


def test_cert_fingerprint_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        cert_fingerprint(tmp_path / "missing.pem")
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        cert_fingerprint(tmp_path / "bad.pem")


# --- helpers ----------------------------------------------------------------------------------


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[str | None, str | None]:
    """One TLS handshake over 127.0.0.1; returns (version, ALPN) as the client sees them."""
    with (
        serve_once(server_ctx) as port,
        socket.create_connection(("127.0.0.1", port), 5) as raw,
        client_ctx.wrap_socket(raw, server_hostname=server_hostname) as conn,
    ):
        return conn.version(), conn.selected_alpn_protocol()


@contextlib.contextmanager
def serve_once(ctx: ssl.SSLContext) -> Iterator[int]:
    """Accept one TLS connection on an ephemeral port in a thread; yields the port."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        thread = threading.Thread(target=_accept, args=(listener, ctx), daemon=True)
        thread.start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            thread.join(5)


def _accept(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    try:
        conn, _ = listener.accept()
        conn.settimeout(5)
        with ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.recv(1)  # until the client closes
    except OSError:
        pass  # handshake refused or aborted: the client side of the test reports it
