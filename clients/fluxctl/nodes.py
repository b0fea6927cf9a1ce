"""The nodes a server's name leads to, and which one a run is on.

Several fluxd nodes may serve one store (any of them resumes any upload). A name leads to
several nodes in two ways:

- the config file lists them (servers.py): `nodes = ["a.example.com:7070", "10.0.0.12:7071"]`
  in the name's table; they are tried in that order;
- otherwise the name resolves to several addresses (DNS round robin); they are tried in the
  resolver's order, each over TCP then QUIC as one address always is (connect.py).

A run starts on the first node. Connecting goes on to each next node in turn while one
refuses, does not answer or is unavailable (no retry: `Retrier.connect_node`); once an attempt
that connected fails in a way worth retrying (the node died mid-transfer), the next attempt
starts on the next node, where the transfer resumes. Every node must present a certificate
for the name (one CA, `--ca`), and accept the same tokens.

A name with one address (or none: the connection reports that) is one node, dialled by name
as always.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from fluxio.parsing import format_hostport, parse_hostport
from fluxproto import ConfigError

from .servers import server_entry
from .url import FluxURL

#: The addresses `host` resolves to for `port` (raising OSError when it does not).
Resolver = Callable[[str, int], Awaitable[list[str]]]
#: A node: the host (address or name) and port to connect to.
Node = tuple[str, int]

#: Most nodes one name may list in the config file.
MAX_NODES = 64

__all__ = ["MAX_NODES", "Node", "NodeRing", "Resolver", "configured_nodes", "resolve"]


async def resolve(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host`, each once, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def configured_nodes(host: str, port: int, path: Path | None = None) -> tuple[Node, ...]:
    """The `nodes` the config file lists for `host:port` (empty: none listed). A node
    without a port takes `port`.

    Raises:
        ConfigError: the file is unreadable, or `nodes` is not a list of 1 to MAX_NODES
            `HOST[:PORT]` strings.
    """
    entry = server_entry(host, port, path)
    if entry is None or "nodes" not in entry.values:
        return ()
    listed = entry.values["nodes"]
    where = f"{entry.path}: nodes of {entry.key}"
    if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_NODES:
        raise ConfigError(f"{where} must be a list of 1 to {MAX_NODES} HOST:PORT strings")
    nodes: list[Node] = []
    for text in listed:
        if not isinstance(text, str):
            raise ConfigError(f"{where} must be HOST:PORT strings, not {text!r}")
        node = parse_hostport(text, port)
        if node[1] == 0:
            raise ConfigError(f"{where}: port 0 in {text!r}")
        nodes.append(node)
    return tuple(dict.fromkeys(nodes))


class NodeRing:
    """The nodes of one run, in order, and the one it is on (module docstring).

    Args:
        url: the server's name (and the path, which every node serves alike).
        listed: the nodes the config file lists for it (empty: those the name resolves to).
        resolver: how a name is resolved (tests give their own).
    """

    def __init__(
        self, url: FluxURL, listed: Sequence[Node] = (), resolver: Resolver | None = None
    ) -> None:
        self.url = url
        self._resolver = resolver or resolve
        self._nodes: list[Node] | None = list(listed) or None
        self._index = 0

    async def current(self) -> FluxURL:
        """The URL whose connections go to the node the run is on. The name is resolved the
        first time; with one address (or none) it is dialled by name, as ever."""
        nodes = await self._known()
        if len(nodes) == 1 and nodes[0] == (self.url.host, self.url.port):
            return self.url
        return self.url.on(nodes[self._index])

    @property
    def count(self) -> int:
        """How many nodes the name leads to (1 until `current` ran)."""
        return len(self._nodes) if self._nodes is not None else 1

    @property
    def node(self) -> str | None:
        """The address of the node the run is on, when the name leads to several."""
        if self._nodes is None or len(self._nodes) < 2:
            return None
        return format_hostport(*self._nodes[self._index])

    def move_on(self) -> None:
        """Go on to the next node (after the last, the first)."""
        self._index = (self._index + 1) % self.count

    async def _known(self) -> list[Node]:
        if self._nodes is None:
            try:
                addresses = await self._resolver(self.url.host, self.url.port)
            except OSError:
                addresses = []  # connecting by name reports why it fails
            if len(addresses) > 1:
                self._nodes = [(address, self.url.port) for address in addresses]
            else:
                self._nodes = [(self.url.host, self.url.port)]
        return self._nodes
