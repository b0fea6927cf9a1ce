"""S3Storage against a real engine (SeaweedFS, started by the fixtures): round trips, resume on
another node, the writer's lease, listings, folders and links, integrity, collection, scrub."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_support import daemons, run, send
from test_local_storage import chunks, ref

from benchmarks.engines import SeaweedFS
from fluxd.auth.scopes import subject_root
from fluxd.config import AuthConfig, Limits
from fluxd.storage.s3 import MIN_PART, S3Storage
from fluxd.storage.s3_layout import Record, data_key, entry_key, upload_dir
from fluxd.storage.s3_lease import live
from fluxd.storage.s3_store import S3Settings
from fluxproto.digest import chunk_digest
from fluxproto.errors import (
    ConfigError,
    Conflict,
    IntegrityError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Unavailable,
)

CS = MIN_PART


@pytest.fixture
def node(
    s3_engine: SeaweedFS, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., S3Storage]]:
    """Makes S3Storage "nodes" on one engine and prefix (each its own client and owner)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_engine.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_engine.secret_key)
    made: list[S3Storage] = []

    def make(
        prefix: str = s3_prefix,
        bucket: str | None = None,
        lease_ttl: float = 20.0,
        owner: str | None = None,
    ) -> S3Storage:
        settings = S3Settings(
            bucket or s3_engine.bucket,
            s3_engine.endpoint,
            prefix,
            s3_engine.region,
            lease_ttl=lease_ttl,
        )
        storage = S3Storage(settings, owner=owner or f"node{len(made)}")
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


def upload(storage: S3Storage, path: str, data: bytes, **kw: Any) -> None:
    up = storage.open_upload(path, len(data), CS, 0o640, 1_000_000_000, **kw)
    try:
        up.write_chunks(chunks(data, CS))
        up.commit(ref(data))
    finally:
        up.close()


def download(storage: S3Storage, path: str) -> bytes:
    dl = storage.open_download(path, CS)
    try:
        return b"".join(bytes(dl.read_chunk(i)) for i in range(dl.count))  # type: ignore[attr-defined]
    finally:
        dl.close()


def test_round_trip_keeps_bytes_mode_and_mtime(node: Callable[..., S3Storage]) -> None:
    storage = node()
    data = os.urandom(2 * CS + 123)
    upload(storage, "/d/f.bin", data)
    entry = storage.stat("d/f.bin")
    assert (entry.kind, entry.size, entry.mode, entry.mtime_ns) == ("file", len(data), 0o640, 10**9)
    assert entry.digest == ref(data)
    assert download(storage, "d/f.bin") == data
    assert storage.stat("d").kind == "dir"
    assert storage.usage("") == len(data)


def test_a_second_node_resumes_what_the_first_acknowledged(
    node: Callable[..., S3Storage],
) -> None:
    first, second = node(), node()
    data = os.urandom(3 * CS + 5)
    pieces = chunks(data, CS)
    up = first.open_upload("big", len(data), CS, 0o644)
    up.write_chunks([pieces[0], pieces[2]])
    up.close()
    again = second.open_upload("big", len(data), CS, 0o644)
    assert dict(again.held) == {0: pieces[0][1], 2: pieces[2][1]}
    again.write_chunks([pieces[1], pieces[3]])
    again.commit(ref(data))  # chunks 0 and 2 are read back: this node never saw them
    again.close()
    assert download(first, "big") == data


def test_another_geometry_starts_over(node: Callable[..., S3Storage]) -> None:
    storage = node()
    data = os.urandom(2 * CS)
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks(chunks(data, CS)[:1])
    up.close()
    up = storage.open_upload("f", len(data) + 1, CS, 0o644)
    assert not up.held
    up.abort()


