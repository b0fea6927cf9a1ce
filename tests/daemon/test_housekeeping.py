"""Recovery at start, garbage collection and scrubbing (fluxd.storage.housekeeping)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from test_local_storage import CS, chunks, content, manifest_file, put, ref, staging_dir

from fluxd.storage import LocalStorage
from fluxio.staging import HEADER_SIZE, RECORD_SIZE
from tests.damage import flip_in_place

DAY = 86400.0


def stage(storage: LocalStorage, rel: str, n: int = 3) -> bytes:
    """An upload of `rel` with its first `n` chunks staged, then left (closed)."""
    data = content()
    up = storage.open_upload(rel, len(data), CS, 0o644)
    up.write_chunks(chunks(data)[:n])
    up.close()
    return data


def age(folder: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [folder, *folder.iterdir()]:
        os.utime(p, (then, then))


# --- recovery -----------------------------------------------------------------------------------


def test_recovery_cuts_torn_tails_and_removes_what_cannot_be_vouched_for(
    storage: LocalStorage,
) -> None:
    stage(storage, "a.bin", 3)
    journal = staging_dir(storage.root, "a.bin") / "journal"
    with open(journal, "ab") as f:
        f.write(b"\x01torn record")  # a crash in the middle of an append
    staging = journal.parent.parent  # ROOT/.flux/staging
    empty = staging / ("0" * 64)
    empty.mkdir()  # a folder whose journal was never written
    garbage = staging / ("1" * 64)
    garbage.mkdir()
    (garbage / "journal").write_bytes(b"not a journal at all")
    found = storage.recover()
    assert (found.uploads, found.chunks, found.removed, found.busy) == (1, 3, 2, 0)
    assert journal.stat().st_size == HEADER_SIZE + 3 * RECORD_SIZE
    assert not empty.exists() and not garbage.exists()
    up = storage.open_upload("a.bin", len(content()), CS, 0o644)
    assert set(up.held) == {0, 1, 2}  # the resume still re-verifies every chunk
    up.close()


def test_recovery_leaves_an_upload_a_session_holds(storage: LocalStorage) -> None:
    data = stage(storage, "live.bin")
    live = storage.open_upload("live.bin", len(data), CS, 0o644)
    assert storage.recover().busy == 1
    live.close()


# --- garbage collection -------------------------------------------------------------------------


def test_collect_removes_only_idle_uploads_past_the_grace(storage: LocalStorage) -> None:
    stage(storage, "old.bin")
    stage(storage, "new.bin")
    data = stage(storage, "held.bin")
    age(staging_dir(storage.root, "old.bin"), 2 * DAY)
    age(staging_dir(storage.root, "held.bin"), 2 * DAY)
    held = storage.open_upload("held.bin", len(data), CS, 0o644)  # a live session
    age(staging_dir(storage.root, "held.bin"), 2 * DAY)
    done = storage.collect(DAY, time.time())
    assert (done.uploads, done.bytes) == (1, len(data))
    assert not staging_dir(storage.root, "old.bin").exists()
    assert staging_dir(storage.root, "new.bin").exists()
    assert staging_dir(storage.root, "held.bin").exists()
    held.write_chunks(chunks(data)[3:])
    held.commit(ref(data))
    assert (storage.root / "held.bin").read_bytes() == data


def test_collect_drops_manifests_of_files_deleted_outside_fluxd(storage: LocalStorage) -> None:
    put(storage, "kept.bin", content())
    put(storage, "gone.bin", content(seed=2))
    (storage.root / "gone.bin").unlink()
    done = storage.collect(DAY, time.time())
    assert done.manifests == 1
    assert not manifest_file(storage.root, "gone.bin").exists()
    assert manifest_file(storage.root, "kept.bin").exists()


# --- scrub --------------------------------------------------------------------------------------


def test_scrub_finds_rot_and_drops_stale_manifests(storage: LocalStorage) -> None:
    put(storage, "good.bin", content())
    put(storage, "rot.bin", content(seed=3))
    put(storage, "edited.bin", content(seed=4))
    clean = storage.scrub()
    assert (clean.checked, clean.corrupt, clean.stale) == (3, [], 0)
    assert clean.bytes == 3 * len(content())
    flip_in_place(storage.root / "rot.bin", 2 * CS + 1)
    (storage.root / "edited.bin").write_bytes(b"changed by hand")
    report = storage.scrub()
    assert report.corrupt == ["/rot.bin: 1 corrupt chunk(s): 2"]
    assert (report.checked, report.stale) == (2, 1)
    assert not manifest_file(storage.root, "edited.bin").exists()


def test_scrub_checks_files_that_carry_their_manifest(storage: LocalStorage) -> None:
    small = [content(100, seed) for seed in (5, 6)]
    ups = []
    for name, data in zip(("d/good", "d/rot"), small, strict=True):
        up = storage.open_upload(name, len(data), CS, 0o644, grouped=True)
        up.write_chunks(chunks(data), durable=False)
        ups.append((up, ref(data)))
    assert storage.commit_many(ups) == [None, None]
    put(storage, "big.bin", content())
    clean = storage.scrub()
    assert (clean.checked, clean.corrupt, clean.stale) == (3, [], 0)
    flip_in_place(storage.root / "d" / "rot", 7)
    assert storage.scrub().corrupt == ["/d/rot: 1 corrupt chunk(s): 0"]
