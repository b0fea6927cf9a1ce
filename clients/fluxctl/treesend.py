# `send -r`: make a tree on the server a copy of local folders, as one plan per root.
"""The executor of `fluxctl send -r LOCAL... flux://HOST/PATH` (stub)."""

from __future__ import annotations

from collections.abc import Sequence

from fluxproto import ConfigError

from .connect import ClientOptions
from .treeresult import TreeResult
from .treerun import TreeOptions, TreeView
from .url import FluxURL

__all__ = ["send_tree"]


async def send_tree(
    sources: Sequence[str],
    dest: FluxURL,
    options: ClientOptions,
    tree: TreeOptions,
    view: TreeView,
) -> TreeResult:
    """Make the remote tree at `dest` a copy of each local tree in `sources`."""
    raise ConfigError("send -r is not implemented yet")
