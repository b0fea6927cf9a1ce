"""Named points where the kill-9 tests make a process die, exactly there, as `kill -9` would.

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

Downloads meet the same staging points on the client, then `renamed`.
"""

from __future__ import annotations

import os
import signal
import threading

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

__all__ = ["POINTS", "crash_point"]


def _target() -> tuple[str, int] | None:
    text = os.environ.get("FLUX_CRASH_AT", "")
    name, _, count = text.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        return None
    return name, int(count)


_TARGET = _target()
_lock = threading.Lock()
_arrivals = [0]  # writer threads arrive too


def crash_point(name: str) -> None:
    """Die here if this is the configured point and arrival (see the module docstring)."""
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _arrivals[0] += 1
        if _arrivals[0] == _TARGET[1]:
            os.kill(os.getpid(), signal.SIGKILL)
