"""Daemon configuration: defaults, the TOML file that mirrors every flag, and value parsing.

Precedence: command-line flag > config file > default. Defaults keep everything under one data
directory: `$FLUXD_HOME`, else `$XDG_DATA_HOME/fluxd`, else `~/.local/share/fluxd`, with files
served from `DATA/files` and certificates in `DATA/certs`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxio.parsing import (
    DEFAULT_PORT,
    is_loopback,
    parse_duration,
    parse_hostport,
    parse_size,
)
from fluxproto import DEFAULT_REQUESTS, MAX_CHUNK, MIN_CHUNK, ConfigError
from fluxproto.frames import MAX_FILE_SIZE, MAX_HEADER, MAX_WINDOW, MIN_WINDOW

DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
#: The HTTPS listener's port when `http.listen` names only a host.
HTTP_PORT = 8443
DEFAULT_ADMIN_LISTEN = f"127.0.0.1:{DEFAULT_PORT + 1}"


def data_dir() -> Path:
    """The daemon's default data directory (see module docstring)."""
    if home := os.environ.get("FLUXD_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        xdg = str(Path.home() / ".local" / "share")
    return Path(xdg) / "fluxd"


@dataclass(frozen=True)
class AuthConfig:
    """`[auth]`: who may connect and what they may do (README "Tokens and access")."""

    #: Accept clients without a token. None: only when listening on loopback.
    anonymous: bool | None = None
    #: What anonymous clients may do (space-separated scopes).
    anonymous_scope: str = "read:/ write:/ list:/ delete:/"
    #: The `aud` tokens must carry; default `fluxd:` + the token key's id.
    audience: str | None = None
    #: Confine each subject to a subtree, e.g. "/users/{sub}"; "" serves the whole root.
    root: str = ""
    #: Public keys (PEM, Ed25519) of external token issuers.
    trusted_keys: tuple[Path, ...] = ()
    #: A JWKS file of external issuers' keys (OKP/Ed25519 entries are used).
    jwks: Path | None = None

    def __post_init__(self) -> None:
        # Imported here: fluxctl reads host and size helpers from this module at start-up, and
        # the scopes pull in the whole storage package.
        from .auth.scopes import parse_scopes  # noqa: PLC0415

        try:
            parse_scopes(self.anonymous_scope)
        except ValueError as exc:
            raise ConfigError(f"auth.anonymous_scope: {exc}") from None
        if self.root and not self.root.startswith("/"):
            raise ConfigError('auth.root must start with / (example: "/users/{sub}")')
        if self.audience is not None and not self.audience:
            raise ConfigError("auth.audience must not be empty")


@dataclass(frozen=True)
class AdminConfig:
    """`[admin]`: the HTTP listener for /metrics, /livez, /readyz and the status page (README
    "Watching the daemon")."""

    #: HOST:PORT of the admin listener; "" turns it off. Off loopback it asks for a token
    #: with the `admin` scope.
    listen: str = DEFAULT_ADMIN_LISTEN

    def __post_init__(self) -> None:
        if self.listen:
            try:
                self.address  # noqa: B018 (parsed to check it)
            except ConfigError as exc:
                raise ConfigError(f"admin.listen: {exc.message}") from None

    @property
    def address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, DEFAULT_PORT + 1)


@dataclass(frozen=True)
class StorageConfig:
    """`[storage]`: where files are kept (README "Running several nodes").

    `backend = "local"` keeps them under `root`; `"s3"` in a bucket of an S3-compatible
    object store, which any number of nodes may share. Credentials come from the usual AWS
    environment variables or files, never from this file.
    """

    backend: str = "local"
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    #: Address the bucket as ENDPOINT/BUCKET (most self-hosted engines) instead of BUCKET.HOST.
    path_style: bool = True
    #: Seconds a node's hold on an upload lasts unrenewed: after a node dies, its uploads
    #: wait this long before another node resumes them.
    lease_ttl: float = 20.0

    def __post_init__(self) -> None:
        if self.backend not in ("local", "s3"):
            raise ConfigError('storage.backend must be "local" or "s3"')
        if self.backend == "local":
            given = [k for k in ("endpoint", "bucket", "region") if getattr(self, k) is not None]
            if given or self.prefix:
                raise ConfigError(f'storage.{(given or ["prefix"])[0]} needs backend = "s3"')
            return
        if not self.bucket:
            raise ConfigError('storage.backend = "s3" needs storage.bucket')
        if not 1 <= self.lease_ttl <= 3600:
            raise ConfigError("storage.lease_ttl must be between 1 and 3600 seconds")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError("storage.endpoint must be an http:// or https:// URL")


