"""Serves one client connection: the handshake, then requests until the client leaves.

Each request runs against the storage interface through a thread pool (storage calls block);
the session itself only moves frames. Chunks of an upload are acked only after `ChunkWriter`
made them durable. Every request ends with one structured log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from fluxio.chunkflow import (
    Channel,
    ChunkData,
    ChunkWriter,
    deadline,
    expect,
    handle_control,
    prefetch,
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
    Entry,
    FluxError,
    Frame,
    Goodbye,
    Hello,
    Info,
    IntegrityError,
    LimitExceeded,
    ListDir,
    Listing,
    Meta,
    NoSpace,
    NotFound,
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
    chunk_digest,
    iter_indices,
    to_ranges,
)
from fluxproto import Error as ErrorFrame
from fluxproto.digest import digest_at
from fluxproto.ranges import count, is_canonical

from . import __version__, log
from .auth.scopes import Grant
from .claims import Holder
from .context import Shared
from .limits import Slot, peer_host
from .storage.base import Download, Upload
from .storage.paths import require_file_path

R = TypeVar("R")

CAPABILITIES = ("xxh3-128", "resume")
LIST_PAGE = 150  # entries per LISTING; keeps the header under its 64 KiB limit
READ_AHEAD = 4  # chunks read from disk ahead of the send window
#: While a storage call for a request runs long, the client hears from us this often: well
#: within any timeout a client would choose (fluxctl's default is 60 s).
KEEPALIVE = 1.0


class Session:
    """One connection's conversation. `run` returns when the client leaves or the link dies.

    Args:
        ch: the connection.
        shared: the daemon's config, storage, authenticator and limits.
        release: frees the connection's place in the connection limits (called once, at end).

    HELLO must arrive within the handshake timeout of the session's start (TLS is done by then).
    """

    def __init__(
        self,
        ch: Channel,
        shared: Shared,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.ch, self.shared = ch, shared
        self.config, self.limits = shared.config, shared.config.limits
        self.storage, self.pool, self.claims = shared.storage, shared.pool, shared.claims
        self.grant: Grant | None = None
        #: Who per-subject limits count: the token's subject, anonymous clients per address.
        self.account = ""
        self._slots = [Slot(release)]
        self._started = time.monotonic()
        self._pace: Callable[[int], float] | None = None
        self._ended_by: FluxError | None = None
        #: How many storage calls the daemon is making on the client's behalf: a busy session
        #: is alive, whatever the network says (see `_last_heard`).
        self._busy = 0
        self._pings = 0
        #: Payload bytes the current request stored or had acknowledged, for the access log
        #: (kept up to date, so an interrupted transfer logs what it did move).
        self._moved = 0
        # Request frame → (name in the log, handler; what it moved goes to self._moved).
        self._handlers: dict[type[Frame], tuple[str, Callable[[Any], Awaitable[None]]]] = {
            OpenUpload: ("upload", self._upload),
            OpenDownload: ("download", self._download),
            ListDir: ("list", self._list),
            Stat: ("stat", self._stat),
            Delete: ("delete", self._delete),
        }

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
            self._access(op="connect", result=_result(exc), duration=self._age())
            self._send_error(exc)
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
        if self._ended_by is None:
            self._ended_by = exc
            self._send_error(exc)
            self.ch.close()

    async def _handshake(self) -> None:
        # A deadline, not an idle timeout: bytes trickling in cannot extend it.
        async with deadline(self.ch, self.limits.handshake_timeout, "HELLO"):
            hello = await expect(self.ch, Hello, None)
        if PROTOCOL_VERSION not in hello.versions:
            raise VersionMismatch(f"server speaks protocol version {PROTOCOL_VERSION}")
        grant = self.shared.auth.authenticate(hello.token)
        anonymous = f"anonymous@{peer_host(self.ch.peer)}"
        self.account = grant.subject if grant.jti is not None else anonymous
        self.grant = grant
        try:
            self._slots.append(self.shared.admission.subject(self.account))
        except Unavailable as exc:  # retryable for the client; for us the connection ends
            self._access(op="connect", result=_result(exc), duration=self._age())
            self._send_error(exc)
            raise ConnectionLost(exc.message) from None
        self._pace = self.shared.throttle.pacer(self.account)
        self.ch.send(
            Welcome(
                version=PROTOCOL_VERSION,
                caps=CAPABILITIES,
                window=self.config.window,
                agent=f"fluxd/{__version__}",
            )
        )

    def _age(self) -> float:
        return time.monotonic() - self._started

    def _access(self, **fields: Any) -> None:
        grant = self.grant
        self.shared.access.write(
            peer=self.ch.peer,
            transport=self.ch.transport,
            subject=grant.subject if grant else None,
            jti=grant.jti if grant else None,
            **fields,
        )

    async def _request(self, frame: Frame) -> None:
        started = time.monotonic()
        op, handler = self._handlers[type(frame)]
        fields: dict[str, Any] = {"op": op, "path": getattr(frame, "path", None)}
        self._moved = 0
        try:
            await handler(frame)
            fields["result"] = "ok"
        except FluxError as exc:
            fields["result"] = _result(self._ended_by or exc)
            # Broken link or broken peer: the connection ends (run() reports it).
            if isinstance(exc, TransportError | ProtocolError) or self.ch.broken:
                raise
            self._send_error(exc)
            if self.ch.ended:
                raise TransportError("connection closed after an error") from exc
        finally:
            fields["bytes"] = self._moved
            fields["duration"] = round(time.monotonic() - started, 6)
            self._access(**fields, **_details(self.ch))

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

    async def _blocking(self, fn: Callable[..., R], *args: Any) -> R:
        """Run a blocking storage call; if cancelled, let the thread finish before unwinding."""
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    async def _busy_with(self, fn: Callable[..., R], *args: Any) -> R:
        """`_blocking` for a call that may take long (it reads whole files): counted as a sign
        of life (see `_last_heard`), and the client gets a PING every KEEPALIVE seconds until
        it returns, so its wait for the reply does not run out however slow the disk."""
        self._busy += 1
        work = asyncio.ensure_future(self._blocking(fn, *args))
        try:
            while not work.done():
                await asyncio.wait([work], timeout=KEEPALIVE)
                if not work.done():
                    self._ping()
            return work.result()
        except asyncio.CancelledError:
            await asyncio.wait([work])  # the thread cannot be stopped: it finishes first
            if not work.cancelled():
                work.exception()  # retrieved: the cancellation is what the caller gets
            raise
        finally:
            self._busy -= 1

    def _ping(self) -> None:
        self._pings += 1
        if self.ch.usable:
            with contextlib.suppress(FluxError):  # a dead link shows on the next read
                self.ch.send(Ping(self._pings))

    # --- requests --------------------------------------------------------------------------

    @property
    def _grant(self) -> Grant:
        assert self.grant is not None, "requests come only after the handshake"
        return self.grant

    async def _upload(self, f: OpenUpload) -> None:
        lim = self.limits
        if f.chunk_size > lim.max_chunk:
            raise LimitExceeded(f"chunk size {f.chunk_size} > server limit {lim.max_chunk}")
        if f.size > lim.max_file_size:
            raise LimitExceeded(f"file of {f.size} bytes > server limit {lim.max_file_size}")
        require_file_path(f.path)
        key = self._grant.check(f.path, "write")
        slot = self.shared.admission.upload(self.account, f.size)
        try:
            await self._check_quota(key, f.size)
            holder = Holder(
                self.account, lambda: self.ch.closed, self._last_heard, self._superseded
            )
            async with self.claims.claim(key, holder, self.config.shutdown_grace):
                return await self._upload_claimed(key, f)
        finally:
            slot.release()

    def _last_heard(self) -> float:
        """What a claim of the same subject takes for a sign of life: bytes from the client
        (not frames taken from the queue: a paced session takes those long after a killed
        client sent them), or the daemon working on its behalf."""
        return time.monotonic() if self._busy else self.ch.last_receive

    def _superseded(self) -> None:
        """A new connection of the same subject wants the path this one holds, and this one
        has been silent for as long as a dead connection would be: end it."""
        log.event("superseded", peer=self.ch.peer, subject=self.account)
        self.end(Unavailable("superseded by a newer connection of the same client"))

    async def _check_quota(self, key: str, size: int) -> None:
        """Refuse an upload that would take the subject over its quota.

        Counted: the files under the subject's root, plus what its other open uploads
        announced, minus the file this upload replaces.
        """
        quota, root = self.limits.quota, self._grant.root
        if not quota or not root:
            return
        used = await self._blocking(self.storage.usage, root)
        try:
            replaced = (await self._blocking(self.storage.stat, key)).size
        except FluxError:  # nothing there (or not a file: the upload itself will say so)
            replaced = 0
        others = self.shared.admission.reserved[self.account] - size
        if used - replaced + others + size > quota:
            raise LimitExceeded(
                f"quota of {quota} bytes for {self._grant.subject!r} would be exceeded "
                f"({used} bytes stored, {others} in other uploads, this file {size})"
            )

    async def _upload_claimed(self, key: str, f: OpenUpload) -> None:
        upload = await self._busy_with(self.storage.open_upload, key, f.size, f.chunk_size, f.mode)
        writer = ChunkWriter(
            self.ch, upload, executor=self.pool, release=self.shared.budget.release
        )
        try:
            self.ch.send(held_status(upload))
            while True:
                frame = await recv_frame(self.ch, self.limits.idle_timeout)
                if isinstance(frame, Chunk):
                    writer.add(frame)
                    await self._paced(len(frame.data))
                    continue
                assert isinstance(frame, Commit)
                await writer.flush()
                await self._commit(upload, f.size, frame.digest)
                return
        finally:
            # Chunks already received reach disk even if the client vanished or we are stopping.
            try:
                await writer.flush()
            finally:
                self._moved = writer.written
                upload.close()

    async def _paced(self, nbytes: int) -> None:
        """Hold the session back to the subject's and the daemon's rate (if any is set).

        While an upload waits here it reads no frames, so its window fills and the client
        stops sending: the limit reaches the sender through flow control.
        """
        if self._pace is not None and (wait := self._pace(nbytes)) > 0:
            await asyncio.sleep(wait)

    async def _commit(self, upload: Upload, size: int, digest: bytes) -> None:
        # Shielded: a shutdown must not interrupt a commit between its rename and the reply.
        task = asyncio.ensure_future(self._busy_with(upload.commit, digest))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                self.ch.send(Committed(size, digest))
            raise
        self.ch.send(Committed(size, digest))

    async def _download(self, f: OpenDownload) -> None:
        key = self._grant.check(f.path, "read")
        dl = await self._busy_with(self.storage.open_download, key, f.chunk_size)
        try:
            indices, n = wanted_chunks(dl, f)
            self.ch.send(
                Meta(dl.size, dl.chunk_size, dl.digest, n, dl.mode, dl.mtime_ns, dl.digests)
            )
            if n == 0:
                return

            def on_acked(nbytes: int) -> None:
                self._moved += nbytes

            # Closed before dl: no read may still be running when the file is closed.
            reads = prefetch(lambda i: read_verified(dl, i), indices, READ_AHEAD, self.pool)
            async with contextlib.aclosing(reads) as chunks:
                await send_chunks(
                    self.ch, chunks, on_acked, self.limits.idle_timeout, pace=self._pace
                )
        finally:
            dl.close()

    async def _list(self, f: ListDir) -> None:
        key = self._grant.check(f.path, "list")
        try:
            entries, cursor = await self._blocking(self.storage.list, key, f.cursor, LIST_PAGE)
        except NotFound:
            if not self._is_own_root(key):
                raise
            entries, cursor = [], None
        self.ch.send(Listing(tuple(entries), cursor))

    async def _stat(self, f: Stat) -> None:
        key = self._grant.check(f.path, "list", "read")
        try:
            entry = await self._blocking(self.storage.stat, key)
        except NotFound:
            if not self._is_own_root(key):
                raise
            entry = Entry("/", "dir", 0, 0, 0o755, None)
        self.ch.send(Info(entry))

    def _is_own_root(self, key: str) -> bool:
        """True for a confined subject's own root, which exists only once it stores something
        (until then it lists as an empty folder)."""
        return bool(key) and key == self._grant.root

    async def _delete(self, f: Delete) -> None:
        await self._blocking(self.storage.delete, self._grant.check(f.path, "delete"))
        self.ch.send(Deleted(f.path))


def _result(exc: FluxError) -> str:
    return f"error {exc.code}: {exc.message}"


def _details(ch: Channel) -> dict[str, Any]:
    """Transport details beyond the name (QUIC resumption) for the access log."""
    return {k: v for k, v in ch.describe().items() if k != "transport"}


def held_status(upload: Upload) -> Status:
    """STATUS for an upload: the durable chunks as ranges (at most MAX_RANGES) + their digests.

    Reporting a subset is safe: the client just sends the chunks left out again.
    """
    ranges = to_ranges(upload.held)[:MAX_RANGES]
    return Status(ranges, b"".join(upload.held[i] for i in iter_indices(ranges)))


def wanted_chunks(dl: Download, f: OpenDownload) -> tuple[Iterable[int], int]:
    """Chunk indices to send for `f` and how many; none when the file is not the one asked for."""
    n = chunk_count(dl.size, dl.chunk_size)
    # With a digest, chunk_size is the geometry the client planned its `want` with: both pin it.
    changed = f.digest is not None and (f.digest, f.chunk_size) != (dl.digest, dl.chunk_size)
    if changed or (f.want is not None and not is_canonical(f.want, n)):
        return (), 0
    if f.want is None:
        return range(n), n
    return iter_indices(f.want), count(f.want)


def read_verified(dl: Download, index: int) -> ChunkData:
    """Read a stored chunk and check it against the manifest: corrupt data is never served."""
    digest = digest_at(dl.digests, index)
    data = dl.read_chunk(index)
    if chunk_digest(data) != digest:
        raise IntegrityError(f"stored file is corrupt at chunk {index}; not serving it")
    return index, digest, data
