"""The tree requests: LIST streamed in ENTRIES pages, STAT, DELETE, MKDIR and SYMLINK answered by
MADE."""

from __future__ import annotations

import pytest
from proto_support import (
    FILE,
    PATH,
    RID,
    ConnectionPair,
    drive,
    drive_request,
    refused_both_ways,
)

from fluxproto import (
    Delete,
    Deleted,
    EndReason,
    Entries,
    Entry,
    Frame,
    FrameType,
    Info,
    ListDir,
    LocalProtocolError,
    Made,
    Mkdir,
    RequestEnded,
    RequestState,
    Role,
    Stat,
    State,
    Symlink,
)

C, S = Role.CLIENT, Role.SERVER
T = FrameType
R = RequestState


# --- the tree -------------------------------------------------------------------------------------


def test_list_streams_pages_until_done() -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(ListDir(RID, "dir", recursive=True))
    pages = [
        Entries(RID, (Entry("a", "dir"), Entry("a/b.txt", "file", 3)), done=False),
        Entries(RID, (Entry("a/l", "link", target="b.txt"),), done=False),
        Entries(RID, (), done=True),
    ]
    for page in pages[:2]:
        assert pair.s2c(page) == [page]
        assert pair.rstates() == (R.LISTING, R.LISTING)
    assert pair.s2c(pages[2]) == [pages[2], RequestEnded(RID, EndReason.LISTED)]


@pytest.mark.parametrize(
    ("request_frame", "answer"),
    [
        (Stat(RID, PATH), Info(RID, Entry("file.bin", "file", len(FILE)))),
        (Delete(RID, "dir", recursive=True), Deleted(RID, "dir", 12)),
        (Mkdir(RID, "a/b", 0o700, 5, parents=True), Made(RID, Entry("b", "dir", mode=0o700))),
        (Symlink(RID, "l", "a/b", 7), Made(RID, Entry("l", "link", mtime_ns=7, target="a/b"))),
    ],
    ids=["stat", "delete", "mkdir", "symlink"],
)
def test_one_answer_requests(request_frame: Frame, answer: Frame) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(request_frame)
    assert pair.s2c(answer) == [answer, RequestEnded(RID, EndReason.ANSWERED)]
    assert pair.rstates() == (R.NONE, R.NONE)


@pytest.mark.parametrize(
    ("request_frame", "answer"),
    [
        (Mkdir(RID, "d"), Made(RID, Entry("d", "file"))),
        (Symlink(RID, "l", "t"), Made(RID, Entry("l", "dir"))),
    ],
    ids=["mkdir-made-a-file", "symlink-made-a-dir"],
)
def test_made_describes_what_was_asked_for(request_frame: Frame, answer: Frame) -> None:
    pair = drive(ConnectionPair(), State.OPEN)
    pair.c2s(request_frame)
    refused_both_ways(pair, S, answer, match="MADE describes")


def test_frame_that_fails_to_encode_leaves_state_unchanged() -> None:
    pair = drive_request(ConnectionPair(), R.LISTING)
    big = Entries(RID, tuple(Entry("n" * 1000 + str(i), "file") for i in range(100)))
    with pytest.raises(LocalProtocolError, match="header"):
        pair.server.send(big)
    with pytest.raises(LocalProtocolError):
        pair.client.send(Stat(2, "\ud800"))
    assert pair.rstates() == (R.LISTING, R.LISTING)
    assert 2 not in pair.client.requests
