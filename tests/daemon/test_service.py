"""fluxd.service without a network: a real LocalStorage in a temp dir and callers made by hand.

Each test drives the FileService as a transport would: enter an operation, deliver (or fail)
in the body, and read the access record it wrote.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_support import EVERYTHING, LONG, Conn, Daemon, daemons, run, send, write
from test_local_storage import CS, chunks, content, put, ref

from fluxd.auth.scopes import Grant, parse_scopes, subject_root
from fluxd.config import AuthConfig, Limits
from fluxd.limits import Slot
from fluxd.service import Caller, UploadHandle, work
from fluxd.storage import LocalStorage
from fluxproto import (
    Conflict,
    ConnectionLost,
    IntegrityError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from tests.damage import flip_in_place


def test_an_upload_is_stored_and_recorded(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()
    run(send(d, d.caller(), "/dir/f.bin", data))
    assert (d.root / "dir" / "f.bin").read_bytes() == data
    [record] = d.records()
    assert record["op"] == "upload" and record["path"] == "/dir/f.bin"
    assert (record["result"], record["bytes"]) == ("ok", len(data))
    assert (record["subject"], record["jti"], record["transport"]) == ("alice", "jti-alice", "test")
    assert (record["peer"], record["resumed"]) == ("127.0.0.1:40000", False)
    assert record["duration"] >= 0


def test_a_resent_file_moves_nothing_and_records_zero_bytes(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()
    run(send(d, d.caller(), "f", data))
    run(send(d, d.caller(), "f", data))
    assert [r["bytes"] for r in d.records("upload")] == [len(data), 0]


def test_an_interrupted_upload_records_what_it_stored(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644) as up:
            await write(up, chunks(data)[:2])
            raise ConnectionLost("127.0.0.1:40000 closed the connection")

    with pytest.raises(ConnectionLost):
        run(main())
    [record] = d.records()
    assert record["result"] == "error 503: 127.0.0.1:40000 closed the connection"
    assert record["bytes"] == 2 * CS
    # What was durable stays staged for the resume.
    up = d.storage.open_upload("f", len(data), CS, 0o644)
    assert sorted(up.held) == [0, 1]
    up.close()


def test_a_failed_commit_is_recorded_and_not_committed(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()
    handles: list[UploadHandle] = []

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644) as up:
            handles.append(up)
            await write(up, chunks(data))
            await up.commit(ref(b"something else"))

    with pytest.raises(IntegrityError):
        run(main())
    assert not handles[0].committed
    assert not (d.root / "f").exists()
    [record] = d.records()
    assert record["result"].startswith("error 422: ")
    assert record["bytes"] == len(data)


@pytest.mark.parametrize(
    ("scopes", "path"),
    [("read:/ list:/ delete:/", "f"), ("write:/backups/", "/backups2/f")],
)
def test_an_upload_needs_the_write_scope(
    make: Callable[..., Daemon], scopes: str, path: str
) -> None:
    d = make()
    with pytest.raises(PermissionDenied, match="does not allow write"):
        run(send(d, d.caller(scopes=scopes), path, content()))
    [record] = d.records()
    assert record["result"].startswith("error 403: token of 'alice' does not allow write")
    assert record["bytes"] == 0
    assert not list((d.root / ".flux" / "staging").iterdir()), "nothing staged"


@pytest.mark.parametrize(
    ("limits", "chunk_size", "message"),
    [
        (Limits(max_chunk=64 * 1024), 128 * 1024, "chunk size 131072 > server limit 65536"),
        (Limits(max_file_size=1000), CS, "file of 2000 bytes > server limit 1000"),
    ],
)
def test_server_size_limits(
    make: Callable[..., Daemon], limits: Limits, chunk_size: int, message: str
) -> None:
    d = make(limits=limits)

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", 2000, chunk_size, 0o644):
            raise AssertionError("must be refused")

    with pytest.raises(LimitExceeded, match=message):
        run(main())
    assert d.records()[0]["result"] == f"error 413: {message}"


class RuledStorage(LocalStorage):
    """LocalStorage with an object store's kind of rule, scaled down: chunks of at least two
    CS unless the file is one chunk, at most four chunks."""

    min_chunk = 2 * CS
    max_chunks = 4


@pytest.fixture
def ruled(tmp_path: Path, root: Path) -> Iterator[Callable[..., Daemon]]:
    """`make`, over a RuledStorage."""
    yield from daemons(tmp_path, root, RuledStorage(root))


@pytest.mark.parametrize(
    ("size", "chunk_size", "message"),
    [
        (
            3 * CS,
            CS,
            f"chunk size {CS} < {2 * CS}, the least the server's storage takes for a file of "
            "more than one chunk",
        ),
        (
            5 * 2 * CS,
            2 * CS,
            f"5 chunks of {2 * CS} bytes > 4, the most the server's storage takes for one "
            f"file: use chunks of at least {10 * CS // 4} bytes",
        ),
    ],
)
def test_an_upload_breaking_the_storage_rule_is_refused(
    ruled: Callable[..., Daemon], size: int, chunk_size: int, message: str
) -> None:
    d = ruled()

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", size, chunk_size, 0o644):
            raise AssertionError("must be refused")

    with pytest.raises(LimitExceeded, match=re.escape(message)):
        run(main())
    assert d.records()[0]["result"] == f"error 413: {message}"


@pytest.mark.parametrize(
    ("size", "chunk_size"), [(CS - 1, CS), (CS, CS), (0, CS), (4 * 2 * CS, 2 * CS)]
)
def test_an_upload_within_the_storage_rule_is_taken(
    ruled: Callable[..., Daemon], size: int, chunk_size: int
) -> None:
    """A file of one chunk may use a chunk below min_chunk; max_chunks chunks are allowed."""
    d = ruled()

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", size, chunk_size, 0o644) as up:
            assert isinstance(up, UploadHandle)

    run(main())
    assert d.records()[0]["result"] == "ok"


def test_quota_counts_stored_files_and_other_open_uploads(make: Callable[..., Daemon]) -> None:
    d = make(limits=Limits(quota=10 * CS), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    run(send(d, alice, "old", content(4 * CS)))
    assert (d.root / "users" / "alice" / "old").exists()

    async def main() -> None:
        # 4 stored + 4 announced by an open upload: 2 more fit, 3 do not.
        async with d.service.upload(alice, "open", 4 * CS, CS, 0o644):
            await send(d, alice, "fits", content(2 * CS))
            with pytest.raises(LimitExceeded, match=r"quota of 40960 bytes for 'alice'"):
                await send(d, alice, "big", content(3 * CS))
            # Now at the quota; replacing a file counts only the difference.
            await send(d, alice, "old", content(4 * CS, seed=2))

    run(main())
    assert [r["result"][:9] for r in d.records("upload")] == [
        "ok",
        "ok",
        "error 413",
        "ok",
        "ok",
    ]


def test_uploads_opened_together_are_admitted_as_one_after_another(
    make: Callable[..., Daemon],
) -> None:
    """Six uploads of 3 chunks opened at once under a quota of 10: three fit, three do not,
    and nothing stays reserved or tracked once they are done."""
    d = make(limits=Limits(quota=10 * CS), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))

    async def main() -> list[BaseException | None]:
        sends = (send(d, alice, f"f{i}", content(3 * CS, seed=i)) for i in range(6))
        return await asyncio.gather(*sends, return_exceptions=True)

    outcomes = run(main())
    assert sum(o is None for o in outcomes) == 3
    assert all(o is None or isinstance(o, LimitExceeded) for o in outcomes), outcomes
    assert len(list((d.root / "users" / "alice").iterdir())) == 3
    assert not d.service.shared.admission.reserved and not len(d.service.quota)


def test_checks_that_waited_for_a_measurement_share_it(
    make: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six uploads opened at once: the first check measures; the five that waited meanwhile
    share the second's measurement (plus what the others reserved since)."""
    d = make(limits=Limits(quota=22 * CS), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    run(send(d, alice, "old", content(4 * CS)))
    calls = []
    usage = d.storage.usage
    monkeypatch.setattr(d.storage, "usage", lambda root: calls.append(root) or usage(root))

    async def main() -> list[BaseException | None]:
        sends = (send(d, alice, f"f{i}", content(3 * CS, seed=i)) for i in range(6))
        return await asyncio.gather(*sends, return_exceptions=True)

    assert run(main()) == [None] * 6  # 4 + 6 x 3 = 22: all fit
    assert len(calls) == 2
    with pytest.raises(LimitExceeded, match=r"\(90112 bytes stored, 0 in other uploads"):
        run(send(d, alice, "one-more", content(1)))


def test_a_committed_upload_counts_as_stored_not_also_as_announced(
    make: Callable[..., Daemon],
) -> None:
    d = make(limits=Limits(quota=10 * CS), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    data = content(6 * CS)

    async def main() -> None:
        async with d.service.upload(alice, "first", len(data), CS, 0o644) as up:
            await write(up, list(chunks(data)))
            await up.commit(ref(data))
            # Still open (its request has not ended), but stored: 6 + 4 fit.
            await send(d, alice, "second", content(4 * CS))

    run(main())
    assert [r["result"] for r in d.records("upload")] == ["ok", "ok"]


def test_a_refusal_counting_a_commit_in_flight_twice_is_checked_again(
    make: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload checked while another's commit has published its file but not returned
    counts that file as stored and as announced; once the commit is done it fits. Its client
    hears keepalives while the check waits."""
    monkeypatch.setattr(work, "KEEPALIVE", 0.02)
    d = make(limits=Limits(quota=10 * CS), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    waiting = Conn(answers=True)
    second_alice = d.caller(root=subject_root("/users/{sub}", "alice"), conn=waiting)
    data = content(6 * CS)
    published, go_on, looked = threading.Event(), threading.Event(), threading.Event()
    usage = d.storage.usage

    def counted(root: str) -> int:
        used = usage(root)
        looked.set()
        return used

    monkeypatch.setattr(d.storage, "usage", counted)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with d.service.upload(alice, "first", len(data), CS, 0o644) as up:
            await write(up, list(chunks(data)))
            commit = up.opened.commit

            def held_back(digest: bytes) -> None:
                commit(digest)
                published.set()
                go_on.wait(LONG)

            monkeypatch.setattr(up.opened, "commit", held_back)
            committing = asyncio.ensure_future(up.commit(ref(data)))
            assert await loop.run_in_executor(None, published.wait, LONG)
            looked.clear()  # the first upload's own check looked already
            second = asyncio.ensure_future(send(d, second_alice, "second", content(4 * CS)))
            assert await loop.run_in_executor(None, looked.wait, LONG)
            async with asyncio.timeout(LONG):
                await waiting.pinged.wait()  # refused once, it waits for the commit
            go_on.set()
            await committing
            await second

    run(main())
    assert [r["result"] for r in d.records("upload")] == ["ok", "ok"]


def test_a_reservation_made_as_its_upload_is_cancelled_is_given_back(
    make: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(limits=Limits(quota=10 * CS), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    admission = d.service.shared.admission

    async def main() -> None:
        waiting, turn = asyncio.Event(), asyncio.Event()

        async def reserve(caller: Caller, key: str, size: int) -> Slot:
            waiting.set()
            await turn.wait()
            return admission.reserve(caller.account, size)

        monkeypatch.setattr(d.service.quota, "reserve", reserve)
        opening = asyncio.ensure_future(send(d, alice, "f", content(CS)))
        await waiting.wait()  # the upload waits for its turn
        # Its turn comes in the same step as the request's cancellation: whichever wins,
        # nothing stays reserved.
        turn.set()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening

    run(main())
    assert not admission.reserved and not admission.uploads


def test_uploads_per_subject(make: Callable[..., Daemon]) -> None:
    d = make(limits=Limits(uploads_per_subject=1))
    data = content()

    async def main() -> None:
        async with d.service.upload(d.caller(), "a", len(data), CS, 0o644):
            with pytest.raises(LimitExceeded, match=r"'alice' already has 1 uploads open"):
                await send(d, d.caller(), "b", data)
            await send(d, d.caller("bob"), "b", data)  # another subject has slots of its own
        await send(d, d.caller(), "c", data)  # the slot was given back

    run(main())


def test_a_path_another_subject_uploads_is_a_conflict(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644):
            with pytest.raises(Conflict, match="/f is being uploaded by another session"):
                await send(d, d.caller("bob"), "f", data)
        await send(d, d.caller("bob"), "f", data)  # released

    run(main())
    bob = [r for r in d.records() if r["subject"] == "bob"]
    assert bob[0]["result"] == "error 409: /f is being uploaded by another session"


def test_a_silent_holder_of_the_same_subject_is_superseded(make: Callable[..., Daemon]) -> None:
    """The newcomer waits for the silent holder, which is ended (as its session would be) and
    lets go; the newcomer then resumes what the old connection had stored."""
    d = make(stale_after=0.2)
    data = content()
    old = Conn("127.0.0.1:40001")

    async def holder(opened: asyncio.Event) -> None:
        async with d.service.upload(d.caller(conn=old), "f", len(data), CS, 0o644) as up:
            await write(up, chunks(data)[:3])
            opened.set()
            await old.hung_up.wait()  # what its session sees once the connection is ended
            raise ConnectionLost("connection closed")

    async def main() -> tuple[float, list[int]]:
        opened = asyncio.Event()
        first = asyncio.create_task(holder(opened))
        await opened.wait()
        started = time.monotonic()
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644) as up:
            held = sorted(up.held)
            await write(up, [c for c in chunks(data) if c[0] not in held])
            await up.commit(ref(data))
        with pytest.raises(ConnectionLost):
            await first
        return time.monotonic() - started, held

    waited, held = run(main())
    assert 0.2 <= waited < LONG, "it waited for the holder to go stale, not longer"
    assert held == [0, 1, 2]
    assert old.ended == ["superseded by a newer connection of the same client"]
    assert (d.root / "f").read_bytes() == data
    first, second = d.records("upload")
    # The holder's record says why it ended, and what it had stored.
    assert first["result"] == "error 503: superseded by a newer connection of the same client"
    assert (first["peer"], first["bytes"]) == ("127.0.0.1:40001", 3 * CS)
    assert (second["result"], second["bytes"]) == ("ok", len(data) - 3 * CS)


class GatedCommit:
    """LocalStorage whose uploads commit only once `gate` is set; `committing` is set as a
    commit starts (both threading events: commits run on the pool)."""

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage
        self.gate, self.committing = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def open_upload(self, path: str, size: int, chunk_size: int, mode: int, *rest: Any) -> Any:
        up = self._storage.open_upload(path, size, chunk_size, mode, *rest)
        real = up.commit

        def commit(digest: bytes) -> None:
            self.committing.set()
            self.gate.wait(LONG)
            real(digest)

        up.commit = commit  # type: ignore[method-assign]
        return up


async def committing_holder(
    d: Daemon, conn: Conn, data: bytes, written: asyncio.Event, go: asyncio.Event
) -> None:
    """An upload whose client sent every chunk and its COMMIT: the request writes the chunks,
    then (once `go`) takes the COMMIT, as a session does when it reaches it in the queue."""
    async with d.service.upload(d.caller(conn=conn), "f", len(data), CS, 0o644) as up:
        await write(up, chunks(data))
        written.set()
        await go.wait()
        await up.commit(ref(data))


async def looks_while_committing(
    storage: GatedCommit, holder: Conn, newcomer: asyncio.Task[None]
) -> None:
    """Wait until the holder's commit has started and `newcomer` looked at the holder twice
    since (one whole poll of its claim, life included), or `newcomer` ended."""
    await asyncio.to_thread(storage.committing.wait, LONG)
    for _ in range(2):
        holder.looked.clear()
        look = asyncio.create_task(holder.looked.wait())
        await asyncio.wait([look, newcomer], return_when=asyncio.FIRST_COMPLETED)
        look.cancel()
        if newcomer.done():
            return


def test_a_dead_holder_committing_what_it_left_queued_is_waited_for(
    make: Callable[..., Daemon],
) -> None:
    """A killed client's COMMIT may wait in its request's queue behind its chunks; the daemon
    committing it seconds later is no sign of life from the client. The same subject's
    newcomer goes on waiting (it does not get a conflict), and once the commit let go of the
    path it finds the file committed and has nothing to send."""
    d = make(stale_after=LONG)
    storage = GatedCommit(d.storage)
    d.service.storage = storage  # type: ignore[assignment]
    data = content()
    old = Conn("127.0.0.1:40001")

    async def main() -> None:
        written, go = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(committing_holder(d, old, data, written, go))
        await written.wait()
        old.looked.clear()
        newcomer = asyncio.create_task(send(d, d.caller(), "f", data))
        await old.looked.wait()  # the newcomer waits for the silent holder
        go.set()
        await looks_while_committing(storage, old, newcomer)
        storage.gate.set()
        await first
        await newcomer

    run(main())
    assert old.ended == [], "it let go by itself: nobody was cut off"
    assert (d.root / "f").read_bytes() == data
    assert [(r["result"], r["bytes"]) for r in d.records("upload")] == [
        ("ok", len(data)),
        ("ok", 0),
    ]


def test_a_holder_answering_the_keepalive_of_a_long_commit_keeps_the_path(
    make: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a commit runs long, a live client answers the daemon's PINGs: the same subject's
    newcomer gets a conflict, and the holder is not cut off."""
    monkeypatch.setattr(work, "KEEPALIVE", 0.02)
    d = make(stale_after=LONG)
    storage = GatedCommit(d.storage)
    d.service.storage = storage  # type: ignore[assignment]
    data = content()
    live = Conn("127.0.0.1:40001", answers=True)

    async def main() -> None:
        written, go = asyncio.Event(), asyncio.Event()
        go.set()
        first = asyncio.create_task(committing_holder(d, live, data, written, go))
        await asyncio.to_thread(storage.committing.wait, LONG)
        with pytest.raises(Conflict, match="being uploaded by another session of yours"):
            await send(d, d.caller(), "f", data)
        storage.gate.set()
        await first

    run(main())
    assert live.ended == []
    assert live.pings >= 1
    assert (d.root / "f").read_bytes() == data


# --- downloads -----------------------------------------------------------------------------------


async def fetch(d: Daemon, caller: Caller, path: str, got: list[bytes]) -> None:
    async with d.service.download(caller, path, CS) as dl:
        v = dl.version
        async for _, _, data in dl.chunks(range(-(-v.size // v.chunk_size))):
            got.append(bytes(data))
            dl.delivered(len(data))


def test_a_download_is_verified_and_recorded(make: Callable[..., Daemon], root: Path) -> None:
    d = make()
    data = content()
    put(d.storage, "f", data)
    got: list[bytes] = []
    run(fetch(d, d.caller(scopes="read:/"), "/f", got))
    assert b"".join(got) == data
    [record] = d.records()
    assert (record["op"], record["result"], record["bytes"]) == ("download", "ok", len(data))


def test_a_corrupt_stored_file_is_not_served(make: Callable[..., Daemon], root: Path) -> None:
    d = make()
    data = content()
    put(d.storage, "f", data)
    flip_in_place(root / "f", 2 * CS + 5)  # bit rot: size and mtime unchanged
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="corrupt at chunk 2; not serving it"):
        run(fetch(d, d.caller(), "f", got))
    assert b"".join(got) == data[: 2 * CS], "the chunks before it, and none of it"
    [record] = d.records()
    assert record["result"] == "error 422: stored file is corrupt at chunk 2; not serving it"
    assert record["bytes"] == 2 * CS


def test_a_download_needs_the_read_scope(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "f", content())
    with pytest.raises(PermissionDenied, match="does not allow read on /f"):
        run(fetch(d, d.caller(scopes="write:/ list:/"), "f", []))
    assert d.records()[0]["result"].startswith("error 403")


def test_a_download_keeps_its_version_when_the_file_is_replaced(
    make: Callable[..., Daemon],
) -> None:
    d = make()
    old, new = content(seed=1), content(seed=2)
    put(d.storage, "f", old)

    async def main() -> bytes:
        got = []
        async with d.service.download(d.caller(), "f", CS) as dl:
            await send(d, d.caller("bob"), "f", new)
            async for _, _, data in dl.chunks(range(6)):
                got.append(bytes(data))
            assert dl.version.digest == ref(old)
        return b"".join(got)

    assert run(main()) == old


def test_readers_left_open_are_closed_with_the_download(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "f", content())

    async def main() -> None:
        async with d.service.download(d.caller(), "f", CS) as dl:
            reads = dl.chunks(range(6), ahead=3)
            await anext(reads)  # reads of chunks 1-3 are in flight or done
        with pytest.raises(StopAsyncIteration):
            await anext(reads)

    run(main())


# --- keepalive -----------------------------------------------------------------------------------


class SlowStorage:
    """LocalStorage whose opening of downloads and commits take `delay` seconds longer."""

    def __init__(self, storage: LocalStorage, delay: float) -> None:
        self._storage, self._delay = storage, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def open_download(self, path: str, chunk_size_hint: int) -> Any:
        time.sleep(self._delay)
        return self._storage.open_download(path, chunk_size_hint)

    def open_upload(self, path: str, size: int, chunk_size: int, mode: int, *rest: Any) -> Any:
        up = self._storage.open_upload(path, size, chunk_size, mode, *rest)
        real = up.commit

        def commit(digest: bytes) -> None:
            time.sleep(self._delay)
            real(digest)

        up.commit = commit  # type: ignore[method-assign]
        return up


def test_long_storage_calls_keep_the_client_waiting(
    make: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work, "KEEPALIVE", 0.02)
    d = make()
    d.service.storage = SlowStorage(d.storage, 0.3)  # type: ignore[assignment]
    put(d.storage, "f", content())
    conn = Conn()
    run(fetch(d, d.caller(conn=conn), "f", []))
    assert conn.pings >= 5


def test_a_cancelled_commit_finishes_and_says_so(make: Callable[..., Daemon]) -> None:
    """A shutdown arriving mid-commit: the commit completes, `committed` says so (the session
    still replies), and the cancellation goes on."""
    d = make()
    d.service.storage = SlowStorage(d.storage, 0.3)  # type: ignore[assignment]
    data = content()
    handles: list[UploadHandle] = []

    async def upload(committing: asyncio.Event) -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644) as up:
            handles.append(up)
            await write(up, chunks(data))
            committing.set()
            await up.commit(ref(data))

    async def main() -> None:
        committing = asyncio.Event()
        task = asyncio.create_task(upload(committing))
        await committing.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert handles[0].committed
    assert (d.root / "f").read_bytes() == data
    [record] = d.records()
    assert (record["result"], record["bytes"]) == (None, len(data)), "cancelled: no result"


# --- list, stat, delete --------------------------------------------------------------------------


def test_list_stat_delete(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "dir/f", content(CS))

    async def main() -> None:
        async with d.service.list(d.caller(), "/dir", None, 10) as (entries, cursor):
            assert ([e.name for e in entries], cursor) == (["f"], None)
        async with d.service.stat(d.caller(scopes="read:/"), "/dir/f") as entry:
            assert (entry.kind, entry.size) == ("file", CS)
        async with d.service.delete(d.caller(), "/dir/f"):
            pass
        with pytest.raises(NotFound):
            async with d.service.stat(d.caller(), "/dir/f"):
                pass

    run(main())
    assert [(r["op"], r["result"][:9]) for r in d.records()] == [
        ("list", "ok"),
        ("stat", "ok"),
        ("delete", "ok"),
        ("stat", "error 404"),
    ]


@pytest.mark.parametrize(
    ("op", "scopes"),
    [("list", "read:/ write:/ delete:/"), ("stat", "write:/ delete:/"), ("delete", "read:/")],
)
def test_list_stat_delete_need_their_scopes(
    make: Callable[..., Daemon], op: str, scopes: str
) -> None:
    d = make()
    put(d.storage, "f", content(CS))
    caller = d.caller(scopes=scopes)
    opened = {
        "list": lambda: d.service.list(caller, "f", None, 10),
        "stat": lambda: d.service.stat(caller, "f"),
        "delete": lambda: d.service.delete(caller, "f"),
    }[op]

    async def main() -> None:
        async with opened():
            raise AssertionError("must be refused")

    with pytest.raises(PermissionDenied):
        run(main())
    assert (d.root / "f").exists()
    assert d.records()[0]["result"].startswith("error 403")


def test_a_confined_subject_sees_its_root_before_it_exists(make: Callable[..., Daemon]) -> None:
    d = make(auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))

    async def main() -> None:
        async with d.service.list(alice, "/", None, 10) as page:
            assert page == ([], None)
        async with d.service.stat(alice, "/") as entry:
            assert (entry.name, entry.kind) == ("/", "dir")
        with pytest.raises(NotFound):
            async with d.service.list(alice, "/missing", None, 10):
                pass

    run(main())


def test_a_failed_reply_fails_the_request(make: Callable[..., Daemon]) -> None:
    """The record covers delivering the result: a reply that cannot be sent is an error."""
    d = make()
    put(d.storage, "f", content(CS))

    async def main() -> None:
        async with d.service.stat(d.caller(), "f"):
            raise ConnectionLost("connection to 127.0.0.1:40000 is closed")

    with pytest.raises(ConnectionLost):
        run(main())
    assert d.records()[0]["result"] == "error 503: connection to 127.0.0.1:40000 is closed"


def test_an_ended_connection_records_why(make: Callable[..., Daemon]) -> None:
    """A request failing after its connection was ended (token revoked) records the reason."""
    d = make()
    conn = Conn()
    put(d.storage, "f", content(CS))

    async def main() -> None:
        async with d.service.stat(d.caller(conn=conn), "f"):
            conn.presence.end(Unavailable("token jti-alice was revoked"))
            conn.presence.end(Unavailable("a second reason is ignored"))
            raise ConnectionLost("closed")

    with pytest.raises(ConnectionLost):
        run(main())
    assert conn.ended == ["token jti-alice was revoked"]
    assert d.records()[0]["result"] == "error 503: token jti-alice was revoked"


def test_a_refused_connection_is_recorded(make: Callable[..., Daemon]) -> None:
    d = make()
    d.service.refused("127.0.0.1:1", "tcp", None, PermissionDenied("bad token"), 0.5)
    d.service.refused("127.0.0.1:2", "tcp", d.caller(), Unavailable("too many"), 0.25)
    first, second = d.records("connect")
    assert (first["subject"], first["result"], first["duration"]) == (
        None,
        "error 403: bad token",
        0.5,
    )
    assert (second["subject"], second["jti"]) == ("alice", "jti-alice")
    assert second["result"] == "error 503: too many"


def test_anonymous_callers_count_per_address() -> None:
    grant = Grant("anonymous", None, parse_scopes(EVERYTHING))
    caller = Caller.of(grant, "quic", Conn("[::1]:5000").presence)
    assert caller.account == "anonymous@::1"
    assert Caller.of(Grant("bob", "j", grant.scopes), "tcp", Conn().presence).account == "bob"
