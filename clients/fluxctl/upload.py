"""`send`: upload a local file, resuming from the chunks the server already holds durably.

Each attempt reads the whole local file once, in order: every chunk is hashed, chunks the server
holds with the same digest are skipped, the rest are sent within the server's windows, and
COMMIT follows the last chunk without waiting for its ACK. The whole-file digest comes from the
same pass, so the committed file is exactly the local file as read in this attempt; if the file
changed during the pass, the attempt is repeated. When the server answers COMMIT with 422
(chunks it offered as held turned out damaged when it read them), the attempt makes another pass
on the same connection against a fresh STATUS.

A file of at most one chunk goes in one flight: OPEN_UPLOAD, its CHUNK and COMMIT leave
together, without waiting for STATUS (its chunk is sent even if the server holds it already).
Each upload is one request, so several run at once on one connection (`many.upload_many`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fluxio.buffers import POOL
from fluxio.chunkflow import ChunkData, ChunkSender, prefetch
from fluxio.requests import Request
from fluxproto import (
    Commit,
    Committed,
    ConfigError,
    Conflict,
    FileHasher,
    FluxError,
    Frame,
    FrameType,
    Info,
    IntegrityError,
    LocalProtocolError,
    OpenUpload,
    PermissionDenied,
    Stat,
    Status,
    TransportError,
    Unavailable,
    chunk_count,
    chunk_digest,
    iter_indices,
)
from fluxproto.digest import digest_at
from fluxproto.errors import map_exceptions

from .connect import ClientOptions
from .lanes import LaneSet, uses_lanes
from .lanesend import LaneUpload
from .results import ProgressFn, TransferResult, chunk_size_for
from .retry import Retrier
from .session import ClientSession, cancel_on_error
from .url import FluxURL

READ_AHEAD = 4
MAX_RESCANS = 3
#: COMMITs answered 422 that are followed by another pass: the server reports all it found
#: damaged at once, so one is the rule; a second covers damage that happens meanwhile.
MAX_INTEGRITY_RETRIES = 2
#: Commit may read the whole file on the server: the staged file when it could not hash it in
#: order, or the file at the destination it keeps (an unchanged file sent again).
COMMIT_RATE = 50e6
#: What `send -` names the data it reads from standard input.
STDIN = "-"


class LocalFileChanged(FluxError):
    """The local file changed while it was being sent."""

    retryable = True


class Upload:
    """One `fluxctl send` run; `run` retries attempts until the file is committed."""

    def __init__(
        self,
        local: Path,
        url: FluxURL,
        opts: ClientOptions,
        progress: ProgressFn | None = None,
        *,
        name: str | None = None,
        mode: int | None = None,
        keep_mtime: bool = False,
        opener: Opener | None = None,
    ) -> None:
        """`opener` opens `local` with the flags given (default: by its path); a tree's
        files are opened below the tree's root (treewalk.LocalFiles)."""
        self.local, self.url, self.opts = local, url, opts
        self.opener = opener or _path_opener(local)
        #: The file's name where the remote path names a directory (None: there must be none).
        self.name = local.name if name is None else name or None
        if url.path.endswith("/"):  # like scp: a trailing "/" names a directory to put it in
            if self.name is None:
                raise ConfigError(f"{url} names a directory: add a file name to the URL")
            self.remote = url.path + self.name
        else:
            self.remote = url.path
        self.progress = progress or (lambda done, total: None)
        self._into_folder_tried = url.path.endswith("/")
        #: The mode the remote file gets (None: the local file's).
        self.mode = mode
        #: Give the remote file the local file's mtime (as read), so that a tree's next run
        #: finds it unchanged by size and mtime; otherwise the server's time of writing.
        self.keep_mtime = keep_mtime
        self.sent = 0
        #: Bytes put on a lane's wire again in the same pass, after the lane that carried them
        #: first failed or stalled (lanesend.py); `sent` counts each chunk once per pass.
        self.resent = 0
        #: Bytes the server acknowledged through each lane (or the one transport), by name.
        self.lanes: dict[str, int] = {}
        self.skipped = 0
        #: What the server held when the run started: the base for `skipped`.
        self.first_held: dict[int, bytes] | None = None
        self.rescans = 0
        self.integrity_retries = 0
        self._done = self._size = 0
        self._mtime_ns: int | None = None

    async def run(self, retrier: Retrier | None = None) -> TransferResult:
        """Send the file, reconnecting and resuming as `retrier` allows: over every lane of
        the options (lanes.py: `auto`, `--lanes`), else over one connection."""
        started = time.monotonic()
        retrier = retrier or Retrier(self.url, self.opts)
        if uses_lanes(self.opts):
            digest, size = await retrier.run_lanes(self.attempt_lanes)
        else:
            digest, size = await retrier.run(self.attempt)
        seconds = time.monotonic() - started
        result = self.result(digest, size, retrier.retries, seconds, retrier.transport)
        result.node = retrier.node
        return result

    async def attempt(self, session: ClientSession, n: int) -> tuple[bytes, int]:
        """One attempt on `session` (the `n`th of the run): (digest, size) once committed.

        Safe to run at once with other uploads' attempts on the same session.

        Raises:
            LocalFileChanged: the file changed while it was read (retryable).
            FluxError: what the server or the connection reported.
        """
        return await self._attempt(lambda fd, st: self._pass(session, n, fd, st))

    async def attempt_lanes(self, lanes: LaneSet, n: int) -> tuple[bytes, int]:
        """As `attempt`, spread over the lanes up (lanesend.py); a file of one chunk goes in
        one flight on one lane."""
        return await self._attempt(lambda fd, st: self._pass_lanes(lanes, n, fd, st))

    async def _attempt(
        self, one_pass: Callable[[int, os.stat_result], Awaitable[bytes | None]]
    ) -> tuple[bytes, int]:
        fd, st = open_local(self.local, self.opener)
        try:
            # None: the server found chunks it offered as held corrupt and dropped them. That
            # is no network failure: plan again on this connection against a fresh STATUS.
            while (digest := await one_pass(fd, st)) is None:
                pass
            return digest, st.st_size
        except LocalFileChanged as exc:
            if self.rescans >= MAX_RESCANS:
                raise ConfigError(f"{self.local} keeps changing; not sending a mix") from exc
            raise
        finally:
            os.close(fd)

    def result(
        self, digest: bytes, size: int, retries: int, seconds: float, transport: str
    ) -> TransferResult:
        """The run's result once an attempt committed the file."""
        moved, skipped = self.sent, self.skipped
        result = TransferResult(
            "send", self.remote, size, moved, skipped, retries, seconds, digest, transport
        )
        result.lanes, result.resent = dict(self.lanes), self.resent
        return result

    def _begin(self, st: os.stat_result, session: ClientSession) -> tuple[int, int, int]:
        """A pass's size, chunk size (within the rule of `session`'s server) and mode for the
        file as `st` found it; resets progress."""
        self._mtime_ns = st.st_mtime_ns if self.keep_mtime else None
        self._done = 0  # bytes durable on the server, for progress
        mode = stat.S_IMODE(st.st_mode) if self.mode is None else self.mode
        chunk_size = chunk_size_for(st.st_size, self.opts.chunk_size, session.welcome)
        return st.st_size, chunk_size, mode

    def _held(self, status: Status) -> dict[int, bytes]:
        """What the server holds by STATUS; the first pass's is kept for `--json`."""
        held = held_digests(status)
        if self.first_held is None:
            self.first_held = held
        return held

    def _check_unchanged(self, fd: int, st: os.stat_result) -> None:
        if changed(fd, st, self.opener):
            self.rescans += 1
            raise LocalFileChanged(f"{self.local} changed while it was being sent")

    async def _pass(
        self, session: ClientSession, n: int, fd: int, st: os.stat_result
    ) -> bytes | None:
        """OPEN_UPLOAD, send what STATUS lacks, COMMIT; the committed digest, or None to
        plan again."""
        size, chunk_size, mode = self._begin(st, session)
        if chunk_count(size, chunk_size) <= 1:
            return await self._one_flight(session, n, fd, st, chunk_size, mode)
        req, status = await self._open(session, n, size, chunk_size, mode)
        with cancel_on_error(req):
            held = self._held(status)
            hasher = FileHasher()
            on_acked = self._on_acked(size, session.transport)
            sender = ChunkSender(
                req, on_acked, self.opts.io_timeout, self._on_sent, pace=self.opts.pace
            )
            await self._send_all(sender, fd, size, chunk_size, held, hasher)
            self._check_unchanged(fd, st)
            return await self._commit(req, sender, hasher.digest(), size)

    async def _one_flight(
        self,
        session: ClientSession,
        n: int,
        fd: int,
        st: os.stat_result,
        chunk_size: int,
        mode: int,
    ) -> bytes | None:
        """A file of at most one chunk: OPEN_UPLOAD, CHUNK and COMMIT without waiting."""
        size = st.st_size
        data = read_exact(fd, 0, size) if size else b""
        digest = chunk_digest(data)  # one chunk: the whole file's digest too
        if changed(fd, st, self.opener):
            self.rescans += 1
            raise LocalFileChanged(f"{self.local} changed while it was being sent")
        self.progress(0, size)
        req = await session.open(self._opening(size, chunk_size, mode))
        with cancel_on_error(req):
            # With many requests in flight the chunk may wait for window room, and the
            # server's STATUS (or its refusal) may come first: the sender keeps it for us.
            on_acked = self._on_acked(size, session.transport)
            sender = ChunkSender(
                req,
                on_acked,
                self.opts.io_timeout,
                self._on_sent,
                pace=self.opts.pace,
                early=(Status,),
            )
            refused: Conflict | None = None
            try:
                if size:
                    await sender.send_all(_one(0, digest, data))
                if req.can_send(FrameType.COMMIT):  # else it ended: _status says why
                    req.send(Commit(req.rid, digest, sender.count))
            except Conflict as exc:
                refused = exc
            status = await self._status(session, n, req, sender.held_back, refused)
        if status is None:  # refused, and the path named a folder: into it, the long way
            return await self._one_flight(session, n, fd, st, chunk_size, mode)
        if self.first_held is None:
            self.first_held = held_digests(status)
        with cancel_on_error(req):
            return await self._committed(req, sender, digest, size)

    async def _open(
        self, session: ClientSession, n: int, size: int, chunk_size: int, mode: int
    ) -> tuple[Request, Status]:
        """OPEN_UPLOAD at `remote` (which may move into a folder once) and its STATUS."""
        while True:
            req = await session.open(self._opening(size, chunk_size, mode))
            status = await self._status(session, n, req)
            if status is not None:
                return req, status

    def _opening(self, size: int, chunk_size: int, mode: int) -> Callable[[int], OpenUpload]:
        mtime_ns = self._mtime_ns
        return lambda rid: OpenUpload(rid, self.remote, size, chunk_size, mode, mtime_ns)

    async def _status(
        self,
        session: ClientSession,
        n: int,
        req: Request,
        early: Iterable[Frame] = (),
        refused: Conflict | None = None,
    ) -> Status | None:
        """The upload's STATUS (the first of `early` if one came already, or the refusal a
        sender met: `refused`); None when it was refused because the remote path is a folder
        and the file now goes into it (like scp): open it again at `remote`."""
        try:
            if refused is not None:
                raise refused
            for frame in early:
                if not isinstance(frame, Status):
                    raise LocalProtocolError(f"request {req.rid} expected Status, got {frame}")
                return frame
            return await req.expect(Status, self.opts.io_timeout)
        except Conflict as exc:
            if await self._into_folder(session):
                return None
            if exc.message.endswith("is a directory") and self.name is not None:
                # Looking was not allowed (a write-only token): say how to get what scp does.
                raise Conflict(f"{exc.message}; to send into it, end the URL with /") from exc
            if n == 0:
                raise
            # Most likely our own previous connection, not yet noticed dead by the server.
            raise Unavailable(str(exc)) from exc

    async def _into_folder(self, session: ClientSession) -> bool:
        """Like scp: if the remote path is a directory, send the file into it (once)."""
        if self._into_folder_tried or self.name is None:
            return False
        self._into_folder_tried = True
        path = self.remote
        req = await session.open(lambda rid: Stat(rid, path))
        try:
            info = await req.expect(Info, self.opts.io_timeout)
        except TransportError:
            raise
        except FluxError:  # not allowed to look (a write-only token), or gone: the first error
            return False
        if info.entry.kind != "dir":
            return False
        self.remote = self.remote.rstrip("/") + "/" + self.name
        return True

    async def _send_all(
        self,
        sender: ChunkSender,
        fd: int,
        size: int,
        chunk_size: int,
        held: dict[int, bytes],
        hasher: FileHasher,
    ) -> None:
        async with self._reading(fd, size, chunk_size, held, hasher) as chunks:
            await sender.send_all(chunks)

    @contextlib.asynccontextmanager
    async def _reading(
        self, fd: int, size: int, chunk_size: int, held: dict[int, bytes], hasher: FileHasher
    ) -> AsyncIterator[AsyncIterator[ChunkData]]:
        """The chunks to send, read once in file order (READ_AHEAD ahead, in one worker
        thread, so `hasher` sees the whole file in order) and hashed; those `held` with the
        same digest are left out (counted in `skipped` and progress). `skipped` is exact once
        they are all read."""
        skipped = 0
        first_held = self.first_held or {}

        def read(index: int) -> ChunkData:
            offset = index * chunk_size
            data = read_exact(fd, offset, min(chunk_size, size - offset))
            hasher.update(data)  # one worker thread: chunks are hashed in file order
            return index, chunk_digest(data), data

        async def unsent(pool: ThreadPoolExecutor) -> AsyncGenerator[ChunkData, None]:
            nonlocal skipped
            indices = range(chunk_count(size, chunk_size))
            async for index, digest, data in prefetch(read, indices, READ_AHEAD, pool):
                if held.get(index) == digest:
                    if first_held.get(index) == digest:
                        skipped += len(data)
                    self._done += len(data)
                    self.progress(self._done, size)
                    continue
                yield index, digest, data
            self.skipped = skipped  # the scan completed: this count is exact

        self.progress(0, size)
        with ThreadPoolExecutor(1, thread_name_prefix="fluxctl-read") as pool:
            async with contextlib.aclosing(unsent(pool)) as chunks:
                yield chunks

    async def _pass_lanes(
        self, lanes: LaneSet, n: int, fd: int, st: os.stat_result
    ) -> bytes | None:
        """`_pass` over every lane up: OPEN_UPLOAD on the first (TCP if up), then the chunks
        over all of them (lanesend.LaneUpload); the committed digest, or None to plan again."""
        first, session = lanes.first()  # TCP first: cheapest per byte
        size, chunk_size, mode = self._begin(st, session)
        self._size = size
        if chunk_count(size, chunk_size) <= 1:
            return await self._one_flight(session, n, fd, st, chunk_size, mode)
        req, status = await self._open(session, n, size, chunk_size, mode)
        with cancel_on_error(req):
            held = self._held(status)
            hasher = FileHasher()

            def digest() -> bytes:
                self._check_unchanged(fd, st)
                return hasher.digest()

            opening = req.opening
            assert isinstance(opening, OpenUpload)
            timeout = self.opts.io_timeout
            commit_timeout = timeout + size / COMMIT_RATE
            spread = LaneUpload(lanes, opening, status.tid, self, timeout, commit_timeout)
            spread.pace = self.opts.pace
            async with self._reading(fd, size, chunk_size, held, hasher) as chunks:
                try:
                    return await spread.run(first, req, chunks, digest)
                except IntegrityError as exc:
                    self._integrity_failed(exc)
                    return None

    # --- what a pass over lanes reports (lanesend.Tally) -----------------------------------

    def count_sent(self, nbytes: int) -> None:
        self.sent += nbytes

    def count_resent(self, nbytes: int) -> None:
        self.resent += nbytes

    def count_delivered(self, lane: str, nbytes: int) -> None:
        self.lanes[lane] = self.lanes.get(lane, 0) + nbytes
        self._done += nbytes
        self.progress(self._done, self._size)

    def _on_acked(self, size: int, lane: str) -> Callable[[int], None]:
        def on_acked(nbytes: int) -> None:
            self.lanes[lane] = self.lanes.get(lane, 0) + nbytes
            self._done += nbytes
            self.progress(self._done, size)

        return on_acked

    def _on_sent(self, nbytes: int) -> None:
        self.sent += nbytes

    async def _commit(
        self, req: Request, sender: ChunkSender, digest: bytes, size: int
    ) -> bytes | None:
        """COMMIT (right after the last chunk: COMMITTED acknowledges what is still in
        flight); the digest once COMMITTED, or None when the server answered 422."""
        req.send(Commit(req.rid, digest, sender.count))
        return await self._committed(req, sender, digest, size)

    async def _committed(
        self, req: Request, sender: ChunkSender, digest: bytes, size: int
    ) -> bytes | None:
        """The digest once COMMITTED, or None when the server answered 422 (it found chunks
        it held corrupt, dropped them and keeps the rest): send again what it lacks."""
        # Commit may read the whole file on the server.
        timeout = self.opts.io_timeout + size / COMMIT_RATE
        try:
            while not isinstance(frame := await req.next(timeout), Committed):
                sender.take(frame)  # ACKs of chunks still in flight at COMMIT
        except IntegrityError as exc:
            self._integrity_failed(exc)
            return None
        sender.acked_all()
        return digest

    def _integrity_failed(self, exc: IntegrityError) -> None:
        """The server answered COMMIT with 422 (`exc`): the pass plans again, a few times.

        Raises:
            IntegrityError: once too often.
        """
        self.integrity_retries += 1
        if self.integrity_retries > MAX_INTEGRITY_RETRIES:
            raise exc


