"""The access record of one request: what it moved so far and how it ended, one line each."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fluxproto import FluxError

from ..access import AccessLog
from ..auth.scopes import Grant
from .caller import Caller

__all__ = ["Record", "recorded", "refusal", "result_of"]


class Record:
    """A request's access-log line in the making."""

    def __init__(self, **fields: Any) -> None:
        #: Who asked for what, since when (monotonic): the admin status page's live list.
        self.op, self.path, self.subject, self.transport = "", "", "", ""
        self.started = time.monotonic()
        #: The file's size when known (uploads; downloads once opened): the page's progress.
        self.size: int | None = None
        #: Payload bytes the request stored or had acknowledged so far: kept current, so an
        #: interrupted transfer logs what it did move.
        self.bytes = 0
        #: Fields of this kind of request beyond the common ones (`recursive`, `count`).
        self.fields: dict[str, Any] = dict(fields)


def result_of(exc: FluxError) -> str:
    """The `result` field for a request that failed with `exc`."""
    return f"error {exc.code}: {exc.message}"


@asynccontextmanager
async def recorded(
    access: AccessLog, caller: Caller, op: str, path: str | None, **fields: Any
) -> AsyncIterator[Record]:
    """Write one access record when the body ends: `ok`, the flux error it raised (or the reason
    the connection was ended, if it was), or no result when it was cancelled. `fields` (and
    what the body adds to `Record.fields`) are written too."""
    record = Record(**fields)
    started = record.started
    record.op, record.path = op, path or ""
    record.subject, record.transport = caller.grant.subject, caller.transport
    access.live.add(record)
    result: str | None = None
    try:
        yield record
        result = "ok"
    except FluxError as exc:
        result = result_of(caller.presence.ended_by or exc)
        raise
    finally:
        access.live.discard(record)
        grant = caller.grant
        access.write(
            peer=caller.peer,
            transport=caller.transport,
            subject=grant.subject,
            jti=grant.jti,
            op=op,
            path=path,
            result=result,
            bytes=record.bytes,
            duration=round(time.monotonic() - started, 6),
            **record.fields,
            **caller.details,
        )


def refusal(
    access: AccessLog,
    peer: str,
    transport: str,
    grant: Grant | None,
    exc: FluxError,
    duration: float,
) -> None:
    """Record a connection refused before it could make requests (`op` connect)."""
    access.write(
        peer=peer,
        transport=transport,
        subject=grant.subject if grant else None,
        jti=grant.jti if grant else None,
        op="connect",
        result=result_of(exc),
        duration=duration,
    )
