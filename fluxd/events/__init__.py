"""Events: what the daemon tells an operator's hooks (upload finished, download finished,
deleted, corruption found), written to a durable outbox first and delivered in the background.

`emit` returns once the event is durable in the outbox (or was dropped: a full outbox or a
refusing disk never fails the request that emitted it). Delivery runs in its own tasks, at
most `events.concurrency` at once, with retries and exponential backoff; an event that fails
`events.attempts` times moves to the outbox's dead/ folder. Delivery is at least once: a
receiver drops duplicates by the event's `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fluxproto.errors import FluxError

from .. import log
from ..config import EventsConfig
from .hooks import HookFailed, post, run_command
from .outbox import Outbox, OutboxFull

__all__ = ["Events"]

R = TypeVar("R")


class Events:
    """One daemon's events: its outbox and its delivery tasks (off when no hook is set)."""

    def __init__(self, config: EventsConfig | None = None) -> None:
        self.config = config = config or EventsConfig()
        self.outbox = Outbox(config.folder, config.outbox_limit)
        #: Events dropped because the outbox was full or its disk refused them.
        self.dropped = 0
        self._key = config.key() if config.url else b""
        self._targets = frozenset(
            t for t, on in (("command", config.command), ("url", config.url)) if on
        )
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluxd-outbox")
        self._net = ThreadPoolExecutor(config.concurrency, thread_name_prefix="fluxd-hook")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._stopped = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._attempts: dict[str, int] = {}
        #: Hooks that still have to take each event (both must; a retry skips the one that did).
        self._left: dict[str, set[str]] = {}
        self._node = socket.gethostname()

    async def start(self) -> None:
        """Open the outbox, queue what a previous run left in it, start delivering.

        Raises:
            StorageError: the outbox folder cannot be created or read.
        """
        if not self.config.enabled:
            return
        names = await self._io(self.outbox.open)
        if names:
            log.event("events-pending", count=len(names), outbox=str(self.config.folder))
        for name in names:
            self._queue.put_nowait(name)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.config.concurrency)]

    async def emit(self, kind: str, **fields: Any) -> None:
        """Write one event of `kind` to the outbox; returns once it is durable (or dropped).

        A cancellation of the caller does not stop the write: the event is still queued.
        """
        if not self.config.enabled or kind not in self.config.types:
            return
        now = time.time_ns()
        event = {"id": uuid.uuid4().hex, "type": kind, "time": _iso(now), "node": self._node}
        event |= fields
        if self._stopped:  # a session outlived the shutdown grace: counted, not raised
            self.dropped += 1
            log.event("event-dropped", logging.ERROR, id=event["id"], type=kind, reason="stopped")
            return
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(self._disk, self.outbox.write, event, now)
        write.add_done_callback(lambda done: self._written(done, event))
        with contextlib.suppress(OutboxFull, FluxError):  # logged and counted by `_written`
            await asyncio.shield(write)

    def _written(self, done: asyncio.Future[str], event: dict[str, Any]) -> None:
        exc = None if done.cancelled() else done.exception()
        if exc is None and not done.cancelled():
            self._queue.put_nowait(done.result())
            return
        self.dropped += 1
        reason = str(exc) if isinstance(exc, OutboxFull) else getattr(exc, "message", repr(exc))
        log.event(
            "event-dropped",
            logging.ERROR,
            id=event["id"],
            type=event["type"],
            reason=reason,
            dropped=self.dropped,
        )

    async def _work(self) -> None:
        while True:
            name = await self._queue.get()
            try:
                await self._deliver(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a worker must outlive any one event
                error = exc.message if isinstance(exc, FluxError) else repr(exc)
                log.event("event-failed", logging.ERROR, file=name, error=error)
                self._failed(name, name, error)  # tried again later, like a failed hook

    async def _deliver(self, name: str) -> None:
        event = await self._io(self.outbox.load, name)
        if event is None:
            return
        event_id = str(event.get("id", name))
        body = json.dumps(event, sort_keys=True).encode()
        left = self._left.setdefault(name, set(self._targets))
        errors = []
        for target in sorted(left):
            try:
                await self._hook(target, body, event_id)
                left.discard(target)
            except HookFailed as exc:
                errors.append(f"{target}: {exc}")
        if not left:
            await self._io(self.outbox.remove, name)
            self._forget(name)
            log.event("event-delivered", logging.DEBUG, id=event_id, type=event.get("type"))
            return
        self._failed(name, event_id, "; ".join(errors))

    async def _hook(self, target: str, body: bytes, event_id: str) -> None:
        c = self.config
        if target == "command":
            await run_command(c.command, body, event_id, c.timeout)
        else:
            await post(c.url, body, self._key, event_id, c.timeout, self._net)

    def _failed(self, name: str, event_id: str, error: str) -> None:
        c = self.config
        attempts = self._attempts[name] = self._attempts.get(name, 0) + 1
        if attempts >= c.attempts:
            self._forget(name)
            self._disk.submit(self.outbox.bury, name)
            log.event(
                "event-dead",
                logging.ERROR,
                id=event_id,
                attempts=attempts,
                error=error,
                kept=str(self.outbox.dead / name),
            )
            return
        delay = min(c.backoff * 2 ** (attempts - 1), c.backoff_max)
        log.event(
            "event-retry",
            logging.WARNING,
            id=event_id,
            attempts=attempts,
            error=error,
            retry_in=delay,
        )
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def again() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._queue.put_nowait(name)

        timer = loop.call_later(delay, again)
        self._timers.add(timer)

    def _forget(self, name: str) -> None:
        self._attempts.pop(name, None)
        self._left.pop(name, None)

    async def _io(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    async def stop(self) -> None:
        """Stop delivering (a command running is killed); what is pending stays for next time."""
        for timer in self._timers:
            timer.cancel()
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.wait(self._workers)
        self._stopped = True  # later events are dropped (counted), never raised into a request
        await asyncio.get_running_loop().run_in_executor(None, self._disk.shutdown)
        self._net.shutdown(wait=False, cancel_futures=True)


def _iso(time_ns: int) -> str:
    seconds, rest = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"
