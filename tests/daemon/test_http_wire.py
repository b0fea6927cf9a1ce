"""fluxd.http.wire: the strict request-head parser (every 400, 431 and 505 it answers), Range
and conditional headers, response heads; any bytes give a request or the module's own error."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fluxd.http.wire import (
    MAX_FIELDS,
    BadRequest,
    HttpRequest,
    Unsatisfiable,
    etag_of,
    matches,
    parse_head,
    parse_range,
    response_head,
)
from tests.fuzzing import FUZZ


def head(line: str = "GET /a HTTP/1.1", *fields: str) -> bytes:
    """A request head as the listener hands it over: the lines, without the blank line."""
    return "\r\n".join([line, *fields]).encode("latin-1")


def status_of(raw: bytes) -> int:
    with pytest.raises(BadRequest) as caught:
        parse_head(raw)
    return caught.value.status


# Requests that parse


def test_get_with_host() -> None:
    req = parse_head(head("GET /dir/f.bin HTTP/1.1", "Host: example", "Range: bytes=0-9"))
    assert req == HttpRequest("GET", "/dir/f.bin", {"host": "example", "range": "bytes=0-9"})
    assert req.header("range") == "bytes=0-9"
    assert req.header("if-range") is None


def test_header_names_are_lower_case_and_values_trimmed() -> None:
    req = parse_head(head("HEAD / HTTP/1.1", "HOST:\t x \t", "X-Odd-Name:", "If-None-Match: *"))
    assert req.method == "HEAD"
    assert req.headers == {"host": "x", "x-odd-name": "", "if-none-match": "*"}


def test_path_is_percent_decoded_utf8_without_the_query() -> None:
    req = parse_head(head("GET /caf%C3%A9/a%20b?x=1&y=%ff HTTP/1.1", "Host: x"))
    assert req.path == "/café/a b"


def test_http10_needs_no_host() -> None:
    assert parse_head(head("GET /a HTTP/1.0")).path == "/a"


def test_other_methods_parse_here_and_are_refused_by_the_connection() -> None:
    assert parse_head(head("DELETE /a HTTP/1.1", "Host: x")).method == "DELETE"


def test_empty_body_declared_is_accepted() -> None:
    assert parse_head(head("GET /a HTTP/1.1", "Host: x", "Content-Length: 0")).path == "/a"


def test_latin1_and_obs_text_in_values() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Note: caf\xe9"
    assert parse_head(raw).header("x-note") == "café"


def test_exactly_max_fields() -> None:
    fields = ["Host: x", *(f"X-{i}: {i}" for i in range(MAX_FIELDS - 1))]
    assert len(parse_head(head("GET /a HTTP/1.1", *fields)).headers) == MAX_FIELDS


# 400, 431, 505

BAD_REQUEST_LINES = [
    "GET /a",  # two parts
    "GET /a HTTP/1.1 extra",  # four parts
    "GET  /a HTTP/1.1",  # two spaces
    "GET /a b HTTP/1.1",  # a space in the target
    " GET /a HTTP/1.1",
    "",
    "G(T /a HTTP/1.1",  # not a token
    "GET /a HTTP/1",
    "GET /a HTTP/11.1",
    "GET /a http/1.1",
    "GET /a HTTP/1.1 ",
    "GET http://host/a HTTP/1.1",  # absolute-form
    "GET * HTTP/1.1",  # asterisk-form
    "GET a HTTP/1.1",
    "GET /a#frag HTTP/1.1",
    "GET /a\x7f HTTP/1.1",
    "GET /caf\xe9 HTTP/1.1",  # a raw non-ASCII byte in the target
    "GET /%ff HTTP/1.1",  # not UTF-8 once decoded
    "GET /%C3 HTTP/1.1",
]


@pytest.mark.parametrize("line", BAD_REQUEST_LINES)
def test_bad_request_line(line: str) -> None:
    assert status_of(head(line, "Host: x")) == 400


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/3.0", "HTTP/1.2"])
def test_other_versions_are_505(version: str) -> None:
    assert status_of(head(f"GET /a {version}", "Host: x")) == 505


BAD_FIELDS = [
    ["Host : x"],  # a space before the colon
    ["Host: x", " folded"],  # obs-fold
    ["Host: x", "\tfolded"],
    ["Host x"],  # no colon
    [": x", "Host: x"],  # no name
    ["Ho(st: x"],
    ["Host: x", "X-A: a\x00b"],  # control characters
    ["Host: x", "X-A: a\x1bb"],
    ["Host: x", "X-A: a\x7fb"],
    ["Host: x", "X-A: a\rb"],
    ["Host: x", "X-A: a\nb"],
    ["Host: x", ""],  # an empty line inside the head
    ["Host: x", "host: y"],  # twice, whatever the case
    ["Host: x", "Range: bytes=0-1", "RANGE: bytes=2-3"],
    [],  # HTTP/1.1 without Host
    ["X-Host: x"],
    ["Host: x", "Transfer-Encoding: chunked"],  # a body
    ["Host: x", "Content-Length: 5"],
    ["Host: x", "Content-Length: 00"],
    ["Host: x", "Content-Length: "],
]


@pytest.mark.parametrize("fields", BAD_FIELDS)
def test_bad_fields_are_400(fields: list[str]) -> None:
    assert status_of(head("GET /a HTTP/1.1", *fields)) == 400


def test_more_than_max_fields_is_431() -> None:
    fields = ["Host: x", *(f"X-{i}: {i}" for i in range(MAX_FIELDS))]
    assert status_of(head("GET /a HTTP/1.1", *fields)) == 431


def test_bad_request_is_the_module_error_with_a_message() -> None:
    with pytest.raises(BadRequest, match="Host"):
        parse_head(head("GET /a HTTP/1.1"))


# Range

SIZE = 100


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=0-0", (0, 0)),
        ("bytes=99-99", (99, 99)),
        ("bytes=10-", (10, 99)),
        ("bytes=90-1000", (90, 99)),  # clamped to the end
        ("bytes=-10", (90, 99)),  # the last 10 bytes
        ("bytes=-1000", (0, 99)),
        ("BYTES=1-2", (1, 2)),
        (" bytes = 1-2 ", (1, 2)),
        ("bytes=0-" + "9" * 5000, (0, 99)),  # a last position of any length
        ("bytes=-" + "9" * 5000, (0, 99)),
        ("bytes=" + "0" * 5000 + "5-" + "0" * 5000 + "7", (5, 7)),  # leading zeros
    ],
)
def test_one_range(value: str, span: tuple[int, int]) -> None:
    assert parse_range(value, SIZE) == span


@pytest.mark.parametrize(
    "value",
    [
        "items=0-1",  # another unit
        "bytes 0-1",  # not a bytes range at all
        "bytes=0-1,5-6",  # several ranges: the whole file
        "bytes=0-1, -5",
        "bytes=0-1,junk",  # several, even when one is malformed
    ],
)
def test_whole_file(value: str) -> None:
    assert parse_range(value, SIZE) is None


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("bytes=", SIZE),
        ("bytes=-", SIZE),
        ("bytes=a-b", SIZE),
        ("bytes=1-2-3", SIZE),
        ("bytes=+1-2", SIZE),
        ("bytes=1 -2", SIZE),
        ("bytes=5-4", SIZE),  # ends before it starts
        ("bytes=100-", SIZE),  # starts at the end
        ("bytes=100-200", SIZE),
        ("bytes=" + "9" * 5000 + "-", SIZE),  # far past the end
        ("bytes=-0", SIZE),  # the last 0 bytes
        ("bytes=0-", 0),  # nothing in an empty file
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable(value: str, size: int) -> None:
    with pytest.raises(Unsatisfiable) as caught:
        parse_range(value, size)
    assert caught.value.size == size


# ETag, conditions, response heads


def test_etag_is_the_digest() -> None:
    assert etag_of(bytes.fromhex("00ff" * 8)) == '"xxh128:' + "00ff" * 8 + '"'


@pytest.mark.parametrize(
    ("header", "hit"),
    [
        ('"xxh128:ab"', True),
        ('"other", "xxh128:ab"', True),
        ('W/"xxh128:ab"', True),
        ("*", True),
        ('"xxh128:a"', False),
        ("xxh128:ab", False),
        ("", False),
    ],
)
def test_matches(header: str, hit: bool) -> None:
    assert matches(header, '"xxh128:ab"') is hit


def test_response_head() -> None:
    raw = response_head(206, [("Content-Range", "bytes 0-9/100"), ("Content-Length", "10")])
    assert raw == (
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\n"
        b"Content-Length: 10\r\n\r\n"
    )
    assert response_head(599, []) == b"HTTP/1.1 599 Error\r\n\r\n"


# Any input: a request or the module's own error, nothing else


def _parsed_or_refused(raw: bytes) -> None:
    try:
        req = parse_head(raw)
    except BadRequest as exc:
        assert exc.status in (400, 431, 505)
        return
    assert req.method in raw.decode("latin-1")
    assert req.path.startswith("/")
    assert len(req.headers) <= MAX_FIELDS
    assert all(name == name.lower() for name in req.headers)


@FUZZ
@given(st.binary(max_size=2048))
@example(b"GET / HTTP/1.1\r\nHost: x")
@example(b"GET /%80 HTTP/1.1\r\nHost: x")
def test_any_bytes(raw: bytes) -> None:
    _parsed_or_refused(raw)


_PIECES = st.sampled_from(
    [b"GET", b"HEAD", b" ", b"/", b"/a", b"%", b"%2", b"%c3%a9", b"?", b"#", b"HTTP/1.1",
     b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"Host", b"Content-Length", b"Transfer-Encoding",
     b":", b": x", b"0", b"\t", b"\x00", b"\xff", b"Range: bytes=0-1"]
)  # fmt: skip


@FUZZ
@given(st.lists(_PIECES, max_size=40).map(b"".join))
def test_request_like_bytes(raw: bytes) -> None:
    _parsed_or_refused(raw)


@FUZZ
@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=64), st.integers(0, 1 << 40))
@example("bytes=0-" + "9" * 5000, 10)
@example("bytes=" + "9" * 5000 + "-", 10)
def test_any_range(value: str, size: int) -> None:
    try:
        span = parse_range(value, size)
    except Unsatisfiable as exc:
        assert exc.size == size
        return
    if span is not None:
        start, end = span
        assert 0 <= start <= end < size
