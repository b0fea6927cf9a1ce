"""benchmarks.netem.model: the link's decisions, checked against their definitions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.netem.model import GilbertElliott, Link, LinkSpec, Pipe, Schedule

MTU = 1500


def pipe(**spec: object) -> Pipe:
    return Pipe(LinkSpec(**spec), random.Random(7))  # type: ignore[arg-type]


def test_an_unlimited_link_delays_every_packet_by_half_the_rtt() -> None:
    p = pipe(rtt=0.04)
    assert p.offer(1.0, MTU) == [pytest.approx(1.02)]


def test_the_rate_spaces_packets_by_their_serialization_time() -> None:
    p = pipe(rate=12e6, queue=1 << 20)  # 1500 bytes take 1 ms at 12 Mbit/s
    arrivals = [p.offer(0.0, MTU)[0] for _ in range(5)]
    assert arrivals == [pytest.approx(0.001 * (i + 1)) for i in range(5)]


def test_the_rate_over_a_long_burst_is_the_configured_rate() -> None:
    p = pipe(rate=100e6, rtt=0.04, queue=1 << 30)
    last = 0.0
    for _ in range(10_000):
        last = p.offer(0.0, MTU)[0]
    assert 10_000 * MTU * 8 / (last - 0.02) == pytest.approx(100e6)


def test_a_full_queue_drops_at_the_tail() -> None:
    p = pipe(rate=12e6, queue=10 * MTU)
    delivered = [bool(p.offer(0.0, MTU)) for _ in range(20)]
    assert delivered == [True] * 10 + [False] * 10
    assert p.counters.queue_drops == 10
    assert p.offer(0.010, MTU)  # 10 ms later the serializer has emptied the queue


def test_the_default_queue_holds_one_bandwidth_delay_product() -> None:
    assert LinkSpec(rate=100e6, rtt=0.04).queue_bytes == 500_000
    assert LinkSpec(rate=1e6, rtt=0.04).queue_bytes == 64 * 1024  # at least 64 KiB


@pytest.mark.parametrize("loss", [0.01, 0.1, 0.5])
def test_random_loss_drops_its_share(loss: float) -> None:
    p = pipe(loss=loss)
    n = 100_000
    lost = sum(not p.offer(0.0, 100) for _ in range(n))
    sigma = (n * loss * (1 - loss)) ** 0.5
    assert abs(lost - n * loss) < 5 * sigma
    assert p.counters.lost == lost


def test_gilbert_elliott_loss_comes_in_bursts_at_its_mean_rate() -> None:
    ge = GilbertElliott(p=0.01, r=0.25)  # mean burst 4 packets, mean loss ~3.8 %
    p = pipe(burst_loss=ge)
    outcomes = [not p.offer(0.0, 100) for _ in range(200_000)]
    assert sum(outcomes) / len(outcomes) == pytest.approx(ge.mean_loss, rel=0.1)
    bursts = "".join("x" if lost else "." for lost in outcomes).split(".")
    lengths = [len(b) for b in bursts if b]
    assert sum(lengths) / len(lengths) == pytest.approx(1 / ge.r, rel=0.15)


def test_jitter_stays_within_bounds_and_keeps_order() -> None:
    p = pipe(rtt=0.04, jitter=0.005)
    arrivals = [p.offer(i * 0.0001, 100)[0] for i in range(2000)]
    assert arrivals == sorted(arrivals)
    for i, a in enumerate(arrivals):
        assert i * 0.0001 + 0.015 - 1e-9 <= a <= i * 0.0001 + 0.025 + 0.005


def test_reordered_packets_are_overtaken() -> None:
    p = pipe(rtt=0.02, reorder=0.1, reorder_gap=0.005)
    arrivals = [p.offer(i * 0.001, 100)[0] for i in range(1000)]
    overtaken = sum(1 for i in range(999) if arrivals[i] > arrivals[i + 1])
    assert overtaken > 0
    assert p.counters.reordered == pytest.approx(100, abs=40)


def test_duplicates_arrive_twice() -> None:
    p = pipe(duplicate=1.0, rtt=0.01)
    assert len(p.offer(0.0, 100)) == 2
    assert p.counters.duplicated == 1 and p.counters.delivered == 2


def test_blackholes_end_every_period_and_epochs_change_at_its_multiples() -> None:
    s = Schedule(LinkSpec(blackhole_every=30, blackhole_for=5, rebind_every=30))
    assert [s.in_blackhole(t) for t in (0, 24.9, 25.0, 29.9, 30.0, 54.9, 55.0)] == [
        False,
        False,
        True,
        True,
        False,
        False,
        True,
    ]
    assert [s.epoch(t) for t in (0, 29.9, 30, 59.9, 60)] == [0, 0, 1, 1, 2]


def test_a_link_drops_everything_in_a_blackhole_both_ways() -> None:
    link = Link(LinkSpec(blackhole_every=10, blackhole_for=2))
    assert link.offer(8.5, 100, upstream=True) == []
    assert link.offer(9.9, 100, upstream=False) == []
    assert link.offer(10.0, 100, upstream=True)
    assert link.up.counters.blackholed == 1 and link.down.counters.blackholed == 1


def test_the_same_seed_gives_the_same_decisions() -> None:
    spec = LinkSpec(rate=50e6, rtt=0.03, jitter=0.002, loss=0.05, reorder=0.02, duplicate=0.01)

    def run() -> list[list[float]]:
        link = Link(spec)
        return [link.offer(i * 0.0002, 1200, upstream=i % 3 != 0) for i in range(5000)]

    assert run() == run()
    assert run() != [
        Link(spec.with_seed(2)).offer(i * 0.0002, 1200, i % 3 != 0) for i in range(5000)
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": 1.5},
        {"rate": 0},
        {"rtt": -1},
        {"rtt": 0.01, "jitter": 0.01},
        {"blackhole_every": 5, "blackhole_for": 5},
        {"rebind_every": 0},
    ],
)
def test_nonsense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LinkSpec(**bad)  # type: ignore[arg-type]


@given(
    sizes=st.lists(st.integers(20, 1500), min_size=1, max_size=200),
    gaps=st.lists(st.floats(0, 0.01), min_size=200, max_size=200),
)
def test_no_packet_arrives_before_it_was_sent_plus_the_minimum_delay(
    sizes: list[int], gaps: list[float]
) -> None:
    p = pipe(rate=10e6, rtt=0.02, jitter=0.004, loss=0.1, reorder=0.1, duplicate=0.1)
    t = 0.0
    for size, gap in zip(sizes, gaps, strict=False):
        t += gap
        for arrival in p.offer(t, size):
            assert arrival >= t + size * 8 / 10e6 + 0.01 - 0.004 - 1e-9


def test_a_restarted_schedule_counts_from_the_restart() -> None:
    s = Schedule(LinkSpec(blackhole_every=30, blackhole_for=5, rebind_every=30))
    s.restart(100.0)
    assert [s.in_blackhole(t) for t in (100.0, 124.9, 125.0, 130.0)] == [False, False, True, False]
    assert [s.epoch(t) for t in (99.0, 100.0, 129.9, 130.0)] == [0, 0, 0, 1]
