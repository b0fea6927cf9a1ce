"""LocalUpload: an upload into LocalStorage, its staged file, and the destination as a basis.

When the file already at the destination has the upload's size and chunk size (and a
manifest), its chunks count as held (rsync's basis file): the client skips the ones it shares,
and commit copies them into the staged file, each checked against the manifest again. Nothing
is taken on the manifest's word: a commit that keeps the file as it is (an unchanged file sent
again) first reads it whole. When a chunk there no longer matches, commit stages every chunk
that still does, marks the manifest damaged (the file stops counting as held) and fails with
IntegrityError; the client's next STATUS then lacks exactly the damaged chunks.

What an upload touches besides its staged file (the tree it publishes into, the manifests, the
staging area) it reaches through one `Publisher`, which LocalStorage makes and shares. A group
commit (local_batch.py) takes the checked upload as a `Publication` and publishes many at once.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fluxio.crashpoints import crash_point
from fluxio.oserrors import storage_errors
from fluxio.staging import ChunkData, StagedFile
from fluxproto.errors import Conflict, FluxError, IntegrityError, NotFound

from .base import CorruptBasis, HeldWithBase, copy_checked
from .local_download import LocalDownload, give_back, open_local_download
from .local_small import SmallFile
from .local_staging import StagingArea
from .local_tree import LocalTree
from .manifests import Manifest, ManifestStore

_COPY_BATCH = 8  # chunks copied from the destination per durable write

__all__ = ["LocalUpload", "Publication", "Publisher"]


@dataclass(frozen=True)
class Publication:
    """A checked upload, ready to be put at its path: what a group commit needs of it."""

    rel: str
    staged: StagedFile | SmallFile
    digest: bytes
    mode: int
    mtime_ns: int | None


class LocalUpload:
    """An upload into LocalStorage: a StagedFile (or, for a small file opened for a group
    commit, a SmallFile in memory until a durable write stages it) plus where and how to
    publish it, and the file now at the destination (`base`) when its chunks can stand in for
    missing ones."""

    #: One batch at a time: each is one sync of the staged file (`base.Upload`).
    parallel = 1

    def __init__(
        self,
        publisher: Publisher,
        rel: str,
        staged: StagedFile | SmallFile,
        mode: int,
        base: Manifest | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        self._publisher, self._rel, self._staged, self._mode = publisher, rel, staged, mode
        self._base, self._mtime_ns = base, mtime_ns

    @property
    def held(self) -> Mapping[int, bytes]:
        """Chunk index -> digest of every chunk the server can vouch for: verified durable
        staged chunks, and (with a base) the destination's chunks where none is staged."""
        if self._base is None:
            return self._staged.held
        return HeldWithBase(self._staged.held, self._base.digests, self._staged.count)

    def arrived(self, index: int, digest: bytes, data: bytes | bytearray | memoryview) -> None:
        """Nothing to do (`base.Upload.arrived`): the staged file hashes what it writes."""

    def write_chunks(self, batch: Sequence[ChunkData], durable: bool = True) -> None:
        """See `base.Upload.write_chunks` and `StagedFile.write_chunks`. A durable write to an
        upload held in memory stages it first (with what it held)."""
        if durable and isinstance(self._staged, SmallFile):
            self._staged = self._publisher.stage(self._rel, self._staged)
        self._staged.write_chunks(batch, durable=durable)

    def commit(self, digest: bytes) -> None:
        """Check the file digest, then publish the file and its manifest atomically.

        Raises: as `prepare`, and StorageError, NoSpace, Conflict, PermissionDenied from
        publishing (`Publisher.publish`).
        """
        ready = self.prepare(digest)
        if ready is not None:
            crash_point("commit-checked")
            self._publisher.publish(ready)
            crash_point("published")

    def prepare(self, digest: bytes) -> Publication | None:
        """The checks of `commit`: the publication to make, or None when the destination
        already is this file (a resend, a lost reply) and was kept, its mode and mtime set.

        Raises:
            IntegrityError: chunks missing, or the digest differs; then every held chunk is
                read back and the corrupt ones dropped, the rest stay staged. Or a chunk taken
                from the destination no longer matches; then the ones that do are staged and
                the destination no longer counts as held.
        """
        staged = self._staged
        if self._base is not None and not staged.complete:
            if not staged.held and digest == self._base.digest and self._dest_holds(digest):
                self._keep_dest()  # the destination already is this file (a resend, a lost reply)
                return None
            self._fill_from_base()
        if not staged.complete:
            raise IntegrityError(f"missing {staged.count - len(staged.held)} chunks of {self._rel}")
        # The digest of the chunks as they were verified on arrival (disk is read only for
        # what came out of order): reading everything back made a 1 GiB upload 1.5x slower.
        # Rot after arrival never enters the manifest, so downloads, scrub and the next
        # upload's check of the file it would keep find it (README, Resume).
        if staged.file_digest() != digest:
            bad = staged.reverify()
            raise IntegrityError(
                f"file digest mismatch for {self._rel}; {len(bad)} stored chunks were corrupt"
            )
        return Publication(self._rel, staged, digest, self._mode, self._mtime_ns)

    def _dest_holds(self, digest: bytes) -> bool:
        """True if the file at the destination is still the base and its bytes, read now, are
        exactly the file `digest` names: only then may commit keep it without writing.

        The read costs one pass over the file on the server, where an unchanged file sent
        again costs the client one too; it is what makes COMMITTED true for a kept file.
        """
        assert self._base is not None
        base = self._base
        try:
            dl = self._publisher.read(self._rel, base.chunk_size)
        except FluxError:
            return False
        try:
            if (dl.digest, dl.chunk_size, dl.size) != (base.digest, base.chunk_size, base.size):
                return False
            bad, whole = dl.check()
        except FluxError:
            return False  # unreadable or shrunk: copying (`_fill_from_base`) says which
        finally:
            dl.close()
        return not bad and whole == digest

    def _keep_dest(self) -> None:
        """Commit without writing: set the mode and mtime the upload asked for (the manifest
        follows the mtime), drop the staging."""
        assert self._base is not None
        self._publisher.set_attributes(self._base, self._mode, self._mtime_ns)
        self.abort()

    def _fill_from_base(self) -> None:
        """Copy into the staged file the chunks the client skipped because the destination
        had them, checking each against the base manifest.

        Raises:
            IntegrityError: the destination changed since the upload opened, or some of its
                chunks no longer match the manifest (then the good ones are staged and the
                manifest is marked damaged). Either way the client resends: its next STATUS
                no longer offers those chunks.
        """
        assert self._base is not None
        base = self._base
        changed = IntegrityError(f"{self._rel} changed during the upload; resend the rest")
        try:
            dl = self._publisher.read(self._rel, base.chunk_size)
        except (NotFound, Conflict):
            raise changed from None
        try:
            if (dl.digest, dl.chunk_size) != (base.digest, base.chunk_size):
                raise changed
            missing = self._staged.missing()
            bad = copy_checked(dl, self.write_chunks, base.digests, missing, _COPY_BATCH, give_back)
        finally:
            dl.close()
        if bad:
            # Rot, or a change that kept size, mtime and inode: either way those bytes are not
            # the manifest's. Keeping the manifest (marked) matters: forgotten, the next
            # download would index the damaged bytes as good and serve them.
            self._publisher.mark_damaged(base, bad)
            raise CorruptBasis(
                f"{len(bad)} chunks of the stored {self._rel} are corrupt; resend them"
            )

    def close(self) -> None:
        """Keep the staged chunks for a resume. Idempotent; a no-op after commit."""
        self._staged.close()

    def abort(self) -> None:
        """Throw the staged chunks away. A no-op once closed or committed."""
        if not self._staged.closed:
            self._staged.discard()
            self._publisher.unstage(self._rel)


