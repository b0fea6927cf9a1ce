"""The lanes' policies with time and rates fed by hand: when a lane is suspect, and when the
gate lets the side kind of lane carry chunks beside the primary, and how much a lane may hold
in flight (lanepolicy's docstring)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from fluxctl.lanepolicy import (
    ACK_FLOOR,
    ACK_GAPS,
    FIRST_ACK_WAIT,
    FIRST_PROBE,
    HORIZON,
    MARGIN,
    MAX_REPROBE,
    PROBE,
    REPROBE,
    STALL_FLOOR,
    LaneGate,
    LaneMeter,
)

MB = 1_000_000
CHUNK = 4 * 1024 * 1024
STEP = 0.1  # how often the scheduler feeds the gate


# --- stalls --------------------------------------------------------------------------------


def test_an_idle_lane_is_never_suspect() -> None:
    meter = LaneMeter(0.0)
    assert not meter.suspect(1e6, silence=1e6)


def test_a_lane_whose_path_is_silent_is_suspect_after_the_floor() -> None:
    meter = LaneMeter(0.0)
    meter.sent(0.0, CHUNK)
    assert not meter.suspect(0.5, silence=STALL_FLOOR)
    assert meter.suspect(0.5, silence=STALL_FLOOR + 0.01), "no ACK of the transport: suspect"


def test_before_its_first_ack_a_live_lane_gets_first_ack_wait() -> None:
    meter = LaneMeter(0.0)
    meter.sent(10.0, CHUNK)  # the wait starts when chunks go out, not when the lane came up
    assert not meter.suspect(10.0 + FIRST_ACK_WAIT, silence=0.0)
    assert meter.suspect(10.0 + FIRST_ACK_WAIT + 0.01, silence=0.0)


def test_a_live_lane_is_suspect_after_several_of_its_usual_gaps_and_not_before_the_floor() -> None:
    meter = LaneMeter(0.0)
    now = 0.0
    meter.sent(now, 100 * CHUNK)
    for _ in range(20):  # an ACK every 2 s: a slow but steady lane (a long queue, a slow disk)
        now += 2.0
        meter.acked(now, CHUNK, CHUNK)
    assert meter.threshold() == ACK_GAPS * 2.0
    assert not meter.suspect(now + ACK_GAPS * 2.0 - 0.01, silence=0.0)
    assert meter.suspect(now + ACK_GAPS * 2.0 + 0.01, silence=0.0)
    fast = LaneMeter(0.0)
    fast.sent(0.0, 10 * CHUNK)
    for i in range(1, 20):  # an ACK every 10 ms: the floor applies
        fast.acked(i * 0.01, CHUNK, CHUNK)
    assert fast.threshold() == ACK_FLOOR


def test_an_ack_clears_suspicion_and_the_last_one_makes_the_lane_idle() -> None:
    meter = LaneMeter(0.0)
    meter.sent(0.0, 2 * CHUNK)
    assert meter.suspect(FIRST_ACK_WAIT + 1, silence=0.0)
    meter.acked(FIRST_ACK_WAIT + 1, CHUNK, CHUNK)
    assert not meter.suspect(FIRST_ACK_WAIT + 1, silence=0.0)
    meter.acked(FIRST_ACK_WAIT + 2, CHUNK, 0)  # delivered by another lane first: freed, 0 new
    assert (meter.inflight, meter.delivered) == (0, CHUNK)
    assert not meter.suspect(1e6, silence=1e6)


def test_rate_and_the_flight_caps() -> None:
    meter = LaneMeter(0.0)
    meter.sent(0.0, 100 * MB)
    meter.acked(1.0, 20 * MB, 20 * MB)
    meter.tick(1.0)
    assert meter.rate == 20 * MB
    assert meter.cap(CHUNK, side=True) == 10 * MB  # half a second of what it delivers
    assert meter.cap(CHUNK, side=False) == int(HORIZON * 20 * MB)
    assert LaneMeter(0.0).cap(CHUNK, side=True) == 2 * CHUNK  # nothing measured: two chunks
    assert LaneMeter(0.0).cap(CHUNK, side=False) is None  # nothing measured: the window


def test_a_slow_lane_holds_two_chunks_not_its_window() -> None:
    """A lane on a 2.5 MB/s link would hold 32 MiB in a window: 13 s of data to send again
    when its connection dies. It holds what it delivers in HORIZON, or two chunks."""
    meter = LaneMeter(0.0)
    meter.sent(0.0, 32 * CHUNK)
    meter.acked(4.0, 10 * MB, 10 * MB)
    meter.tick(4.0)
    assert meter.cap(CHUNK, side=False) == 2 * CHUNK


# --- the gate ------------------------------------------------------------------------------


def drive(
    gate: LaneGate,
    start: float,
    seconds: float,
    rate: Callable[[bool], float],
    delivered: float,
    tcp_healthy: bool = True,
) -> tuple[float, float]:
    """Feed the gate every STEP for `seconds`: the transfer delivers `rate(quic carries)`
    bytes/s (TCP carries too while it is allowed). Returns (now, delivered)."""
    now = start
    while now < start + seconds - 1e-9:
        now += STEP
        delivered += rate(gate.allowed("quic")) * STEP
        gate.update(now, int(delivered), tcp_healthy)
    return now, delivered


def loopback(quic: bool) -> float:
    """A fast clean path: QUIC's CPU slows TCP by more than QUIC adds."""
    return 300 * MB if quic else 500 * MB


