"""The userspace link: reads packets from both TUN devices and writes each to the other side
when and if the `Link` model says, rewriting the client's address on each new epoch (NAT
rebinding: the server sees a new source address; packets to an old one are dropped, as a NAT
that forgot the mapping would).
"""

from __future__ import annotations

import heapq
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass

from .model import Link
from .packet import DST, SRC, addresses, ip, rewrite
from .topology import CLIENT_IP

READ_BUDGET = 256  # packets read from one device before the other gets a turn
IDLE_WAIT = 0.1  # seconds between checks of `stopping` and schedule restarts when idle

_CLIENT = ip(CLIENT_IP)


def client_alias(epoch: int) -> bytes:
    """The client's address as the server sees it in `epoch` (0: its real address)."""
    if epoch == 0:
        return _CLIENT
    return bytes((10, 77, (epoch - 1) % 250 + 1, 2))


@dataclass
class RelayCounters:
    read: int = 0
    written: int = 0
    write_errors: int = 0
    stale: int = 0  # server -> client packets to an address of an earlier epoch
    epoch: int = 0


class Relay:
    """Forwards packets between `server_fd` and `client_fd` through `link`."""

    def __init__(
        self,
        link: Link,
        server_fd: int,
        client_fd: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.server_fd, self.client_fd = server_fd, client_fd
        self.counters = RelayCounters()
        self._clock = clock
        self._t0 = clock()
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self.stopping = False
        self._restart = False

    def restart_schedule(self) -> None:
        """Blackholes and address changes start over from now (safe from a signal handler)."""
        self._restart = True

    def now(self) -> float:
        """Seconds since the link came up: the time base of blackholes and epochs."""
        return self._clock() - self._t0

    def run(self) -> None:
        """Relay until `stopping` is set (from a signal handler)."""
        sel = selectors.DefaultSelector()
        sel.register(self.server_fd, selectors.EVENT_READ, False)
        sel.register(self.client_fd, selectors.EVENT_READ, True)
        try:
            while not self.stopping:
                wait = IDLE_WAIT
                if self._heap:
                    wait = max(0.0, min(wait, self._heap[0][0] - self.now()))
                events = sel.select(wait)
                if self._restart:
                    self._restart = False
                    self.link.schedule.restart(self.now())
                for key, _ in events:
                    self._read(key.fd, upstream=bool(key.data))
                self._deliver()
        finally:
            sel.close()

    def handle(self, packet: bytes, upstream: bool, t: float) -> None:
        """Apply the link to one packet read at `t` (client -> server when `upstream`)."""
        self.counters.read += 1
        epoch = self.link.schedule.epoch(t)
        self.counters.epoch = epoch
        if epoch:
            packet = self._translate(packet, upstream, epoch)
            if not packet:
                return
        out = self.server_fd if upstream else self.client_fd
        for arrival in self.link.offer(t, len(packet), upstream):
            self._seq += 1
            heapq.heappush(self._heap, (arrival, self._seq, out, packet))

    def _translate(self, packet: bytes, upstream: bool, epoch: int) -> bytes:
        found = addresses(packet)
        if found is None:
            return packet
        src, dst = found
        alias = client_alias(epoch)
        buf = bytearray(packet)
        if upstream and src == _CLIENT:
            rewrite(buf, SRC, alias)
        elif not upstream and dst == alias:
            rewrite(buf, DST, _CLIENT)
        elif not upstream and dst[:2] == alias[:2] and dst[3] == alias[3]:
            self.counters.stale += 1  # to the real address or an older alias: no mapping
            return b""
        return bytes(buf)

    def _read(self, fd: int, upstream: bool) -> None:
        t = self.now()
        for _ in range(READ_BUDGET):
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                return
            self.handle(packet, upstream, t)

    def _deliver(self) -> None:
        now = self.now()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, fd, packet = heapq.heappop(heap)
            try:
                os.write(fd, packet)
                self.counters.written += 1
            except OSError:
                self.counters.write_errors += 1
