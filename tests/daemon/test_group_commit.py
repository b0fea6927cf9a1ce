"""LocalStorage uploads with an mtime, and group commit (commit_many) of many small files."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import pytest
from test_local_storage import CS, chunks, content, put, ref

from fluxd.storage import LocalStorage, LocalUpload
from fluxd.storage.local_batch import BARRIERS
from fluxd.storage.manifests import XATTR, ManifestStore
from fluxproto.errors import Conflict, IntegrityError, StorageError

MTIME = 1_700_000_000_123_456_789  # nanoseconds that a float of seconds would round off


def test_a_commit_gives_the_file_its_mtime_in_ns(storage: LocalStorage, root: Path) -> None:
    data = content()
    up = storage.open_upload("d/f", len(data), CS, 0o640, MTIME)
    up.write_chunks(chunks(data))
    up.commit(ref(data))
    st = (root / "d" / "f").stat()
    assert (st.st_mtime_ns, st.st_mode & 0o777) == (MTIME, 0o640)
    entry = storage.stat("d/f")
    assert (entry.mtime_ns, entry.digest) == (MTIME, ref(data)), "the manifest matches it"


def test_without_an_mtime_the_file_has_the_time_of_writing(
    storage: LocalStorage, root: Path
) -> None:
    put(storage, "f", content())
    assert abs((root / "f").stat().st_mtime_ns - os.stat(root).st_mtime_ns) < 60 * 10**9


def test_an_unchanged_resend_updates_only_the_mtime(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "f", data)
    before = (root / "f").stat()
    up = storage.open_upload("f", len(data), CS, 0o600, MTIME)
    assert len(up.held) == 6, "the stored file offers every chunk"
    up.commit(ref(data))  # nothing sent: the destination is kept
    after = (root / "f").stat()
    assert after.st_ino == before.st_ino, "no new file was written"
    assert (after.st_mtime_ns, after.st_mode & 0o777) == (MTIME, 0o600)
    entry = storage.stat("f")
    assert (entry.mtime_ns, entry.digest) == (MTIME, ref(data)), "the manifest followed"
    assert not list((root / ".flux" / "staging").iterdir())


# --- group commit ------------------------------------------------------------------------------


def staged_small(
    storage: LocalStorage, path: str, data: bytes, mtime: int | None = None, grouped: bool = True
) -> LocalUpload:
    """An upload of a small file whose chunks wait for a group commit (not durable alone)."""
    up = storage.open_upload(path, len(data), CS, 0o644, mtime, grouped=grouped)
    up.write_chunks(chunks(data), durable=False)
    return up


@pytest.mark.parametrize("grouped", [True, False], ids=["in-memory", "staged"])
@pytest.mark.parametrize("barrier", BARRIERS)
def test_a_group_commits_many_files(root: Path, barrier: str, grouped: bool) -> None:
    storage = LocalStorage(root, barrier=barrier)
    put(storage, "d0/f1", b"old")  # one of them replaces a file
    files = {f"d{i % 3}/f{i}": content(100 + i, seed=i) for i in range(30)}
    ups = [
        (staged_small(storage, p, d, MTIME + i), ref(d)) for i, (p, d) in enumerate(files.items())
    ]
    assert storage.commit_many(ups) == [None] * 30
    for i, (path, data) in enumerate(files.items()):
        assert (root / path).read_bytes() == data
        assert (root / path).stat().st_mtime_ns == MTIME + i
        assert storage.stat(path).digest == ref(data)
    assert not list((root / ".flux" / "staging").iterdir()), "staging dropped"
    assert not list((root / ".flux" / "tmp").iterdir()), "no temporary left"
    assert not [p for p in (root / ".flux" / "manifests").iterdir() if p.suffix == ".tmp"]
    for up, _ in ups:
        up.close()


def test_one_bad_upload_does_not_stop_the_group(storage: LocalStorage, root: Path) -> None:
    good, bad, dir_in_way = content(100, 1), content(100, 2), content(100, 3)
    (root / "taken").mkdir()
    ups = [
        (staged_small(storage, "good", good), ref(good)),
        (staged_small(storage, "bad", bad), ref(b"something else")),
        (staged_small(storage, "taken-later", dir_in_way), ref(dir_in_way)),
    ]
    (root / "taken-later").mkdir()  # a folder appears where the file goes
    results = storage.commit_many(ups)
    assert results[0] is None
    assert isinstance(results[1], IntegrityError)
    assert isinstance(results[2], Conflict)
    assert (root / "good").read_bytes() == good
    assert not (root / "bad").exists()
    for up, _ in ups:
        up.close()


def test_chunks_not_written_durably_are_not_offered_on_resume(storage: LocalStorage) -> None:
    data = content(3 * CS)
    up = staged_small(storage, "f", data)
    up.close()  # the connection ends before the group commit
    again = storage.open_upload("f", len(data), CS, 0o644)
    assert dict(again.held) == {}, "nothing durable, nothing offered"
    again.close()


def test_a_group_mixes_kept_and_new_files(storage: LocalStorage, root: Path) -> None:
    same, new = content(2 * CS, 1), content(100, 2)
    put(storage, "same", same)
    kept = storage.open_upload("same", len(same), CS, 0o644, MTIME)  # everything offered
    results = storage.commit_many(
        [(kept, ref(same)), (staged_small(storage, "new", new), ref(new))]
    )
    assert results == [None, None]
    assert (root / "same").stat().st_mtime_ns == MTIME
    assert (root / "new").read_bytes() == new


def test_a_grouped_upload_shows_nothing_before_its_commit(
    storage: LocalStorage, root: Path
) -> None:
    data = content(3 * CS)
    up = staged_small(storage, "f", data)
    assert not list((root / ".flux" / "staging").iterdir())
    # Complete, it is written once to a temporary in scratch (not synced, not at its path).
    assert [p.read_bytes() for p in (root / ".flux" / "tmp").iterdir()] == [data]
    assert not (root / "f").exists()
    up.commit(ref(data))  # alone, outside a group: durable on its own
    assert (root / "f").read_bytes() == data
    assert storage.stat("f").digest == ref(data)


def test_a_durable_write_stages_a_grouped_upload(storage: LocalStorage, root: Path) -> None:
    data = content(3 * CS)
    parts = chunks(data)
    up = storage.open_upload("f", len(data), CS, 0o644, grouped=True)
    up.write_chunks(parts[:1], durable=False)
    up.write_chunks(parts[1:2])  # durable: staged now, with the chunk held in memory
    up.close()
    again = storage.open_upload("f", len(data), CS, 0o644, grouped=True)
    assert sorted(again.held) == [1], "a staged upload resumes, grouped or not"
    again.write_chunks([parts[0], parts[2]], durable=False)
    assert storage.commit_many([(again, ref(data))]) == [None]
    assert (root / "f").read_bytes() == data


def test_a_grouped_upload_with_a_bad_chunk(storage: LocalStorage) -> None:
    data = content(2 * CS)
    up = storage.open_upload("f", len(data), CS, 0o644, grouped=True)
    with pytest.raises(StorageError, match="wrong length"):
        up.write_chunks([(0, chunks(data)[0][1], b"short")], durable=False)
    up.write_chunks(chunks(data)[:1], durable=False)
    [result] = storage.commit_many([(up, ref(data))])
    assert isinstance(result, IntegrityError) and "missing 1 chunks" in result.message


# --- manifests carried by the file (extended attribute) ------------------------------------------


def manifest_files(root: Path) -> list[Path]:
    return [p for p in (root / ".flux" / "manifests").iterdir() if p.suffix != ".tmp"]


def test_a_grouped_file_carries_its_manifest(storage: LocalStorage, root: Path) -> None:
    data = content(100, 7)
    assert storage.commit_many([(staged_small(storage, "d/f", data, MTIME), ref(data))]) == [None]
    assert not manifest_files(root), "no manifest file: the manifest is on the file"
    assert os.getxattr(root / "d" / "f", XATTR)
    assert storage.stat("d/f").digest == ref(data)
    [entry] = storage.list("d", None, 10, digests=True)[0]
    assert entry.digest == ref(data)
    dl = storage.open_download("d/f", CS)
    try:
        assert (dl.digest, dl.read_chunk(0)) == (ref(data), data)
    finally:
        dl.close()
    assert not manifest_files(root), "read from the attribute, not indexed again"
    again = storage.open_upload("d/f", len(data), CS, 0o644, MTIME)
    assert len(again.held) == 1, "the stored file is offered as a basis"
    again.close()


def test_a_grouped_file_drops_the_manifest_file_of_the_old_one(
    storage: LocalStorage, root: Path
) -> None:
    put(storage, "f", content(3 * CS, 1))  # one by one: a manifest file
    assert manifest_files(root)
    new = content(100, 2)
    assert storage.commit_many([(staged_small(storage, "f", new), ref(new))]) == [None]
    assert not manifest_files(root)
    assert storage.stat("f").digest == ref(new)


def test_a_manifest_file_comes_before_the_attribute(storage: LocalStorage, root: Path) -> None:
    data = content(100, 3)
    storage.commit_many([(staged_small(storage, "f", data), ref(data))])
    st = (root / "f").stat()
    manifests = ManifestStore(root / ".flux" / "manifests", root)
    carried = manifests.load("f", st)
    assert carried is not None
    manifests.write(dataclasses.replace(carried, damaged=True))  # as a failed basis check does
    assert storage.stat("f").digest is None, "a damaged file reports no digest"


def test_an_attribute_copied_with_the_file_is_not_trusted(
    storage: LocalStorage, root: Path
) -> None:
    data = content(100, 4)
    storage.commit_many([(staged_small(storage, "f", data), ref(data))])
    copy = root / "g"
    copy.write_bytes(data)
    os.setxattr(copy, XATTR, os.getxattr(root / "f", XATTR))
    assert storage.stat("g").digest is None, "its path and inode are not the manifest's"


def test_where_attributes_fail_a_manifest_file_is_written(
    storage: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    data = content(100, 5)
    assert storage.commit_many([(staged_small(storage, "f", data), ref(data))]) == [None]
    assert manifest_files(root)
    assert storage.stat("f").digest == ref(data)


def test_a_written_small_file_rotting_before_its_commit(storage: LocalStorage, root: Path) -> None:
    data = content(100, 6)
    up = staged_small(storage, "f", data)
    [tmp] = (root / ".flux" / "tmp").iterdir()
    tmp.write_bytes(b"x" + data[1:])  # the disk changed the written bytes
    with pytest.raises(IntegrityError, match="1 stored chunks were corrupt"):
        up.commit(ref(b"anything else"))
    assert up.held == {}, "the corrupt chunk is no longer offered"
    up.write_chunks(chunks(data), durable=False)
    up.commit(ref(data))
    assert (root / "f").read_bytes() == data


def test_the_manifests_folder_is_synced_only_when_it_changed(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = []
    monkeypatch.setattr(ManifestStore, "sync", lambda self: synced.append(1))
    put(storage, "old", content(3 * CS, 1))  # one by one: writes (and syncs) its own
    synced.clear()
    ups = [(staged_small(storage, n, d), ref(d)) for n, d in (("a", b"a"), ("b", b"b"))]
    assert storage.commit_many(ups) == [None, None]
    assert synced == [], "nothing changed there: both files carry their manifests"
    new = content(100, 2)
    assert storage.commit_many([(staged_small(storage, "old", new), ref(new))]) == [None]
    assert synced == [1], "the old file's manifest was removed"


def test_a_small_file_that_could_not_be_written_leaves_nothing(
    storage: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content(100, 8)
    up = storage.open_upload("f", len(data), CS, 0o644, grouped=True)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", full)
        with pytest.raises(StorageError):
            up.write_chunks(chunks(data), durable=False)
    assert not list((root / ".flux" / "tmp").iterdir()), "no part-written file is kept"
    assert storage.commit_many([(up, ref(data))]) == [None], "written at the commit instead"
    assert (root / "f").read_bytes() == data
