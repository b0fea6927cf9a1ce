"""What a connection keeps per request: its state, the transfer's chunk bookkeeping, the bytes
in flight, and the event that reports its end. No frame handling here (see connection.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .codec import Buffer
from .errors import LocalProtocolError
from .frames import (
    DEFAULT_REQUESTS,
    DEFAULT_WINDOW,
    MAX_REQUESTS,
    MAX_WINDOW,
    MIN_WINDOW,
    Commit,
    Frame,
    FrameType,
    chunk_count,
)
from .ranges import Ranges, count
from .state import RequestState, Role

# Per-chunk marks in a transfer.
OPEN, IN_FLIGHT, DONE, UNWANTED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Limits:
    """What one end announced in HELLO or WELCOME: bytes of chunks it takes in flight toward it
    (all transfers together, and within one), and how many requests it keeps open."""

    window: int = DEFAULT_WINDOW
    transfer_window: int = DEFAULT_WINDOW
    requests: int = DEFAULT_REQUESTS

    def __post_init__(self) -> None:
        if not MIN_WINDOW <= self.window <= MAX_WINDOW:
            raise LocalProtocolError(f"window {self.window} not in [{MIN_WINDOW}, {MAX_WINDOW}]")
        if not MIN_WINDOW <= self.transfer_window <= self.window:
            raise LocalProtocolError(
                f"transfer_window {self.transfer_window} not in [{MIN_WINDOW}, {self.window}]"
            )
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise LocalProtocolError(f"requests {self.requests} not in [1, {MAX_REQUESTS}]")


class EndReason(enum.Enum):
    """Why a request ended."""

    COMMITTED = "committed"  # COMMITTED
    DOWNLOADED = "downloaded"  # the ACK of the last wanted chunk
    NO_CHUNKS = "no-chunks"  # META with count 0 (nothing wanted, or re-plan)
    LISTED = "listed"  # ENTRIES with done
    ANSWERED = "answered"  # INFO, DELETED or MADE
    ERROR = "error"  # ERROR with its rid (any code but 499)
    CANCELLED = "cancelled"  # ERROR 499, the answer to CANCEL


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """Request `rid` ended; its rid is free again and its chunks left both windows."""

    rid: int
    reason: EndReason


class Transfer:
    """Chunk bookkeeping for one upload or download: which chunks moved, which are acked, and
    the payload bytes in flight (sent or received, not yet acknowledged)."""

    __slots__ = (
        "acked",
        "chunk_size",
        "chunks",
        "digests",
        "expected",
        "inflight",
        "marks",
        "nchunks",
        "sender",
        "size",
    )

    def __init__(
        self,
        size: int,
        chunk_size: int,
        sender: Role,
        want: Ranges | None = None,
        digests: Buffer | None = None,
    ) -> None:
        self.size, self.chunk_size, self.sender = size, chunk_size, sender
        self.nchunks = chunk_count(size, chunk_size)
        self.digests = digests
        self.inflight = 0  # payload bytes in flight
        self.chunks = 0  # CHUNK frames of this request sent (or received) so far
        self.acked = 0
        if want is None:
            self.marks = bytearray(self.nchunks)
            self.expected = self.nchunks
        else:
            self.marks = bytearray([UNWANTED]) * self.nchunks
            for start, cnt in want:
                self.marks[start : start + cnt] = bytes(cnt)
            self.expected = count(want)

    def chunk_length(self, index: int) -> int:
        """Payload length of chunk `index` (the last chunk may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def bytes_of(self, ranges: Ranges) -> int:
        """Payload bytes of the chunks `ranges` names (all within the file)."""
        total = 0
        for start, cnt in ranges:
            total += cnt * self.chunk_size
            if start + cnt == self.nchunks:  # the last chunk may be short
                total -= self.chunk_size - self.chunk_length(self.nchunks - 1)
        return total

    @property
    def complete(self) -> bool:
        """Every wanted chunk is acknowledged."""
        return self.acked == self.expected


class Request:
    """One open request of a connection, as both ends track it.

    Attributes:
        rid: the request id.
        kind: the type of the frame that opened it (OPEN_UPLOAD, LIST, ...).
        opening: that frame.
        state: where it is in the request table.
        transfer: chunk bookkeeping once the transfer's geometry is known (an upload's at
            OPEN_UPLOAD, a download's at META with chunks), else None.
        tid: the transfer id from STATUS or META.
        commit: on the server, a COMMIT that arrived before all the chunks it counts; it takes
            effect (and is reported) when the last of them arrives.
        digest: COMMIT's whole-file digest once it took effect.
    """

    __slots__ = ("commit", "digest", "kind", "opening", "rid", "state", "tid", "transfer")

    def __init__(self, rid: int, opening: Frame, state: RequestState) -> None:
        self.rid = rid
        self.kind: FrameType = opening.TYPE
        self.opening = opening
        self.state = state
        self.transfer: Transfer | None = None
        self.tid: bytes | None = None
        self.commit: Commit | None = None
        self.digest: bytes | None = None

    @property
    def chunk_sender(self) -> Role | None:
        """Who sends this request's chunks (None: a request without chunks)."""
        if self.kind is FrameType.OPEN_UPLOAD:
            return Role.CLIENT
        if self.kind is FrameType.OPEN_DOWNLOAD:
            return Role.SERVER
        return None

    @property
    def inflight(self) -> int:
        """Payload bytes of this request's chunks in flight."""
        return self.transfer.inflight if self.transfer is not None else 0

    def __repr__(self) -> str:
        return f"Request(rid={self.rid}, {self.kind.name}, {self.state.value})"
