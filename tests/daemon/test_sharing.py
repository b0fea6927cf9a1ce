"""The chunk queue of a shared download (fluxd.service.sharing): which lane takes what, what
goes back when a lane ends, when a lane counts as stalled, and that a chunk is delivered once."""

from __future__ import annotations

from fluxd.service.sharing import STALL_SECONDS, Lane, SharedQueue
from fluxproto import IntegrityError

CS = 100  # every chunk's length here
WINDOW = 3 * CS


class Recorded:
    """A lane whose wake-ups and delivered bytes are counted."""

    def __init__(self, queue: SharedQueue, now: float = 0.0) -> None:
        self.wakes = 0
        self.delivered = 0
        self.lane = Lane(self._wake, self._delivered, WINDOW)
        queue.join(self.lane, now)

    def _wake(self) -> None:
        self.wakes += 1

    def _delivered(self, n: int) -> None:
        self.delivered += n


def queue_of(n: int) -> SharedQueue:
    return SharedQueue(range(n), lambda i: CS)


def take_all(q: SharedQueue, lane: Lane, now: float = 0.0) -> list[int]:
    got = []
    while (i := q.take(lane, now)) is not None:
        got.append(i)
    return got


def test_lanes_take_the_chunks_in_turn_each_once() -> None:
    q = queue_of(6)
    a, b = Recorded(q), Recorded(q)
    assert [q.take(a.lane, 0), q.take(b.lane, 0), q.take(a.lane, 0)] == [0, 1, 2]
    assert take_all(q, b.lane) == [3, 4, 5]
    assert q.take(a.lane, 0) is None
    assert not q.has_work(a.lane, 0)


def test_a_chunk_counts_once_on_the_lane_acknowledged_first() -> None:
    q = queue_of(2)
    a, b = Recorded(q), Recorded(q)
    take_all(q, a.lane)
    assert q.acked(a.lane, [0], 0) == CS
    assert (a.delivered, q.lacking, q.complete) == (CS, 1, False)
    assert q.acked(a.lane, [1], 0) == CS
    assert q.complete and q.finished
    assert b.wakes >= 1  # complete: every lane looks again (to send DONE)
    assert q.acked(b.lane, [1], 0) == 0  # not one of its chunks: nothing counted


def test_what_an_ended_lane_held_goes_back_to_the_front() -> None:
    q = queue_of(5)
    a, b = Recorded(q), Recorded(q)
    assert take_all(q, a.lane)[:3] == [0, 1, 2]
    q.acked(a.lane, [0], 0)
    q.unsent(a.lane, 4)  # read but never sent: back too
    q.leave(a.lane)
    assert b.wakes >= 1
    assert take_all(q, b.lane) == [1, 2, 3, 4]  # back at the front: the oldest first
    assert q.lacking == 4


def test_an_unsent_chunk_acknowledged_elsewhere_does_not_come_back() -> None:
    q = queue_of(1)
    a, b = Recorded(q), Recorded(q)
    q.take(a.lane, 0)
    q.acked(a.lane, [0], 0)
    q.unsent(b.lane, 0)  # b never held it
    assert q.complete and not q.has_work(b.lane, 0)


def test_a_lane_behind_by_twice_its_window_is_stalled_and_its_chunks_go_on_others() -> None:
    q = queue_of(20)
    a, b = Recorded(q), Recorded(q)
    slow = [q.take(b.lane, 0) for _ in range(3)]  # 0, 1, 2 never acknowledged
    for _ in range(2 * WINDOW // CS - 1):
        i = q.take(a.lane, 0)
        assert i is not None
        q.acked(a.lane, [i], 0)
    assert q.take(a.lane, 0) == 8  # not yet: from the queue
    before = a.wakes
    q.acked(a.lane, [8], 0)  # now the others had 2 windows acknowledged since b's last ACK
    assert a.wakes == before + 1
    assert [q.take(a.lane, 0) for _ in range(3)] == slow  # b's, oldest first
    assert q.take(a.lane, 0) == 9  # each stolen once: then the queue again
    q.acked(a.lane, slow, 0)
    assert q.acked(b.lane, slow, 0) == 0  # b's late ACKs count nothing
    assert a.delivered == 9 * CS and b.delivered == 0  # 3 to 8, and b's three


def test_a_lane_that_acknowledges_is_not_stalled() -> None:
    q = queue_of(20)
    a, b = Recorded(q), Recorded(q)
    q.take(b.lane, 0)
    q.take(b.lane, 0)
    for _ in range(5):
        q.acked(a.lane, [q.take(a.lane, 0)], 0)  # type: ignore[list-item]
    q.acked(b.lane, [0], 0)  # progress: its mark moves
    q.acked(a.lane, [q.take(a.lane, 0)], 0)  # type: ignore[list-item]
    assert q.take(a.lane, 0) == 8  # b's chunk 1 stays b's


def test_once_the_queue_is_empty_a_silent_lane_is_stalled_after_a_while() -> None:
    q = queue_of(1)
    a, b = Recorded(q), Recorded(q)
    assert q.take(b.lane, 10.0) == 0
    assert q.next_stall(a.lane) == 10.0 + STALL_SECONDS
    assert not q.has_work(a.lane, 11.0)
    assert q.has_work(a.lane, 10.0 + STALL_SECONDS)
    assert q.take(a.lane, 10.0 + STALL_SECONDS) == 0
    assert q.next_stall(a.lane) == 10.0 + STALL_SECONDS  # b still holds it too


def test_the_end_game_copies_what_a_slower_lane_would_deliver_last() -> None:
    q = queue_of(8)
    fast, slow = Recorded(q), Recorded(q)
    assert [q.take(slow.lane, 0.0) for _ in range(3)] == [0, 1, 2]
    q.acked(slow.lane, [0], 1.0)  # 100 B/s
    got = take_all(q, fast.lane, 1.0)
    assert got == [3, 4, 5, 6, 7]
    q.acked(fast.lane, got, 1.1)  # 500 B in 0.1 s: 5000 B/s
    # The queue is empty: slow would deliver chunk 2 in 2 s, fast in 0.02 s.
    assert q.take(fast.lane, 1.1) == 2
    assert q.take(fast.lane, 1.1) == 1  # then the one before it
    assert q.take(fast.lane, 1.1) is None
    q.acked(fast.lane, [1, 2], 1.2)
    assert q.complete and fast.delivered == 7 * CS


def test_no_end_game_against_a_lane_half_as_fast() -> None:
    q = queue_of(4)
    a, b = Recorded(q), Recorded(q)
    assert [q.take(b.lane, 0.0) for _ in range(2)] == [0, 1]
    assert take_all(q, a.lane, 0.0) == [2, 3]
    q.acked(b.lane, [0], 1.0)
    q.acked(a.lane, [2], 1.0)
    q.acked(a.lane, [3], 2.0)  # 100 B/s; b 50 B/s: chunk 1 due in 2 s from b, 2 s from a
    assert q.take(a.lane, 2.0) is None


def test_a_failed_transfer_gives_nothing_more() -> None:
    q = queue_of(3)
    a, b = Recorded(q), Recorded(q)
    q.take(a.lane, 0)
    q.fail(IntegrityError("stored file is corrupt at chunk 0"))
    assert q.finished and not q.complete
    assert q.take(b.lane, 0) is None
    assert (a.wakes, b.wakes) == (1, 1)
