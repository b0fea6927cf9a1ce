"""The two state tables, exhaustively: every (state, sender, frame) of the connection and of a
request is legal or refused as PROTOCOL.md section 6 says, at the sender (LocalProtocolError,
nothing changes) and at the receiver (RemoteProtocolError), except for frames that cross a
CANCEL."""

from __future__ import annotations

import pytest
from proto_support import (
    REQUEST_SAMPLES,
    RID,
    SAMPLES,
    ConnectionPair,
    chunk,
    drive,
    drive_request,
    ends,
)

from fluxproto import (
    Connection,
    EndReason,
    Error,
    Frame,
    FrameType,
    LocalProtocolError,
    RemoteProtocolError,
    RequestEnded,
    RequestState,
    Role,
    State,
    encode_bytes,
)
from fluxproto.state import MAY_END, MAY_SHARE, next_request_state, next_state

C, S = Role.CLIENT, Role.SERVER
T = FrameType
R = RequestState

# --- the specification, written out independently of state.py -------------------------------------

CONNECTION_FRAMES = [T.HELLO, T.WELCOME, T.PING, T.PONG, T.GOODBYE, T.ERROR]
REQUEST_TYPES = [t for t in FrameType if t not in CONNECTION_FRAMES[:5]]  # ERROR with a rid


def control() -> dict[FrameType, State]:
    return {T.PING: State.OPEN, T.PONG: State.OPEN, T.GOODBYE: State.CLOSED, T.ERROR: State.CLOSED}


LEGAL_CONNECTION: dict[tuple[State, Role], dict[FrameType, State]] = {
    (State.START, C): {T.HELLO: State.HANDSHAKE, T.GOODBYE: State.CLOSED},
    (State.START, S): {T.GOODBYE: State.CLOSED},
    (State.HANDSHAKE, C): {T.GOODBYE: State.CLOSED},
    (State.HANDSHAKE, S): {T.WELCOME: State.OPEN, T.ERROR: State.CLOSED, T.GOODBYE: State.CLOSED},
    (State.OPEN, C): control(),  # ERROR without rid: the client's last word
    (State.OPEN, S): control(),
    (State.CLOSED, C): {},
    (State.CLOSED, S): {},
    (State.ERROR, C): {},
    (State.ERROR, S): {},
}


def answers(*pairs: tuple[FrameType, RequestState]) -> dict[FrameType, RequestState]:
    """A server row: the frames given, and ERROR (with the rid) ending the request."""
    return {**dict(pairs), T.ERROR: R.ENDED}


LEGAL_REQUEST: dict[tuple[RequestState, Role], dict[FrameType, RequestState]] = {
    (R.NONE, C): {
        T.OPEN_UPLOAD: R.UP_OPENING,
        T.OPEN_DOWNLOAD: R.DOWN_OPENING,
        T.LIST: R.LISTING,
        T.STAT: R.STATING,
        T.DELETE: R.DELETING,
        T.MKDIR: R.MAKING,
        T.SYMLINK: R.MAKING,
    },
    (R.NONE, S): {},
    (R.UP_OPENING, C): {T.CHUNK: R.UP_OPENING, T.COMMIT: R.UP_COMMITTING_EARLY},
    (R.UP_OPENING, S): answers((T.STATUS, R.UPLOADING)),
    (R.UPLOADING, C): {T.CHUNK: R.UPLOADING, T.COMMIT: R.COMMITTING},
    (R.UPLOADING, S): answers((T.ACK, R.UPLOADING)),
    (R.UP_COMMITTING_EARLY, C): {},
    (R.UP_COMMITTING_EARLY, S): answers((T.STATUS, R.COMMITTING)),
    (R.COMMITTING, C): {},
    (R.COMMITTING, S): answers((T.ACK, R.COMMITTING), (T.COMMITTED, R.ENDED)),
    (R.DOWN_OPENING, C): {},
    # ENDED when count is 0, DOWN_SHARING when META shares (MAY_SHARE)
    (R.DOWN_OPENING, S): answers((T.META, R.DOWNLOADING)),
    (R.DOWNLOADING, C): {T.ACK: R.DOWNLOADING},  # ENDED with the last wanted chunk
    (R.DOWNLOADING, S): answers((T.CHUNK, R.DOWNLOADING)),
    (R.DOWN_SHARING, C): {T.ACK: R.DOWN_SHARING},  # never ENDED by an ACK
    (R.DOWN_SHARING, S): answers((T.CHUNK, R.DOWN_SHARING), (T.DONE, R.ENDED)),
    (R.LISTING, C): {},
    (R.LISTING, S): answers((T.ENTRIES, R.LISTING)),  # ENDED when done
    (R.STATING, C): {},
    (R.STATING, S): answers((T.INFO, R.ENDED)),
    (R.DELETING, C): {},
    (R.DELETING, S): answers((T.DELETED, R.ENDED)),
    (R.MAKING, C): {},
    (R.MAKING, S): answers((T.MADE, R.ENDED)),
    (R.CANCELLING, C): {},
    (R.CANCELLING, S): answers(),  # ERROR 499 (or another code) ends it
    (R.ENDED, C): {},
    (R.ENDED, S): {},
}
# The client may cancel any open request once.
for (_state, _role), _row in LEGAL_REQUEST.items():
    if _role is C and _state not in (R.NONE, R.ENDED, R.CANCELLING):
        _row[T.CANCEL] = R.CANCELLING

