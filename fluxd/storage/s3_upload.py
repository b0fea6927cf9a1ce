"""S3Upload: an upload into S3Storage, as an S3 multipart upload any node can resume.

Chunk `i` is part `i + 1` of the multipart upload of data/<path>/<nonce>. It is held (and may
be acknowledged) once the store holds the part and its chunk key (s3_layout.py) names its
digest: a node resuming the upload lists those keys, keeps the ones whose part ListParts shows
with the right size, and so rebuilds `held` from the store alone. A node writes only while it
holds the path's lease (s3_lease.py).

The whole-file digest is checked at commit: over the bytes as they arrived, where they arrived
in order on this node, and for the rest (chunks another node took, or that came out of order)
by reading them back, and their chunk digests with them, from the assembled data object before
its record makes the file appear. A mismatch throws the upload away: its parts are spent.

A small file of one chunk committed in a group (`grouped`), and an empty file, store nothing
before their commit: the bytes wait in memory and the commit writes the data object whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor

from fluxio.crashpoints import crash_point
from fluxio.staging import ChunkData
from fluxproto.digest import FileHasher, chunk_digest
from fluxproto.errors import Conflict, FluxError, IntegrityError, NotFound, StorageError
from fluxproto.frames import DIGEST_SIZE, chunk_count

from .base import CorruptBasis, HeldWithBase, copy_checked
from .s3_download import S3Download
from .s3_layout import (
    Record,
    UnreadableRecord,
    UploadRecord,
    chunk_key,
    chunks_prefix,
    data_key,
    entry_key,
    marker_key,
    new_nonce,
    parse_chunk_key,
    retired_key,
    upload_dir,
)
from .s3_lease import Lease
from .s3_store import ObjectStore
from .s3_tree import holds_anything

__all__ = ["S3Upload", "open_s3_upload"]

_COPY_BATCH = 4  # chunks of the basis read and stored at a time


def open_s3_upload(
    store: ObjectStore,
    pool: Executor,
    rel: str,
    geometry: tuple[int, int],
    attributes: tuple[int, int | None],
    grouped: bool,
    holder: tuple[str, str, float],
) -> S3Upload:
    """Take the path's lease for `holder` (this node, the writer, the lease's TTL: see
    `Lease.take`), then resume the upload in progress with this geometry or start one; see
    `base.Storage.open_upload`.

    Raises:
        Conflict, Unavailable: as `Lease.take`. StorageError: the store failed.
    """
    size, chunk_size = geometry
    lease = Lease.take(store, upload_dir(rel) + "lease", rel, *holder)
    try:
        up = S3Upload(store, pool, rel, geometry, attributes, lease)
        found = store.get(upload_dir(rel) + "record", f"reading the upload of {rel}")
        try:
            record = UploadRecord.unpack(found[0], rel) if found else None
        except UnreadableRecord:
            record = None  # nothing can resume it: started over (collection takes the rest)
        if record is not None and (record.size, record.chunk_size) == (size, chunk_size):
            up.resume(record)
        elif record is not None:
            up.discard(record)  # another geometry: the file changed, its chunks are no use
        if up.record is None and up.count and not (grouped and up.count == 1):
            up.start()
        if up.record is not None:
            up.base = _basis(store, rel, size, chunk_size)
        return up
    except BaseException:
        lease.release()
        raise


def _basis(store: ObjectStore, rel: str, size: int, chunk_size: int) -> Record | None:
    """The record of the file now at `rel` if it has this geometry: its chunks count as held
    (rsync's basis file; see local_upload.py), read back and checked when used."""
    try:
        found = store.get(entry_key(rel), f"reading {rel}")
        record = Record.unpack(found[0], rel) if found else None
    except FluxError:
        return None
    if record is None or record.kind != "file" or record.damaged:
        return None
    return record if (record.size, record.chunk_size) == (size, chunk_size) else None


class S3Upload:
    """An upload into S3Storage (`base.Upload`). Use `open_s3_upload`."""

    #: Batches stored at once: parts have no sync to share, and the store takes many at once.
    parallel = 8

    def __init__(
        self,
        store: ObjectStore,
        pool: Executor,
        rel: str,
        geometry: tuple[int, int],
        attributes: tuple[int, int | None],
        lease: Lease,
    ) -> None:
        self._store, self._pool, self._rel, self._lease = store, pool, rel, lease
        self.size, self.chunk_size = geometry
        self._mode, self._mtime_ns = attributes
        self.count = chunk_count(self.size, self.chunk_size)
        self.record: UploadRecord | None = None
        self._held: dict[int, bytes] = {}
        self._etags: dict[int, str] = {}  # the ETag of each held chunk's part
        self._memory: dict[int, bytes] = {}  # a grouped small file's bytes, until its commit
        # The whole-file hash of chunks [0, frontier) as they arrived (`arrived`), and their
        # digests: the commit uses it only as far as those are the chunks held.
        self._hasher, self._frontier = FileHasher(), 0
        self._hashed: list[bytes] = []
        # Writes run in parallel: `_state` guards held and etags, `_hashing` the hash (the
        # event loop takes it in `arrived`: never held across I/O), `_starting` the start.
        self._state, self._hashing = threading.Lock(), threading.Lock()
        self._starting = threading.Lock()
        self._done = False
        #: The file at the path, whose chunks count as held where none is stored (`_basis`).
        self.base: Record | None = None

    # --- opening -------------------------------------------------------------------------------

    def resume(self, record: UploadRecord) -> None:
        """Take over the upload `record` describes: held = chunks whose part and key are both
        in the store. An upload the store no longer has starts over."""
        self.record = record
        key = data_key(self._rel, record.nonce)
        try:
            parts = self._store.parts(key, record.upload_id, f"resuming {self._rel}")
        except NotFound:
            self._drop_record(record)
            return
        named: dict[int, tuple[bytes, str] | None] = {}
        for obj in self._store.walk(
            chunks_prefix(self._rel, record.nonce), f"resuming {self._rel}"
        ):
            found = parse_chunk_key(obj.key)
            if found is not None:
                index, digest, etag = found
                # Two keys for one chunk (a rewrite cut short): which is the part is unknown.
                named[index] = (digest, etag) if index not in named else None
        for index, held in named.items():
            if (
                held
                and index < self.count
                and parts.get((index + 1, held[1])) == self._length(index)
            ):
                self._held[index], self._etags[index] = held

    def discard(self, record: UploadRecord) -> None:
        """Throw away the upload `record` describes (its parts and chunk keys)."""
        key = data_key(self._rel, record.nonce)
        self._store.abort_upload(key, record.upload_id, f"discarding the upload of {self._rel}")
        self._drop_record(record)

    def _drop_record(self, record: UploadRecord) -> None:
        what = f"discarding the upload of {self._rel}"
        keys = [o.key for o in self._store.walk(chunks_prefix(self._rel, record.nonce), what)]
        self._store.delete([*keys, upload_dir(self._rel) + "record"], what)
        self.record = None

    def start(self) -> None:
        """Start a multipart upload and write its record, so any node finds it."""
        nonce = new_nonce()
        what = f"starting the upload of {self._rel}"
        upload_id = self._store.create_upload(data_key(self._rel, nonce), what)
        record = UploadRecord(self._rel, self.size, self.chunk_size, nonce, upload_id)
        self._lease.keep()
        self._store.put(upload_dir(self._rel) + "record", record.pack(), what)
        self.record = record

    # --- state ---------------------------------------------------------------------------------

    @property
    def held(self) -> Mapping[int, bytes]:
        """Chunk index -> digest of every chunk the store holds for this upload, and (with a
        basis) the file at the path's chunks where it holds none."""
        if self.base is None:
            return self._held
        return HeldWithBase(self._held, self.base.digests, self.count)

    def _length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def _check(self, index: int, digest: bytes, data: bytes | bytearray | memoryview) -> None:
        if not 0 <= index < self.count:
            raise StorageError(f"chunk {index} is out of range for {self._rel}")
        if len(memoryview(data).cast("B")) != self._length(index) or len(digest) != DIGEST_SIZE:
            raise StorageError(f"chunk {index} of {self._rel} has the wrong length")

    # --- writing -------------------------------------------------------------------------------

    def write_chunks(self, batch: Sequence[ChunkData], durable: bool = True) -> None:
        """Store chunks whose digests the caller verified; see `base.Upload.write_chunks`.

        Each chunk becomes a part (the batch's parts go up in parallel), then its chunk key,
        naming the part's ETag, is written; only then is it held. `durable=False` on a small
        file opened `grouped` keeps its bytes in memory for the commit.

        Raises:
            Conflict: the lease was lost. Unavailable, StorageError: the store failed; the
            chunks of the batch that made it are held, the others not.
        """
        for index, digest, data in batch:
            self._check(index, digest, data)
        if not durable and self.record is None:
            for index, digest, data in batch:
                self._memory[index] = bytes(data)
                self._held[index] = bytes(digest)
            return
        with self._starting:
            if self.record is None:
                self.start()
                if self._memory:  # a small file held in memory that now must be durable
                    with self._state:
                        kept = [(i, self._held.pop(i), d) for i, d in self._memory.items()]
                    self._memory.clear()
                    batch = [*kept, *batch]
            record = self.record
            assert record is not None
        key = data_key(self._rel, record.nonce)
        what = f"storing chunks of {self._rel}"

        def store(chunk: ChunkData) -> str:
            index, digest, data = chunk
            # Right before each request: it starts with most of the lease left (s3_lease.py).
            self._lease.keep()
            etag = self._store.upload_part(key, record.upload_id, index + 1, data, what)
            new = chunk_key(self._rel, record.nonce, index, digest, etag)
            self._lease.keep()
            self._store.put(new, b"", what)
            with self._state:
                held = (self._held[index], self._etags[index]) if index in self._held else None
            old = chunk_key(self._rel, record.nonce, index, *held) if held else new
            if old != new:  # a resume would find both keys: drop the old one
                self._store.delete([old], what)
            return etag

        futures = [(chunk, self._pool.submit(store, chunk)) for chunk in batch]
        failed: BaseException | None = None
        for (index, digest, _), future in futures:
            try:
                etag = future.result()
            except BaseException as exc:  # noqa: BLE001 - the first failure is raised below
                failed = failed or exc
                continue
            with self._state:
                self._held[index], self._etags[index] = bytes(digest), etag
        if failed is not None:
            raise failed
        crash_point("chunks-durable")

    def arrived(self, index: int, digest: bytes, data: bytes | bytearray | memoryview) -> None:
        """Hash the file as chunks arrive, in order (`base.Upload.arrived`): parts are stored
        several at once and finish in any order, so their writes cannot feed the hash. A
        chunk that arrives out of order stops it there; the commit reads the rest back."""
        with self._hashing:
            if index == self._frontier and self.record is not None:
                self._hasher.update(data)
                self._hashed.append(bytes(digest))
                self._frontier += 1

    # --- committing ----------------------------------------------------------------------------

    def commit(self, digest: bytes) -> None:
        """Check and publish; see `base.Upload.commit`.

        Raises:
            IntegrityError: chunks missing, a chunk read back is corrupt, or the digest
                differs (the upload is thrown away then: its parts are spent).
            Conflict: a folder is at the path, a parent is a file, or the lease was lost.
            Unavailable, StorageError: the store failed.
        """
        if self.base is not None and len(self._held) < self.count:
            if not self._held and digest == self.base.digest:
                self._keep_base(self.base)  # the file there already is this one
                return
            self._fill_from_base(self.base)
        if len(self._held) != self.count:
            raise IntegrityError(f"missing {self.count - len(self._held)} chunks of {self._rel}")
        check_destination(self._store, self._rel)
        if self.record is None:
            self._commit_memory(digest)
        else:
            self._commit_parts(digest, self.record)
        self._done = True
        self._lease.drop()

    def _keep_base(self, base: Record) -> None:
        """Commit without writing: read the stored file whole and check it, then give its
        record the mode and mtime asked for, and drop the upload.

        Raises:
            IntegrityError: its bytes no longer match (it is marked damaged: resend it all).
        """
        try:
            bad, whole = S3Download(self._store, self._rel, base).check()
        except NotFound:
            self.base = None
            raise IntegrityError(f"{self._rel} changed during the upload; resend it") from None
        if bad or whole != base.digest:
            self._mark_damaged(base)
            raise CorruptBasis(f"the stored {self._rel} is corrupt; resend it")
        mtime = self._mtime_ns if self._mtime_ns is not None else base.mtime_ns
        kept = dataclasses.replace(base, mode=self._mode & 0o7777, mtime_ns=mtime)
        publish(self._store, self._lease, self._rel, kept)
        self.abort()
        self._done = True

    def _fill_from_base(self, base: Record) -> None:
        """Store, as parts, the chunks the client skipped because the file at the path has
        them, each read from it and checked against its digest first.

        Raises:
            IntegrityError: the file changed meanwhile, or some of its chunks no longer match
                (it is marked damaged; the good ones are stored). The client's next STATUS
                lacks exactly those.
        """
        dl = S3Download(self._store, self._rel, base)
        missing = [i for i in range(self.count) if i not in self._held]
        try:
            bad = copy_checked(dl, self.write_chunks, base.digests, missing, _COPY_BATCH)
        except NotFound:
            self.base = None
            raise IntegrityError(
                f"{self._rel} changed during the upload; resend the rest"
            ) from None
        if bad:
            self._mark_damaged(base)
            raise CorruptBasis(
                f"{len(bad)} chunks of the stored {self._rel} are corrupt; resend them"
            )

    def _mark_damaged(self, base: Record) -> None:
        """Mark the file's record damaged, if it still is `base`: it stops counting as held."""
        self.base = None
        what = f"marking {self._rel} damaged"
        found = self._store.get(entry_key(self._rel), what)
        if found is not None and Record.unpack(found[0], self._rel).nonce == base.nonce:
            damaged = dataclasses.replace(base, damaged=True)
            self._store.put(entry_key(self._rel), damaged.pack(), what, if_match=found[1])

    def _commit_memory(self, digest: bytes) -> None:
        data = b"".join(self._memory[i] for i in range(self.count))
        if chunk_digest(data) != digest:  # one chunk at most: its digest is the file's
            raise IntegrityError(f"file digest mismatch for {self._rel}")
        nonce = new_nonce()
        self._lease.keep()
        self._store.put_data(data_key(self._rel, nonce), data, f"storing {self._rel}")
        self._publish(digest, nonce)

    def _commit_parts(self, digest: bytes, record: UploadRecord) -> None:
        key = data_key(self._rel, record.nonce)
        what = f"committing {self._rel}"
        parts = self._store.parts(key, record.upload_id, what)
        lost = [i for i in self._held if parts.get((i + 1, self._etags[i])) != self._length(i)]
        if lost:
            for index in lost:
                del self._held[index], self._etags[index]
            raise IntegrityError(f"the store lost {len(lost)} chunks of {self._rel}; resend them")
        self._lease.keep()
        order = [(i + 1, self._etags[i]) for i in range(self.count)]
        try:
            self._store.complete_upload(key, record.upload_id, order, what)
        except NotFound:
            # Assembled already (this commit's reply was lost, and it is tried again)?
            if self._store.head(key, what) is None:
                raise IntegrityError(
                    f"the store lost the upload of {self._rel}; resend it"
                ) from None
        try:
            if self._hashed != [self._held[i] for i in range(self._frontier)]:
                self._hasher, self._frontier = FileHasher(), 0  # other bytes came: read it all
            whole = self._read_back(key) if self._frontier < self.count else self._hasher.digest()
            if whole != digest:
                raise IntegrityError(f"file digest mismatch for {self._rel}; resend it")
        except IntegrityError:
            self._store.delete([key], what)
            self._drop_record(record)
            self._held.clear()
            self._etags.clear()
            raise
        crash_point("commit-checked")
        self._publish(digest, record.nonce)
        crash_point("published")
        self._drop_record(record)

    def _read_back(self, key: str) -> bytes:
        """The file digest, reading from the assembled object the chunks not hashed on arrival
        (each checked against its digest on the way)."""
        hasher = self._hasher
        for index in range(self._frontier, self.count):
            data = self._store.get_range(
                key, index * self.chunk_size, self._length(index), f"checking {self._rel}"
            )
            if len(data) != self._length(index) or chunk_digest(data) != self._held[index]:
                raise IntegrityError(f"chunk {index} of {self._rel} is corrupt in the store")
            hasher.update(data)
        self._frontier = self.count
        return hasher.digest()

    def _publish(self, digest: bytes, nonce: str) -> None:
        """Write the file's record: the file appears, whole, at its path. The version it
        replaces is retired first (garbage collection counts its grace from then)."""
        digests = b"".join(self._held[i] for i in range(self.count))
        mtime = self._mtime_ns if self._mtime_ns is not None else time.time_ns()
        record = Record(
            "file",
            self._mode & 0o7777,
            mtime,
            self.size,
            self.chunk_size,
            digest,
            digests,
            nonce,
        )
        publish(self._store, self._lease, self._rel, record)

    # --- ending --------------------------------------------------------------------------------

    def close(self) -> None:
        """Keep what the store holds for a resume (by any node); give the lease up."""
        self._memory.clear()
        self._lease.release()

    def abort(self) -> None:
        """Throw the upload away (its parts and keys); give the lease up."""
        try:
            if self.record is not None and not self._done:
                self.discard(self.record)
        except BaseException:
            self.close()
            raise
        self._memory.clear()
        self._lease.drop()


def publish(store: ObjectStore, lease: Lease, rel: str, record: Record) -> None:
    """Write `record` at `rel` if the record there is still the one read here (a writer whose
    lease lapsed while it was slow may not overwrite the one that took over), retiring the
    version it replaces first.

    Raises:
        Conflict: another writer published `rel` meanwhile, or the lease was lost.
    """
    what = f"publishing {rel}"
    found = store.get(entry_key(rel), what)
    if found is not None:
        with contextlib.suppress(StorageError):
            old = Record.unpack(found[0], rel)
            if old.kind == "file" and old.nonce != record.nonce:
                store.put(retired_key(rel, old.nonce), b"", what)
    lease.keep()
    if found is None:
        store.put(entry_key(rel), record.pack(), what, if_none_match=True)
    else:
        store.put(entry_key(rel), record.pack(), what, if_match=found[1])


def check_destination(store: ObjectStore, rel: str, folder: bool = False) -> None:
    """Refuse a file (or with `folder` a folder) at `rel` where a folder (a file) is, or under
    a file or a link.

    Raises:
        Conflict: `rel` is a folder (a file), or one of its parents is a file or a link.
    """
    what = f"checking {rel}"
    if not folder and (
        store.head(marker_key(rel), what) is not None or holds_anything(store, rel, what)
    ):
        raise Conflict(f"{rel} is a directory")
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1 if folder else len(parts)):
        parent = "/".join(parts[:depth])
        if store.head(entry_key(parent), what) is not None:
            raise Conflict(f"{parent} is not a directory")
