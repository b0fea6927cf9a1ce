"""`recv`: download into a hidden partial file beside the destination, resumably.

An attempt that finds a staged file to resume first asks for no chunks at all (`want=()`) to
learn the file's size, chunk size and chunk digests, resumes the staged file, then asks for
exactly the chunks it does not hold with the right digest; with nothing staged it asks for the
whole file at once (one round trip, which many small files feel). Chunks are acked only once
durable. The destination appears, by rename, only after the whole-file digest verifies.

With `--transport auto` or `--lanes N` an attempt runs over lanes (lanes.py): the download is
opened with `share` on the first lane up and the others attach to it (lanerecv.py); a pass
that no request carries any more is opened again, for what is missing, on a lane that is up.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from fluxio.buffers import POOL
from fluxio.chunkflow import Buffer, ChunkWriter
from fluxio.ratelimit import paced
from fluxio.requests import Request
from fluxio.staging import StagedFile
from fluxproto import (
    MAX_RANGES,
    Ack,
    Chunk,
    ConfigError,
    Conflict,
    ConnectionLost,
    FileHasher,
    IntegrityError,
    Meta,
    OpenDownload,
    StorageError,
    Unavailable,
    chunk_count,
    to_ranges,
)
from fluxproto.digest import digest_at

from .connect import ClientOptions
from .lanerecv import LaneReceive
from .lanes import LaneSet, uses_lanes
from .results import DEFAULT_CHUNK, ProgressFn, TransferResult
from .retry import Retrier
from .session import ClientSession, cancel_on_error
from .sharedrecv import SharedReceive
from .upload import current_umask
from .url import FluxURL

PARTIAL_SUFFIX = ".fluxpart"
JOURNAL_SUFFIX = ".journal"
#: Longest name of a folder entry, in bytes (NAME_MAX of Linux and of the usual filesystems).
NAME_MAX = 255
#: Hex digits of the hash that stands for the cut part of a name too long to hide as it is.
_HASH_HEX = 16
#: Passes a run makes again after finding staged chunks damaged on disk before publishing.
MAX_REFETCHES = 2
#: Passes over lanes in a row that may end with nothing received before the attempt fails.
MAX_EMPTY_PASSES = 3

Want = tuple[tuple[int, int], ...] | None


T = TypeVar("T")


async def _settled(
    fn: Callable[..., T], *args: Any, abandon: Callable[[T], object] | None = None
) -> T:
    """`fn(*args)` in a worker thread; a cancellation meanwhile still waits for the thread to
    end (a thread cannot be stopped), gives what it returned to `abandon`, then is raised.
    So the staged file is never closed under a thread still using it, nor left open (and
    locked against the next attempt) by an open that finished after its caller gave up."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if abandon is not None and not task.cancelled() and task.exception() is None:
            abandon(task.result())
        raise


def destination(local_arg: str | Path, url: FluxURL) -> Path:
    """Where `recv URL LOCAL` puts the file: into LOCAL if it is a directory (or ends in a
    separator, like scp), else at LOCAL. Takes the argument as typed: Path drops the slash."""
    local = Path(local_arg)
    _check_name(local)
    if _is_dir(local) or str(local_arg).endswith(("/", os.sep)):
        if not url.name:
            raise ConfigError(f"{url} names no file")
        local = local / url.name
        _check_name(local)
    if not _is_dir(local.parent):
        raise ConfigError(f"no such local directory: {local.parent}")
    return local


def _check_name(path: Path) -> None:
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise ConfigError(f"local name longer than {NAME_MAX} bytes: {path.name[:40]}...")


