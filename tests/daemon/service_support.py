"""What the service tests share: a connection as a session describes it, the daemon state the
service runs on (built by the `make` fixture in conftest.py), and a whole upload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from test_local_storage import CS, chunks, ref

from fluxd.access import AccessLog
from fluxd.auth.gate import Authenticator
from fluxd.auth.scopes import Grant, parse_scopes
from fluxd.claims import UploadClaims
from fluxd.config import AuthConfig, Limits, ServerConfig
from fluxd.context import Shared
from fluxd.limits import Admission, Throttle
from fluxd.service import Caller, FileService, Presence, UploadHandle
from fluxd.storage import LocalStorage
from fluxio.buffers import ReceiveBudget

T = TypeVar("T")
EVERYTHING = "read:/ write:/ list:/ delete:/"
LONG = 30.0  # a bound that must never run out in these tests, not a wait


class Conn:
    """A connection as a session would describe it to the service: silent unless told.

    With `answers`, a client is behind it that answers every keepalive PING (bytes heard);
    without, the client is gone. `looked` is set whenever someone reads whether it is closed
    (a waiting claim does, each time it looks at its holder).
    """

    def __init__(self, peer: str = "127.0.0.1:40000", answers: bool = False) -> None:
        self.peer, self.heard, self.closed, self.answers = peer, 0.0, False, answers
        self.pings = 0
        self.pinged = asyncio.Event()  # set at each keepalive PING
        self.ended: list[str] = []
        #: Set when the service ends the connection; its session would then stop reading.
        self.hung_up = asyncio.Event()
        self.looked = asyncio.Event()
        readings = (lambda: self.peer, lambda: self.heard, self._closed)
        self.presence = Presence(*readings, keepalive=self._ping, end=self._end)

    def _closed(self) -> bool:
        self.looked.set()
        return self.closed

    def _ping(self) -> None:
        self.pings += 1
        self.pinged.set()
        if self.answers:  # its PONG arrives
            self.heard += 1.0

    def _end(self, exc: Exception) -> None:
        self.ended.append(str(exc))
        self.hung_up.set()


@dataclass
class Daemon:
    """What a daemon would create once: the shared state, the service, and its access log."""

    service: FileService
    storage: LocalStorage
    root: Path
    log: Path

    def records(self, op: str | None = None) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        found = [json.loads(line) for line in lines]
        return [r for r in found if op is None or r["op"] == op]

    def caller(
        self,
        subject: str = "alice",
        scopes: str = EVERYTHING,
        conn: Conn | None = None,
        root: str = "",
    ) -> Caller:
        grant = Grant(subject, f"jti-{subject}", parse_scopes(scopes), root)
        return Caller.of(grant, "test", (conn or Conn()).presence, {"resumed": False})


def daemons(tmp_path: Path, root: Path, storage: LocalStorage) -> Iterator[Callable[..., Daemon]]:
    """Build a Daemon with `limits`, `auth` and claims that presume silence stale after
    `stale_after` seconds."""
    made: list[Shared] = []

    def build(
        limits: Limits | None = None, auth: AuthConfig | None = None, stale_after: float = 10.0
    ) -> Daemon:
        log = tmp_path / f"access-{len(made)}.jsonl"
        config = ServerConfig(
            root=root,
            certs=tmp_path / "certs",
            access_log=str(log),
            limits=limits or Limits(),
            auth=auth or AuthConfig(),
        )
        shared = Shared(
            config,
            storage,
            ThreadPoolExecutor(max_workers=4),
            UploadClaims(stale_after=stale_after),
            Authenticator.from_config(config),
            Admission(config.limits),
            Throttle(config.limits),
            AccessLog(config.access_log),
            ReceiveBudget(config.limits.memory),
        )
        made.append(shared)
        return Daemon(FileService(shared), storage, root, log)

    yield build
    for shared in made:
        shared.pool.shutdown(wait=True)
        shared.access.close()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(LONG):
            return await coro

    return asyncio.run(main())


async def send(d: Daemon, caller: Caller, path: str, data: bytes) -> None:
    """A whole upload as a transport makes it: open, write what is not held, commit."""
    async with d.service.upload(caller, path, len(data), CS, 0o644) as up:
        await write(up, [c for c in chunks(data) if up.held.get(c[0]) != c[1]])
        await up.commit(ref(data))


async def write(up: UploadHandle, batch: list[tuple[int, bytes, bytes]]) -> None:
    await asyncio.get_running_loop().run_in_executor(up.pool, up.write_chunks, batch)


# --- uploads -------------------------------------------------------------------------------------
