"""Many requests over one connection (protocol version 2): a reader takes every event from the
channel and routes each frame by its `rid` to that request's queue; both ends drive their
requests through `Request` objects.

    router = Router(ch)                                   # after HELLO/WELCOME
    router.start()
    req = await router.open(lambda rid: Stat(rid, "a"))    # client: a rid, a slot, the frame
    info = await req.expect(Info, timeout)

    router = Router(ch, on_request=spawn, idle_timeout=120)   # server: opening frames
    ...                                                       # become Requests for `spawn`

Connection-level frames are the router's: it answers PING, and GOODBYE, an ERROR without rid,
the end of the connection or a transport failure end every open request with that error.

Timeouts keep PROTOCOL.md 13.1's meaning. A request waiting for its peer gives up after its
`timeout` unless a frame of its own, a connection frame (PING, PONG) or PROGRESS_BYTES of any
frame in progress arrived meanwhile (that frame may be its own); a TransportTimeout means the
peer is idle and the connection is given up. The server's router applies `idle_timeout` to the
connection while no request is open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from fluxproto import (
    Ack,
    Cancel,
    Chunk,
    Committed,
    Connection,
    ConnectionClosed,
    ConnectionLost,
    EndReason,
    Event,
    FluxError,
    Frame,
    FrameType,
    Goodbye,
    LocalProtocolError,
    Ping,
    Pong,
    RequestEnded,
    RequestState,
    Role,
    TransportTimeout,
    Unavailable,
    error_from_code,
    next_request_state,
    rid_of,
)
from fluxproto import Error as ErrorFrame
from fluxproto.state import OPENING

from .buffers import POOL
from .transports.inbox import PROGRESS_BYTES, Inbox

T = TypeVar("T")

#: Frames queued for one request before the router stops reading the connection until that
#: request takes some (a client slow to take ENTRIES pages; chunks are bounded by the window).
MAX_QUEUED = 256


class Channel(Protocol):
    """What requests need from a transport (both are a transports.channel.ChannelBase)."""

    #: The conversation's state machine.
    conn: Connection
    peer: str
    #: "tcp" or "quic", for logs and --json.
    transport: str
    #: True if send() copies a frame's bytes (QUIC), so its buffer is free once send() returns.
    copies_on_send: bool
    #: Loop time of the last bytes (or datagram) received from the peer: a sign of life.
    last_receive: float
    on_progress: Callable[[int], None] | None
    on_freed: Callable[[], None] | None

    async def next_event(self, timeout: float | None = None) -> Event: ...
    def poll(self) -> Event | None: ...
    def send(self, frame: Frame) -> RequestEnded | None: ...
    async def drain(self, timeout: float | None = None) -> None: ...
    def fail(self, exc: FluxError) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    async def wait_closed(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def silence(self) -> float: ...
    @property
    def requests_in_use(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def usable(self) -> bool: ...
    @property
    def broken(self) -> bool: ...
    @property
    def ended(self) -> bool: ...


class RequestOver(LocalProtocolError):
    """The request ended: nothing more comes for it (a caller read past its last frame)."""


# --- the connection before requests: the handshake ----------------------------------------------


def handle_control(ch: Channel, event: Event) -> Frame | None:
    """Answer pings and turn ERROR/GOODBYE/EOF into exceptions; return any other frame."""
    if isinstance(event, ConnectionClosed):
        raise ConnectionLost(f"{ch.peer} closed the connection")
    if isinstance(event, Ping):
        ch.send(Pong(event.nonce))
        return None
    if isinstance(event, Pong | RequestEnded):
        return None
    if isinstance(event, ErrorFrame):
        raise error_from_code(event.code, event.message)
    if isinstance(event, Goodbye):
        raise Unavailable(f"{ch.peer} closed the connection: {event.reason or 'goodbye'}")
    return event


async def expect(ch: Channel, cls: type[T], timeout: float | None) -> T:
    """The next frame on the connection, which must be `cls` (HELLO, WELCOME): for the
    handshake, before a Router reads the channel. `timeout` is an idle timeout."""
    while True:
        frame = handle_control(ch, await ch.next_event(timeout))
        if frame is None:
            continue
        if not isinstance(frame, cls):
            raise ConnectionLost(f"expected {cls.__name__}, got {type(frame).__name__}")
        return frame


@contextlib.asynccontextmanager
async def deadline(ch: Channel, seconds: float, what: str) -> AsyncIterator[None]:
    """Raise TransportTimeout unless the body finishes within `seconds` of entering, however
    much the peer sends meanwhile (idle timeouts restart on every frame).

    Raises:
        TransportTimeout: naming `what` was awaited from `ch.peer`.
    """
    timer = asyncio.timeout(seconds)
    try:
        async with timer:
            yield
    except TimeoutError:
        if not timer.expired():
            raise  # not ours: a socket's own timeout, say
        raise TransportTimeout(f"no {what} from {ch.peer} within {seconds:g} s") from None


# --- one request ---------------------------------------------------------------------------------


class Request:
    """One open request, as the end that drives it sees it.

    Attributes:
        rid: the request id.
        opening: the frame that opened it.
        ended: why it ended (None while open at this end).
        cancelled: True once the client cancelled it (the server's view: a CANCEL arrived).
        on_cancel: at the server, called when the client's CANCEL arrives (the session stops
            the request's work); CANCEL itself is not queued.
    """

    def __init__(self, router: Router, opening: Frame) -> None:
        rid = rid_of(opening)
        assert rid is not None
        self.rid, self.opening = rid, opening
        self.ended: EndReason | None = None
        self.cancelled = False
        self.on_cancel: Callable[[], object] = lambda: None
        self._router = router
        self._inbox = Inbox(router.taken)
        self._ended = asyncio.Event()

    def __repr__(self) -> str:
        return f"Request({self.rid}, {self.opening.TYPE.name}, ended={self.ended})"

    @property
    def conn(self) -> Connection:
        return self._router.ch.conn

    @property
    def peer(self) -> str:
        return self._router.ch.peer

    @property
    def channel(self) -> Channel:
        return self._router.ch

    @property
    def inflight(self) -> int:
        """Payload bytes of this request's chunks in flight (0 once it ended)."""
        req = self.conn.requests.get(self.rid)
        return req.inflight if req is not None else 0

    @property
    def state(self) -> RequestState | None:
        """The request's state in the connection's table (None once it ended there)."""
        req = self.conn.requests.get(self.rid)
        return req.state if req is not None else None

    def can_send(self, ftype: FrameType) -> bool:
        """True if this end may send a frame of `ftype` in the request's state now."""
        req = self.conn.requests.get(self.rid)
        role = self.conn.role
        return req is not None and next_request_state(role, req.state, ftype) is not None

    def send(self, frame: Frame) -> None:
        """Send a frame of this request (or of the connection).

        Raises:
            LocalProtocolError: the protocol does not allow it now.
            TransportError: the connection is gone.
        """
        ended = self._router.ch.send(frame)
        self._router.count_sent(frame)
        if ended is not None:
            self._router.end(ended)

    async def next(self, timeout: float | None) -> Frame:
        """The next frame of this request, within `timeout` (an idle timeout, module docstring).

        Raises:
            FluxError: the request's ERROR, rebuilt (Cancelled for 499).
            RequestOver: it ended and every frame of it was taken.
            TransportError, ProtocolError...: the connection failed.
        """
        return self._frame(await self._inbox.get(timeout, self.peer))

    def poll(self) -> Frame | None:
        """The next frame if one is queued (raising as `next`), else None (also once the
        request ended and every frame of it was taken)."""
        try:
            event = self._inbox.poll()
        except RequestOver:
            return None
        return None if event is None else self._frame(event)

    async def expect(self, cls: type[T], timeout: float | None) -> T:
        """The next frame, which must be `cls` (the state table allowed it; anything else here
        is a frame this request does not wait for, a bug of the caller)."""
        frame = await self.next(timeout)
        if not isinstance(frame, cls):
            raise LocalProtocolError(
                f"request {self.rid} expected {cls.__name__}, got {type(frame).__name__}"
            )
        return frame

    async def wait_room(self, nbytes: int, timeout: float | None) -> None:
        """Until a chunk of `nbytes` may be sent (both windows) or a frame of this request is
        queued. The peer acknowledging any request's chunks counts as its sign of life.

        Raises:
            TransportTimeout, FluxError: as `next`.
        """
        rid, conn = self.rid, self.conn
        await self.wait_until(lambda: conn.can_send_chunk(rid, nbytes), timeout)

    async def wait_until(self, ready: Callable[[], bool], timeout: float | None) -> None:
        """Until a frame of this request is queued, or `ready()` is true when the request is
        woken: by `wake`, or by window room coming back as for `wait_room`. `timeout` is an
        idle timeout on the peer (None: wait on something else, such as other connections).

        Raises:
            TransportTimeout, FluxError: as `next`.
        """
        self._router.room_waiters.add(self)
        try:
            await self._inbox.wait(timeout, self.peer, ready)
        finally:
            self._router.room_waiters.discard(self)

    def wake(self) -> None:
        """Make a `wait_until` look at its condition again (no sign of the peer's life)."""
        self._inbox.wake()

    def cancel(self) -> None:
        """Client: abandon this request (CANCEL); the server's ERROR 499 ends it."""
        if self.ended is None and not self.cancelled and self.can_send(FrameType.CANCEL):
            self.cancelled = True
            self.send(Cancel(self.rid))

    def fail(self, exc: FluxError) -> None:
        """Make this request's next receive raise `exc` now (a local failure: a full disk)."""
        self._inbox.fail(exc)

    async def wait_ended(self, timeout: float | None = None) -> EndReason:
        """Until the request ended at this end; why it did."""
        async with asyncio.timeout(timeout):
            await self._ended.wait()
        assert self.ended is not None
        return self.ended

    def _frame(self, event: Event) -> Frame:
        if isinstance(event, ErrorFrame):
            raise error_from_code(event.code, event.message)
        assert isinstance(event, Frame)
        return event

    # --- the router's side ------------------------------------------------------------------

    def _put(self, frame: Frame) -> None:
        self._inbox.put(frame)
        self._inbox.wake()

    def _end(self, reason: EndReason) -> None:
        if self.ended is None:
            self.ended = reason
            self._ended.set()
            self._inbox.set_error(RequestOver(f"request {self.rid} ended ({reason.value})"))

    def _alive(self) -> None:
        if self._inbox.waiting:
            self._inbox.alive()

    @property
    def _queued(self) -> int:
        return len(self._inbox)


# --- the router ----------------------------------------------------------------------------------


class Router:
    """Routes one channel's events to its requests (see the module docstring).

    Args:
        ch: the channel, past HELLO/WELCOME.
        on_request: at the server, called with each request a client opens.
        idle_timeout: at the server, how long the connection may stay idle with no request
            open (PROTOCOL.md 13.1); None: no limit.
        release: gives back the buffer of a chunk no request will take (its request ended).

    Attributes:
        requests: the requests open at this end, by rid.
        failure: why the connection ended, once it did (every request got it too).
        counts: frames sent and received by this end, by frame type name and direction
            (`"sent CHUNK"`, `"received ACK"`), for tests and logs.
        idle_opens: client requests opened while no other request was open: each waited for
            a round trip that nothing else shared.
    """

    def __init__(
        self,
        ch: Channel,
        *,
        on_request: Callable[[Request], None] | None = None,
        idle_timeout: float | None = None,
        release: Callable[[memoryview], None] = POOL.put,
    ) -> None:
        self.ch = ch
        self.requests: dict[int, Request] = {}
        self.failure: FluxError | None = None
        self.counts: dict[str, int] = {}
        self.idle_opens = 0
        self.room_waiters: set[Request] = set()
        self._on_request, self._idle_timeout, self._release = on_request, idle_timeout, release
        self._loop = asyncio.get_running_loop()
        self._quiet_since = self._loop.time()
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._room = asyncio.Event()  # set while no request's queue is over MAX_QUEUED
        self._room.set()
        self._arrived = 0
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()
        ch.on_progress = self._progress
        ch.on_freed = self._wake_slots

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading the channel (on the running loop)."""
        self._task = self._loop.create_task(self._run())
        self._arm_idle()

    async def wait(self) -> FluxError:
        """Until the connection ended; why (ConnectionLost for a peer that just closed)."""
        await self._done.wait()
        assert self.failure is not None
        return self.failure

    def fail(self, exc: FluxError) -> None:
        """Give the connection up for `exc` (this end's verdict: the peer went idle, a bug):
        every request gets it, and the router stops reading. Close the channel separately."""
        self._fail(exc)
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop reading (the channel stays as it is; close it separately)."""
        self.fail(ConnectionLost(f"connection to {self.ch.peer} was closed by this end"))
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # --- opening requests (client) --------------------------------------------------------------

    async def open(self, make: Callable[[int], Frame], timeout: float | None = None) -> Request:
        """Open a request: wait for a free slot of the server's `requests`, take a rid
        (`Connection.next_rid`), send `make(rid)` and return the request to drive.

        Raises:
            TransportTimeout: no slot within `timeout` (a bug or a stuck peer).
            FluxError: the connection failed (`failure`).
        """
        conn = self.ch.conn
        async with asyncio.timeout(timeout):
            while self.ch.requests_in_use >= conn.peer.requests and self.failure is None:
                fut = self._loop.create_future()
                self._slot_waiters.append(fut)
                await fut
        if self.failure is not None:
            raise self.failure
        frame = make(conn.next_rid())
        if frame.TYPE not in OPENING:
            raise LocalProtocolError(f"{frame.TYPE.name} opens no request")
        if not self.requests:
            self.idle_opens += 1
        req = Request(self, frame)
        self.requests[req.rid] = req  # before sending: an answer may come at once
        try:
            req.send(frame)
        except BaseException:
            self.requests.pop(req.rid, None)
            raise
        return req

    def end(self, ended: RequestEnded) -> None:
        """A request ended at this end (by what it sent, or what arrived)."""
        req = self.requests.pop(ended.rid, None)
        if req is not None:
            req._end(ended.reason)
        if not self.requests:
            self._quiet_since = self._loop.time()
            self._arm_idle()
        self._wake_room_waiters()
        self._wake_slots()
        self.taken()  # its queue no longer holds the router back

    # --- reading --------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._room.wait()
                event = await self._next()
                self._route(event)
        except FluxError as exc:
            self._fail(exc)
        finally:
            self._done.set()

    async def _next(self) -> Event:
        event = await self.ch.next_event(None)
        self._quiet_since = self._loop.time()  # a whole frame: the peer is not idle
        return event

    def _arm_idle(self) -> None:
        """While no request is open, the connection may stay idle `idle_timeout` at most."""
        if self._idle_timeout is None or self._idle_timer is not None or self.done:
            return
        due = self._quiet_since + self._idle_timeout
        self._idle_timer = self._loop.call_at(due, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.requests or self.done:
            return  # the requests' own waits apply; `end` arms the timer again
        assert self._idle_timeout is not None
        if self._loop.time() < self._quiet_since + self._idle_timeout:
            self._arm_idle()  # something arrived meanwhile
            return
        self.fail(TransportTimeout(f"no data from {self.ch.peer} for {self._idle_timeout:g} s"))

    def _route(self, event: Event) -> None:
        if isinstance(event, RequestEnded):
            self.end(event)
            return
        if isinstance(event, ConnectionClosed):
            raise ConnectionLost(f"{self.ch.peer} closed the connection")
        name = event.TYPE.name
        self.counts[f"received {name}"] = self.counts.get(f"received {name}", 0) + 1
        rid = rid_of(event)
        if rid is None:
            self._connection_frame(event)
            return
        req = self.requests.get(rid)
        if req is None and event.TYPE in OPENING and self.ch.conn.role is Role.SERVER:
            req = self.requests[rid] = Request(self, event)
            assert self._on_request is not None, "a server's router takes requests"
            self._on_request(req)
            return
        if req is None:  # it ended at this end after the connection accepted the frame
            if isinstance(event, Chunk) and isinstance(event.data, memoryview):
                self._release(event.data)
            return
        if isinstance(event, Cancel):
            req.cancelled = True
            req.on_cancel()
            return
        req._put(event)
        if isinstance(event, Ack | Committed | ErrorFrame):
            self._wake_room_waiters()  # window room came back
        if req._queued >= MAX_QUEUED:
            self._room.clear()

    def _connection_frame(self, frame: Frame) -> None:
        if isinstance(frame, Ping):
            self.ch.send(Pong(frame.nonce))
        elif isinstance(frame, ErrorFrame):
            raise error_from_code(frame.code, frame.message)
        elif isinstance(frame, Goodbye):
            why = frame.reason or "goodbye"
            raise Unavailable(f"{self.ch.peer} closed the connection: {why}")
        for req in list(self.requests.values()):
            req._alive()  # PING, PONG: the peer is there

    def _progress(self, nbytes: int) -> None:
        self._arrived += nbytes
        if self._arrived >= PROGRESS_BYTES:
            self._arrived = 0
            self._quiet_since = self._loop.time()
            for req in list(self.requests.values()):
                req._alive()  # a frame in progress may be theirs

    def taken(self) -> None:
        """A request took a frame from its queue: the router may read on."""
        if self._room.is_set():
            return
        if all(r._queued < MAX_QUEUED // 2 for r in self.requests.values()):
            self._room.set()

    def _wake_room_waiters(self) -> None:
        for req in list(self.room_waiters):
            req._alive()

    def _wake_slots(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _fail(self, exc: FluxError) -> None:
        if self.failure is None:
            self.failure = exc
        for req in list(self.requests.values()):
            req._inbox.set_error(self.failure)
        self._room.set()
        self._wake_slots()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._done.set()

    def count_sent(self, frame: Frame) -> None:
        """Count a frame this end sent (see `counts`)."""
        key = f"sent {frame.TYPE.name}"
        self.counts[key] = self.counts.get(key, 0) + 1


__all__ = [
    "MAX_QUEUED",
    "Channel",
    "Request",
    "RequestOver",
    "Router",
    "deadline",
    "expect",
    "handle_control",
]