REQUEST_STATES = [s for s in RequestState if s is not R.ENDED]


def received(conn: Connection, frame: Frame) -> list[object]:
    conn.receive_data(encode_bytes(frame))
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def refused_by_sender(sender: Connection, frame: Frame) -> None:
    before = (sender.state, {rid: r.state for rid, r in sender.requests.items()})
    with pytest.raises(LocalProtocolError):
        sender.send(frame)
    assert (sender.state, {rid: r.state for rid, r in sender.requests.items()}) == before
    assert sender.data_to_send() == []


def refused_by_receiver(receiver: Connection, frame: Frame) -> None:
    with pytest.raises(RemoteProtocolError):
        received(receiver, frame)
    assert receiver.state is State.ERROR


# --- the tables themselves ------------------------------------------------------------------------


def test_connection_table_matches_state_module() -> None:
    for state in State:
        for role in Role:
            for ftype in CONNECTION_FRAMES:
                expected = LEGAL_CONNECTION[(state, role)].get(ftype)
                assert next_state(role, state, ftype) == expected, (state, role, ftype)


def test_request_table_matches_state_module() -> None:
    for state in RequestState:
        for role in Role:
            for ftype in FrameType:
                expected = LEGAL_REQUEST[(state, role)].get(ftype)
                assert next_request_state(role, state, ftype) == expected, (state, role, ftype)


def test_conditional_ends_are_data() -> None:
    assert {(R.DOWN_OPENING, T.META), (R.DOWNLOADING, T.ACK), (R.LISTING, T.ENTRIES)} == MAY_END
    assert {(R.DOWN_OPENING, T.META)} == MAY_SHARE


# --- connection states ----------------------------------------------------------------------------

CONNECTION_LEGAL = [
    pytest.param(state, role, ftype, nxt, id=f"{state.value}-{role.value}-{ftype.name}")
    for (state, role), row in LEGAL_CONNECTION.items()
    for ftype, nxt in row.items()
]
CONNECTION_ILLEGAL = [
    pytest.param(state, role, ftype, id=f"{state.value}-{role.value}-{ftype.name}")
    for state in (State.START, State.HANDSHAKE, State.OPEN, State.CLOSED)
    for role in Role
    # In OPEN, request frames belong to the request table (tested below).
    for ftype in (CONNECTION_FRAMES if state is State.OPEN else list(FrameType))
    if ftype not in LEGAL_CONNECTION[(state, role)]
]


@pytest.mark.parametrize(("state", "role", "ftype", "nxt"), CONNECTION_LEGAL)
def test_legal_connection_transition(state: State, role: Role, ftype: T, nxt: State) -> None:
    pair = drive(ConnectionPair(), state)
    sender, _ = ends(pair, role)
    frame = {T.HELLO: pair.client.hello(), T.WELCOME: pair.server.welcome()}.get(
        ftype, SAMPLES[ftype]
    )
    assert pair.send(sender, frame) == [frame]
    assert pair.states == (nxt, nxt)


@pytest.mark.parametrize(("state", "role", "ftype"), CONNECTION_ILLEGAL)
def test_illegal_connection_transition(state: State, role: Role, ftype: T) -> None:
    pair = drive(ConnectionPair(), state)
    sender, receiver = ends(pair, role)
    frame = REQUEST_SAMPLES[ftype] if state is not State.OPEN else SAMPLES[ftype]
    refused_by_sender(sender, frame)
    if state is State.CLOSED:
        # What the peer sent before it saw the close is dropped, not an error.
        assert received(receiver, frame) == []
        assert receiver.state is State.CLOSED
    else:
        refused_by_receiver(receiver, frame)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
