"""Connection and upload counting, and the token buckets behind the rate limits (fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxd.config import Limits
from fluxd.limits import BURST_SECONDS, Admission, Throttle, TokenBucket, peer_host
from fluxproto import LimitExceeded, Unavailable


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


def test_throttle_combines_global_and_subject_buckets() -> None:
    assert Throttle(Limits()).pacer("a") is None  # no limit: nothing to charge
    throttle = Throttle(Limits(rate=1000, rate_per_subject=100))
    pace_a, pace_b = throttle.pacer("a"), throttle.pacer("b")
    assert pace_a is not None and pace_b is not None
    assert pace_a(25) == 0  # within a's burst of 25 bytes
    # The subject's bucket is the tighter one (real clock: a few microseconds refill it).
    assert pace_a(100) == pytest.approx(1.0, abs=0.01)
    assert pace_b(25) == 0  # b has a bucket of its own ...
    assert throttle.pacer("a") is not None and len(throttle.buckets("a")) == 2
    assert throttle.buckets("a")[1] is throttle.buckets("a")[1]  # ... kept across connections


def test_admission_counts_and_releases_exactly_once() -> None:
    adm = Admission(Limits(connections=3, connections_per_address=2))
    a1, a2 = adm.connection("1.1.1.1"), adm.connection("1.1.1.1")
    assert a1 is not None and a2 is not None
    assert adm.connection("1.1.1.1") is None  # per address
    b1 = adm.connection("2.2.2.2")
    assert b1 is not None
    assert adm.connection("3.3.3.3") is None  # in all
    a1.release()
    a1.release()  # idempotent
    assert adm.total == 2 and adm.by_address["1.1.1.1"] == 1
    assert adm.connection("3.3.3.3") is not None


def test_subject_and_upload_slots() -> None:
    adm = Admission(Limits(connections_per_subject=1, uploads_per_subject=2))
    s = adm.subject("alice")
    with pytest.raises(Unavailable, match="1 connections open"):
        adm.subject("alice")
    s.release()
    adm.subject("alice")
    u1, u2 = adm.upload("alice", 10), adm.upload("alice", 5)
    assert adm.reserved["alice"] == 15
    with pytest.raises(LimitExceeded, match="2 uploads open"):
        adm.upload("alice", 1)
    u1.release()
    u2.release()
    assert "alice" not in adm.uploads and "alice" not in adm.reserved


@pytest.mark.parametrize(
    ("peer", "host"), [("1.2.3.4:5", "1.2.3.4"), ("[::1]:7070", "::1"), ("?", "?")]
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host
