"""A deterministic, seeded UDP relay for QUIC tests: loss, duplicates, reordering, delay, moves.

One client (whoever sends first) talks to a fixed server `("127.0.0.1", server_port)` through the
relay, which listens on `127.0.0.1:relay.port`. The relay runs in its own daemon thread (blocking
on `selectors` and its own timer heap), so it never depends on a test's event loop.

Impairments apply per direction (client->server "c2s", server->client "s2c"). Each direction has
its own `random.Random` stream per impairment, seeded from `seed`, and every received datagram
draws exactly once from each stream whatever the settings: datagram *i* of a direction is lost if
and only if draw *i* of that direction's loss stream is below `loss`. So a run is reproducible
given the same datagram sequence (and the same parameter changes at the same points); the exact
counts depend on that sequence, which a QUIC stack varies with timing (retransmissions, acks).

Addresses:

- The client may move (a new local socket): server->client datagrams always go to the newest
  client address, decided when each datagram is released, not when it was received.
- `rebind()` moves the relay's side towards the server to a new socket (a new source port, as a
  NAT rebinding does). By default the old socket is closed at once, so anything the server still
  sends to the old address is lost; `rebind(grace=s)` keeps reading it for `s` seconds and
  forwards those late datagrams to the client.

Tests wait on the relay's counters with `wait_for()` (a condition variable, never a sleep): a
datagram counted as forwarded on loopback is already in the receiver's socket queue.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any

C2S = "c2s"
S2C = "s2c"
Address = tuple[str, int]
Stats = dict[str, dict[str, int]]

_COUNTERS = ("received", "forwarded", "dropped", "duplicated", "reordered", "send_errors")
_BATCH = 256  # datagrams read from one socket per loop turn, so timers and the other side run
_BUFFER = 8 << 20  # socket buffers: the kernel must not drop what the test did not ask to drop
_MAX_DATAGRAM = 65536  # loopback MTU
# Linux values; Python's socket module does not export them. Elsewhere setsockopt fails and the
# plain options are used instead.
_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32


@dataclass(frozen=True, slots=True)
class Impairments:
    """Link parameters, the same for both directions (each has its own random streams)."""

    loss: float = 0.0  # probability a datagram is dropped
    duplicate: float = 0.0  # probability it is sent twice
    reorder: float = 0.0  # probability it is held back until the next one has been sent
    delay: float = 0.0  # seconds before a datagram is released
    jitter: float = 0.0  # uniform +/- seconds on top of `delay` (so jitter reorders too)
    blackhole: bool = False  # drop everything, both directions, including what is in flight
    reorder_timeout: float = 0.2  # a held datagram with no follower is released after this

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)!r}")
        for name in ("delay", "jitter", "reorder_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


_PARAMS = frozenset(f.name for f in fields(Impairments))


class _Direction:
    """Random streams, counters and the held-back datagram of one direction."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        # One stream per impairment: changing `duplicate` does not change which datagrams are lost.
        self.loss = random.Random(f"{seed}/{name}/loss")
        self.dup = random.Random(f"{seed}/{name}/duplicate")
        self.reorder = random.Random(f"{seed}/{name}/reorder")
        self.jitter = random.Random(f"{seed}/{name}/jitter")
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.held: tuple[bytes, int] | None = None  # (datagram, copies)
        self.held_token = 0  # identifies the hold a reorder_timeout timer belongs to


