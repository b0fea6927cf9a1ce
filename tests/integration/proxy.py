"""A deterministic TCP proxy for tests: forwards, stalls after N bytes, or cuts connections.

No timing is involved: `limit` bytes pass in one direction (client to server by default), then
forwarding in that direction stops until the test calls `release()` (let everything through
from now on) or `cut()` (reset every connection on both sides, as a broken link would).
The one exception, for tests of a slow link: `rate` bytes per second in that direction.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

#: Bytes sent at once by a rate-limited proxy: small, so the far end sees a steady trickle.
SLICE = 8192


class Proxy:
    def __init__(
        self,
        target_port: int,
        limit: int | None = None,
        *,
        upstream: bool = True,
        rate: float | None = None,
    ) -> None:
        self.target_port = target_port
        self._rate = rate  # bytes/s in the limited direction, for each connection; None: as fast
        self._limit = limit
        self._limit_upstream = upstream  # limit client->server (send) or server->client (recv)
        self.forwarded = 0  # bytes passed on in the limited direction, all connections
        self._lock = threading.Lock()
        self._unblocked = threading.Event()
        if limit is None:
            self._unblocked.set()
        self.stalled = threading.Event()  # set once the limit is reached
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # --- control ------------------------------------------------------------------------------

    def release(self) -> None:
        """Stop limiting: everything flows from now on."""
        self._limit = None
        self._unblocked.set()

    def cut(self) -> None:
        """Reset every open connection (RST on both sides)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _reset(s)

    def close(self) -> None:
        self._closed = True
        self.release()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    # --- plumbing -----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                if self._closed:
                    return
                with contextlib.suppress(NameError, OSError):
                    client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        """Copy one direction; a FIN is passed on as a FIN, a reset as a reset."""
        due = time.monotonic()  # when the next slice may leave, at `rate`
        try:
            while data := src.recv(65536):
                if upstream == self._limit_upstream:
                    data = self._gate(data, dst)
                    if self._rate is not None:
                        due = self._slowly(data, dst, due)
                        continue
                if data:
                    dst.sendall(data)
        except OSError:
            for s in (src, dst):
                _reset(s)
            return
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _gate(self, data: bytes, dst: socket.socket) -> bytes:
        """Pass bytes up to the limit; then block until released (or the connection dies)."""
        limit = self._limit
        if limit is not None and self.forwarded + len(data) > limit:
            allowed = max(0, limit - self.forwarded)
            if allowed:
                dst.sendall(data[:allowed])
                self.forwarded += allowed
            data = data[allowed:]
            self.stalled.set()
            self._unblocked.wait()
        self.forwarded += len(data)
        return data

    def _slowly(self, data: bytes, dst: socket.socket, due: float) -> float:
        """Send `data` in slices at `rate` from `due` on; returns when the next slice is due."""
        assert self._rate is not None
        for start in range(0, len(data), SLICE):
            piece = data[start : start + SLICE]
            due = max(due, time.monotonic())  # an idle link does not save up a burst
            time.sleep(max(0.0, due - time.monotonic()))
            dst.sendall(piece)
            due += len(piece) / self._rate
        return due


def _reset(s: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, as when a link or a process dies."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A thread blocked in recv() keeps the kernel socket alive past close(): wake it first.
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        s.close()
