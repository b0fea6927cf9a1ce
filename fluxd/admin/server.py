"""The admin listener: routes, the token rule, liveness, readiness and the status page's data.

It serves on a thread of its own (`loop.AdminLoop`) and reads nothing the daemon's loop mutates:
that loop publishes a `Snapshot` of its levels and live transfers every BEAT seconds (and after
each finished request), and stamps it, which is what /livez checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from fluxio.crashpoints import pause_point
from fluxio.parsing import format_hostport, is_loopback
from fluxproto import AuthError, FluxError

from .. import log
from ..auth.gate import bearer_token
from ..config import ServerConfig
from ..context import Shared
from ..storage.local import LocalStorage
from ..storage.paths import RESERVED
from .http import MAX_HEAD, BadRequest, Request, read_request, response
from .loop import AdminLoop
from .metrics import Levels, Metrics

#: Free bytes below which the local storage is not ready (a few chunks' worth).
MIN_FREE = 64 * 1024 * 1024
#: Seconds a readiness check of the storage may take before it counts as failed.
CHECK_TIMEOUT = 5.0
#: Age (seconds since it started) under which a storage check answers /readyz by itself; an
#: older one is still the answer while a new check runs, up to CHECK_STALE, then waited for.
CHECK_FRESH = 1.0
CHECK_STALE = 5.0
#: Seconds between two snapshots published by the daemon's loop (its heartbeat).
BEAT = 0.5
#: Seconds without a heartbeat after which /livez says the daemon's loop is stuck.
STALE_AFTER = 3.0
#: Finished requests the status page lists.
RECENT = 20
_PAGES = {"/": ("index.html", "text/html; charset=utf-8")}

__all__ = ["AdminServer", "Snapshot", "token_required"]

#: Connections the admin listener serves at once; more are closed at once (each may hold its
#: slot up to the head timeout before it shows a token).
MAX_CONNECTIONS = 64
#: Seconds an answer may take to leave (or the connection to close) before it is dropped.
WRITE_TIMEOUT = 10.0


def token_required(config: ServerConfig) -> bool:
    """Whether the admin listener asks for a token with the `admin` scope: always off a
    loopback address, and on loopback too when the daemon serves no client without one."""
    host = config.admin.address[0]
    return not is_loopback(host) or config.auth.anonymous is False


class Snapshot:
    """What the daemon's loop publishes for the admin thread; never changed once made.

    Args:
        at: `time.monotonic()` when taken.
        levels: connections by transport, uploads, staged bytes, memory, QUIC migrations.
        live: the status page's rows of transfers in progress.
    """

    __slots__ = ("at", "connections", "live", "memory", "migrations", "staged", "uploads")

    def __init__(self, at: float, levels: Levels, live: list[dict[str, Any]]) -> None:
        self.at, self.live = at, tuple(live)
        self.connections = dict(levels.connections())
        self.uploads, self.staged = levels.uploads(), levels.staged()
        self.memory, self.migrations = levels.memory(), levels.migrations()


class AdminServer:
    """Serves /metrics, /livez, /readyz, / and /status.json for one daemon.

    Args:
        shared: the daemon's shared state (storage, access log, limits, auth).
        levels: scrape-time readings (connections, uploads, memory).
        listening: whether the daemon's client listeners are up.
    """

    def __init__(self, shared: Shared, levels: Levels, listening: Callable[[], bool]) -> None:
        self.shared, self.listening, self.levels = shared, listening, levels
        self.snapshot = Snapshot(time.monotonic(), levels, [])
        snap = self._snapshot  # read at scrape time, on the admin thread
        self.metrics = Metrics(
            Levels(
                lambda: snap().connections,
                lambda: snap().uploads,
                lambda: snap().staged,
                lambda: snap().memory,
                lambda: snap().migrations,
            )
        )
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._recent_lock = threading.Lock()
        shared.access.observers += [self.metrics.observe, self._finished]
        self._thread = AdminLoop(self._serve, MAX_HEAD)
        self._open = 0  # connections being served (on the admin thread only)
        # Decided once: `is_loopback` may ask the resolver for a host name.
        self._token_required = token_required(shared.config)
        self._beat: asyncio.Task[None] | None = None
        self._publish_soon = False
        # Its own thread: the storage pool may be queued deep under load, and a probe waiting
        # behind uploads' writes would time out on a healthy disk.
        self._probes = ThreadPoolExecutor(1, thread_name_prefix="fluxd-admin")
        self._storage_check = StorageCheck(shared.storage, self._probes)

    async def start(self) -> str:
        """Listen on `[admin] listen`; returns the HOST:PORT bound.

        Raises:
            OSError: the address cannot be bound.
        """
        host, port = self.shared.config.admin.address
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            bound = await self._thread.start(host, port)
        except OSError:
            self._beat.cancel()
            raise
        return format_hostport(bound[0], bound[1])

    def close(self) -> None:
        """Stop the heartbeat and the admin thread (joined); call on the daemon's loop."""
        if self._beat is not None:
            self._beat.cancel()
        self._thread.close()
        self._probes.shutdown(wait=False)

    async def _heartbeat(self) -> None:
        """On the daemon's loop: publish a snapshot every BEAT seconds, for as long as it runs."""
        while True:
            self.publish()
            pause_point("loop-beat")  # a test blocks the daemon's loop here
            await asyncio.sleep(BEAT)

    def _snapshot(self) -> Snapshot:
        return self.snapshot

    def publish(self) -> None:
        """Take a snapshot now (on the daemon's loop only: it reads what that loop changes)."""
        self._publish_soon = False
        self.snapshot = Snapshot(time.monotonic(), self.levels, _live(self.shared))

    def _finished(self, record: dict[str, Any]) -> None:
        if record.get("op") in ("upload", "download") or record.get("result") != "ok":
            with self._recent_lock:
                self.recent.appendleft({**record, "ended": time.time()})
        if self._beat is not None and not self._publish_soon:
            # A finished request moves the levels: publish once the daemon's loop is done with it.
            self._publish_soon = True
            asyncio.get_running_loop().call_soon(self.publish)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:  # before any work: a flood holds no more than this
            writer.close()
            return
        self._open += 1
        try:
            try:
                req = await read_request(reader)
                answer = await self._route(req)
            except BadRequest as exc:
                answer = response(exc.status, exc.message.encode() + b"\n", extra=exc.extra)
            async with asyncio.timeout(WRITE_TIMEOUT):  # a client that reads nothing
                writer.write(answer)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.wait_closed()

    async def _route(self, req: Request) -> bytes:
        routes: dict[str, Callable[[], Any]] = {
            "/metrics": self._metrics,
            "/livez": self._livez,
            "/readyz": self._readyz,
            "/status.json": self._status,
            "/": self._page,
        }
        handler = routes.get(req.path)
        if handler is None:
            raise BadRequest(404, f"no such page: {req.path}")
        if req.method not in ("GET", "HEAD"):
            raise BadRequest(405, f"{req.method} is not allowed here", {"Allow": "GET, HEAD"})
        if not self._token_required and not _local_host(req.headers.get("host", "")):
            # No token on loopback: a web page the operator's browser visits must not reach
            # us through a name of its own pointed here (DNS rebinding).
            raise BadRequest(403, "without a token, only a loopback Host is served")
        self._authorise(req)
        status, body, ctype = await handler()
        return response(status, body, ctype, head_only=req.method == "HEAD")

    def _authorise(self, req: Request) -> None:
        if not self._token_required:
            return
        token = bearer_token(req.headers.get("authorization", ""))
        challenge = {"WWW-Authenticate": 'Bearer realm="fluxd admin"'}
        if token is None:
            raise BadRequest(401, "this page needs a bearer token with the admin scope", challenge)
        try:
            grant = self.shared.auth.verifier.verify(token)
            grant.check("/", "admin")
        except AuthError as exc:
            raise BadRequest(
                exc.code, exc.message, challenge if exc.code == 401 else None
            ) from None

    async def _metrics(self) -> tuple[int, bytes, str]:
        return 200, self.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8"

    async def _livez(self) -> tuple[int, bytes, str]:
        age = time.monotonic() - self.snapshot.at
        if age > STALE_AFTER:
            body = f"the daemon's event loop has not run for {age:.1f} s\n".encode()
            return 503, body, "text/plain; charset=utf-8"
        return 200, b"ok\n", "text/plain; charset=utf-8"

    async def _readyz(self) -> tuple[int, bytes, str]:
        failing = [] if self.listening() else ["listening: the client listeners are not up"]
        problem = await self._storage_check.problem()
        if problem is not None:
            failing.append(f"storage: {problem}")
        if failing:
            return 503, ("\n".join(failing) + "\n").encode(), "text/plain; charset=utf-8"
        return 200, b"ok\n", "text/plain; charset=utf-8"

    async def _status(self) -> tuple[int, bytes, str]:
        loop = asyncio.get_running_loop()
        usage = await loop.run_in_executor(self._probes, _usage, self.shared.storage)
        with self._recent_lock:
            recent = list(self.recent)
        body = {"now": time.time(), "live": list(self.snapshot.live), "recent": recent}
        body["storage"] = usage
        return 200, json.dumps(body, default=str).encode(), "application/json"

    async def _page(self) -> tuple[int, bytes, str]:
        name, ctype = _PAGES["/"]
        return 200, resources.files(__package__).joinpath("static", name).read_bytes(), ctype


