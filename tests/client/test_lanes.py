"""fluxctl.lanes: the options each lane connects with (its receive window)."""

from __future__ import annotations

from fluxctl.connect import ClientOptions
from fluxctl.lanes import MIN_LANE_WINDOW, QUIC_WINDOW, lane_options

MIB = 1024 * 1024


def test_tcp_lanes_share_the_window_down_to_a_floor() -> None:
    assert lane_options(ClientOptions(window=32 * MIB), "tcp").window == 32 * MIB
    assert lane_options(ClientOptions(window=32 * MIB, lanes=2), "tcp").window == 16 * MIB
    sixteen = ClientOptions(window=32 * MIB, lanes=16)
    assert lane_options(sixteen, "tcp").window == MIN_LANE_WINDOW


def test_a_window_below_the_floor_is_kept_as_asked() -> None:
    assert lane_options(ClientOptions(window=MIB, lanes=4), "tcp").window == MIB


def test_the_quic_lane_window_is_capped() -> None:
    assert lane_options(ClientOptions(window=64 * MIB), "quic").window == QUIC_WINDOW
    assert lane_options(ClientOptions(window=MIB), "quic").window == MIB
