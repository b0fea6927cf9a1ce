"""Serves one client connection: the handshake, then requests until the client leaves.

The session speaks the flux dialect: it authenticates HELLO into a `Caller`, maps each request
frame to a `FileService` operation (which authorises, limits, claims, stores and records it),
and carries results and errors back as frames. Chunk flow control and pacing stay here: chunks
of an upload are acked only after `ChunkWriter` made them durable through the service's handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fluxio.chunkflow import (
    Channel,
    ChunkWriter,
    deadline,
    expect,
    handle_control,
    recv_frame,
    send_chunks,
)
from fluxproto import (
    MAX_RANGES,
    PROTOCOL_VERSION,
    AuthError,
    Chunk,
    Commit,
    Committed,
    ConnectionClosed,
    ConnectionLost,
    Delete,
    Deleted,
    FluxError,
    Frame,
    Goodbye,
    Hello,
    Info,
    ListDir,
    Listing,
    Meta,
    NoSpace,
    OpenDownload,
    OpenUpload,
    Ping,
    ProtocolError,
    Stat,
    Status,
    StorageError,
    TransportError,
    Unavailable,
    VersionMismatch,
    Welcome,
    chunk_count,
    iter_indices,
    to_ranges,
)
from fluxproto import Error as ErrorFrame
from fluxproto.ranges import count, is_canonical

from . import __version__, log
from .auth.scopes import Grant
from .context import Shared
from .limits import Slot
from .service import Caller, FileService, Presence, Version, read_verified

# read_verified moved to the service; still importable here for code that used it from here.
__all__ = ["Session", "held_status", "read_verified", "wanted_chunks"]

CAPABILITIES = ("xxh3-128", "resume")
LIST_PAGE = 150  # entries per LISTING; keeps the header under its 64 KiB limit


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
        self._pace: Callable[[int], float] | None = None
        self._pings = 0
        # Request frame -> its handler, which calls the service.
        self._handlers: dict[type[Frame], Callable[[Any], Awaitable[None]]] = {
            OpenUpload: self._upload,
            OpenDownload: self._download,
            ListDir: self._list,
            Stat: self._stat,
            Delete: self._delete,
        }

    @property
    def grant(self) -> Grant | None:
        """What the client may do; None until HELLO is through."""
        return self.caller.grant if self.caller else None

    async def run(self) -> None:
        try:
            await self._handshake()
            while True:
                event = await self.ch.next_event(self.limits.idle_timeout)
                if isinstance(event, ConnectionClosed | Goodbye):
                    return
                frame = handle_control(self.ch, event)
                if frame is not None:
                    await self._request(frame)
        except asyncio.CancelledError:
            self._goodbye("server shutting down")  # clients retry and resume
            raise
        except TransportError as exc:
            log.event("connection-ended", logging.DEBUG, peer=self.ch.peer, reason=str(exc))
        except AuthError as exc:  # refused at HELLO: a bad token, or none where one is needed
            self._refused(exc)
        except FluxError as exc:
            # The peer broke the protocol or sent a corrupt chunk: say why, then hang up.
            log.event("protocol-error", logging.WARNING, peer=self.ch.peer, error=str(exc))
            self._send_error(exc)
        finally:
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

    async def _handshake(self) -> None:
        # A deadline, not an idle timeout: bytes trickling in cannot extend it.
        async with deadline(self.ch, self.limits.handshake_timeout, "HELLO"):
            hello = await expect(self.ch, Hello, None)
        if PROTOCOL_VERSION not in hello.versions:
            raise VersionMismatch(f"server speaks protocol version {PROTOCOL_VERSION}")
        grant = self.shared.auth.authenticate(hello.token)
        details = {k: v for k, v in self.ch.describe().items() if k != "transport"}
        self.caller = caller = Caller.of(grant, self.ch.transport, self.presence, details)
        try:
            self._slots.append(self.shared.admission.subject(caller.account))
        except Unavailable as exc:  # retryable for the client; for us the connection ends
            self._refused(exc)
            raise ConnectionLost(exc.message) from None
        self._pace = self.shared.throttle.pacer(caller.account)
        self.ch.send(
            Welcome(
                version=PROTOCOL_VERSION,
                caps=CAPABILITIES,
                window=self.config.window,
                agent=f"fluxd/{__version__}",
            )
        )

    def _refused(self, exc: FluxError) -> None:
        """The connection is refused at HELLO: record it, and tell the client why."""
        duration = time.monotonic() - self._started
        self.service.refused(self.ch.peer, self.ch.transport, self.caller, exc, duration)
        self._send_error(exc)

    async def _request(self, frame: Frame) -> None:
        try:
            await self._handlers[type(frame)](frame)
        except FluxError as exc:
            # Broken link or broken peer: the connection ends (run() reports it).
            if isinstance(exc, TransportError | ProtocolError) or self.ch.broken:
                raise
            self._send_error(exc)
            if self.ch.ended:
                raise TransportError("connection closed after an error") from exc

    def _goodbye(self, reason: str) -> None:
        if self.ch.usable:
            with contextlib.suppress(FluxError):
                self.ch.send(Goodbye(reason))

    def _send_error(self, exc: FluxError) -> None:
        if self.ch.ended:
            return
        message = exc.message
        if type(exc) in (StorageError, NoSpace):
            # The disk that failed is ours: say so, or "no space left on device" reads as local.
            message = f"on the server: {message}"
        # If even this fails the connection is already unusable; the log has the reason.
        with contextlib.suppress(FluxError):
            self.ch.send(ErrorFrame(exc.code, message[:1000]))

    def _ping(self) -> None:
        self._pings += 1
        if self.ch.usable:
            with contextlib.suppress(FluxError):  # a dead link shows on the next read
                self.ch.send(Ping(self._pings))

    # --- requests --------------------------------------------------------------------------

    @property
    def _caller(self) -> Caller:
        assert self.caller is not None, "requests come only after the handshake"
        return self.caller

    async def _upload(self, f: OpenUpload) -> None:
        async with self.service.upload(self._caller, f.path, f.size, f.chunk_size, f.mode) as up:
            writer = ChunkWriter(self.ch, up, executor=up.pool, release=self.shared.budget.release)
            try:
                self.ch.send(held_status(up.held))
                while True:
                    frame = await recv_frame(self.ch, self.limits.idle_timeout)
                    if isinstance(frame, Chunk):
                        writer.add(frame)
                        await self._paced(len(frame.data))
                        continue
                    assert isinstance(frame, Commit)
                    await writer.flush()
                    try:
                        await up.commit(frame.digest)
                    finally:  # a shutdown waits for the commit; its reply still goes out
                        if up.committed:
                            self.ch.send(Committed(f.size, frame.digest))
                    return
            finally:
                # Chunks already received reach disk even if the client vanished or we are
                # stopping (the service closes the upload after this).
                await writer.flush()

    async def _paced(self, nbytes: int) -> None:
        """Hold the session back to the subject's and the daemon's rate (if any is set).

        While an upload waits here it reads no frames, so its window fills and the client
        stops sending: the limit reaches the sender through flow control.
        """
        if self._pace is not None and (wait := self._pace(nbytes)) > 0:
            await asyncio.sleep(wait)

    async def _download(self, f: OpenDownload) -> None:
        async with self.service.download(self._caller, f.path, f.chunk_size) as dl:
            v = dl.version
            indices, n = wanted_chunks(v, f)
            self.ch.send(Meta(v.size, v.chunk_size, v.digest, n, v.mode, v.mtime_ns, v.digests))
            if n == 0:
                return
            async with contextlib.aclosing(dl.chunks(indices)) as chunks:
                await send_chunks(
                    self.ch, chunks, dl.delivered, self.limits.idle_timeout, pace=self._pace
                )

    async def _list(self, f: ListDir) -> None:
        async with self.service.list(self._caller, f.path, f.cursor, LIST_PAGE) as page:
            entries, cursor = page
            self.ch.send(Listing(tuple(entries), cursor))

    async def _stat(self, f: Stat) -> None:
        async with self.service.stat(self._caller, f.path) as entry:
            self.ch.send(Info(entry))

    async def _delete(self, f: Delete) -> None:
        async with self.service.delete(self._caller, f.path):
            self.ch.send(Deleted(f.path))


def held_status(held: Mapping[int, bytes]) -> Status:
    """STATUS for an upload holding `held` (index -> digest): the chunks as ranges (at most
    MAX_RANGES) + their digests.

    Reporting a subset is safe: the client just sends the chunks left out again.
    """
    ranges = to_ranges(held)[:MAX_RANGES]
    return Status(ranges, b"".join(held[i] for i in iter_indices(ranges)))


def wanted_chunks(dl: Version, f: OpenDownload) -> tuple[Iterable[int], int]:
    """Chunk indices to send for `f` and how many; none when the file is not the one asked for."""
    n = chunk_count(dl.size, dl.chunk_size)
    # With a digest, chunk_size is the geometry the client planned its `want` with: both pin it.
    changed = f.digest is not None and (f.digest, f.chunk_size) != (dl.digest, dl.chunk_size)
    if changed or (f.want is not None and not is_canonical(f.want, n)):
        return (), 0
    if f.want is None:
        return range(n), n
    return iter_indices(f.want), count(f.want)
