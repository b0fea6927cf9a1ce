"""fluxctl.nodes and Retrier across nodes: a name that resolves to several addresses (a fake
resolver here) or lists its nodes in the config file; connecting passes over nodes that do
not answer, and an attempt that failed is retried on the next node, its certificate checked
against the name all the same."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from fluxctl import connect as connect_module
from fluxctl import retry as retry_module
from fluxctl.connect import ClientOptions, connect_tcp
from fluxctl.nodes import MAX_NODES, NodeRing, configured_nodes
from fluxctl.retry import Retrier
from fluxctl.trust import TrustPolicy
from fluxctl.url import FluxURL
from fluxproto import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    FluxError,
    TrustError,
)

URL = FluxURL.parse("flux://store.example:7070/f")
TWO = ["10.0.0.1", "10.0.0.2"]


def resolver(addresses: list[str], asked: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if asked is not None:
            asked.append(f"{host}:{port}")
        if not addresses:
            raise OSError("no such name")
        return addresses

    return resolve


# --- NodeRing ---------------------------------------------------------------------------------


def test_a_name_with_several_addresses_is_several_nodes() -> None:
    ring = NodeRing(URL, resolver=resolver(TWO))

    async def main() -> list[FluxURL]:
        seen = [await ring.current()]
        ring.move_on()
        seen.append(await ring.current())
        ring.move_on()  # after the last, the first
        seen.append(await ring.current())
        return seen

    first, second, again = asyncio.run(main())
    assert [u.dial for u in (first, second, again)] == [
        ("10.0.0.1", 7070),
        ("10.0.0.2", 7070),
        ("10.0.0.1", 7070),
    ]
    assert {(u.host, u.port, u.path) for u in (first, second)} == {("store.example", 7070, "/f")}
    assert ring.count == 2 and ring.node == "10.0.0.1:7070"


@pytest.mark.parametrize("addresses", [["10.0.0.1"], []])
def test_a_name_with_one_address_or_none_is_dialled_by_name(addresses: list[str]) -> None:
    ring = NodeRing(URL, resolver=resolver(addresses))
    assert asyncio.run(ring.current()) == URL
    assert ring.count == 1 and ring.node is None


def test_listed_nodes_come_first_and_the_name_is_not_resolved() -> None:
    asked: list[str] = []
    ring = NodeRing(URL, [("a", 1), ("b", 2)], resolver(TWO, asked))
    assert asyncio.run(ring.current()).dial == ("a", 1)
    assert asked == []
    assert ring.node == "a:1"


# --- configured_nodes ---------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_nodes_from_the_config_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[servers."store.example:7070"]\n'
        'nodes = ["n1.example", "10.0.0.2:7071", "[::1]:7072", "n1.example:7070"]\n',
    )
    nodes = configured_nodes("store.example", 7070, path)
    assert nodes == (("n1.example", 7070), ("10.0.0.2", 7071), ("::1", 7072))
    assert configured_nodes("other.example", 7070, path) == ()
    assert configured_nodes("store.example", 7070, tmp_path / "absent.toml") == ()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ('"n1:7070"', "must be a list of 1 to"),
        ("[]", "must be a list of 1 to"),
        (str([f"n{i}" for i in range(MAX_NODES + 1)]).replace("'", '"'), "must be a list"),
        ('["n1", 7071]', "must be HOST:PORT strings, not 7071"),
        ('["n1:x"]', "not a HOST:PORT address"),
        ('["n1:0"]', "port 0"),
    ],
)
def test_bad_nodes_in_the_config_file_are_one_line_errors(
    tmp_path: Path, value: str, match: str
) -> None:
    path = write_config(tmp_path, f'[servers."store.example:7070"]\nnodes = {value}\n')
    with pytest.raises(ConfigError, match=match) as info:
        configured_nodes("store.example", 7070, path)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


# --- Retrier.connect_node -----------------------------------------------------------------------


def retrier(addresses: list[str] = TWO, **opts: Any) -> Retrier:
    return Retrier(URL, ClientOptions(**opts), resolver=resolver(addresses))


def connector(outcomes: dict[str, FluxError | None], tried: list[str]) -> Any:
    async def connect_one(url: FluxURL) -> FluxURL:
        tried.append(url.where)
        exc = outcomes.get(url.dial[0])
        if exc is not None:
            raise exc
        return url

    return connect_one


def test_connecting_passes_over_a_node_that_does_not_answer() -> None:
    r, tried = retrier(), []
    down = {"10.0.0.1": ConnectionRefused("nothing listens at 10.0.0.1:7070")}
    url = asyncio.run(r.connect_node(connector(down, tried)))
    assert url.dial == ("10.0.0.2", 7070) and url.host == "store.example"
    assert tried == ["10.0.0.1:7070", "10.0.0.2:7070"]
    assert r.retries == 0  # passing over a silent node is no retry


def test_when_every_node_refuses_the_error_names_each() -> None:
    r, tried = retrier(), []
    down: dict[str, FluxError | None] = {
        a: ConnectionRefused(f"nothing listens at {a}:7070") for a in TWO
    }
    with pytest.raises(ConnectionRefused, match=r"no node of store\.example:7070 answers") as info:
        asyncio.run(r.connect_node(connector(down, tried)))
    assert "10.0.0.1:7070: nothing listens" in str(info.value)
    assert "10.0.0.2:7070: nothing listens" in str(info.value)
    down["10.0.0.2"] = ConnectError("no answer")
    with pytest.raises(ConnectError, match=r"cannot reach any node of store\.example:7070"):
        asyncio.run(r.connect_node(connector(down, [])))


def test_a_failure_retrying_cannot_mend_is_not_passed_over() -> None:
    r, tried = retrier(), []
    untrusted = {"10.0.0.1": TrustError("certificate changed")}
    with pytest.raises(TrustError):
        asyncio.run(r.connect_node(connector(untrusted, tried)))
    assert tried == ["10.0.0.1:7070"], "another node is not tried after a trust failure"


# --- Retrier.run across nodes -------------------------------------------------------------------


class FakeChannel:
    def __init__(self, url: FluxURL) -> None:
        self.url, self.transport = url, "tcp"


class FakeSession:
    def __init__(self, ch: FakeChannel) -> None:
        self.ch, self.url = ch, ch.url


def test_an_attempt_that_died_with_its_node_is_retried_on_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dialled: list[tuple[str, int]] = []

    async def fake_connect(url: FluxURL, opts: ClientOptions) -> FakeChannel:
        dialled.append(url.dial)
        return FakeChannel(url)

    async def no_close(sessions: Any, farewell: str | None) -> None:
        return None

    monkeypatch.setattr(retry_module, "connect", fake_connect)
    monkeypatch.setattr(retry_module, "ClientSession", FakeSession)
    monkeypatch.setattr(retry_module, "close_sessions", no_close)
    monkeypatch.setattr(retry_module, "FIRST_DELAY", 0.0)
    r = retrier(transport="tcp")

    async def attempt(session: Any, n: int) -> str:
        if session.url.dial[0] == "10.0.0.1":
            raise ConnectionLost("10.0.0.1:7070 closed the connection")
        return "done"

    assert asyncio.run(r.run(attempt)) == "done"
    assert dialled == [("10.0.0.1", 7070), ("10.0.0.2", 7070)]
    assert (r.retries, r.node) == (1, "10.0.0.2:7070")


# --- connect: a node's address, the name's certificate ------------------------------------------


def test_a_node_is_dialled_and_its_certificate_checked_for_the_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[Any, ...]] = []

    async def open_connection(
        host: str, port: int, ctx: ssl.SSLContext | None, name: str | None, timeout: float
    ) -> Any:
        calls.append((host, port, name))
        raise ConnectionRefused("stop here")

    monkeypatch.setattr(connect_module.tcp, "open_connection", open_connection)
    opts = ClientOptions(trust=TrustPolicy(known_hosts=tmp_path / "known_hosts"))
    with pytest.raises(ConnectionRefused):
        asyncio.run(connect_tcp(URL.on(("10.0.0.2", 7071)), opts))
    assert calls == [("10.0.0.2", 7071, "store.example")]
