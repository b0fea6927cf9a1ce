"""The chunk queue of a shared download (PROTOCOL.md 9.1): which wanted chunk goes on which of
the transfer's requests ("lanes"), what each lane holds, and what is delivered.

Pure bookkeeping on the event loop: no frames, no I/O; the time is an argument (`now`). A lane
takes the next chunk when its connection's window has room, so the lane whose acknowledgements
come back sooner takes more. A chunk a lane held when it ended goes back to the front of the
queue. A chunk held only by lanes that look stalled may be taken by another lane as well, and
its first acknowledgement wins; a lane looks stalled when the others had twice its window
acknowledged since its last acknowledgement, or, once the queue is empty, when it had none for
STALL_SECONDS. Once the queue is empty an idle lane also takes a copy of the chunk another lane
would deliver last, when at the rates seen so far it would deliver it in less than half the
time (the end game: a slow lane's last chunks do not hold the file back). Every lane is woken
(`Lane.wake`) when something it may wait for changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from fluxproto import FluxError

from .indexset import IndexSet

__all__ = ["STALL_SECONDS", "Lane", "SharedQueue"]

#: Once nothing is left in the queue, a lane that had no acknowledgement for this long while
#: holding chunks counts as stalled: an idle lane may send them too. Far above a round trip,
#: so a lane that is only slower is left alone (a byte rule covers the rest of the transfer).
STALL_SECONDS = 2.0


class Lane:
    """One request's part in a shared download.

    Args:
        wake: wakes the request's sender, which then looks at the queue again.
        delivered: counts payload bytes this lane was the first to have acknowledged.
        window: the lane connection's transfer window (its peer's), which sets when the lane
            counts as stalled.
    """

    def __init__(
        self, wake: Callable[[], None], delivered: Callable[[int], None], window: int
    ) -> None:
        self.wake, self.delivered = wake, delivered
        #: Chunks this lane took and has not had acknowledged (read ahead, or in flight),
        #: oldest first.
        self.held: dict[int, None] = {}
        #: The queue's `acked_bytes`, and the time, when this lane last showed progress.
        self.mark = 0
        self.heard = 0.0
        self.stall_after = 2 * window
        #: Counted as stalled since its last acknowledgement (the lanes were woken for it).
        self.stalled = False
        #: Payload bytes acknowledged on this lane (copies too), and since when it sends.
        self.acked = 0
        self.since: float | None = None

    def rate(self, now: float) -> float:
        """Bytes per second acknowledged on this lane so far (0: none yet)."""
        if self.since is None or not self.acked or now <= self.since:
            return 0.0
        return self.acked / (now - self.since)

    def __repr__(self) -> str:
        return f"Lane(held={len(self.held)}, mark={self.mark})"


class SharedQueue:
    """What one shared download still has to deliver, and which lane holds what.

    Args:
        wanted: the transfer's chunk indices (the opener's selection).
        length: the payload length of chunk i.
    """

    def __init__(self, wanted: Iterable[int], length: Callable[[int], int]) -> None:
        self._queue: deque[int] = deque(wanted)
        self._left = set(self._queue)
        self._length = length
        self._holders: dict[int, list[Lane]] = {}
        self.lanes: list[Lane] = []
        #: Payload bytes acknowledged so far, each chunk once.
        self.acked_bytes = 0
        #: Why the transfer cannot complete (a stored chunk is corrupt), once it cannot.
        self.failure: FluxError | None = None
        self._sent = IndexSet()  # chunks some lane has sent

    @property
    def lacking(self) -> int:
        """Wanted chunks not yet acknowledged on any lane."""
        return len(self._left)

    @property
    def complete(self) -> bool:
        return not self._left

    @property
    def finished(self) -> bool:
        """Complete, or failed: no lane takes anything more."""
        return not self._left or self.failure is not None

    def first_send(self, index: int) -> bool:
        """A lane is about to send chunk `index`: True unless some lane sent it already (one
        that stalled, or left with it unacknowledged)."""
        return self._sent.add(index)

    def needed(self, index: int) -> bool:
        """Chunk `index` has not been acknowledged on any lane yet."""
        return index in self._left

    # --- lanes ----------------------------------------------------------------------------------

    def join(self, lane: Lane, now: float) -> None:
        lane.mark, lane.heard = self.acked_bytes, now
        self.lanes.append(lane)

    def leave(self, lane: Lane) -> None:
        """The lane's request ended: what it held and nobody acknowledged goes to the others."""
        self.lanes.remove(lane)
        back = [i for i in lane.held if self._drop(lane, i)]
        lane.held.clear()
        if back:
            self._queue.extendleft(reversed(back))
            self._wake()

    def take(self, lane: Lane, now: float) -> int | None:
        """The next chunk for `lane` to send (None: nothing for it now): one that only stalled
        lanes hold, else the next in the queue."""
        if self.finished:
            return None
        index = self._stolen(lane, now)
        if index is None:
            index = self._next_queued()
        if index is None:
            return None
        if not lane.held:  # a lane with nothing out was not stalled
            lane.mark, lane.heard = self.acked_bytes, now
        if lane.since is None:
            lane.since = now
        lane.held[index] = None
        self._holders.setdefault(index, []).append(lane)
        return index

    def has_work(self, lane: Lane, now: float) -> bool:
        """Whether `take(lane, now)` would give a chunk."""
        if self.finished:
            return False
        return bool(self._queue) or self._stolen(lane, now) is not None

    def next_stall(self, lane: Lane) -> float | None:
        """When another lane would count as stalled by time (the queue being empty), so that
        `lane`, idle, looks again then; None when no lane holds anything."""
        if self._queue or self.finished:
            return None
        times = [o.heard for o in self.lanes if o is not lane and o.held]
        return min(times) + STALL_SECONDS if times else None

    def unsent(self, lane: Lane, index: int) -> None:
        """`lane` took chunk `index` but will not send it (it was acknowledged elsewhere, or the
        lane stops): back to the queue if still needed and nobody else holds it."""
        if index not in lane.held:
            return
        del lane.held[index]
        if self._drop(lane, index):
            self._queue.appendleft(index)
            self._wake()

    def acked(self, lane: Lane, indices: Sequence[int], now: float) -> int:
        """Chunks acknowledged on `lane`; returns the payload bytes delivered by them (those
        not acknowledged on any lane before), which count in the lane's record."""
        # It shows progress, whether or not another lane's ACK came first.
        lane.mark, lane.heard = self.acked_bytes, now
        lane.stalled = False
        fresh = 0
        for index in indices:
            if index not in lane.held:
                continue  # not one it took (the connection checked it was in flight)
            del lane.held[index]
            self._drop(lane, index)
            lane.acked += self._length(index)
            if index in self._left:
                self._left.discard(index)
                fresh += self._length(index)
        if fresh:
            self.acked_bytes += fresh
            lane.mark = self.acked_bytes
            lane.delivered(fresh)
            self._check_stalls(now)
        if not self._left or not self._queue:
            self._wake()  # the end, or the end game: rates changed
        return fresh

    def fail(self, exc: FluxError) -> None:
        """The transfer cannot complete: every lane stops taking chunks and ends with `exc`."""
        if self.failure is None:
            self.failure = exc
            self._wake()

    # --- internals ------------------------------------------------------------------------------

    def _drop(self, lane: Lane, index: int) -> bool:
        """Forget that `lane` holds `index`; True if it must go back to the queue (needed, and
        no other lane holds it)."""
        holders = self._holders.get(index)
        if holders is not None:
            holders.remove(lane)
            if holders:
                return False
            del self._holders[index]
        return index in self._left

    def _next_queued(self) -> int | None:
        # What the queue holds is needed and held by no lane (leave and unsent see to it).
        return self._queue.popleft() if self._queue else None

    def _is_stalled(self, lane: Lane, now: float) -> bool:
        if not lane.held:
            return False
        if self.acked_bytes - lane.mark >= lane.stall_after:
            return True
        return not self._queue and now - lane.heard >= STALL_SECONDS

    def _stolen(self, lane: Lane, now: float) -> int | None:
        """A chunk held only by stalled lanes, oldest first, that `lane` does not hold; else,
        the queue being empty, the end game's choice."""
        for other in self.lanes:
            if other is lane or not self._is_stalled(other, now):
                continue
            for index in other.held:
                if index in lane.held or index not in self._left:
                    continue
                if all(self._is_stalled(h, now) for h in self._holders.get(index, ())):
                    return index
        return None if self._queue else self._end_game(lane, now)

    def _end_game(self, lane: Lane, now: float) -> int | None:
        """The chunk another lane alone holds and would deliver last, if `lane` would deliver
        it in less than half that time at the rates seen so far."""
        mine = lane.rate(now)
        if not mine:
            return None
        best, latest = None, 0.0
        for other in self.lanes:
            theirs = other.rate(now)
            if other is lane or not other.held:
                continue
            ahead = 0
            for index in other.held:
                ahead += self._length(index)
                if len(self._holders.get(index, ())) != 1 or index not in self._left:
                    continue
                due = ahead / theirs if theirs else float("inf")
                if due > 2 * self._length(index) / mine and due > latest:
                    best, latest = index, due
        return best

    def _check_stalls(self, now: float) -> None:
        """Wake the lanes when one newly counts as stalled: its chunks may go on them now."""
        newly = False
        for lane in self.lanes:
            if not lane.stalled and self._is_stalled(lane, now):
                lane.stalled = newly = True
        if newly:
            self._wake()

    def _wake(self) -> None:
        for lane in list(self.lanes):
            lane.wake()
