"""Group commit for a local root: many checked uploads published behind one durability barrier
instead of a sync of their own per file, per folder and per manifest.

A small file costs four syncs when published alone (its data, its folder, its manifest and the
manifests' folder; more while it was staged durably). For a tree of small files that is the
whole cost (PLATFORM.md: ~1,100 files/s one by one on ext4). A group:

1. checks each upload (`LocalUpload.prepare`), seals it (mode, mtime) and gives it its
   manifest, without syncing anything: a file held in memory (`SmallFile`) carries it as an
   extended attribute, others get a manifest file staged;
2. makes every data file durable in one step: one `syncfs` of the root's filesystem, or an
   fsync of each data file, from several threads at once (`barrier`);
3. renames each manifest and each file into place (removing the manifest file of a path
   whose new file carries its own);
4. syncs each distinct destination folder once, and the manifests' folder once;
5. drops the journals and staging folders without syncing (what a crash leaves of them offers
   nothing on resume and is collected).

A crash anywhere leaves every final path absent, old or new and whole: a file is renamed only
after the barrier made it durable, and a rename is atomic. Manifests are caches checked against
the file on every load (size, mtime, inode), so one that did not reach the disk is only absent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fluxio.crashpoints import crash_point
from fluxio.oserrors import storage_errors
from fluxproto.errors import FluxError

from .local_small import SmallFile
from .local_staging import StagingArea
from .local_tree import LocalTree
from .local_upload import LocalUpload, Publication, manifest_of
from .manifests import Manifest, ManifestStore

#: How a group makes its files durable: "fsync" each data file, or "syncfs" the filesystem.
BARRIERS = ("fsync", "syncfs")

__all__ = ["BARRIERS", "GroupCommit"]


@dataclass
class _Item:
    """One upload of a group on its way: where its result goes and what is staged for it."""

    index: int
    ready: Publication
    manifest: Manifest
    staged_manifest: Path | None
    parent: int = -1  # the destination folder, once open (shared; closed by the group)
    manifest_changed: bool = False  # a manifest file was placed or removed for it


class GroupCommit:
    """Publishes groups of uploads of one root.

    Args:
        tree, manifests, staging: the root's parts, as LocalStorage holds them.
        barrier: one of BARRIERS. "syncfs" is one call whatever the group's size, but it
            waits for every dirty page of the filesystem, other work's too; "fsync" syncs
            exactly the group's files and reports an error against the file that had it.
    """

    def __init__(
        self,
        tree: LocalTree,
        manifests: ManifestStore,
        staging: StagingArea,
        barrier: str = "fsync",
    ) -> None:
        if barrier not in BARRIERS:
            raise ValueError(f"barrier must be one of {BARRIERS}, not {barrier!r}")
        self._tree, self._manifests, self._staging = tree, manifests, staging
        self.barrier = barrier

    def commit(self, items: Sequence[tuple[LocalUpload, bytes]]) -> list[FluxError | None]:
        """Commit each (upload, whole-file digest) as `Upload.commit` would, together.

        Returns one result per item, in order: None when it is published (or the destination
        already was the file), else the error its own commit would have raised. One item's
        failure does not stop the others; a failed barrier fails every item it covered.
        """
        results: list[FluxError | None] = [None] * len(items)
        group = self._prepare(items, results)
        parents: dict[str, int] = {}
        try:
            if group:
                crash_point("batch-written")
                self._sync(group, results)
                crash_point("batch-synced")
                moved = self._move(self._alive(group, results), parents, results)
                changed = any(item.manifest_changed for item in group)
                self._sync_folders(moved, parents, results, changed)
                self._finish(moved)
        finally:
            for item in group:
                if item.staged_manifest is not None:
                    self._manifests.discard(item.staged_manifest)
            for fd in parents.values():
                os.close(fd)
        return results

    def _prepare(
        self, items: Sequence[tuple[LocalUpload, bytes]], results: list[FluxError | None]
    ) -> list[_Item]:
        """Check, seal and stage the manifest of each upload; nothing is synced."""
        group = []
        for index, (upload, digest) in enumerate(items):
            try:
                ready = upload.prepare(digest)
                if ready is None:
                    continue  # the destination is this file already
                # Not checked again here (open_upload did): a folder that appeared at the path
                # since fails the rename, a file that became a parent fails `parent_dir`.
                ready.staged.seal(ready.mode, ready.mtime_ns)
                manifest = manifest_of(ready)
                staged = None
                if not self._attach(ready.staged, manifest):
                    staged = self._manifests.stage(manifest, sync=False)
            except FluxError as exc:
                results[index] = exc
                continue
            group.append(_Item(index, ready, manifest, staged))
        return group

    def _attach(self, staged: object, manifest: Manifest) -> bool:
        """Give a file held in memory its manifest as an attribute of its own (see
        `ManifestStore.attach`): synced by the barrier with its data, no file to create."""
        return isinstance(staged, SmallFile) and self._manifests.attach(staged.fileno(), manifest)

    def _sync(self, group: list[_Item], results: list[FluxError | None]) -> None:
        """The one barrier: every data file of the group durable (and, with syncfs, the
        staged manifests too)."""
        if self.barrier == "syncfs":
            try:
                _syncfs(self._tree.root)
            except FluxError as exc:
                for item in group:
                    results[item.index] = exc
            return
        syncs = _sync_pool().map(_sync_one, group) if len(group) > 1 else map(_sync_one, group)
        for item, failed in zip(group, syncs, strict=True):
            if failed is not None:
                results[item.index] = failed

    @staticmethod
    def _alive(group: list[_Item], results: list[FluxError | None]) -> list[_Item]:
        return [item for item in group if results[item.index] is None]

    def _move(
        self, group: list[_Item], parents: dict[str, int], results: list[FluxError | None]
    ) -> list[_Item]:
        """Rename each manifest, then each file, into place; returns the items moved."""
        moved = []
        for item in group:
            rel = item.ready.rel
            try:
                inner = self._tree.inner(rel)  # again: the tree may have changed meanwhile
                folder, _, name = inner.rpartition("/")
                if folder not in parents:
                    parents[folder] = self._tree.parent_dir(rel, inner)
                item.parent = parents[folder]
                if item.staged_manifest is not None:
                    self._manifests.place(item.manifest, item.staged_manifest)
                    item.staged_manifest = None
                    item.manifest_changed = True
                else:  # an older file's would come first
                    item.manifest_changed = self._manifests.forget(rel)
                item.ready.staged.move_to(name, item.parent)
            except FluxError as exc:
                results[item.index] = exc
                continue
            moved.append(item)
            crash_point("batch-renamed")
        return moved

    def _sync_folders(
        self,
        moved: list[_Item],
        parents: dict[str, int],
        results: list[FluxError | None],
        manifests_changed: bool,
    ) -> None:
        """One fsync per destination folder (at once, as the files), one for the manifests'
        folder if a manifest file was placed or removed."""
        fds = list(set(parents.values()))
        syncs = _sync_pool().map(_fsync_folder, fds) if len(fds) > 1 else map(_fsync_folder, fds)
        failed = {fd: exc for fd, exc in zip(fds, syncs, strict=True) if exc is not None}
        if manifests_changed:
            with contextlib.suppress(FluxError):  # caches: a lost one is re-indexed
                self._manifests.sync()
        for item in moved:
            if item.parent in failed:
                results[item.index] = failed[item.parent]

    def _finish(self, moved: list[_Item]) -> None:
        """Drop the journals and staging folders of the published files, without a sync."""
        for item in moved:
            with contextlib.suppress(FluxError):  # published anyway; a leftover is collected
                item.ready.staged.finish(sync=False)
            self._staging.remove(item.ready.rel)


def _fsync_folder(fd: int) -> FluxError | None:
    try:
        with storage_errors("syncing a folder of the group"):
            os.fsync(fd)
    except FluxError as exc:
        return exc
    return None


def _sync_one(item: _Item) -> FluxError | None:
    try:
        item.ready.staged.sync()
    except FluxError as exc:
        return exc
    return None


#: Threads fsyncing one group's files at once. ext4 (jbd2) folds fsyncs that wait together
#: into one journal commit: 30 files of 4 KiB synced from 16 threads took ~4x less time than
#: one after the other here, and each error is still reported against its own file.
SYNC_THREADS = 16
_SYNC_POOL: list[ThreadPoolExecutor] = []


def _sync_pool() -> ThreadPoolExecutor:
    if not _SYNC_POOL:  # one per process, made on first use (groups run one at a time)
        _SYNC_POOL.append(ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fluxd-sync"))
    return _SYNC_POOL[0]


def _syncfs(root: Path) -> None:
    """syncfs(2) of the filesystem holding `root` (sync(2) where there is none).

    Raises:
        StorageError (or a subclass): the filesystem reported a write error.
    """
    with storage_errors("syncing the files of the group"):
        if _SYNCFS is None:
            os.sync()
            return
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)


def _libc_syncfs() -> Callable[[int], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        syncfs: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
        return syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()
