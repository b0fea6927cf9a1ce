"""TLS at run time: where the certificate files live, the server context, fingerprints.

Standard library only, so the client (which needs `fingerprint`) starts without loading the
cryptography package; generating certificates lives in `fluxd.certs`. The four PEM files:

    ca.pem          CA certificate; give it to clients for `fluxctl --ca ca.pem`
    ca-key.pem      CA private key (0600); only needed to issue a new server certificate
    server.pem      server certificate, signed by the CA
    server-key.pem  server private key (0600)
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

from fluxproto.errors import ConfigError, map_exceptions
from fluxproto.frames import ALPN_ACCEPT

REGENERATE_HINT = "run `fluxd certs init --force` to regenerate"
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True)
class CertPaths:
    """Where the four PEM files of a certificate directory live."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CertPaths:
        """The standard file names inside `directory` (nothing is read or checked)."""
        return cls(
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca-key.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server-key.pem",
        )

    def __iter__(self) -> Iterator[Path]:
        return iter(astuple(self))


def server_ssl_context(paths: CertPaths, alpn: Sequence[str] = ALPN_ACCEPT) -> ssl.SSLContext:
    """A TLS 1.3-only server context with the server certificate, accepting ALPN flux/2 and
    flux/1 (preferring flux/2): a version-1 client then still reaches HELLO and hears ERROR
    505 with the remedy, instead of a TLS alert. `alpn`: other protocols instead (the HTTP
    listener's `http/1.1`).

    Raises:
        ConfigError: the certificate or key is unreadable, invalid, or they do not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(list(alpn))
    where = f"{paths.server_cert} / {paths.server_key}"
    with map_exceptions(
        {
            ssl.SSLError: lambda e: ConfigError(
                f"invalid server certificate or key ({where}): {_ssl_reason(e)}; {REGENERATE_HINT}"
            ),
            OSError: lambda e: ConfigError(f"cannot read {where}: {os_reason(e)}"),
        }
    ):
        ctx.load_cert_chain(paths.server_cert, paths.server_key)
    return ctx


def fingerprint(der: bytes) -> str:
    """`sha256:` and the lowercase hex SHA-256 of a DER certificate (what `--pin` takes).

    The same digest as `openssl x509 -fingerprint -sha256`, without the colons.
    """
    return "sha256:" + hashlib.sha256(der).hexdigest()


def cert_fingerprint(pem_path: Path) -> str:
    """The fingerprint of the first certificate in a PEM file.

    Raises:
        ConfigError: the file is unreadable or holds no valid certificate.
    """
    with map_exceptions(
        {
            ValueError: lambda e: ConfigError(f"{pem_path} is not a PEM certificate: {e}"),
            OSError: lambda e: ConfigError(f"cannot read {pem_path}: {os_reason(e)}"),
        }
    ):
        text = pem_path.read_text(encoding="ascii")
        begin = text.find(_PEM_BEGIN)
        end = text.find(_PEM_END, begin)
        if begin < 0 or end < 0:
            raise ValueError("no certificate found")
        der = ssl.PEM_cert_to_DER_cert(text[begin : end + len(_PEM_END)])
    return fingerprint(der)


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    # OpenSSL reports unparsable files as a bare "[SSL] PEM lib (_ssl.c:NNNN)".
    return "not a valid PEM certificate and private key" if reason in (None, "PEM_LIB") else reason
