"""The token bucket behind fluxd's rate limits and fluxctl's --bwlimit, on an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxio import ratelimit
from fluxio.ratelimit import BURST_SECONDS, TokenBucket, paced


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(bucket: TokenBucket, clock: Clock, sizes: list[int]) -> float:
    """Pass `sizes` through the bucket the way a session does (charge, then sleep); return the
    time the last one may pass."""
    for n in sizes:
        clock.now += bucket.charge(n)
    return clock.now


@given(
    rate=st.integers(10_000, 100_000_000),
    sizes=st.lists(st.integers(1, 16 * 1024 * 1024), min_size=1, max_size=200),
)
def test_bucket_passes_bytes_at_its_rate_plus_at_most_the_burst(
    rate: int, sizes: list[int]
) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, clock)
    end = drive(bucket, clock, sizes)
    total = sum(sizes)
    # Never more than rate x time + the burst, and (sending back to back) never slower.
    assert total <= rate * end + bucket.burst + 1e-6 * total
    assert end <= max(0.0, (total - bucket.burst) / rate) + 1e-9 * max(1, end)


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.charge(int(1000 * BURST_SECONDS)) == 0  # the initial burst
    clock.now += 3600  # an hour idle does not bank an hour of bytes
    assert bucket.charge(250) == 0
    assert bucket.charge(1000) == pytest.approx(1.0)


@given(
    rate=st.integers(10_000, 100_000_000),
    lanes=st.lists(st.lists(st.integers(1, 4 << 20), min_size=1, max_size=50), min_size=2),
)
def test_lanes_sharing_a_bucket_pass_bytes_at_its_rate_together(
    rate: int, lanes: list[list[int]]
) -> None:
    """--bwlimit charges every lane of a transfer to one bucket: each lane waits for what it
    charged, and the lanes together never pass more than the rate plus the burst."""
    clock = Clock()
    bucket = TokenBucket(rate, clock)
    free = [0.0] * len(lanes)  # when each lane may send its next chunk
    passed: list[tuple[float, int]] = []
    queues = [list(sizes) for sizes in lanes]
    while any(queues):
        # The lane that is free first charges its next chunk (the event loop's order).
        lane = min((i for i, q in enumerate(queues) if q), key=lambda i: free[i])
        clock.now = max(clock.now, free[lane])
        n = queues[lane].pop(0)
        free[lane] = clock.now + bucket.charge(n)
        passed.append((free[lane], n))
    for t, _ in passed:  # every prefix of time: bytes passed by then within the bound
        by_then = sum(n for when, n in passed if when <= t)
        assert by_then <= rate * t + bucket.burst + 1e-6 * by_then


def test_paced_waits_what_the_pace_says(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(ratelimit.asyncio, "sleep", sleep)
    charged: list[int] = []

    def pace(n: int) -> float:
        charged.append(n)
        return 0.5 if n > 10 else 0.0

    async def main() -> None:
        await paced(None, 100)  # no limit: nothing charged, no wait
        await paced(pace, 5)
        await paced(pace, 50)

    asyncio.run(main())
    assert charged == [5, 50]
    assert waits == [0.5]
