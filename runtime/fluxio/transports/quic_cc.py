"""Congestion control for fluxd's QUIC connections: a window from what the path delivers, not
from what it loses.

aioquic offers reno and cubic, which halve their window on every loss. On a link with random
loss that is not congestion, they collapse: 0.4 MB/s on an emulated 100 Mbit/s link with 40 ms
and 1 % loss, where TCP with the kernel's BBR moved 9 MB/s (measured, benchmarks/RESULTS.md).
This controller follows BBR's model in a deliberately small form:

- the bottleneck rate is the highest delivery rate (acknowledged bytes per sampling interval)
  seen over the last BW_SAMPLES intervals of one RTT each;
- the window is CWND_GAIN x that rate x the minimum RTT of the last MIN_RTT_WINDOW seconds;
- start-up grows the window by every acknowledged byte (doubling per round trip, as slow start
  does) until the delivery rate stops growing by 25 % for three intervals;
- losses only take their bytes out of flight; persistent congestion (a blackhole, a new
  network) starts over from the minimum window and a fresh model.

Pacing stays aioquic's (window / smoothed RTT, through fluxd's TimerAwarePacer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from aioquic.quic.congestion.base import (
    K_INITIAL_WINDOW,
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket

NAME = "flux"
CWND_GAIN = 2.0
BW_SAMPLES = 10
MIN_RTT_WINDOW = 10.0  # seconds
#: Sampling interval and RTT floor: below ~10 ms, RTTs seen through millisecond timers and
#: aioquic's 1 ms ACK delay say more about the event loop than about the path.
RTT_FLOOR = 0.010
STARTUP_GROWTH = 1.25  # start-up ends when the rate grows less than this ...
STARTUP_FLAT_ROUNDS = 3  # ... for this many intervals in a row


class FluxCongestionControl(QuicCongestionControl):
    """Delivery-rate x min-RTT window (see the module docstring)."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mds = max_datagram_size
        self._reset()

    def _reset(self) -> None:
        self.congestion_window = K_INITIAL_WINDOW * self._mds
        self.ssthresh = None
        self.startup = True
        self.delivered = 0
        self.max_bw = 0.0  # bytes per second
        self.min_rtt: float | None = None
        self._min_rtt_at = 0.0
        self._samples: deque[float] = deque(maxlen=BW_SAMPLES)
        self._sample_start: float | None = None
        self._sample_delivered = 0
        self._startup_best = 0.0
        self._flat_rounds = 0

    # --- aioquic's interface ------------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self.delivered += packet.sent_bytes
        if self._sample_start is None:
            self._sample_start, self._sample_delivered = now, self.delivered
        elif now - self._sample_start >= self._interval():
            self._take_sample(now)
        if self.startup:
            self.congestion_window += packet.sent_bytes
        self._apply_model()

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes  # the window itself stays

    def on_persistent_congestion(self) -> None:
        in_flight = self.bytes_in_flight
        self._reset()
        self.bytes_in_flight = in_flight
        self.congestion_window = K_MINIMUM_WINDOW * self._mds

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if self.min_rtt is None or rtt <= self.min_rtt or now - self._min_rtt_at > MIN_RTT_WINDOW:
            self.min_rtt, self._min_rtt_at = rtt, now

    # --- the model ------------------------------------------------------------------------------

    def _interval(self) -> float:
        return max(self.min_rtt or RTT_FLOOR, RTT_FLOOR)

    def _take_sample(self, now: float) -> None:
        assert self._sample_start is not None
        rate = (self.delivered - self._sample_delivered) / (now - self._sample_start)
        self._sample_start, self._sample_delivered = now, self.delivered
        self._samples.append(rate)
        self.max_bw = max(self._samples)
        if self.startup:
            if self.max_bw >= self._startup_best * STARTUP_GROWTH:
                self._startup_best, self._flat_rounds = self.max_bw, 0
            else:
                self._flat_rounds += 1
                if self._flat_rounds >= STARTUP_FLAT_ROUNDS:
                    self.startup = False

    def _apply_model(self) -> None:
        if not self.max_bw:
            return
        target = int(CWND_GAIN * self.max_bw * self._interval())
        floor = K_MINIMUM_WINDOW * 2 * self._mds
        if self.startup:
            self.congestion_window = max(self.congestion_window, target, floor)
        else:
            self.congestion_window = max(target, floor)
            self.ssthresh = self.congestion_window


register_congestion_control(NAME, FluxCongestionControl)