def test_nothing_but_a_last_error_may_be_sent_in_error_state(ftype: T) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.server.receive_data(b"\xff" * 9)
    with pytest.raises(RemoteProtocolError):
        pair.server.next_event()
    assert pair.server.state is State.ERROR
    if ftype is T.ERROR:
        with pytest.raises(LocalProtocolError):
            pair.server.send(Error(400, "with a rid", RID))  # the last word is the connection's
        pair.server.send(Error(400, "you broke the protocol"))
        assert pair.server.state is State.CLOSED
        assert pair.server.data_to_send()
    else:
        refused_by_sender(pair.server, REQUEST_SAMPLES[ftype])


# --- request states -------------------------------------------------------------------------------

REQUEST_LEGAL = [
    pytest.param(state, role, ftype, nxt, id=f"{state.value}-{role.value}-{ftype.name}")
    for (state, role), row in LEGAL_REQUEST.items()
    for ftype, nxt in row.items()
]
REQUEST_ILLEGAL = [
    pytest.param(state, role, ftype, id=f"{state.value}-{role.value}-{ftype.name}")
    for state in REQUEST_STATES
    for role in Role
    for ftype in REQUEST_TYPES
    if ftype not in LEGAL_REQUEST[(state, role)]
]


def setup_for(pair: ConnectionPair, state: RequestState, ftype: T) -> None:
    """What a legal `ftype` needs first: an ACK needs a chunk in flight toward its sender."""
    if ftype is T.ACK and state is R.UPLOADING:
        pair.c2s(chunk(0))
    elif ftype is T.ACK and state in (R.DOWNLOADING, R.DOWN_SHARING):
        pair.s2c(chunk(0))


@pytest.mark.parametrize(("state", "role", "ftype", "nxt"), REQUEST_LEGAL)
def test_legal_request_transition(state: R, role: Role, ftype: T, nxt: R) -> None:
    pair = drive_request(ConnectionPair(), state)
    setup_for(pair, state, ftype)
    sender, _ = ends(pair, role)
    frame = REQUEST_SAMPLES[ftype]
    ended = sender.send(frame)
    events = pair.flush(sender)
    if nxt is R.ENDED:
        assert ended is not None and ended.rid == RID
        assert events == [frame, ended]
        assert pair.rstates() == (R.NONE, R.NONE)
    else:
        assert ended is None
        assert events == [frame]
        assert pair.rstates() == (nxt, nxt)


# A frame the server sent before it saw CANCEL reaches a client in CANCELLING: frames of the
# request's kind are dropped, or end it if they would have; anything else is still an error.
CROSSING_DROPPED = {(C, T.STATUS), (C, T.ACK), (S, T.CHUNK)}  # (receiver, frame), upload kind
CROSSING_ENDS = {T.COMMITTED: EndReason.COMMITTED}


@pytest.mark.parametrize(("state", "role", "ftype"), REQUEST_ILLEGAL)
def test_illegal_request_transition(state: R, role: Role, ftype: T) -> None:
    pair = drive_request(ConnectionPair(), state)
    sender, receiver = ends(pair, role)
    frame = REQUEST_SAMPLES[ftype]
    refused_by_sender(sender, frame)
    if state is R.CANCELLING and (role.peer, ftype) in CROSSING_DROPPED:
        assert received(receiver, frame) == []
        assert receiver.requests[RID].state is R.CANCELLING
    elif state is R.CANCELLING and role is S and ftype in CROSSING_ENDS:
        assert received(receiver, frame) == [frame, RequestEnded(RID, CROSSING_ENDS[ftype])]
    else:
        refused_by_receiver(receiver, frame)


@pytest.mark.parametrize("state", [s for s in REQUEST_STATES if s is not R.NONE])
@pytest.mark.parametrize("role", list(Role))
def test_ping_pong_and_other_requests_go_on_in_every_request_state(state: R, role: Role) -> None:
    pair = drive_request(ConnectionPair(), state)
    sender, receiver = ends(pair, role)
    assert pair.send(sender, SAMPLES[T.PING]) == [SAMPLES[T.PING]]
    assert pair.send(receiver, SAMPLES[T.PONG]) == [SAMPLES[T.PONG]]
    stat = REQUEST_SAMPLES[T.STAT]
    other = type(stat)(RID + 1, "other")  # type: ignore[call-arg]
    pair.c2s(other)
    assert pair.rstates() == (state, state)
    assert pair.rstates(RID + 1) == (R.STATING, R.STATING)
