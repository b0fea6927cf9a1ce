"""benchmarks.netem.spec: units, the scenario file, and the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.netem.model import GilbertElliott
from benchmarks.netem.spec import (
    SpecError,
    add_arguments,
    from_args,
    from_mapping,
    load,
    parse_gilbert,
    parse_rate,
    parse_share,
    parse_time,
)


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("100mbit", 100e6),
        ("1gbit", 1e9),
        ("20M", 20e6),
        ("512kbit", 512e3),
        ("1500", 1500.0),
    ],
)
def test_rates(text: str, bits: float) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize(
    ("text", "seconds"), [("40ms", 0.04), ("30s", 30.0), ("250us", 250e-6), ("2", 2.0), (0.5, 0.5)]
)
def test_times(text: str | float, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


def test_shares_and_burst_loss() -> None:
    assert parse_share("1%") == 0.01 and parse_share("0.02") == 0.02
    assert parse_gilbert("1%,25%") == GilbertElliott(0.01, 0.25)


@pytest.mark.parametrize(
    ("parse", "text"),
    [(parse_rate, "fast"), (parse_time, "soon"), (parse_share, "lots"), (parse_gilbert, "1%")],
)
def test_nonsense_gets_a_spec_error(parse: object, text: str) -> None:
    with pytest.raises(SpecError):
        parse(text)  # type: ignore[operator]


def test_the_shipped_links_load_as_the_issue_describes_them() -> None:
    wan, lossy, mobile, lan = (load(n) for n in ("wan", "lossy", "mobile", "lan"))
    assert (wan.spec.rate, wan.spec.rtt, wan.spec.loss) == (100e6, 0.04, 0.001)
    assert (lossy.spec.rate, lossy.spec.rtt, lossy.spec.loss) == (100e6, 0.04, 0.01)
    assert (mobile.spec.rate, mobile.spec.rtt, mobile.spec.loss) == (20e6, 0.08, 0.02)
    assert (mobile.spec.rebind_every, mobile.spec.blackhole_for) == (30.0, 5.0)
    assert not lan.relay and lan.spec.rate == 1e9


def test_unknown_settings_and_links_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown setting 'delay'"):
        from_mapping("x", {"delay": "10ms"})
    with pytest.raises(SpecError, match="no link 'moon'"):
        load("moon")
    bad = tmp_path / "links.toml"
    bad.write_text("[x\n")
    with pytest.raises(SpecError, match=r"links\.toml"):
        load("x", bad)
    with pytest.raises(SpecError, match="only `rate` applies"):
        from_mapping("x", {"relay": False, "rate": "1gbit", "loss": "1%"})


def test_command_line_overrides_a_named_link() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    link = from_args(parser.parse_args(["--link", "wan", "--loss", "2%", "--seed", "9"]))
    assert (link.name, link.spec.rate, link.spec.loss, link.spec.seed) == ("wan", 100e6, 0.02, 9)
    custom = from_args(parser.parse_args(["--rate", "5mbit", "--reorder", "1%"]))
    assert (custom.name, custom.spec.rate, custom.spec.reorder) == ("custom", 5e6, 0.01)
