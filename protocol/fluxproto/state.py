"""Every legal state transition of a flux connection and of each of its requests, as data.

Version 2 has two levels (PROTOCOL.md section 6). The connection walks START -> HANDSHAKE -> OPEN ->
CLOSED (ERROR: this end saw a violation). While OPEN, each request (keyed by its `rid`) walks
its own copy of the request table. `CONNECTION_TRANSITIONS[(sender, state)][frame_type]` and
`REQUEST_TRANSITIONS[(sender, request_state)][frame_type]` give the next state for a frame
`sender` sends. Guards that depend on counts (windows, wanted chunks, COMMIT's `sent`), the
three conditional ends (`MAY_END`) and META's choice of a shared download (`MAY_SHARE`) live in
`multiplex.py`; which frame may come next lives only here.
"""

from __future__ import annotations

import enum

from .frames import FrameType as T


class Role(enum.Enum):
    """Which end of the connection: the client opens requests, the server answers them."""

    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        """The other end."""
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    """The connection's state."""

    START = "start"  # nothing sent yet
    HANDSHAKE = "handshake"  # HELLO sent, waiting for WELCOME
    OPEN = "open"  # requests may be opened
    CLOSED = "closed"  # GOODBYE, an ERROR without rid, or end of stream
    ERROR = "error"  # this side detected a protocol violation


class RequestState(enum.Enum):
    """The state of one request. NONE: no open request has the rid; ENDED: it just ended."""

    NONE = "none"
    UP_OPENING = "up-opening"  # OPEN_UPLOAD sent; eager chunks and COMMIT may follow
    UPLOADING = "uploading"  # STATUS came; chunks and ACKs flow
    UP_COMMITTING_EARLY = "up-committing-early"  # COMMIT sent before STATUS came
    COMMITTING = "committing"  # COMMIT sent and STATUS came, waiting for COMMITTED
    DOWN_OPENING = "down-opening"  # OPEN_DOWNLOAD sent, waiting for META
    DOWNLOADING = "downloading"  # chunks flow server -> client, ACKs back
    DOWN_SHARING = "down-sharing"  # the same, chunks from a queue shared with other requests
    LISTING = "listing"  # LIST sent, ENTRIES pages until `done`
    STATING = "stating"  # STAT sent, waiting for INFO
    DELETING = "deleting"  # DELETE sent, waiting for DELETED
    MAKING = "making"  # MKDIR or SYMLINK sent, waiting for MADE
    CANCELLING = "cancelling"  # CANCEL sent, waiting for ERROR 499
    ENDED = "ended"


C, S = Role.CLIENT, Role.SERVER
R = RequestState

CONNECTION_TRANSITIONS: dict[tuple[Role, State], dict[T, State]] = {
    (C, State.START): {T.HELLO: State.HANDSHAKE, T.GOODBYE: State.CLOSED},
    (S, State.START): {T.GOODBYE: State.CLOSED},
    (C, State.HANDSHAKE): {T.GOODBYE: State.CLOSED},
    (S, State.HANDSHAKE): {T.WELCOME: State.OPEN, T.ERROR: State.CLOSED, T.GOODBYE: State.CLOSED},
    # ERROR here is one without rid: it ends the connection (the client's is its last word).
    (C, State.OPEN): {T.PING: State.OPEN, T.PONG: State.OPEN, T.GOODBYE: State.CLOSED,
                      T.ERROR: State.CLOSED},
    (S, State.OPEN): {T.PING: State.OPEN, T.PONG: State.OPEN, T.GOODBYE: State.CLOSED,
                      T.ERROR: State.CLOSED},
}  # fmt: skip

#: The frame that opens each kind of request, and the state it opens in.
OPENING: dict[T, RequestState] = {
    T.OPEN_UPLOAD: R.UP_OPENING,
    T.OPEN_DOWNLOAD: R.DOWN_OPENING,
    T.LIST: R.LISTING,
    T.STAT: R.STATING,
    T.DELETE: R.DELETING,
    T.MKDIR: R.MAKING,
    T.SYMLINK: R.MAKING,
}

