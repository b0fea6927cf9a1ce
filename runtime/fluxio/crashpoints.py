"""Named points where the fault tests make a process die (as `kill -9` would) or fail an I/O.

`FLUX_CRASH_AT=NAME:N` (read once, at import) makes the N-th arrival at point NAME send SIGKILL
to the process itself: nothing is flushed, no handler runs. Unset, as always outside the tests,
`crash_point` is a single comparison. The points, in the order an upload meets them:

    chunk-written     chunk bytes written, not yet fdatasynced
    data-synced       chunk bytes durable, not yet recorded in the journal
    record-written    journal record written, not yet fdatasynced
    chunks-durable    journal record durable, not yet acknowledged
    commit-checked    whole-file digest verified, nothing published yet
    manifest-written  manifest durable, data not yet renamed into place
    renamed           data at its final path, directory not yet synced, journal still there
    published         staging removed, COMMITTED not yet sent

Downloads meet the same staging points on the client, then `renamed`. A group commit of many
small uploads (fluxd's storage, `commit_many`) meets its own, once per batch except the last:

    batch-written     every file of the batch written and sealed, manifests staged, none synced
    batch-synced      the one barrier done (data durable), nothing renamed yet
    batch-renamed     one more file of the batch at its final path, folders not yet synced

The daemon's events outbox (fluxd/events/outbox.py) has two, once per event:

    event-written     the event's file durable in tmp/, not yet renamed into pending/
    event-published   renamed into pending/ and the folder synced: the event is emitted

`FLUX_FAULT_AT=NAME:N:ERRNO` (e.g. `chunk-write:3:ENOSPC`) makes the N-th arrival at fault point
NAME raise that OSError, as the disk would, once: the storage translates it like a real one.
Fault points: `chunk-write` (writing chunk data), `record-write` (appending to the journal).

`FLUX_STALL_AT=NAME:N:SECONDS` makes the N-th arrival at crash point NAME wait SECONDS, as a
slow disk would (`commit-checked:1:5`): the storage call takes that much longer, nothing fails.

`FLUX_PAUSE_AT=NAME:N:FIFO` makes the N-th arrival at pause point NAME open the named pipe FIFO
for reading and read it to its end: the process waits there until a test has opened the pipe
for writing (which tells the test it is there), done what it must do at that moment (swap a
folder for a link), and closed it. No clock is involved. Pause points: `walk-listed` (the
local walk of a tree has listed a folder and not yet looked at any of its entries), and
`loop-beat` (fluxd's heartbeat, which publishes the admin listener's snapshot every 0.5 s, on
the daemon's event loop thread itself: pausing there blocks that whole loop, as a runaway
callback would, while the admin listener's own thread keeps answering).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

POINTS = (
    "chunk-written",
    "data-synced",
    "record-written",
    "chunks-durable",
    "commit-checked",
    "manifest-written",
    "renamed",
    "published",
)

BATCH_POINTS = ("batch-written", "batch-synced", "batch-renamed")

EVENT_POINTS = ("event-written", "event-published")
#: The points FLUX_CRASH_AT and FLUX_STALL_AT may name.
KNOWN = frozenset(POINTS + BATCH_POINTS + EVENT_POINTS)

FAULT_POINTS = ("chunk-write", "record-write")

PAUSE_POINTS = ("walk-listed", "loop-beat")

__all__ = [
    "BATCH_POINTS",
    "EVENT_POINTS",
    "FAULT_POINTS",
    "PAUSE_POINTS",
    "POINTS",
    "crash_point",
    "fault_point",
    "pause_point",
]


def _target() -> tuple[str, int] | None:
    text = os.environ.get("FLUX_CRASH_AT", "")
    name, _, count = text.partition(":")
    if name not in KNOWN or not count.isdigit() or int(count) < 1:
        return None
    return name, int(count)


def _fault() -> tuple[str, int, int] | None:
    name, _, rest = os.environ.get("FLUX_FAULT_AT", "").partition(":")
    count, _, code = rest.partition(":")
    number = getattr(errno, code, None) if code.isupper() else None
    if name not in FAULT_POINTS or not count.isdigit() or int(count) < 1 or number is None:
        return None
    return name, int(count), number


def _stall() -> tuple[str, int, float] | None:
    name, _, rest = os.environ.get("FLUX_STALL_AT", "").partition(":")
    count, _, seconds = rest.partition(":")
    try:
        wait = float(seconds)
    except ValueError:
        return None
    known = name in KNOWN
    if not known or not count.isdigit() or int(count) < 1 or not 0 < wait < 3600:
        return None
    return name, int(count), wait


def _pause() -> tuple[str, int, str] | None:
    name, _, rest = os.environ.get("FLUX_PAUSE_AT", "").partition(":")
    count, _, fifo = rest.partition(":")
    if name not in PAUSE_POINTS or not count.isdigit() or int(count) < 1 or not fifo:
        return None
    return name, int(count), fifo


_TARGET = _target()
_FAULT = _fault()
_STALL = _stall()
_PAUSE = _pause()
_lock = threading.Lock()
_arrivals = [0, 0, 0, 0]  # crash, fault, stall, pause; writer threads arrive too


def _arrive(which: int, count: int) -> bool:
    """Count one arrival (0: crash, 1: fault, 2: stall, 3: pause); True at the configured one."""
    with _lock:
        _arrivals[which] += 1
        return _arrivals[which] == count


def crash_point(name: str) -> None:
    """Die (or stall) here if this is the configured point and arrival (module docstring)."""
    if _STALL is not None and _STALL[0] == name and _arrive(2, _STALL[1]):
        time.sleep(_STALL[2])  # a slow disk, on purpose: this runs in a storage thread
    if _TARGET is not None and _TARGET[0] == name and _arrive(0, _TARGET[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str) -> None:
    """Raise the configured OSError here, once (see the module docstring)."""
    if _FAULT is not None and _FAULT[0] == name and _arrive(1, _FAULT[1]):
        raise OSError(_FAULT[2], os.strerror(_FAULT[2]))


def pause_point(name: str) -> None:
    """Wait here for the test if this is the configured pause point and arrival (module
    docstring). A pipe that cannot be opened raises: a test set up wrong fails loudly."""
    if _PAUSE is not None and _PAUSE[0] == name and _arrive(3, _PAUSE[1]):
        with open(_PAUSE[2], "rb") as pipe:  # returns once the test opened it to write
            pipe.read()  # until the test closes it