def _is_dir(path: Path) -> bool:
    """Path.is_dir, with a path the system cannot even look up (too long) said in one line."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise ConfigError(f"cannot use local path {path}: {exc.strerror}") from None


def hidden_name(name: str, suffix: str, spare: int = 0) -> str:
    """`.NAME` followed by `suffix`: the hidden name of what is made beside the entry `name`
    (a staged download, a new link), at most NAME_MAX bytes with `spare` bytes left over (for
    a sibling named by appending to it).

    A name too long for that (any name the filesystem takes must round-trip) keeps what fits
    of itself, then `~` and a hash of the whole name: still the same hidden name for the same
    entry every time, which is how a later run finds a download to resume.
    """
    hidden = f".{name}{suffix}"
    if len(os.fsencode(hidden)) + spare <= NAME_MAX:
        return hidden
    raw = os.fsencode(name)
    tag = hashlib.blake2b(raw, digest_size=_HASH_HEX // 2).hexdigest()
    room = NAME_MAX - spare - len(os.fsencode(f".~{tag}{suffix}"))
    cut = room
    while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
        cut -= 1
    return f".{os.fsdecode(raw[:cut])}~{tag}{suffix}"


def partial_paths(dest: Path) -> tuple[Path, Path]:
    """The hidden staged data file and its journal beside `dest` (hidden_name: within
    NAME_MAX bytes whatever the length of dest's name)."""
    base = dest.parent / hidden_name(dest.name, PARTIAL_SUFFIX, len(JOURNAL_SUFFIX))
    return base, base.with_name(base.name + JOURNAL_SUFFIX)


class Download:
    """One `fluxctl recv` run; `run` retries attempts until the file is in place."""

    def __init__(
        self,
        url: FluxURL,
        local: str | Path,
        opts: ClientOptions,
        progress: ProgressFn | None = None,
        *,
        exact: bool = False,
        label: str | None = None,
    ) -> None:
        """With `exact` (a file of a tree), `local` is the file's own path (no directory rule)
        and the file appears with the server's permission bits (no umask) and mtime. `label`
        names the file in messages (default: its local path)."""
        self.url, self.opts = url, opts
        self.exact = exact
        self.dest = Path(local) if exact else destination(local, url)
        self.label = label or str(self.dest)
        self.progress = progress or (lambda done, total: None)
        #: Payload bytes received, each chunk once per pass (`resent`: the copies).
        self.received = 0
        #: Bytes of chunks that came again on another lane of a pass (written once).
        self.resent = 0
        #: Bytes each lane (or the one transport) brought first, by name, over every attempt.
        self.lanes: dict[str, int] = {}
        self._empty_passes = 0
        self.skipped: int | None = None
        #: Passes made again because staged chunks were found damaged at the end.
        self.refetches = 0
        #: True once the file is in place (even if the attempt was cancelled meanwhile).
        self.published = False

    async def run(self, retrier: Retrier | None = None) -> TransferResult:
        """Fetch the file, reconnecting and resuming as `retrier` allows: over every lane of
        the options (lanes.py: `auto`, `--lanes`), else over one connection."""
        started = time.monotonic()
        retrier = retrier or Retrier(self.url, self.opts)
        if uses_lanes(self.opts):
            meta = await retrier.run_lanes(self.attempt_lanes)
        else:
            meta = await retrier.run(self.attempt)
        seconds = time.monotonic() - started
        result = self.result(meta, retrier.retries, seconds, retrier.transport)
        result.node = retrier.node
        return result

    def result(self, meta: Meta, retries: int, seconds: float, transport: str) -> TransferResult:
        """The run's result once an attempt put the file in place."""
        received, skipped = self.received, self.skipped or 0
        path, size, digest = self.url.path, meta.size, meta.digest
        result = TransferResult(
            "recv", path, size, received, skipped, retries, seconds, digest, transport
        )
        result.lanes, result.resent = dict(self.lanes), self.resent
        return result

    async def attempt(self, session: ClientSession, n: int) -> Meta:
        """One attempt on `session` (the `n`th of the run): META of the file once it is in
        place. Safe to run at once with other transfers' attempts on the same session."""
        return await self.attempt_over([session], n)

    async def attempt_over(self, sessions: Sequence[ClientSession], n: int = 0) -> Meta:
        """One attempt over `sessions`, connections to the same server (the first one opens
        the download): with more than one, the server spreads the chunks over all of them
        (PROTOCOL.md 9.1), and one that dies mid-way leaves the rest to the others. META of
        the file once it is in place.

        Raises:
            FluxError: as `attempt`; a session failing fails the attempt only when the file
                cannot be completed on the others.
        """
        session, others = sessions[0], sessions[1:]

        async def fetch(req: Request, staged: StagedFile, meta: Meta, want: Want) -> None:
            await self._fetch(req, others, staged, meta, want)

        return await self._attempt(lambda: session, bool(others), fetch)

    async def attempt_lanes(self, lanes: LaneSet, n: int) -> Meta:
        """As `attempt`, spread over the lanes up (lanerecv.py): the download is opened with
        `share` on the first lane up (TCP first) and the others attach to it as they may.
        A pass that no request carries any more opens it again, on the first lane up, for
        the chunks still missing.

        Raises:
            FluxError: as `attempt`; a lane failing fails the attempt only when no lane is
                up (or passes keep ending with nothing received).
        """
        self._empty_passes = 0

        async def fetch(req: Request, staged: StagedFile, meta: Meta, want: Want) -> None:
            await self._fetch_lanes(lanes, req, staged, meta, want)

        return await self._attempt(lambda: lanes.first()[1], True, fetch)

    async def _attempt(
        self,
        session: Callable[[], ClientSession],
        share: bool,
        fetch: Callable[[Request, StagedFile, Meta, Want], Awaitable[None]],
    ) -> Meta:
        """Open the download on `session()` (with `share`: for other requests to share) and
        `fetch` what META announces, until every chunk is staged; then publish."""
        # Nothing staged to resume from: ask for the whole file at once (one round trip
        # instead of two, which small files of a tree feel); else learn its chunks first.
        fresh = not partial_paths(self.dest)[1].exists()
        want: Want = None if fresh else ()
        req, meta = await self._meta(session(), want, None, share)
        with cancel_on_error(req):
            staged = await self._open_staged(meta)
        try:
            if meta.count:
                await fetch(req, staged, meta, want)
            while True:
                while missing := self._missing(staged, meta):
                    want = to_ranges(missing)[:MAX_RANGES]
                    req, reply = await self._meta(session(), want, meta, share)
                    if reply.count:
                        await fetch(req, staged, reply, want)
                        continue
                    # The file changed on the server: re-plan against its new digests.
                    if (reply.size, reply.chunk_size) != (meta.size, meta.chunk_size):
                        await _settled(staged.discard)
                        staged = await self._open_staged(reply)
                    meta = reply
                if await self._publish(staged, meta):
                    break
            return meta
        finally:
            staged.close()

    async def _meta(
        self,
        session: ClientSession,
        want: Want,
        plan: Meta | None,
        share: bool = False,
    ) -> tuple[Request, Meta]:
        return await ask_meta(session, self.url.path, want, plan, self.opts, share)

    async def _fetch(
        self,
        req: Request,
        others: Sequence[ClientSession],
        staged: StagedFile,
        meta: Meta,
        want: Want,
    ) -> None:
        """The chunks `meta` announces: on `req` alone, or shared with the other sessions."""
        if not (meta.share and others):
            await self._receive(req, staged, meta)
            return
        shared = self._shared(staged, meta, want)
        try:
            await shared.run(req, others, self.url.path)
        finally:
            self._count(shared)

    async def _fetch_lanes(
        self, lanes: LaneSet, req: Request, staged: StagedFile, meta: Meta, want: Want
    ) -> None:
        """The chunks `meta` announces, over every lane that may carry them (lanerecv.py);
        unfinished when no request carried the transfer any more (the caller opens it again
        for what is missing).

        Raises:
            FluxError: as LaneReceive.run; or MAX_EMPTY_PASSES passes in a row ended with
                nothing received (the last one's reason).
        """
        if not meta.share:  # a server that does not share: this request brings every chunk
            await self._receive(req, staged, meta)
            return
        opener = [
            ln for ln in lanes.lanes if ln.session is not None and ln.session.ch is req.channel
        ]
        if not opener:
            raise ConnectionLost(f"the lane that opened {self.url.path} is gone")
        shared = self._shared(staged, meta, want)
        spread = LaneReceive(lanes, shared, self.url.path)
        try:
            whole = await spread.run(opener[0], req)
        finally:
            self._count(shared)
        self._empty_passes = 0 if whole or shared.received else self._empty_passes + 1
        if self._empty_passes >= MAX_EMPTY_PASSES:
            raise Unavailable(f"{self.url.address} keeps dropping the download; connecting again")

    def _shared(self, staged: StagedFile, meta: Meta, want: Want) -> SharedReceive:
        """A shared pass for the chunks `meta` announces; its lanes count in `lanes`."""
        timeout, on_durable = self.opts.io_timeout, self._progressed(meta)
        return SharedReceive(staged, meta, want, timeout, on_durable, self.lanes, self.opts.pace)

    def _count(self, shared: SharedReceive) -> None:
        """Add what a shared pass received to the run's counts."""
        self.received += shared.received
        self.resent += shared.resent

    async def _open_staged(self, meta: Meta) -> StagedFile:
        data, journal = partial_paths(self.dest)
        # Chunks come out of order over several lanes: hash them as the gaps fill (catch_up).
        opening = functools.partial(StagedFile.open, catch_up=True)
        staged = await _settled(
            opening, data, journal, meta.size, meta.chunk_size, abandon=StagedFile.close
        )
        held = sum(
            min(meta.chunk_size, meta.size - i * meta.chunk_size)
            for i, d in staged.held.items()
            if d == digest_at(meta.digests, i)
        )
        if self.skipped is None:
            self.skipped = held
        self._done = held
        self.progress(held, meta.size)
        return staged

    @staticmethod
    def _missing(staged: StagedFile, meta: Meta) -> list[int]:
        n = chunk_count(meta.size, meta.chunk_size)
        return [i for i in range(n) if staged.held.get(i) != digest_at(meta.digests, i)]

    def _progressed(self, meta: Meta) -> Callable[[int], None]:
        def on_durable(nbytes: int) -> None:
            self._done += nbytes
            self.progress(self._done, meta.size)

        return on_durable

    async def _receive(self, req: Request, staged: StagedFile, meta: Meta) -> None:
        writer = ChunkWriter(req, staged, self._progressed(meta))
        with cancel_on_error(req):
            try:
                lane = req.channel.transport
                for _ in range(meta.count):
                    chunk = await req.expect(Chunk, self.opts.io_timeout)
                    self.received += len(chunk.data)
                    self.lanes[lane] = self.lanes.get(lane, 0) + len(chunk.data)
                    writer.add(chunk)
                    # --bwlimit: the next chunk waits in the window; no ACK asks for more.
                    await paced(self.opts.pace, len(chunk.data))
            finally:
                await writer.flush()
            if writer.error is not None:
                raise writer.error

    def _published(self, _: object) -> None:
        self.published = True

    async def _publish(self, staged: StagedFile, meta: Meta) -> bool:
        """Put the file in place if its whole-file digest is the server's. False: staged chunks
        were damaged on disk after they were verified; they are dropped and fetched again."""
        digest = await _settled(staged.file_digest)
        if digest != meta.digest:
            # Read back what the journal vouches for, rather than trust it or throw it all away.
            damaged = await _settled(staged.reverify)
            if damaged and self.refetches < MAX_REFETCHES:
                self.refetches += 1
                return False
            await _settled(staged.discard)
            raise IntegrityError(f"{self.label}: whole-file digest does not match the server's")
        if self.exact:
            mode, mtime_ns = meta.mode & 0o777, meta.mtime_ns
        else:
            mode, mtime_ns = meta.mode & 0o777 & ~current_umask(), None
        await _settled(staged.publish, self.dest, mode, None, mtime_ns, abandon=self._published)
        self.published = True
        return True


async def ask_meta(
    session: ClientSession,
    path: str,
    want: tuple[tuple[int, int], ...] | None,
    plan: Meta | None,
    opts: ClientOptions,
    share: bool = False,
) -> tuple[Request, Meta]:
    """Ask for `want` (None: every chunk) of the version `plan` describes (None: the current
    version); the request (its chunks follow when META's `count` is not 0) and its META.
    With `share` the request opens a download that other requests may share (9.1)."""
    if plan is None:
        digest, chunk_size = None, opts.chunk_size or DEFAULT_CHUNK
    else:  # digest and chunk size pin the version and geometry `want` was computed for
        digest, chunk_size = plan.digest, plan.chunk_size
    req = await session.open(
        lambda rid: OpenDownload(rid, path, want, digest, chunk_size, share=share)
    )
    # The server may hash a file it has no manifest for before answering.
    with cancel_on_error(req):
        return req, await req.expect(Meta, opts.io_timeout * 10)


class StreamDownload:
    """`recv URL -`: the file, in order, to a stream such as standard output.

    Each chunk is checked against its digest (by the protocol layer) before it is written, and
    acknowledged only once written, so the server's window bounds what waits here for a chunk
    that arrives out of order (QUIC spreads chunks over several streams). After a reconnect the
    run goes on from the first chunk not yet written, pinned to the same version of the file;
    a stream cannot be rewound, so a file replaced on the server meanwhile ends the run (exit
    6), and a run interrupted for good starts again from the beginning. The whole-file digest
    is checked at the end (exit 3 if it differs: the bytes already written are then wrong).
    """

    def __init__(
        self,
        url: FluxURL,
        out: BinaryIO,
        opts: ClientOptions,
        progress: ProgressFn | None = None,
    ) -> None:
        self.url, self.out, self.opts = url, out, opts
        self.progress = progress or (lambda done, total: None)
        self.received = 0
        self.written = 0
        self._meta: Meta | None = None
        self._next = 0  # the first chunk not yet written
        self._hasher = FileHasher()

    async def run(self, retrier: Retrier | None = None) -> TransferResult:
        started = time.monotonic()
        retrier = retrier or Retrier(self.url, self.opts)
        meta = await retrier.run(self.attempt)
        seconds = time.monotonic() - started
        return TransferResult(
            "recv", self.url.path, meta.size, self.received, 0, retrier.retries, seconds,
            meta.digest, transport=retrier.transport, node=retrier.node,
        )  # fmt: skip

    async def attempt(self, session: ClientSession, n: int) -> Meta:
        """One attempt on `session`: META of the file once it is all written."""
        if self._meta is None:
            _, self._meta = await ask_meta(session, self.url.path, (), None, self.opts)
            self.progress(0, self._meta.size)
        meta = self._meta
        total = chunk_count(meta.size, meta.chunk_size)
        if self._next < total:
            want = ((self._next, total - self._next),)
            req, reply = await ask_meta(session, self.url.path, want, meta, self.opts)
            if reply.count == 0:
                raise Conflict(
                    f"{self.url.path} changed on the server during the transfer; "
                    f"{self.written} bytes of the old version were already written"
                )
            with cancel_on_error(req):
                await self._receive(req, reply.count, meta.size)
        if self._hasher.digest() != meta.digest:
            raise IntegrityError(f"{self.url.path}: whole-file digest does not match the server's")
        return meta

    async def _receive(self, req: Request, count: int, size: int) -> None:
        early: dict[int, Buffer] = {}  # arrived before a chunk ahead of them
        try:
            for _ in range(count):
                chunk = await req.expect(Chunk, self.opts.io_timeout)
                self.received += len(chunk.data)
                early[chunk.index] = chunk.data
                await paced(self.opts.pace, len(chunk.data))
                first, ready = self._next, []
                while self._next in early:
                    ready.append(early.pop(self._next))
                    self._next += 1
                if ready:
                    await asyncio.to_thread(self._write, ready)
                    req.send(Ack(req.rid, to_ranges(range(first, self._next))))
                    self.progress(self.written, size)
        finally:
            for data in early.values():
                if isinstance(data, memoryview):
                    POOL.put(data)

    def _write(self, buffers: list[Buffer]) -> None:
        try:
            for data in buffers:
                self._hasher.update(data)
                self.out.write(data)
                self.written += len(data)
            self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (`| head`): the CLI ends quietly, as pipes expect
        except OSError as exc:
            raise StorageError(f"cannot write to standard output: {exc.strerror}") from None
        finally:
            for data in buffers:
                if isinstance(data, memoryview):
                    POOL.put(data)
