"""A deliberately misbehaving flux client: raw bytes over TLS, no client library in the way."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import Any

import msgpack

from fluxproto import Frame, FrameReader, Hello
from fluxproto.codec import PREFIX, encode_bytes
from fluxproto.frames import ALPN, FrameType


def _context(alpn: str = ALPN) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # this peer attacks the server; it does not care who it is
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([alpn])
    return ctx


def raw_frame(ftype: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A frame built by hand: any header map, whatever the frame rules say."""
    packed = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(ftype, len(packed), len(payload)) + packed + payload


def hello_with_padding(nbytes: int, token: str | None = None) -> bytes:
    """A HELLO whose header carries an unknown key of `nbytes` (ignored by the protocol, but it
    makes the header as large as wanted)."""
    header = dict(Hello(token=token).header(), padding="x" * nbytes)
    return raw_frame(FrameType.HELLO, header)


class RawPeer:
    """One TLS connection to the daemon on 127.0.0.1:`port` (offering ALPN `alpn` alone)."""

    def __init__(self, port: int, timeout: float = 10.0, alpn: str = ALPN) -> None:
        plain = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = _context(alpn).wrap_socket(plain, server_hostname="localhost")
        except BaseException:
            plain.close()
            raise
        self._reader = FrameReader()

    def send(self, data: bytes) -> bool:
        """Send `data`; False if the server hung up before taking all of it (which a test of
        an attack may well expect)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            return False
        return True

    def hello(self, token: str | None) -> Frame:
        """Send HELLO and return the server's answer (WELCOME, or an ERROR)."""
        self.send(encode_bytes(Hello(token=token)))
        frame = self.read_frame()
        assert frame is not None, "the server closed the connection after HELLO"
        return frame

    def read_frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame, or None once the server closed the connection."""
        self.sock.settimeout(timeout)
        while not self._reader.has_frame:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return None
            if not data:
                return None
            self._reader.feed(data)
        return self._reader.next_frame()

    def closed_by_server(self, within: float) -> bool:
        """Read (and drop) whatever comes until the server closes; False if it is still open
        after `within` seconds."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def frames_until_close(peer: RawPeer, within: float) -> list[Frame]:
    """Every frame the server sends before closing (it must close within `within` s)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            frame = peer.read_frame(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        if frame is None:
            return frames
        frames.append(frame)
    raise AssertionError(f"the server kept the connection open for {within} s: {frames}")
