"""One HTTPS connection: read one request, authorise it, answer GET or HEAD of a file, close.

Requests go to the same `FileService` as the flux protocol's (scope `read`, the same sandbox and
subject roots, the same access log). A file's bytes leave chunk by chunk, each checked against
its digest first (`DownloadHandle.chunks`); the response head waits for the first checked
chunk, so a file corrupt there is a 500, and corruption found later resets the connection: the
client sees a failed transfer, never wrong bytes. One request per connection (Connection:
close).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from fluxio.buffers import POOL
from fluxio.ratelimit import paced
from fluxproto import (
    AuthError,
    Conflict,
    ConnectionLost,
    FluxError,
    IntegrityError,
    NotFound,
    TransportError,
    Unavailable,
)

from ..auth.gate import ANONYMOUS, bearer_token
from ..auth.scopes import Grant, parse_scopes
from ..context import Shared
from ..service import Caller, FileService, Presence
from ..service.transfers import DownloadHandle
from ..storage.paths import normalize
from .stream import SocketStream
from .wire import (
    MAX_HEAD,
    REASONS,
    BadRequest,
    HttpRequest,
    Unsatisfiable,
    etag_of,
    http_date,
    matches,
    parse_head,
    parse_range,
    response_head,
)

#: Chunk size for a file indexed on first download (one with no manifest yet).
CHUNK_HINT = 4 * 1024 * 1024

__all__ = ["HttpConnection"]


class HttpConnection:
    """Serves one accepted connection (`run`), then closes it and gives back its slot.

    Args:
        anonymous: the grant of requests without a token, or None when a token is required.
    """

    def __init__(
        self,
        stream: SocketStream,
        shared: Shared,
        service: FileService,
        anonymous: Grant | None,
        release: Callable[[], None],
    ) -> None:
        self.stream, self.shared, self.service = stream, shared, service
        self.limits = shared.config.limits
        self.anonymous, self._release = anonymous, release
        self.presence = Presence(
            peer=lambda: stream.peer,
            heard=lambda: stream.last_receive,
            closed=lambda: stream.closed,
            end=lambda exc: stream.abort(),
        )
        self._head_sent = False
        self._method = "GET"
        self._in_service = False

    async def run(self) -> None:
        started = time.monotonic()
        caller: Caller | None = None
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                head = await self._read_head()
            req = parse_head(head)
            self._method = req.method
            if req.method not in ("GET", "HEAD"):
                raise BadRequest(f"{req.method} is not served: only GET and HEAD", 405)
            caller = Caller.of(self._grant(req.header("authorization")), "https", self.presence)
            await self._serve(caller, req)
            await self.stream.close()
        except (TimeoutError, ConnectionLost):
            self.stream.abort()  # no request came: nothing to answer
        except FluxError as exc:
            await self._failed(exc, caller, started)
        finally:
            self.stream.abort()
            self._release()

    async def _read_head(self) -> bytes:
        buf = b""
        while True:
            data = await self.stream.read_some(MAX_HEAD + 4 - len(buf))
            if not data:
                raise ConnectionLost("the client closed before a whole request")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return buf[:end]
            if len(buf) >= MAX_HEAD + 4:
                raise BadRequest(f"request head longer than {MAX_HEAD} bytes", 431)

    def _grant(self, authorization: str | None) -> Grant:
        if authorization is None:
            if self.anonymous is None:
                raise AuthError("this server requires a token: Authorization: Bearer TOKEN")
            return self.anonymous
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("Authorization must be Bearer TOKEN")
        return self.shared.auth.verifier.verify(token)

    async def _serve(self, caller: Caller, req: HttpRequest) -> None:
        if _is_root(req.path):
            raise NotFound("/ is a folder: only files are served over HTTP")
        slot = self.shared.admission.subject(caller.account)
        # From here the service records the request (a traversal path too), not `_failed`.
        self._in_service = True
        try:
            try:
                async with self.service.download(caller, req.path, CHUNK_HINT) as dl:
                    await self._respond(caller, req, dl)
            except Conflict as exc:  # a folder (or a link): no listings over HTTP
                raise NotFound(f"{exc.message}: only files are served over HTTP") from None
        finally:
            slot.release()

    async def _respond(self, caller: Caller, req: HttpRequest, dl: DownloadHandle) -> None:
        v = dl.version
        etag = etag_of(v.digest)
        fields = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Last-Modified", http_date(v.mtime_ns / 1e9)),
        ]
        none_match = req.header("if-none-match")
        if none_match is not None and matches(none_match, etag):
            await self._send_head(304, fields)
            return
        span = None
        wanted = req.header("range")
        if wanted is not None and req.header("if-range") in (None, etag):
            span = parse_range(wanted, v.size)
        start, end = span or (0, v.size - 1)
        fields.append(("Content-Length", str(end - start + 1)))
        if span is not None:
            fields.append(("Content-Range", f"bytes {start}-{end}/{v.size}"))
        status = 206 if span is not None else 200
        if req.method == "HEAD" or end < start:
            await self._send_head(status, fields)
            return
        await self._send_body(caller, dl, start, end, (status, fields))

    async def _send_body(
        self,
        caller: Caller,
        dl: DownloadHandle,
        start: int,
        end: int,
        head: tuple[int, list[tuple[str, str]]],
    ) -> None:
        """Bytes `start`..`end` (inclusive) of `dl`, each chunk checked before it leaves;
        `head` goes out once the first chunk passed."""
        size = dl.version.chunk_size
        first, last = start // size, end // size
        pace = self.shared.throttle.pacer(caller.account)
        timeout = self.limits.idle_timeout
        async with contextlib.aclosing(dl.chunks(range(first, last + 1))) as chunks:
            async for index, _, data in chunks:
                if not self._head_sent:
                    await self._send_head(*head)
                lo = start - index * size if index == first else 0
                hi = end - index * size + 1 if index == last else len(data)
                with memoryview(data) as whole, whole[lo:hi] as part:
                    await self.stream.write(part, timeout)
                _release(data)
                dl.delivered(hi - lo)
                reason = self.shared.auth.invalid_reason(caller.grant)
                if reason is not None:
                    raise AuthError(reason)
                await paced(pace, hi - lo)

    async def _send_head(self, status: int, fields: list[tuple[str, str]]) -> None:
        fields = [*fields, ("Date", http_date(time.time())), ("Connection", "close")]
        self._head_sent = True
        await self.stream.write(response_head(status, fields), self.limits.idle_timeout)

    async def _failed(self, exc: FluxError, caller: Caller | None, started: float) -> None:
        """Answer a request that failed with its status, unless the response was under way
        (or the connection is what failed): then reset the connection."""
        if not self._in_service:  # refused before a request began: a connect record
            duration = time.monotonic() - started
            self.service.refused(self.stream.peer, "https", caller, exc, duration)
        if self._head_sent or (isinstance(exc, TransportError) and not busy(exc)):
            self.stream.abort()
            return
        status, fields = error_response(exc)
        body = f"{exc.message}\n".encode()
        fields.append(("Content-Length", str(len(body))))
        with contextlib.suppress(FluxError):
            await self._send_head(status, fields)
            if self._method != "HEAD":
                await self.stream.write(body, self.limits.idle_timeout)
            await self.stream.close()


def error_response(exc: FluxError) -> tuple[int, list[tuple[str, str]]]:
    """The status and header fields answering a request that failed with `exc`."""
    fields = [("Content-Type", "text/plain; charset=utf-8")]
    if isinstance(exc, BadRequest):
        status = exc.status
    elif isinstance(exc, IntegrityError):
        status = 500  # the stored copy is bad: the server's fault, not the request's
    else:
        status = exc.code if exc.code in REASONS else 500
    if status == 401:
        fields.append(("WWW-Authenticate", 'Bearer realm="fluxd"'))
    elif status == 405:
        fields.append(("Allow", "GET, HEAD"))
    elif isinstance(exc, Unsatisfiable):
        fields.append(("Content-Range", f"bytes */{exc.size}"))
    elif status == 503:
        fields.append(("Retry-After", "1"))
    return status, fields


def busy(exc: FluxError) -> bool:
    """Whether `exc` says the daemon cannot take the request now (a 503 to answer), rather than
    that the connection failed."""
    return isinstance(exc, Unavailable)


def anonymous_grant(shared: Shared, loopback: bool) -> Grant | None:
    """The grant of requests without a token: as for the flux listener, `auth.anonymous`, or
    by default only when the HTTP listener is on a loopback address."""
    auth = shared.config.auth
    allowed = auth.anonymous if auth.anonymous is not None else loopback
    return Grant(ANONYMOUS, None, parse_scopes(auth.anonymous_scope)) if allowed else None


def _is_root(path: str) -> bool:
    try:
        return not normalize(path)
    except FluxError:  # a refused path: the service says so, and records it
        return False


def _release(data: object) -> None:
    if isinstance(data, memoryview):
        POOL.put(data)
