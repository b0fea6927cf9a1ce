"""Negotiation with a version-1 peer (PROTOCOL.md section 14): HELLO, WELCOME and ERROR keep their
version-1 form, so each side can tell the user which program to upgrade."""

from __future__ import annotations

from proto_support import V1_HELLO, ConnectionPair, drain, drive, raw_frame

import fluxproto
from fluxproto import (
    ALPN,
    ALPN_ACCEPT,
    ALPN_OFFER,
    Connection,
    Error,
    FrameType,
    Hello,
    LocalProtocolError,
    Role,
    State,
    VersionMismatch,
    Welcome,
    error_from_code,
    mismatch_for_client,
    mismatch_from_server,
)
from fluxproto.negotiation import server_version_in

# What a version-1 fluxd answers to a HELLO without version 1 (fluxd/session.py before v2).
V1_SERVER_505 = raw_frame(
    FrameType.ERROR, {"code": 505, "message": "server speaks protocol version 1"}
)


def test_a_version_1_client_is_told_to_upgrade_fluxctl() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(V1_HELLO)
    hello = server.next_event()
    assert isinstance(hello, Hello)
    assert hello.versions == (1,)
    assert server.state is State.HANDSHAKE
    mismatch = server.version_mismatch()
    assert isinstance(mismatch, VersionMismatch)
    assert mismatch.message == "fluxd speaks flux protocol 2, this client speaks 1: upgrade fluxctl"
    try:
        server.send(server.welcome())
    except LocalProtocolError as exc:
        assert "client offered (1,)" in exc.message
    else:
        raise AssertionError("a WELCOME for version 2 must be refused")
    server.send(Error(mismatch.code, mismatch.message))
    assert server.state is State.CLOSED
    sent = b"".join(bytes(b) for b in server.data_to_send())
    # Exactly the ERROR frame a version-1 client decodes: code and message, nothing else.
    assert sent == raw_frame(FrameType.ERROR, {"code": 505, "message": mismatch.message})


def test_a_version_1_server_is_reported_as_too_old() -> None:
    client = Connection(Role.CLIENT)
    client.send(client.hello())
    client.data_to_send()
    client.receive_data(V1_SERVER_505)
    assert drain(client) == [Error(505, "server speaks protocol version 1")]
    assert client.state is State.CLOSED
    mismatch = client.version_mismatch("files.example.org")
    assert isinstance(mismatch, VersionMismatch)
    assert mismatch.message == (
        "files.example.org speaks flux protocol 1 (fluxd too old), fluxctl speaks 2: upgrade fluxd"
    )
    assert mismatch.code == 505
    assert isinstance(error_from_code(505, ""), VersionMismatch)


def test_a_newer_peer_is_named_as_the_newer_one() -> None:
    newer_server = "fluxd speaks flux protocol 3, this client speaks 2: upgrade fluxctl"
    assert server_version_in(newer_server) == 3
    assert mismatch_from_server("h", newer_server).message == (
        "h speaks flux protocol 3 (fluxctl too old), fluxctl speaks 2: upgrade fluxctl"
    )
    assert mismatch_for_client((3, 4)).message == (
        "fluxd speaks flux protocol 2, this client speaks 3, 4: upgrade fluxd"
    )
    assert server_version_in("no common version") is None
    assert "speaks flux protocol 1 (fluxd too old)" in mismatch_from_server("h", "").message


def test_no_mismatch_when_the_versions_meet_or_the_handshake_fails_otherwise() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    assert pair.client.version_mismatch() is None
    assert pair.server.version_mismatch() is None
    pair = drive(ConnectionPair(), State.HANDSHAKE)
    pair.s2c(Error(401, "bad token"))
    assert pair.client.version_mismatch() is None
    assert pair.states == (State.CLOSED, State.CLOSED)


def test_a_client_offering_both_versions_meets_a_version_2_server() -> None:
    pair = ConnectionPair()
    pair.c2s(Hello(versions=(1, 2), window=pair.client.local.window))
    assert pair.server.version_mismatch() is None
    pair.s2c(pair.server.welcome())
    assert pair.client.version == 2


def test_welcome_keeps_its_version_1_keys() -> None:
    """A version-1 client reads version, caps, window and agent; the rest it ignores."""
    head = Welcome(agent="fluxd/2").header()
    assert list(head)[:4] == ["version", "caps", "window", "agent"]
    assert list(Hello().header())[:6] == ["versions", "caps", "window", "agent", "token", "magic"]


def test_alpn_offer_and_accept() -> None:
    assert ALPN == "flux/2"
    assert ALPN_OFFER == ("flux/2", "flux/1")  # a v1 server still completes TLS on flux/1
    assert ALPN_ACCEPT[0] == "flux/2"  # preferred when offered
    assert "flux/1" in ALPN_ACCEPT  # so a v1 client hears ERROR 505 instead of a TLS alert
    assert fluxproto.PROTOCOL_VERSION == 2
