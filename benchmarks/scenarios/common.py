"""What scenarios share: one verified, timed transfer, and per-tool medians over repetitions."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import file_digest, format_size
from ..measure import Stats
from ..peers.base import Peer, Transfer, remove_copy


def measured_transfer(
    peer: Peer, src: Path, digest: str, verify_hash: bool, timeout: float | None = None
) -> Transfer:
    """One full send of `src` (no copy beforehand), verified, then the copy removed.

    Raises:
        BenchError: the tool failed, or the copy has the wrong size or (if checked) content.
    """
    dest = peer.dest(src.name)
    remove_copy(dest)
    transfer = peer.send(src, src.name, timeout)
    try:
        got = dest.stat().st_size if dest.exists() else None
        if got != transfer.size:
            raise BenchError(f"{peer.tool}: {dest} has {got} bytes, expected {transfer.size}")
        if verify_hash and (copy := file_digest(dest)) != digest:
            raise BenchError(f"{peer.tool}: {dest} differs from the source ({copy} != {digest})")
        transfer.details["verified"] = "size+hash" if verify_hash else "size"
    finally:
        remove_copy(dest)
    print(
        f"  {transfer.tool:8} {format_size(transfer.size)} in {transfer.seconds:7.3f} s "
        f"= {transfer.mb_per_s:7.1f} MB/s",
        file=sys.stderr,
    )
    return transfer


def summarize(transfers: Sequence[Transfer]) -> dict[str, Any]:
    """Per tool: median/min/max of seconds and MB/s, and the largest peak RSS of each side."""
    summary: dict[str, Any] = {}
    for tool in dict.fromkeys(t.tool for t in transfers):
        mine = [t for t in transfers if t.tool == tool]
        summary[tool] = {
            "seconds": asdict(Stats.of([t.seconds for t in mine])),
            "mb_per_s": asdict(Stats.of([t.mb_per_s for t in mine])),
            "client_rss_kib_max": max(t.client_rss_kib for t in mine),
            "server_rss_kib_max": max((t.server_rss_kib or 0) for t in mine) or None,
        }
    return summary