class UdpRelay:
    """A UDP link emulator between one client and `("127.0.0.1", server_port)`.

    Args:
        server_port: where datagrams from the client go.
        seed: seeds every random stream (see the module docstring for what is reproducible).
        port: the UDP port to listen on (0: any free one); the number of a TCP proxy's port
            makes one URL lead to both (lanes: TCP through the proxy, QUIC through here).
        **params: initial `Impairments` fields (loss, duplicate, reorder, delay, jitter,
            blackhole, reorder_timeout).

    Use as a context manager, or call `close()`.
    """

    def __init__(self, server_port: int, *, seed: int = 0, port: int = 0, **params: Any) -> None:
        self.server_address: Address = ("127.0.0.1", server_port)
        self._params = Impairments(**params)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after each loop turn
        self._dirs = {C2S: _Direction(C2S, seed), S2C: _Direction(S2C, seed)}
        self._client: Address | None = None
        self._clients: list[Address] = []
        self._ports: list[int] = []
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0  # heap tie-breaker: equal release times keep their scheduling order
        self._commands: collections.deque[tuple[socket.socket, float, threading.Event]] = (
            collections.deque()
        )
        self._closing = False
        self._error: BaseException | None = None
        self._selector = selectors.DefaultSelector()
        self._listener = _udp_socket(port)
        self.port: int = self._listener.getsockname()[1]
        self._out = _udp_socket()
        self._ports.append(self._out.getsockname()[1])
        self._old: list[socket.socket] = []  # earlier outbound sockets still read (grace)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, C2S)
        self._selector.register(self._out, selectors.EVENT_READ, S2C)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._run, name=f"udp-relay-{self.port}", daemon=True
        )
        self._thread.start()

    # --- control (any thread) -----------------------------------------------------------------

    def set(self, **params: Any) -> None:
        """Change impairments live; unnamed ones keep their value.

        Raises:
            TypeError: an unknown parameter name.
            ValueError: a probability outside [0, 1] or a negative time.
        """
        unknown = set(params) - _PARAMS
        if unknown:
            raise TypeError(f"unknown relay parameters: {', '.join(sorted(unknown))}")
        with self._lock:
            self._params = replace(self._params, **params)

    @property
    def params(self) -> Impairments:
        with self._lock:
            return self._params

    def rebind(self, *, grace: float = 0.0) -> int:
        """Send to the server from a new socket (new source port), as after a NAT rebinding.

        Datagrams released after this call, including delayed or held ones received before it,
        leave from the new socket, and the server's replies to the new address reach the client.
        With `grace` 0 the old socket is closed now: whatever the server still sends to the old
        address is lost. With `grace` > 0 the old socket is read for that many more seconds and
        such late datagrams are forwarded to the client, then it is closed.

        Returns:
            The new local port the server will see.
        """
        sock = _udp_socket()
        port: int = sock.getsockname()[1]
        applied = threading.Event()
        with self._lock:
            if self._closing:
                sock.close()
                raise RuntimeError("relay is closed")
            self._commands.append((sock, grace, applied))
        self._wake()
        if not applied.wait(10.0) or sock.fileno() == -1:
            raise RuntimeError(f"relay closed before the rebind was applied: {self._error!r}")
        return port

    def stats(self) -> Stats:
        """A snapshot: {"c2s": {counter: n}, "s2c": {...}} with the counters of `_COUNTERS`.

        Once all datagrams are released: received - dropped + duplicated == forwarded.
        """
        with self._lock:
            return self._snapshot()

    def wait_for(self, predicate: Callable[[Stats], bool], timeout: float = 10.0) -> Stats:
        """Block until `predicate(stats)` holds; return those stats.

        Raises:
            TimeoutError: it did not hold within `timeout` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._snapshot()), timeout):
                raise TimeoutError(f"relay stats never matched: {self._snapshot()}")
            return self._snapshot()

    @property
    def client_addresses(self) -> list[Address]:
        """Distinct client addresses seen, in first-seen order."""
        with self._lock:
            return list(self._clients)

    @property
    def server_side_ports(self) -> list[int]:
        """Local ports the relay has sent to the server from, oldest first."""
        with self._lock:
            return list(self._ports)

    def close(self) -> None:
        """Stop the thread and close every socket; re-raise an error the relay thread hit."""
        with self._lock:
            self._closing = True
        with contextlib.suppress(OSError):
            self._wake()
        self._thread.join(10.0)
        if self._thread.is_alive():  # pragma: no cover - a bug in the loop
            raise RuntimeError("relay thread did not stop")
        self._close_sockets()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("the UDP relay thread failed") from error

    def __enter__(self) -> UdpRelay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- relay thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        return
                for key, _ in self._selector.select(self._timeout()):
                    self._on_readable(key)
                with self._lock:
                    self._fire_timers()
                    self._changed.notify_all()
        except BaseException as e:  # surfaced by close(), never left to the thread excepthook
            self._error = e
        finally:
            with self._lock:
                self._closing = True
                self._changed.notify_all()

    def _timeout(self) -> float | None:
        with self._lock:
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - time.monotonic())

    def _on_readable(self, key: selectors.SelectorKey) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        if key.data is None:
            self._drain_wake()
            return
        if sock.fileno() == -1:
            return  # retired by a rebind earlier in this loop turn
        direction = self._dirs[key.data]
        with self._lock:
            for _ in range(_BATCH):
                try:
                    data, addr = sock.recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # nothing readable now (an ICMP error, a closed socket)
                if direction.name == C2S:
                    self._note_client(addr)
                elif addr != self.server_address:
                    continue  # not from the server: not part of this link
                self._ingress(direction, data)

    def _note_client(self, addr: Address) -> None:
        if addr != self._client:
            self._client = addr
            if addr not in self._clients:
                self._clients.append(addr)

    def _ingress(self, d: _Direction, data: bytes) -> None:
        """Decide a received datagram's fate; every stream is drawn from exactly once."""
        p = self._params
        d.counts["received"] += 1
        lost = d.loss.random() < p.loss
        copies = 2 if d.dup.random() < p.duplicate else 1
        hold = d.reorder.random() < p.reorder
        delay = p.delay + p.jitter * (2.0 * d.jitter.random() - 1.0)
        if lost or p.blackhole:
            d.counts["dropped"] += 1
            return
        if copies == 2:
            d.counts["duplicated"] += 1
        if hold and d.held is None:
            d.held = (data, copies)
            d.counts["reordered"] += 1
            d.held_token += 1
            self._schedule(
                time.monotonic() + p.reorder_timeout, self._release_held, d, d.held_token
            )
            return
        when = time.monotonic() + delay if delay > 0 else 0.0
        self._release(d, data, copies, when)
        if d.held is not None:
            (held, held_copies), d.held = d.held, None
            self._release(d, held, held_copies, when)  # same time, later sequence: right after

    def _release(self, d: _Direction, data: bytes, copies: int, when: float) -> None:
        if when <= 0.0:
            for _ in range(copies):
                self._emit(d, data)
        else:
            for _ in range(copies):
                self._schedule(when, self._emit, d, data)

    def _release_held(self, d: _Direction, token: int) -> None:
        if d.held is not None and d.held_token == token:
            (data, copies), d.held = d.held, None
            delay = self._params.delay
            self._release(d, data, copies, time.monotonic() + delay if delay > 0 else 0.0)

    def _emit(self, d: _Direction, data: bytes) -> None:
        """Send one datagram now, unless the link went black meanwhile."""
        if self._params.blackhole:
            d.counts["dropped"] += 1
            return
        if d.name == C2S:
            sock, dest = self._out, self.server_address
        elif self._client is None:
            d.counts["dropped"] += 1
            return
        else:
            sock, dest = self._listener, self._client
        try:
            sock.sendto(data, dest)
        except OSError:
            d.counts["dropped"] += 1
            d.counts["send_errors"] += 1
            return
        d.counts["forwarded"] += 1

    def _schedule(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, args))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, fn, args = heapq.heappop(self._heap)
            fn(*args)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            while self._commands:
                sock, grace, applied = self._commands.popleft()
                self._apply_rebind(sock, grace)
                applied.set()

    def _apply_rebind(self, sock: socket.socket, grace: float) -> None:
        old, self._out = self._out, sock
        self._ports.append(sock.getsockname()[1])
        self._selector.register(sock, selectors.EVENT_READ, S2C)
        if grace > 0:
            self._old.append(old)
            self._schedule(time.monotonic() + grace, self._retire, old)
        else:
            self._retire(old)

    def _retire(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        with contextlib.suppress(ValueError):
            self._old.remove(sock)
        sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def _snapshot(self) -> Stats:
        return {name: dict(d.counts) for name, d in self._dirs.items()}

    def _close_sockets(self) -> None:
        with self._lock:
            pending = list(self._commands)
            self._commands.clear()
            socks = [self._listener, self._out, *self._old, *(sock for sock, _, _ in pending)]
            socks += [self._wake_r, self._wake_w]
            self._old.clear()
            self._heap.clear()
        self._selector.close()
        for sock in socks:
            sock.close()
        for _, _, applied in pending:
            applied.set()  # the socket is closed, so rebind() raises rather than waits


def _udp_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for force, plain in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:  # the FORCE variants exceed rmem_max/wmem_max, but need CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, _BUFFER)  # capped by the sysctl
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
