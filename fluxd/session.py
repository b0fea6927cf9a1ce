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
from concurrent.futures import Executor
from typing import Any, TypeVar

from fluxproto import (
    MAX_RANGES,
    PROTOCOL_VERSION,
    Chunk,
    Commit,
    Committed,
    ConnectionClosed,
    Delete,
    Deleted,
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
    OpenDownload,
    OpenUpload,
    ProtocolError,
    Stat,
    State,
    Status,
    TransportError,
    VersionMismatch,
    Welcome,
    chunk_count,
    chunk_digest,
    iter_indices,
    to_ranges,
)
from fluxproto import Error as ErrorFrame
from fluxproto.digest import DIGEST_SIZE
from fluxproto.ranges import count, is_canonical

from . import __version__, log
from .chunkflow import (
    Channel,
    ChunkData,
    ChunkWriter,
    expect,
    handle_control,
    prefetch,
    send_chunks,
)
from .claims import UploadClaims
from .config import ServerConfig
from .storage.base import Download, Storage, Upload
from .storage.paths import require_file_path

R = TypeVar("R")

CAPABILITIES = ("xxh3-128", "resume")
HANDSHAKE_TIMEOUT = 15.0
LIST_PAGE = 150  # entries per LISTING; keeps the header under its 64 KiB limit
READ_AHEAD = 4  # chunks read from disk ahead of the send window


class Session:
    """One connection's conversation. `run` returns when the client leaves or the link dies."""

    def __init__(
        self,
        ch: Channel,
        storage: Storage,
        config: ServerConfig,
        pool: Executor,
        claims: UploadClaims,
    ) -> None:
        self.ch, self.storage, self.config, self.pool = ch, storage, config, pool
        self.claims = claims
        # Request frame → (name in the log, handler returning the payload bytes moved).
        self._handlers: dict[type[Frame], tuple[str, Callable[[Any], Awaitable[int]]]] = {
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
                event = await self.ch.next_event(self.config.idle_timeout)
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
        except FluxError as exc:
            # The peer broke the protocol or sent a corrupt chunk: say why, then hang up.
            log.event("protocol-error", logging.WARNING, peer=self.ch.peer, error=str(exc))
            self._send_error(exc)
        finally:
            self.ch.close()

    async def _handshake(self) -> None:
        hello = await expect(self.ch, Hello, HANDSHAKE_TIMEOUT)
        if PROTOCOL_VERSION not in hello.versions:
            raise VersionMismatch(f"server speaks protocol version {PROTOCOL_VERSION}")
        self.ch.send(
            Welcome(
                version=PROTOCOL_VERSION,
                caps=CAPABILITIES,
                window=self.config.window,
                agent=f"fluxd/{__version__}",
            )
        )

    async def _request(self, frame: Frame) -> None:
        started = time.monotonic()
        op, handler = self._handlers[type(frame)]
        fields: dict[str, Any] = {
            "peer": self.ch.peer,
            "op": op,
            "path": getattr(frame, "path", None),
            **self.ch.describe(),
        }
        try:
            fields["bytes"] = await handler(frame)
            fields["result"] = "ok"
        except FluxError as exc:
            fields["result"] = f"error {exc.code}: {exc.message}"
            # Broken link or broken peer: the connection ends (run() reports it).
            if isinstance(exc, TransportError | ProtocolError) or self.ch.conn.state is State.ERROR:
                raise
            self._send_error(exc)
            if self.ch.conn.state is State.CLOSED:
                raise TransportError("connection closed after an error") from exc
        finally:
            fields["duration"] = round(time.monotonic() - started, 6)
            log.event("request", **fields)

    def _goodbye(self, reason: str) -> None:
        if self.ch.conn.state not in (State.CLOSED, State.ERROR):
            with contextlib.suppress(FluxError):
                self.ch.send(Goodbye(reason))

    def _send_error(self, exc: FluxError) -> None:
        if self.ch.conn.state is State.CLOSED:
            return
        # If even this fails the connection is already unusable; the log has the reason.
        with contextlib.suppress(FluxError):
            self.ch.send(ErrorFrame(exc.code, exc.message[:1000]))

    async def _blocking(self, fn: Callable[..., R], *args: Any) -> R:
        """Run a blocking storage call; if cancelled, let the thread finish before unwinding."""
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    # --- requests --------------------------------------------------------------------------

    async def _upload(self, f: OpenUpload) -> int:
        if f.chunk_size > self.config.max_chunk:
            raise LimitExceeded(f"chunk size {f.chunk_size} > server limit {self.config.max_chunk}")
        key = require_file_path(f.path)
        async with self.claims.claim(key, lambda: self.ch.closed, self.config.shutdown_grace):
            return await self._upload_claimed(f)

    async def _upload_claimed(self, f: OpenUpload) -> int:
        upload = await self._blocking(
            self.storage.open_upload, f.path, f.size, f.chunk_size, f.mode
        )
        writer = ChunkWriter(self.ch, upload, executor=self.pool)
        try:
            self.ch.send(held_status(upload))
            while True:
                frame = await self._next_frame()
                if isinstance(frame, Chunk):
                    writer.add(frame)
                    continue
                assert isinstance(frame, Commit)
                await writer.flush()
                await self._commit(upload, f.size, frame.digest)
                return writer.written
        finally:
            # Chunks already received reach disk even if the client vanished or we are stopping.
            await writer.flush()
            upload.close()

    async def _commit(self, upload: Upload, size: int, digest: bytes) -> None:
        # Shielded: a shutdown must not interrupt a commit between its rename and the reply.
        task = asyncio.ensure_future(self._blocking(upload.commit, digest))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                self.ch.send(Committed(size, digest))
            raise
        self.ch.send(Committed(size, digest))

    async def _download(self, f: OpenDownload) -> int:
        dl = await self._blocking(self.storage.open_download, f.path, f.chunk_size)
        try:
            indices, n = wanted_chunks(dl, f)
            self.ch.send(
                Meta(dl.size, dl.chunk_size, dl.digest, n, dl.mode, dl.mtime_ns, dl.digests)
            )
            if n == 0:
                return 0
            acked = 0

            def on_acked(nbytes: int) -> None:
                nonlocal acked
                acked += nbytes

            # Closed before dl: no read may still be running when the file is closed.
            reads = prefetch(lambda i: read_verified(dl, i), indices, READ_AHEAD, self.pool)
            async with contextlib.aclosing(reads) as chunks:
                await send_chunks(self.ch, chunks, on_acked, self.config.idle_timeout)
            return acked
        finally:
            dl.close()

    async def _list(self, f: ListDir) -> int:
        entries, cursor = await self._blocking(self.storage.list, f.path, f.cursor, LIST_PAGE)
        self.ch.send(Listing(tuple(entries), cursor))
        return 0

    async def _stat(self, f: Stat) -> int:
        self.ch.send(Info(await self._blocking(self.storage.stat, f.path)))
        return 0

    async def _delete(self, f: Delete) -> int:
        await self._blocking(self.storage.delete, f.path)
        self.ch.send(Deleted(f.path))
        return 0

    async def _next_frame(self) -> Frame:
        while True:
            frame = handle_control(self.ch, await self.ch.next_event(self.config.idle_timeout))
            if frame is not None:
                return frame


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
    digest = dl.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
    data = dl.read_chunk(index)
    if chunk_digest(data) != digest:
        raise IntegrityError(f"stored file is corrupt at chunk {index}; not serving it")
    return index, bytes(digest), data
