"""Every legal state transition of a flux connection, as one table.

Both peers walk the same state: requests are strictly sequential on a connection, so one state
describes the conversation. `TRANSITIONS[(sender, state)][frame_type]` is the next state when
`sender` sends that frame in `state`. Guards that depend on counts (window, all chunks acked) live
in `connection.py`; which frame may come next lives only here.
"""

from __future__ import annotations

import enum

from .frames import FrameType as T


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    START = "start"  # nothing sent yet
    HANDSHAKE = "handshake"  # HELLO sent, waiting for WELCOME
    IDLE = "idle"  # ready for a request
    UPLOAD_OPENING = "upload-opening"  # OPEN_UPLOAD sent, waiting for STATUS
    UPLOADING = "uploading"  # chunks flow client -> server, acks back
    COMMITTING = "committing"  # COMMIT sent, waiting for COMMITTED
    DOWNLOAD_OPENING = "download-opening"  # OPEN_DOWNLOAD sent, waiting for META
    DOWNLOADING = "downloading"  # chunks flow server -> client, acks back
    LISTING = "listing"  # LIST sent, waiting for LISTING
    STATING = "stating"  # STAT sent, waiting for INFO
    DELETING = "deleting"  # DELETE sent, waiting for DELETED
    CLOSED = "closed"  # GOODBYE, a fatal ERROR, or EOF
    ERROR = "error"  # this side detected a protocol violation


C, S = Role.CLIENT, Role.SERVER

TRANSITIONS: dict[tuple[Role, State], dict[T, State]] = {
    (C, State.START): {T.HELLO: State.HANDSHAKE},
    (S, State.HANDSHAKE): {T.WELCOME: State.IDLE, T.ERROR: State.CLOSED},
    (C, State.IDLE): {
        T.OPEN_UPLOAD: State.UPLOAD_OPENING,
        T.OPEN_DOWNLOAD: State.DOWNLOAD_OPENING,
        T.LIST: State.LISTING,
        T.STAT: State.STATING,
        T.DELETE: State.DELETING,
    },
    (S, State.UPLOAD_OPENING): {T.STATUS: State.UPLOADING, T.ERROR: State.IDLE},
    (C, State.UPLOADING): {T.CHUNK: State.UPLOADING, T.COMMIT: State.COMMITTING},
    # An error while chunks may still be in flight ends the connection: the client cannot know
    # which of its in-flight frames the server will still read.
    (S, State.UPLOADING): {T.ACK: State.UPLOADING, T.ERROR: State.CLOSED},
    (S, State.COMMITTING): {T.COMMITTED: State.IDLE, T.ERROR: State.IDLE},
    # META moves to IDLE instead when it announces no chunks (connection.py).
    (S, State.DOWNLOAD_OPENING): {T.META: State.DOWNLOADING, T.ERROR: State.IDLE},
    (S, State.DOWNLOADING): {T.CHUNK: State.DOWNLOADING, T.ERROR: State.CLOSED},
    # The ACK of the last wanted chunk moves to IDLE (connection.py).
    (C, State.DOWNLOADING): {T.ACK: State.DOWNLOADING},
    (S, State.LISTING): {T.LISTING: State.IDLE, T.ERROR: State.IDLE},
    (S, State.STATING): {T.INFO: State.IDLE, T.ERROR: State.IDLE},
    (S, State.DELETING): {T.DELETED: State.IDLE, T.ERROR: State.IDLE},
}

#: States in which either side may PING/PONG without changing state.
LIVE_STATES = frozenset(State) - {State.START, State.HANDSHAKE, State.CLOSED, State.ERROR}

#: States from which either side may say GOODBYE (-> CLOSED).
OPEN_STATES = frozenset(State) - {State.CLOSED, State.ERROR}


def next_state(sender: Role, state: State, ftype: T) -> State | None:
    """The state after `sender` sends a frame of `ftype` in `state`, or None if illegal."""
    if ftype in (T.PING, T.PONG) and state in LIVE_STATES:
        return state
    if ftype == T.GOODBYE and state in OPEN_STATES:
        return State.CLOSED
    if ftype == T.ERROR and sender is Role.CLIENT and state in LIVE_STATES:
        return State.CLOSED  # a client's last word before it hangs up
    return TRANSITIONS.get((sender, state), {}).get(ftype)