def test_one_writer_per_path_across_nodes(node: Callable[..., S3Storage]) -> None:
    first, second = node(), node()
    data = os.urandom(2 * CS)
    up = first.open_upload("p", len(data), CS, 0o644)
    with pytest.raises(Conflict):
        second.open_upload("p", len(data), CS, 0o644)
    up.close()  # the lease is given back: the other node may take it now
    second.open_upload("p", len(data), CS, 0o644).close()


def test_the_same_writer_through_another_node_is_told_to_retry(
    node: Callable[..., S3Storage],
) -> None:
    first, second = node(), node()
    up = first.open_upload("p", 10, CS, 0o644, writer="alice")
    with pytest.raises(Unavailable, match="earlier connection of yours"):
        second.open_upload("p", 10, CS, 0o644, writer="alice")
    with pytest.raises(Conflict):
        second.open_upload("p", 10, CS, 0o644, writer="bob")
    up._lease._etag = None
    up.close()
    # The lease is still in the store: only the node that left it may take it over at once.
    with pytest.raises(Conflict):
        second.open_upload("p", 10, CS, 0o644, writer="bob")
    first.open_upload("p", 10, CS, 0o644, writer="bob").close()


def test_a_wrong_file_digest_publishes_nothing_and_keeps_the_old_version(
    node: Callable[..., S3Storage],
) -> None:
    storage = node()
    old, new = os.urandom(CS + 1), os.urandom(CS + 1)
    upload(storage, "f", old)
    up = storage.open_upload("f", len(new), CS, 0o644)
    up.write_chunks(chunks(new, CS))
    with pytest.raises(IntegrityError):
        up.commit(ref(old))
    up.close()
    assert download(storage, "f") == old
    held = storage.open_upload("f", len(new), CS, 0o644).held
    assert dict(held) == {i: d for i, d, _ in chunks(old, CS)}  # only the stored file's: resend


def test_chunks_out_of_order_are_checked_by_reading_them_back(
    node: Callable[..., S3Storage],
) -> None:
    storage = node()
    data = os.urandom(3 * CS)
    pieces = chunks(data, CS)
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks([pieces[2]])
    up.write_chunks([pieces[0], pieces[1]])
    up.commit(ref(data))
    assert download(storage, "f") == data


def test_missing_chunks_refuse_the_commit(node: Callable[..., S3Storage]) -> None:
    storage = node()
    data = os.urandom(2 * CS)
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks(chunks(data, CS)[:1])
    with pytest.raises(IntegrityError, match="missing 1"):
        up.commit(ref(data))
    up.close()
    with pytest.raises(NotFound):
        storage.stat("f")


def test_grouped_small_files_and_an_empty_file(node: Callable[..., S3Storage]) -> None:
    storage = node()
    a = storage.open_upload("a.txt", 5, CS, 0o644, grouped=True)
    a.write_chunks([(0, chunk_digest(b"hello"), b"hello")], durable=False)
    e = storage.open_upload("empty", 0, CS, 0o600)
    assert storage.commit_many([(a, chunk_digest(b"hello")), (e, ref(b""))]) == [None, None]
    assert download(storage, "a.txt") == b"hello"
    assert storage.stat("empty").size == 0
    assert download(storage, "empty") == b""


def test_listing_sorts_by_name_across_pages(node: Callable[..., S3Storage]) -> None:
    """The store orders "x.txt" before the folder "x/"; names put "x" first."""
    storage = node()
    names = ["x-1", "x.txt", "x0", "y", "a b", "é"]
    for name in names:
        upload(storage, f"dir/{name}", b"1")
    upload(storage, "dir/x/inner", b"2")
    storage.mkdir("dir/x.d", 0o700)  # a folder made empty: only its marker
    expected = sorted([*names, "x", "x.d"])
    for limit in (1, 2, 3, 100):
        got, cursor = storage.list("dir", None, limit)
        seen = [e.name for e in got]
        while cursor is not None:
            got, cursor = storage.list("dir", cursor, limit)
            seen += [e.name for e in got]
        assert seen == expected, limit
    kinds = {e.name: e.kind for e in storage.list("dir", None, 100)[0]}
    assert kinds["x"] == "dir" and kinds["x.d"] == "dir" and kinds["x.txt"] == "file"


