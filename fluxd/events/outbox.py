"""The events outbox: one durable file per event, published by rename, removed once delivered.

Layout under the outbox folder: `tmp/` (an event being written), `pending/` (emitted events,
named `TIME_NS-ID.json` so names sort in emission order) and `dead/` (events given up on). An
event counts as emitted once its file is fsynced, renamed into `pending/` and `pending/` is
fsynced: the data is durable before the name that says it is there. A crash before that
leaves at most a file in `tmp/`, which `open` removes (that event was never emitted).

Every method blocks (the daemon runs them in the events' own threads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fluxio.crashpoints import crash_point
from fluxio.staging import fsync_dir
from fluxproto.errors import StorageError

from .. import log

__all__ = ["Outbox", "OutboxFull"]


class OutboxFull(Exception):
    """The outbox holds its limit of events: the new one is not written."""


class Outbox:
    """The outbox folder at `root`, holding at most `limit` pending events.

    Raises (from `open`):
        StorageError: the folder cannot be created or read.
    """

    def __init__(self, root: Path, limit: int) -> None:
        self.root, self.limit = root, limit
        self.tmp, self.pending, self.dead = root / "tmp", root / "pending", root / "dead"
        self._lock = threading.Lock()
        self._count = 0

    def open(self) -> list[str]:
        """Create the folders, drop unfinished writes; returns the pending names, oldest first."""
        try:
            for folder in (self.tmp, self.pending, self.dead):
                folder.mkdir(parents=True, exist_ok=True)
            for leftover in self.tmp.iterdir():
                leftover.unlink()
            names = sorted(p.name for p in self.pending.iterdir() if p.suffix == ".json")
        except OSError as exc:
            raise StorageError(f"events outbox {self.root}: {exc.strerror or exc}") from None
        with self._lock:
            self._count = len(names)
        return names

    def write(self, event: dict[str, Any], time_ns: int) -> str:
        """Make `event` (which has an `id`) durable in `pending/`; returns its name.

        Raises:
            OutboxFull: `limit` events are pending already.
            StorageError: the disk refused it (nothing is left half-written).
        """
        with self._lock:
            if self._count >= self.limit:
                raise OutboxFull(f"the events outbox holds {self.limit} events already")
            self._count += 1
        name = f"{time_ns:020d}-{event['id']}.json"
        tmp = self.tmp / name
        try:
            with tmp.open("wb") as f:
                f.write(json.dumps(event, sort_keys=True).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            crash_point("event-written")
            os.rename(tmp, self.pending / name)
            fsync_dir(self.pending)
        except OSError as exc:
            with self._lock:
                self._count -= 1
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"cannot write event to {self.root}: {exc.strerror}") from None
        crash_point("event-published")
        return name

    def load(self, name: str) -> dict[str, Any] | None:
        """The pending event `name`, or None if it is gone or not an event (moved to dead/ with a
        log line: written whole by rename, it can only be damage).

        Raises:
            StorageError: the disk failed reading it (EMFILE, EIO): it stays pending.
        """
        try:
            raw = (self.pending / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read event {name}: {exc.strerror}") from None
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            log.event("event-dead", logging.ERROR, file=name, error="not an event")
            self.bury(name)
            return None
        return value

    def remove(self, name: str) -> None:
        """Forget a delivered event. A crash before the removal is durable means one more
        delivery after the restart (at-least-once), never a lost event."""
        with contextlib.suppress(FileNotFoundError):
            (self.pending / name).unlink()
            with self._lock:
                self._count -= 1

    def bury(self, name: str) -> None:
        """Move an event given up on to `dead/`, where it stays for the operator."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.pending / name, self.dead / name)
            fsync_dir(self.dead)
            with self._lock:
                self._count -= 1

    def __len__(self) -> int:
        return self._count
