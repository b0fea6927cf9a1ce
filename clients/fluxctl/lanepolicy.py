"""When a lane of a transfer counts as stalled, and when the QUIC lane may carry chunks.

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

**The QUIC gate.** A QUIC lane costs ~20x the CPU per byte of a TCP lane here, and a client's
lanes share one event loop (one core): on a fast clean path, every chunk QUIC takes slows TCP
by more than QUIC adds (loopback: TCP alone 300-600 MB/s, QUIC 15-36 MB/s). So while a TCP lane
is healthy, QUIC takes chunks only where measuring the transfer's own rate says it helps:

- TCP alone first. A transfer shorter than FIRST_PROBE seconds never tries QUIC.
- Then, every so often, a *probe*: the other arrangement (QUIC added, or QUIC taken out again)
  for PROBE seconds; the transfer's rate over the probe's last MEASURE seconds is compared with
  its rate over the MEASURE seconds before it. QUIC stays in only if it raised the rate by
  MARGIN (the tie goes to TCP alone, which costs less CPU). The next probe comes REPROBE
  seconds later, twice as long each time the answer stays the same (up to MAX_REPROBE).
- No TCP lane up, or every TCP lane suspect: QUIC carries, at once and without a cap; the
  measurements start again once TCP is back.
"""

from __future__ import annotations

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
#: Weight of a new gap (or rate) sample in its moving average.
SMOOTHING = 0.25

#: Seconds of transfer before QUIC is first tried beside a healthy TCP lane ...
FIRST_PROBE = 4.0
#: ... and before its lane is opened, unless TCP fails or stalls first (lanes.py).
QUIC_AFTER = FIRST_PROBE - 1.0
#: How long a probe lasts, and the part of it (its end) whose rate counts: QUIC ramps up first.
PROBE = 1.5
MEASURE = 1.0
#: QUIC stays in only if the transfer's rate with it is this much higher than without.
MARGIN = 1.15
#: Seconds until the next probe, doubling while the answer stays the same.
REPROBE = 8.0
MAX_REPROBE = 64.0
#: While QUIC runs beside a healthy TCP lane, the bytes it holds in flight are capped at what it
#: delivers in this many seconds (at least two chunks), so that going back to TCP alone (or the
#: end of the file) never waits long for QUIC's last chunks.
SIDE_HORIZON = 0.5


class LaneMeter:
    """One lane's progress within one transfer: bytes in flight, ACK gaps, delivery rate.

    Attributes:
        inflight: payload bytes sent on the lane and not yet acknowledged there.
        delivered: bytes this lane delivered first (acknowledged before any other lane did).
        rate: smoothed delivery rate in bytes/s (see `tick`).
    """

    def __init__(self, now: float) -> None:
        self.inflight = 0
        self.delivered = 0
        self.rate = 0.0
        self._since = now  # the start of the current wait for an ACK
        self._gap: float | None = None
        self._ticked, self._ticked_bytes = now, 0

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
        """Fold the bytes delivered since the last tick into `rate` (call it regularly)."""
        elapsed = now - self._ticked
        if elapsed <= 0:
            return
        sample = (self.delivered - self._ticked_bytes) / elapsed
        self.rate = sample if not self.rate else self.rate + SMOOTHING * (sample - self.rate)
        self._ticked, self._ticked_bytes = now, self.delivered

    def side_cap(self, chunk_size: int) -> int:
        """The most bytes this lane may hold in flight as a side lane (see SIDE_HORIZON)."""
        return max(2 * chunk_size, int(self.rate * SIDE_HORIZON))


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


class QuicGate:
    """Whether QUIC lanes may take chunks now (module docstring: the QUIC gate).

    Call `update(now, delivered, tcp_healthy)` regularly (a few times a second) with the
    transfer's total of bytes delivered; read `quic_allowed` and `quic_capped`.

    Attributes:
        probes: probes started, and `kept` how many of them ended with QUIC in (for tests and
            the run's report).
    """

    def __init__(self, now: float) -> None:
        self.probes = 0
        self.kept = 0
        self._tcp_healthy = True
        self._with_quic = False  # the arrangement in force while TCP is healthy
        self._trial = False  # True during a probe
        self._switch_at = now + FIRST_PROBE  # when the next probe starts (or this one ends)
        self._reprobe = REPROBE
        self._before = 0.0  # the rate measured just before the probe
        self._samples: list[_Sample] = []

    @property
    def quic_allowed(self) -> bool:
        """True if QUIC lanes may take chunks."""
        return not self._tcp_healthy or self._with_quic

    @property
    def quic_capped(self) -> bool:
        """True if QUIC runs beside a healthy TCP lane: its flight is capped (SIDE_HORIZON)."""
        return self._tcp_healthy

    def update(self, now: float, delivered: int, tcp_healthy: bool) -> None:
        """Feed the time, the bytes delivered so far and whether any TCP lane is up and not
        suspect; probes start and end here."""
        if not tcp_healthy:
            if self._tcp_healthy:  # the rates without TCP say nothing about TCP: start over
                self._tcp_healthy, self._trial, self._with_quic = False, False, False
                self._samples.clear()
            return
        if not self._tcp_healthy:
            self._tcp_healthy = True
            self._switch_at, self._reprobe = now + FIRST_PROBE, REPROBE
        self._samples.append(_Sample(now, delivered))
        self._forget(now)
        if now < self._switch_at:
            return
        if self._trial:
            self._decide(now)
        else:
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        self._before = self._rate(now)
        self._trial, self._with_quic = True, not self._with_quic
        self._switch_at = now + PROBE
        self.probes += 1

    def _decide(self, now: float) -> None:
        during, before = self._rate(now), self._before
        added = self._with_quic  # the probe added QUIC (else it took QUIC out)
        # The tie goes to TCP alone, which costs less CPU.
        quic_wins = during > before * MARGIN if added else before > during * MARGIN
        self.kept += quic_wins
        same = quic_wins != added  # the arrangement before the probe stays
        self._with_quic, self._trial = quic_wins, False
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
