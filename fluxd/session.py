"""Serves one client connection: the version-2 handshake, then the client's requests, many at
once, until the client leaves.

The session speaks the flux dialect: it authenticates HELLO into a `Caller`, hands each request
the client opens to its handler (fluxd.handlers, which calls the `FileService`) in a task of its
own, and answers a request that fails with ERROR for that request alone. What ends the
connection (the peer leaving, breaking the protocol, going idle; a revoked token; shutdown) is
decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from fluxio.requests import Channel, Request, Router, deadline, expect
from fluxproto import (
    AuthError,
    Cancelled,
    ConnectionLost,
    FluxError,
    FrameType,
    Goodbye,
    Hello,
    LocalProtocolError,
    NoSpace,
    Ping,
    StorageError,
    TransportError,
    Unavailable,
    VersionMismatch,
)
from fluxproto import Error as ErrorFrame

from . import __version__, log
from .auth.scopes import Grant
from .context import Shared
from .handlers import LIST_PAGE, Handlers, held_status, wanted_chunks
from .limits import Slot
from .service import Caller, FileService, Presence, read_verified

# read_verified moved to the service; still importable here for code that used it from here.
__all__ = ["LIST_PAGE", "Session", "held_status", "read_verified", "wanted_chunks"]

CAPABILITIES = ("xxh3-128", "resume")


class Session:
    """One connection's conversation. `run` returns when the client leaves or the link dies.

    Args:
        ch: the connection.
        shared: the daemon's config, authenticator and connection limits.
        service: the daemon's file service, which every request goes to.
        release: frees the connection's place in the connection limits (called once, at end).

    HELLO must arrive within the handshake timeout of the session's start (TLS is done by then).
    """

    def __init__(
        self,
        ch: Channel,
        shared: Shared,
        service: FileService,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.ch, self.shared, self.service = ch, shared, service
        self.config, self.limits = shared.config, shared.config.limits
        #: Who the client is, once HELLO is through.
        self.caller: Caller | None = None
        #: The connection's requests, once HELLO is through.
        self.router: Router | None = None
        #: The connection as the service sees it: signs of life from the transport, PINGs
        #: while the service works long, and hanging up when it is ended.
        self.presence = Presence(
            peer=lambda: ch.peer,
            heard=lambda: ch.last_receive,
            closed=lambda: ch.closed,
            keepalive=self._ping,
            end=self._hang_up,
        )
        self._slots = [Slot(release)]
        self._started = time.monotonic()
        self._pings = 0
        self._tasks: dict[asyncio.Task[None], Request] = {}
        # At most the announced number of requests run at once, cleanup included (a client may
        # open the next one as soon as a request ended for it).
        self._running = asyncio.Semaphore(ch.conn.local.requests)
        self._stopping = False

    @property
    def grant(self) -> Grant | None:
        """What the client may do; None until HELLO is through."""
        return self.caller.grant if self.caller else None

    async def run(self) -> None:
        try:
            handlers = await self._handshake()
            self.router = Router(
                self.ch,
                on_request=lambda req: self._start(req, handlers),
                idle_timeout=self.limits.idle_timeout,
                release=self.shared.budget.release,
            )
            self.router.start()
            failure = await self.router.wait()
            await self._stop_requests()
            self._over(failure)
        except asyncio.CancelledError:
            # Shutdown: each request lets its received chunks reach disk and finishes a commit
            # in progress (and replies) first; a goodbye sent before would stop that reply.
            self._stopping = True
            await self._stop_requests()
            self._goodbye("server shutting down")  # clients retry and resume
            raise
        except TransportError as exc:
            log.event("connection-ended", logging.DEBUG, peer=self.ch.peer, reason=str(exc))
        except (AuthError, VersionMismatch) as exc:  # refused at HELLO
            self._refused(exc)
        except FluxError as exc:
            self._protocol_error(exc)
        finally:
            if self.router is not None:
                await self.router.stop()
            for slot in self._slots:
                slot.release()
            self.ch.close()

    def end(self, exc: FluxError) -> None:
        """Stop serving now (the token was revoked or expired): say why, then hang up.

        Chunks already received still reach disk (the upload's own cleanup flushes them).
        """
        self.presence.end(exc)

    def _hang_up(self, exc: FluxError) -> None:
        self._send_error(exc)
        self.ch.close()

    async def _handshake(self) -> Handlers:
        # A deadline, not an idle timeout: bytes trickling in cannot extend it.
        async with deadline(self.ch, self.limits.handshake_timeout, "HELLO"):
            hello = await expect(self.ch, Hello, None)
        mismatch = self.ch.conn.version_mismatch()
        if mismatch is not None:  # worded for the user: which program to upgrade
            raise mismatch
        grant = self.shared.auth.authenticate(hello.token)
        details = {k: v for k, v in self.ch.describe().items() if k != "transport"}
        self.caller = caller = Caller.of(grant, self.ch.transport, self.presence, details)
        try:
            self._slots.append(self.shared.admission.subject(caller.account))
        except Unavailable as exc:  # retryable for the client; for us the connection ends
            self._refused(exc)
            raise ConnectionLost(exc.message) from None
        pace = self.shared.throttle.pacer(caller.account)
        storage = self.shared.storage  # its rule for uploads, which every upload must keep
        welcome = self.ch.conn.welcome(
            caps=CAPABILITIES,
            agent=f"fluxd/{__version__}",
            min_chunk=storage.min_chunk,
            max_chunks=storage.max_chunks,
        )
        self.ch.send(welcome)
        budget = self.shared.budget
        return Handlers(self.service, caller, self.limits.idle_timeout, pace, budget.release)

    def _refused(self, exc: FluxError) -> None:
        """The connection is refused at HELLO: record it, and tell the client why."""
        duration = time.monotonic() - self._started
        self.service.refused(self.ch.peer, self.ch.transport, self.caller, exc, duration)
        self._send_error(exc)

    # --- requests -------------------------------------------------------------------------------

    def _start(self, req: Request, handlers: Handlers) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(req, handlers))
        self._tasks[task] = req
        # The client's CANCEL stops the request's work; the answer is ERROR 499 (`_done`).
        req.on_cancel = task.cancel
        task.add_done_callback(self._done)

    async def _serve(self, req: Request, handlers: Handlers) -> None:
        async with self._running:
            try:
                await handlers.for_frame(req.opening)(req)
            except FluxError as exc:
                self._failed(req, exc)

    def _done(self, task: asyncio.Task[None]) -> None:
        req = self._tasks.pop(task)
        if task.cancelled() and req.cancelled and not self._stopping:
            self._answer(req, Cancelled("cancelled by the client"))
        elif not task.cancelled() and (exc := task.exception()) is not None:
            # Not a flux error: a bug. The connection ends; the log says why.
            log.event("request-crashed", logging.ERROR, peer=self.ch.peer, error=repr(exc))
            if self.router is not None:
                self.router.fail(LocalProtocolError(f"the server failed: {exc!r}"))

    def _failed(self, req: Request, exc: FluxError) -> None:
        """A request failed: answer it, or give the connection up if that is what failed."""
        router = self.router
        assert router is not None
        if router.done:
            return  # the connection is over: `run` reports why
        if isinstance(exc, TransportError | LocalProtocolError) or self.ch.broken:
            # The client went idle or stopped reading, or this end broke the protocol.
            router.fail(exc)
            return
        self._answer(req, exc)

    def _answer(self, req: Request, exc: FluxError) -> None:
        """ERROR for this request alone; the connection and the other requests go on."""
        if not (self.ch.usable and req.can_send(FrameType.ERROR)):
            return  # it ended meanwhile (a reply crossed), or the connection is going
        try:
            req.send(ErrorFrame(exc.code, _message(exc), req.rid))
        except FluxError as failure:  # the connection is gone: `run` hears it
            if self.router is not None:
                self.router.fail(failure)

    async def _stop_requests(self) -> None:
        """Cancel the requests still running and wait until they cleaned up."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # --- the end of the connection --------------------------------------------------------------

    def _over(self, failure: FluxError) -> None:
        """Log how the connection ended, and tell the client when it broke the protocol."""
        if isinstance(failure, TransportError):  # left, closed, went idle, said goodbye
            log.event("connection-ended", logging.DEBUG, peer=self.ch.peer, reason=str(failure))
        elif isinstance(failure, AuthError) and self.presence.ended_by is not None:
            return  # revoked: already said
        else:
            self._protocol_error(failure)

    def _protocol_error(self, exc: FluxError) -> None:
        # The peer broke the protocol or sent a corrupt chunk (or its last word was an ERROR):
        # say why, then hang up.
        log.event("protocol-error", logging.WARNING, peer=self.ch.peer, error=str(exc))
        self._send_error(exc)

    def _goodbye(self, reason: str) -> None:
        if self.ch.usable:
            with contextlib.suppress(FluxError):
                self.ch.send(Goodbye(reason))

    def _send_error(self, exc: FluxError) -> None:
        """ERROR without rid: the connection's last word."""
        if self.ch.ended:
            return
        # If even this fails the connection is already unusable; the log has the reason.
        with contextlib.suppress(FluxError):
            self.ch.send(ErrorFrame(exc.code, _message(exc)))

    def _ping(self) -> None:
        self._pings += 1
        if self.ch.usable:
            with contextlib.suppress(FluxError):  # a dead link shows on the next read
                self.ch.send(Ping(self._pings))


def _message(exc: FluxError) -> str:
    message = exc.message
    if type(exc) in (StorageError, NoSpace):
        # The disk that failed is ours: say so, or "no space left on device" reads as local.
        message = f"on the server: {message}"
    return message[:1000]
