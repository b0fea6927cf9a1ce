"""Which servers fluxctl trusts: a CA (--ca), a pinned fingerprint (--pin), or known_hosts (TOFU).

Trust is decided in this order:

1. `--ca FILE`: the TLS layer verifies the chain against that CA and checks the hostname.
2. `--pin sha256:HEX`: exactly the server certificate with that fingerprint is accepted.
3. Otherwise trust on first use, like ssh: the first connection to `host:port` records the
   certificate fingerprint in `known_hosts`; later connections must present the same one, and a
   changed certificate is refused until the user removes the line or passes `--pin`.

For 2 and 3 the TLS layer does not validate the chain (self-signed certificates have none worth
checking); `check_peer` compares the fingerprint right after the handshake, before the first
application byte. This is sound because the TLS 1.3 handshake already proved the server holds
the private key of the certificate it presented. When both --ca and --pin are given, both apply.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fluxio.tls import fingerprint
from fluxproto.errors import (
    ConfigError,
    FluxError,
    RemoteProtocolError,
    TrustError,
    map_exceptions,
)
from fluxproto.frames import ALPN_OFFER

_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>[0-9]{1,5})")
_UNTRUSTED_HINT = (
    " (is --ca the ca.pem of this server, and the host one of its names? otherwise use --pin)"
)
_FILE_MODE = 0o600
_DIR_MODE = 0o700


def config_dir() -> Path:
    """fluxctl's configuration directory: `$XDG_CONFIG_HOME/fluxctl` or `~/.config/fluxctl`.

    A relative XDG_CONFIG_HOME is ignored, as the XDG Base Directory spec requires.
    """
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fluxctl"
    with map_exceptions({RuntimeError: ConfigError}):
        return Path.home() / ".config" / "fluxctl"


def _default_known_hosts() -> Path:
    return config_dir() / "known_hosts"


@dataclass(frozen=True)
class TrustPolicy:
    """Who to trust: a CA file, a pinned certificate fingerprint, else known_hosts (TOFU)."""

    ca: Path | None = None
    #: `sha256:` + 64 lowercase hex digits (normalised on construction).
    pin: str | None = None
    known_hosts: Path = dataclasses.field(default_factory=_default_known_hosts)

    def __post_init__(self) -> None:
        if self.pin is not None:
            object.__setattr__(self, "pin", parse_fingerprint(self.pin, "--pin"))

    @classmethod
    def from_options(
        cls, ca: Path | str | None, pin: str | None, known_hosts: Path | None = None
    ) -> TrustPolicy:
        """Build a policy from `--ca` and `--pin`, checking both before any connection.

        Raises:
            ConfigError: the pin is malformed, or the CA file is missing, unreadable or holds
                no PEM certificate.
        """
        ca_path = Path(ca) if ca is not None else None
        if ca_path is not None:
            _check_ca_file(ca_path)
        if known_hosts is None:
            return cls(ca=ca_path, pin=pin)
        return cls(ca=ca_path, pin=pin, known_hosts=known_hosts)

    @property
    def tofu(self) -> bool:
        """True when neither a CA nor a pin is given: known_hosts decides."""
        return self.ca is None and self.pin is None


def parse_fingerprint(text: str, what: str = "fingerprint") -> str:
    """Normalise `sha256:HEX` (any case) to lowercase.

    Raises:
        ConfigError: not `sha256:` followed by 64 hex digits.
    """
    value = text.strip().lower()
    if not _FINGERPRINT.fullmatch(value):
        raise ConfigError(
            f"invalid {what} {text!r}: expected sha256: followed by 64 hex digits "
            "(`fluxd certs fingerprint` prints it on the server)"
        )
    return value


def client_ssl_context(policy: TrustPolicy) -> ssl.SSLContext:
    """A TLS 1.3-only client context offering ALPN flux/2, then flux/1 (a version-1 server
    then still completes TLS and answers HELLO with ERROR 505: the user learns what to upgrade).

    With a CA the chain and hostname are verified during the handshake. Otherwise the TLS
    layer accepts any certificate and the caller must call `check_peer` before sending.

    Raises:
        ConfigError: the CA file cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(list(ALPN_OFFER))
    if policy.ca is not None:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        with map_exceptions({OSError: lambda e: _ca_error(policy.ca, e)}):
            ctx.load_verify_locations(cafile=policy.ca)
    else:
        ctx.check_hostname = False  # must precede CERT_NONE; check_peer does the checking
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_peer(
    policy: TrustPolicy,
    host: str,
    port: int,
    der_cert: bytes | None,
    on_new: Callable[[str], None] | None = None,
) -> str:
    """Decide whether the server certificate just received is trusted; call before sending.

    Args:
        policy: the trust policy the connection was made with.
        host: the host as the user gave it (known_hosts is keyed by what the user typed).
        port: the server port.
        der_cert: the server certificate (`getpeercert(binary_form=True)`).
        on_new: called once with a message (no program prefix) when TOFU records a new host.

    Returns:
        The certificate fingerprint, `sha256:HEX`.

    Raises:
        TrustError: no certificate, pin mismatch, or a known host presented a different one.
        ConfigError: known_hosts is malformed, unreadable or cannot be written.
    """
    if not der_cert:
        raise TrustError(f"server {host_key(host, port)} presented no certificate")
    fp = fingerprint(der_cert)
    if policy.pin is not None and not hmac.compare_digest(fp, policy.pin):
        raise TrustError(
            f"certificate of {host_key(host, port)} does not match --pin: the server presented "
            f"{fp}, expected {policy.pin} (check the pin with `fluxd certs fingerprint` on the "
            "server; it changes when the certificates are regenerated)"
        )
    if policy.tofu:
        _check_known_host(policy.known_hosts, host_key(host, port), fp, on_new)
    return fp


