"""fluxctl.connect: the race between QUIC and TCP in `auto` leaves only the winner open."""

from __future__ import annotations

import asyncio

import pytest

from fluxctl import connect as connect_module
from fluxctl.connect import ClientOptions, connect
from fluxctl.url import FluxURL


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
        monkeypatch.setattr(connect_module, "QUIC_HEAD_START", 0.0)
        return await connect(FluxURL.parse("flux://h/x"), ClientOptions())  # type: ignore[return-value]

    winner = asyncio.run(main())
    assert len(made) == 2
    assert not winner.aborted
    assert [c.aborted for c in made if c is not winner] == [True]
