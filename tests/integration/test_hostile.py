"""Hostile peers, each while a well-behaved client transfers at the same time and must succeed.

The daemon under attack requires tokens; the good client is `alice` (her own rate limit keeps
her upload running for a few seconds, so every attack happens during it), the attacker is
`mallory` or nobody at all.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fluxproto import MIN_CHUNK, Chunk, OpenUpload, Status, Welcome, chunk_digest
from fluxproto import Error as ErrorFrame
from fluxproto.codec import PREFIX, encode_bytes
from fluxproto.frames import FrameType

from .conftest import Daemon, Fluxctl, wait_for
from .rawpeer import RawPeer, frames_until_close, hello_with_padding
from .test_auth import FULL, issue

MiB = 1024 * 1024
GOOD_SIZE = 40 * MiB  # about 10 s at alice's 4 MiB/s: longer than any attack below
CONFIG = """
[auth]
anonymous = false

[limits]
handshake_timeout = 2
idle_timeout = 4
uploads_per_subject = 4
connections = 1400
connections_per_address = 1400
rate_per_subject = "4M"
max_header = "32K"
"""


@dataclass
class Arena:
    daemon: Daemon
    alice: str
    mallory: str
    peers: list[RawPeer] = field(default_factory=list)

    def raw(self, port: int | None = None) -> RawPeer:
        """A raw TLS connection, closed at the end of the test."""
        peer = RawPeer(port or self.daemon.port)
        self.peers.append(peer)
        return peer

    def connected(self) -> RawPeer:
        """A raw connection past the handshake as mallory."""
        peer = self.raw()
        assert isinstance(peer.hello(self.mallory), Welcome)
        return peer


def configured(make_daemon: Callable[..., Daemon], tmp_path: Path, toml: str) -> Daemon:
    """A daemon started with `toml` as its config file."""
    config = tmp_path / "fluxd.toml"
    config.write_text(toml)
    return make_daemon("--config", str(config))


@pytest.fixture
def arena(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Iterator[Arena]:
    d = configured(make_daemon, tmp_path, CONFIG)
    a = Arena(d, issue(d, "alice", *FULL), issue(d, "mallory", *FULL))
    yield a
    for peer in a.peers:
        peer.close()


@pytest.fixture
def good_upload(arena: Arena, fluxctl: Fluxctl, tmp_path: Path) -> Iterator[None]:
    """Alice's upload runs through the test body and must complete, byte for byte."""
    src = tmp_path / "good.bin"
    src.write_bytes(os.urandom(GOOD_SIZE))
    d = arena.daemon
    proc = fluxctl.spawn("send", str(src), d.url("/good.bin"), "--token", arena.alice)
    staged = d.root / ".flux" / "staging"
    deadline = time.monotonic() + 30
    while not any(p.name == "journal" for p in staged.rglob("journal")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the good upload never started"
        time.sleep(0.02)
    yield
    still_running = proc.poll() is None
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert still_running, "the attack should have happened during the good upload"
    assert (d.root / "good.bin").read_bytes() == src.read_bytes()


def assert_refused_and_closed(peer: RawPeer, within: float = 10, sent: bool = True) -> None:
    """The server hangs up, saying why: an ERROR frame last (unless our own send was cut
    short, when the kernel's reset may overtake that frame)."""
    frames = frames_until_close(peer, within)
    if sent or frames:
        assert frames and isinstance(frames[-1], ErrorFrame), frames


@pytest.mark.usefixtures("good_upload")
def test_oversized_header_before_hello(arena: Arena) -> None:
    peer = arena.raw()
    peer.send(PREFIX.pack(FrameType.HELLO, 1 << 20, 0))  # 1 MiB header announced
    assert_refused_and_closed(peer)


@pytest.mark.usefixtures("good_upload")
def test_header_over_the_configured_limit(arena: Arena) -> None:
    peer = arena.raw()
    sent = peer.send(hello_with_padding(40 * 1024, arena.mallory))  # legal, but > 32K here
    assert_refused_and_closed(peer, sent=sent)
    ok = arena.raw()
    ok.send(hello_with_padding(20 * 1024, arena.mallory))  # below the limit: fine
    assert isinstance(ok.read_frame(), Welcome)


@pytest.mark.usefixtures("good_upload")
def test_oversized_payload(arena: Arena) -> None:
    peer = arena.connected()
    peer.send(PREFIX.pack(FrameType.CHUNK, 20, 1 << 30))  # 1 GiB chunk, no transfer open
    assert_refused_and_closed(peer)
    peer = arena.connected()
    peer.send(encode_bytes(OpenUpload(1, "/m/x.bin", 4 * MIN_CHUNK, MIN_CHUNK)))
    assert isinstance(peer.read_frame(), Status)
    peer.send(PREFIX.pack(FrameType.CHUNK, 20, 2 * MIN_CHUNK))  # twice the chunk size
    assert_refused_and_closed(peer)


@pytest.mark.usefixtures("good_upload")
def test_random_bytes_after_the_handshake(arena: Arena) -> None:
    peer = arena.connected()
    sent = peer.send(os.urandom(64 * 1024))
    assert_refused_and_closed(peer, sent=sent)


@pytest.mark.usefixtures("good_upload")
def test_truncated_frames(arena: Arena) -> None:
    upload = encode_bytes(OpenUpload(1, "/m/t.bin", 10, MIN_CHUNK))
    silent = arena.connected()
    silent.send(upload[: len(upload) // 2])  # half a frame, then silence: the idle timeout
    ended = arena.connected()
    ended.send(upload[:5])  # half a prefix, then the end of the stream
    ended.sock.shutdown(socket.SHUT_WR)
    assert ended.closed_by_server(5)
    assert silent.closed_by_server(4 + 5)
    data = os.urandom(MIN_CHUNK)
    chunk = encode_bytes(Chunk(1, 0, chunk_digest(data), data))
    cut = arena.connected()  # a chunk cut short mid-payload
    cut.send(encode_bytes(OpenUpload(1, "/m/c.bin", MIN_CHUNK, MIN_CHUNK)))
    assert isinstance(cut.read_frame(), Status)
    cut.send(chunk[: len(chunk) - 100])
    assert cut.closed_by_server(4 + 5)
    assert not (arena.daemon.root / "m").exists()


@pytest.mark.usefixtures("good_upload")
def test_a_thousand_idle_connections_are_closed_by_the_handshake_timeout(arena: Arena) -> None:
    socks = [socket.create_connection(("127.0.0.1", arena.daemon.port)) for _ in range(1000)]
    opened = time.monotonic()
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    open_ = len(socks)
    try:
        while open_ and time.monotonic() - opened < 30:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    open_ -= 1
    finally:
        for s in socks:
            s.close()
    assert open_ == 0, f"{open_} idle connections still open after 30 s"
    # The 2 s handshake timeout closed them, not the idle timeout or anything later.
    assert time.monotonic() - opened < 2 + 10


@pytest.mark.usefixtures("good_upload")
def test_a_flood_of_upload_opens_beyond_the_limit(arena: Arena) -> None:
    peers = [arena.connected() for _ in range(12)]
    answers = []
    for i, peer in enumerate(peers):
        peer.send(encode_bytes(OpenUpload(1, f"/m/flood-{i}.bin", 1 << 20, MIN_CHUNK)))
        answers.append(peer.read_frame())
    accepted = [a for a in answers if isinstance(a, Status)]
    refused = [a for a in answers if isinstance(a, ErrorFrame)]
    assert len(accepted) == 4, answers  # uploads_per_subject
    assert len(refused) == 8 and all(a.code == 413 for a in refused)
    assert "uploads open" in refused[0].message
    for peer in peers:
        peer.close()
    # Closing them frees the places: mallory can upload again.
    deadline = time.monotonic() + 10
    while True:
        peer = arena.connected()
        peer.send(encode_bytes(OpenUpload(1, "/m/again.bin", 1 << 20, MIN_CHUNK)))
        if isinstance(peer.read_frame(), Status):
            break
        peer.close()
        assert time.monotonic() < deadline, "upload places were not given back"


def test_the_daemon_logged_every_attack_and_kept_running(
    arena: Arena, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    peer = arena.connected()
    peer.send(os.urandom(1000))
    frames_until_close(peer, 10)
    # Logged before the daemon hangs up, but read from its stderr by another thread.
    wait_for(lambda: bool(arena.daemon.events("protocol-error")), what="the protocol-error line")
    assert arena.daemon.proc is not None and arena.daemon.proc.poll() is None
    assert fluxctl("ls", arena.daemon.url("/"), "--token", arena.alice).code == 0


def test_connection_limits_per_address_and_per_subject(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    limits = "connections_per_address = 3\nconnections_per_subject = 2\n"
    d = configured(make_daemon, tmp_path, "[auth]\nanonymous = false\n[limits]\n" + limits)
    token = issue(d, "mallory", *FULL)
    a = Arena(d, "", token)
    first, second = a.raw(), a.raw()
    assert isinstance(first.hello(token), Welcome)
    assert isinstance(second.hello(token), Welcome)
    third = a.raw()  # the address's third connection, the subject's third too
    answer = third.hello(token)
    assert isinstance(answer, ErrorFrame) and answer.code == 503, answer
    assert "connections open" in answer.message
    assert third.closed_by_server(5)
    filler = socket.create_connection(("127.0.0.1", d.port))  # the address's third again
    # A fourth is reset at accept, before any TLS work: not even a ServerHello comes back.
    # On loopback the reset may already arrive while connect() returns.
    with contextlib.suppress(ConnectionResetError):
        fourth = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        with fourth:
            assert fourth.recv(1) == b""
    filler.close()
    for peer in a.peers:
        peer.close()

    def refused() -> list[object]:
        return [r for r in d.events("access") if r["result"] == "refused: too many connections"]

    wait_for(lambda: bool(refused()), 10, "the refusal in the access log")
    assert len(refused()) == 1


def test_limits_on_file_size_and_quota(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    auth = '[auth]\nanonymous = false\nroot = "/users/{sub}"\n'
    d = configured(make_daemon, tmp_path, auth + '[limits]\nmax_file_size = "2M"\nquota = "3M"\n')
    token = issue(d, "carol", *FULL)
    one = tmp_path / "one.bin"
    one.write_bytes(os.urandom(2 * MiB))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * MiB + 1))
    res = fluxctl("send", str(big), d.url("/big.bin"), "--token", token)
    assert res.code == 6 and "server limit" in res.stderr
    assert fluxctl("send", str(one), d.url("/a.bin"), "--token", token).code == 0
    res = fluxctl("send", str(one), d.url("/b.bin"), "--token", token)
    assert res.code == 6 and "quota" in res.stderr
    # Replacing a file counts only the difference.
    assert fluxctl("send", str(one), d.url("/a.bin"), "--token", token).code == 0
    assert fluxctl("rm", d.url("/a.bin"), "--token", token).code == 0
    assert fluxctl("send", str(one), d.url("/b.bin"), "--token", token).code == 0
