"""Structured logging: one JSON object per line on stderr, with `event` naming what happened."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = logging.getLogger("fluxd")

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as `{"ts": ..., "level": ..., "event": ..., **fields}`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info and record.levelno >= logging.ERROR:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False
    # aioquic logs per-connection errors (a client with a wrong CA, say) under "quic".
    quic = logging.getLogger("quic")
    quic.handlers[:] = [handler]
    quic.setLevel(logging.WARNING if LOGGER.level < logging.WARNING else LOGGER.level)
    quic.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `name` with `fields` as top-level JSON keys."""
    LOGGER.log(level, name, extra=fields)