def lossy(quic: bool) -> float:
    """A path where TCP crawls (loss) and QUIC adds a lot."""
    return 12 * MB if quic else 2 * MB


def test_tcp_alone_until_the_first_probe_then_quic_tried_and_dropped_on_a_fast_path() -> None:
    gate = LaneGate(0.0)
    now, got = drive(gate, 0.0, FIRST_PROBE - STEP, loopback, 0)
    assert not gate.allowed("quic") and gate.probes == 0, "a short transfer never tries QUIC"
    now, got = drive(gate, now, 2 * STEP, loopback, got)
    assert gate.allowed("quic") and gate.probes == 1, "the probe adds QUIC"
    now, got = drive(gate, now, PROBE, loopback, got)
    assert not gate.allowed("quic") and gate.kept == 0, "it made the transfer slower: out again"
    assert gate.capped("quic"), "beside a healthy TCP lane QUIC is capped"


def test_the_next_probes_come_less_often_while_quic_keeps_losing() -> None:
    gate = LaneGate(0.0)
    now, got = drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, loopback, 0)
    starts = []
    for _ in range(6):
        before = gate.probes
        while gate.probes == before:
            now, got = drive(gate, now, STEP, loopback, got)
        starts.append(now)
        now, got = drive(gate, now, PROBE, loopback, got)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert max(gaps) <= MAX_REPROBE + PROBE + 2 * STEP
    assert gate.kept == 0


def test_quic_takes_the_lead_where_it_raises_the_transfers_rate() -> None:
    gate = LaneGate(0.0)
    now, got = drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, lossy, 0)
    assert gate.allowed("quic") and gate.kept == 1
    assert gate.primary == "quic" and gate.allowed("tcp"), "QUIC leads, TCP still in"
    # The re-check takes TCP out for a probe, sees the rate hold, and leaves it out.
    now, got = drive(gate, now, REPROBE + PROBE + 3 * STEP, lossy, got)
    assert gate.primary == "quic" and not gate.allowed("tcp") and gate.probes == 2
    assert gate.capped("tcp") and not gate.capped("quic")


def test_tcp_stays_in_beside_quic_while_taking_it_out_costs_the_rate() -> None:
    gate = LaneGate(0.0)

    def both_help(quic: bool) -> float:  # two paths: each lane adds its own rate
        return (10 * MB if quic else 0) + (5 * MB if gate.allowed("tcp") else 0)

    now, got = drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, both_help, 0)
    assert gate.primary == "quic" and gate.allowed("tcp")
    now, got = drive(gate, now, REPROBE + PROBE + 3 * STEP, both_help, got)
    assert gate.probes == 2 and gate.kept == 2, "taking TCP out cost a third: back in"
    assert gate.allowed("tcp") and gate.primary == "quic"


def test_a_tie_goes_to_tcp_alone() -> None:
    gate = LaneGate(0.0)

    def same(quic: bool) -> float:
        return 100 * MB * (MARGIN - 0.01 if quic else 1.0)

    drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, same, 0)
    assert not gate.allowed("quic") and gate.probes == 1


def test_quic_carries_at_once_and_uncapped_when_tcp_is_down_or_stalled() -> None:
    gate = LaneGate(0.0)
    now, got = drive(gate, 0.0, 1.0, loopback, 0)
    assert not gate.allowed("quic")
    gate.update(now + STEP, int(got), primary_healthy=False)
    assert gate.allowed("quic") and not gate.capped("quic")
    # TCP back: alone again, and measured afresh before any probe.
    now, got = drive(gate, now + STEP, FIRST_PROBE - STEP, loopback, got)
    assert not gate.allowed("quic") and gate.probes == 0


def test_a_primary_that_breaks_beside_a_live_side_lane_hands_over_the_lead() -> None:
    """An address change kills TCP connections and none of QUIC's: once a TCP lane broke
    while QUIC lived, QUIC leads and TCP is the side, tried by the probes."""
    gate = LaneGate(0.0)
    now, got = drive(gate, 0.0, 1.0, loopback, 0)
    gate.failed(now, "quic", side_up=True)  # the side breaking changes nothing
    gate.failed(now, "tcp", side_up=False)  # nor the primary with no side to take over
    assert gate.primary == "tcp" and not gate.allowed("quic")
    gate.failed(now, "tcp", side_up=True)
    assert gate.primary == "quic" and not gate.allowed("tcp") and gate.capped("tcp")
    now, got = drive(gate, now, FIRST_PROBE - STEP, loopback, got)
    assert gate.probes == 0, "measured afresh before the first probe"
    gate.failed(now, "quic", side_up=True)
    assert gate.primary == "tcp"


def test_a_wrong_handover_on_a_fast_path_comes_back_to_tcp_at_the_first_probe() -> None:
    gate = LaneGate(0.0, primary="quic")  # as after a spurious TCP stall on loopback

    def rate(quic: bool) -> float:  # TCP is in whenever the gate lets it
        return loopback(quic) if gate.allowed("tcp") else 30 * MB

    now, got = drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, rate, 0)
    assert gate.primary == "tcp" and gate.allowed("quic"), "TCP won by being added: it leads"
    now, got = drive(gate, now, REPROBE + PROBE + 3 * STEP, rate, got)
    assert gate.primary == "tcp" and not gate.allowed("quic")
