"""One download over lanes (`recv --transport auto`, `--lanes`): TCP through the proxy (paced
from the server to the client) and QUIC through the seeded relay, both on one port number, so
that each lane can be cut, stalled or moved on its own while the daemon schedules the chunks
over the requests that share the transfer (PROTOCOL.md 9.1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fluxctl import lanerecv
from fluxctl.download import Download
from fluxctl.results import TransferResult

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

SIZE = 8 * MIB
#: The client's receive window: each connection holds at most this much in flight, so that a
#: lane cut or stalled part-way loses little, and the lanes take turns.
WINDOW = MIB


def Run(
    daemon: Daemon,
    port: int,
    out: Path,
    name: str,
    on_progress: Callable[[LaneRun, int], None] = lambda run, done: None,
) -> LaneRun:
    """A recv of /NAME into `out` over lanes through `port`."""

    def make(url: Any, opts: Any, progress: Any) -> Download:
        return Download(url, out, opts, progress)

    return LaneRun(daemon, port, name, make, on_progress, window=WINDOW)


def slow_link(
    make_daemon: Callable[..., Daemon], link: Callable[..., Link], name: str
) -> tuple[Daemon, bytes, Link]:
    """A daemon serving an 8 MiB file /NAME, and a link whose TCP lane brings 4 MB/s: a
    download lasts long enough to cut or stall a lane part-way."""
    daemon = make_daemon()
    data = random_file(daemon.root / name, SIZE)
    return daemon, data, link(daemon, rate=4e6, upstream=False)


def download_records(daemon: Daemon, name: str, since_start: bool = False) -> list[dict[str, Any]]:
    records = daemon.events("access", since_start=since_start)
    return [e for e in records if e.get("op") == "download" and e["path"] == f"/{name}"]


def served(daemon: Daemon, name: str, *, since_start: bool = False) -> int:
    """Bytes the daemon counted as delivered for /NAME, over every request (`since_start`:
    since it last started)."""
    return sum(int(r["bytes"]) for r in download_records(daemon, name, since_start))


def check_counted_once(result: TransferResult, size: int) -> None:
    """Every chunk counted once at the client: in `received` and over the lanes."""
    assert result.moved == size, "each chunk counts in received once per pass"
    assert sum(result.lanes.values()) == size, result.lanes


def check_served_once(daemon: Daemon, name: str, size: int, lost: int = 0) -> None:
    """The daemon's records add up to the file, each chunk once; `lost`: at most this much
    was made durable at the client but its ACK died with a cut connection (counted nowhere)."""
    wait_for(lambda: served(daemon, name) >= size - lost, what="the download's access records")
    assert served(daemon, name) <= size, download_records(daemon, name)


def test_recv_auto_reports_its_lanes_and_receives_over_tcp_on_a_clean_path(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    data = random_file(daemon.root / "clean", 3 * MIB + 5)
    res = fluxctl("recv", daemon.url("/clean"), str(tmp_path / "out"), "--json")
    assert res.code == 0, res.stderr
    out = res.json
    assert (out["transport"], out["lanes"], out["received"]) == (
        "auto",
        {"tcp": len(data)},
        len(data),
    )
    assert "resent" not in out
    assert (tmp_path / "out").read_bytes() == data
    check_served_once(daemon, "clean", len(data))


@pytest.mark.usefixtures("quic_soon")
def test_tcp_lane_cut_mid_download_quic_finishes(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    """The QUIC gate is left as it is: QUIC does not carry beside a healthy TCP lane this
    early, so the cut takes the transfer's only request; QUIC opens it again for what is
    missing, without reconnecting."""
    daemon, data, net = slow_link(make_daemon, link, "cut")

    result = Run(daemon, net.port, tmp_path / "out", "cut", cut_tcp(net, len(data))).go()
    assert net.proxy.stalled.is_set(), "the TCP lane was cut part-way"
    assert result.retries == 0 and result.transport == "auto"
    assert result.lanes["tcp"] > 0 and result.lanes["quic"] > 0
    check_counted_once(result, len(data))
    check_served_once(daemon, "cut", len(data), lost=WINDOW)
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_quic_lane_blackholed_mid_download_tcp_finishes(
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    link: Callable[..., Link],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lanerecv, "LaneGate", OpenGate)  # QUIC carries from the start
    daemon, data, net = slow_link(make_daemon, link, "dark")

    result = Run(daemon, net.port, tmp_path / "out", "dark", blackhole_quic(net)).go()
    assert net.relay.params.blackhole
    assert result.retries == 0
    assert result.lanes["quic"] >= MIB and result.lanes["tcp"] > 0
    check_counted_once(result, len(data))
    # The daemon records the QUIC lane's request once its idle timeout found the path dead.
    assert (tmp_path / "out").read_bytes() == data


class ClosingGate(OpenGate):
    """QUIC carries from the start, until a test closes the gate (as a probe that found QUIC
    no help would)."""

    closed = False

    def allowed(self, kind: str) -> bool:
        return kind == "tcp" or not ClosingGate.closed


@pytest.mark.usefixtures("quic_soon")
def test_the_gate_closing_detaches_quic_and_tcp_takes_its_chunks(
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    link: Callable[..., Link],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lanerecv, "LaneGate", ClosingGate)
    monkeypatch.setattr(ClosingGate, "closed", False)
    daemon, data, net = slow_link(make_daemon, link, "gated")
    at_close: list[int] = []

    def close_gate(run: LaneRun, done: int) -> None:
        if run.delivered("quic") >= MIB and not at_close:
            ClosingGate.closed = True
            at_close.append(run.delivered("quic"))

    result = Run(daemon, net.port, tmp_path / "out", "gated", close_gate).go()
    assert at_close, "QUIC carried before the gate closed"
    assert result.retries == 0
    assert result.lanes["quic"] >= at_close[0] and result.lanes["tcp"] > 0
    check_counted_once(result, len(data))
    check_served_once(daemon, "gated", len(data))
    # QUIC's request was ended (CANCEL) while the transfer went on, on TCP, to its DONE.
    records = download_records(daemon, "gated")
    quic = [r for r in records if r["transport"] == "quic"]
    assert quic and all(r["result"] != "ok" for r in quic), records
    assert any(r["transport"] == "tcp" and r["result"] == "ok" for r in records), records
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_both_lanes_cut_reconnect_and_resume(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    daemon, data, net = slow_link(make_daemon, link, "both")
    restart = Restart(daemon, len(data))
    result = Run(daemon, net.port, tmp_path / "out", "both", restart).go()
    assert restart.wait()
    # The lanes reconnect in the background; the first one back opens the download again (a
    # retry of the attempt only if none was back when the pass ended) and asks only for what
    # was not received before: what was received was made durable.
    wait_for(lambda: served(daemon, "both", since_start=True) > 0, what="the rest served")
    check_counted_once(result, len(data))
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_client_address_changing_every_few_seconds(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    daemon, data, net = slow_link(make_daemon, link, "moving")
    moved_at: list[int] = []

    result = Run(
        daemon, net.port, tmp_path / "out", "moving", move_client(net, len(data), moved_at)
    ).go()
    assert len(moved_at) >= 3, "the client moved several times"
    assert result.retries == 0, "no move reconnected the download"
    assert result.lanes.get("quic", 0) > 0
    assert len(net.relay.client_addresses) >= 3, "QUIC really moved"
    check_counted_once(result, len(data))
    check_served_once(daemon, "moving", len(data), lost=len(moved_at) * WINDOW)
    assert (tmp_path / "out").read_bytes() == data


def test_recv_over_several_tcp_lanes(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    data = random_file(daemon.root / "wide", 6 * MIB + 3)
    args = ("--transport", "tcp", "--lanes", "3", "--json")
    res = fluxctl("recv", daemon.url("/wide"), str(tmp_path / "out"), *args)
    assert res.code == 0, res.stderr
    out = res.json
    assert (out["transport"], out["retries"], out["received"]) == ("tcp", 0, len(data))
    assert set(out["lanes"]) <= {"tcp", "tcp2", "tcp3"}
    assert sum(out["lanes"].values()) == len(data)
    assert (tmp_path / "out").read_bytes() == data
    check_served_once(daemon, "wide", len(data))


def test_the_daemons_memory_holds_across_recv_lanes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """Four TCP lanes share the client's 32 MiB window (at least 8 MiB each): the daemon holds
    what it sent until it is acknowledged, and four whole windows would be 128 MiB."""
    daemon = budget_daemon(make_daemon, tmp_path)
    random_file(daemon.root / "warm", 8 * MIB)
    data = random_file(daemon.root / "big", 96 * MIB)
    args = ("--transport", "tcp", "--lanes", "4", "--chunk-size", "1M", "--json")
    assert fluxctl("recv", daemon.url("/warm"), str(tmp_path / "warm"), *args).code == 0
    res, grew = growth(
        daemon, lambda: fluxctl("recv", daemon.url("/big"), str(tmp_path / "big"), *args)
    )
    assert res.code == 0, res.stderr
    assert set(res.json["lanes"]) >= {"tcp", "tcp2"}, "several lanes carried it"
    assert grew < 48, f"the daemon grew by {grew} MiB"
    assert (tmp_path / "big").read_bytes() == data


def test_recv_r_receives_big_files_over_the_lanes(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = daemon.root / "tree"
    (src / "sub").mkdir(parents=True)
    files = {"big": 6 * MIB + 3, "sub/big2": 5 * MIB, "small": 100, "sub/small2": 0}
    for name, size in files.items():
        random_file(src / name, size)
    args = ("--transport", "tcp", "--lanes", "2", "--chunk-size", "256K", "--json")
    res = fluxctl("recv", "-r", daemon.url("/tree"), str(tmp_path / "copy"), *args)
    assert res.code == 0, res.stderr
    out = res.json
    assert (out["transport"], out["files"], out["retries"]) == ("tcp", 4, 0)
    assert set(out["lanes"]) <= {"tcp", "tcp2"}
    assert sum(out["lanes"].values()) == out["received"] == sum(files.values())
    for name in files:
        assert (tmp_path / "copy" / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize("command", ["stat", "ls"])
def test_one_request_over_auto_goes_over_tcp(
    daemon: Daemon, fluxctl: Fluxctl, command: str
) -> None:
    random_file(daemon.root / "f", 10)
    res = fluxctl(command, daemon.url("/f"), "--json")
    assert res.code == 0, res.stderr
    wait_for(lambda: bool(requests_on(daemon)), what="the request's access record")
    assert {r["transport"] for r in requests_on(daemon)} == {"tcp"}


def requests_on(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events("access") if e.get("path") == "/f"]
