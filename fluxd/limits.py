"""Run-time limits: connection and upload counts, and the bandwidth buckets (fluxio.ratelimit)
of the daemon and of each subject.

Counting happens on the event loop only, so plain dicts suffice. Every `admit_*` that returns
True must be paired with one `release_*` (the `Slot` helper makes that hard to get wrong).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from fluxio.ratelimit import Pace, TokenBucket
from fluxproto.errors import LimitExceeded, Unavailable

from .config import Limits

__all__ = ["Admission", "Slot", "Throttle", "peer_host"]


def peer_host(peer: str) -> str:
    """A channel's `peer` without the port (`1.2.3.4:5` and `[::1]:5` forms): what the
    per-address limits count."""
    host = peer.rpartition(":")[0] or peer
    return host.strip("[]")


class Slot:
    """A counted place (a connection, an upload) released exactly once."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class Admission:
    """Counts open connections (in all, per address, per subject) and uploads per subject."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.by_address: Counter[str] = Counter()
        self.by_subject: Counter[str] = Counter()
        self.uploads: Counter[str] = Counter()
        #: Bytes announced by each account's open uploads (for quotas).
        self.reserved: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_address.values())

    def connection(self, address: str) -> Slot | None:
        """A connection slot for a client at `address`, or None when a limit is reached."""
        lim = self.limits
        if self.total >= lim.connections or self.by_address[address] >= lim.connections_per_address:
            return None
        self.by_address[address] += 1
        return Slot(lambda: _decrement(self.by_address, address))

    def subject(self, subject: str) -> Slot:
        """A slot for one more connection of `subject`.

        Raises:
            Unavailable: the subject has `connections_per_subject` open (retry later).
        """
        if self.by_subject[subject] >= self.limits.connections_per_subject:
            raise Unavailable(
                f"{subject!r} already has {self.by_subject[subject]} connections open "
                f"(limit {self.limits.connections_per_subject}); try again later"
            )
        self.by_subject[subject] += 1
        return Slot(lambda: _decrement(self.by_subject, subject))

    def upload(self, subject: str) -> Slot:
        """A slot for one more open upload by `subject`.

        Raises:
            LimitExceeded: the subject already has `uploads_per_subject` uploads open.
        """
        if self.uploads[subject] >= self.limits.uploads_per_subject:
            raise LimitExceeded(
                f"{subject!r} already has {self.uploads[subject]} uploads open "
                f"(limit {self.limits.uploads_per_subject})"
            )
        self.uploads[subject] += 1
        return Slot(lambda: _decrement(self.uploads, subject))

    def reserve(self, subject: str, size: int) -> Slot:
        """Count `size` bytes announced by an open upload of `subject` (for its quota) until
        the slot is released: when the file is committed (it is then stored) or given up."""
        self.reserved[subject] += size
        return Slot(lambda: _decrement(self.reserved, subject, size))


def _decrement(counter: Counter[str], key: str, by: int = 1) -> None:
    counter[key] -= by
    if counter[key] <= 0:
        del counter[key]


class Throttle:
    """The buckets one transfer passes through: the daemon's global one and its subject's."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.global_bucket = TokenBucket(limits.rate) if limits.rate else None
        self._subjects: dict[str, TokenBucket] = {}

    def buckets(self, subject: str) -> list[TokenBucket]:
        found = [self.global_bucket] if self.global_bucket is not None else []
        if self.limits.rate_per_subject:
            bucket = self._subjects.get(subject)
            if bucket is None:
                bucket = self._subjects[subject] = TokenBucket(self.limits.rate_per_subject)
            found.append(bucket)
        return found

    def pacer(self, subject: str) -> Pace | None:
        """A function charging n bytes to every bucket of `subject` and returning the longest
        wait, or None when no rate applies (the common case costs nothing)."""
        buckets = self.buckets(subject)
        if not buckets:
            return None
        return lambda n: max(b.charge(n) for b in buckets)
