"""LocalStorage: uploads and commits, manifests, downloads, stat, list, delete, the hidden area."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import unicodedata
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
import xxhash

from fluxd.storage import LocalStorage, Manifest, Storage, storage_errors
from fluxproto.digest import chunk_digest
from fluxproto.errors import (
    Conflict,
    FluxError,
    IntegrityError,
    LimitExceeded,
    NoSpace,
    NotFound,
    PermissionDenied,
    StorageError,
)

CS = 4096


def content(size: int = 5 * CS + 77, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def ref(data: bytes) -> bytes:
    return bytes(xxhash.xxh3_128_digest(data))


def chunks(data: bytes, cs: int = CS) -> list[tuple[int, bytes, bytes]]:
    pieces = [data[o : o + cs] for o in range(0, len(data), cs)]
    return [(i, chunk_digest(p), p) for i, p in enumerate(pieces)]


def put(storage: LocalStorage, path: str, data: bytes, mode: int = 0o644) -> None:
    up = storage.open_upload(path, len(data), CS, mode)
    up.write_chunks(chunks(data))
    up.commit(ref(data))
    up.close()


def manifest_file(root: Path, rel: str) -> Path:
    return root / ".flux" / "manifests" / hashlib.sha256(rel.encode()).hexdigest()


def staging_dir(root: Path, rel: str) -> Path:
    return root / ".flux" / "staging" / hashlib.sha256(rel.encode()).hexdigest()


def test_is_a_storage(storage: LocalStorage, root: Path) -> None:
    s: Storage = storage
    assert s is storage
    for d in (".flux", ".flux/staging", ".flux/manifests"):
        assert stat.S_IMODE((root / d).stat().st_mode) == 0o700


# --- uploads ---------------------------------------------------------------------------------


def test_upload_commit_writes_file_and_manifest(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "/backups/2024/x.tar", data, 0o640)
    dest = root / "backups" / "2024" / "x.tar"
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    fields = msgpack.unpackb(manifest_file(root, "backups/2024/x.tar").read_bytes())
    st_ = dest.stat()
    assert fields == {
        "path": "backups/2024/x.tar",
        "size": len(data),
        "chunk_size": CS,
        "digest": ref(data),
        "digests": b"".join(d for _, d, _ in chunks(data)),
        "mtime_ns": st_.st_mtime_ns,
        "ino": st_.st_ino,
        "damaged": False,
    }
    assert not staging_dir(root, "backups/2024/x.tar").exists()


def test_upload_replaces_existing_file(storage: LocalStorage, root: Path) -> None:
    put(storage, "f", b"old")
    put(storage, "f", content())
    assert (root / "f").read_bytes() == content()
    assert storage.stat("f").digest == ref(content())


def test_empty_upload(storage: LocalStorage, root: Path) -> None:
    put(storage, "empty", b"")
    assert (root / "empty").read_bytes() == b""
    assert storage.stat("empty").digest == ref(b"")


def test_commit_with_missing_chunks(storage: LocalStorage, root: Path) -> None:
    data = content()
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks(chunks(data)[:-2])
    with pytest.raises(IntegrityError, match="missing 2 chunks"):
        up.commit(ref(data))
    up.close()
    assert not (root / "f").exists()


def test_wrong_commit_digest_keeps_staging(storage: LocalStorage, root: Path) -> None:
    data = content()
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks(chunks(data))
    with pytest.raises(IntegrityError, match="0 stored chunks were corrupt"):
        up.commit(b"\0" * 16)
    up.close()
    assert not (root / "f").exists()
    up = storage.open_upload("f", len(data), CS, 0o644)
    assert sorted(up.held) == list(range(6))
    up.commit(ref(data))
    assert (root / "f").read_bytes() == data


def test_corrupt_staged_chunk_is_dropped_at_commit(storage: LocalStorage, root: Path) -> None:
    data = content()
    up = storage.open_upload("f", len(data), CS, 0o644)
    for c in reversed(chunks(data)):  # out of order: commit hashes from disk
        up.write_chunks([c])
    with (staging_dir(root, "f") / "data").open("r+b") as f:
        f.seek(2 * CS + 5)
        f.write(b"rot")
    with pytest.raises(IntegrityError, match="1 stored chunks were corrupt"):
        up.commit(ref(data))
    assert 2 not in up.held and len(up.held) == 5
    up.write_chunks([chunks(data)[2]])
    up.commit(ref(data))
    assert (root / "f").read_bytes() == data


def test_upload_onto_directory_conflicts(storage: LocalStorage, root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(Conflict, match="d is a directory"):
        storage.open_upload("d", 10, CS, 0o644)
    (root / "file").write_text("x")
    with pytest.raises(Conflict, match="a parent of file/x is a file"):
        storage.open_upload("file/x", 10, CS, 0o644)


def test_parent_that_became_a_file_conflicts_at_commit(storage: LocalStorage, root: Path) -> None:
    data = content()
    up = storage.open_upload("a/b/c", len(data), CS, 0o644)
    up.write_chunks(chunks(data))
    (root / "a").write_text("now a file")
    with pytest.raises(Conflict, match="a parent of a/b/c is a file"):
        up.commit(ref(data))
    up.close()
    assert (root / "a").read_text() == "now a file"


def test_upload_resumes_and_refuses_second_writer(storage: LocalStorage) -> None:
    data = content()
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks(chunks(data)[:3])
    with pytest.raises(Conflict, match="being written by another session"):
        storage.open_upload("/f", len(data), CS, 0o644)
    up.close()
    up = storage.open_upload("f", len(data), CS, 0o644)
    assert sorted(up.held) == [0, 1, 2]
    assert dict(up.held) == {i: d for i, d, _ in chunks(data)[:3]}
    up.close()


def test_abort_discards_staging(storage: LocalStorage, root: Path) -> None:
    data = content()
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks(chunks(data)[:3])
    up.abort()
    assert not staging_dir(root, "f").exists()
    up = storage.open_upload("f", len(data), CS, 0o644)
    assert dict(up.held) == {}
    up.close()


def test_enospc_maps_to_nospace_and_upload_resumes(
    storage: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content()
    up = storage.open_upload("big/f", len(data), CS, 0o644)
    up.write_chunks(chunks(data)[:2])

    def full(fd: int, buf: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(NoSpace, match="no space left on device while writing chunk 2 of big/f"):
        up.write_chunks(chunks(data)[2:])
    monkeypatch.undo()
    up.close()
    up = storage.open_upload("big/f", len(data), CS, 0o644)
    assert sorted(up.held) == [0, 1]
    up.write_chunks(chunks(data)[2:])
    up.commit(ref(data))
    assert (root / "big" / "f").read_bytes() == data


# --- downloads -------------------------------------------------------------------------------


def read_all(storage: LocalStorage, path: str, hint: int = CS) -> tuple[bytes, int, bytes]:
    dl = storage.open_download(path, hint)
    try:
        n = -(-dl.size // dl.chunk_size)
        data = b"".join(dl.read_chunk(i) for i in range(n))
        for i in range(n):
            assert chunk_digest(dl.read_chunk(i)) == dl.digests[i * 16 : (i + 1) * 16]
        return data, dl.chunk_size, dl.digest
    finally:
        dl.close()


def test_download_uses_manifest(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "f", data, 0o600)
    before = manifest_file(root, "f").stat().st_mtime_ns
    dl = storage.open_download("/f", 64 * 1024)
    assert (dl.size, dl.chunk_size, dl.digest, dl.mode) == (len(data), CS, ref(data), 0o600)
    assert dl.mtime_ns == (root / "f").stat().st_mtime_ns
    dl.close()
    assert manifest_file(root, "f").stat().st_mtime_ns == before  # not rewritten


def test_download_indexes_file_without_manifest(storage: LocalStorage, root: Path) -> None:
    data = content(3 * 8192 + 1)
    (root / "plain.bin").write_bytes(data)
    got, cs, digest = read_all(storage, "plain.bin", 8192)
    assert (got, cs, digest) == (data, 8192, ref(data))
    manifest = Manifest.unpack(manifest_file(root, "plain.bin").read_bytes())
    assert manifest is not None and manifest.digest == ref(data)
    assert manifest.digests == b"".join(d for _, d, _ in chunks(data, 8192))


def test_download_recomputes_stale_manifest(storage: LocalStorage, root: Path) -> None:
    put(storage, "f", content())
    new = content(seed=9)
    (root / "f").write_bytes(new)  # changed behind the daemon's back (same inode)
    os.utime(root / "f", ns=(1, 1))
    got, _, digest = read_all(storage, "f")
    assert (got, digest) == (new, ref(new))
    assert storage.stat("f").digest == ref(new)


def test_download_ignores_garbage_manifest(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "f", data)
    manifest_file(root, "f").write_bytes(b"\xc1 not msgpack")
    assert read_all(storage, "f")[2] == ref(data)


def test_download_clamps_chunk_size_hint(storage: LocalStorage, root: Path) -> None:
    (root / "g").write_bytes(b"x" * 10)
    assert read_all(storage, "g", 1)[1] == 4096


def test_download_is_pinned_to_the_opened_version(storage: LocalStorage) -> None:
    old, new = content(), content(seed=3)
    put(storage, "f", old)
    dl = storage.open_download("f", CS)
    put(storage, "f", new)
    assert dl.read_chunk(0) == old[:CS] and dl.digest == ref(old)
    dl.close()
    assert read_all(storage, "f")[0] == new


def test_download_errors(storage: LocalStorage, root: Path, tmp_path: Path) -> None:
    (root / "d").mkdir()
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "link")
    with pytest.raises(NotFound, match="while opening nope"):
        storage.open_download("nope", CS)
    with pytest.raises(Conflict, match="d is a directory"):
        storage.open_download("d", CS)
    with pytest.raises(PermissionDenied):
        storage.open_download("/", CS)
    with pytest.raises(PermissionDenied, match="outside"):
        storage.open_download("link", CS)


# --- stat, list, delete ----------------------------------------------------------------------


def test_stat(storage: LocalStorage, root: Path) -> None:
    data = content()
    put(storage, "dir/f", data, 0o640)
    (root / "raw").write_bytes(b"abc")
    f = storage.stat("/dir/f")
    assert (f.name, f.kind, f.size, f.mode, f.digest) == ("f", "file", len(data), 0o640, ref(data))
    assert f.mtime_ns == (root / "dir" / "f").stat().st_mtime_ns
    d = storage.stat("dir")
    assert (d.name, d.kind, d.digest) == ("dir", "dir", None)
    assert storage.stat("/").name == "/" and storage.stat("").kind == "dir"
    assert storage.stat("raw").digest is None
    with pytest.raises(NotFound):
        storage.stat("missing")


def test_list_pages_with_cursor(storage: LocalStorage, root: Path) -> None:
    names = [f"f{i:02d}" for i in range(7)] + ["a-dir", "z-dir"]
    for n in names:
        if n.endswith("dir"):
            (root / n).mkdir()
        else:
            (root / n).write_bytes(n.encode())
    seen, cursor, pages = [], None, 0
    while True:
        entries, cursor = storage.list("/", cursor, 3)
        assert len(entries) <= 3
        seen += entries
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert [e.name for e in seen] == sorted(names)
    assert {e.name: e.kind for e in seen}["a-dir"] == "dir"
    assert seen[1].size == 3
    assert storage.list("/", "f05", 100) == (seen[-2:], None)


def test_list_of_a_file_is_its_entry(storage: LocalStorage) -> None:
    put(storage, "a/f", b"data")
    entries, cursor = storage.list("a/f", None, 10, digests=True)
    assert cursor is None
    assert [(e.name, e.kind, e.digest) for e in entries] == [("f", "file", ref(b"data"))]
    assert storage.list("a/f", None, 10) == ([replace(entries[0], digest=None)], None)


def test_list_carries_digests_only_when_asked(storage: LocalStorage) -> None:
    put(storage, "a/f", b"data")
    put(storage, "a/g", b"more")
    asked = storage.list("a", None, 10, digests=True)[0]
    assert [(e.name, e.digest) for e in asked] == [("f", ref(b"data")), ("g", ref(b"more"))]
    entries = storage.list("a", None, 10)[0]
    assert entries == [replace(e, digest=None) for e in asked]


def test_list_hides_reserved_unreachable_and_escaping(
    storage: LocalStorage, root: Path, tmp_path: Path
) -> None:
    (root / "ok").write_text("x")
    (root / "bad\nname").write_text("x")
    (root / unicodedata.normalize("NFD", "café")).write_text("x")
    os.symlink(tmp_path, root / "escape")
    os.symlink(root / "ok", root / "inside-link")
    os.symlink(root, root / "self")
    os.mkfifo(root / "fifo")
    entries, _ = storage.list("/", None, 100)
    assert [e.name for e in entries] == ["inside-link", "ok", "self"]
    assert ".flux" not in [e.name for e in storage.list("self", None, 100)[0]]


def test_reserved_area_is_unreachable(storage: LocalStorage) -> None:
    for call in (
        lambda: storage.stat(".flux"),
        lambda: storage.list("/.flux/staging", None, 10),
        lambda: storage.open_upload(".flux/manifests/x", 1, CS, 0o644),
        lambda: storage.open_download(".flux/manifests/x", CS),
        lambda: storage.delete("/.flux"),
    ):
        with pytest.raises(PermissionDenied, match="reserved"):
            call()


def test_delete(storage: LocalStorage, root: Path) -> None:
    put(storage, "d/f", b"data")
    assert manifest_file(root, "d/f").exists()
    storage.delete("/d/f")
    assert not (root / "d" / "f").exists()
    assert not manifest_file(root, "d/f").exists()
    with pytest.raises(NotFound):
        storage.delete("d/f")
    with pytest.raises(Conflict, match="d is a directory"):
        storage.delete("d")
    with pytest.raises(PermissionDenied, match="a file path is needed"):
        storage.delete("/")
    assert (root / "d").is_dir()


def test_delete_removes_symlink_not_target(storage: LocalStorage, root: Path) -> None:
    (root / "target").write_text("keep")
    os.symlink(root / "target", root / "link")
    storage.delete("link")
    assert not (root / "link").exists()
    assert (root / "target").read_text() == "keep"


# --- OSError translation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "cls"),
    [
        (errno.ENOENT, NotFound),
        (errno.ENOSPC, NoSpace),
        (errno.EDQUOT, NoSpace),
        (errno.EEXIST, Conflict),
        (errno.EISDIR, Conflict),
        (errno.ENOTDIR, Conflict),
        (errno.ENOTEMPTY, Conflict),
        (errno.EACCES, StorageError),
        (errno.EPERM, StorageError),
        (errno.EROFS, StorageError),
        (errno.EFBIG, LimitExceeded),
        (errno.EIO, StorageError),
    ],
)
def test_storage_errors_maps_errno(err: int, cls: type[FluxError]) -> None:
    with pytest.raises(FluxError) as info, storage_errors("writing chunk 7 of a/b"):
        raise OSError(err, os.strerror(err), "/srv/secret/path")
    assert type(info.value) is cls
    assert not isinstance(info.value, PermissionDenied)
    assert info.value.message.endswith(" while writing chunk 7 of a/b")
    assert "/srv/secret" not in info.value.message  # server paths stay on the server
    assert isinstance(info.value.__cause__, OSError)


def test_storage_errors_message_and_passthrough() -> None:
    with pytest.raises(NoSpace) as info, storage_errors("writing chunk 7 of a/b"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.message == "no space left on device while writing chunk 7 of a/b"
    with pytest.raises(Conflict, match=r"^mine$"), storage_errors("x"):
        raise Conflict("mine")