@dataclass(frozen=True)
class HttpConfig:
    """`[http]`: GET and HEAD of stored files over HTTPS (README "HTTP downloads")."""

    #: HOST:PORT of the HTTPS listener; "" (the default): no HTTP listener.
    listen: str = ""

    def __post_init__(self) -> None:
        if self.listen:
            try:
                parse_hostport(self.listen, HTTP_PORT)
            except ConfigError as exc:
                raise ConfigError(f"http.listen: {exc.message}") from None

    @property
    def address(self) -> tuple[str, int] | None:
        """Where to listen, or None when off."""
        return parse_hostport(self.listen, HTTP_PORT) if self.listen else None


@dataclass(frozen=True)
class Limits:
    """`[limits]`: sizes, counts, times and rates that bound what one client can take."""

    #: Largest frame header accepted (protocol maximum 64 KiB; HELLO tokens need 16 KiB).
    max_header: int = MAX_HEADER
    #: Largest chunk size (= CHUNK payload) a client may choose.
    max_chunk: int = MAX_CHUNK
    #: Largest file a client may upload.
    max_file_size: int = 1 << 40
    #: Bytes each subject may store under its root (needs auth.root with {sub}); 0: no quota.
    quota: int = 0
    #: Open connections in all, per client address and per token subject.
    connections: int = 1024
    connections_per_address: int = 64
    connections_per_subject: int = 64
    #: Uploads one subject may have open at once: by default as many as one connection may
    #: have requests open (protocol version 2 runs them at once).
    uploads_per_subject: int = DEFAULT_REQUESTS
    #: Requests that may share one download at once (its lanes: PROTOCOL.md 9.1).
    shares_per_transfer: int = 16
    #: Seconds the TLS handshake may take after accept, and then again for HELLO to arrive.
    handshake_timeout: float = 10.0
    #: Seconds a connection may go without progress (a whole frame, or 64 KiB of one, either
    #: way) while the daemon waits on it, before it is closed.
    idle_timeout: float = 120.0
    #: Bytes per second over all connections, and per subject; 0: unlimited.
    rate: int = 0
    rate_per_subject: int = 0
    #: Bytes of received chunks the daemon holds in memory at once; readers pause beyond it.
    memory: int = 256 * 1024 * 1024
    #: Entries one recursive LIST or DELETE may walk; a larger tree is refused (413), and a
    #: recursive DELETE of one removes nothing.
    tree_entries: int = 10_000_000

    def __post_init__(self) -> None:
        if not 16 * 1024 <= self.max_header <= MAX_HEADER:
            raise ConfigError(f"limits.max_header must be between 16384 and {MAX_HEADER} bytes")
        if not MIN_CHUNK <= self.max_chunk <= MAX_CHUNK:
            raise ConfigError(f"limits.max_chunk must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        if not 0 <= self.max_file_size <= MAX_FILE_SIZE:
            raise ConfigError(f"limits.max_file_size must be between 0 and {MAX_FILE_SIZE} bytes")
        counts = ("connections", "connections_per_address", "connections_per_subject")
        for name in (*counts, "uploads_per_subject", "shares_per_transfer", "tree_entries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name} must be at least 1")
        for name in ("quota", "rate", "rate_per_subject"):
            if getattr(self, name) < 0:
                raise ConfigError(f"limits.{name} must be >= 0 (0: unlimited)")
        # Written so NaN fails too: every comparison with NaN is false.
        for name in ("handshake_timeout", "idle_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"limits.{name} must be > 0 (finite seconds)")
        if self.memory < 2 * self.max_chunk:
            raise ConfigError("limits.memory must hold at least two chunks of max_chunk")


#: The moments fluxd reports (README "Events").
EVENT_TYPES = ("upload-finished", "download-finished", "deleted", "corruption")


@dataclass(frozen=True)
class EventsConfig:
    """`[events]`: a command to run and/or a URL to POST for each event (README "Events").

    Off unless `command` or `url` is set. Events wait in `outbox` (one folder per node, on
    local disk even when files are kept in S3) until every configured hook took them.
    """

    #: The program and its arguments (a list, or a string split like a shell would); the
    #: event's JSON comes on its stdin, exit status 0 means delivered.
    command: tuple[str, ...] = ()
    url: str = ""
    #: The HMAC-SHA256 key for the signature header (or read from `secret_file`).
    secret: str = ""
    secret_file: Path | None = None
    #: Seconds one delivery (command run or POST) may take before it counts as failed.
    timeout: float = 10.0
    #: Attempts before an event is given up on and moved to the outbox's dead/ folder.
    attempts: int = 10
    #: Seconds before the first retry; each next one waits twice as long, up to backoff_max.
    backoff: float = 1.0
    backoff_max: float = 300.0
    #: Deliveries running at once.
    concurrency: int = 4
    #: Events the outbox holds at most; beyond it new events are dropped (logged, counted).
    outbox_limit: int = 10000
    #: The outbox folder; None (or "" in the file): DATA/events.
    outbox: Path | None = None
    #: Which events are reported.
    types: tuple[str, ...] = EVENT_TYPES

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError("events.url must be an http:// or https:// URL")
        if self.url and not (self.secret or self.secret_file):
            raise ConfigError("events.url needs events.secret or events.secret_file (signing)")
        if self.secret and self.secret_file:
            raise ConfigError("events.secret and events.secret_file: give one of them")
        unknown = sorted(set(self.types) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(f"events.types: unknown {unknown[0]!r} (known: {EVENT_TYPES})")
        for name in ("timeout", "backoff", "backoff_max"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"events.{name} must be > 0 (finite seconds)")
        for name in ("attempts", "concurrency", "outbox_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"events.{name} must be at least 1")

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.url)

    @property
    def folder(self) -> Path:
        """Where the outbox is kept."""
        return self.outbox or data_dir() / "events"

    def key(self) -> bytes:
        """The signing secret as bytes.

        Raises:
            ConfigError: the secret file cannot be read or is empty.
        """
        if self.secret_file is None:
            return self.secret.encode()
        try:
            key = self.secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read events.secret_file: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"events.secret_file {self.secret_file} is empty")
        return key


@dataclass(frozen=True)
class ServerConfig:
    """Everything `fluxd serve` can be told; each field is a flag and a config-file key."""

    root: Path = dataclasses.field(default_factory=lambda: data_dir() / "files")
    listen: str = DEFAULT_LISTEN
    certs: Path = dataclasses.field(default_factory=lambda: data_dir() / "certs")
    insecure_plaintext: bool = False
    #: Serve over TCP+TLS and over QUIC (UDP, same port number); either may be turned off.
    tcp: bool = True
    quic: bool = True
    #: Largest UDP payload QUIC sends (1452 fits a 1500-byte MTU; aioquic breaks above ~16000).
    quic_datagram_size: int = 1452
    #: Bytes of chunks a client may have in flight towards us (the protocol window).
    window: int = 32 * 1024 * 1024
    #: Seconds to let in-flight chunks reach disk on SIGTERM before closing connections.
    shutdown_grace: float = 10.0
    log_level: str = "info"
    #: Where the JSON-lines access log goes: a file path, or "-" for stderr with the daemon log.
    access_log: str = "-"
    #: Staged uploads untouched this long (seconds) and held by no session are removed.
    staging_grace: float = 86400.0
    #: Seconds between garbage collections (also one at start); 0: only at start.
    gc_every: float = 3600.0
    #: Seconds between scrubs of every committed file against its manifest; 0: never.
    scrub_every: float = 0.0
    auth: AuthConfig = dataclasses.field(default_factory=AuthConfig)
    limits: Limits = dataclasses.field(default_factory=Limits)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    events: EventsConfig = dataclasses.field(default_factory=EventsConfig)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)

    def __post_init__(self) -> None:
        parse_hostport(self.listen)
        if not MIN_WINDOW <= self.window <= MAX_WINDOW:
            raise ConfigError(f"window must be between {MIN_WINDOW} and {MAX_WINDOW} bytes")
        if not 0 <= self.shutdown_grace < math.inf:
            raise ConfigError("shutdown_grace must be >= 0 (finite seconds)")
        if not (self.tcp or self.quic):
            raise ConfigError("tcp and quic are both off: nothing to serve")
        if not 1200 <= self.quic_datagram_size <= 16000:
            raise ConfigError("quic_datagram_size must be between 1200 and 16000 bytes")
        for name in ("staging_grace", "gc_every", "scrub_every"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be >= 0 (finite seconds)")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")
        if self.http.listen and self.insecure_plaintext:
            raise ConfigError("http.listen needs TLS: it cannot be used with insecure_plaintext")
        if self.limits.quota and "{sub}" not in self.auth.root:
            raise ConfigError('limits.quota needs a root per subject (auth.root = "/users/{sub}")')

    @property
    def address(self) -> tuple[str, int]:
        return parse_hostport(self.listen)

    @property
    def anonymous(self) -> bool:
        """Whether clients without a token are served (default: on loopback only)."""
        if self.auth.anonymous is not None:
            return self.auth.anonymous
        return is_loopback(self.address[0])


def _paths(value: Any) -> tuple[Path, ...]:
    if isinstance(value, str | Path):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Path) for v in value):
        raise ConfigError("expected a list of file paths")
    return tuple(Path(v).expanduser() for v in value)


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path):
        raise ConfigError(f"expected a file path, not {value!r}")
    return Path(value).expanduser()