def check_alpn(selected: str | None) -> None:
    """Check the ALPN protocol the server selected in the handshake.

    flux/1 passes: a version-1 server answers the HELLO with ERROR 505, which says what to
    upgrade better than a refused handshake would.

    Raises:
        RemoteProtocolError: the server selected nothing, or a protocol fluxctl did not offer.
    """
    if selected not in ALPN_OFFER:
        detail = f" (it selected {selected!r})" if selected else ""
        raise RemoteProtocolError(f"server does not speak {' or '.join(ALPN_OFFER)}{detail}")


@contextmanager
def explain_untrusted() -> Iterator[None]:
    """Add what to check to a TrustError from the TLS layer (which verifies only with --ca)."""
    try:
        yield
    except TrustError as exc:
        raise TrustError(exc.message + _UNTRUSTED_HINT) from exc.__cause__


def host_key(host: str, port: int) -> str:
    """The known_hosts key for a server: `host:port`, lowercase, IPv6 bracketed (`[::1]:7070`)."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return f"{name.rstrip('.').lower()}:{port}"
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


# --- known_hosts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownHost:
    """One fingerprint recorded for a server, and the known_hosts line it is on."""

    fingerprint: str
    line: int


def _check_known_host(path: Path, key: str, fp: str, on_new: Callable[[str], None] | None) -> None:
    entries = read_known_hosts(path).get(key, [])
    if any(hmac.compare_digest(e.fingerprint, fp) for e in entries):
        return
    if entries:
        known = entries[0]
        raise TrustError(
            f"certificate of {key} has CHANGED: {path} line {known.line} has "
            f"{known.fingerprint}, the server presented {fp}. Either the server's certificates "
            "were regenerated or someone is intercepting the connection. If you have verified "
            f"the new fingerprint (`fluxd certs fingerprint` on the server), remove line "
            f"{known.line} from {path} or pass --pin {fp}"
        )
    _append_known_host(path, key, fp)
    if on_new is not None:
        on_new(f"trusting new server {key}, certificate {fp} (recorded in {path})")


def read_known_hosts(path: Path) -> dict[str, list[KnownHost]]:
    """Parse known_hosts: `host:port sha256:hex` lines, blank lines and `#` comments.

    Returns:
        Fingerprints (with their line numbers) by host key; empty if the file does not exist.

    Raises:
        ConfigError: the file is unreadable or a line is malformed (naming file and line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    entries: dict[str, list[KnownHost]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, fp = _parse_line(line, path, number)
        entries.setdefault(key, []).append(KnownHost(fp, number))
    return entries


def _parse_line(line: str, path: Path, number: int) -> tuple[str, str]:
    fields = line.split()
    match = _HOST_PORT.fullmatch(fields[0]) if len(fields) == 2 else None
    if match is None or int(match["port"]) > 65535 or not _FINGERPRINT.fullmatch(fields[1].lower()):
        raise ConfigError(
            f"{path} line {number} is malformed: expected 'HOST:PORT sha256:HEX'; "
            "fix or delete the line"
        )
    host = match["v6"] or match["host"]
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{path} line {number}: {host!r} is not an IPv6 address") from None
    return host_key(host, int(match["port"])), fields[1].lower()


def _append_known_host(path: Path, key: str, fp: str) -> None:
    """Append one line; O_APPEND keeps concurrent fluxctl runs from clobbering each other."""
    with map_exceptions(
        {
            OSError: lambda e: ConfigError(
                f"cannot record the server in {path}: {e}; fix the permissions or pass --pin {fp}"
            )
        }
    ):
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, mode=_DIR_MODE)
            os.chmod(path.parent, _DIR_MODE)  # mkdir's mode is filtered by the umask
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, _FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            # A hand-edited file may lack its final newline; don't glue our line onto it.
            sep = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            os.write(fd, sep + f"{key} {fp}\n".encode())
        finally:
            os.close(fd)


# --- errors -----------------------------------------------------------------------------------


def _check_ca_file(path: Path) -> None:
    # Load it once now so a bad --ca is a usage error up front, not a failure per connection.
    with map_exceptions({OSError: lambda e: _ca_error(path, e)}):
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)


def _ca_error(path: Path | None, exc: BaseException) -> FluxError:
    if isinstance(exc, ssl.SSLError):
        return ConfigError(f"--ca {path} holds no valid PEM certificate ({exc.reason})")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConfigError(f"cannot load --ca {path}: {reason}")
