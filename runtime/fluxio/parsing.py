"""Values both command lines parse: sizes, durations, HOST:PORT, and what loopback means."""

from __future__ import annotations

import ipaddress
import re
import socket

from fluxproto import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "format_hostport",
    "is_loopback",
    "parse_duration",
    "parse_hostport",
    "parse_size",
]

DEFAULT_PORT = 7070

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse `4M`, `4MiB`, `512k`, `1048576` (binary units) into bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (examples: 4M, 512KiB, 1048576)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float) -> float:
    """`30d`, `12h`, `90m`, `3600` or a number of seconds, into seconds.

    Raises:
        ConfigError: not a duration.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ConfigError(f"not a duration: {text!r} (examples: 30d, 12h, 90m, 3600)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


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
