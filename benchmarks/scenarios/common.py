"""What scenarios share: one verified, timed transfer, and per-tool medians over repetitions."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from .. import BenchError
from ..files import file_digest, format_size
from ..measure import Stats
from ..peers.base import Peer, Service, Transfer, remove_copy


def measured_transfer(
    peer: Peer, src: Path, digest: str, verify_hash: bool, timeout: float | None = None
) -> Transfer:
    """One full send of `src` (no copy beforehand), verified, then the copy removed. A peer
    that writes no copy (iperf3: `dest` is None) has checked its byte count itself.

    Raises:
        BenchError: the tool failed, or the copy has the wrong size or (if checked) content.
    """
    dest = peer.dest(src.name)
    if dest is None:
        transfer = peer.send(src, src.name, timeout)
        transfer.details["verified"] = "byte count reported by the tool"
        _report(transfer)
        return transfer
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
    _report(transfer)
    return transfer


def _report(transfer: Transfer) -> None:
    print(
        f"  {transfer.tool:10} {format_size(transfer.size)} in {transfer.seconds:7.3f} s "
        f"= {transfer.mb_per_s:7.1f} MB/s",
        file=sys.stderr,
    )


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


def start_peers(stack: contextlib.ExitStack, services: Sequence[Service]) -> list[Peer]:
    """Start every peer's server inside `stack` (stopped in reverse order when it closes)."""
    return [cast(Peer, stack.enter_context(service)) for service in services]
