"""A minimal, strict HTTP/1.1 reader and writer for the admin listener: GET and HEAD only.

One request per connection (the answer says `Connection: close`): scrapers and the status
page's once-a-second fetch need no more, and it keeps the parser small. Anything else is
refused with the status code HTTP prescribes, before more than MAX_HEAD bytes are read.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

#: The request line and headers together; a longer head is refused (431).
MAX_HEAD = 8192
#: Seconds a client may take to send its request head.
HEAD_TIMEOUT = 10.0
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.[01]")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}

__all__ = ["BadRequest", "Request", "read_request", "response"]


class BadRequest(Exception):
    """A request that cannot be served; `status` is the answer's code."""

    def __init__(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Read and parse one request head.

    Raises:
        BadRequest: malformed (400), too large (431), with a body (413), too slow (408).
        asyncio.IncompleteReadError: the client closed before a whole head.
    """
    try:
        async with asyncio.timeout(HEAD_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(431, f"request head over {MAX_HEAD} bytes") from None
    except TimeoutError:
        raise BadRequest(408, "request head not received in time") from None
    return parse_head(head)


def parse_head(head: bytes) -> Request:
    """Parse a request head ending in CRLF CRLF (see `read_request`)."""
    if len(head) > MAX_HEAD:
        raise BadRequest(431, f"request head over {MAX_HEAD} bytes")
    line, *fields = head[:-4].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for field in fields:
        h = _HEADER.fullmatch(field)
        if h is None:
            raise BadRequest(400, "malformed header line")
        name = h.group(1).decode().lower()
        if name in headers:
            raise BadRequest(400, f"header {name} given twice")
        headers[name] = h.group(2).decode()
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise BadRequest(413, "the admin listener takes no request body")
    target = m.group(2).decode()
    path, _, query = target.partition("?")
    return Request(m.group(1).decode(), path, query, headers)


def response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
    extra: dict[str, str] | None = None,
) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
