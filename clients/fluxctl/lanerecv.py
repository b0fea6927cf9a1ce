"""One download pass spread over the lanes of a LaneSet (lanes.py): a request on each lane
that carries, all sharing one transfer (PROTOCOL.md 9.1), the daemon scheduling its chunks.

- **Joining.** The first lane opens the download with `share` (Download); every other lane
  attaches to its transfer, now or when it comes up (again) later, and its chunks go through
  the pass's one writer (sharedrecv.SharedReceive). The gate (lanepolicy) leads with TCP; a
  lane of the other kind (QUIC, unless QUIC took the lead) carries only while the gate lets
  it: its request is attached when the gate opens and ended (CANCEL) when it closes, and the
  server puts what that request had in flight back in its queue. While a lane of the leading
  kind carries and is healthy, the gate measures the transfer's own rate (bytes received,
  each chunk once) with the other kind in and out.
- **Stalls.** A lane's connection is watched while its request is open (lanepolicy.Hearing):
  quiet for a moment, it is PINGed; silent past STALL_FLOOR, the lane is suspect. A suspect
  TCP lane no longer counts as healthy (QUIC carries at once); once another lane delivered
  since and the lane stayed suspect for STALL_FLOOR more seconds, it is dropped and
  reconnected in the background (LaneSet), and attaches again when it is back. What it had in
  flight the server sends on the others (its own stall rule; a lane it sees end at once).
- **The end.** The pass is over when every wanted chunk is durable. When no request carries
  the transfer any more (they failed, or were refused), the server has forgotten it: the pass
  ends unfinished, and Download opens a new one for the chunks still missing on a lane that
  is up, without reconnecting (no `retries`). Only when no lane is up does the pass fail, and
  `Retrier` starts a new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from fluxio.requests import Channel, Request
from fluxproto import ConnectionLost, FluxError, NotFound, Ping, TransportTimeout

from . import lanepolicy
from .lanepolicy import QUIC_AFTER, Hearing, LaneGate
from .lanes import Lane, LaneSet
from .session import ClientSession
from .sharedrecv import SharedReceive

#: How often stalls are looked for, the gate fed and the lanes' PINGs sent.
TICK = 0.1

__all__ = ["LaneReceive"]


class Carrier:
    """One lane's request in the pass, and what is known of its connection's life."""

    def __init__(self, lane: Lane, req: Request, now: float) -> None:
        self.lane, self.req = lane, req
        self.hearing = Hearing(now)
        self.task: asyncio.Task[None] | None = None
        self.suspect = False
        #: When this lane became suspect, and what the other lanes had received by then.
        self.suspect_since = 0.0
        self.others_at_suspicion = 0


class LaneReceive:
    """One pass of a download over `lanes` (module docstring).

    Args:
        lanes: the attempt's lanes.
        shared: the pass's chunks and writer, made for the opener's META.
        path: the file's path (attaching requests name it).
        gate: the gate (lanepolicy); tests give one with other timings.
    """

    def __init__(
        self, lanes: LaneSet, shared: SharedReceive, path: str, gate: LaneGate | None = None
    ) -> None:
        self.lanes, self.shared, self.path = lanes, shared, path
        self.now: Callable[[], float] = asyncio.get_running_loop().time
        self.started = self.now()
        self.gate = gate or LaneGate(self.started)
        self.carriers: dict[Lane, Carrier] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._joins: set[Lane] = set()  # lanes attaching now
        self._refused: set[Lane] = set()  # lanes the server would not attach in this pass
        self._side_received = 0  # what the side kind's lanes brought, at the last look
        #: The server said it knows the transfer no more (an attach found none).
        self._gone = False
        self._failure: FluxError | None = None
        self._pings = itertools.count(1)
        self._outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @property
    def over(self) -> bool:
        return self._outcome.done()

    async def run(self, first: Lane, req: Request) -> bool:
        """Receive the transfer `req` opened on `first` over every lane that may carry it.

        Returns:
            True once every wanted chunk is durable; False when no request carries the
            transfer any more while a lane is up (open it again for what is missing).

        Raises:
            FluxError: no lane is up (the last lane's failure), a failure that reconnecting
                cannot mend (the server's ERROR), or the staged file could not be written.
        """
        self._carry(first, req)
        stop = self.lanes.listen(self._consider)
        ticker = asyncio.create_task(self._tick())
        whole = asyncio.create_task(self.shared.wait_whole())
        whole.add_done_callback(lambda _: self._settle())
        self._look(self.now())
        try:
            return await self._outcome
        finally:
            stop()
            ticker.cancel()
            whole.cancel()
            await self._end()

    # --- lanes joining and leaving ------------------------------------------------------

    def _carry(self, lane: Lane, req: Request) -> None:
        carrier = Carrier(lane, req, self.now())
        self.carriers[lane] = carrier
        carrier.task = self._spawn(self.shared.carry(req, lane.name))
        carrier.task.add_done_callback(lambda task: self._carried(carrier, task))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _consider(self, lane: Lane) -> None:
        """Attach `lane` (up) to the transfer, unless it carries it already, may not (the side
        kind while the gate keeps it out), or was refused in this pass."""
        if self.over or lane in self.carriers or lane in self._joins or lane in self._refused:
            return
        if lane.session is None or not lane.up:
            return
        if not self.gate.allowed(lane.kind):
            return
        self._joins.add(lane)
        self._spawn(self._join(lane, lane.session))

    async def _join(self, lane: Lane, session: ClientSession) -> None:
        try:
            req = await self.shared.attach(session, self.path)
        except NotFound:
            # The server forgot the transfer (every request of it ended), or sees this lane
            # as someone else (anonymous clients count by address): this lane sits the pass
            # out; with no request left, the pass ends (without waiting for other lanes'
            # attaches, which can only find it gone too) and the transfer is opened again.
            self._gone = True
            req = None
        except Exception as exc:  # noqa: BLE001 - sorted out as any lane's failure
            self._joins.discard(lane)
            self._failed(lane, session.ch, exc)
            return
        self._joins.discard(lane)
        if req is None:
            self._refused.add(lane)
            self._settle()
        elif self.over:
            with contextlib.suppress(FluxError):
                req.cancel()
        else:
            self._carry(lane, req)

    def _carried(self, carrier: Carrier, task: asyncio.Task[None]) -> None:
        """A request's carrying ended: DONE, detached (cancelled), or failed."""
        if self.carriers.get(carrier.lane) is carrier:
            del self.carriers[carrier.lane]
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._failed(carrier.lane, carrier.req.channel, exc)
        self._settle()

    def _failed(self, lane: Lane, ch: Channel, exc: BaseException) -> None:
        """A lane's request failed (on connection `ch`): the lane is lost and reconnects,
        or the pass fails when the failure is the server's answer."""
        if self.over:
            return
        if not isinstance(exc, FluxError) or not exc.retryable:
            self._outcome.set_exception(exc)
            return
        self._failure = exc
        self.gate.failed(self.now(), lane.kind)
        self.lanes.open_deferred()  # QUIC, if it is not open yet, may carry on
        if lane.session is not None and lane.session.ch is ch:
            self.lanes.lost(lane, exc)
        self._look(self.now())

    def _settle(self) -> None:
        """End the pass when the part is whole, or when no request carries it any more."""
        if self.over:
            return
        if self.shared.whole:
            self._outcome.set_result(True)
        elif not self.carriers and (self._gone or not self._joins):
            if self.lanes.up:
                self._outcome.set_result(False)
            else:
                self._outcome.set_exception(self._failure or ConnectionLost("no lane is up"))

    async def _end(self) -> None:
        """The pass is over: joins stop, the requests still open get their DONE's grace
        (whole) or are cancelled, and what the writer holds is made durable."""
        carrying = {c.task for c in self.carriers.values() if c.task is not None}
        others = [task for task in self._tasks if task not in carrying]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others)
        await self.shared.finish(list(carrying))

    # --- the clock: stalls, PINGs, the QUIC gate ------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._look(self.now())

    def _look(self, now: float) -> None:
        """Watch the carrying lanes, feed the gate, and attach or detach the side kind of lane
        as it says (the primary's lanes are always allowed)."""
        if self.over:
            return
        for carrier in list(self.carriers.values()):
            self._watch(carrier, now)
        side, brought = self.gate.side, self.shared.lanes
        got = sum(brought.get(lane.name, 0) for lane in self.lanes.lanes if lane.kind == side)
        side_delivered, self._side_received = got > self._side_received, got
        primary_healthy = self._healthy(self.gate.primary)
        self.gate.update(now, self.shared.received, primary_healthy, side_delivered)
        if not self._healthy("tcp") or now - self.started >= QUIC_AFTER:
            self.lanes.open_deferred()
        for lane in self.lanes.up:
            self._consider(lane)
        for carrier in list(self.carriers.values()):
            if not self.gate.allowed(carrier.lane.kind) and carrier.task is not None:
                carrier.task.cancel()  # its request is cancelled: the server requeues
        self._settle()

    def _watch(self, carrier: Carrier, now: float) -> None:
        """PING a quiet lane; act on a suspect one (lanepolicy: Hearing): it stops counting as
        healthy at once, and once another lane received since and it stayed suspect for
        STALL_FLOOR more seconds, it is dropped and reconnected (a lane that comes back to
        life before that just goes on)."""
        ch = carrier.req.channel
        if carrier.hearing.ping(now, ch.last_receive):
            with contextlib.suppress(FluxError):
                ch.send(Ping(next(self._pings)))
        if not carrier.hearing.suspect(now, ch.last_receive):
            carrier.suspect = False
            return
        others = self.shared.received - self.shared.lanes.get(carrier.lane.name, 0)
        if not carrier.suspect:
            carrier.suspect, carrier.suspect_since = True, now
            carrier.others_at_suspicion = others
        elif others > carrier.others_at_suspicion and (
            now - carrier.suspect_since >= lanepolicy.STALL_FLOOR
        ):
            why = f"the {carrier.lane.name} lane stalled: dropped, reconnecting"
            self.gate.failed(now, carrier.lane.kind)
            self.lanes.lost(carrier.lane, TransportTimeout(why))

    def _healthy(self, kind: str) -> bool:
        """True if a lane of `kind` carries the transfer and is not suspect."""
        return any(c.lane.kind == kind and not c.suspect for c in self.carriers.values())
