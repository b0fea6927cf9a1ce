"""The requests of one connection (version 2): the table of open requests keyed by rid, the
bytes in flight in both windows, the CHUNK payload limits, and the ends of requests (PROTOCOL.md
sections 6 and 7). `Connection` owns one and hands it every frame that carries a rid."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from .digest import chunk_digest, digest_at
from .errors import FluxError, IntegrityError
from .frames import (
    MAX_RID,
    Ack,
    Chunk,
    Commit,
    Committed,
    Done,
    Entries,
    Error,
    Frame,
    FrameType,
    Made,
    Meta,
    OpenDownload,
    OpenUpload,
    Status,
    chunk_count,
)
from .ranges import count as range_count
from .ranges import is_canonical
from .request import (
    DONE,
    IN_FLIGHT,
    OPEN,
    EndReason,
    Limits,
    Request,
    RequestEnded,
    Transfer,
)
from .state import KIND_FRAMES, OPENING, REQUEST_FRAMES, RequestState, Role, next_request_state

#: How many ended rids are remembered, so that frames still on their way for them are dropped
#: rather than refused (PROTOCOL.md 15.30: at least 4096).
LATE_RIDS = 4096

R = RequestState
#: Request states in which the chunk sender may still have chunks on their way to us.
_CHUNKS_MAY_COME = frozenset(
    {R.UP_OPENING, R.UPLOADING, R.DOWNLOADING, R.DOWN_SHARING, R.CANCELLING}
)
#: Download states in which the server sends chunks: ERROR or DONE only with none in flight.
_SENDING_DOWN = frozenset({R.DOWNLOADING, R.DOWN_SHARING})

_Err = type[FluxError]
#: What processing a frame produces for the receiver: the frame, a COMMIT it completed, ends.
Produced = Frame | RequestEnded


class RequestTable:
    """The open requests of a connection and everything counted across them.

    Attributes:
        requests: open requests by rid (a request in CANCELLING is still open).
        local, peer: the Limits each end announced (`peer` is set by the handshake).
        sent_inflight, received_inflight: payload bytes of chunks in flight from this end,
            and toward it, over all requests.
    """

    def __init__(self, role: Role, local: Limits) -> None:
        self.role = role
        self.local = local
        self.peer = Limits()
        self.requests: dict[int, Request] = {}
        self.sent_inflight = 0
        self.received_inflight = 0
        self._late: dict[int, int] = {}  # ended rid -> largest chunk the peer may still send
        self._limits: dict[int, int] = {}  # rid -> CHUNK payload limit, where not 0
        self._sizes: Counter[int] = Counter()  # the values of _limits, for their maximum
        self._next_rid = 1

    @property
    def max_chunk(self) -> int:
        """The largest CHUNK payload the peer may send for any request now (0: none)."""
        return max(self._sizes, default=0)

    def chunk_limit(self, rid: int) -> int:
        """The largest CHUNK payload the peer may send for request `rid` now (0: none)."""
        return self._limits.get(rid, 0)

    def can_send_chunk(self, rid: int, nbytes: int) -> bool:
        """See `Connection.can_send_chunk`."""
        req = self.requests.get(rid)
        if req is None or req.chunk_sender is not self.role or req.transfer is None:
            return False
        if next_request_state(self.role, req.state, FrameType.CHUNK) is None:
            return False
        return self._window_refusal(req.transfer, nbytes) is None

    def next_rid(self) -> int:
        """See `Connection.next_rid`."""
        while True:
            rid = self._next_rid
            self._next_rid = rid % MAX_RID + 1
            if rid not in self.requests:
                return rid

    def clear(self) -> None:
        """The connection ended: every request with it."""
        self.requests.clear()
        self._late.clear()
        self._limits.clear()
        self._sizes.clear()
        self.sent_inflight = self.received_inflight = 0

    @property
    def idle(self) -> bool:
        """No request is open."""
        return not self.requests

    def process(self, frame: Frame, rid: int, sender: Role, err: _Err, out: list[Produced]) -> None:
        """Check request frame `frame` (its rid: `rid`) from `sender` and apply it.

        Raises `err` (and changes nothing) when it is not allowed; appends to `out` what the
        receiver learns (nothing when this end is the sender, but for RequestEnded).
        """
        ftype = frame.TYPE
        receiving = sender is not self.role
        req = self.requests.get(rid)
        if req is None:
            self._no_request(frame, rid, sender, err, out)
            return
        if ftype in OPENING and sender is Role.CLIENT:
            raise err(f"{ftype.name} for request {rid}, which is already open")
        if receiving and req.state is R.CANCELLING:
            self._crossing_cancel(req, frame, sender, err, out)
            return
        nxt = next_request_state(sender, req.state, ftype)
        if nxt is None:
            raise err(
                f"{sender.value} may not send {ftype.name} in request {rid} ({req.state.value})"
            )
        hook = _HOOKS.get(ftype)
        if hook is not None:
            held = hook(self, req, frame, sender, nxt, err)
            if held is None:
                return  # a COMMIT waiting for its chunks
            nxt = held
        if receiving:
            out.append(frame)
        self._move(req, nxt, frame, out)
        commit, t = req.commit, req.transfer
        if receiving and commit is not None and t is not None and t.chunks == commit.sent:
            self._apply_commit(req, out)

    def _no_request(
        self, frame: Frame, rid: int, sender: Role, err: _Err, out: list[Produced]
    ) -> None:
        """A frame for a rid no open request uses: an opening frame, or a late one to drop."""
        ftype = frame.TYPE
        receiving = sender is not self.role
        if next_request_state(sender, R.NONE, ftype) is not None:
            self._open(frame, rid, err)
            if receiving:
                out.append(frame)
        elif receiving and rid in self._late and ftype in REQUEST_FRAMES[sender]:
            self._check_late_chunk(frame, self._late[rid], rid, err)  # and drop it
        else:
            raise err(f"{ftype.name} for request {rid}, which is not open")

    def _open(self, frame: Frame, rid: int, err: _Err) -> None:
        limit = self.local.requests if self.role is Role.SERVER else self.peer.requests
        if len(self.requests) >= limit:
            raise err(f"{frame.TYPE.name} {rid} would be request {limit + 1}; {limit} may be open")
        req = Request(rid, frame, OPENING[frame.TYPE])
        if isinstance(frame, OpenUpload):  # eager chunks need the geometry before STATUS
            req.transfer = Transfer(frame.size, frame.chunk_size, Role.CLIENT)
        self.requests[rid] = req
        self._late.pop(rid, None)  # the rid is reused: its late frames are behind us
        self._update_limit(req)

    def _move(self, req: Request, nxt: RequestState, frame: Frame, out: list[Produced]) -> None:
        if nxt is R.ENDED:
            self._end(req, _reason(frame), out)
        else:
            req.state = nxt
            self._update_limit(req)

    def _end(self, req: Request, reason: EndReason, out: list[Produced]) -> None:
        del self.requests[req.rid]
        # Chunks the peer sent before it learnt of the end may still arrive (ERROR, CANCEL);
        # after the last ACK of a download every chunk is in, so none can.
        still = 0 if reason is EndReason.DOWNLOADED else self._peer_chunk_limit(req)
        self._release(req, req.inflight)
        self._late[req.rid] = still
        self._set_limit(req.rid, still)
        while len(self._late) > LATE_RIDS:  # forget the oldest (dicts keep insertion order)
            oldest = next(iter(self._late))
            del self._late[oldest]
            self._set_limit(oldest, 0)
        out.append(RequestEnded(req.rid, reason))

    # --- windows and chunk limits ----------------------------------------------------------------

    def _window_refusal(self, t: Transfer, n: int) -> str | None:
        """Why a chunk of `n` bytes may not go now, or None. The sender applies the receiver's
        limits; the receiver its own (so it checks the sender kept them)."""
        sending = t.sender is self.role
        lim = self.peer if sending else self.local
        total = self.sent_inflight if sending else self.received_inflight
        if t.inflight and t.inflight + n > lim.transfer_window:
            return f"the transfer window of {lim.transfer_window} bytes ({t.inflight} in flight)"
        if total and total + n > lim.window:
            return f"the connection window of {lim.window} bytes ({total} in flight)"
        return None

    def _release(self, req: Request, n: int) -> None:
        t = req.transfer
        if t is None or not n:
            return
        t.inflight -= n
        if t.sender is self.role:
            self.sent_inflight -= n
        else:
            self.received_inflight -= n

    def _peer_chunk_limit(self, req: Request) -> int:
        t = req.transfer
        if t is None or t.sender is self.role or req.state not in _CHUNKS_MAY_COME:
            return 0
        return t.chunk_size

    def _update_limit(self, req: Request) -> None:
        self._set_limit(req.rid, self._peer_chunk_limit(req))

    def _set_limit(self, rid: int, limit: int) -> None:
        old = self._limits.pop(rid, 0)
        if old:
            self._sizes[old] -= 1
            if not self._sizes[old]:
                del self._sizes[old]
        if limit:
            self._limits[rid] = limit
            self._sizes[limit] += 1

    @staticmethod
    def _check_late_chunk(
        frame: Frame, limit: int, rid: int, err: _Err, what: str = "ended"
    ) -> None:
        """A dropped CHUNK must still be one its sender could have had on its way."""
        if isinstance(frame, Chunk) and len(frame.data) > limit:
            why = f"its chunk size is {limit}" if limit else "none were on their way"
            raise err(f"CHUNK of {len(frame.data)} bytes for {what} request {rid}; {why}")

    # --- frames crossing a CANCEL ----------------------------------------------------------------

    def _crossing_cancel(
        self, req: Request, frame: Frame, sender: Role, err: _Err, out: list[Produced]
    ) -> None:
        """A frame for a request we cancelled, sent before the peer saw the CANCEL: an ending
        frame ends it (and is delivered), anything else is dropped uncounted."""
        ftype = frame.TYPE
        if ftype not in KIND_FRAMES[req.kind][sender] or (
            sender is Role.CLIENT and ftype is not FrameType.CHUNK  # the server got CANCEL
        ):
            raise err(f"{ftype.name} in cancelled request {req.rid} ({req.kind.name})")
        if isinstance(frame, Meta) and frame.count:  # its chunks may follow: bound them
            want = req.opening.want if isinstance(req.opening, OpenDownload) else None
            req.transfer = Transfer(frame.size, frame.chunk_size, Role.SERVER, want)
            self._update_limit(req)
        self._check_late_chunk(frame, self._peer_chunk_limit(req), req.rid, err, "cancelled")
        reason = _crossing_end(frame)
        if reason is not None:
            out.append(frame)
            self._end(req, reason, out)

    # --- frame hooks: guards that depend on counts; each checks before it changes anything ----

    # --- frame hooks: guards that depend on counts; each checks before it changes anything ----

    def _on_status(self, req: Request, f: Status, s: Role, nxt: R, err: _Err) -> R | None:
        t = req.transfer
        assert t is not None and isinstance(req.opening, OpenUpload)
        if not is_canonical(f.held, t.nchunks):
            raise err("STATUS names chunks beyond the end of the file")
        _check_attach(req.opening.attach, f.tid, err)
        req.tid = f.tid
        return nxt

    def _on_meta(self, req: Request, f: Meta, s: Role, nxt: R, err: _Err) -> R | None:
        op = req.opening
        assert isinstance(op, OpenDownload)
        nchunks = chunk_count(f.size, f.chunk_size)
        want = op.want
        in_range = want is None or is_canonical(want, nchunks)
        expected = nchunks if want is None else range_count(want)
        if f.share and not op.share:
            raise err("META shares a download its request did not ask to share")
        # Shared: `count` is what the transfer still lacks, at most what was asked for.
        fits = f.count <= expected if f.share else f.count in (0, expected)
        if not fits or (f.count and not in_range):
            raise err(f"META announces {f.count} chunks, {expected} were asked for")
        pinned = op.digest is not None and (f.digest, f.chunk_size) != (op.digest, op.chunk_size)
        if f.count and pinned:
            raise err("META announces chunks of another version or geometry than asked for")
        _check_attach(op.attach, f.tid, err)
        req.tid = f.tid
        if f.count == 0:
            return R.ENDED
        req.transfer = Transfer(f.size, f.chunk_size, Role.SERVER, want, f.digests)
        return R.DOWN_SHARING if f.share else nxt

    def _on_chunk(self, req: Request, f: Chunk, sender: Role, nxt: R, err: _Err) -> R | None:
        t = req.transfer
        assert t is not None
        i, n = f.index, len(f.data)
        if i >= t.nchunks or t.marks[i] != OPEN:
            raise err(f"chunk {i} is not expected (out of range, unwanted or repeated)")
        if n != t.chunk_length(i):
            raise err(f"chunk {i} is {n} bytes, expected {t.chunk_length(i)}")
        refusal = self._window_refusal(t, n)
        if refusal is not None:
            raise err(f"chunk {i} of request {req.rid} exceeds {refusal}")
        if t.digests is not None and f.digest != digest_at(t.digests, i):
            raise err(f"chunk {i} digest differs from the one announced in META")
        if sender is not self.role and chunk_digest(f.data) != f.digest:
            raise IntegrityError(f"chunk {i} of request {req.rid} does not match its digest")
        t.marks[i] = IN_FLIGHT
        t.inflight += n
        t.chunks += 1
        if sender is self.role:
            self.sent_inflight += n
        else:
            self.received_inflight += n
        return nxt

    def _on_ack(self, req: Request, f: Ack, s: Role, nxt: R, err: _Err) -> R | None:
        t = req.transfer
        assert t is not None
        for start, cnt in f.ranges:  # check all ranges before changing anything
            if start + cnt > t.nchunks or t.marks[start : start + cnt] != bytes([IN_FLIGHT]) * cnt:
                raise err(f"ACK of chunks {start}..{start + cnt - 1} that are not in flight")
        for start, cnt in f.ranges:
            t.marks[start : start + cnt] = bytes([DONE]) * cnt
            t.acked += cnt
        self._release(req, t.bytes_of(f.ranges))
        # A shared download ends with DONE, whoever carried its chunks.
        if req.state is R.DOWNLOADING and t.complete:
            return R.ENDED
        return nxt

    def _on_done(self, req: Request, f: Done, s: Role, nxt: R, err: _Err) -> R | None:
        t = req.transfer
        if t is not None and t.inflight:  # as for ERROR (15.33): the ACKs come first
            raise err(f"DONE ends download {req.rid} with {t.inflight} bytes in flight")
        return nxt

    def _on_commit(self, req: Request, f: Commit, sender: Role, nxt: R, err: _Err) -> R | None:
        t = req.transfer
        assert t is not None
        if sender is self.role:
            if f.sent != t.chunks:
                raise err(f"COMMIT counts {f.sent} chunks; request {req.rid} sent {t.chunks}")
        elif f.sent != t.chunks:
            # Over QUIC the chunks COMMIT counts may still be on other streams: it waits.
            can_come = t.marks.count(OPEN)
            if not t.chunks < f.sent <= t.chunks + can_come:
                raise err(f"COMMIT counts {f.sent} chunks; {t.chunks} arrived, {can_come} can")
            req.commit = f
            return None
        req.digest = f.digest
        return nxt

    def _apply_commit(self, req: Request, out: list[Produced]) -> None:
        f = req.commit
        assert f is not None
        nxt = next_request_state(self.role.peer, req.state, FrameType.COMMIT)
        assert nxt is not None  # a held COMMIT keeps the request in UP_OPENING or UPLOADING
        req.commit = None
        req.digest = f.digest
        out.append(f)
        self._move(req, nxt, f, out)

    def _on_committed(self, req: Request, f: Committed, s: Role, nxt: R, err: _Err) -> R | None:
        assert isinstance(req.opening, OpenUpload)
        if (f.size, f.digest) != (req.opening.size, req.digest):
            raise err("COMMITTED names another size or digest than OPEN_UPLOAD and COMMIT")
        return nxt

    def _on_entries(self, req: Request, f: Entries, s: Role, nxt: R, err: _Err) -> R | None:
        return R.ENDED if f.done else nxt

    def _on_made(self, req: Request, f: Made, s: Role, nxt: R, err: _Err) -> R | None:
        kind = "dir" if req.kind is FrameType.MKDIR else "link"
        if f.entry.kind != kind:
            raise err(f"MADE describes a {f.entry.kind} in answer to {req.kind.name}")
        return nxt

    def _on_cancel(self, req: Request, f: Frame, s: Role, nxt: R, err: _Err) -> R | None:
        req.commit = None  # a COMMIT still waiting for its chunks is abandoned with the rest
        t = req.transfer
        if t is not None and t.sender is not self.role:
            # The chunks' receiver gives their room back now: it drops every later one, and it
            # must free room no later than their sender does (which is at ERROR 499).
            self._release(req, t.inflight)
        return nxt

    def _on_error(self, req: Request, f: Error, sender: Role, nxt: R, err: _Err) -> R | None:
        t = req.transfer
        if req.state in _SENDING_DOWN and t is not None and t.inflight:
            # A sender that ended its own transfer would free room before the receiver knows,
            # and over QUIC its next chunks (other requests, other streams) could overtake the
            # ERROR and break the receiver's window: it waits for the ACKs first.
            raise err(
                f"ERROR ends download {req.rid} with {t.inflight} bytes in flight; "
                "their ACKs come first"
            )
        return nxt


def _check_attach(attach: bytes | None, tid: bytes, err: _Err) -> None:
    if attach is not None and tid != attach:
        raise err("the transfer id differs from the one the request attached to")


def _reason(frame: Frame) -> EndReason:
    if isinstance(frame, Error):
        return EndReason.CANCELLED if frame.code == 499 else EndReason.ERROR
    return _REASONS[frame.TYPE]


_REASONS = {
    FrameType.COMMITTED: EndReason.COMMITTED,
    FrameType.ACK: EndReason.DOWNLOADED,
    FrameType.DONE: EndReason.DOWNLOADED,
    FrameType.META: EndReason.NO_CHUNKS,
    FrameType.ENTRIES: EndReason.LISTED,
    FrameType.INFO: EndReason.ANSWERED,
    FrameType.DELETED: EndReason.ANSWERED,
    FrameType.MADE: EndReason.ANSWERED,
}


def _crossing_end(frame: Frame) -> EndReason | None:
    """Whether a frame that crossed our CANCEL ends the request (the server ended it first)."""
    if isinstance(frame, Meta) and frame.count:
        return None  # chunks follow
    if isinstance(frame, Entries) and not frame.done:
        return None  # more pages follow
    if isinstance(frame, Error) or frame.TYPE in _CROSSING_ENDS:
        return _reason(frame)
    return None


#: Frames that end a request whatever state it is in (an ACK ends only a download, sent by the
#: client, so it never crosses a CANCEL from the server's side).
_CROSSING_ENDS = frozenset(_REASONS) - {FrameType.ACK}

_Hook = Callable[[RequestTable, Request, Any, Role, RequestState, _Err], RequestState | None]
_HOOKS: dict[FrameType, _Hook] = {
    FrameType.STATUS: RequestTable._on_status,
    FrameType.META: RequestTable._on_meta,
    FrameType.CHUNK: RequestTable._on_chunk,
    FrameType.ACK: RequestTable._on_ack,
    FrameType.DONE: RequestTable._on_done,
    FrameType.COMMIT: RequestTable._on_commit,
    FrameType.COMMITTED: RequestTable._on_committed,
    FrameType.ENTRIES: RequestTable._on_entries,
    FrameType.MADE: RequestTable._on_made,
    FrameType.CANCEL: RequestTable._on_cancel,
    FrameType.ERROR: RequestTable._on_error,
}
