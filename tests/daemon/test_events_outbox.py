"""The events outbox: durable before emitted, bounded, and what a crash at each point leaves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxd.config import EventsConfig
from fluxd.events import Events
from fluxd.events.hooks import sign
from fluxd.events.outbox import Outbox, OutboxFull
from fluxproto.errors import StorageError

WRITE_ONE = """
import sys
from pathlib import Path
from fluxd.events.outbox import Outbox
box = Outbox(Path(sys.argv[1]), 10)
box.open()
box.write({"id": "abc", "type": "deleted"}, 1)
"""


def test_write_load_remove_and_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 10)
    assert box.open() == []
    names = [box.write({"id": f"e{i}"}, 100 - i) for i in range(3)]
    assert Outbox(tmp_path, 10).open() == sorted(names)  # emission time orders them
    assert box.load(names[0]) == {"id": "e0"}
    box.remove(names[0])
    assert box.load(names[0]) is None and len(box) == 2


def test_a_full_outbox_refuses_and_frees_as_events_leave(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 2)
    box.open()
    first = box.write({"id": "a"}, 1)
    box.write({"id": "b"}, 2)
    with pytest.raises(OutboxFull):
        box.write({"id": "c"}, 3)
    box.bury(first)
    box.write({"id": "c"}, 3)
    assert [p.name for p in box.dead.iterdir()] == [first]


def test_an_unreadable_event_is_buried_not_retried(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 10)
    box.open()
    (box.pending / "1-bad.json").write_bytes(b"{torn")
    assert box.load("1-bad.json") is None
    assert [p.name for p in box.dead.iterdir()] == ["1-bad.json"]


def test_a_read_the_disk_fails_leaves_the_event_pending(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 10)
    box.open()
    (box.pending / "1-dir.json").mkdir()  # reading it fails (EISDIR) as a failing disk would
    with pytest.raises(StorageError):
        box.load("1-dir.json")
    assert (box.pending / "1-dir.json").exists() and not list(box.dead.iterdir())


@pytest.mark.parametrize(("point", "pending"), [("event-written", 0), ("event-published", 1)])
def test_crash_points(tmp_path: Path, point: str, pending: int) -> None:
    """Killed after the file is durable in tmp/: not emitted, and the leftover is removed at
    open. Killed once renamed and synced: emitted, and found at open."""
    env = os.environ | {"FLUX_CRASH_AT": f"{point}:1"}
    proc = subprocess.run([sys.executable, "-c", WRITE_ONE, str(tmp_path)], env=env, check=False)
    assert proc.returncode == -9
    assert len(list((tmp_path / "tmp").iterdir())) == 1 - pending
    names = Outbox(tmp_path, 10).open()
    assert len(names) == pending and not list((tmp_path / "tmp").iterdir())


def test_emit_into_a_full_outbox_drops_and_counts(tmp_path: Path) -> None:
    config = EventsConfig(command=("true",), outbox=tmp_path, outbox_limit=1)

    async def run() -> int:
        events = Events(config)
        events.outbox.open()  # not started: nothing delivers, so the outbox stays full
        await events.emit("deleted", path="/a")
        await events.emit("deleted", path="/b")
        await events.emit("deleted", path="/c")
        await events.stop()
        return events.dropped

    assert asyncio.run(run()) == 2
    assert len(list((tmp_path / "pending").iterdir())) == 1


def test_types_not_asked_for_are_not_written(tmp_path: Path) -> None:
    config = EventsConfig(command=("true",), outbox=tmp_path, types=("deleted",))

    async def run() -> None:
        events = Events(config)
        events.outbox.open()
        await events.emit("upload-finished", path="/a")
        await events.stop()

    asyncio.run(run())
    assert not list((tmp_path / "pending").iterdir())


def test_signature_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 2.
    body = b"what do ya want for nothing?"
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"Jefe", body) == f"sha256={expected}"
