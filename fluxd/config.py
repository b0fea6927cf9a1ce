"""Daemon configuration: defaults, the TOML file that mirrors every flag, and value parsing.

Precedence: command-line flag > config file > default. Defaults keep everything under one data
directory: `$FLUXD_HOME`, else `$XDG_DATA_HOME/fluxd`, else `~/.local/share/fluxd`, with files
served from `DATA/files` and certificates in `DATA/certs`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxproto import MAX_CHUNK, MIN_CHUNK, ConfigError
from fluxproto.frames import MAX_WINDOW, MIN_WINDOW

DEFAULT_PORT = 7070
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def data_dir() -> Path:
    """The daemon's default data directory (see module docstring)."""
    if home := os.environ.get("FLUXD_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        xdg = str(Path.home() / ".local" / "share")
    return Path(xdg) / "fluxd"


def parse_size(text: str | int) -> int:
    """Parse `4M`, `4MiB`, `512k`, `1048576` (binary units) into bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (examples: 4M, 512KiB, 1048576)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse `HOST:PORT`, `[V6]:PORT`, `HOST` into (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise ConfigError(f"not a HOST:PORT address: {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or default_port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range in {text!r}")
    return host, port


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True if every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


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
    #: Seconds a connection may stay silent before the daemon closes it.
    idle_timeout: float = 120.0
    #: Seconds to let in-flight chunks reach disk on SIGTERM before closing connections.
    shutdown_grace: float = 10.0
    #: Largest chunk size a client may choose.
    max_chunk: int = MAX_CHUNK
    log_level: str = "info"

    def __post_init__(self) -> None:
        parse_hostport(self.listen)
        if not MIN_WINDOW <= self.window <= MAX_WINDOW:
            raise ConfigError(f"window must be between {MIN_WINDOW} and {MAX_WINDOW} bytes")
        # Written so NaN fails too: every comparison with NaN is false.
        if not (0 < self.idle_timeout < math.inf and 0 <= self.shutdown_grace < math.inf):
            raise ConfigError("idle_timeout must be > 0 and shutdown_grace >= 0 (finite seconds)")
        if not (self.tcp or self.quic):
            raise ConfigError("tcp and quic are both off: nothing to serve")
        if not 1200 <= self.quic_datagram_size <= 16000:
            raise ConfigError("quic_datagram_size must be between 1200 and 16000 bytes")
        if not MIN_CHUNK <= self.max_chunk <= MAX_CHUNK:
            raise ConfigError(f"max_chunk must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")

    @property
    def address(self) -> tuple[str, int]:
        return parse_hostport(self.listen)


_CONVERT: dict[str, Any] = {
    "root": Path,
    "certs": Path,
    "listen": str,
    "insecure_plaintext": bool,
    "tcp": bool,
    "quic": bool,
    "quic_datagram_size": int,
    "window": parse_size,
    "idle_timeout": float,
    "shutdown_grace": float,
    "max_chunk": parse_size,
    "log_level": str,
}


def load_config(path: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """Merge defaults, the TOML file at `path` (if any) and non-None `overrides`.

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
        _refuse_unknown(values, f"in {path}")
    given = {k: v for k, v in overrides.items() if v is not None}
    _refuse_unknown(given, "given")
    values.update(given)
    try:
        converted = {k: _convert(k, v) for k, v in values.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad config value: {exc}") from None
    return ServerConfig(**converted)


def _refuse_unknown(values: dict[str, Any], where: str) -> None:
    unknown = set(values) - set(_CONVERT)
    if unknown:
        raise ConfigError(f"unknown key(s) {where}: {', '.join(sorted(unknown))}")


def _convert(key: str, value: Any) -> Any:
    conv = _CONVERT[key]
    if conv is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false")
    if conv is not bool and isinstance(value, bool):
        raise ConfigError(f"{key} must be a {'number' if conv is float else 'value'}, not {value}")
    if conv is Path:
        return Path(value).expanduser()
    return conv(value)
