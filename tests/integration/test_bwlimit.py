"""`--bwlimit RATE` on send and recv (files and -r trees): validated, reported, and acting.

No rate is measured here (that is benchmarks/RESULTS.md's job): the one timing check is a lower
bound the bucket guarantees whatever the machine's speed (a limited run cannot finish before
its bytes less the burst have passed at the rate)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fluxio.ratelimit import BURST_SECONDS

from .conftest import Daemon, Fluxctl

MIB = 1 << 20
RATE = 4 * MIB


def floor_seconds(size: int, rate: int) -> float:
    return (size - rate * BURST_SECONDS) / rate


@pytest.mark.parametrize("value", ["fast", "-1M", "10X", "1.5M", ""])
@pytest.mark.parametrize("op", ["send", "recv"])
def test_a_bad_rate_is_a_usage_error_in_one_line(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, op: str, value: str
) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(b"x")
    args = (
        [str(local), daemon.url("/f.bin")]
        if op == "send"
        else [daemon.url("/f.bin"), str(tmp_path)]
    )
    r = fluxctl(op, *args, "--bwlimit", value)
    assert r.code == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--bwlimit" in r.stderr, r.stderr


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_a_limited_send_and_recv_complete_and_say_so(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    data = os.urandom(3 * MIB)
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    url = daemon.url("/limited.bin")
    common = ("--bwlimit", "4M", "--chunk-size", "256K", "--transport", transport)
    sent = fluxctl("send", str(src), url, *common, "--json", "--lanes", "2")
    assert sent.code == 0, sent.stderr
    assert sent.json["bwlimit"] == RATE
    assert sent.json["seconds"] >= floor_seconds(len(data), RATE)
    got = fluxctl("recv", url, str(back), *common, "--json")
    assert got.code == 0, got.stderr
    assert got.json["bwlimit"] == RATE and got.json["digest"] == sent.json["digest"]
    assert got.json["seconds"] >= floor_seconds(len(data), RATE)
    assert back.read_bytes() == data
    human = fluxctl("recv", url, str(tmp_path / "again.bin"), *common)
    assert human.code == 0 and "(--bwlimit 4.0 MiB/s)" in human.stdout, human.stdout


def test_zero_means_no_limit(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1000))
    sent = fluxctl("send", str(src), daemon.url("/f.bin"), "--bwlimit", "0", "--json")
    assert sent.code == 0, sent.stderr
    assert "bwlimit" not in sent.json


def test_trees_are_limited_as_a_whole(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for name in ("a.bin", "b.bin", "sub/c.bin"):
        (tree / name).write_bytes(os.urandom(MIB))
    sent = fluxctl("send", "-r", str(tree), daemon.url("/t"), "--bwlimit", "4M", "--json")
    assert sent.code == 0, sent.stderr
    assert sent.json["bwlimit"] == RATE
    out = tmp_path / "out"
    out.mkdir()
    got = fluxctl("recv", "-r", daemon.url("/t"), str(out), "--bwlimit", "4M", "--json")
    assert got.code == 0, got.stderr
    assert got.json["bwlimit"] == RATE
    assert (out / "sub" / "c.bin").read_bytes() == (tree / "sub" / "c.bin").read_bytes()