def test_walk_is_depth_first_and_bounded(node: Callable[..., S3Storage]) -> None:
    storage = node()
    for path in ("t/a/1", "t/a/2", "t/a.txt", "t/b"):
        upload(storage, path, b"x")
    storage.symlink("t/l", "a.txt")
    storage.mkdir("t/e")
    assert [e.name for e in storage.walk("t", 100)] == ["a", "a/1", "a/2", "a.txt", "b", "e", "l"]
    with pytest.raises(LimitExceeded):
        list(storage.walk("t", 3))


def test_folders_links_and_conflicts(node: Callable[..., S3Storage]) -> None:
    storage = node()
    upload(storage, "f", b"x")
    with pytest.raises(Conflict):
        storage.open_upload("f/under", 1, CS, 0o644)
    with pytest.raises(Conflict):
        storage.mkdir("f")
    storage.mkdir("d/e", 0o750, 5)
    assert (storage.stat("d/e").mode, storage.stat("d/e").mtime_ns) == (0o750, 5)
    assert [e.name for e in storage.list("", None, 10)[0]] == ["d", "f"]
    with pytest.raises(Conflict):
        storage.open_upload("d", 1, CS, 0o644)
    with pytest.raises(NotFound):
        storage.mkdir("no/such", parents=False)
    link = storage.symlink("d/l", "../f", mtime_ns=7)
    assert (link.kind, link.target, link.mtime_ns) == ("link", "../f", 7)
    with pytest.raises(PermissionDenied):
        storage.symlink("d/bad", "../../out")
    with pytest.raises(Conflict):
        storage.open_download("d/l", CS)
    with pytest.raises(Conflict):
        storage.delete("d")
    assert storage.delete("d", recursive=True) == 3  # d, d/e, d/l
    with pytest.raises(NotFound):
        storage.stat("d")
    with pytest.raises(PermissionDenied):
        storage.delete("/")


def test_a_corrupt_object_is_found_by_scrub(
    node: Callable[..., S3Storage], s3_client: Any, s3_engine: SeaweedFS, s3_prefix: str
) -> None:
    storage = node()
    data = os.urandom(CS + 10)
    upload(storage, "f", data)
    upload(storage, "g", b"fine")
    found = s3_client.get_object(Bucket=s3_engine.bucket, Key=s3_prefix + entry_key("f"))
    record = Record.unpack(found["Body"].read(), "f")
    bad = bytearray(data)
    bad[7] ^= 1
    key = s3_prefix + data_key("f", record.nonce)
    s3_client.put_object(Bucket=s3_engine.bucket, Key=key, Body=bytes(bad))
    report = storage.scrub()
    assert (report.checked, report.corrupt) == (2, ["f"])
    dl = storage.open_download("f", CS)
    assert chunk_digest(dl.read_chunk(0)) != dl.digests[:16]  # the service refuses to serve it


def test_collect_aborts_idle_uploads_and_old_versions(
    node: Callable[..., S3Storage], s3_client: Any, s3_engine: SeaweedFS, s3_prefix: str
) -> None:
    storage = node()
    upload(storage, "kept", b"v1")
    upload(storage, "kept", b"v2")
    data = os.urandom(2 * CS)
    idle = storage.open_upload("idle", len(data), CS, 0o644)
    idle.write_chunks(chunks(data, CS)[:1])
    idle.close()
    live = storage.open_upload("live", len(data), CS, 0o644)
    live.write_chunks(chunks(data, CS)[:1])
    assert storage.collect(3600, time.time()).uploads == 0  # nothing idle for an hour yet
    done = storage.collect(0, time.time() + 10)
    assert done.uploads == 1 and done.bytes == 2  # the idle upload; v1 of kept
    assert download(storage, "kept") == b"v2"
    uploads = s3_client.list_multipart_uploads(Bucket=s3_engine.bucket, Prefix=s3_prefix)
    assert len(uploads.get("Uploads", [])) == 1  # the live one, whose lease is held
    assert storage.recover().uploads == 1
    live.abort()