def _live(shared: Shared) -> list[dict[str, Any]]:
    now = time.monotonic()
    rows = []
    for r in shared.access.live:
        if r.op not in ("upload", "download"):
            continue
        elapsed = max(now - r.started, 1e-6)
        rows.append(
            {
                "op": r.op,
                "path": r.path,
                "subject": r.subject,
                "transport": r.transport,
                "bytes": r.bytes,
                "size": r.size,
                "seconds": round(elapsed, 3),
                "rate": round(r.bytes / elapsed),
            }
        )
    return sorted(rows, key=lambda row: -row["seconds"])


class StorageCheck:
    """Readiness of the storage for /readyz, on the admin loop: one check at a time, its answer
    kept for CHECK_FRESH seconds, then given while the next runs (up to CHECK_STALE). A probe
    thus rarely waits on a disk that uploads keep busy, a hung disk holds one check, not a
    queue of them, and the answer is at most about a second stale while probes come."""

    def __init__(self, storage: Any, pool: ThreadPoolExecutor) -> None:
        self._storage, self._pool = storage, pool
        self._last: tuple[float, str | None] | None = None  # (when it started, its problem)
        self._job: asyncio.Future[str | None] | None = None

    async def problem(self) -> str | None:
        """Why the storage cannot take uploads now, or None (see `_check_storage`)."""
        last = self._last
        age = time.monotonic() - last[0] if last is not None else CHECK_STALE
        if last is not None and age < CHECK_FRESH:
            return last[1]
        job = self._start()
        if last is not None and age < CHECK_STALE:
            return last[1]
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                return await asyncio.shield(job)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT:g} s"

    def _start(self) -> asyncio.Future[str | None]:
        if self._job is not None and not self._job.done():
            return self._job
        started = time.monotonic()
        job = asyncio.get_running_loop().run_in_executor(self._pool, _check_storage, self._storage)

        def done(job: asyncio.Future[str | None]) -> None:
            if not job.cancelled() and job.exception() is None:
                self._last = (started, job.result())

        job.add_done_callback(done)
        self._job = job
        return job


