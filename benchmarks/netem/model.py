"""What the emulated link does to each packet, without I/O: a clock and a seed in, decisions out.

A `Link` is two `Pipe`s (one per direction) sharing a `LinkSpec` and a schedule of blackholes and
address changes. A pipe is a token-bucket serializer in front of a drop-tail queue, followed by
a propagation delay with jitter, with random or bursty (Gilbert-Elliott) loss, reordering and
duplication. Everything random comes from `random.Random(seed)` streams, so a run is repeatable
given the same packets at the same times.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state bursty loss: `p` good->bad and `r` bad->good per packet, and the loss
    probability in each state (the classic model: all lost in bad, none in good)."""

    p: float
    r: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    @property
    def mean_loss(self) -> float:
        """The long-run loss rate: time in the bad state times its loss, and so on."""
        bad = self.p / (self.p + self.r) if self.p + self.r else 0.0
        return bad * self.loss_bad + (1 - bad) * self.loss_good


@dataclass(frozen=True)
class LinkSpec:
    """One emulated link, the same in both directions. Times in seconds, rate in bits/s."""

    rate: float | None = None  # None: no rate limit
    rtt: float = 0.0  # round trip added by the link; each direction gets half
    jitter: float = 0.0  # each packet's one-way delay varies uniformly within +- jitter
    loss: float = 0.0  # independent loss probability per packet
    burst_loss: GilbertElliott | None = None  # bursty loss on top of `loss`
    reorder: float = 0.0  # probability a packet is held back by `reorder_gap`
    reorder_gap: float = 0.005
    duplicate: float = 0.0  # probability a packet is delivered twice
    queue: int | None = None  # bytes queued before tail drop [rate x max(rtt, 10 ms), >= 64 KiB]
    blackhole_every: float | None = None  # a blackhole ends every this many seconds ...
    blackhole_for: float = 0.0  # ... after lasting this long
    rebind_every: float | None = None  # the client side's address changes this often
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if min(self.rtt, self.jitter, self.reorder_gap, self.blackhole_for) < 0:
            raise ValueError("times must not be negative")
        if self.jitter > self.rtt / 2:
            raise ValueError("jitter must not exceed the one-way delay (rtt / 2)")
        for name in ("blackhole_every", "rebind_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.blackhole_every is not None and self.blackhole_for >= self.blackhole_every:
            raise ValueError("blackhole_for must be shorter than blackhole_every")

    @property
    def queue_bytes(self) -> int:
        if self.queue is not None:
            return self.queue
        if self.rate is None:
            return 1 << 30
        return max(64 * 1024, int(self.rate / 8 * max(self.rtt, 0.010)))

    @property
    def expected_loss(self) -> float:
        """Loss rate a sender should see on an idle link (no queue drops, no blackholes)."""
        burst = self.burst_loss.mean_loss if self.burst_loss else 0.0
        return 1 - (1 - self.loss) * (1 - burst)

    def with_seed(self, seed: int) -> LinkSpec:
        return replace(self, seed=seed)


@dataclass
class Counters:
    """What a pipe did, for the run's report and the self-test."""

    packets: int = 0
    delivered: int = 0
    lost: int = 0  # random or bursty loss
    queue_drops: int = 0
    blackholed: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes_delivered: int = 0


class Schedule:
    """Blackhole windows and address epochs as functions of time since `origin`: when the link
    came up, or when `restart` was last called (the harness restarts it as each transfer
    begins, so every tool meets the same events at the same moments of its transfer)."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.origin = 0.0

    def restart(self, t: float) -> None:
        self.origin = t

    def in_blackhole(self, t: float) -> bool:
        every = self.spec.blackhole_every
        if every is None or self.spec.blackhole_for <= 0:
            return False
        phase = (t - self.origin) % every
        return phase >= every - self.spec.blackhole_for

    def epoch(self, t: float) -> int:
        """0 until the first address change, then 1, 2, ..."""
        every = self.spec.rebind_every
        return 0 if every is None else max(0, math.floor((t - self.origin) / every))


@dataclass
class Pipe:
    """One direction of the link. `offer` answers when (if ever) a packet arrives."""

    spec: LinkSpec
    rng: random.Random
    counters: Counters = field(default_factory=Counters)
    _free_at: float = 0.0  # when the serializer finishes what it already holds
    _last_arrival: float = 0.0  # packets keep their order unless reordered on purpose
    _bad: bool = False  # Gilbert-Elliott state

    def offer(self, now: float, size: int, blackholed: bool = False) -> list[float]:
        """Arrival times of a packet of `size` bytes sent at `now`: none (dropped), one, or two
        (duplicated)."""
        c = self.counters
        c.packets += 1
        if blackholed:
            c.blackholed += 1
            return []
        if self._lose():
            c.lost += 1
            return []
        spec = self.spec
        start = max(now, self._free_at)
        if spec.rate is not None:
            backlog = round((start - now) * spec.rate / 8)  # bytes not yet serialized
            if backlog + size > spec.queue_bytes:
                c.queue_drops += 1
                return []
            self._free_at = start + size * 8 / spec.rate
        else:
            self._free_at = start
        arrivals = [self._arrival(self._free_at)]
        if spec.duplicate and self.rng.random() < spec.duplicate:
            c.duplicated += 1
            arrivals.append(self._arrival(self._free_at))
        c.delivered += len(arrivals)
        c.bytes_delivered += size * len(arrivals)
        return arrivals

    def _lose(self) -> bool:
        spec, rng = self.spec, self.rng
        ge = spec.burst_loss
        if ge is not None:
            self._bad = rng.random() >= ge.r if self._bad else rng.random() < ge.p
            if rng.random() < (ge.loss_bad if self._bad else ge.loss_good):
                return True
        return bool(spec.loss) and rng.random() < spec.loss

    def _arrival(self, departed: float) -> float:
        spec = self.spec
        arrival = departed + spec.rtt / 2
        if spec.jitter:
            arrival += self.rng.uniform(-spec.jitter, spec.jitter)
        if spec.reorder and self.rng.random() < spec.reorder:
            self.counters.reordered += 1
            return max(arrival, self._last_arrival) + spec.reorder_gap  # later ones overtake it
        arrival = max(arrival, self._last_arrival)
        self._last_arrival = arrival
        return arrival


class Link:
    """Both directions of one emulated link, with independent random streams."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.schedule = Schedule(spec)
        self.up = Pipe(spec, random.Random(f"{spec.seed}:up"))  # client -> server
        self.down = Pipe(spec, random.Random(f"{spec.seed}:down"))  # server -> client

    def offer(self, t: float, size: int, upstream: bool) -> list[float]:
        """Arrival times (seconds since the link came up) of a packet sent at `t`."""
        pipe = self.up if upstream else self.down
        return pipe.offer(t, size, self.schedule.in_blackhole(t))
