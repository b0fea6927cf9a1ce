"""Telling the service manager how the daemon is doing: systemd's sd_notify datagrams.

Under `Type=notify` systemd passes `NOTIFY_SOCKET` (an AF_UNIX datagram address; a leading `@`
names the abstract namespace) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`).
The daemon sends `READY=1` once it listens, `WATCHDOG=1` from its event loop at half the
watchdog interval (a loop that stops answering stops the pings, and systemd restarts the
service), and `STOPPING=1` when it begins to shut down. Without `NOTIFY_SOCKET` every call is a
no-op. The protocol is the documented one of sd_notify(3) and sd_watchdog_enabled(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping

from . import log

#: The variables sd_notify(3) reads; removed from the environment once read, as
#: `sd_notify(unset_environment=1)` does, so that commands the daemon starts do not inherit them.
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends sd_notify states to the service manager, when there is one.

    Args:
        address: the `NOTIFY_SOCKET` value, or None (every send is then a no-op).
        watchdog_usec: the watchdog interval in microseconds, or None for no watchdog.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier the environment asks for; takes the variables out of it."""
        env = os.environ if environ is None else environ
        address, usec, pid = (env.pop(name, None) for name in ENV_VARS)
        if not address or not address.startswith(("/", "@")):
            return cls(None)
        watchdog = int(usec) if usec and usec.isdigit() and int(usec) > 0 else None
        # WATCHDOG_PID names the process the watchdog is meant for; another one must not ping.
        if pid is not None and pid != str(os.getpid()):
            watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, state: str) -> None:
        """Send one state (`READY=1`, ...); failures are logged once and otherwise ignored,
        since the daemon serves on whether or not its manager hears it."""
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A manager that stops reading must not block the event loop.
                self._sock.setblocking(False)
            self._sock.sendto(state.encode(), target)
        except OSError as exc:
            if not self._failed:
                log.event("notify-failed", logging.WARNING, state=state, error=str(exc))
            self._failed = True

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    async def keep_alive(self) -> None:
        """Send `WATCHDOG=1` at half the watchdog interval until cancelled (returns at once
        without a watchdog)."""
        if self.watchdog_usec is None or self.address is None:
            return
        every = self.watchdog_usec / 2 / 1e6
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(every)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