class Publisher:
    """Everything LocalUploads of one root do outside their staged file: publish it into the
    tree with its manifest, read or keep the file at the destination, mark that file's
    manifest damaged, and remove the staging folder.

    Args:
        tree: the served tree. manifests: its manifests. staging: its staging area.
    """

    def __init__(self, tree: LocalTree, manifests: ManifestStore, staging: StagingArea) -> None:
        self._tree, self._manifests, self._staging = tree, manifests, staging

    def stage(self, rel: str, small: SmallFile) -> StagedFile:
        """Stage an upload that was held in memory, with the chunks it held (not yet durable).

        Raises:
            Conflict: another session stages the path. NoSpace, StorageError.
        """
        staged = self._staging.open(rel, small.size, small.chunk_size)
        try:
            staged.write_chunks(small.chunks(), durable=False)
        except BaseException:
            staged.close()
            raise
        small.close()
        return staged

    def publish(self, ready: Publication) -> None:
        """Write the manifest of the complete, checked upload, then rename it to its path.

        Raises:
            Conflict: the path became a directory, or a parent is a file. PermissionDenied:
            it now leads out of the root. StorageError, NoSpace.
        """
        rel, staged = ready.rel, ready.staged
        # Resolved again: the tree may have changed since open_upload.
        self._tree.check_dest(rel)
        inner = self._tree.inner(rel)
        parent = self._tree.parent_dir(rel, inner)
        try:
            staged.seal(ready.mode, ready.mtime_ns)  # the manifest records the final mtime
            self._manifests.write(manifest_of(ready))
            crash_point("manifest-written")
            staged.sync()
            staged.move_to(inner.rpartition("/")[2], parent)
            crash_point("renamed")
            try:
                with storage_errors(f"publishing {rel}"):
                    os.fsync(parent)
            finally:
                staged.finish()
        finally:
            os.close(parent)
        self._staging.remove(rel)

    def read(self, rel: str, chunk_size_hint: int) -> LocalDownload:
        """The file now at `rel`, opened for reading; see `open_local_download`."""
        return open_local_download(self._tree, self._manifests, rel, chunk_size_hint)

    def set_attributes(self, base: Manifest, mode: int, mtime_ns: int | None) -> None:
        """Give the file `base` describes the permission bits of `mode` and the mtime
        `mtime_ns` (if given), only where they differ; a new mtime is synced, then written
        into the manifest, which would otherwise no longer match the file. A crash between
        the two leaves a manifest that does not match: the file is indexed again, no harm."""
        rel = base.path
        with storage_errors(f"setting the mode and mtime of {rel}"):
            fd = self._tree.open_fd(self._tree.inner(rel), os.O_RDONLY)
            try:
                st = os.fstat(fd)
                if stat.S_IMODE(st.st_mode) != mode & 0o777:
                    os.fchmod(fd, mode & 0o777)
                if mtime_ns is None or st.st_mtime_ns == mtime_ns:
                    return
                os.utime(fd, ns=(st.st_atime_ns, mtime_ns))
                os.fsync(fd)
                after = os.fstat(fd)
            finally:
                os.close(fd)
        if (after.st_ino, after.st_size) == (base.ino, base.size):
            self._manifests.write(dataclasses.replace(base, mtime_ns=after.st_mtime_ns))

    def mark_damaged(self, manifest: Manifest, bad: list[int]) -> None:
        """See `ManifestStore.mark_damaged`."""
        self._manifests.mark_damaged(manifest, bad)

    def unstage(self, rel: str) -> None:
        """Remove the staging folder of `rel` once its staged file is gone."""
        self._staging.remove(rel)


def manifest_of(ready: Publication) -> Manifest:
    """The manifest of a sealed publication: its digests, and the inode and mtime of its data
    file, which survive the rename."""
    staged = ready.staged
    st = staged.fstat()
    digests = b"".join(staged.held[i] for i in range(staged.count))
    size, cs = staged.size, staged.chunk_size
    return Manifest(ready.rel, size, cs, ready.digest, digests, st.st_mtime_ns, st.st_ino)
