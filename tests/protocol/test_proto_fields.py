"""Field rules: types (a bool is never an integer), ranges, digests, rids, windows, entries;
enforced when a frame is built and when it is decoded."""

from __future__ import annotations

from typing import Any

import pytest
from proto_support import D16, REQ, decoded, rejected

from fluxproto.frames import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_PATH,
    MAX_RID,
    MAX_TARGET,
    MAX_WINDOW,
    MIN_CHUNK,
    MIN_WINDOW,
    FrameType,
)

# --- field types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ftype", "header"),
    [
        (FrameType.PING, {"nonce": True}),
        (FrameType.PONG, {"nonce": False}),
        (FrameType.HELLO, {"magic": "FLUX", "window": True}),
        (FrameType.HELLO, {"magic": "FLUX", "versions": [True]}),
        (FrameType.WELCOME, {"version": True}),
        (FrameType.ERROR, {"code": True}),
        (FrameType.HELLO, {"magic": "FLUX", "transfer_window": True}),
        (FrameType.WELCOME, {"requests": True}),
        (FrameType.WELCOME, {"min_chunk": True}),
        (FrameType.WELCOME, {"max_chunks": True}),
        (FrameType.CHUNK, {**REQ, "index": False, "digest": D16}),
        (FrameType.CHUNK, {"rid": True, "index": 0, "digest": D16}),
        (FrameType.CANCEL, {"rid": True}),
        (FrameType.ERROR, {"rid": True}),
        (FrameType.ACK, {**REQ, "ranges": [[True, 1]]}),
        (FrameType.ACK, {**REQ, "ranges": [[0, True]]}),
        (FrameType.COMMIT, {**REQ, "digest": D16, "sent": True}),
        (FrameType.COMMITTED, {**REQ, "size": True, "digest": D16}),
        (FrameType.OPEN_UPLOAD, {**REQ, "path": "a", "size": True, "chunk_size": MIN_CHUNK}),
        (FrameType.DELETED, {**REQ, "path": "a", "count": True}),
        (FrameType.MKDIR, {**REQ, "path": "a", "mode": True}),
        (FrameType.SYMLINK, {**REQ, "path": "a", "target": "t", "mtime_ns": True}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "file", "size": True}}),
    ],
    ids=lambda v: v.name if isinstance(v, FrameType) else "",
)
def test_bool_is_never_an_integer(ftype: FrameType, header: dict[str, Any]) -> None:
    rejected(ftype, header, match="integer")


