"""S3Upkeep: the maintenance of S3Storage (`base.Maintenance`): counting the uploads in progress
at start, garbage collection of abandoned uploads and of versions no record names, and scrub.

Any node may run it, and several may at once: everything it removes is idle for `grace` by the
store's timestamps, and an upload whose lease is live is never touched.
"""

from __future__ import annotations

from collections import defaultdict

from fluxproto.digest import chunk_digest, digest_at
from fluxproto.errors import FluxError, NotFound, StorageError
from fluxproto.frames import chunk_count

from .base import Collected, Recovered, ScrubReport
from .s3_layout import (
    DATA,
    ENTRIES,
    UPLOADS,
    Record,
    UploadRecord,
    data_key,
    entry_key,
    upload_dir,
)
from .s3_lease import live
from .s3_store import ObjectStore, StoreObject
from .s3_tree import S3Tree

__all__ = ["S3Upkeep"]


class S3Upkeep:
    """Recovery, collection and scrub over one store."""

    def __init__(self, store: ObjectStore, tree: S3Tree) -> None:
        self._store, self._tree = store, tree

    def recover(self) -> Recovered:
        """Count the uploads in progress: nothing needs repair (an upload's state is its parts
        and chunk keys, each written whole), and any node may resume them."""
        found = Recovered()
        for obj in self._store.walk(UPLOADS, "counting uploads in progress"):
            if obj.key.endswith("/record"):
                found.uploads += 1
        return found

    def collect(self, grace: float, now: float) -> Collected:
        """Abort uploads idle for `grace` seconds at `now` whose lease is not live (with their
        records and chunk keys), multipart uploads no record names, and data objects that no
        record names any more (older versions, deleted files), all idle for `grace`."""
        done = Collected()
        what = "collecting garbage"
        state: dict[str, list[StoreObject]] = defaultdict(list)
        for obj in self._store.walk(UPLOADS, what):
            state[obj.key[: obj.key.index("/", len(UPLOADS)) + 1]].append(obj)
        live_ids: set[str] = set()
        for folder, objects in state.items():
            if self._collect_upload(folder, objects, grace, now):
                done.uploads += 1
            else:
                found = self._store.get(folder + "record", what)
                if found is not None:
                    live_ids.add(UploadRecord.unpack(found[0], folder).upload_id)
        for key, upload_id, started in self._store.uploads(DATA, what):
            if upload_id not in live_ids and now - started > grace:
                self._store.abort_upload(key, upload_id, what)
                done.uploads += 1
        done.bytes += self._collect_versions(grace, now)
        return done

    def _collect_upload(
        self, folder: str, objects: list[StoreObject], grace: float, now: float
    ) -> bool:
        """Remove the upload in `folder` if it is idle and unleased; True if it was."""
        what = "collecting garbage"
        if now - max(o.modified for o in objects) <= grace:
            return False
        lease = self._store.get_aged(folder + "lease", what)
        if lease is not None and live(lease):
            return False
        found = self._store.get(folder + "record", what)
        if found is not None:
            record = UploadRecord.unpack(found[0], folder)
            if upload_dir(record.path) != folder:
                raise StorageError(f"the upload record in {folder} names another path")
            key = data_key(record.path, record.nonce)
            self._store.abort_upload(key, record.upload_id, what)
        self._store.delete([o.key for o in objects], what)
        return True

    def _collect_versions(self, grace: float, now: float) -> int:
        """Delete data objects idle for `grace` that no file's record names; returns bytes."""
        what = "collecting garbage"
        freed = 0
        by_path: dict[str, list[StoreObject]] = defaultdict(list)
        for obj in self._store.walk(DATA, what):
            by_path[obj.key[len(DATA) :].rpartition("/")[0]].append(obj)
            if len(by_path) > 1000:
                freed += self._collect_paths(by_path, grace, now)
                by_path.clear()
        return freed + self._collect_paths(by_path, grace, now)

    def _collect_paths(
        self, by_path: dict[str, list[StoreObject]], grace: float, now: float
    ) -> int:
        what, freed = "collecting garbage", 0
        for rel, objects in by_path.items():
            old = [o for o in objects if now - o.modified > grace]
            if not old:
                continue
            try:
                record = self._tree.lookup(rel)
            except FluxError:
                continue  # unreadable record: keep its data
            current = data_key(rel, record.nonce) if record and record.kind == "file" else None
            dead = [o for o in old if o.key != current]
            self._store.delete([o.key for o in dead], what)
            freed += sum(o.size for o in dead)
        return freed

    def scrub(self) -> ScrubReport:
        """Read every file's current version and check each chunk against its record."""
        report = ScrubReport()
        for obj in self._store.walk(ENTRIES, "scrubbing"):
            if obj.key.endswith("/"):
                continue
            rel = obj.key[len(ENTRIES) :]
            found = self._store.get(entry_key(rel), f"scrubbing {rel}")
            if found is None:
                continue
            record = Record.unpack(found[0], rel)
            if record.kind != "file":
                continue
            report.checked += 1
            if not self._intact(rel, record):
                report.corrupt.append(rel)
            report.bytes += record.size
        return report

    def _intact(self, rel: str, record: Record) -> bool:
        key = data_key(rel, record.nonce)
        for index in range(chunk_count(record.size, record.chunk_size)):
            start = index * record.chunk_size
            length = min(record.chunk_size, record.size - start)
            try:
                data = self._store.get_range(key, start, length, f"scrubbing {rel}")
            except NotFound:
                return False
            if len(data) != length or chunk_digest(data) != digest_at(record.digests, index):
                return False
        return True
