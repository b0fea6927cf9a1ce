# `recv -r`: make a local folder a copy of a tree on the server (stub until it is written).
"""The executor of `fluxctl recv -r URL... LOCAL`; see treerun.py for what it shares with
treesend.send_tree (same arguments, mirrored; same TreeResult)."""

from __future__ import annotations

from collections.abc import Sequence

from fluxproto import ConfigError

from .connect import ClientOptions
from .treeresult import TreeResult
from .treerun import TreeOptions, TreeView
from .url import FluxURL

__all__ = ["recv_tree"]


async def recv_tree(
    sources: Sequence[FluxURL],
    dest: str,
    options: ClientOptions,
    tree: TreeOptions,
    view: TreeView,
) -> TreeResult:
    """Make `dest` (a local path) a copy of each remote tree in `sources` (one server).

    Args:
        sources: the remote trees, as URLs of one server (the CLI checks that).
        dest: the local path as the user wrote it (treewalk/targets.map_roots rules).
        options: connection options. tree: the tree flags. view: where output goes.

    Returns:
        The run's totals and per-entry errors.

    Raises:
        FluxError: what left the run unfinished.
    """
    raise ConfigError("recv -r is not implemented yet")
