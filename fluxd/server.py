"""The daemon process: listeners, one Session task per connection, and graceful shutdown.

On SIGTERM/SIGINT the daemon stops accepting, lets chunks it already received reach disk, tells
clients it is going away, and keeps every partial upload for the clients to resume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fluxio.buffers import ReceiveBudget
from fluxio.parsing import format_hostport, is_loopback
from fluxio.tls import CertPaths, server_ssl_context
from fluxio.transports.channel import ChannelBase
from fluxio.transports.quic import QuicChannel, QuicListener
from fluxio.transports.tcp import Listener, SocketChannel
from fluxproto import AuthError, Connection, FluxError, Role

from . import log
from .access import AccessLog
from .admin import AdminServer
from .admin.metrics import Levels
from .auth.gate import Authenticator
from .claims import UploadClaims
from .config import ServerConfig
from .context import Shared
from .events import Events
from .http import HttpListener
from .limits import Admission, Throttle, peer_host
from .notify import Notifier
from .service import FileService
from .session import Session
from .storage.base import Backend, Maintenance, Storage

#: How often revocations (and token expiry) are checked against live connections.
GRANT_CHECK_EVERY = 1.0
#: Ports tried when asked for port 0 before giving up: one whose number is taken for UDP is
#: followed by another.
PORT_ATTEMPTS = 20
R = TypeVar("R")


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


class FluxServer:
    """Accepts TCP (+TLS) and QUIC connections and runs a `Session` for each."""

    def __init__(
        self,
        config: ServerConfig,
        storage: Backend,
        ssl_context: ssl.SSLContext | None,
        certs: CertPaths | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.config, self.ssl_context = config, ssl_context
        # Sessions get the request interface only; the daemon's jobs, the maintenance one.
        self.storage: Storage = storage
        self.maintenance: Maintenance = storage
        self.certs = certs
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fluxd-io")
        self.shared = Shared(
            config,
            storage,
            self.pool,
            UploadClaims(),
            auth or Authenticator.from_config(config),
            Admission(config.limits),
            Throttle(config.limits),
            AccessLog(config.access_log),
            ReceiveBudget(config.limits.memory),
            Events(config.events),
        )
        #: What every connection's requests go to, whatever their transport.
        self.service = FileService(self.shared)
        self._listener: Listener | None = None
        self._quic: QuicListener | None = None
        self._http: HttpListener | None = None
        #: Where the HTTPS listener (`[http] listen`) is bound, once started.
        self.http_addresses: list[str] = []
        self._sessions: dict[asyncio.Task[None], Session] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.admin: AdminServer | None = None
        if config.admin.listen:
            self.admin = AdminServer(self.shared, self._levels(), self._listening)

    def _levels(self) -> Levels:
        def connections() -> dict[str, int]:
            counts: dict[str, int] = {}
            for session in self._sessions.values():
                counts[session.ch.transport] = counts.get(session.ch.transport, 0) + 1
            return counts

        def staged() -> int:
            return sum(r.bytes for r in self.shared.access.live if r.op == "upload")

        return Levels(
            connections,
            lambda: sum(self.shared.admission.uploads.values()),
            staged,
            lambda: self.shared.budget.in_use,
            lambda: self._quic.migrations if self._quic is not None else 0,
        )

    def _listening(self) -> bool:
        return self._listener is not None or self._quic is not None

    def _ran(self, job: str) -> None:
        if self.admin is not None:
            self.admin.metrics.housekeeping.labels(job).inc()

    async def start(self) -> list[tuple[str, str]]:
        """Bind and start accepting; returns (transport, HOST:PORT) for every listener.

        QUIC listens on the UDP port with the TCP listener's number (port 0: the one TCP got).
        QUIC always runs TLS, so it is off when TLS is.
        """
        await self._recover()
        await self.shared.events.start()
        host, port = self.config.address
        # Port 0 means any port free for TCP and UDP both: the number TCP gets may be taken
        # for UDP (a client's QUIC socket, say), and then another number is tried.
        bound: list[tuple[str, str]] = []
        for attempt in range(1 if port else PORT_ATTEMPTS):
            try:
                bound = await self._bind(host, port)
                break
            except FluxError:  # the address cannot be bound
                self._close_listeners()
                self._listener = self._quic = None
                if port or attempt == PORT_ATTEMPTS - 1:
                    raise
        self._start_http()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch_grants())]
        if self.config.gc_every:
            self._tasks.append(loop.create_task(self._every(self.config.gc_every, self._collect)))
        if self.config.scrub_every:
            self._tasks.append(loop.create_task(self._every(self.config.scrub_every, self._scrub)))
        return bound

    async def _bind(self, host: str, port: int) -> list[tuple[str, str]]:
        """Start the listeners on HOST:PORT (QUIC on the number TCP got); raises FluxError
        (ConnectError) if one cannot bind, leaving the others for `_close_listeners`."""
        bound: list[tuple[str, str]] = []
        if self.config.tcp:
            self._listener = Listener(
                self.ssl_context,
                self._start_tcp_session,
                self.config.limits.handshake_timeout,
                self._admit,
                functools.partial(_handshake_failed, "tcp"),
            )
            tcp = self._listener.start(host, port)
            name = "tcp" if self.ssl_context else "tcp-plaintext"
            bound += [(name, format_hostport(h, p)) for h, p in tcp]
            port = tcp[0][1]
        if self.config.quic and self.certs is not None:
            self._quic = QuicListener(
                self.certs,
                self._start_quic_session,
                self.config.quic_datagram_size,
                self.config.limits.handshake_timeout,
                self.config.limits.max_header,
                self.shared.budget.alloc,
                functools.partial(_handshake_failed, "quic"),
                window=self.config.window,
            )
            udp = await self._quic.start(host, port)
            bound += [("quic", format_hostport(h, p)) for h, p in udp]
        return bound

    def _start_http(self) -> None:
        """Start the HTTPS listener if `[http] listen` asks for one (the config refuses it
        without TLS)."""
        address = self.config.http.address
        if address is None or self.certs is None:
            return
        context = server_ssl_context(self.certs, alpn=("http/1.1",))
        on_failed = functools.partial(_handshake_failed, "https")
        self._http = HttpListener(self.shared, self.service, context, self._admit, on_failed)
        try:
            self.http_addresses = self._http.start(*address)
        except FluxError:
            self._close_listeners()
            raise

    async def _recover(self) -> None:
        """Before listening: rebuild the staging area after whatever stopped the last run, and
        collect what was abandoned."""
        started = time.monotonic()
        found = await self._in_pool(self.maintenance.recover)
        log.event("recovered", **dataclasses.asdict(found), seconds=_since(started))
        self._ran("recover")
        await self._collect()

    async def _collect(self) -> None:
        grace = self.config.staging_grace
        done = await self._in_pool(self.maintenance.collect, grace, time.time())
        self._ran("collect")
        if done.uploads or done.manifests:
            log.event("collected", **dataclasses.asdict(done))

    async def _scrub(self) -> None:
        started = time.monotonic()
        report = await self._in_pool(self.maintenance.scrub)
        self._ran("scrub")
        for problem in report.corrupt:
            log.event("corrupt-file", logging.ERROR, detail=problem)
            path, _, detail = problem.partition(": ")
            await self.shared.events.emit("corruption", path=path, detail=detail, found_by="scrub")
        fields = dataclasses.asdict(report) | {"corrupt": len(report.corrupt)}
        log.event("scrubbed", **fields, seconds=_since(started))

    async def _in_pool(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` every `seconds`; a failure is logged and the next round still runs."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except FluxError as exc:
                log.event("housekeeping-failed", logging.ERROR, error=exc.message)

    def _admit(self, host: str) -> Callable[[], None] | None:
        """A connection slot for `host`, or None (logged) when a connection limit is reached."""
        slot = self.shared.admission.connection(host)
        if slot is None:
            self.shared.access.write(
                peer=host, op="connect", result="refused: too many connections"
            )
            return None
        return slot.release

    def _start_tcp_session(self, sock: socket.socket, release: Callable[[], None]) -> None:
        budget, max_header = self.shared.budget, self.config.limits.max_header
        conn = Connection(
            Role.SERVER, alloc=budget.alloc, max_header=max_header, window=self.config.window
        )
        self._start_session(SocketChannel(sock, conn, budget), release)

    def _start_quic_session(self, ch: QuicChannel) -> None:
        release = self._admit(peer_host(ch.peer))
        if release is None:
            ch.close()
            return
        self._start_session(ch, release)

    def _start_session(self, ch: ChannelBase, release: Callable[[], None]) -> None:
        session = Session(ch, self.shared, self.service, release)
        task = asyncio.get_running_loop().create_task(session.run())
        self._sessions[task] = session
        task.add_done_callback(self._sessions.pop)
        task.add_done_callback(
            lambda _: _connection_ended(ch.transport, ch.peer, ch.failure, ch.end_reason)
        )

    async def _watch_grants(self) -> None:
        """End connections whose token was revoked (or expired) since they were let in."""
        auth = self.shared.auth
        while True:
            await asyncio.sleep(GRANT_CHECK_EVERY)
            if auth.refresh():
                log.event("revocations-loaded", logging.DEBUG)
            for session in list(self._sessions.values()):
                if session.grant is None:
                    continue
                reason = auth.invalid_reason(session.grant)
                if reason is not None:
                    log.event("connection-revoked", peer=session.ch.peer, reason=reason)
                    session.end(AuthError(reason))

    async def start_admin(self) -> None:
        """Start the admin listener if configured; a failure to bind is logged, not fatal
        (the files are still served: an operator sees the error and the missing scrape)."""
        if self.admin is None:
            return
        try:
            address = await self.admin.start()
        except OSError as exc:
            where = self.config.admin.listen
            log.event("admin-not-listening", logging.ERROR, address=where, error=exc.strerror)
            return
        log.event("admin-listening", address=address)

    def _close_listeners(self) -> None:
        if self.admin is not None:
            self.admin.close()
        for task in self._tasks:
            task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._quic is not None:
            self._quic.close()

    async def shutdown(self) -> None:
        """Stop accepting, flush in-flight chunks, say goodbye, close everything."""
        self._close_listeners()
        if self._http is not None:
            await self._http.close()
        # Each session flushes its received chunks, finishes a commit in progress (and replies),
        # then says goodbye itself: a goodbye sent first would stop a commit's reply.
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=self.config.shutdown_grace)
        for session in list(self._sessions.values()):
            session.ch.abort()
        self.pool.shutdown(wait=True)
        await self.shared.events.stop()
        self.shared.access.close()


def _connection_ended(transport: str, peer: str, failure: FluxError | None, reason: str) -> None:
    """One line per connection once it is over: at INFO when the transport saw it fail (a
    reset, a TLS alert, a QUIC close with an error code, a handshake that never finished),
    at DEBUG when it was closed cleanly."""
    level = logging.DEBUG if failure is None else logging.INFO
    log.event("connection-ended", level, peer=peer, transport=transport, reason=reason)


def _handshake_failed(transport: str, peer: str, failure: FluxError) -> None:
    _connection_ended(transport, peer, failure, failure.message)


def banner(listeners: list[tuple[str, str]], config: ServerConfig, fingerprint: str | None) -> str:
    """The human summary of a started daemon: where, how, what it serves, who is let in."""
    names = {"tcp": "TCP+TLS", "tcp-plaintext": "TCP without TLS", "quic": "QUIC"}
    by_address: dict[str, list[str]] = {}
    for transport, address in listeners:
        by_address.setdefault(address, []).append(names.get(transport, transport))
    where = ", ".join(f"{a} ({' and '.join(t)})" for a, t in by_address.items())
    who = "anyone (no token needed)" if config.anonymous else "token holders"
    trust = f"certificate {fingerprint}" if fingerprint else "no TLS"
    return f"fluxd: serving {store_name(config)} on {where} to {who}; {trust}; Ctrl-C stops"


async def serve(
    config: ServerConfig,
    storage: Backend,
    ssl_context: ssl.SSLContext | None,
    certs: CertPaths | None,
    fingerprint: str | None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    server = FluxServer(config, storage, ssl_context, certs)
    listeners = await server.start()
    await server.start_admin()
    host = config.address[0]
    if config.anonymous and not is_loopback(host):
        log.event(
            "anonymous-access",
            logging.WARNING,
            detail=f"clients without a token are served on non-loopback address {host}",
            scope=config.auth.anonymous_scope,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for address in server.http_addresses:  # first: "listening" tells that the daemon is up
        log.event("listening-http", address=address, fingerprint=fingerprint)
    for transport, address in listeners:
        log.event(
            "listening",
            address=address,
            transport=transport,
            fingerprint=fingerprint,
            root=store_name(config),
            audience=server.shared.auth.verifier.audience,
            anonymous=config.anonymous,
        )
    if sys.stderr.isatty():  # a person started it: one line they can read among the JSON
        print(banner(listeners, config, fingerprint), file=sys.stderr, flush=True)
    # systemd (Type=notify): ready once listening; pings from this loop while it answers.
    notifier = Notifier.from_environ()
    notifier.ready(", ".join(f"{t} {a}" for t, a in listeners))
    keep_alive = loop.create_task(notifier.keep_alive())
    await stop.wait()
    notifier.stopping()
    log.event("stopping", sessions=len(server._sessions))
    await server.shutdown()
    keep_alive.cancel()
    notifier.close()
    log.event("stopped")


def store_name(config: ServerConfig) -> str:
    """Where files are kept, for the log: the root folder, or s3://bucket/prefix."""
    c = config.storage
    if c.backend == "s3":
        return f"s3://{c.bucket}/{c.prefix.strip('/')}".rstrip("/")
    return str(config.root)
