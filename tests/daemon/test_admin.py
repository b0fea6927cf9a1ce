"""The admin listener's rules without a daemon: who needs a token, what the parser refuses."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fluxd.admin import server, token_required
from fluxd.admin.http import MAX_HEAD, BadRequest, parse_head
from fluxd.admin.metrics import result_label
from fluxd.admin.server import StorageCheck
from fluxd.config import AdminConfig, AuthConfig, ServerConfig
from fluxproto import ConfigError, StorageError


def config(admin: str, anonymous: bool | None = None) -> ServerConfig:
    return ServerConfig(admin=AdminConfig(admin), auth=AuthConfig(anonymous=anonymous))


@pytest.mark.parametrize(
    ("listen", "anonymous", "needed"),
    [
        ("127.0.0.1:7071", None, False),
        ("[::1]:7071", None, False),
        ("127.0.0.1:7071", False, True),
        ("0.0.0.0:7071", None, True),
        ("192.0.2.1:7071", True, True),
        ("[::]:7071", None, True),
    ],
)
def test_a_token_is_needed_off_loopback(listen: str, anonymous: bool | None, needed: bool) -> None:
    assert token_required(config(listen, anonymous)) is needed


def test_admin_listen_is_checked_and_defaults_to_the_next_port() -> None:
    assert AdminConfig("127.0.0.1").address == ("127.0.0.1", 7071)
    assert AdminConfig().address == ("127.0.0.1", 7071)
    with pytest.raises(ConfigError, match=r"^admin\.listen: "):
        AdminConfig("a:b:c")


def test_parser_accepts_a_plain_get() -> None:
    req = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    assert (req.method, req.path, req.query, req.headers["host"]) == ("GET", "/metrics", "x=1", "a")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /x\r\n\r\n", 400),
        (b"get /x HTTP/1.1\r\n\r\n", 400),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"GET /x HTTP/2.0\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nA: 1\r\na: 2\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nA: \x00\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 413),
        (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
        (b"GET /x HTTP/1.1\r\nA: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    ],
)
def test_parser_refuses(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as info:
        parse_head(head)
    assert info.value.status == status


def test_result_labels_are_bounded() -> None:
    assert result_label("ok") == "ok"
    assert result_label(None) == "cancelled"
    assert result_label("error 404: /a is not there") == "error 404"
    assert result_label("refused: too many connections") == "refused"


class Store:
    """A storage whose check (as S3's) counts its calls and waits for `go` while `held`."""

    def __init__(self) -> None:
        self.calls, self.problem = 0, ""
        self.held, self.go, self.entered = False, threading.Event(), threading.Event()

    def check(self) -> None:
        self.calls += 1
        self.entered.set()
        if self.held:
            assert self.go.wait(30)
        if self.problem:
            raise StorageError(self.problem)


def test_a_storage_check_is_kept_while_fresh_and_given_while_the_next_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, pool = Store(), ThreadPoolExecutor(1)
    check = StorageCheck(store, pool)

    async def main() -> None:
        assert await check.problem() is None  # the first is waited for
        assert await check.problem() is None and store.calls == 1  # fresh: kept
        monkeypatch.setattr(server, "CHECK_FRESH", 0.0)  # from now on every answer is old
        store.held, store.problem = True, "store down"
        store.entered.clear()
        answers = [await check.problem() for _ in range(5)]
        assert answers == [None] * 5  # the last answer, while the next check runs
        assert store.entered.wait(30) and store.calls == 2  # one check, not five
        store.go.set()
        while await check.problem() is None:
            await asyncio.sleep(0)  # until the held check's answer lands
        assert await check.problem() == "store down"

    try:
        asyncio.run(main())
    finally:
        store.go.set()
        pool.shutdown()


def test_a_storage_check_too_old_is_waited_for_and_a_hung_one_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, pool = Store(), ThreadPoolExecutor(1)
    check = StorageCheck(store, pool)
    monkeypatch.setattr(server, "CHECK_FRESH", 0.0)
    monkeypatch.setattr(server, "CHECK_STALE", 0.0)
    monkeypatch.setattr(server, "CHECK_TIMEOUT", 0.2)

    async def main() -> None:
        assert await check.problem() is None
        store.held = True
        store.entered.clear()
        assert await check.problem() == "no answer within 0.2 s"
        assert await check.problem() == "no answer within 0.2 s"
        # The hung check is waited for again, not queued behind itself.
        assert store.entered.wait(30) and store.calls == 2

    try:
        asyncio.run(main())
    finally:
        store.go.set()
        pool.shutdown()
