"""fluxctl.connect: `auto` for one connection tries TCP first, QUIC only when TCP is slow or
fails, and a race between them leaves only the winner open."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fluxctl import connect as connect_module
from fluxctl.connect import ClientOptions, connect
from fluxctl.url import FluxURL
from fluxproto import ConnectError


class FakeChannel:
    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_when_both_connect_in_the_same_turn_the_loser_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[FakeChannel] = []

    async def main() -> FakeChannel:
        both_started = asyncio.Event()
        started: list[str] = []

        async def attempt(name: str) -> FakeChannel:
            started.append(name)
            if len(started) == 2:
                both_started.set()
            await both_started.wait()  # both finish in the same loop turn
            channel = FakeChannel(name)
            made.append(channel)
            return channel

        monkeypatch.setattr(connect_module, "connect_quic", lambda url, opts: attempt("quic"))
        monkeypatch.setattr(connect_module, "connect_tcp", lambda url, opts: attempt("tcp"))
        monkeypatch.setattr(connect_module, "HEAD_START", 0.0)
        return await connect(FluxURL.parse("flux://h/x"), ClientOptions())  # type: ignore[return-value]

    winner = asyncio.run(main())
    assert len(made) == 2
    assert not winner.aborted
    assert [c.aborted for c in made if c is not winner] == [True]


def attempts(
    monkeypatch: pytest.MonkeyPatch, tcp: Callable[[], Awaitable[FakeChannel]]
) -> list[str]:
    """Patch the connectors: TCP as `tcp` says, QUIC connecting at once; the transports tried."""
    tried: list[str] = []

    async def quic() -> FakeChannel:
        tried.append("quic")
        return FakeChannel("quic")

    async def tcp_attempt() -> FakeChannel:
        tried.append("tcp")
        return await tcp()

    monkeypatch.setattr(connect_module, "connect_quic", lambda url, opts: quic())
    monkeypatch.setattr(connect_module, "connect_tcp", lambda url, opts: tcp_attempt())
    return tried


def test_auto_connects_over_tcp_without_trying_quic_when_tcp_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def tcp() -> FakeChannel:
        return FakeChannel("tcp")

    tried = attempts(monkeypatch, tcp)
    winner = asyncio.run(connect(FluxURL.parse("flux://h/x"), ClientOptions()))
    assert (winner.transport, tried) == ("tcp", ["tcp"])


def test_auto_tries_quic_at_once_when_tcp_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def tcp() -> FakeChannel:
        raise ConnectError("no route")

    monkeypatch.setattr(connect_module, "HEAD_START", 3600.0)  # only TCP's failure starts QUIC
    tried = attempts(monkeypatch, tcp)
    winner = asyncio.run(connect(FluxURL.parse("flux://h/x"), ClientOptions()))
    assert (winner.transport, tried) == ("quic", ["tcp", "quic"])


def test_auto_tries_quic_when_tcp_is_not_up_within_the_head_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def tcp() -> FakeChannel:
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    monkeypatch.setattr(connect_module, "HEAD_START", 0.0)
    tried = attempts(monkeypatch, tcp)
    winner = asyncio.run(connect(FluxURL.parse("flux://h/x"), ClientOptions()))
    assert (winner.transport, tried) == ("quic", ["tcp", "quic"])
