"""S3Upkeep: the maintenance of S3Storage (`base.Maintenance`): counting the uploads in progress
at start, garbage collection of abandoned uploads and of versions no record names, and scrub.

Any node may run it, and several may at once: everything it removes is idle for `grace` by the
store's timestamps, and an upload whose lease is live is never touched.
"""

from __future__ import annotations

from collections import defaultdict

from fluxproto.digest import chunk_digest, digest_at
from fluxproto.errors import Conflict, FluxError, NotFound, StorageError, Unavailable
from fluxproto.frames import chunk_count

from .base import Collected, Recovered, ScrubReport
from .s3_layout import (
    DATA,
    ENTRIES,
    RETIRED,
    UPLOADS,
    Record,
    UploadRecord,
    data_key,
    entry_key,
    upload_dir,
)
from .s3_lease import Lease
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
        records and chunk keys), multipart uploads no record names, and versions of files
        retired (replaced or deleted) `grace` seconds ago that no record names any more."""
        done = Collected()
        what = "collecting garbage"
        state: dict[str, list[StoreObject]] = defaultdict(list)
        for obj in self._store.walk(UPLOADS, what):
            state[obj.key[: obj.key.index("/", len(UPLOADS)) + 1]].append(obj)
        live: set[str] = set()  # upload ids and nonces of uploads left alone
        for folder, objects in state.items():
            kept = self._collect_upload(folder, objects, grace, now)
            if kept is None:
                done.uploads += any(o.key.endswith("/record") for o in objects)
            else:
                live |= kept
        for key, upload_id, started in self._store.uploads(DATA, what):
            if upload_id not in live and now - started > grace:
                self._store.abort_upload(key, upload_id, what)
                done.uploads += 1
        done.bytes += self._collect_versions(grace, now, live)
        return done

    def _collect_upload(
        self, folder: str, objects: list[StoreObject], grace: float, now: float
    ) -> set[str] | None:
        """Remove the upload in `folder` if it is idle and its lease lapsed: None if it was,
        else its upload id and nonce (which the rest of the collection must leave alone: a
        commit may have assembled the data object and not yet published it)."""
        what = "collecting garbage"
        found = self._store.get(folder + "record", what)
        record = _upload_record(found[0], folder) if found else None
        kept = {record.upload_id, record.nonce} if record else set()
        if now - max(o.modified for o in objects) <= grace:
            return kept
        try:  # the lease, taken like a writer would: no node writes it while it goes
            lease = Lease.take(self._store, folder + "lease", folder, "collector", "", 60.0)
        except (Conflict, Unavailable):
            return kept
        try:
            if record is not None:
                key = data_key(record.path, record.nonce)
                self._store.abort_upload(key, record.upload_id, what)
            self._store.delete([o.key for o in objects if not o.key.endswith("/lease")], what)
        except BaseException:
            lease.release()
            raise
        lease.drop()
        return None

    def _collect_versions(self, grace: float, now: float, live: set[str]) -> int:
        """Delete the data objects no file's record names, retired `grace` seconds ago (or,
        without a retired key, written then: an upload's that never got published), except
        those of `live` uploads; returns the bytes freed."""
        what = "collecting garbage"
        retired = {o.key[len(RETIRED) :]: o.modified for o in self._store.walk(RETIRED, what)}
        freed = 0
        by_path: dict[str, list[StoreObject]] = defaultdict(list)
        for obj in self._store.walk(DATA, what):
            by_path[obj.key[len(DATA) :].rpartition("/")[0]].append(obj)
            if len(by_path) > 1000:
                freed += self._collect_paths(by_path, grace, now, (live, retired))
                by_path.clear()
        freed += self._collect_paths(by_path, grace, now, (live, retired))
        gone = [RETIRED + k for k, at in retired.items() if now - at > grace]
        self._store.delete(gone, what)  # their data is gone, or current again
        return freed

    def _collect_paths(
        self,
        by_path: dict[str, list[StoreObject]],
        grace: float,
        now: float,
        keep: tuple[set[str], dict[str, float]],
    ) -> int:
        live, retired = keep
        what, freed = "collecting garbage", 0
        for rel, objects in by_path.items():
            old = []
            for o in objects:
                nonce = o.key.rpartition("/")[2]
                since = retired.get(f"{rel}/{nonce}", o.modified)
                if nonce not in live and now - since > grace:
                    old.append(o)
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
            try:
                record = Record.unpack(found[0], rel)
            except StorageError:
                report.corrupt.append(rel)  # its digests are lost: nothing vouches for it
                continue
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


def _upload_record(raw: bytes, folder: str) -> UploadRecord | None:
    """The upload record in `folder`, or None if it is unreadable or names another path's
    folder (then the upload is garbage: nothing can resume it)."""
    try:
        record = UploadRecord.unpack(raw, folder)
    except StorageError:
        return None
    return record if upload_dir(record.path) == folder else None
