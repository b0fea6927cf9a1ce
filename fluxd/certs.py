"""Certificate generation (`fluxd certs init`, first `fluxd serve`), with `cryptography`.

Keys are ECDSA P-256, signatures SHA-256. The CA is valid for 10 years, the server certificate
for 2 years; both start one hour in the past so a client whose clock is slightly behind still
accepts a fresh certificate. The same files serve TCP+TLS and (later) QUIC.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluxio.tls import CertPaths, os_reason
from fluxproto.errors import ConfigError, map_exceptions

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=730)
#: Certificates start this far in the past to tolerate clients with slow clocks.
BACKDATE = datetime.timedelta(hours=1)
#: Names every server certificate carries, so loopback connections verify out of the box.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")

_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700

SAN = x509.DNSName | x509.IPAddress


def init_certs(directory: Path, hosts: Sequence[str] = (), *, force: bool = False) -> CertPaths:
    """Write a new CA and a server certificate signed by it into `directory`.

    The server certificate is valid for localhost, 127.0.0.1, ::1, this machine's hostname and
    every entry of `hosts` (DNS names or IP literals; IPv6 may be bracketed). Key files are
    created 0600 and the directory, when created, 0700. Each file is written to a temporary name
    and renamed into place, so a reader never sees a half-written file.

    Args:
        directory: the certificate directory, created if missing.
        hosts: extra names or addresses for the server certificate.
        force: replace existing files (invalidates pins and known_hosts entries of clients).

    Returns:
        The paths of the four files.

    Raises:
        ConfigError: a file exists and `force` is false, a host is not a valid name, or the
            directory cannot be written.
    """
    paths = CertPaths.in_dir(directory)
    sans = _subject_alt_names([*DEFAULT_HOSTS, *_own_hostname(), *hosts])
    with map_exceptions(
        {OSError: lambda e: ConfigError(f"cannot write to {directory}: {os_reason(e)}")}
    ):
        make_private_dir(directory)
        existing = [p.name for p in paths if os.path.lexists(p)]
        if existing and not force:
            raise ConfigError(
                f"{directory} already has {', '.join(existing)}; "
                "pass --force to replace them (clients that pinned or trusted the old "
                "certificate will then refuse the new one until updated)"
            )
        ca_key, ca_cert = _make_ca()
        server_key, server_cert = _make_server_cert(ca_key, ca_cert, sans)
        write_file(paths.ca_key, _key_pem(ca_key), _KEY_MODE)
        write_file(paths.ca_cert, _cert_pem(ca_cert), _CERT_MODE)
        write_file(paths.server_key, _key_pem(server_key), _KEY_MODE)
        write_file(paths.server_cert, _cert_pem(server_cert), _CERT_MODE)
    return paths


def ensure_certs(directory: Path) -> CertPaths:
    """Return the certificate files in `directory`, creating them on first use.

    Raises:
        ConfigError: only some of the four files exist (they are never silently regenerated,
            since that would break every client that trusts the current certificate), or
            they cannot be created.
    """
    paths = CertPaths.in_dir(directory)
    missing = [p.name for p in paths if not os.path.lexists(p)]
    if len(missing) == len(astuple(paths)):
        return init_certs(directory)
    if missing:
        raise ConfigError(
            f"incomplete certificate directory {directory}: missing {', '.join(missing)}; "
            f"restore them or run `fluxd certs init --force --dir {directory}`"
        )
    return paths


# --- generation -------------------------------------------------------------------------------


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A random suffix keeps CAs of different `certs init` runs apart by name, so a client given
    # the wrong CA fails with "unable to get issuer" rather than a confusing signature error.
    name = _name(f"fluxd CA {socket.gethostname()} {secrets.token_hex(4)}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, sans: list[SAN]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(
            _name(f"fluxd {socket.gethostname()}"),
            ca_cert.subject,
            key.public_key(),
            SERVER_VALIDITY,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    validity: datetime.timedelta,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fluxd"),
            # CN is limited to 64 characters by RFC 5280; hostnames can be longer.
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alt_names(hosts: Sequence[str]) -> list[SAN]:
    """One SAN per distinct host, IP literals as IPAddress and everything else as DNSName."""
    sans: list[SAN] = []
    for host in hosts:
        san = _san(host)
        if san not in sans:
            sans.append(san)
    return sans


def _own_hostname() -> list[str]:
    # Best effort: a machine name that is not a valid DNS name is left out, not an error.
    name = socket.gethostname()
    try:
        _san(name)
    except ConfigError:
        return []
    return [name]


def _san(host: str) -> SAN:
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    labels = name.removeprefix("*.").split(".")
    if not name or any(not label or not _is_dns_label(label) for label in labels):
        raise ConfigError(f"invalid host for the server certificate: {host!r}")
    try:
        # Certificates carry internationalised names in their ASCII (punycode) form.
        return x509.DNSName(name.encode("idna").decode("ascii"))
    except UnicodeError:
        raise ConfigError(f"invalid host for the server certificate: {host!r}") from None


def _is_dns_label(label: str) -> bool:
    # Underscores are not valid in hostnames but appear in real ones; TLS libraries match them.
    return len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)


# --- files ------------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return  # an existing directory is the user's; its mode is theirs to choose
    directory.mkdir(parents=True, mode=_DIR_MODE)
    os.chmod(directory, _DIR_MODE)  # mkdir's mode is filtered by the umask


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write via a fresh temporary file created with `mode`, then rename over `path`.

    Creating the file with its final mode (O_EXCL, so never an existing file with looser
    permissions) means a key is never readable by others, not even between open and chmod.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have removed bits we want (0644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
