"""fluxio.transports.quic_cc: the window follows delivery rate x min RTT, not losses."""

from __future__ import annotations

import pytest
from aioquic.quic.congestion.base import K_INITIAL_WINDOW, K_MINIMUM_WINDOW
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from fluxio.transports.quic_cc import (
    CWND_GAIN,
    RTT_FLOOR,
    STARTUP_FLAT_ROUNDS,
    FluxCongestionControl,
)

MDS = 1452


def packet(number: int, sent: float, size: int = MDS) -> QuicSentPacket:
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=sent,
        sent_bytes=size,
    )


class Path:
    """Feeds a controller the acknowledgements of a path of `rate` bytes/s and `rtt` seconds."""

    def __init__(self, cc: FluxCongestionControl, rate: float, rtt: float) -> None:
        self.cc, self.rate, self.rtt = cc, rate, rtt
        self.now, self.number = 0.0, 0

    def run(self, seconds: float, lose_every: int = 0) -> None:
        """Send a window's worth, acknowledge at the path's rate, `seconds` long."""
        end = self.now + seconds
        while self.now < end:
            sent = []
            budget = min(self.cc.congestion_window, int(self.rate * self.rtt * 4))
            while budget >= MDS:
                p = packet(self.number, self.now)
                self.cc.on_packet_sent(packet=p)
                sent.append(p)
                self.number += 1
                budget -= MDS
            for i, p in enumerate(sent):  # acks arrive one RTT later, spaced by the rate
                self.now = max(self.now, p.sent_time + self.rtt) + MDS / self.rate
                if lose_every and p.packet_number % lose_every == 0:
                    self.cc.on_packets_lost(now=self.now, packets=[p])
                else:
                    self.cc.on_packet_acked(now=self.now, packet=p)
                if i == len(sent) - 1:
                    self.cc.on_rtt_measurement(now=self.now, rtt=self.rtt)
            self.cc.on_rtt_measurement(now=self.now, rtt=self.rtt)


def test_it_starts_with_aiquics_initial_window() -> None:
    assert FluxCongestionControl(max_datagram_size=MDS).congestion_window == K_INITIAL_WINDOW * MDS


@pytest.mark.parametrize(("rate", "rtt"), [(12.5e6, 0.04), (2.5e6, 0.08), (50e6, 0.02)])
def test_after_start_up_the_window_is_gain_times_rate_times_rtt(rate: float, rtt: float) -> None:
    cc = FluxCongestionControl(max_datagram_size=MDS)
    Path(cc, rate, rtt).run(5.0)
    assert not cc.startup
    assert cc.max_bw == pytest.approx(rate, rel=0.15)
    assert cc.congestion_window == pytest.approx(CWND_GAIN * rate * rtt, rel=0.15)


def test_random_loss_does_not_shrink_the_window() -> None:
    clean, lossy = (FluxCongestionControl(max_datagram_size=MDS) for _ in range(2))
    Path(clean, 12.5e6, 0.04).run(5.0)
    Path(lossy, 12.5e6, 0.04).run(5.0, lose_every=50)  # 2 % loss
    assert lossy.congestion_window >= 0.9 * clean.congestion_window


def test_a_short_rtt_is_floored() -> None:
    cc = FluxCongestionControl(max_datagram_size=MDS)
    Path(cc, 40e6, 0.0002).run(2.0)
    assert cc.congestion_window >= CWND_GAIN * cc.max_bw * RTT_FLOOR * 0.99


def test_persistent_congestion_starts_over_from_the_minimum_window() -> None:
    cc = FluxCongestionControl(max_datagram_size=MDS)
    Path(cc, 12.5e6, 0.04).run(3.0)
    in_flight = cc.bytes_in_flight
    cc.on_persistent_congestion()
    assert cc.congestion_window == K_MINIMUM_WINDOW * MDS
    assert cc.startup and cc.max_bw == 0 and cc.bytes_in_flight == in_flight


def test_bytes_in_flight_balance_over_sent_acked_lost_and_expired() -> None:
    cc = FluxCongestionControl(max_datagram_size=MDS)
    ps = [packet(n, 0.0) for n in range(4)]
    for p in ps:
        cc.on_packet_sent(packet=p)
    cc.on_packet_acked(now=0.05, packet=ps[0])
    cc.on_packets_lost(now=0.05, packets=[ps[1]])
    cc.on_packets_expired(packets=ps[2:])
    assert cc.bytes_in_flight == 0


def test_start_up_ends_only_after_the_rate_stops_growing() -> None:
    cc = FluxCongestionControl(max_datagram_size=MDS)
    path = Path(cc, 12.5e6, 0.04)
    path.run(0.2)
    assert cc.startup  # five round trips in: still growing
    path.run(2.0)
    assert not cc.startup and cc._flat_rounds >= STARTUP_FLAT_ROUNDS