def _check_storage(storage: Any) -> str | None:
    """Why the storage cannot take uploads now, or None: a real write in the reserved area and
    enough free space for local storage; the store's own check for S3. No fsync: under load it
    measures the disk's queue (150 ms at the 99th percentile with 200 uploads), not whether
    the file system takes writes."""
    if not isinstance(storage, LocalStorage):
        try:
            storage.check()
        except FluxError as exc:
            return exc.message
        return None
    probe = storage.root / RESERVED / "tmp" / f"ready-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ready")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
        st = os.statvfs(storage.root)
    except OSError as exc:
        return f"cannot write under the root: {exc.strerror}"
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE:
        return f"only {free} bytes free (needs {MIN_FREE})"
    return None


def _usage(storage: Any) -> dict[str, Any]:
    if not isinstance(storage, LocalStorage):
        return {"kind": "s3"}
    try:
        st = os.statvfs(storage.root)
    except OSError as exc:
        log.event("admin-statvfs-failed", logging.WARNING, error=exc.strerror)
        return {"kind": "local"}
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return {"kind": "local", "root": str(storage.root), "total": total, "free": free}


def _local_host(host: str) -> bool:
    """Whether a request's Host names this machine's loopback: localhost, 127.x.y.z or ::1
    (with or without a port). An empty one (HTTP/1.0, curl -H 'Host:') counts as local."""
    if host.startswith("["):  # [v6]:port
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.lower()
    if name in ("", "localhost", "::1") or name.endswith(".localhost"):
        return True
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() for p in parts)