def _argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"cannot split the command: {exc}") from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError("expected a command: a string or a list of strings")
    return tuple(value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError("expected a list of names")
    return tuple(value)


def _opt_path(value: Any) -> Path | None:
    return None if value == "" else _path(value)


def _opt_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("must be true or false")
    return value


#: Each section's keys and how to convert a TOML (or flag) value; "" is the top level.
_SECTIONS: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "": (
        ServerConfig,
        {
            "root": _path,
            "certs": _path,
            "listen": str,
            "insecure_plaintext": bool,
            "tcp": bool,
            "quic": bool,
            "quic_datagram_size": int,
            "window": parse_size,
            "shutdown_grace": float,
            "log_level": str,
            "access_log": str,
            "staging_grace": parse_duration,
            "gc_every": parse_duration,
            "scrub_every": parse_duration,
        },
    ),
    "auth": (
        AuthConfig,
        {
            "anonymous": _opt_bool,
            "anonymous_scope": str,
            "audience": str,
            "root": str,
            "trusted_keys": _paths,
            "jwks": _path,
        },
    ),
    "storage": (
        StorageConfig,
        {
            "backend": str,
            "endpoint": str,
            "bucket": str,
            "prefix": str,
            "region": str,
            "path_style": bool,
            "lease_ttl": parse_duration,
        },
    ),
    "events": (
        EventsConfig,
        {
            "command": _argv,
            "url": str,
            "secret": str,
            "secret_file": _opt_path,
            "timeout": parse_duration,
            "attempts": int,
            "backoff": parse_duration,
            "backoff_max": parse_duration,
            "concurrency": int,
            "outbox_limit": int,
            "outbox": _opt_path,
            "types": _names,
        },
    ),
    "http": (HttpConfig, {"listen": str}),
    "admin": (AdminConfig, {"listen": str}),
    "limits": (
        Limits,
        {
            "max_header": parse_size,
            "max_chunk": parse_size,
            "max_file_size": parse_size,
            "quota": parse_size,
            "connections": int,
            "connections_per_address": int,
            "connections_per_subject": int,
            "uploads_per_subject": int,
            "shares_per_transfer": int,
            "handshake_timeout": float,
            "idle_timeout": float,
            "rate": parse_size,
            "rate_per_subject": parse_size,
            "memory": parse_size,
            "tree_entries": int,
        },
    ),
}


