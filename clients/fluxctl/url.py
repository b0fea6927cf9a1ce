"""`flux://HOST[:PORT]/PATH` URLs, the way every fluxctl command names a server and a path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fluxio.parsing import DEFAULT_PORT, format_hostport, parse_hostport
from fluxproto import ConfigError

SCHEME = "flux://"


@dataclass(frozen=True)
class FluxURL:
    """A server and a path on it.

    `host` and `port` name the server: TLS checks that name, known_hosts, tickets and tokens
    are keyed by it. When the name leads to several nodes (nodes.py), `node` is the one this
    URL's connections go to: `dial` is where they connect, the name stays what is checked.
    """

    host: str
    port: int
    path: str  # always starts with "/"; the server resolves it under its root
    #: The (host, port) to connect to instead of the name's own (one node of several).
    node: tuple[str, int] | None = None

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
    def dial(self) -> tuple[str, int]:
        """Where connections go: the node, else the name itself."""
        return self.node or (self.host, self.port)

    @property
    def where(self) -> str:
        """The address connections go to, for messages: the node's, else the name's."""
        return format_hostport(*self.dial)

    def on(self, node: tuple[str, int] | None) -> FluxURL:
        """This URL, with its connections going to `node` (None: to the name)."""
        return dataclasses.replace(self, node=node)

    @property
    def name(self) -> str:
        """Last path component ('' for the root)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{SCHEME}{self.address}{self.path}"
