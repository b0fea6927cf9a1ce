"""benchmarks.plots: what each scenario's plot draws (the drawing itself needs matplotlib)."""

from __future__ import annotations

import pytest

from benchmarks.fuzz import count_inputs
from benchmarks.plots import _groups


def stats(median: float, low: float, high: float) -> dict[str, float]:
    return {"median": median, "min": low, "max": high}


def test_links_are_drawn_as_shares_of_each_links_rate() -> None:
    data = {
        "links": [
            {
                "link": "wan",
                "spec": {"rate": 100e6},
                "summary": {"fluxd-quic": {"mb_per_s": stats(10.0, 9.0, 11.0)}},
            },
            {
                "link": "mobile",
                "spec": {"rate": 20e6},
                "summary": {},
                "failures": [{"tool": "scp", "rep": 0, "error": "lost connection"}],
            },
        ]
    }
    groups, title = _groups("links", data)
    assert groups["wan"]["fluxd-quic"] == pytest.approx(stats(80.0, 72.0, 88.0))
    assert groups["mobile"] == {"scp": stats(0.0, 0.0, 0.0)}  # failed: drawn at zero
    assert "%" in title


def test_concurrency_draws_one_client_then_each_crowd() -> None:
    data = {
        "single": stats(200.0, 180.0, 210.0),
        "crowds": [{"clients": 50, "aggregate_mb_per_s": 160.0}],
    }
    groups, _ = _groups("concurrency", data)
    assert list(groups) == ["1 client", "50 clients"]
    assert groups["50 clients"]["fluxd"]["median"] == 160.0


def test_loopback_scenarios_draw_every_tool_of_the_summary() -> None:
    data = {
        "throughput": {
            "summary": {
                "fluxctl": {"mb_per_s": stats(800, 700, 900)},
                "scp": {"mb_per_s": stats(380, 250, 440)},
            }
        }
    }
    groups, _ = _groups("core", data)
    assert list(groups["loopback"]) == ["fluxctl", "scp"]


def test_a_link_refused_by_its_self_test_has_no_bars() -> None:
    data = {"links": [{"link": "wan", "spec": {"rate": 100e6}, "refused": "self-test"}]}
    assert _groups("links", data)[0] == {}


def test_fuzz_counts_are_read_from_hypothesis_statistics() -> None:
    out = """
tests/daemon/test_x.py::test_a:

  - during reuse phase (0.00 seconds):
    - 2 passing, 0 failing, and 0 invalid test cases
  - during generate phase (1.20 seconds):
    - 798 passing, 0 failing, and 5 invalid test cases

tests/daemon/test_x.py::test_b:
    - 10 passing, 1 failing, and 0 invalid test cases
"""
    assert count_inputs(out) == {
        "tests/daemon/test_x.py::test_a": [800, 0, 5],
        "tests/daemon/test_x.py::test_b": [10, 1, 0],
    }
