"""One upload over lanes (`--transport auto`): TCP through the proxy and QUIC through the seeded
relay, both on one port number, so that each lane can be cut, stalled or moved on its own."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from fluxctl import lanepolicy, lanesend
from fluxctl.connect import ClientOptions
from fluxctl.lanepolicy import LaneGate
from fluxctl.lanes import Lane
from fluxctl.results import TransferResult
from fluxctl.retry import Retrier
from fluxctl.trust import TrustPolicy
from fluxctl.upload import Upload
from fluxctl.url import FluxURL
from fluxio.transports.quic import QuicChannel

from .conftest import Daemon, Fluxctl
from .proxy import Proxy
from .udp_relay import UdpRelay

MIB = 1024 * 1024
CS = 256 * 1024


@dataclass
class Link:
    """A proxy for the TCP lane and a relay for the QUIC lane, at one port number."""

    proxy: Proxy
    relay: UdpRelay

    @property
    def port(self) -> int:
        return self.proxy.port


@pytest.fixture
def link() -> Iterator[Callable[..., Link]]:
    made: list[Link] = []

    def make(daemon: Daemon, rate: float | None = None) -> Link:
        for _ in range(20):  # the proxy's TCP port number may be taken for UDP: another
            proxy = Proxy(daemon.port, rate=rate)
            try:
                relay = UdpRelay(daemon.port, seed=7, port=proxy.port)
            except OSError:
                proxy.close()
                continue
            made.append(Link(proxy, relay))
            return made[-1]
        raise AssertionError("no port number free for both TCP and UDP")

    yield make
    for one in made:
        one.proxy.close()
        one.relay.close()


@dataclass
class Run:
    """A send over lanes in this process, with hooks on its progress."""

    daemon: Daemon
    port: int
    src: Path
    name: str
    #: Called with (run, bytes durable) on every progress report.
    on_progress: Callable[[Run, int], None] = lambda run, done: None
    up: list[str] = field(default_factory=list)
    retrier: Retrier | None = None
    upload: Upload | None = None
    moves: list[asyncio.Task[None]] = field(default_factory=list)

    def options(self) -> ClientOptions:
        trust = TrustPolicy.from_options(None, self.daemon.fingerprint)
        return ClientOptions(trust=trust, chunk_size=CS, retry_for=60, io_timeout=30)

    def lane(self, name: str) -> Lane | None:
        lanes = self.retrier.lanes if self.retrier else None
        return next((ln for ln in lanes.lanes if ln.name == name), None) if lanes else None

    def rebind_quic(self) -> bool:
        """Move the QUIC lane to a new local socket (an address change); False if not up."""
        lane = self.lane("quic")
        ch = lane.session.ch if lane and lane.session else None
        if not isinstance(ch, QuicChannel):
            return False
        self.moves.append(asyncio.get_running_loop().create_task(ch.rebind()))
        return True

    def go(self) -> TransferResult:
        url = FluxURL("127.0.0.1", self.port, f"/{self.name}")
        opts = self.options()

        async def main() -> TransferResult:
            self.retrier = Retrier(url, opts, on_lanes=self._lanes)
            self.upload = Upload(self.src, url, opts, lambda d, t: self.on_progress(self, d))
            result = await self.upload.run(self.retrier)
            await asyncio.gather(*self.moves)
            return result

        return uvloop.run(main())

    def _lanes(self, names: list[str]) -> None:
        self.up[:] = names

    @property
    def quic_delivered(self) -> int:
        return self.upload.lanes.get("quic", 0) if self.upload else 0


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def quic_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The QUIC lane opens at once (not after QUIC_AFTER seconds), and a lane whose path is
    silent is suspect after half a second: these tests cut lanes within a few seconds."""
    monkeypatch.setattr(lanesend, "QUIC_AFTER", 0.0)
    monkeypatch.setattr(lanepolicy, "STALL_FLOOR", 0.5)


