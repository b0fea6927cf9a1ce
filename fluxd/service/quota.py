"""The quota check: what a subject stores, plus what its open uploads announced.

Uploads of one subject open and commit at once (a tree's files, several lanes), and an
upload's bytes move from announced (`Admission.reserved`) to stored when its commit publishes
the file. The check must count every upload once. Never less: so it reads the reservations
before the storage's usage, and a commit gives its reservation back only once it published.
Not twice, when that refuses an upload that fits: a refusal with a commit in flight during
the check is checked again once those commits are done.

Checks run one at a time per subject, and the storage's usage may be costly (a walk, or on S3
listings): the checks that waited while one measured use its measurement, plus what was
reserved since, rather than each taking its own.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

from fluxproto import FluxError, LimitExceeded

from ..limits import Admission, Slot
from ..storage.base import Storage
from .caller import Caller
from .work import blocking

__all__ = ["Quota"]

#: Checks of one upload before a refusal stands while commits keep overlapping it: at most
#: one more per upload of the subject that could commit meanwhile.
ATTEMPTS = 8


class _Turn:
    """The checks of one account: one at a time, the commits started meanwhile, and the last
    measurement (shared by the checks that were waiting while it was taken)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
        self.started = 0
        self.arrivals = 0
        self.measured: _Measure | None = None


@dataclass
class _Measure:
    """What one check measured: after the `after`th check of the account arrived, the bytes
    its open uploads announced, then the bytes stored; `added`, what checks reserved since."""

    after: int
    others: int
    used: int
    added: int = 0

    def fits(self, quota: int, replaced: int, size: int) -> bool:
        return self.used - replaced + self.others + self.added + size <= quota


class Quota:
    """The quota of each subject (`limits.quota` under its root), on the event loop only."""

    def __init__(self, quota: int, admission: Admission, storage: Storage, pool: Executor):
        self.quota, self.admission, self.storage, self.pool = quota, admission, storage, pool
        self._turns: dict[str, _Turn] = {}  # accounts with a check running or waiting
        self._commits: dict[str, set[asyncio.Future[None]]] = {}  # in flight, by account

    def __len__(self) -> int:
        """Accounts with a check or a commit under way (none once all is done)."""
        return len(self._turns.keys() | self._commits.keys())

    async def reserve(self, caller: Caller, key: str, size: int) -> Slot:
        """Reserve `size` bytes for an upload to `key` by `caller`, or refuse it.

        Counted: the files under the subject's root, plus what its other open uploads
        announced, minus the file this upload replaces. One check of an account runs at a
        time and reserves before the next starts, so uploads opened together are admitted as
        they would be one after another. Without a quota, or a root to count, it only
        reserves.

        Raises:
            LimitExceeded: the upload would take the subject over its quota.
        """
        account, root = caller.account, caller.grant.root
        if not self.quota or not root:
            return self.admission.reserve(account, size)
        turn = self._turns.setdefault(account, _Turn())
        turn.users += 1
        turn.arrivals += 1
        arrived = turn.arrivals
        try:
            async with turn.lock:
                # Measured since this check arrived: as fresh as its own would be. A refusal
                # is measured again (the measurement may count a commit twice).
                shared, replaced = turn.measured, None
                if shared is not None and arrived <= shared.after:
                    replaced = await self._replaced(key)
                    if shared.fits(self.quota, replaced, size):
                        return self._take(shared, account, size)
                return await self._measured(caller, turn, key, replaced, size)
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[account]

    async def _measured(
        self, caller: Caller, turn: _Turn, key: str, replaced: int | None, size: int
    ) -> Slot:
        """The check of `reserve` with a measurement of its own, taken again while a refusal
        may have counted a commit twice. The size of the file at `key` (`replaced`, if the
        caller read it already) is read once: the path is this subject's upload to make."""
        account = caller.account
        for _ in range(ATTEMPTS):
            overlapped = set(self._commits.get(account, ()))
            started, after = turn.started, turn.arrivals
            others = self.admission.reserved[account]
            used = await blocking(self.pool, self.storage.usage, caller.grant.root)
            turn.measured = measure = _Measure(after, others, used)
            if replaced is None:
                replaced = await self._replaced(key)
            if measure.fits(self.quota, replaced, size):
                return self._take(measure, account, size)
            overlapped |= self._commits.get(account, set())
            if not overlapped and turn.started == started:
                break  # nothing was counted twice: the refusal stands
            if overlapped:
                await asyncio.wait(overlapped)
        raise LimitExceeded(
            f"quota of {self.quota} bytes for {caller.grant.subject!r} would be exceeded "
            f"({measure.used} bytes stored, {measure.others + measure.added} in other uploads, "
            f"this file {size})"
        )

    async def _replaced(self, key: str) -> int:
        """The size of the file an upload to `key` replaces (0: none)."""
        try:
            return (await blocking(self.pool, self.storage.stat, key)).size
        except FluxError:  # nothing there (or not a file: the upload will say so)
            return 0

    def _take(self, measure: _Measure, account: str, size: int) -> Slot:
        measure.added += size
        return self.admission.reserve(account, size)

    def committing(self, account: str, reservation: Slot, work: asyncio.Future[None]) -> None:
        """Track `work`, a commit of an upload of `account` that holds `reservation`. Once it
        has published the file, the reservation is given back in the same step that ends the
        tracking: a check sees the file as announced, as in flight, or as stored."""
        commits = self._commits.setdefault(account, set())
        commits.add(work)
        turn = self._turns.get(account)
        if turn is not None:
            turn.started += 1

        def done(work: asyncio.Future[None]) -> None:
            commits.discard(work)
            if not commits and self._commits.get(account) is commits:
                del self._commits[account]
            if not work.cancelled() and work.exception() is None:
                reservation.release()

        work.add_done_callback(done)