async def _one(
    index: int, digest: bytes, data: bytes | memoryview
) -> AsyncGenerator[ChunkData, None]:
    yield index, digest, data


def held_digests(status: Status) -> dict[int, bytes]:
    """Map chunk index → digest for every chunk STATUS says the server holds."""
    return {
        index: digest_at(status.digests, k) for k, index in enumerate(iter_indices(status.held))
    }


def _local_error(exc: BaseException) -> FluxError:
    assert isinstance(exc, OSError)
    name = exc.filename or "local file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"cannot read {name}: permission denied")
    if exc.errno == errno.ENOENT:
        return ConfigError(f"no such local file: {name}")
    if exc.errno == errno.EISDIR:
        return ConfigError(f"{name} is a directory (use -r)")
    return ConfigError(f"cannot read {name}: {exc.strerror}")


def current_umask() -> int:
    """The process's umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class Source:
    """What a `send` reads: a local file, or standard input kept in a temporary file."""

    path: Path
    #: The remote file's name where the URL names a folder (None: the URL must name the file).
    name: str | None
    #: The remote file's mode (None: the local file's).
    mode: int | None = None

    @property
    def label(self) -> str:
        return self.name or "standard input"


@contextlib.contextmanager
def open_source(local: str, url: FluxURL) -> Iterator[Source]:
    """The source for `send LOCAL URL`: the file `local`, or standard input for `-`.

    Standard input is copied first into an anonymous temporary file (in TMPDIR; it has no
    name, so nothing is left behind even if the process is killed): the protocol announces a
    file's size before its chunks, and a retry within the run must read the data again. A
    pipe cannot be read twice, so an interrupted `send -` resumes only when the same data is
    piped in again. Call this outside the event loop: the copy blocks until the input ends,
    and Ctrl-C must be able to stop it.

    Raises:
        ConfigError: `-` with a URL that names a folder, or standard input cannot be copied.
    """
    if local != STDIN:
        path = Path(local)
        if path.is_dir():  # said before connecting
            raise ConfigError(f"{local} is a directory (use -r)")
        yield Source(path, path.name)
        return
    if url.path.endswith("/"):
        raise ConfigError(f"{url} names a directory: data from standard input needs a name")
    if sys.stdin.isatty():
        print("fluxctl: reading standard input; end it with Ctrl-D", file=sys.stderr)
    with map_exceptions({OSError: _stdin_error}):
        spool = tempfile.TemporaryFile(prefix="fluxctl-stdin-")  # noqa: SIM115
    with spool:
        with map_exceptions({OSError: _stdin_error}):
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.flush()
        # Opened again by each attempt through the descriptor's name (Linux's /proc).
        yield Source(Path(f"/proc/self/fd/{spool.fileno()}"), None, 0o666 & ~current_umask())


def _stdin_error(exc: BaseException) -> FluxError:
    assert isinstance(exc, OSError)
    # Reading the pipe or writing the spool (a full TMPDIR): both are local, both end here.
    why = exc.strerror or str(exc)
    return ConfigError(f"cannot copy standard input to a temporary file (TMPDIR): {why}")


#: Opens a local file with the flags given; returns the descriptor (OSError otherwise).
Opener = Callable[[int], int]


def _path_opener(path: Path) -> Opener:
    return lambda flags: os.open(path, flags | os.O_CLOEXEC)


def open_local(path: Path, opener: Opener | None = None) -> tuple[int, os.stat_result]:
    """Open a local regular file for reading (through `opener` if given); bad input becomes
    a one-line error."""
    with map_exceptions({OSError: _local_error}):
        fd = (opener or _path_opener(path))(os.O_RDONLY)
        st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path} is a directory (use -r)")
        raise ConfigError(f"{path} is not a regular file")
    return fd, st


def read_exact(fd: int, offset: int, length: int) -> memoryview:
    """Read exactly `length` bytes at `offset` into a pool buffer; short means it changed."""
    view = POOL.get(length)
    got = 0
    with map_exceptions({OSError: _local_error}):
        while got < length:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise LocalFileChanged("local file shrank while it was being sent")
            got += n
    return view


def changed(fd: int, before: os.stat_result, opener: Opener) -> bool:
    """True if the open file was modified, or its name (opened again by `opener`) now leads
    to another file."""
    try:
        now = os.fstat(fd)
        again = opener(os.O_PATH)
        try:
            named = os.fstat(again)
        finally:
            os.close(again)
    except OSError:
        return True
    key = (before.st_size, before.st_mtime_ns, before.st_ino, before.st_dev)
    return key != (now.st_size, now.st_mtime_ns, now.st_ino, now.st_dev) or (
        named.st_ino,
        named.st_dev,
    ) != (before.st_ino, before.st_dev)