def test_start_checks_bucket_and_credentials(
    node: Callable[..., S3Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="no bucket"):
        node(bucket="no-such-bucket").check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match="refused the credentials"):
        node().check()


def test_a_dead_writers_lease_expires_and_it_cannot_write_after(
    node: Callable[..., S3Storage],
) -> None:
    dead, alive = node(lease_ttl=1.0, owner="dead"), node(lease_ttl=1.0, owner="alive")
    data = os.urandom(2 * CS)
    pieces = chunks(data, CS)
    stuck = dead.open_upload("f", len(data), CS, 0o644)
    stuck.write_chunks(pieces[:1])  # then the node hangs: it never closes nor renews
    with pytest.raises(Conflict):
        alive.open_upload("f", len(data), CS, 0o644)
    deadline = time.monotonic() + 30
    while True:  # expiry is by the store's whole-second clock: poll for it
        try:
            taken = alive.open_upload("f", len(data), CS, 0o644)
            break
        except Conflict:
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.2)
    assert dict(taken.held) == {0: pieces[0][1]}
    with pytest.raises(Conflict, match="lease"):
        stuck.write_chunks(pieces[1:])  # its lease is gone: it must not write
    taken.write_chunks(pieces[1:])
    taken.commit(ref(data))
    assert download(alive, "f") == data


def test_a_chunk_sent_again_with_other_bytes_is_the_one_assembled(
    node: Callable[..., S3Storage],
) -> None:
    """SeaweedFS keeps both copies of a part sent twice; the commit names the newer."""
    storage = node()
    old, new = os.urandom(2 * CS), os.urandom(2 * CS)
    up = storage.open_upload("f", len(old), CS, 0o644)
    up.write_chunks(chunks(old, CS)[:1])
    up.close()
    up = storage.open_upload("f", len(new), CS, 0o644)
    assert dict(up.held) == {0: chunks(old, CS)[0][1]}  # a client with other bytes sends it again
    up.write_chunks(chunks(new, CS))
    up.commit(ref(new))
    assert download(storage, "f") == new


def test_the_file_at_the_path_is_a_basis_checked_before_use(
    node: Callable[..., S3Storage], s3_client: Any, s3_engine: SeaweedFS, s3_prefix: str
) -> None:
    """As rsync's basis file: an unchanged file costs no chunks, a changed one only those that
    differ; a corrupt stored chunk is never taken for a good one."""
    storage = node()
    data = os.urandom(3 * CS)
    upload(storage, "f", data)
    same = storage.open_upload("f", len(data), CS, 0o600, 5)
    assert len(same.held) == 3
    same.commit(ref(data))  # nothing sent: the stored file is read back and kept
    assert (storage.stat("f").mode, storage.stat("f").mtime_ns) == (0o600, 5)
    changed = bytearray(data)
    changed[CS + 1] ^= 1
    up = storage.open_upload("f", len(data), CS, 0o644)
    chunk = chunks(bytes(changed), CS)[1]
    assert up.held[1] != chunk[1]
    up.write_chunks([chunk])
    up.commit(ref(bytes(changed)))
    assert download(storage, "f") == bytes(changed)
    # Rot in the stored copy: the commit that would take chunk 2 from it finds it out.
    record = Record.unpack(
        s3_client.get_object(Bucket=s3_engine.bucket, Key=s3_prefix + entry_key("f"))[
            "Body"
        ].read(),
        "f",
    )
    rotten = bytearray(changed)
    rotten[2 * CS] ^= 1
    key = s3_prefix + data_key("f", record.nonce)
    s3_client.put_object(Bucket=s3_engine.bucket, Key=key, Body=bytes(rotten))
    new = os.urandom(CS)
    up = storage.open_upload("f", len(data), CS, 0o644)
    up.write_chunks([(0, chunk_digest(new), new)])
    final = new + bytes(changed)[CS:]
    with pytest.raises(IntegrityError, match="1 chunks of the stored f are corrupt"):
        up.commit(ref(final))
    up.close()
    assert storage.stat("f").digest is None  # marked damaged: no longer vouched for
    up = storage.open_upload("f", len(data), CS, 0o644)
    assert sorted(up.held) == [0, 1]  # chunk 1 taken from the stored file, checked; not 2
    up.write_chunks(chunks(final, CS)[2:])
    up.commit(ref(final))
    assert download(storage, "f") == final


