"""One upload pass spread over the lanes of a LaneSet (lanes.py): every lane carries chunks of
the same upload, each through its own request (PROTOCOL.md 6.3, attach).

- **Pull.** One reader takes the file in order, as on one connection: each chunk is read once,
  hashed in order for the whole-file digest, and skipped if the server holds it. Each lane's
  sender takes the next chunk whenever its windows have room (and lanepolicy's gate and flight
  caps let it: the side kind of lane only where it helps), so the faster lane carries more.
  The first lane opens the upload (OPEN_UPLOAD, STATUS names the `tid`), the others attach to
  it, now or when they come up (again) later.
- **Per-lane ACKs.** A chunk is delivered once any lane's ACK names it; a copy that arrives
  through another lane too is harmless (the server takes a verified chunk twice).
- **Failures.** A lane that fails gives its chunks in flight back to the front of the queue,
  where the other lanes take them at once, and is reconnected in the background (LaneSet). A
  lane that is *suspect* (lanepolicy: no ACK for a few of its usual gaps) gives them back too,
  once another lane is live (while all are silent, copies would only double what a lane that
  comes back still carries);
  it is dropped and reconnected once another lane delivered meanwhile, and goes on if it
  recovers first. The pass fails (and `Retrier` reconnects, a `retries`) only when no lane is
  left, or a lane fails while it commits.
- **COMMIT** goes on a lane that, once the file is read, holds in flight every chunk not yet
  delivered: COMMITTED covers those, as on one connection, so COMMIT never waits for its own
  lane's ACKs, only for the other lanes'. A TCP lane commits when one carries the upload
  (QUIC only without one). The other lanes then commit too (their COMMIT finds the upload
  committed), or cancel what they still had in flight.

Counting (`--json`): a chunk's bytes count in `sent` once per pass, when first put on the wire;
copies put on another lane because the first lane failed or stalled count in `resent`; each
lane's `lanes` bytes are the chunks whose delivery it acknowledged first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

from fluxio.buffers import POOL
from fluxio.chunkflow import ChunkData
from fluxio.ratelimit import Pace, paced
from fluxio.requests import Channel, Request
from fluxproto import (
    Ack,
    Chunk,
    Commit,
    Committed,
    FluxError,
    Frame,
    FrameType,
    LocalProtocolError,
    NotFound,
    OpenUpload,
    Status,
    TransportTimeout,
    Unavailable,
)

from . import lanepolicy
from .lanepolicy import QUIC_AFTER, LaneGate, LaneMeter
from .lanes import Lane, LaneSet
from .session import ClientSession

#: How often stalls are looked for, the gate fed and the lanes' rates measured.
TICK = 0.1
#: How long the other lanes' own COMMIT (or CANCEL) may take once the upload is committed.
FAREWELL = 2.0

__all__ = ["LaneUpload", "Tally"]


class Tally(Protocol):
    """What a pass reports as it goes (the Upload's counters and progress)."""

    def count_sent(self, nbytes: int) -> None: ...
    def count_resent(self, nbytes: int) -> None: ...
    def count_delivered(self, lane: str, nbytes: int) -> None: ...


class Spread:
    """The chunks of one pass: read in order, the ones given back first, and each chunk's
    buffer until it is delivered and no lane's socket may still read it."""

    def __init__(self, chunks: AsyncIterator[ChunkData], tally: Tally) -> None:
        self._chunks, self._tally = chunks, tally
        self._reading = asyncio.Lock()
        #: The reader is done: every chunk to send was read (and the file hashed).
        self.exhausted = False
        #: Chunks read and not yet delivered, by index (for resends).
        self.pending: dict[int, ChunkData] = {}
        #: Indices given back by a failed or suspect lane, in order, for the others.
        self.returned: dict[int, None] = {}
        #: Bytes delivered in this pass (every lane).
        self.delivered = 0
        self._on_wire: set[int] = set()  # put on some lane's wire in this pass
        # Each chunk's buffer and its holders: this until delivered, and every socket that
        # sends from it (TCP) until its lane's ACK. The last one gives it back to the pool,
        # unless a dropped socket may still have pointed at it (spoilt: left to the collector).
        self._buffers: dict[int, ChunkData] = {}
        self._refs: dict[int, int] = {}
        self._spoilt: set[int] = set()

    async def take(self, sender: LaneSender) -> ChunkData | None:
        """The next chunk for `sender`: one given back that it has not sent, else the next
        one read; None if there is none for it (now)."""
        for index in self.returned:
            if index not in sender.sent:
                del self.returned[index]
                return self.pending[index]
        if self.exhausted:
            return None
        async with self._reading:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self.exhausted = True
                return None
        index = chunk[0]
        self.pending[index] = self._buffers[index] = chunk
        self._refs[index] = 1
        return chunk

    def has_work(self, sender: LaneSender) -> bool:
        return not self.exhausted or any(i not in sender.sent for i in self.returned)

    def covered_by(self, sender: LaneSender) -> bool:
        """True once everything is read and every chunk not delivered is on `sender`."""
        return self.exhausted and all(i in sender.inflight for i in self.pending)

    def on_wire(self, index: int, nbytes: int, copies: bool) -> None:
        """A lane put chunk `index` on its wire (`copies`: its transport copied the bytes)."""
        if index in self._on_wire:
            self._tally.count_resent(nbytes)
        else:
            self._on_wire.add(index)
            self._tally.count_sent(nbytes)
        if not copies:
            self._refs[index] += 1

    def acked(self, lane: str, index: int, copies: bool) -> int:
        """`lane` acknowledged chunk `index`; the bytes it delivered (0: delivered before)."""
        chunk = self.pending.pop(index, None)
        self.returned.pop(index, None)
        nbytes = 0
        if chunk is not None:
            nbytes = len(chunk[2])
            self.delivered += nbytes
            self._tally.count_delivered(lane, nbytes)
            self._unref(index)
        if not copies:
            self._unref(index)
        return nbytes

    def give_back(self, sender: LaneSender) -> None:
        """`sender`'s chunks not yet delivered go to the front of the queue, in order."""
        back = sorted(i for i in sender.inflight if i in self.pending and i not in self.returned)
        self.returned = dict.fromkeys([*back, *self.returned])

    def dropped(self, sender: LaneSender) -> None:
        """`sender`'s lane is gone: its socket's hold on buffers ends, but a dropped socket may
        still have pointed at them, so those buffers are not reused."""
        if sender.copies:
            return
        for index in sender.inflight:
            if index in sender.sent:  # on its wire, not acknowledged there
                self._spoilt.add(index)
                self._unref(index)

    def _unref(self, index: int) -> None:
        left = self._refs.pop(index, 0) - 1
        if left > 0:
            self._refs[index] = left
            return
        chunk = self._buffers.pop(index, None)
        if chunk is not None and isinstance(chunk[2], memoryview) and index not in self._spoilt:
            POOL.put(chunk[2])


class LaneSender:
    """One lane's request in the pass: what it sent, what it has in flight, its meter."""

    def __init__(self, up: LaneUpload, lane: Lane, req: Request, now: float) -> None:
        self.up, self.lane, self.req = up, lane, req
        self.meter = LaneMeter(now)
        #: CHUNK frames this request sent (its COMMIT's `sent`).
        self.count = 0
        #: Chunks taken and not acknowledged on this lane, by index: their sizes.
        self.inflight: dict[int, int] = {}
        #: Every index this request sent: a request never sends one twice.
        self.sent: set[int] = set()
        self.copies = req.channel.copies_on_send
        self.suspect = False
        #: Its chunks in flight went back to the queue since it became suspect.
        self.given_back = False
        #: When this lane became suspect, and what the other lanes had delivered by then.
        self.suspect_since = 0.0
        self.others_at_suspicion = 0
        self.committing = False

    async def run(self) -> None:
        """Send until the pass is over (or this lane commits it).

        Raises:
            FluxError: the lane's or the request's failure.
        """
        up, spread = self.up, self.up.spread
        while True:
            self.take_queued()
            if up.over:
                return
            if self._may_commit():
                await self._commit()
                return
            if up.committer is None and self._may_take():
                chunk = await spread.take(self)
                if chunk is not None:
                    await self._send(chunk)
                    continue
            timeout = self.up.timeout if self.inflight else None
            await self.req.wait_until(self._ready, timeout)

    def _ready(self) -> bool:
        up = self.up
        if up.over or up.committer is not None:
            return up.over
        return self._may_commit() or (self._may_take() and up.spread.has_work(self))

    def _may_commit(self) -> bool:
        """True if this lane should commit now: nobody does yet, everything is read, every
        chunk not yet delivered is in flight here, and it is a TCP lane that is not suspect
        (QUIC commits only when no TCP lane carries the upload: a QUIC path that goes dark
        right then would hold the COMMIT until QUIC's idle timeout, where a healthy TCP lane
        just waits for QUIC's last ACKs, or for its chunks, given back once it is suspect)."""
        up = self.up
        if up.committer is not None or self.suspect or not up.spread.covered_by(self):
            return False
        if self.lane.kind == "tcp":
            return True
        return not any(
            s.lane.kind == "tcp" and not s.suspect for s in up.senders.values() if s is not self
        )

    def _may_take(self) -> bool:
        if self.suspect:
            return False
        size, gate, kind = self.up.chunk_size, self.up.gate, self.lane.kind
        if not gate.allowed(kind):
            return False
        cap = self.meter.cap(self.up.now(), size, side=gate.capped(kind))
        if self.meter.inflight + size > cap:
            return False
        return self.req.conn.can_send_chunk(self.req.rid, size)

    async def _send(self, chunk: ChunkData) -> None:
        index, digest, data = chunk
        req, size = self.req, len(data)
        self.inflight[index] = size
        while not req.conn.can_send_chunk(req.rid, size):  # other uploads share the connection
            await req.wait_room(size, self.up.timeout)
            self.take_queued()
        await paced(self.up.pace, size)
        req.send(Chunk(req.rid, index, digest, data))
        self.count += 1
        self.sent.add(index)
        self.up.spread.on_wire(index, size, self.copies)
        self.meter.sent(self.up.now(), size)
        await req.channel.drain(self.up.timeout)

    def take_queued(self) -> None:
        while (frame := self.req.poll()) is not None:
            self.take(frame)

    def take(self, frame: Frame) -> None:
        """Count an ACK.

        Raises:
            LocalProtocolError: another frame, which this request does not expect now.
        """
        if not isinstance(frame, Ack):
            raise LocalProtocolError(
                f"unexpected {type(frame).__name__} while request {self.req.rid} sends chunks"
            )
        freed = delivered = 0
        spread = self.up.spread
        for start, count in frame.ranges:
            for index in range(start, start + count):
                freed += self.inflight.pop(index, 0)
                delivered += spread.acked(self.lane.name, index, self.copies)
        now = self.up.now()
        self.meter.acked(now, freed, delivered)
        if self.suspect and not self.meter.suspect(now, self.req.channel.silence()):
            self.suspect = False  # it recovered before it was dropped
        if spread.exhausted:
            self.up.wake()  # another lane may be able to commit now

    async def _commit(self) -> None:
        up = self.up
        up.committer, self.committing = self, True
        digest = up.digest()
        self.req.send(Commit(self.req.rid, digest, self.count))
        while not isinstance(frame := await self.req.next(up.commit_timeout), Committed):
            self.take(frame)  # ACKs of chunks still in flight at COMMIT
        for index in list(self.inflight):  # COMMITTED acknowledged them all
            self.meter.acked(up.now(), self.inflight.pop(index), 0)
            up.spread.acked(self.lane.name, index, self.copies)
        up.finish(digest)

    async def farewell(self) -> None:
        """The upload is committed: commit it here too (the server finds it done), or cancel
        what this request still has in flight."""
        req = self.req
        if req.ended is not None:
            return
        if self.inflight or not req.can_send(FrameType.COMMIT):
            req.cancel()
            self.up.spread.dropped(self)
            return
        assert self.up.digest_value is not None
        req.send(Commit(req.rid, self.up.digest_value, self.count))
        while not isinstance(await req.next(FAREWELL), Committed):
            pass


class LaneUpload:
    """One pass of an upload over `lanes` (module docstring).

    Args:
        lanes: the attempt's lanes.
        opening: the OPEN_UPLOAD that opened the upload on the first lane (its path and
            geometry; the others attach with the same).
        tid: the upload's transfer id, from STATUS.
        tally: where sent, resent and delivered bytes go.
        timeout: the idle timeout of a request that waits for the server.
        commit_timeout: how long COMMIT may take (the server may read the whole file).
        gate: the gate (lanepolicy); tests give one with other timings.
    """

    def __init__(
        self,
        lanes: LaneSet,
        opening: OpenUpload,
        tid: bytes,
        tally: Tally,
        timeout: float,
        commit_timeout: float,
        gate: LaneGate | None = None,
    ) -> None:
        self.lanes, self.opening, self.tid, self.tally = lanes, opening, tid, tally
        self.timeout, self.commit_timeout = timeout, commit_timeout
        self.chunk_size = opening.chunk_size
        self.now: Callable[[], float] = asyncio.get_running_loop().time
        self.started = self.now()
        self.gate = gate or LaneGate(self.started)
        self.spread: Spread
        self.senders: dict[Lane, LaneSender] = {}
        self.committer: LaneSender | None = None
        self.digest_value: bytes | None = None
        self.digest: Callable[[], bytes] = lambda: b""
        #: `--bwlimit`'s pace, charged by every lane before it sends a chunk.
        self.pace: Pace | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._joins: set[Lane] = set()  # lanes attaching now
        #: When an attach heard that the server knows the upload no more (None: none did, or
        #: a lane carrying it heard from the server since).
        self._unknown_since: float | None = None
        self._outcome: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    @property
    def over(self) -> bool:
        return self._outcome.done()

    async def run(
        self,
        first: Lane,
        req: Request,
        chunks: AsyncIterator[ChunkData],
        digest: Callable[[], bytes],
    ) -> bytes:
        """Send the file's chunks over every lane and commit: the committed digest.

        `first` opened the upload with `req`; `chunks` are the chunks to send in file order
        (held ones left out); `digest()` gives the whole-file digest once they are read
        (raising if the file changed meanwhile).

        Raises:
            FluxError: no lane left (the last lane's failure), a failure of the lane that
                commits, or what the server refused (its ERROR).
        """
        self.spread, self.digest = Spread(chunks, self.tally), digest
        self._start(first, req)
        for lane in self.lanes.up:
            if lane is not first:
                self._attach(lane)
        stop = self.lanes.listen(self._attach)
        ticker = asyncio.create_task(self._tick())
        try:
            return await self._outcome
        finally:
            stop()
            ticker.cancel()
            await self._end()

    def finish(self, digest: bytes) -> None:
        """The committer's COMMITTED arrived."""
        self.digest_value = digest
        if not self._outcome.done():
            self._outcome.set_result(digest)
        self.wake()

    def wake(self) -> None:
        for sender in self.senders.values():
            sender.req.wake()

    # --- lanes joining and leaving ------------------------------------------------------

    def _start(self, lane: Lane, req: Request) -> None:
        sender = LaneSender(self, lane, req, self.now())
        self.senders[lane] = sender
        self._spawn(self._drive(sender))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _attach(self, lane: Lane) -> None:
        """Attach `lane` (up now) to the upload, unless it carries the upload already."""
        if self.over or lane in self.senders or lane in self._joins or lane.session is None:
            return
        self._joins.add(lane)
        self._spawn(self._join(lane, lane.session))

    async def _join(self, lane: Lane, session: ClientSession) -> None:
        o = self.opening
        try:
            req = await session.open(
                lambda rid: OpenUpload(
                    rid, o.path, o.size, o.chunk_size, o.mode, o.mtime_ns, attach=self.tid
                )
            )
            await req.expect(Status, self.timeout)
        except NotFound:
            # The server does not know the upload for this lane: it restarted, or noticed every
            # lane gone, or sees this lane as someone else (anonymous clients count by address,
            # which changed). This lane sits the pass out; if no other lane shows life within
            # STALL_FLOOR, they all wait in vain: the pass ends (see `_look`) and Retrier
            # opens the upload again.
            self._joins.discard(lane)
            if self._unknown_since is None:
                self._unknown_since = self.now()
            return
        except Exception as exc:  # noqa: BLE001 - sorted out as any lane's failure
            self._joins.discard(lane)
            self._failed(lane, session.ch, exc)
            return
        self._joins.discard(lane)
        if self.over:
            req.cancel()
            return
        self._start(lane, req)
        self.wake()

    async def _drive(self, sender: LaneSender) -> None:
        try:
            await sender.run()
        except Exception as exc:  # noqa: BLE001 - sorted out below
            if self.senders.get(sender.lane) is sender:
                del self.senders[sender.lane]
            self.spread.give_back(sender)
            self.spread.dropped(sender)
            committing = sender.committing
            self._failed(sender.lane, sender.req.channel, exc, committing=committing)

    def _failed(self, lane: Lane, ch: Channel, exc: Exception, *, committing: bool = False) -> None:
        """A lane's request failed (on connection `ch`): the lane is lost, or the pass is when
        the failure is the server's answer, no lane is left, or the lane was committing."""
        if self.over:
            return
        if not isinstance(exc, FluxError) or not exc.retryable or committing:
            self._outcome.set_exception(exc)
            return
        self.lanes.open_deferred()  # QUIC, if it is not open yet, may carry on
        self.gate.failed(self.now(), lane.kind)
        if lane.session is not None and lane.session.ch is ch:
            self.lanes.lost(lane, exc)
        elif lane.up:
            self._attach(lane)  # it came back already
        if not self.senders and not self._joins:
            self._outcome.set_exception(exc)  # no lane left
            return
        self.wake()

    async def _end(self) -> None:
        """The pass is over: the other lanes' requests end (committed: politely)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self.digest_value is None:
            for sender in self.senders.values():
                with contextlib.suppress(Exception):
                    sender.req.cancel()
            return
        others = [s for s in self.senders.values() if s is not self.committer]
        if others:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FAREWELL):
                    await asyncio.gather(*(_quietly(s.farewell()) for s in others))

    # --- the clock: stalls, the QUIC gate -------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._look(self.now())

    def _look(self, now: float) -> None:
        """Measure the lanes, feed the QUIC gate, and act on suspect lanes: their chunks go to
        the others at once; once another lane delivered and the lane stayed suspect for
        STALL_FLOOR more seconds, it is dropped and reconnected (a lane that comes back to
        life before that just goes on)."""
        side_delivered = False
        for sender in self.senders.values():
            sender.meter.tick(now)
            if sender.lane.kind == self.gate.side:
                side_delivered |= sender.meter.carried(now, 1.5 * TICK) > 0
        primary_healthy = self._healthy(self.gate.primary)
        self.gate.update(now, self.spread.delivered, primary_healthy, side_delivered)
        if not self._healthy("tcp") or now - self.started >= QUIC_AFTER:
            self.lanes.open_deferred()
        if self._unknown_since is not None:
            if self._heard_since(now - self._unknown_since):
                self._unknown_since = None
            elif now - self._unknown_since >= lanepolicy.STALL_FLOOR:
                why = f"{self.lanes.url.address} no longer has this upload open; opening it again"
                self._outcome.set_exception(Unavailable(why))
                return
        for sender in list(self.senders.values()):
            if sender is self.committer:
                continue  # no ACK comes after COMMIT: COMMITTED covers its chunks
            if not sender.meter.suspect(now, sender.req.channel.silence()):
                sender.suspect = False
                continue
            others = self.spread.delivered - sender.meter.delivered
            if not sender.suspect:
                sender.suspect, sender.suspect_since = True, now
                sender.others_at_suspicion, sender.given_back = others, False
            elif others > sender.others_at_suspicion and now - sender.suspect_since >= (
                lanepolicy.STALL_FLOOR
            ):
                why = f"the {sender.lane.name} lane stalled: dropped, reconnecting"
                self.gate.failed(now, sender.lane.kind)
                self.lanes.lost(sender.lane, TransportTimeout(why))
            if not sender.given_back and any(not s.suspect for s in self.senders.values()):
                # A live lane sends its chunks again now. While every lane is silent (the
                # whole path dark) they stay where they are: copies sent when one lane comes
                # back would double what that lane still carries.
                sender.given_back = True
                self.spread.give_back(sender)
        self.wake()

    def _heard_since(self, seconds: float) -> bool:
        """True if a lane carrying the upload heard from the server in the last `seconds`."""
        return any(s.req.channel.silence() < seconds for s in self.senders.values())

    def _healthy(self, kind: str) -> bool:
        """True if a lane of `kind` carries the upload and is not suspect (or is attaching)."""
        return any(lane.kind == kind for lane in self._joins) or any(
            s.lane.kind == kind and not s.suspect for s in self.senders.values()
        )

    def _suspect(self, lane: Lane) -> bool:
        sender = self.senders.get(lane)
        return sender is not None and sender.suspect


async def _quietly(work: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await work