class OpenGate(LaneGate):
    """The gate wide open: QUIC takes chunks beside TCP whatever the rates."""

    def allowed(self, kind: str) -> bool:
        return True

    def capped(self, kind: str) -> bool:
        return False


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
    written = sum(int(str(e["bytes"])) for e in upload_records(daemon, name))
    assert written == size, upload_records(daemon, name)


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

    def cut(run: Run, done: int) -> None:
        if done >= len(data) // 4 and "quic" in run.up and not net.proxy.stalled.is_set():
            net.proxy.stalled.set()  # once
            net.proxy.close()  # reset, and no TCP lane comes back: QUIC carries on alone

    result = Run(daemon, net.port, tmp_path / "src", "cut", cut).go()
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

    def blackhole(run: Run, done: int) -> None:
        if run.quic_delivered >= MIB and not net.relay.params.blackhole:
            net.relay.set(blackhole=True)  # QUIC's path goes silent, nothing fails

    result = Run(daemon, net.port, tmp_path / "src", "dark", blackhole).go()
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
    restarted = threading.Event()
    restarts: list[threading.Thread] = []

    def restart(run: Run, done: int) -> None:
        if done >= len(data) // 3 and "quic" in run.up and not restarts:
            # Both lanes' connections end with the daemon; it comes back on the same port.
            restarts.append(threading.Thread(target=lambda: (daemon.restart(), restarted.set())))
            restarts[0].start()

    result = Run(daemon, net.port, tmp_path / "src", "both", restart).go()
    for thread in restarts:
        thread.join()
    assert restarted.is_set()
    assert result.retries >= 1, "the transfer was opened again"
    assert len(data) <= result.moved <= len(data) + 2 * MIB, "only what was in flight went again"
    assert (daemon.root / "both").read_bytes() == data


@pytest.mark.usefixtures("quic_soon")
def test_client_address_changing_every_few_seconds(
    make_daemon: Callable[..., Daemon], tmp_path: Path, link: Callable[..., Link]
) -> None:
    daemon, data, net = slow_link(make_daemon, tmp_path, link)
    moved_at: list[int] = []

    def move(run: Run, done: int) -> None:
        # A new address: TCP's connections die (the proxy resets them; the lane reconnects),
        # QUIC's connection moves to a new socket. Each fifth of the file, once QUIC is up.
        step = len(data) // 5
        if done >= step * (len(moved_at) + 1) and "quic" in run.up and run.rebind_quic():
            moved_at.append(done)
            net.proxy.cut()

    result = Run(daemon, net.port, tmp_path / "src", "moving", move).go()
    assert len(moved_at) >= 3, "the client moved several times"
    assert result.retries == 0, "no move reconnected the transfer"
    assert result.lanes.get("quic", 0) > 0
    assert len(net.relay.client_addresses) >= 3, "QUIC really moved"
    check_counted_once(result, daemon, "moving", len(data))
    assert (daemon.root / "moving").read_bytes() == data


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_the_daemons_memory_budget_holds_across_lanes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """Four TCP lanes of 32 MiB windows each into a daemon whose disk stalls for 3 s: without
    the receive budget it would hold 128 MiB of chunks; with 8 MiB, a few chunks over it."""
    config = tmp_path / "fluxd.toml"
    config.write_text('[limits]\nmax_chunk = "1M"\nmemory = "8M"\n')
    warm = tmp_path / "warm"
    random_file(warm, 8 * MIB)
    # The 4th chunk written after the 8 of the warm-up stalls 3 s, holding the upload's writes.
    stall = {"FLUX_STALL_AT": "chunk-written:12:3"}
    daemon = make_daemon("--config", str(config), "--window", "32M", env=stall)
    args = ("--transport", "tcp", "--lanes", "4", "--chunk-size", "1M", "--json")
    assert fluxctl("send", str(warm), daemon.url("/warm"), *args).code == 0
    assert daemon.proc is not None
    pid = daemon.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from here
    before = kib(pid, "VmRSS")
    data = random_file(tmp_path / "src", 96 * MIB)
    res = fluxctl("send", str(tmp_path / "src"), daemon.url("/big"), *args)
    assert res.code == 0, res.stderr
    grew = (kib(pid, "VmHWM") - before) // 1024
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
def test_lanes_out_of_range_is_a_usage_error(
    fluxctl: Fluxctl, tmp_path: Path, flags: tuple[str, ...], says: str
) -> None:
    random_file(tmp_path / "src", 10)
    res = fluxctl("send", str(tmp_path / "src"), "flux://127.0.0.1:9/x", *flags)
    assert res.code == 2, res.stderr
    assert says in res.stderr
