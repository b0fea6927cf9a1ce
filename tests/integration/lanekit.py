"""What the lanes' tests share (test_lanes.py for send, test_recv_lanes.py for recv): a link
whose TCP and QUIC lanes can be cut, stalled or moved on their own, a QUIC gate held open,
and a look at a process's memory. The fixtures `link` and `quic_soon` are in conftest.py."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import uvloop

from fluxctl.connect import ClientOptions
from fluxctl.lanepolicy import LaneGate
from fluxctl.lanes import Lane
from fluxctl.results import ProgressFn, TransferResult
from fluxctl.retry import Retrier
from fluxctl.trust import TrustPolicy
from fluxctl.url import FluxURL
from fluxio.transports.quic import QuicChannel
from fluxproto import DEFAULT_WINDOW

if TYPE_CHECKING:
    from .conftest import Daemon
from .proxy import Proxy
from .udp_relay import UdpRelay

MIB = 1024 * 1024
T = TypeVar("T")
CS = 256 * 1024


@dataclass
class Link:
    """A proxy for the TCP lane and a relay for the QUIC lane, at one port number."""

    proxy: Proxy
    relay: UdpRelay

    @property
    def port(self) -> int:
        return self.proxy.port


class OpenGate(LaneGate):
    """The gate wide open: QUIC takes chunks beside TCP whatever the rates."""

    def allowed(self, kind: str) -> bool:
        return True

    def capped(self, kind: str) -> bool:
        return False


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def budget_daemon(make_daemon: Callable[..., Daemon], home: Path, **kw: Any) -> Daemon:
    """A daemon whose receive budget is 8 MiB, with chunks of at most 1 MiB."""
    config = home / "fluxd.toml"
    config.write_text('[limits]\nmax_chunk = "1M"\nmemory = "8M"\n')
    return make_daemon("--config", str(config), "--window", "32M", **kw)


def growth(daemon: Daemon, work: Callable[[], T]) -> tuple[T, int]:
    """What `work()` returned, and by how many MiB the daemon's peak memory grew meanwhile."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from here
    before = kib(pid, "VmRSS")
    done = work()
    return done, (kib(pid, "VmHWM") - before) // 1024


class Transfer(Protocol):
    """An Upload or a Download: runs with a Retrier, counts bytes per lane."""

    lanes: dict[str, int]

    async def run(self, retrier: Retrier | None = None) -> TransferResult: ...


@dataclass
class LaneRun:
    """A transfer over lanes in this process (`make` gives the Upload or Download), with
    hooks on its progress."""

    daemon: Daemon
    port: int
    name: str
    make: Callable[[FluxURL, ClientOptions, ProgressFn], Transfer]
    #: Called with (run, bytes durable) on every progress report.
    on_progress: Callable[[LaneRun, int], None] = lambda run, done: None
    #: The client's receive window (a download's in flight on each connection).
    window: int = DEFAULT_WINDOW
    up: list[str] = field(default_factory=list)
    retrier: Retrier | None = None
    transfer: Transfer | None = None
    moves: list[asyncio.Task[None]] = field(default_factory=list)

    def options(self) -> ClientOptions:
        trust = TrustPolicy.from_options(None, self.daemon.fingerprint)
        return ClientOptions(
            trust=trust, chunk_size=CS, retry_for=60, io_timeout=30, window=self.window
        )

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
            self.transfer = self.make(url, opts, lambda d, t: self.on_progress(self, d))
            result = await self.transfer.run(self.retrier)
            await asyncio.gather(*self.moves)
            return result

        return uvloop.run(main())

    def delivered(self, lane: str) -> int:
        """Bytes `lane` delivered so far."""
        return self.transfer.lanes.get(lane, 0) if self.transfer else 0

    def _lanes(self, names: list[str]) -> None:
        self.up[:] = names


# --- progress hooks: what happens to the link part-way ----------------------------------------

Hook = Callable[[LaneRun, int], None]


def cut_tcp(net: Link, size: int) -> Hook:
    """Once a quarter of `size` is durable and QUIC is up: the TCP lane is reset, and no TCP
    lane comes back (the proxy closes); `net.proxy.stalled` says it happened."""

    def cut(run: LaneRun, done: int) -> None:
        if done >= size // 4 and "quic" in run.up and not net.proxy.stalled.is_set():
            net.proxy.stalled.set()  # once
            net.proxy.close()

    return cut


def blackhole_quic(net: Link) -> Hook:
    """Once QUIC delivered a MiB: its path goes silent, nothing fails."""

    def blackhole(run: LaneRun, done: int) -> None:
        if run.delivered("quic") >= MIB and not net.relay.params.blackhole:
            net.relay.set(blackhole=True)

    return blackhole


class Restart:
    """A hook that restarts the daemon once a third of `size` is durable and QUIC is up: both
    lanes' connections end with it, and it comes back on the same port. `wait()` joins it;
    true if it happened."""

    def __init__(self, daemon: Daemon, size: int) -> None:
        self.daemon, self.size = daemon, size
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []

    def __call__(self, run: LaneRun, done: int) -> None:
        if done >= self.size // 3 and "quic" in run.up and not self._threads:
            restart = lambda: (self.daemon.restart(), self._done.set())  # noqa: E731
            self._threads.append(threading.Thread(target=restart))
            self._threads[0].start()

    def wait(self) -> bool:
        for thread in self._threads:
            thread.join()
        return self._done.is_set()


def move_client(net: Link, size: int, moved_at: list[int]) -> Hook:
    """Each fifth of `size`, once QUIC is up, a new client address: TCP's connections die (the
    proxy resets them; the lane reconnects), QUIC's connection moves to a new socket. Each
    move's progress goes to `moved_at`."""

    def move(run: LaneRun, done: int) -> None:
        step = size // 5
        if done >= step * (len(moved_at) + 1) and "quic" in run.up and run.rebind_quic():
            moved_at.append(done)
            net.proxy.cut()

    return move
