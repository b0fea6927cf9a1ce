"""`flux://HOST[:PORT]/PATH` URLs, the way every fluxctl command names a server and a path."""

from __future__ import annotations

from dataclasses import dataclass

from fluxio.parsing import DEFAULT_PORT, format_hostport, parse_hostport
from fluxproto import ConfigError

SCHEME = "flux://"


@dataclass(frozen=True)
class FluxURL:
    host: str
    port: int
    path: str  # always starts with "/"; the server resolves it under its root

    @classmethod
    def parse(cls, text: str) -> FluxURL:
        """Parse a flux URL; the path is taken literally (no percent-decoding).

        Raises:
            ConfigError: not a flux:// URL, no host, or port 0 (which no server listens on).
        """
        if not text.startswith(SCHEME):
            raise ConfigError(f"not a flux URL: {text!r} (expected flux://HOST:PORT/PATH)")
        rest = text[len(SCHEME) :]
        authority, slash, path = rest.partition("/")
        if not authority:
            raise ConfigError(f"no host in {text!r}")
        host, port = parse_hostport(authority, DEFAULT_PORT)
        if port == 0:
            raise ConfigError(f"port 0 in {text!r}: give the port fluxd listens on (default 7070)")
        return cls(host, port, "/" + path if slash else "/")

    @property
    def address(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def name(self) -> str:
        """Last path component ('' for the root)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{SCHEME}{self.address}{self.path}"
