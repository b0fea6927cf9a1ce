"""The lanes' policies with time and rates fed by hand: when a lane is suspect, and when the
QUIC gate lets QUIC carry chunks beside TCP (lanepolicy's docstring)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from fluxctl.lanepolicy import (
    ACK_FLOOR,
    ACK_GAPS,
    FIRST_ACK_WAIT,
    FIRST_PROBE,
    MARGIN,
    MAX_REPROBE,
    PING_AFTER,
    PROBE,
    REPROBE,
    STALL_FLOOR,
    Hearing,
    LaneMeter,
    QuicGate,
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


def test_rate_and_the_side_lane_cap() -> None:
    meter = LaneMeter(0.0)
    meter.sent(0.0, 100 * MB)
    meter.acked(1.0, 20 * MB, 20 * MB)
    meter.tick(1.0)
    assert meter.rate == 20 * MB
    assert meter.side_cap(CHUNK) == 10 * MB  # half a second of what it delivers
    assert LaneMeter(0.0).side_cap(CHUNK) == 2 * CHUNK  # nothing measured: two chunks


# --- the QUIC gate -------------------------------------------------------------------------


def drive(
    gate: QuicGate,
    start: float,
    seconds: float,
    rate: Callable[[bool], float],
    delivered: float,
    tcp_healthy: bool = True,
) -> tuple[float, float]:
    """Feed the gate every STEP for `seconds`: the transfer delivers `rate(quic_allowed)`
    bytes/s. Returns (now, delivered)."""
    now = start
    while now < start + seconds - 1e-9:
        now += STEP
        delivered += rate(gate.quic_allowed) * STEP
        gate.update(now, int(delivered), tcp_healthy)
    return now, delivered


def loopback(quic: bool) -> float:
    """A fast clean path: QUIC's CPU slows TCP by more than QUIC adds."""
    return 300 * MB if quic else 500 * MB


def lossy(quic: bool) -> float:
    """A path where TCP crawls (loss) and QUIC adds a lot."""
    return 12 * MB if quic else 2 * MB


def test_tcp_alone_until_the_first_probe_then_quic_tried_and_dropped_on_a_fast_path() -> None:
    gate = QuicGate(0.0)
    now, got = drive(gate, 0.0, FIRST_PROBE - STEP, loopback, 0)
    assert not gate.quic_allowed and gate.probes == 0, "a short transfer never tries QUIC"
    now, got = drive(gate, now, 2 * STEP, loopback, got)
    assert gate.quic_allowed and gate.probes == 1, "the probe adds QUIC"
    now, got = drive(gate, now, PROBE, loopback, got)
    assert not gate.quic_allowed and gate.kept == 0, "it made the transfer slower: out again"
    assert gate.quic_capped, "beside a healthy TCP lane QUIC is capped"


def test_the_next_probes_come_less_often_while_quic_keeps_losing() -> None:
    gate = QuicGate(0.0)
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


def test_quic_stays_where_it_raises_the_transfers_rate() -> None:
    gate = QuicGate(0.0)
    now, got = drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, lossy, 0)
    assert gate.quic_allowed and gate.kept == 1
    # The re-check takes QUIC out for a probe, sees the rate fall, and puts it back.
    now, got = drive(gate, now, REPROBE + PROBE + 3 * STEP, lossy, got)
    assert gate.quic_allowed and gate.probes == 2 and gate.kept == 2


def test_a_tie_goes_to_tcp_alone() -> None:
    gate = QuicGate(0.0)

    def same(quic: bool) -> float:
        return 100 * MB * (MARGIN - 0.01 if quic else 1.0)

    drive(gate, 0.0, FIRST_PROBE + PROBE + STEP, same, 0)
    assert not gate.quic_allowed and gate.probes == 1


def test_quic_carries_at_once_and_uncapped_when_tcp_is_down_or_stalled() -> None:
    gate = QuicGate(0.0)
    now, got = drive(gate, 0.0, 1.0, loopback, 0)
    assert not gate.quic_allowed
    gate.update(now + STEP, int(got), tcp_healthy=False)
    assert gate.quic_allowed and not gate.quic_capped
    # TCP back: alone again, and measured afresh before any probe.
    now, got = drive(gate, now + STEP, FIRST_PROBE - STEP, loopback, got)
    assert not gate.quic_allowed and gate.probes == 0
