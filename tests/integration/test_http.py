"""HTTP downloads against a real daemon: GET, HEAD, ranges, ETag, tokens, the traversal corpus,
a corrupt stored file (never served), a folder, and the S3 backend."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from fluxd.http.wire import MAX_FIELDS, MAX_HEAD
from tests import hostile_paths

from .conftest import Daemon, Fluxctl, wait_for
from .test_auth import daemon_key, issue, mint
from .test_s3_nodes import creds, s3_config

MiB = 1024 * 1024


def http_daemon(
    make_daemon: Callable[..., Daemon], tmp_path: Path, *args: str, extra: str = ""
) -> Daemon:
    config = tmp_path / "http.toml"
    config.write_text('[http]\nlisten = "127.0.0.1:0"\n' + extra)
    return make_daemon("--config", str(config), *args)


def port_of(d: Daemon) -> int:
    return int(d.events("listening-http")[0]["address"].rsplit(":", 1)[1])


def tls(d: Daemon) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(d.certs / "ca.pem"))


def get(
    d: Daemon, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port_of(d), context=tls(d), timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_get(d: Daemon, head: str) -> bytes:
    """Everything the daemon sends for request `head` until it closes (or resets) the
    connection; a path alone is a GET of it."""
    if head.startswith("/"):
        head = f"GET {head} HTTP/1.1\r\nHost: x\r\n\r\n"
    got = b""
    plain = socket.create_connection(("127.0.0.1", port_of(d)), timeout=30)
    with tls(d).wrap_socket(plain, server_hostname="127.0.0.1") as s:
        s.sendall(head.encode())
        try:
            while data := s.recv(1 << 20):
                got += data
        except (OSError, ssl.SSLError):
            pass  # a reset: what arrived before it is what was served
    return got


@pytest.fixture
def served(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    d = http_daemon(make_daemon, tmp_path)
    (d.root / "f.bin").write_bytes(os.urandom(3 * MiB + 17))
    (d.root / "folder").mkdir()
    return d


def test_get_head_and_etag(served: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    want = (served.root / "f.bin").read_bytes()
    status, headers, body = get(served, "/f.bin")
    assert (status, body == want, headers["content-length"]) == (200, True, str(len(want)))
    assert headers["etag"].startswith('"xxh128:') and headers["accept-ranges"] == "bytes"
    assert "last-modified" in headers
    head = get(served, "/f.bin", method="HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["etag"] == headers["etag"]
    # The ETag is the digest fluxctl sees for the same file.
    res = fluxctl("stat", "--json", "--pin", str(served.fingerprint), served.url("/f.bin"))
    if res.code == 0 and "digest" in res.stdout:
        assert headers["etag"].strip('"').split(":")[1] in res.stdout
    again = get(served, "/f.bin", {"If-None-Match": headers["etag"]})
    assert again[0] == 304 and again[2] == b""


@pytest.mark.parametrize(
    ("spec", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=1048570-2097160", (1048570, 2097160)),
        ("bytes=-100", (-100, None)),
        ("bytes=3145700-", (3145700, None)),
        ("bytes=5-99999999", (5, None)),
    ],
)
def test_ranges(served: Daemon, spec: str, span: tuple[int, int | None]) -> None:
    want = (served.root / "f.bin").read_bytes()
    start, end = span
    part = want[start:] if end is None else want[start : end + 1]
    status, headers, body = get(served, "/f.bin", {"Range": spec})
    assert status == 206 and body == part
    first = start % len(want)
    assert headers["content-range"] == f"bytes {first}-{first + len(part) - 1}/{len(want)}"


def test_unsatisfiable_and_multiple_ranges(served: Daemon) -> None:
    size = (served.root / "f.bin").stat().st_size
    for spec in (f"bytes={size}-", "bytes=-0", "bytes=9-3", "bytes=x-y"):
        status, headers, _ = get(served, "/f.bin", {"Range": spec})
        assert (status, headers.get("content-range")) == (416, f"bytes */{size}"), spec
    # Several ranges: the whole file, 200 (documented in the README).
    status, _, body = get(served, "/f.bin", {"Range": "bytes=0-1,5-6"})
    assert status == 200 and len(body) == size


def test_errors(served: Daemon) -> None:
    assert get(served, "/nothing")[0] == 404
    assert get(served, "/folder")[0] == 404
    assert get(served, "/")[0] == 404
    assert get(served, "/f.bin", method="POST")[0] == 405
    assert get(served, "/f.bin", method="DELETE")[1]["allow"] == "GET, HEAD"
    for bad in (
        "GET /f.bin HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\n",
        "GET /f.bin HTTP/1.1\r\n\r\n",  # no Host
        "GET /f.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET f.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        assert raw_get(served, bad).startswith(b"HTTP/1.1 400 "), bad
    assert raw_get(served, "GET /f.bin HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")


def test_head_limits_are_431(served: Daemon) -> None:
    long = "GET /f.bin HTTP/1.1\r\nHost: x\r\nX-Pad: " + "a" * MAX_HEAD + "\r\n\r\n"
    assert raw_get(served, long).startswith(b"HTTP/1.1 431 "), "a head over MAX_HEAD"
    fields = "".join(f"X-{i}: {i}\r\n" for i in range(MAX_FIELDS))
    many = f"GET /f.bin HTTP/1.1\r\nHost: x\r\n{fields}\r\n"
    assert raw_get(served, many).startswith(b"HTTP/1.1 431 "), "more than MAX_FIELDS"
    just = "GET /f.bin HTTP/1.1\r\nHost: x\r\nX-Pad: " + "a" * (MAX_HEAD - 100) + "\r\n\r\n"
    assert raw_get(served, just).startswith(b"HTTP/1.1 200 ")


def test_tokens(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = http_daemon(make_daemon, tmp_path, "--no-anonymous")
    (d.root / "f.txt").write_text("secret")
    assert get(d, "/f.txt")[0] == 401
    assert "bearer" in get(d, "/f.txt")[1]["www-authenticate"].lower()
    assert get(d, "/f.txt", {"Authorization": "Bearer nonsense"})[0] == 401
    assert get(d, "/f.txt", {"Authorization": "Basic dTpw"})[0] == 401
    expired = mint(daemon_key(d), d, exp=int(time.time()) - 60, iat=int(time.time()) - 120)
    assert get(d, "/f.txt", {"Authorization": f"Bearer {expired}"})[0] == 401
    lister = issue(d, "lister", "--scope", "list:/")
    assert get(d, "/f.txt", {"Authorization": f"Bearer {lister}"})[0] == 403
    reader = issue(d, "reader", "--scope", "read:/")
    assert get(d, "/f.txt", {"Authorization": f"Bearer {reader}"})[2] == b"secret"


def test_a_subject_over_its_connections_is_told_to_retry(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = http_daemon(make_daemon, tmp_path, extra="[limits]\nconnections_per_subject = 1\n")
    (d.root / "big.bin").write_bytes(os.urandom(64 * MiB))

    def held_ended() -> bool:
        return any(e.get("op") == "download" for e in d.events("access"))

    plain = socket.create_connection(("127.0.0.1", port_of(d)), timeout=30)
    with tls(d).wrap_socket(plain, server_hostname="127.0.0.1") as held:
        held.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held.recv(12) == b"HTTP/1.1 200"  # serving, and not read further: slot held
        status, headers, body = get(d, "/big.bin")
        assert (status, headers["retry-after"]) == (503, "1"), body
        assert b"try again later" in body
        assert not held_ended()
    wait_for(held_ended, what="the held download's access line")  # its slot is given back
    # The refusal came before any request: a connect record, as over flux (logged before the
    # held download's, which the log reader has now seen).
    refused = [e for e in d.events("access") if e.get("op") == "connect"]
    assert [(e["transport"], e["result"][:9]) for e in refused] == [("https", "error 503")]
    assert get(d, "/big.bin", method="HEAD")[0] == 200


def test_traversal_corpus_is_refused_as_over_flux(served: Daemon, tmp_path: Path) -> None:
    hostile_paths.plant_symlinks(served.root, tmp_path / "outside")
    answers = {}
    for path in hostile_paths.ALL:
        target = "/" + quote(path.lstrip("/"), safe="/", errors="surrogatepass")
        answers[path] = get(served, target)[0]
    # The flux protocol answers every one of them 403 (tests/integration/test_sandbox.py).
    leaks = {p: s for p, s in answers.items() if s != 403}
    assert leaks == {}

    # Each refusal is a download request in the access log, as over flux (read from the
    # daemon's log by a thread: the last lines may still be on their way).
    def logged() -> list[str]:
        return [e["result"][:9] for e in served.events("access") if e.get("op") == "download"]

    wait_for(lambda: len(logged()) >= len(hostile_paths.ALL), what="every refusal's line")
    assert logged() == ["error 403"] * len(hostile_paths.ALL)


def test_a_corrupt_stored_file_is_never_served(
    served: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "rot.bin"
    src.write_bytes(os.urandom(4 * MiB + 5))
    sent = fluxctl("send", "--chunk-size", "1M", str(src), served.url("/rot.bin"))
    assert sent.code == 0, sent.stderr
    path, want = served.root / "rot.bin", src.read_bytes()
    st = path.stat()
    # In the last chunk (found mid-stream: the connection breaks), then in the first (500).
    for where, mid_stream in ((len(want) - 3, True), (10, False)):
        data = bytearray(want)
        data[where] ^= 0xFF
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot leaves mtime alone
        head, _, body = raw_get(served, "/rot.bin").partition(b"\r\n\r\n")
        if mid_stream:
            assert head.startswith(b"HTTP/1.1 200"), head
            assert len(body) < len(want) and want.startswith(body), "wrong bytes served"
        else:
            assert head.startswith(b"HTTP/1.1 500") and b"corrupt" in body, head
    path.write_bytes(want)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert get(served, "/rot.bin")[2] == want


def test_s3_backend(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    s3_engine: object,
    s3_prefix: str,
    tmp_path: Path,
) -> None:
    config = s3_config(tmp_path / "s3.toml", s3_engine, s3_prefix)  # type: ignore[arg-type]
    config.write_text(config.read_text() + '[http]\nlisten = "127.0.0.1:0"\n')
    d = make_daemon("--config", str(config), env=creds(s3_engine))  # type: ignore[arg-type]
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(6 * MiB + 3))
    res = fluxctl("send", "--pin", str(d.fingerprint), str(src), d.url("/up.bin"))
    assert res.code == 0, res.stderr
    status, _, body = get(d, "/up.bin")
    assert status == 200 and body == src.read_bytes()
    status, _, body = get(d, "/up.bin", {"Range": "bytes=-10"})
    assert status == 206 and body == src.read_bytes()[-10:]
