"""Connection and upload counting, and which buckets a subject's transfers pass through
(the bucket itself: tests/runtime/test_ratelimit.py)."""

from __future__ import annotations

import pytest

from fluxd.config import Limits
from fluxd.limits import Admission, Throttle, peer_host
from fluxproto import LimitExceeded, Unavailable


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
    u1, u2 = adm.upload("alice"), adm.upload("alice")
    r1, r2 = adm.reserve("alice", 10), adm.reserve("alice", 5)
    assert adm.reserved["alice"] == 15
    with pytest.raises(LimitExceeded, match="2 uploads open"):
        adm.upload("alice")
    for slot in (u1, u2, r1, r2, r1):  # r1 twice: a release is idempotent
        slot.release()
    assert "alice" not in adm.uploads and "alice" not in adm.reserved


@pytest.mark.parametrize(
    ("peer", "host"), [("1.2.3.4:5", "1.2.3.4"), ("[::1]:7070", "::1"), ("?", "?")]
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host