def test_quota_counts_files_on_s3_as_on_local_storage(
    node: Callable[..., S3Storage], tmp_path: Path
) -> None:
    """The quota of the service test, with files of one chunk (any size on S3)."""
    builds = daemons(tmp_path, tmp_path, node())  # type: ignore[arg-type]
    d = next(builds)(limits=Limits(quota=10_000), auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))

    async def main() -> None:
        await send(d, alice, "old", os.urandom(4000))
        async with d.service.upload(alice, "open", 4000, CS, 0o644):
            await send(d, alice, "fits", os.urandom(2000))
            with pytest.raises(LimitExceeded, match=r"quota of 10000 bytes for 'alice'"):
                await send(d, alice, "big", os.urandom(3000))
            await send(d, alice, "old", os.urandom(4000))  # a replacement counts the difference

    try:
        run(main())
    finally:
        next(builds, None)  # its cleanup: the access log and the pool
    assert d.storage.usage("users/alice") == 6000


def test_a_writer_silent_past_its_lease_goes_on_if_no_node_took_over(
    node: Callable[..., S3Storage],
) -> None:
    """A slow client: the lease lapsed between two chunks, but it is still the one written."""
    storage, other = node(lease_ttl=1.0, owner="slow"), node(lease_ttl=1.0, owner="other")
    data = os.urandom(2 * CS)
    pieces = chunks(data, CS)
    up = storage.open_upload("f", len(data), CS, 0o644, writer="w")
    up.write_chunks(pieces[:1])
    lease = other._store.get_aged(upload_dir("f") + "lease", "test")
    deadline = time.monotonic() + 30
    while lease is not None and live(lease):  # by the store's clock: poll until it lapsed
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.2)
        lease = other._store.get_aged(upload_dir("f") + "lease", "test")
    up.write_chunks(pieces[1:])
    up.commit(ref(data))
    assert download(other, "f") == data


def test_a_replaced_version_stays_for_the_grace_after_it_was_retired(
    node: Callable[..., S3Storage], s3_client: Any, s3_engine: SeaweedFS, s3_prefix: str
) -> None:
    """Not after it was written: a download of a week-old file, replaced now, goes on."""
    storage = node()
    upload(storage, "f", b"v1")
    reading = storage.open_download("f", CS)  # pinned to v1

    def modified(key: str) -> float:
        got = s3_client.head_object(Bucket=s3_engine.bucket, Key=s3_prefix + key)
        return float(got["LastModified"].timestamp())

    (v1,) = [o.key for o in storage._store.walk("data/f/", "test")]
    written = modified(v1)
    deadline = time.monotonic() + 30
    while True:  # the store's clock has whole seconds: poll until it moved on by two
        storage._store.put("probe/clock", b"", "test")
        if modified("probe/clock") >= written + 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    upload(storage, "f", b"v2")  # retires v1 now
    retired = modified(f"retired/f/{v1.rpartition('/')[2]}")
    grace = (retired - written) / 2
    assert storage.collect(grace, retired + grace / 2).bytes == 0  # written long ago, retired now
    assert reading.read_chunk(0) == b"v1"
    assert storage.collect(grace, retired + 2 * grace).bytes == 2
    assert download(storage, "f") == b"v2"
