"""The lanes' policies with time and rates fed by hand: when a lane is suspect, and when the
gate lets the side kind of lane carry chunks beside the primary, and how much a lane may hold
in flight (lanepolicy's docstring)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from fluxctl.lanepolicy import (
    ACK_FLOOR,
    ACK_GAPS,
    FIRST_ACK_WAIT,
    FIRST_PROBE,
    HANDOVER,
    HORIZON,
    MARGIN,
    MAX_REPROBE,
    PING_AFTER,
    PROBE,
    REPROBE,
    STALL_FLOOR,
    Hearing,
    LaneGate,
    LaneMeter,
)

MB = 1_000_000
CHUNK = 4 * 1024 * 1024
STEP = 0.1  # how often the scheduler feeds the gate


# --- a download lane's hearing ------------------------------------------------------------


def test_a_download_lane_that_keeps_hearing_is_neither_pinged_nor_suspect() -> None:
    hearing = Hearing(0.0)
    for tenth in range(1, 100):
        now = tenth / 10
        assert not hearing.ping(now, heard=now - 0.05)
        assert not hearing.suspect(now, heard=now - 0.05)


def test_a_quiet_download_lane_is_pinged_once_until_it_hears_again() -> None:
    hearing = Hearing(0.0)
    assert not hearing.ping(PING_AFTER - 0.01, heard=0.0)
    assert hearing.ping(PING_AFTER, heard=0.0), "quiet: the server is made to answer"
    assert not hearing.ping(PING_AFTER + 1, heard=0.0), "one PING until something comes"
    assert hearing.ping(3 + PING_AFTER, heard=3.0), "heard at 3 s, quiet again: another"


def test_a_download_lane_silent_past_the_floor_is_suspect() -> None:
    hearing = Hearing(10.0)
    assert not hearing.suspect(10.0 + STALL_FLOOR, heard=0.0), "the watch starts with it"
    assert hearing.suspect(10.0 + STALL_FLOOR + 0.01, heard=0.0)
    assert not hearing.suspect(20.0, heard=19.0), "a PONG (any byte) is life"


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


def test_the_flight_caps_follow_what_the_lane_carried() -> None:
    meter = LaneMeter(0.0)
    meter.sent(0.0, 100 * MB)
    for i in range(1, 31):  # 20 MB/s for 3 s, an ACK every tick
        meter.acked(i * 0.1, 2 * MB, 2 * MB)
        meter.tick(i * 0.1)
    assert meter.cap(3.0, CHUNK, side=True) == 10 * MB  # what it carried in half a second
    assert meter.cap(3.0, CHUNK, side=False) == int(HORIZON * 20 * MB)
    assert LaneMeter(0.0).cap(0.0, CHUNK, side=False) == 2 * CHUNK  # nothing yet: two chunks
    assert LaneMeter(0.0).cap(0.0, CHUNK, side=True) == CHUNK  # a side lane: one
    young = LaneMeter(0.0)
    young.sent(0.0, 8 * CHUNK)
    young.acked(0.02, CHUNK, CHUNK)  # its first ACK, 20 ms in: scaled to two seconds
    assert young.cap(0.02, CHUNK, side=False) == 100 * CHUNK


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
        now = round(now + STEP, 6)  # no drift: probes start and end on a step
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
    now, got, starts = 0.0, 0.0, []
    for _ in range(5):
        before = gate.probes
        while gate.probes == before:
            now, got = drive(gate, now, STEP, loopback, got)
        starts.append(now)
        now, got = drive(gate, now, PROBE, loopback, got)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert starts[0] == pytest.approx(FIRST_PROBE)
    assert gaps[0] == pytest.approx(PROBE + 2 * REPROBE)  # the same answer: twice as long
    assert gaps[0] < gaps[1] and gaps[1:] == [pytest.approx(PROBE + MAX_REPROBE)] * 3, gaps
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


def test_a_primary_that_breaks_while_the_side_lives_on_hands_over_the_lead() -> None:
    """An address change kills TCP connections and none of QUIC's: once a TCP lane broke and
    QUIC delivered after it, QUIC leads and TCP is the side, tried by the probes."""
    gate = LaneGate(0.0)
    now, got = drive(gate, 0.0, 1.0, loopback, 0)
    gate.failed(now - 0.5, "quic")  # the side breaking changes nothing
    gate.failed(now, "tcp")  # nor the primary while the side delivers nothing (a blackhole)
    gate.update(now + STEP, int(got), primary_healthy=False, side_delivered=False)
    assert gate.primary == "tcp"
    gate.update(now + 2 * STEP, int(got), primary_healthy=True, side_delivered=True)
    assert gate.primary == "quic" and not gate.allowed("tcp") and gate.capped("tcp")
    now, got = drive(gate, now + 2 * STEP, FIRST_PROBE - 2 * STEP, loopback, got)
    assert gate.probes == 0, "measured afresh before the first probe"


def test_no_handover_when_the_side_broke_too_or_long_after() -> None:
    gate = LaneGate(0.0)
    gate.failed(1.0, "tcp")
    gate.failed(1.5, "quic")  # both broke: the path, not a kind of connection
    gate.update(2.0, 0, primary_healthy=True, side_delivered=True)
    assert gate.primary == "tcp"
    gate = LaneGate(0.0)
    gate.failed(1.0, "tcp")
    gate.update(1.0 + HANDOVER + 1, 0, primary_healthy=True, side_delivered=True)
    assert gate.primary == "tcp"


def test_a_slow_lane_holds_what_it_carried_lately() -> None:
    meter = LaneMeter(0.0)
    for i in range(1, 41):  # 2.5 MB/s in ACKs of 4 MiB chunks: bursts, not a rate
        now = i * 0.1
        if i % 17 == 0:
            meter.sent(now, CHUNK)
            meter.acked(now, CHUNK, CHUNK)
        meter.tick(now)
    assert meter.cap(4.0, CHUNK, side=False) == 2 * CHUNK  # 1 chunk in the last 2 s: floor
    assert meter.carried(4.0, 2.0) == CHUNK


def test_a_wrong_handover_on_a_fast_path_comes_back_to_tcp_at_the_first_probe() -> None:
    gate = LaneGate(0.0, primary="quic")  # as after a spurious TCP stall on loopback

    def rate(quic: bool) -> float:  # TCP is in whenever the gate lets it
        return loopback(quic) if gate.allowed("tcp") else 30 * MB

    now, got = drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, rate, 0)
    assert gate.primary == "tcp" and gate.allowed("quic"), "TCP won by being added: it leads"
    now, got = drive(gate, now, REPROBE + PROBE + 3 * STEP, rate, got)
    assert gate.primary == "tcp" and not gate.allowed("quic")


def test_a_kind_that_broke_helps_as_a_side_but_does_not_lead_again() -> None:
    """On a path that killed a TCP lane, TCP beside QUIC may raise the rate: it stays in,
    capped as a side lane, so the next break costs at most its small flight."""
    gate = LaneGate(0.0)
    gate.failed(1.0, "tcp")
    gate.update(1.1, 0, primary_healthy=False, side_delivered=True)
    assert gate.primary == "quic"

    def tcp_helps(quic: bool) -> float:
        return 2 * MB + (1 * MB if gate.allowed("tcp") else 0)

    drive(gate, 1.1, FIRST_PROBE + PROBE + STEP, tcp_helps, 0)
    assert gate.primary == "quic" and gate.allowed("tcp") and gate.capped("tcp")
