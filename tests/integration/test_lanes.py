"""One upload over lanes (`--transport auto`): TCP through the proxy and QUIC through the seeded
relay, both on one port number, so that each lane can be cut, stalled or moved on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fluxctl import lanesend
from fluxctl.results import TransferResult
from fluxctl.upload import Upload

from .conftest import Daemon, Fluxctl, wait_for
from .lanekit import (
    MIB,
    LaneRun,
    Link,
    OpenGate,
    Restart,
    blackhole_quic,
    budget_daemon,
    cut_tcp,
    growth,
    move_client,
    random_file,
)

CS = 256 * 1024


def Run(
    daemon: Daemon,
    port: int,
    src: Path,
    name: str,
    on_progress: Callable[[LaneRun, int], None] = lambda run, done: None,
) -> LaneRun:
    """A send of `src` to /NAME over lanes through `port`."""
    return LaneRun(daemon, port, name, lambda url, opts, p: Upload(src, url, opts, p), on_progress)


def slow_link(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> tuple[Daemon, bytes, Link]:
    """A daemon with a 1 MiB window, an 8 MiB file to send (tmp_path/src), and a link whose
    TCP lane moves 4 MB/s: a transfer lasts long enough to cut or stall a lane part-way."""
    daemon = make_daemon("--window", "1M")
    return daemon, random_file(tmp_path / "src", 8 * MIB), link(daemon, rate=4e6)


def upload_records(daemon: Daemon, name: str) -> list[dict[str, object]]:
    return [
        e for e in daemon.events("access") if e.get("op") == "upload" and e["path"] == f"/{name}"
    ]


def check_counted_once(result: TransferResult, daemon: Daemon | None, name: str, size: int) -> None:
    """Every chunk counted once: in `sent`, over the lanes, and in the daemon's records (once
    each lane's request ended there)."""
    assert result.moved == size, "each chunk counts in sent once per pass"
    assert sum(result.lanes.values()) == size, result.lanes
    if daemon is None:
        return

    def written() -> int:
        return sum(int(str(e["bytes"])) for e in upload_records(daemon, name))

    # The daemon's log reaches the test through a reader thread: wait for the records.
    wait_for(lambda: written() >= size, what="the upload's access records")
    assert written() == size, upload_records(daemon, name)