@pytest.mark.parametrize(
    ("ftype", "header"),
    [
        (FrameType.PING, {"nonce": 1.0}),
        (FrameType.PING, {"nonce": "1"}),
        (FrameType.PING, {"nonce": None}),
        (FrameType.PING, {"nonce": -1}),
        (FrameType.HELLO, {"versions": 1}),
        (FrameType.HELLO, {"versions": []}),
        (FrameType.HELLO, {"versions": list(range(17))}),
        (FrameType.HELLO, {"versions": [0x10000]}),
        (FrameType.HELLO, {"caps": "resume"}),
        (FrameType.HELLO, {"caps": ["x"] * 65}),
        (FrameType.HELLO, {"caps": ["x" * 65]}),
        (FrameType.HELLO, {"caps": [b"resume"]}),
        (FrameType.HELLO, {"window": MIN_WINDOW - 1}),
        (FrameType.HELLO, {"window": MAX_WINDOW + 1}),
        (FrameType.HELLO, {"agent": "a" * 1025}),
        (FrameType.HELLO, {"token": "t" * 8193}),
        (FrameType.HELLO, {"token": b"secret"}),
        (FrameType.HELLO, {"magic": "HTTP"}),
        (FrameType.HELLO, {"magic": None}),
        (FrameType.ERROR, {"code": 99}),
        (FrameType.ERROR, {"code": 1000}),
        (FrameType.ERROR, {"message": "m" * 1025}),
        (FrameType.HELLO, {"magic": "FLUX", "window": 8192, "transfer_window": 8193}),
        (FrameType.HELLO, {"magic": "FLUX", "transfer_window": MIN_WINDOW - 1}),
        (FrameType.HELLO, {"magic": "FLUX", "requests": 0}),
        (FrameType.WELCOME, {"requests": 1025}),
        (FrameType.WELCOME, {"transfer_window": "big"}),
        (FrameType.WELCOME, {"min_chunk": MIN_CHUNK - 1}),
        (FrameType.WELCOME, {"min_chunk": MAX_CHUNK + 1}),
        (FrameType.WELCOME, {"min_chunk": None}),
        (FrameType.WELCOME, {"max_chunks": 0}),
        (FrameType.WELCOME, {"max_chunks": MAX_CHUNKS + 1}),
        (FrameType.WELCOME, {"max_chunks": 1.5}),
        (FrameType.GOODBYE, {"reason": ["x"]}),
        (FrameType.CANCEL, {"rid": 0}),
        (FrameType.CANCEL, {"rid": MAX_RID + 1}),
        (FrameType.CANCEL, {"rid": -1}),
        (FrameType.CANCEL, {"rid": None}),
        (FrameType.ERROR, {"rid": 0}),
        (FrameType.ERROR, {"rid": "1"}),
        (FrameType.STAT, {"rid": 2**32, "path": "a"}),
        (FrameType.STATUS, {**REQ, "tid": bytes(15)}),
        (FrameType.STATUS, {**REQ, "tid": None}),
        (
            FrameType.OPEN_UPLOAD,
            {**REQ, "path": "a", "size": 0, "chunk_size": MIN_CHUNK, "attach": bytes(17)},
        ),
        (
            FrameType.OPEN_UPLOAD,
            {**REQ, "path": "a", "size": 0, "chunk_size": MIN_CHUNK, "mtime_ns": -1},
        ),
        (FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "attach": "t" * 16}),
        (FrameType.COMMIT, {**REQ, "digest": D16, "sent": 2**32}),
        (FrameType.COMMIT, {**REQ, "digest": D16, "sent": -1}),
        (FrameType.LIST, {**REQ, "path": "a", "recursive": 1}),
        (FrameType.LIST, {**REQ, "path": "a", "digests": 1}),
        (FrameType.LIST, {**REQ, "path": "a", "digests": None}),
        (FrameType.LIST, {**REQ, "path": "a", "digests": b""}),
        (FrameType.DELETE, {**REQ, "path": "a", "recursive": None}),
        (FrameType.MKDIR, {**REQ, "path": "a", "parents": 0}),
        (FrameType.MKDIR, {**REQ, "path": "a", "mode": 0o10000}),
        (FrameType.MKDIR, {**REQ, "path": "a", "mtime_ns": -1}),
        (FrameType.SYMLINK, {**REQ, "path": "a", "target": ""}),
        (FrameType.SYMLINK, {**REQ, "path": "a", "target": "t" * (MAX_TARGET + 1)}),
        (FrameType.SYMLINK, {**REQ, "path": "a", "target": None}),
        (FrameType.SYMLINK, {**REQ, "path": "a", "target": "t", "mtime_ns": -1}),
        (FrameType.SYMLINK, {**REQ, "path": "a", "target": "t", "mtime_ns": 2**63}),
        (FrameType.DELETED, {**REQ, "path": "a", "count": -1}),
        (FrameType.ENTRIES, {**REQ, "entries": {}, "done": True}),
        (
            FrameType.ENTRIES,
            {**REQ, "entries": [{"name": "a", "kind": "file"}] * 1001, "done": True},
        ),
        (FrameType.ENTRIES, {**REQ, "entries": [5], "done": True}),
        (FrameType.ENTRIES, {**REQ, "entries": [], "done": 1}),
        (FrameType.INFO, {**REQ, "entry": "a"}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "link"}}),  # no target
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "link", "target": ""}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "file", "target": "b"}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "socket"}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "", "kind": "file"}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "n" * (MAX_PATH + 1), "kind": "file"}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "file", "mtime_ns": -1}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "file", "mode": 0o10000}}),
        (FrameType.INFO, {**REQ, "entry": {"name": "a", "kind": "file", "digest": b"x"}}),
        (FrameType.MADE, {**REQ, "entry": None}),
    ],
)
def test_bad_field_values_are_rejected(ftype: FrameType, header: dict[str, Any]) -> None:
    rejected(ftype, header)


@pytest.mark.parametrize("digest", [b"", bytes(15), bytes(17), "0" * 32, None, [0] * 16])
def test_wrong_digest_is_rejected(digest: Any) -> None:
    rejected(FrameType.COMMIT, {**REQ, "digest": digest, "sent": 0}, match="digest")
    rejected(FrameType.COMMITTED, {**REQ, "size": 1, "digest": digest}, match="digest")
    rejected(FrameType.CHUNK, {**REQ, "index": 0, "digest": digest}, b"x", match="digest")
    meta = {**REQ, "tid": D16, "size": 1, "chunk_size": MIN_CHUNK, "digest": digest, "count": 1}
    rejected(FrameType.META, meta, D16, match="digest")
    rejected(FrameType.META, {**meta, "digest": D16, "tid": digest}, D16, match="tid")
    rejected(FrameType.STATUS, {**REQ, "tid": digest}, match="tid")
    if digest is not None:  # None is how OPEN_DOWNLOAD says "any version"
        rejected(FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "digest": digest}, match="digest")
        rejected(FrameType.OPEN_DOWNLOAD, {**REQ, "path": "a", "attach": digest}, match="attach")


def test_digest_payload_must_match_the_announced_count() -> None:
    st = {**REQ, "tid": D16}
    rejected(FrameType.STATUS, {**st, "held": [[0, 2]]}, bytes(16), match="digests")
    rejected(FrameType.STATUS, {**st, "held": [[0, 1]]}, bytes(32), match="digests")
    rejected(FrameType.STATUS, {**st, "held": []}, bytes(16), match="digests")
    meta = {**st, "size": 2 * MIN_CHUNK, "chunk_size": MIN_CHUNK, "digest": D16, "count": 0}
    rejected(FrameType.META, meta, bytes(16), match="digests")
    assert decoded(FrameType.META, meta, bytes(32)).count == 0
