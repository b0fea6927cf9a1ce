"""Chunk index ranges: the compact (start, count) form used on the wire for sets of chunks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Range = tuple[int, int]
Ranges = tuple[Range, ...]


def to_ranges(indices: Iterable[int]) -> Ranges:
    """Collapse chunk indices (any order, duplicates allowed) into sorted (start, count) runs."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return tuple((s, c) for s, c in out)


def iter_indices(ranges: Iterable[Range]) -> Iterator[int]:
    """Every chunk index named by `ranges`, in order."""
    for start, count in ranges:
        yield from range(start, start + count)


def count(ranges: Iterable[Range]) -> int:
    """How many chunk indices `ranges` names."""
    return sum(c for _, c in ranges)


def is_canonical(ranges: Iterable[Range], limit: int) -> bool:
    """True when runs are non-empty, sorted, disjoint, not adjacent and end at or below `limit`."""
    end = -1
    for start, cnt in ranges:
        if start <= end or cnt < 1 or start + cnt > limit:
            return False
        end = start + cnt
    return True
