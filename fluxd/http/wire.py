"""HTTP/1.1 on the wire, sans I/O: a strict, bounded request-head parser, Range and conditional
headers, and response heads. Only what GET and HEAD of a file need (RFC 9110, RFC 9112).

Strict by design: anything a lenient parser would have to guess at (a folded header, a space
before the colon, a body on a GET, two Host headers, a target that is not origin-form) is a
400, so no proxy in front of the daemon can read a request differently from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

from fluxproto import FluxError

#: Longest request head (request line and headers) read before answering 431.
MAX_HEAD = 16 * 1024
#: Most header fields in one request.
MAX_FIELDS = 64

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_RANGE = re.compile(r"(\d*)-(\d*)", re.ASCII)
#: Digits beyond this many name a position past the end of any file (and int() of thousands of
#: digits raises ValueError).
_MAX_DIGITS = 18
REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}

__all__ = [
    "MAX_HEAD",
    "BadRequest",
    "HttpRequest",
    "Unsatisfiable",
    "etag_of",
    "parse_head",
    "parse_range",
    "response_head",
]


class BadRequest(FluxError):
    """The request cannot be served as written; `code` is the HTTP status to answer."""

    code = 400

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Unsatisfiable(FluxError):
    """A bytes Range none of whose ranges can be served (416) in a file of `size` bytes."""

    code = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True)
class HttpRequest:
    """A parsed request head: `path` is the decoded target path (the query dropped), for the
    same sandbox as the flux protocol's paths; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def parse_head(head: bytes) -> HttpRequest:
    """Parse a request head (everything before the blank line, which is not included).

    Raises:
        BadRequest: malformed (400), or an HTTP version other than 1.x (505).
    """
    lines = head.split(b"\r\n")
    method, path, version = _request_line(lines[0])
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_FIELDS:
        raise BadRequest(f"more than {MAX_FIELDS} header fields", 431)
    for line in lines[1:]:
        name, value = _field(line)
        if name in headers:
            raise BadRequest(f"header {name} appears twice")
        headers[name] = value
    if version == "HTTP/1.1" and "host" not in headers:
        raise BadRequest("an HTTP/1.1 request needs a Host header")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise BadRequest("a request body is not accepted")
    return HttpRequest(method, path, headers)


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not re.fullmatch(rb"HTTP/\d\.\d", version):
        raise BadRequest("malformed HTTP version")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(f"{version.decode()} is not supported: use HTTP/1.1", 505)
    if not _TARGET.fullmatch(target) or b"#" in target:
        raise BadRequest("the request target must be a path starting with /")
    raw = target.split(b"?", 1)[0]
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request path is not UTF-8 once percent-decoded") from None
    return method.decode(), path, version.decode()


def _field(line: bytes) -> tuple[str, str]:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise BadRequest("malformed header field")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise BadRequest(f"header {name.decode()} has a control character")
    return name.decode().lower(), value.decode("latin-1")


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The one byte range [start, end] (inclusive) a Range header asks of a `size`-byte file,
    or None to send the whole file: another unit than bytes, or several ranges (a server may
    ignore Range; one multipart answer is not worth its cost here).

    Raises:
        Unsatisfiable: a malformed bytes range, or one that starts at or past the end.
    """
    unit, eq, spec = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",")]
    if len(specs) != 1:
        return None
    m = _RANGE.fullmatch(specs[0])
    if m is None or not (m.group(1) or m.group(2)):
        raise Unsatisfiable(f"malformed range {specs[0]!r}", size)
    first, last = m.group(1), m.group(2)
    if not first:  # a suffix: the last N bytes
        n = _position(last)
        if n == 0 or size == 0:
            raise Unsatisfiable(f"range -{n} of an empty selection", size)
        return max(0, size - n), size - 1
    start = _position(first)
    end = size - 1 if not last else min(_position(last), size - 1)
    if last and _position(last) < start:
        raise Unsatisfiable(f"range {start}-{last} ends before it starts", size)
    if start >= size:
        raise Unsatisfiable(f"range starts at {start}, the file has {size} bytes", size)
    return start, end


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def etag_of(digest: bytes) -> str:
    """The strong ETag of a file version: its whole-file digest."""
    return f'"xxh128:{digest.hex()}"'


def matches(header: str, etag: str) -> bool:
    """Whether an If-None-Match / If-Range list names `etag` (or is `*`)."""
    names = [t.strip() for t in header.split(",")]
    return "*" in names or etag in names or f"W/{etag}" in names


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def response_head(status: int, fields: list[tuple[str, str]]) -> bytes:
    """A response's status line and header fields, with the blank line after them."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
