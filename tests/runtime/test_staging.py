"""StagedFile: durable chunk writes, journal recovery, verification, digests, publish, locking."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import stat
import tempfile
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxio.staging import HEADER_SIZE, RECORD_SIZE, StagedFile
from fluxproto.digest import chunk_digest
from fluxproto.errors import Conflict, NoSpace, StorageError

CS = 4096
SIZE = 10 * CS + 123  # 11 chunks, the last one short
N = 11


def content(size: int = SIZE, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk(data: bytes, i: int, cs: int = CS) -> tuple[int, bytes, bytes]:
    piece = data[i * cs : (i + 1) * cs]
    return i, chunk_digest(piece), piece


def ref(data: bytes) -> bytes:
    return bytes(xxhash.xxh3_128_digest(data))


def open_staged(d: Path, size: int = SIZE, cs: int = CS, *, catch_up: bool = False) -> StagedFile:
    return StagedFile.open(d / "data", d / "journal", size, cs, label="a/b", catch_up=catch_up)


def write_each(sf: StagedFile, data: bytes, indices: list[int]) -> None:
    """One batch (one journal record) per chunk."""
    for i in indices:
        sf.write_chunks([chunk(data, i)])


def test_round_trip_publishes_exact_content(tmp_path: Path) -> None:
    data = content()
    dest = tmp_path / "out.bin"
    with open_staged(tmp_path) as sf:
        assert sf.missing() == list(range(N)) and not sf.complete
        sf.write_chunks([chunk(data, i) for i in range(N)])
        assert sf.complete and sf.missing() == []
        assert sf.held == {i: chunk(data, i)[1] for i in range(N)}
        assert sf.file_digest() == ref(data)
        sf.publish(dest, 0o4640)
        assert sf.closed
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # setuid bit stripped
    assert not (tmp_path / "data").exists() and not (tmp_path / "journal").exists()


def test_new_data_file_is_preallocated(tmp_path: Path) -> None:
    with open_staged(tmp_path):
        st_ = (tmp_path / "data").stat()
        assert st_.st_size == SIZE
        assert (tmp_path / "journal").stat().st_size == HEADER_SIZE


def test_resume_after_close_keeps_held_chunks(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, i) for i in (0, 2, 5, 10)])
    with open_staged(tmp_path) as sf:
        assert set(sf.held) == {0, 2, 5, 10}
        assert sf.missing() == [1, 3, 4, 6, 7, 8, 9]
        sf.write_chunks([chunk(data, i) for i in sf.missing()])
        assert sf.file_digest() == ref(data)


def test_torn_journal_tail_recovers_good_prefix(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        write_each(sf, data, [0, 1, 2, 3])
    journal = tmp_path / "journal"
    assert journal.stat().st_size == HEADER_SIZE + 4 * RECORD_SIZE
    os.truncate(journal, HEADER_SIZE + 2 * RECORD_SIZE + 10)  # torn in the middle of record 3
    with open_staged(tmp_path) as sf:
        assert set(sf.held) == {0, 1}
        assert journal.stat().st_size == HEADER_SIZE + 2 * RECORD_SIZE
        write_each(sf, data, [2])  # appended right after the good prefix
    with open_staged(tmp_path) as sf:
        assert set(sf.held) == {0, 1, 2}


def test_garbage_after_journal_is_cut_off(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        write_each(sf, data, [0, 1, 2])
    journal = tmp_path / "journal"
    with journal.open("ab") as f:
        f.write(random.Random(7).randbytes(3 * RECORD_SIZE + 5))
    with open_staged(tmp_path) as sf:
        assert set(sf.held) == {0, 1, 2}
        assert journal.stat().st_size == HEADER_SIZE + 3 * RECORD_SIZE


def test_corrupt_record_in_the_middle_stops_recovery_there(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        write_each(sf, data, [0, 1, 2, 3])
    journal = tmp_path / "journal"
    raw = bytearray(journal.read_bytes())
    raw[HEADER_SIZE + RECORD_SIZE + 7] ^= 0xFF  # inside record 2's digest: its crc fails
    journal.write_bytes(bytes(raw))
    with open_staged(tmp_path) as sf:
        assert set(sf.held) == {0}


def test_corrupt_data_chunk_is_dropped_at_reopen(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, i) for i in range(N)])
    with (tmp_path / "data").open("r+b") as f:  # bit rot in chunk 3
        f.seek(3 * CS + 100)
        f.write(bytes([data[3 * CS + 100] ^ 1]))
    with open_staged(tmp_path) as sf:
        assert sf.missing() == [3]
        sf.write_chunks([chunk(data, 3)])
        assert sf.file_digest() == ref(data)


def test_truncated_data_file_drops_chunks_past_its_end(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, i) for i in range(N)])
    os.truncate(tmp_path / "data", 4 * CS + 1)
    with open_staged(tmp_path) as sf:
        assert sorted(sf.held) == [0, 1, 2, 3]
        assert (tmp_path / "data").stat().st_size == SIZE


@pytest.mark.parametrize(("size", "cs"), [(SIZE, 2 * CS), (SIZE + 1, CS), (5, CS)])
def test_different_geometry_starts_fresh(tmp_path: Path, size: int, cs: int) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, i) for i in range(N)])
        sf.set_version(b"v" * 16)
    with open_staged(tmp_path, size, cs) as sf:
        assert sf.held == {} and sf.version is None
        assert (tmp_path / "data").stat().st_size == size
        assert (tmp_path / "journal").stat().st_size == HEADER_SIZE


@pytest.mark.parametrize("junk", [b"", b"FLX", b"NOPE" + bytes(40), b"\xff" * 100])
def test_unreadable_journal_starts_fresh(tmp_path: Path, junk: bytes) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, 0)])
    (tmp_path / "journal").write_bytes(junk)
    with open_staged(tmp_path) as sf:
        assert sf.held == {}
        sf.write_chunks([chunk(data, 0)])
    with open_staged(tmp_path) as sf:
        assert set(sf.held) == {0}


def test_file_digest_in_order_batches(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        for start in range(0, N, 3):
            sf.write_chunks([chunk(data, i) for i in range(start, min(start + 3, N))])
        assert sf.file_digest() == ref(data)
        assert sf.file_digest() == ref(data)  # idempotent


@pytest.mark.parametrize("catch_up", [False, True])
def test_file_digest_out_of_order(tmp_path: Path, catch_up: bool) -> None:
    data = content()
    with open_staged(tmp_path, catch_up=catch_up) as sf:
        write_each(sf, data, [5, 9, 0, 10, 1, 2, 3, 4, 8, 7, 6])
        assert sf.file_digest() == ref(data)


def test_rewrite_below_hashed_frontier_resets_hasher(tmp_path: Path) -> None:
    data, other = content(), content(seed=2)
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(other, 1)])  # wrong bytes first, in order
        sf.write_chunks([chunk(data, i) for i in range(N) if i != 1])
        assert sf.file_digest() != ref(data)
        sf.write_chunks([chunk(data, 1)])  # different digest below the frontier
        assert sf.file_digest() == ref(data)


@settings(max_examples=25, deadline=None)
@given(st.permutations(range(N)), st.integers(1, N), st.integers(0, N), st.booleans())
def test_file_digest_any_order_with_resume(
    order: list[int], batch: int, stop: int, catch_up: bool
) -> None:
    data = content()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with open_staged(d, catch_up=catch_up) as sf:
            for start in range(0, stop, batch):
                sf.write_chunks([chunk(data, i) for i in order[start : min(start + batch, stop)]])
        with open_staged(d, catch_up=catch_up) as sf:
            assert set(sf.held) == set(order[:stop])
            rest = order[stop:]
            for start in range(0, len(rest), batch):
                sf.write_chunks([chunk(data, i) for i in rest[start : start + batch]])
            assert sf.file_digest() == ref(data)


def test_empty_file(tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    with open_staged(tmp_path, 0) as sf:
        assert sf.complete and sf.missing() == []
        assert sf.file_digest() == ref(b"")
        sf.publish(dest, 0o600)
    assert dest.read_bytes() == b""


def test_publish_is_atomic(tmp_path: Path) -> None:
    data = content()
    dest = tmp_path / "dest"
    dest.write_bytes(b"old version")
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, i) for i in range(N - 1)])
        with pytest.raises(StorageError, match="1 chunks missing"):
            sf.publish(dest, 0o644)
        assert dest.read_bytes() == b"old version"
        sf.write_chunks([chunk(data, N - 1)])
        assert dest.read_bytes() == b"old version"
        sf.publish(dest, 0o644)
    assert dest.read_bytes() == data


def test_publish_onto_a_directory_keeps_staging(tmp_path: Path) -> None:
    data = content(100)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("x")
    with open_staged(tmp_path, 100) as sf:
        sf.write_chunks([chunk(data, 0)])
        with pytest.raises(Conflict):
            sf.publish(tmp_path / "dir", 0o644)
        assert not sf.closed and sf.complete
    assert (tmp_path / "data").exists()


def test_second_writer_gets_conflict(tmp_path: Path) -> None:
    first = open_staged(tmp_path)
    with pytest.raises(Conflict, match="a/b is being written by another session"):
        open_staged(tmp_path)
    first.close()
    with open_staged(tmp_path) as again:
        assert again.held == {}


def test_lock_held_elsewhere_conflicts(tmp_path: Path) -> None:
    # Another process holding the lock looks the same: a separate open file description.
    open_staged(tmp_path).close()
    fd = os.open(tmp_path / "journal", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Conflict):
            open_staged(tmp_path)
    finally:
        os.close(fd)
    open_staged(tmp_path).close()


def test_version_tag_persists(tmp_path: Path) -> None:
    with open_staged(tmp_path) as sf:
        assert sf.version is None
        sf.set_version(b"1" * 16)
        sf.set_version(b"2" * 16)
        with pytest.raises(StorageError):
            sf.set_version(b"short")
    with open_staged(tmp_path) as sf:
        assert sf.version == b"2" * 16


@pytest.mark.parametrize(
    "bad",
    [
        (N, b"d" * 16, b"x" * CS),
        (-1, b"d" * 16, b"x" * CS),
        (0, b"d" * 16, b"x"),
        (N - 1, b"d" * 16, b"x" * CS),
        (0, b"short", b"x" * CS),
    ],
)
def test_bad_chunks_are_refused(tmp_path: Path, bad: tuple[int, bytes, bytes]) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        with pytest.raises(StorageError):
            sf.write_chunks([chunk(data, 0), bad])
        assert sf.held == {}
        assert (tmp_path / "journal").stat().st_size == HEADER_SIZE


def test_enospc_while_writing_keeps_file_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks([chunk(data, 0)])

        def full(fd: int, buf: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(NoSpace, match="no space left on device while writing chunk 1 of a/b"):
            sf.write_chunks([chunk(data, 1), chunk(data, 2)])
        assert set(sf.held) == {0}
        monkeypatch.undo()
        sf.write_chunks([chunk(data, i) for i in range(1, N)])
        assert sf.file_digest() == ref(data)


def test_enospc_at_allocation_is_nospace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(NoSpace, match="opening the staged file for a/b"):
        open_staged(tmp_path)
    monkeypatch.undo()
    open_staged(tmp_path).close()  # the lock was released


def test_reverify_drops_rotten_chunks(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        write_each(sf, data, list(reversed(range(N))))  # out of order: hashed from disk later
        with (tmp_path / "data").open("r+b") as f:
            f.seek(7 * CS)
            f.write(b"\0" * 8)
        assert sf.file_digest() != ref(data)
        assert sf.reverify() == [7]
        assert sf.missing() == [7]
        sf.write_chunks([chunk(data, 7)])
        assert sf.file_digest() == ref(data)


def test_with_catch_up_chunks_past_a_late_one_are_hashed_once_it_comes(tmp_path: Path) -> None:
    """A chunk that comes late holds the in-order hash up; with catch_up, once it is in, the
    chunks written past it are read back at once (not all at the end): damage after that goes
    unseen by file_digest, as for chunks hashed in order from memory."""
    data = content()
    with open_staged(tmp_path, catch_up=True) as sf:
        write_each(sf, data, [*range(1, N), 0])
        with (tmp_path / "data").open("r+b") as f:
            f.seek(7 * CS)
            f.write(b"\0" * 8)
        assert sf.file_digest() == ref(data), "hashed when chunk 0 came, before the damage"


def test_discard_removes_both_files(tmp_path: Path) -> None:
    sf = open_staged(tmp_path)
    sf.write_chunks([chunk(content(), 0)])
    sf.discard()
    assert sf.closed
    assert not (tmp_path / "data").exists() and not (tmp_path / "journal").exists()
    sf.discard()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        sf.write_chunks([chunk(content(), 0)])


def test_memoryview_payloads_are_written(tmp_path: Path) -> None:
    data = content()
    with open_staged(tmp_path) as sf:
        sf.write_chunks(
            [(i, d, memoryview(bytearray(p))) for i, d, p in (chunk(data, i) for i in range(N))]
        )
        assert sf.file_digest() == ref(data)