def load_config(path: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """Merge defaults, the TOML file at `path` (if any) and non-None `overrides`.

    `overrides` has the file's shape: top-level keys, and dicts for the `auth` and `limits`
    tables.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key or bad value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"bad TOML in {path}: {exc}") from None
    where = f"in {path}" if path is not None else "given"
    tables = {name: values.pop(name, {}) for name in _SECTIONS if name}
    sections = {"": values, **tables}
    for name, given in overrides.items():
        if name in tables and isinstance(given, dict):
            sections[name] = {**_table(name, sections[name], where), **_given(given)}
        elif given is not None:
            values[name] = given
    built = {
        name: _build(name, _table(name, sections[name], where), where) for name in _SECTIONS if name
    }
    return _build("", sections[""], where, built)  # type: ignore[no-any-return]


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _table(name: str, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] {where} must be a table")
    return value


def _build(section: str, values: dict[str, Any], where: str, extra: Any = None) -> Any:
    cls, converters = _SECTIONS[section]
    unknown = set(values) - set(converters)
    if unknown:
        names = ", ".join(f"{section}.{k}" if section else k for k in sorted(unknown))
        raise ConfigError(f"unknown key(s) {where}: {names}")
    converted: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        try:
            converted[key] = _convert(name, converters[key], value)
        except ConfigError as exc:
            if exc.message.startswith(name):
                raise
            raise ConfigError(f"{name}: {exc.message}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad config value for {name}: {exc}") from None
    return cls(**converted, **(extra or {}))


def _convert(name: str, conv: Any, value: Any) -> Any:
    if conv is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    if conv is not bool and conv is not _opt_bool and isinstance(value, bool):
        raise ConfigError(f"{name} must be a {'number' if conv is float else 'value'}, not {value}")
    if conv is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return conv(value)
