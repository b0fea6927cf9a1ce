"""The lanes of one attempt: a connection per lane to the same server, each reconnected in the
background when it fails, so that a transfer spread over them goes on over the others.

`--transport auto` has a TCP+TLS lane (`--lanes N`: N of them) and a QUIC lane. TCP connects
first and the attempt starts as soon as a lane is up; the QUIC lane is opened later, by
`open_deferred`: when no TCP lane is up within HEAD_START (or all failed), when a TCP lane
fails or stalls, or when the transfer has run long enough that QUIC may be worth a probe
(lanepolicy.QUIC_AFTER). Opening it costs the client ~0.13 s of CPU (aioquic's import and the
handshake), ~6 % of a 1 GiB transfer on loopback, which a transfer over a fast clean path
never needs. Where UDP is blocked the QUIC lane keeps trying in the background and the
transfer runs on TCP alone, as fast as a TCP-only run.

Every lane is a whole flux connection made by `connect.connect_tcp` / `connect.connect_quic`:
the same token, the same trust policy and pin, checked on each; the server counts each against
the subject's limits.

What the lanes carry, and when QUIC may, is lanesend.py's business (and lanepolicy.py's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fluxio.requests import Channel
from fluxproto import ConnectError, ConnectionLost, ConnectionRefused, FluxError

from .connect import (
    HEAD_START,
    MAX_LANES,
    QUIC_LAST_CHANCE,
    ClientOptions,
    connect_tcp,
    unreachable,
)
from .session import ClientSession, close_sessions
from .url import FluxURL

#: The most a QUIC lane lets the server hold in flight to it (its receive window, a download's
#: concern): a recv's QUIC lane carries beside TCP in the QUIC gate's probes, and what it holds
#: when the gate detaches it goes again on TCP, after the server spent its CPU on it over QUIC
#: (with 32 MiB, a probe on loopback stalled the transfer for a second). 16 MiB is still
#: ~0.5 s of what QUIC moves here, at 250 ms of round trip QUIC's CPU-bound rate.
QUIC_WINDOW = 16 * 1024 * 1024
#: The least receive window a TCP lane announces when the lanes share the options' window
#: (`lane_options`): two chunks of the default size.
MIN_LANE_WINDOW = 8 * 1024 * 1024
#: Backoff between reconnects of one lane (seconds, doubling, with jitter).
FIRST_DELAY = 0.2
MAX_DELAY = 10.0

Connector = Callable[[FluxURL, ClientOptions], Awaitable[Channel]]

__all__ = ["HEAD_START", "MAX_LANES", "Lane", "LaneSet", "lane_names", "uses_lanes"]


def uses_lanes(opts: ClientOptions) -> bool:
    """True if a transfer with `opts` runs over a LaneSet: `auto` (TCP and QUIC), or more
    than one TCP lane. One forced transport with one lane keeps the single-connection path."""
    if opts.insecure_plaintext:  # no QUIC without TLS: TCP lanes only
        return opts.lanes > 1
    return opts.transport == "auto" or opts.lanes > 1


def lane_names(opts: ClientOptions) -> list[tuple[str, str]]:
    """(name, kind) of every lane `opts` asks for: "tcp", "tcp2", ... then "quic"."""
    tcp = opts.transport in ("auto", "tcp") or opts.insecure_plaintext
    quic = opts.transport in ("auto", "quic") and not opts.insecure_plaintext
    lanes = [(f"tcp{i + 1}" if i else "tcp", "tcp") for i in range(opts.lanes)] if tcp else []
    return lanes + ([("quic", "quic")] if quic else [])


def lane_options(opts: ClientOptions, kind: str) -> ClientOptions:
    """The options a lane of `kind` connects with: `opts`, with its receive window (what the
    server may hold in flight to it: a download's) shared among the TCP lanes, at least
    MIN_LANE_WINDOW each, and QUIC's at most QUIC_WINDOW. A server holds what it sent until
    the client acknowledges it, so `--lanes N` would otherwise make it hold N windows of one
    download (fluxd: 92 MiB for four lanes, against 33 for one connection)."""
    if kind == "quic":
        window = min(opts.window, QUIC_WINDOW)
    else:
        window = max(min(opts.window, MIN_LANE_WINDOW), opts.window // opts.lanes)
    return dataclasses.replace(opts, window=window)


@dataclass(eq=False)
class Lane:
    """One lane: its connection while it is up, and why it is down otherwise.

    Attributes:
        name: "tcp", "tcp2", ... or "quic" (the key of `--json`'s `lanes`).
        kind: "tcp" or "quic".
        session: the connection, while up.
        failure: why the lane is down (its last connect or transfer error).
        given_up: a failure that reconnecting cannot mend (trust, auth): the lane stays down.
    """

    name: str
    kind: str
    session: ClientSession | None = None
    failure: FluxError | None = None
    given_up: bool = False
    _keeper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def up(self) -> bool:
        return self.session is not None and self.session.ch.usable and not self.session.ch.closed


class LaneSet:
    """The lanes of one attempt (module docstring). Start it with `start`, end with `close`.

    Args:
        url, opts: the server and the options every lane connects with.
        on_change: called with the names of the lanes up whenever that changes (the progress
            line shows them).
        connectors: how each kind connects (tests put a proxy or a relay in between).
    """

    def __init__(
        self,
        url: FluxURL,
        opts: ClientOptions,
        on_change: Callable[[list[str]], None] | None = None,
        connectors: dict[str, Connector] | None = None,
    ) -> None:
        self.url, self.opts = url, opts
        self.lanes = [Lane(name, kind) for name, kind in lane_names(opts)]
        self._on_change = on_change or (lambda names: None)
        self._connectors = connectors or {"tcp": connect_tcp, "quic": _connect_quic}
        self._listeners: list[Callable[[Lane], None]] = []
        self._changed = asyncio.Event()
        self._closing = False
        self._shown: list[str] = []
        self._closers: set[asyncio.Task[None]] = set()
        #: QUIC lanes not opened yet (see the module docstring); all of them without TCP.
        self._deferred = [lane for lane in self.lanes if lane.kind == "quic"]
        if all(lane.kind == "quic" for lane in self.lanes):
            self._deferred = []

    @property
    def transport(self) -> str:
        """What `--json` reports: "auto", or the one transport all lanes use."""
        kinds = {lane.kind for lane in self.lanes}
        return "auto" if len(kinds) > 1 else kinds.pop()

    @property
    def up(self) -> list[Lane]:
        """The lanes up now, TCP first."""
        return [lane for lane in self.lanes if lane.up]

    def first(self) -> tuple[Lane, ClientSession]:
        """The first lane up (TCP first) and its connection.

        Raises:
            FluxError: no lane is up: the last lane's failure (retryable, for Retrier).
        """
        for lane in self.lanes:
            if lane.up and lane.session is not None:
                return lane, lane.session
        failures = [lane.failure for lane in self.lanes if lane.failure is not None]
        raise failures[-1] if failures else ConnectionLost("no lane is up")

    def listen(self, callback: Callable[[Lane], None]) -> Callable[[], None]:
        """Call `callback(lane)` whenever a lane comes up (again); returns how to stop."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    async def start(self) -> None:
        """Start connecting every lane; return once one is up.

        Raises:
            ConnectionRefused, ConnectError: no lane came up (the errors of the first try of
                each; a QUIC lane gets QUIC_LAST_CHANCE seconds more once TCP failed).
            FluxError: a lane's failure that reconnecting cannot mend (trust, a bad token).
        """
        for lane in self.lanes:
            if lane not in self._deferred:
                lane._keeper = asyncio.create_task(self._keep(lane, first=True))
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        head_start = loop.time() + HEAD_START
        tcp = [lane for lane in self.lanes if lane.kind == "tcp"]
        while not self.up:
            for lane in self.lanes:
                if lane.given_up:
                    assert lane.failure is not None
                    raise lane.failure
            if all(lane.failure is not None for lane in self.lanes):
                break
            tcp_failed = bool(tcp) and all(lane.failure is not None for lane in tcp)
            if self._deferred and (tcp_failed or loop.time() >= head_start):
                self.open_deferred()  # TCP is slow or failed: QUIC may get through
            if deadline is None and tcp_failed:
                deadline = loop.time() + QUIC_LAST_CHANCE  # as connect's race
            wake = head_start if self._deferred else deadline
            self._changed.clear()
            left = None if wake is None else max(0.0, wake - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()
            if deadline is not None and loop.time() >= deadline:
                break
        if not self.up:
            silent = ConnectError("no answer")
            errors = {lane.name: lane.failure or silent for lane in self.lanes}
            raise unreachable(self.url, errors)

    def open_deferred(self) -> None:
        """Start connecting the lanes not opened yet (QUIC's; see the module docstring)."""
        deferred, self._deferred = self._deferred, []
        for lane in deferred:
            if not self._closing and lane._keeper is None:
                lane._keeper = asyncio.create_task(self._keep(lane, first=True))

    def lost(self, lane: Lane, exc: FluxError) -> None:
        """`lane` failed, or was found stalled: drop its connection now (nothing queued on it
        is worth waiting for) and reconnect it in the background."""
        session, lane.session = lane.session, None
        lane.failure = exc
        if session is not None:
            session.ch.abort()
            closer = asyncio.get_running_loop().create_task(session.close())
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
        self._announce()
        if not self._closing and not lane.given_up and lane._keeper is None:
            lane._keeper = asyncio.create_task(self._keep(lane, first=False))

    async def close(self, farewell: str | None) -> None:
        """Stop reconnecting, say `farewell` (GOODBYE) on every lane up, and close them."""
        self._closing = True
        keepers = [lane._keeper for lane in self.lanes if lane._keeper is not None]
        for task in keepers:
            task.cancel()
        if keepers or self._closers:
            await asyncio.wait([*keepers, *self._closers])
        sessions = []
        for lane in self.lanes:
            session, lane.session = lane.session, None
            if session is not None:
                sessions.append(session)
        await close_sessions(sessions, farewell)

    async def _keep(self, lane: Lane, *, first: bool) -> None:
        """Connect `lane`, retrying with backoff until it is up (or cannot be)."""
        delay = FIRST_DELAY
        try:
            while not self._closing:
                if not first:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
                    delay = min(delay * 2, MAX_DELAY)
                first = False
                try:
                    opts = lane_options(self.opts, lane.kind)
                    ch = await self._connectors[lane.kind](self.url, opts)
                except FluxError as exc:
                    lane.failure = exc
                    lane.given_up = not exc.retryable and not isinstance(exc, ConnectionRefused)
                    self._changed.set()
                    if lane.given_up:
                        return
                    continue
                lane.session, lane.failure = ClientSession(ch), None
                self._changed.set()
                self._announce()
                for callback in list(self._listeners):
                    callback(lane)
                return
        finally:
            lane._keeper = None

    def _announce(self) -> None:
        names = [lane.name for lane in self.up]
        if names != self._shown:
            self._shown = names
            self._on_change(names)


async def _connect_quic(url: FluxURL, opts: ClientOptions) -> Channel:
    """connect_quic, with aioquic imported in a worker thread: its ~0.1 s of import would
    otherwise stop the event loop, and with it the TCP lane's transfer."""
    await asyncio.to_thread(importlib.import_module, "fluxctl.tickets")
    await asyncio.to_thread(importlib.import_module, "fluxio.transports.quic")
    from .connect import connect_quic  # noqa: PLC0415

    return await connect_quic(url, opts)
