"""ranges.py: the (start, count) run form of chunk index sets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from proto_strategies import canonical_ranges

from fluxproto.ranges import count, is_canonical, iter_indices, to_ranges

indices = st.lists(st.integers(0, 300), max_size=80)
pairs = st.lists(st.tuples(st.integers(-3, 60), st.integers(-2, 12)), max_size=8)
RANGES = settings(max_examples=300, deadline=None)


@RANGES
@given(idx=indices)
def test_to_ranges_then_iter_indices_gives_the_sorted_set(idx: list[int]) -> None:
    ranges = to_ranges(idx)
    assert list(iter_indices(ranges)) == sorted(set(idx))
    assert count(ranges) == len(set(idx))
    assert is_canonical(ranges, max(idx, default=0) + 1)
    assert to_ranges(reversed(idx)) == ranges  # order and duplicates do not matter
    assert to_ranges(idx + idx) == ranges


@RANGES
@given(ranges=canonical_ranges(limit=10_000, max_ranges=10, max_count=50))
def test_canonical_ranges_survive_iter_indices_then_to_ranges(
    ranges: tuple[tuple[int, int], ...],
) -> None:
    assert to_ranges(iter_indices(ranges)) == ranges
    assert count(ranges) == len(list(iter_indices(ranges)))
    end = ranges[-1][0] + ranges[-1][1] if ranges else 0
    assert is_canonical(ranges, end)
    assert not ranges or not is_canonical(ranges, end - 1)


def reference_is_canonical(ranges: list[tuple[int, int]], limit: int) -> bool:
    if any(s < 0 or c < 1 for s, c in ranges):
        return False
    if ranges and ranges[-1][0] + ranges[-1][1] > limit:
        return False
    return to_ranges(iter_indices(ranges)) == tuple(ranges)


@RANGES
@given(ranges=pairs, limit=st.integers(0, 80))
def test_is_canonical_matches_its_definition(ranges: list[tuple[int, int]], limit: int) -> None:
    assert is_canonical(ranges, limit) == reference_is_canonical(ranges, limit)


def test_is_canonical_examples() -> None:
    assert is_canonical((), 0)
    assert is_canonical(((0, 1),), 1)
    assert not is_canonical(((0, 1),), 0)
    assert not is_canonical(((0, 1), (1, 1)), 10)  # adjacent runs must be merged
    assert not is_canonical(((2, 1), (0, 1)), 10)
    assert not is_canonical(((0, 2), (1, 1)), 10)
    assert not is_canonical(((0, 0),), 10)
    assert not is_canonical(((-1, 1),), 10)
    assert to_ranges([5, 1, 2, 3, 9, 9]) == ((1, 3), (5, 1), (9, 1))
    assert to_ranges([]) == ()