def test_auto_reports_its_lanes_and_sends_over_tcp_on_a_clean_path(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "src", 3 * MIB + 5)
    res = fluxctl("send", str(tmp_path / "src"), daemon.url("/clean"), "--json")
    assert res.code == 0, res.stderr
    out = res.json
    assert (out["transport"], out["lanes"], out["sent"]) == ("auto", {"tcp": len(data)}, len(data))
    assert (daemon.root / "clean").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_tcp_lane_cut_mid_transfer_quic_finishes(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    daemon, data, net = slow_link(make_daemon, tmp_path, link)  # TCP slow enough to be cut part-way

    result = Run(daemon, net.port, tmp_path / "src", "cut", cut_tcp(net, len(data))).go()
    assert net.proxy.stalled.is_set(), "the TCP lane was cut part-way"
    assert result.retries == 0 and result.transport == "auto"
    assert result.lanes["tcp"] > 0 and result.lanes["quic"] > 0
    assert result.resent <= MIB, "at most the TCP lane's window went again"
    check_counted_once(result, daemon, "cut", len(data))
    assert (daemon.root / "cut").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_quic_lane_blackholed_mid_transfer_tcp_finishes(
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    link: Callable[..., Link],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lanesend, "LaneGate", OpenGate)  # QUIC carries from the start
    daemon, data, net = slow_link(make_daemon, tmp_path, link)

    result = Run(daemon, net.port, tmp_path / "src", "dark", blackhole_quic(net)).go()
    assert net.relay.params.blackhole
    assert result.retries == 0
    assert result.lanes["quic"] >= MIB and result.lanes["tcp"] > 0
    assert result.resent > 0, "what QUIC had in flight went again over TCP"
    # The daemon records the QUIC lane's request once its idle timeout found the path dead.
    check_counted_once(result, None, "dark", len(data))
    assert (daemon.root / "dark").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_both_lanes_cut_reconnect_and_resume(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    daemon, data, net = slow_link(make_daemon, tmp_path, link)
    restart = Restart(daemon, len(data))
    result = Run(daemon, net.port, tmp_path / "src", "both", restart).go()
    assert restart.wait()
    assert result.retries >= 1, "the transfer was opened again"
    assert len(data) <= result.moved <= len(data) + 2 * MIB, "only what was in flight went again"
    assert (daemon.root / "both").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_client_address_changing_every_few_seconds(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    daemon, data, net = slow_link(make_daemon, tmp_path, link)
    moved_at: list[int] = []

    result = Run(
        daemon, net.port, tmp_path / "src", "moving", move_client(net, len(data), moved_at)
    ).go()
    assert len(moved_at) >= 3, "the client moved several times"
    assert result.retries == 0, "no move reconnected the transfer"
    assert result.lanes.get("quic", 0) > 0
    assert len(net.relay.client_addresses) >= 3, "QUIC really moved"
    check_counted_once(result, daemon, "moving", len(data))
    assert (daemon.root / "moving").read_bytes() == data


def test_the_daemons_memory_budget_holds_across_lanes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """Four TCP lanes of 32 MiB windows each into a daemon whose disk stalls for 3 s: without
    the receive budget it would hold 128 MiB of chunks; with 8 MiB, a few chunks over it."""
    warm = tmp_path / "warm"
    random_file(warm, 8 * MIB)
    # The 4th chunk written after the 8 of the warm-up stalls 3 s, holding the upload's writes.
    daemon = budget_daemon(make_daemon, tmp_path, env={"FLUX_STALL_AT": "chunk-written:12:3"})
    args = ("--transport", "tcp", "--lanes", "4", "--chunk-size", "1M", "--json")
    assert fluxctl("send", str(warm), daemon.url("/warm"), *args).code == 0
    data = random_file(tmp_path / "src", 96 * MIB)
    res, grew = growth(
        daemon, lambda: fluxctl("send", str(tmp_path / "src"), daemon.url("/big"), *args)
    )
    assert res.code == 0, res.stderr
    assert set(res.json["lanes"]) >= {"tcp", "tcp2"}, "several lanes carried it"
    assert grew < 40, f"the daemon grew by {grew} MiB"
    assert (daemon.root / "big").read_bytes() == data


def test_send_r_sends_big_files_over_the_lanes(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    files = {"big": 6 * MIB + 3, "sub/big2": 5 * MIB, "small": 100, "sub/small2": 0}
    for name, size in files.items():
        random_file(src / name, size)
    args = ("--transport", "tcp", "--lanes", "2", "--chunk-size", "256K", "--json")
    res = fluxctl("send", "-r", f"{src}/", daemon.url("/copy"), *args)
    assert res.code == 0, res.stderr
    out = res.json
    assert (out["transport"], out["files"], out["retries"]) == ("tcp", 4, 0)
    assert set(out["lanes"]) <= {"tcp", "tcp2"}
    assert sum(out["lanes"].values()) == out["sent"] == sum(files.values())
    for name in files:
        assert (daemon.root / "copy" / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--lanes", "0"), "--lanes must be between 1 and 16"),
        (("--lanes", "17"), "--lanes must be between 1 and 16"),
        (("--lanes", "2", "--transport", "quic"), "--lanes adds TCP lanes"),
    ],
)
@pytest.mark.parametrize("command", ["send", "recv"])
def test_lanes_out_of_range_is_a_usage_error(
    fluxctl: Fluxctl, tmp_path: Path, flags: tuple[str, ...], says: str, command: str
) -> None:
    random_file(tmp_path / "src", 10)
    url = "flux://127.0.0.1:9/x"
    args = (str(tmp_path / "src"), url) if command == "send" else (url, str(tmp_path / "out"))
    res = fluxctl(command, *args, *flags)
    assert res.code == 2, res.stderr
    assert says in res.stderr


def test_the_subjects_connection_limit_counts_lanes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """Each lane is a connection of the subject: past its limit the daemon refuses the extra
    lanes (503), and the transfer goes on over the ones it let in."""
    config = tmp_path / "fluxd.toml"
    config.write_text("[limits]\nconnections_per_subject = 1\n")
    daemon = make_daemon("--config", str(config))
    data = random_file(tmp_path / "src", 6 * MIB)
    args = ("--transport", "tcp", "--lanes", "3", "--chunk-size", "1M", "--json")
    res = fluxctl("send", str(tmp_path / "src"), daemon.url("/one"), *args)
    assert res.code == 0, res.stderr
    # Whichever lane got the subject's one slot first carried it all.
    (carried,) = res.json["lanes"].values()
    assert (res.json["retries"], carried) == (0, len(data))

    def refused() -> list[dict[str, object]]:
        return [r for r in daemon.events("access") if str(r["result"]).startswith("error 503")]

    wait_for(lambda: len(refused()) >= 2, what="the two extra lanes' refusals")
    assert all(r["op"] == "connect" for r in refused())
    assert (daemon.root / "one").read_bytes() == data