_REQUEST_ROWS: dict[tuple[Role, RequestState], dict[T, RequestState]] = {
    (C, R.NONE): dict(OPENING),
    (C, R.UP_OPENING): {T.CHUNK: R.UP_OPENING, T.COMMIT: R.UP_COMMITTING_EARLY},
    (S, R.UP_OPENING): {T.STATUS: R.UPLOADING},
    (C, R.UPLOADING): {T.CHUNK: R.UPLOADING, T.COMMIT: R.COMMITTING},
    (S, R.UPLOADING): {T.ACK: R.UPLOADING},
    (S, R.UP_COMMITTING_EARLY): {T.STATUS: R.COMMITTING},
    (S, R.COMMITTING): {T.ACK: R.COMMITTING, T.COMMITTED: R.ENDED},
    (S, R.DOWN_OPENING): {T.META: R.DOWNLOADING},
    (S, R.DOWNLOADING): {T.CHUNK: R.DOWNLOADING},
    (C, R.DOWNLOADING): {T.ACK: R.DOWNLOADING},
    (S, R.DOWN_SHARING): {T.CHUNK: R.DOWN_SHARING, T.DONE: R.ENDED},
    (C, R.DOWN_SHARING): {T.ACK: R.DOWN_SHARING},
    (S, R.LISTING): {T.ENTRIES: R.LISTING},
    (S, R.STATING): {T.INFO: R.ENDED},
    (S, R.DELETING): {T.DELETED: R.ENDED},
    (S, R.MAKING): {T.MADE: R.ENDED},
}

#: States of an open request (every state but NONE and ENDED).
OPEN_REQUEST_STATES = frozenset(R) - {R.NONE, R.ENDED}


def _request_table() -> dict[tuple[Role, RequestState], dict[T, RequestState]]:
    table = {key: dict(row) for key, row in _REQUEST_ROWS.items()}
    for state in OPEN_REQUEST_STATES:
        # ERROR with a rid ends that request, whatever its state; CANCEL abandons it once.
        table.setdefault((S, state), {})[T.ERROR] = R.ENDED
        if state is not R.CANCELLING:
            table.setdefault((C, state), {})[T.CANCEL] = R.CANCELLING
    return table


REQUEST_TRANSITIONS: dict[tuple[Role, RequestState], dict[T, RequestState]] = _request_table()

#: (state, frame) pairs that end the request instead of the table's next state, depending on the
#: frame: META with `count` 0, the ACK of the last wanted chunk, ENTRIES with `done`.
MAY_END: frozenset[tuple[RequestState, T]] = frozenset(
    {(R.DOWN_OPENING, T.META), (R.DOWNLOADING, T.ACK), (R.LISTING, T.ENTRIES)}
)

#: (state, frame) pairs that lead to DOWN_SHARING instead of the table's next state when the
#: frame says so: META with `share` (and chunks) answering an OPEN_DOWNLOAD that asked to share.
MAY_SHARE: frozenset[tuple[RequestState, T]] = frozenset({(R.DOWN_OPENING, T.META)})

#: Frames that carry a rid (ERROR only when it has one).
REQUEST_FRAMES: dict[Role, frozenset[T]] = {
    role: frozenset(t for (who, _), row in REQUEST_TRANSITIONS.items() if who is role for t in row)
    for role in Role
}


def _kind_frames(opening: T) -> dict[Role, frozenset[T]]:
    """Every frame each side may send in a request opened by `opening` (a walk of the table)."""
    seen: set[RequestState] = set()
    todo = [OPENING[opening], R.CANCELLING]
    found: dict[Role, set[T]] = {C: {opening}, S: set()}
    while todo:
        state = todo.pop()
        if state in seen or state is R.ENDED:
            continue
        seen.add(state)
        for role in Role:
            for ftype, nxt in REQUEST_TRANSITIONS.get((role, state), {}).items():
                found[role].add(ftype)
                todo.append(nxt)
                if (state, ftype) in MAY_SHARE:
                    todo.append(R.DOWN_SHARING)
    return {role: frozenset(frames) for role, frames in found.items()}


#: For each kind of request (its opening frame), the frames each side may send in it.
KIND_FRAMES: dict[T, dict[Role, frozenset[T]]] = {
    opening: _kind_frames(opening) for opening in OPENING
}


def next_state(sender: Role, state: State, ftype: T) -> State | None:
    """The connection state after `sender` sends a connection frame of `ftype` (for ERROR: one
    without rid) in `state`, or None if illegal. Request frames are legal only in OPEN and
    leave the connection state alone (see `next_request_state`)."""
    return CONNECTION_TRANSITIONS.get((sender, state), {}).get(ftype)


def next_request_state(sender: Role, state: RequestState, ftype: T) -> RequestState | None:
    """The request state after `sender` sends a request frame of `ftype` in `state` (NONE for a
    rid no open request uses), or None if illegal. Where (`state`, `ftype`) is in `MAY_END`
    the frame's content may end the request instead."""
    return REQUEST_TRANSITIONS.get((sender, state), {}).get(ftype)
