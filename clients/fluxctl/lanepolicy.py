"""When a lane of a transfer counts as stalled, which lanes may carry chunks, and how many.

Pure bookkeeping: time is an argument (`now`), nothing here waits or reads a clock, so the
policies are tested by feeding them times and byte counts (tests/client/test_lanepolicy.py).
The schedulers that apply them are lanesend.py (uploads) and lanerecv.py (downloads).

**Stalls.** A lane with chunks in flight is *suspect* when its path shows no sign of life
for STALL_FLOOR seconds: no acknowledgement at the transport's level of what it sent (TCP: the
kernel's last ACK, while segments are unacknowledged; QUIC: the last datagram, which a live path
sends at least every second). "A few round trips", measured where a dead path shows, and blind
to a server that is merely slow to acknowledge at flux's level (its disk, a rate limit, a long
queue on a slow link), where sending the chunks again elsewhere would not help. Such a lane is
suspect too, but much later: after ACK_GAPS of its usual gaps between ACKs, never sooner than
ACK_FLOOR (before its first ACK of the transfer: FIRST_ACK_WAIT).

A download lane (`Hearing`) sends little that the transport would acknowledge, and a server
legitimately sends nothing on it at times (its queue is empty, or the client's disk holds the
ACKs back), so silence alone means nothing there. Instead the lane makes the server owe it an
answer: once nothing came on its connection for PING_AFTER seconds, it sends a PING, which a
live server answers at once whatever its queue or disk. A lane whose connection then stays
silent past STALL_FLOOR (no byte, no datagram: QUIC's own PINGs are answered too) is suspect.

**The gate.** A QUIC lane costs ~20x the CPU per byte of a TCP lane here, and a client's
lanes share one event loop (one core): on a fast clean path, every chunk QUIC takes slows TCP
by more than QUIC adds (loopback: TCP alone 300-600 MB/s, QUIC 15-36 MB/s). So one kind of
lane is the *primary* (TCP at first: the cheapest) and the other kind, the *side*, takes chunks
beside a healthy primary only where measuring the transfer's own rate says it helps:

- The primary alone first. A transfer shorter than FIRST_PROBE seconds never tries the side.
- Then, every so often, a *probe*: the other arrangement (the side added, or taken out again)
  for PROBE seconds; the transfer's rate over the probe's last MEASURE seconds is compared with
  its rate over the MEASURE seconds before it. The side stays in only if it raised the rate by
  MARGIN (the tie goes to the primary alone). The next probe comes REPROBE seconds later, twice
  as long each time the answer stays the same (up to MAX_REPROBE). A side that won by being
  added becomes the primary (the old primary, now the side, stays in until a probe shows it
  does not help): on a fast clean path TCP stays primary, where QUIC does better it takes over.
  A kind whose lane broke in this transfer does not lead again that way: it stays in beside
  the primary, capped, where it helps.
- No primary lane up, or every one suspect: the side carries, at once and without a cap; the
  measurements start again once the primary is back.
- A primary lane that fails (its connection, or dropped for a stall) while a side lane lives
  on, delivering within HANDOVER seconds, hands the primary role to the side's kind: the path
  has shown it breaks that kind of connection (an address change kills every TCP connection
  and none of QUIC's), so the next break costs nothing in flight. A blackhole silences both
  kinds and proves nothing; a primary that is only slow is left to the probes.

**Flight.** Every lane holds in flight at most what it carried over the last HORIZON seconds (at
least two chunks), and a side lane beside a healthy primary what it carried over SIDE_HORIZON
(at least one): what a lane holds when its connection dies must be sent again, and
a slow link's window holds far more than the link carries in a round trip.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: A lane whose path is silent this long, chunks in flight, is suspect (see the docstring) ...
STALL_FLOOR = 2.0
#: ... and one whose flux ACKs stopped, after this many of its usual gaps between them ...
ACK_GAPS = 8
#: ... but not sooner than this many seconds, nor before FIRST_ACK_WAIT without any ACK yet.
ACK_FLOOR = 10.0
FIRST_ACK_WAIT = 15.0
#: A download lane that heard nothing for this long sends a PING (see the docstring).
PING_AFTER = 0.5
#: Weight of a new gap between ACKs in its moving average.
SMOOTHING = 0.25

#: Seconds of transfer before QUIC is first tried beside a healthy TCP lane (a probe where TCP
#: fills the path costs about a second: on the 1 Gbit/s `lan` link, a probe at 4 s of a 9 s
#: send made it 0.90x of TCP alone, QUIC's CPU slowing TCP while it was in) ...
FIRST_PROBE = 10.0
#: ... and before its lane is opened, unless TCP fails or stalls first (lanes.py).
QUIC_AFTER = FIRST_PROBE - 1.0
#: How long a probe lasts, and the part of it (its end) whose rate counts: QUIC ramps up first.
PROBE = 1.5
MEASURE = 1.0
#: QUIC stays in only if the transfer's rate with it is this much higher than without.
MARGIN = 1.15
#: Seconds until the next probe, doubling while the answer stays the same.
REPROBE = 16.0
MAX_REPROBE = 64.0
#: A primary lane that failed hands the lead over if a side lane delivers within this many
#: seconds and did not fail since (a blackhole silences both; an address change then kills
#: TCP, and QUIC's first ACK comes a moment later).
HANDOVER = 15.0
#: A lane holds in flight at most what it delivers in this many seconds (at least two chunks) ...
HORIZON = 2.0
#: ... and a side lane beside a healthy primary in this many, so that going back to the
#: primary alone (or the end of the file) never waits long for the side's last chunks.
SIDE_HORIZON = 0.5


class LaneMeter:
    """One lane's progress within one transfer: bytes in flight, ACK gaps, what it carried.

    Attributes:
        inflight: payload bytes sent on the lane and not yet acknowledged there.
        delivered: bytes this lane delivered first (acknowledged before any other lane did).
        acked_bytes: bytes acknowledged on this lane (copies that arrived elsewhere first too).
    """

    def __init__(self, now: float) -> None:
        self.inflight = 0
        self.delivered = 0
        self.acked_bytes = 0
        self._since = now  # the start of the current wait for an ACK
        self._gap: float | None = None
        self._born = now
        self._ticks: deque[tuple[float, int]] = deque([(now, 0)])  # (when, acked_bytes)

    def sent(self, now: float, nbytes: int) -> None:
        """A chunk of `nbytes` left on this lane."""
        if not self.inflight:
            self._since = now  # the lane was idle: the wait for an ACK starts now
        self.inflight += nbytes

    def acked(self, now: float, freed: int, delivered: int) -> None:
        """An ACK on this lane: `freed` bytes of it left flight, `delivered` of them were
        delivered here first (the rest had arrived through another lane already)."""
        gap = now - self._since
        self._gap = gap if self._gap is None else self._gap + SMOOTHING * (gap - self._gap)
        self._since = now
        self.inflight = max(0, self.inflight - freed)
        self.delivered += delivered
        self.acked_bytes += freed

    def threshold(self) -> float:
        """Seconds without a flux ACK, chunks in flight, after which the lane is suspect."""
        if self._gap is None:
            return FIRST_ACK_WAIT
        return max(ACK_FLOOR, ACK_GAPS * self._gap)

    def suspect(self, now: float, silence: float) -> bool:
        """True if chunks are in flight and either the path has been silent (`silence`, the
        transport's, seconds) for STALL_FLOOR or no ACK came for `threshold()` seconds."""
        if not self.inflight:
            return False
        return silence > STALL_FLOOR or now - self._since > self.threshold()

    def tick(self, now: float) -> None:
        """Note what the lane carried so far (call it regularly: `cap` looks back HORIZON)."""
        self._ticks.append((now, self.acked_bytes))
        while len(self._ticks) > 1 and self._ticks[1][0] <= now - HORIZON:
            self._ticks.popleft()

    def carried(self, now: float, seconds: float) -> int:
        """Bytes acknowledged on this lane over about the last `seconds` (at most HORIZON)."""
        since = next((b for t, b in self._ticks if t >= now - seconds), self.acked_bytes)
        return self.acked_bytes - since

    def cap(self, now: float, chunk_size: int, side: bool) -> int:
        """The most bytes this lane may hold in flight: what it carried over the last HORIZON
        seconds, at least two chunks (one keeps the link busy while the other's ACK comes
        back); as a side lane beside a healthy primary, over SIDE_HORIZON, at least one chunk.
        A lane younger than that counts what it carried in its life, scaled up to the span.
        Measured, not extrapolated from a rate: ACKs come a chunk at a time, in bursts."""
        span = SIDE_HORIZON if side else HORIZON
        seen = min(span, now - self._born)
        carried = int(self.carried(now, span) * span / seen) if seen > 0 else 0
        return max(chunk_size if side else 2 * chunk_size, carried)


class Hearing:
    """Whether a download lane's connection still shows life (module docstring: stalls).

    `heard` is the loop time of the last bytes (or datagram) that came on the connection
    (Channel.last_receive); the watch starts at `now`, when the lane's request started.
    """

    def __init__(self, now: float) -> None:
        self._since = now
        self._pinged: float | None = None

    def ping(self, now: float, heard: float) -> bool:
        """True if a PING should go now: nothing came for PING_AFTER seconds and no PING
        went since something last came (the PING then counts as sent)."""
        last = max(heard, self._since)
        if now - last < PING_AFTER or (self._pinged is not None and self._pinged >= last):
            return False
        self._pinged = now
        return True

    def suspect(self, now: float, heard: float) -> bool:
        """True if nothing came for longer than STALL_FLOOR seconds."""
        return now - max(heard, self._since) > STALL_FLOOR


@dataclass
class _Sample:
    when: float
    delivered: int


class LaneGate:
    """Which kind of lane is the primary, and whether side lanes may take chunks now (module
    docstring: the gate).

    Call `update(now, delivered, primary_healthy, side_delivered)` regularly (a few times a
    second) with the transfer's total of bytes delivered, and `failed` when a lane fails; ask
    `allowed(kind)` and `capped(kind)`.

    Attributes:
        primary: "tcp" or "quic".
        probes: probes started, and `kept` how many of them ended with the side in (for tests
            and the run's report).
    """

    def __init__(self, now: float, primary: str = "tcp") -> None:
        self.primary = primary
        self.probes = 0
        self.kept = 0
        self._primary_healthy = True
        self._with_side = False  # the arrangement in force while the primary is healthy
        self._trial = False  # True during a probe
        self._switch_at = now + FIRST_PROBE  # when the next probe starts (or this one ends)
        self._reprobe = REPROBE
        self._before = 0.0  # the rate measured just before the probe
        self._samples: list[_Sample] = []
        self._broke: dict[str, float] = {}  # when a lane of each kind last failed

    @property
    def side(self) -> str:
        """The kind of the side lanes."""
        return "quic" if self.primary == "tcp" else "tcp"

    def allowed(self, kind: str) -> bool:
        """True if lanes of `kind` may take chunks."""
        return kind == self.primary or not self._primary_healthy or self._with_side

    def capped(self, kind: str) -> bool:
        """True if lanes of `kind` run as side lanes beside a healthy primary (SIDE_HORIZON)."""
        return kind != self.primary and self._primary_healthy

    def update(
        self, now: float, delivered: int, primary_healthy: bool, side_delivered: bool = False
    ) -> None:
        """Feed the time, the bytes delivered so far, whether any primary lane is up and not
        suspect, and whether a side lane delivered since the last update; probes start and
        end here, and the lead may change hands."""
        self._hand_over(now, side_delivered)
        if not primary_healthy:
            if self._primary_healthy:  # the rates without it say nothing about it: start over
                self._primary_healthy, self._trial, self._with_side = False, False, False
                self._samples.clear()
            return
        if not self._primary_healthy:
            self._primary_healthy = True
            self._switch_at, self._reprobe = now + FIRST_PROBE, REPROBE
        self._samples.append(_Sample(now, delivered))
        self._forget(now)
        if now < self._switch_at:
            return
        if self._trial:
            self._decide(now)
        else:
            self._start_probe(now)

    def failed(self, now: float, kind: str) -> None:
        """A lane of `kind` failed (its connection, or dropped for a stall)."""
        self._broke[kind] = now

    def _hand_over(self, now: float, side_delivered: bool) -> None:
        """The primary broke within HANDOVER seconds, the side did not since, and a side lane
        delivered meanwhile: the side leads (module docstring). Both kinds go dark in a
        blackhole; only the one that lives on after it counts."""
        broke = self._broke.get(self.primary)
        if broke is None or now - broke > HANDOVER or not side_delivered:
            return
        if self._broke.get(self.side, -1.0) >= broke:
            return
        self.primary = self.side
        self._with_side, self._trial = False, False
        self._switch_at, self._reprobe = now + FIRST_PROBE, REPROBE
        self._samples.clear()

    def _start_probe(self, now: float) -> None:
        self._before = self._rate(now)
        self._trial, self._with_side = True, not self._with_side
        self._switch_at = now + PROBE
        self.probes += 1

    def _decide(self, now: float) -> None:
        during, before = self._rate(now), self._before
        added = self._with_side  # the probe added the side (else it took it out)
        side_wins = during > before * MARGIN if added else before > during * MARGIN
        self.kept += side_wins
        same = side_wins != added  # the arrangement before the probe stays
        self._with_side, self._trial = side_wins, False
        if side_wins and added and self.side not in self._broke:
            self.primary = self.side  # it raised the rate: it leads, the old primary is tried out
        self._reprobe = min(MAX_REPROBE, self._reprobe * 2) if same else REPROBE
        self._switch_at = now + self._reprobe

    def _rate(self, now: float) -> float:
        """Bytes/s delivered over the last MEASURE seconds (0 without two samples in it)."""
        window = [s for s in self._samples if s.when >= now - MEASURE]
        if len(window) < 2 or window[-1].when <= window[0].when:
            return 0.0
        first, last = window[0], window[-1]
        return (last.delivered - first.delivered) / (last.when - first.when)

    def _forget(self, now: float) -> None:
        cut = now - 2 * MEASURE
        while len(self._samples) > 2 and self._samples[0].when < cut:
            self._samples.pop(0)
