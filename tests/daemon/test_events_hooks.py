"""The URL hook against a real HTTP server on loopback: what counts as delivered."""

from __future__ import annotations

import http.server
import socketserver
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from fluxd.events.hooks import HookFailed, _post, shown


class _Answer(http.server.BaseHTTPRequestHandler):
    reply = b""
    posted: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.posted.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.wfile.write(self.reply)

    def do_GET(self) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Answer]]]:
    handler = type("Handler", (_Answer,), {"posted": []})
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}/hook/SECRET", handler
        finally:
            srv.shutdown()
            thread.join()


def test_a_2xx_is_delivered(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    handler.reply = b"HTTP/1.0 204 No Content\r\n\r\n"
    _post(url, b"{}", b"key", "id1", 10)
    assert handler.posted == [b"{}"]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.0 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.0 500 Oops\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_a_redirect_or_a_broken_answer_is_a_failed_delivery(
    server: tuple[str, type[_Answer]], reply: bytes
) -> None:
    url, handler = server
    handler.reply = reply
    with pytest.raises(HookFailed) as failed:
        _post(url, b"{}", b"key", "id1", 10)
    assert "SECRET" not in str(failed.value)  # the URL's path may be a secret


def test_urls_are_shown_without_their_secrets() -> None:
    assert shown("https://user:pw@hooks.example.org:8443/services/T/B/SECRET") == (
        "https://hooks.example.org:8443/..."
    )
