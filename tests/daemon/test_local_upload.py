"""LocalUpload with the file at the destination as a basis: its chunks are offered as held, and
nothing is kept or copied on the manifest's word (fluxd.storage.local_upload)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgpack
import pytest
from test_local_storage import CS, chunks, content, manifest_file, put, ref, staging_dir

from fluxd.session import read_verified
from fluxd.storage import LocalStorage, Manifest
from fluxproto.errors import IntegrityError
from tests.damage import flip_in_place


def manifest(root: Path, rel: str) -> Manifest:
    m = Manifest.unpack(manifest_file(root, rel).read_bytes())
    assert m is not None
    return m


def send(storage: LocalStorage, rel: str, data: bytes) -> list[int]:
    """What `fluxctl send` does against one STATUS: write the chunks whose digest `held` lacks
    or differs, then commit. Returns the indices written."""
    up = storage.open_upload(rel, len(data), CS, 0o644)
    try:
        sent = [c for c in chunks(data) if up.held.get(c[0]) != c[1]]
        up.write_chunks(sent)
        up.commit(ref(data))
        return [c[0] for c in sent]
    finally:
        up.close()


def test_a_file_at_the_destination_offers_its_chunks(storage: LocalStorage) -> None:
    old = content()
    put(storage, "b.bin", old)
    up = storage.open_upload("b.bin", len(old), CS, 0o644)
    assert dict(up.held) == {i: d for i, d, _ in chunks(old)}
    up.close()
    other_geometry = storage.open_upload("b.bin", len(old) + 1, CS, 0o644)
    assert dict(other_geometry.held) == {}
    other_geometry.close()


def test_resending_an_unchanged_file_commits_without_writing(
    storage: LocalStorage, root: Path
) -> None:
    data = content()
    put(storage, "same.bin", data, 0o644)
    before = os.stat(root / "same.bin")
    up = storage.open_upload("same.bin", len(data), CS, 0o600)
    up.commit(ref(data))
    after = os.stat(root / "same.bin")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stat.S_IMODE(after.st_mode) == 0o600  # the mode asked for still applies
    assert not staging_dir(root, "same.bin").exists()
    assert (root / "same.bin").read_bytes() == data


def test_changed_chunks_are_written_and_the_rest_copied_from_the_base(
    storage: LocalStorage, root: Path
) -> None:
    old = content()
    put(storage, "d.bin", old)
    new = bytearray(old)
    new[2 * CS + 5] ^= 0xFF  # chunk 2 differs
    assert send(storage, "d.bin", bytes(new)) == [2]
    assert (root / "d.bin").read_bytes() == bytes(new)
    assert storage.stat("d.bin").digest == ref(bytes(new))


def test_a_destination_replaced_during_the_upload_is_not_used(
    storage: LocalStorage, root: Path
) -> None:
    old = content()
    put(storage, "r.bin", old)
    new = bytearray(old)
    new[0] ^= 1
    up = storage.open_upload("r.bin", len(new), CS, 0o644)
    up.write_chunks([chunks(bytes(new))[0]])
    put_other = content(seed=9)[: len(old)]
    (root / "r.bin").unlink()
    (root / "r.bin").write_bytes(put_other)  # replaced behind fluxd's back: no manifest
    with pytest.raises(IntegrityError, match="changed during the upload"):
        up.commit(ref(bytes(new)))
    up.close()
    again = storage.open_upload("r.bin", len(new), CS, 0o644)
    # The next STATUS offers the staged chunk and what the file there now really holds.
    expected = {i: d for i, d, _ in chunks(put_other)} | {0: chunks(bytes(new))[0][1]}
    assert dict(again.held) == expected
    again.close()


# --- a damaged file at the destination ----------------------------------------------------------


def test_resending_over_a_rotten_copy_fails_then_repairs_it(
    storage: LocalStorage, root: Path
) -> None:
    data = content()
    put(storage, "f.bin", data)
    flip_in_place(root / "f.bin", 2 * CS + 9)  # same size, inode and mtime: the manifest matches
    with pytest.raises(IntegrityError, match=r"1 chunks of the stored f\.bin are corrupt"):
        send(storage, "f.bin", data)  # the client skips every chunk: the base offers them all
    assert (root / "f.bin").read_bytes() != data, "a failed commit changes nothing in place"
    assert manifest(root, "f.bin").damaged
    assert storage.stat("f.bin").digest is None, "it does not hold the digest it was sent with"
    # The next STATUS offers the chunks staged from the good part of the file, not chunk 2.
    assert send(storage, "f.bin", data) == [2]
    assert (root / "f.bin").read_bytes() == data
    assert not manifest(root, "f.bin").damaged
    assert storage.stat("f.bin").digest == ref(data)
    assert storage.scrub().corrupt == []


def test_one_failed_commit_finds_every_damaged_chunk(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "f.bin", data)
    for index in (0, 3, 5):
        flip_in_place(root / "f.bin", index * CS)
    with pytest.raises(IntegrityError, match="3 chunks"):
        send(storage, "f.bin", data)
    assert send(storage, "f.bin", data) == [0, 3, 5]
    assert (root / "f.bin").read_bytes() == data


def test_rot_in_a_basis_chunk_a_changed_file_skips(storage: LocalStorage, root: Path) -> None:
    old = content()
    put(storage, "f.bin", old)
    flip_in_place(root / "f.bin", 1 * CS + 3)
    new = bytearray(old)
    new[4 * CS] ^= 0xFF  # the new version differs in chunk 4 only: chunk 1 is skipped
    with pytest.raises(IntegrityError, match=r"1 chunks of the stored f\.bin are corrupt"):
        send(storage, "f.bin", bytes(new))
    assert send(storage, "f.bin", bytes(new)) == [1]  # chunk 4 stayed staged
    assert (root / "f.bin").read_bytes() == bytes(new)


def test_a_damaged_file_is_never_indexed_as_good(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "f.bin", data)
    flip_in_place(root / "f.bin", 2 * CS)
    with pytest.raises(IntegrityError):
        send(storage, "f.bin", data)
    # The manifest stays (marked): a download still names the digests the file was sent with
    # and refuses the damaged chunk, instead of hashing the damaged bytes as the truth.
    dl = storage.open_download("f.bin", CS)
    try:
        assert dl.digest == ref(data)
        read_verified(dl, 1)
        with pytest.raises(IntegrityError, match="corrupt at chunk 2"):
            read_verified(dl, 2)
    finally:
        dl.close()
    assert storage.scrub().corrupt == ["/f.bin: 1 corrupt chunk(s): 2"]
    # And a damaged file is no basis: only the chunks staged from it are offered.
    up = storage.open_upload("f.bin", len(data), CS, 0o644)
    assert sorted(up.held) == [0, 1, 3, 4, 5]
    up.close()


def test_a_corrupt_staged_chunk_falls_back_to_the_base(storage: LocalStorage, root: Path) -> None:
    old = content()
    put(storage, "f.bin", old)
    new = bytearray(old)
    new[3 * CS] ^= 0xFF
    new[4 * CS] ^= 0xFF
    new_chunks = chunks(bytes(new))
    up = storage.open_upload("f.bin", len(new), CS, 0o644)
    up.write_chunks(new_chunks[3:5])
    up.close()  # interrupted
    flip_in_place(staging_dir(root, "f.bin") / "data", 3 * CS + 7)
    up = storage.open_upload("f.bin", len(new), CS, 0o644)
    # The staged chunk 3 no longer verifies: the base's (old) chunk 3 is offered, which the
    # new file does not share, so the client sends it again.
    assert up.held[3] == chunks(old)[3][1] != new_chunks[3][1]
    assert up.held[4] == new_chunks[4][1]
    up.close()
    assert send(storage, "f.bin", bytes(new)) == [3]
    assert (root / "f.bin").read_bytes() == bytes(new)


def test_rot_in_a_staged_chunk_after_it_arrived_is_repaired_by_the_next_send(
    storage: LocalStorage, root: Path
) -> None:
    """What commit guarantees (README, Behaviour): chunks are verified as they arrive and
    synced; commit does not read them back. The manifest names the bytes that arrived, not
    what is on disk, so rot in between is caught by downloads, scrub and the next send."""
    data = content()
    up = storage.open_upload("f.bin", len(data), CS, 0o644)
    up.write_chunks(chunks(data))  # in order: commit hashes them as they arrived
    flip_in_place(staging_dir(root, "f.bin") / "data", 4 * CS + 1)
    up.commit(ref(data))
    up.close()
    assert manifest(root, "f.bin").digests == b"".join(d for _, d, _ in chunks(data))
    assert storage.scrub().corrupt == ["/f.bin: 1 corrupt chunk(s): 4"]
    with pytest.raises(IntegrityError, match="1 chunks"):
        send(storage, "f.bin", data)
    assert send(storage, "f.bin", data) == [4]
    assert (root / "f.bin").read_bytes() == data


# --- manifests ----------------------------------------------------------------------------------


def test_a_manifest_written_before_damaged_existed_still_loads(
    storage: LocalStorage, root: Path
) -> None:
    data = content()
    put(storage, "f.bin", data)
    fields = msgpack.unpackb(manifest_file(root, "f.bin").read_bytes())
    del fields["damaged"]
    manifest_file(root, "f.bin").write_bytes(msgpack.packb(fields))
    assert manifest(root, "f.bin").damaged is False
    assert storage.stat("f.bin").digest == ref(data)
    fields["damaged"] = 1  # not a bool: not a manifest
    assert Manifest.unpack(msgpack.packb(fields)) is None
