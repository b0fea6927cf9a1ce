"""What scenarios share: one verified, timed transfer, and per-tool medians over repetitions."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from .. import BenchError
from ..files import file_digest, format_size
from ..measure import Stats
from ..peers.base import Peer, Service, StoredPeer, Transfer, remove_copy
from ..peers.flux import FluxPeer


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
        print_transfer(transfer)
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
    print_transfer(transfer)
    return transfer


def stored_transfer(
    peer: StoredPeer, src: Path, digest: str, verify_hash: bool, scratch: Path
) -> Transfer:
    """measured_transfer for a peer whose copy is in an object store: the peer checks the
    copy (size, and if `verify_hash` content) and removes it afterwards.

    Raises:
        BenchError: the tool failed, or the copy has the wrong size or content.
    """
    transfer = peer.send(src, src.name)
    try:
        size = transfer.size
        peer.check_copy(src.name, size, digest if verify_hash else None, scratch)
        transfer.details["verified"] = "size+hash" if verify_hash else "size"
    finally:
        peer.remove_copy(src.name)
    print_transfer(transfer)
    return transfer


def print_transfer(transfer: Transfer) -> None:
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


def throughput(
    transfers: Sequence[Transfer], size: int, reps: int, ratio_of: tuple[str, str]
) -> dict[str, Any]:
    """A throughput run's data: per-tool `summary`, every run, and `ratio`, the median MB/s of
    the first tool of `ratio_of` over the second's (None if the first did not run)."""
    summary = summarize(transfers)
    tool, reference = ratio_of
    ratio = None
    if tool in summary:
        ratio = summary[tool]["mb_per_s"]["median"] / summary[reference]["mb_per_s"]["median"]
    runs = [t.to_json() for t in transfers]
    return {"size": size, "reps": reps, "summary": summary, "ratio": ratio, "runs": runs}


def fresh_peak(shared: FluxPeer, make: Callable[[], FluxPeer]) -> ContextManager[FluxPeer]:
    """The daemon to measure one transfer's peak RSS on: `shared` if its VmHWM can be reset
    before each transfer, else a new one from `make` (VmHWM only rises)."""
    return contextlib.nullcontext(shared) if shared.peak_resettable else make()


def comma_choices(allowed: Sequence[str], none_ok: bool = False) -> Callable[[str], list[str]]:
    """An argparse type: names from `allowed`, comma-separated, returned in `allowed`'s order;
    with `none_ok`, "none" (or nothing) is the empty list, else at least one name is needed."""

    def parse(text: str) -> list[str]:
        wanted = {t.strip() for t in text.split(",") if t.strip()} - (
            {"none"} if none_ok else set()
        )
        if unknown := wanted - set(allowed):
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
        if not wanted and not none_ok:
            raise argparse.ArgumentTypeError("none named")
        return [t for t in allowed if t in wanted]

    return parse


def start_peers(stack: contextlib.ExitStack, services: Sequence[Service]) -> list[Peer]:
    """Start every peer's server inside `stack` (stopped in reverse order when it closes)."""
    return [cast(Peer, stack.enter_context(service)) for service in services]
