"""The access log: one JSON object per request (and per refused connection).

Fields: ts, peer, transport, subject, jti, op, path, bytes, result, duration. With
`access_log = "-"` the records join the daemon's own log on stderr as `"event": "access"`;
otherwise they are appended to the named file, one line each, flushed per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fluxproto.errors import ConfigError

from . import log

FIELDS = ("peer", "transport", "subject", "jti", "op", "path", "bytes", "result", "duration")

__all__ = ["FIELDS", "AccessLog"]


class AccessLog:
    """Where access records go; `write` never raises (a full log disk must not stop serving)."""

    def __init__(self, target: str) -> None:
        self._file: IO[str] | None = None
        #: Requests in progress (`service.record.Record`s), for the admin status page.
        self.live: set[Any] = set()
        #: Called with every record written (the metrics and the status page's recent list);
        #: they run on the event loop and must not raise.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        if target != "-":
            try:
                self._file = Path(target).expanduser().open("a", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise ConfigError(f"cannot open access log {target}: {exc.strerror}") from None

    def write(self, **fields: Any) -> None:
        """Record one request; FIELDS always appear (None when unknown), extras after them."""
        record = {k: fields.get(k) for k in FIELDS} | fields
        for observe in self.observers:
            observe(record)
        if self._file is None:
            log.event("access", logging.INFO, **record)
            return
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        # A full log disk must not stop serving; the daemon log reports disk trouble anyway.
        with contextlib.suppress(OSError, ValueError):
            self._file.write(json.dumps({"ts": ts, **record}, default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
