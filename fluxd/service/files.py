"""The file service: every request a transport can make, authorised, limited and recorded here.

A transport (the flux session today; an HTTP endpoint, lanes later) authenticates a connection
into a `Caller`, then calls these operations. Each is an async context manager: authorisation,
limits and storage happen on entering it, the transport delivers the result in the body, and
on leaving one access record is written with the outcome of both (so a reply that cannot be
sent is a failed request, as before). Blocking storage calls run on the daemon's thread pool.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager

from fluxproto import (
    Conflict,
    Entry,
    FluxError,
    IntegrityError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Unavailable,
    chunk_count,
)
from fluxproto.frames import MAX_LIST_ENTRIES

from .. import log
from ..context import Shared
from ..storage.base import CorruptBasis, EntryPage
from ..storage.paths import normalize, require_file_path
from .caller import Caller, Presence
from .group import CommitGroup
from .quota import Quota
from .record import Record, recorded, refusal
from .registry import TransferRegistry
from .transfers import AttachedUpload, DownloadHandle, UploadHandle
from .work import blocking, busy, pinging

#: One page of a recursive listing: entries, and whether it is the last page.
TreePage = tuple[list[Entry], bool]

__all__ = ["FileService"]


class FileService:
    """One daemon's file operations, shared by every connection and transport.

    Args:
        shared: the daemon's config, storage, limits, upload claims, access log and pool.
    """

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.limits, self.storage, self.pool = shared.config.limits, shared.storage, shared.pool
        #: Open transfers by tid, for requests that attach (another connection's, say).
        self.uploads: TransferRegistry[UploadHandle] = TransferRegistry(linger=True)
        self.downloads: TransferRegistry[DownloadHandle] = TransferRegistry(linger=True)
        #: Where grouped uploads are committed together (see `upload`).
        self.group = CommitGroup(self.storage, self.pool)
        #: What each subject stores and announced, against `limits.quota`.
        self.quota = Quota(self.limits.quota, shared.admission, self.storage, self.pool)

    def refused(
        self, peer: str, transport: str, caller: Caller | None, exc: FluxError, duration: float
    ) -> None:
        """Record a connection refused before its first request (bad token, too many
        connections of its subject)."""
        grant = caller.grant if caller else None
        refusal(self.shared.access, peer, transport, grant, exc, duration)

    @asynccontextmanager
    async def upload(
        self,
        caller: Caller,
        path: str,
        size: int,
        chunk_size: int,
        mode: int,
        mtime_ns: int | None = None,
        grouped: bool = False,
        attach: bytes | None = None,
    ) -> AsyncIterator[UploadHandle | AttachedUpload]:
        """Open an upload of `size` bytes to `path`, resuming what is staged for it.

        Checks the server's chunk and file size limits, the path, scope `write`, the caller's
        upload slots and quota, then claims the path (one writer at a time; see fluxd.claims)
        and opens it, registered under a new `tid`. On leaving, once every request that
        attached to it is done, the upload is closed (what is staged stays for a resume) and
        the claim and slot are given back. The file gets `mtime_ns` (None: the time of
        writing). `grouped` (a small file whose chunks come with its COMMIT): its chunks may
        be written with durable=False and its commit joins a group (`CommitGroup`).

        With `attach`, the request joins the caller's open upload of that tid instead (same
        path and geometry) and gets an AttachedUpload: `held` covers what it holds from every
        request, and the COMMIT of any of them commits it.

        Raises:
            LimitExceeded: a size limit, the upload slots or the quota.
            PermissionDenied: the path is refused, or no scope allows writing it.
            Conflict: another live writer holds the path; an attach with another geometry.
            NotFound: no open upload of the caller's has that tid.
            StorageError (and subclasses): the storage refused to open it.
        """
        if attach is not None:
            async with self._join_upload(caller, path, size, chunk_size, attach) as joined:
                yield joined
            return
        async with recorded(self.shared.access, caller, "upload", path) as record:
            record.size = size
            lim = self.limits
            if chunk_size > lim.max_chunk:
                raise LimitExceeded(f"chunk size {chunk_size} > server limit {lim.max_chunk}")
            if size > lim.max_file_size:
                raise LimitExceeded(f"file of {size} bytes > server limit {lim.max_file_size}")
            self._check_rule(size, chunk_size)
            require_file_path(path)
            key = caller.grant.check(path, "write")
            slots = [self.shared.admission.upload(caller.account)]
            try:
                # Quota checks of one subject run in turn: its client hears keepalives meanwhile.
                async with pinging(caller.presence):
                    slots.append(reserved := await self.quota.reserve(caller, key, size))
                up = UploadHandle(key, size, caller.presence, record, self.pool, self.group)
                holder = up.holder(caller.account, lambda gone: _supersede(gone, caller))
                async with self.shared.claims.claim(key, holder, self.shared.config.shutdown_grace):
                    await up.open(self.storage, chunk_size, mode, mtime_ns, grouped, caller.account)
                    try:
                        async with self.uploads.opened(caller.account, up) as up.tid:
                            up.on_committed = functools.partial(self.uploads.done, up.tid)
                            up.on_commit = functools.partial(
                                self.quota.committing, caller.account, reserved
                            )
                            up.announce = functools.partial(self._uploaded, caller, up)
                            yield up
                    except CorruptBasis as exc:
                        await self._corrupt(caller, key, exc, "commit")
                        raise
                    finally:
                        up.close()
            finally:
                for slot in slots:
                    slot.release()

    async def _uploaded(self, caller: Caller, up: UploadHandle, digest: bytes) -> None:
        """The upload-finished event, durable before the client hears COMMITTED."""
        fields = {"path": f"/{up.key}", "size": up.size, "digest": f"xxh128:{digest.hex()}"}
        await self.shared.events.emit("upload-finished", **fields, **_who(caller))

    def _check_rule(self, size: int, chunk_size: int) -> None:
        """The storage's rule for an upload's geometry, as WELCOME announced it (PROTOCOL.md
        15.46): chunks of at least `min_chunk` unless the file is one chunk, at most
        `max_chunks` of them.

        Raises:
            LimitExceeded: naming what the storage needs.
        """
        least, most = self.storage.min_chunk, self.storage.max_chunks
        count = chunk_count(size, chunk_size)
        if count > 1 and chunk_size < least:
            raise LimitExceeded(
                f"chunk size {chunk_size} < {least}, the least the server's storage takes "
                "for a file of more than one chunk"
            )
        if count > most:
            raise LimitExceeded(
                f"{count} chunks of {chunk_size} bytes > {most}, the most the server's storage "
                f"takes for one file: use chunks of at least {-(-size // most)} bytes"
            )

    @asynccontextmanager
    async def _join_upload(
        self, caller: Caller, path: str, size: int, chunk_size: int, tid: bytes
    ) -> AsyncIterator[AttachedUpload]:
        async with recorded(self.shared.access, caller, "upload", path) as record:
            require_file_path(path)
            key = caller.grant.check(path, "write")
            async with self.uploads.attached(caller.account, tid) as up:
                if up.committed:
                    raise NotFound(f"transfer {tid.hex()} is finished: /{up.key} is committed")
                if (up.key, up.size, up.chunk_size) != (key, size, chunk_size):
                    raise Conflict(
                        f"transfer {tid.hex()} uploads /{up.key} ({up.size} bytes in chunks of "
                        f"{up.chunk_size}), not /{key} ({size} in {chunk_size})"
                    )
                with up.driven_by(caller.presence, record):
                    yield AttachedUpload(up, record)

    @asynccontextmanager
    async def download(
        self, caller: Caller, path: str, chunk_size_hint: int, attach: bytes | None = None
    ) -> AsyncIterator[DownloadHandle]:
        """Open the file at `path` for reading, pinned to its current version (scope `read`),
        registered under a new `tid`; with `attach`, join the caller's open download of that
        tid instead (same path): it serves the version the opener pinned, and its requests may
        share its chunks (`DownloadHandle.shared`). The download stays joinable while a request
        of it runs, the opener's or one that attached.

        `chunk_size_hint` is the geometry used if the file has no manifest yet (it is then
        hashed whole, with the caller's keepalive running). The handle's reads are verified.
        On leaving, once every request that attached is done, the file is closed.

        Raises:
            PermissionDenied: the path is refused, or no scope allows reading it.
            NotFound, Conflict (a directory), StorageError: storage could not open it.
            NotFound: no open download of the caller's has that tid.
        """
        async with recorded(self.shared.access, caller, "download", path) as record:
            key = caller.grant.check(path, "read")
            if attach is not None:
                async with self.downloads.attached(caller.account, attach) as opener:
                    if opener.key != key:
                        raise Conflict(f"transfer {attach.hex()} reads /{opener.key}, not /{key}")
                    handle = opener.attached(record)
                    try:
                        yield handle
                    finally:
                        await handle.stop()
                return
            dl = await busy(
                self.pool, caller.presence, self.storage.open_download, key, chunk_size_hint
            )
            record.size = dl.size
            lanes = self.limits.shares_per_transfer
            handle = DownloadHandle(dl, record, self.pool, key=key, lanes=lanes)
            try:
                async with self.downloads.opened(caller.account, handle) as handle.tid:
                    yield handle
            except IntegrityError as exc:
                await self._corrupt(caller, key, exc, "download")
                raise
            finally:
                await handle.close()
            v = handle.version
            fields = {"path": f"/{key}", "size": v.size, "digest": f"xxh128:{v.digest.hex()}"}
            fields |= {"bytes": record.bytes}
            # Only one that moved bytes (or of an empty file): a HEAD, a 304, `verify` or a
            # resume's planning moves none, and must not flood the outbox.
            if record.bytes or not v.size:
                await self.shared.events.emit("download-finished", **fields, **_who(caller))

    async def _corrupt(self, caller: Caller, key: str, exc: IntegrityError, by: str) -> None:
        """The corruption event of a download that refused to serve a damaged chunk (`by`
        download) or a commit that found its basis damaged (`by` commit)."""
        fields = {"path": f"/{key}", "detail": exc.message, "found_by": by}
        await self.shared.events.emit("corruption", **fields, **_who(caller))

    @asynccontextmanager
    async def list(
        self, caller: Caller, path: str, cursor: str | None, limit: int, digests: bool = False
    ) -> AsyncIterator[EntryPage]:
        """Up to `limit` entries of the folder at `path` after `cursor` (scope `list`), files
        with their digests only with `digests` (recorded so when asked).

        Raises:
            PermissionDenied, NotFound, StorageError.
        """
        async with recorded(self.shared.access, caller, "list", path, **_asked(digests)):
            key = caller.grant.check(path, "list")
            try:
                page = await blocking(self.pool, self.storage.list, key, cursor, limit, digests)
            except NotFound:
                if not _is_own_root(caller, key):
                    raise
                page = [], None
            yield page

    @asynccontextmanager
    async def stat(self, caller: Caller, path: str) -> AsyncIterator[Entry]:
        """The file or folder at `path` (scope `list` or `read`).

        Raises:
            PermissionDenied, NotFound, StorageError.
        """
        async with recorded(self.shared.access, caller, "stat", path):
            key = caller.grant.check(path, "list", "read")
            try:
                entry = await blocking(self.pool, self.storage.stat, key)
            except NotFound:
                if not _is_own_root(caller, key):
                    raise
                entry = Entry("/", "dir", 0, 0, 0o755, None)
            yield entry

    async def commit_many(
        self, items: Sequence[tuple[UploadHandle, bytes]]
    ) -> builtins.list[FluxError | None]:
        """Commit several open uploads (each with its whole-file digest) at once: grouped ones
        share one durability barrier. Each stays its own request: its error is returned here
        for the caller to raise in that upload's `upload` block, so its access record says so.
        """
        done = await asyncio.gather(*(up.commit(d) for up, d in items), return_exceptions=True)
        for result in done:
            if result is not None and not isinstance(result, FluxError):
                raise result  # cancelled, or a bug: not an outcome of one request
        return [result if isinstance(result, FluxError) else None for result in done]

    @asynccontextmanager
    async def walk(
        self, caller: Caller, path: str, page: int = MAX_LIST_ENTRIES, digests: bool = False
    ) -> AsyncIterator[AsyncIterator[TreePage]]:
        """Everything under the folder at `path`, recursively (scope `list`), as pages of up to
        `page` entries read as the transport takes them (see `Storage.walk`), files with their
        digests only with `digests`; the last page says so. Recorded as op `list` with
        `recursive`, the `count` of entries, and `digests` when asked.

        Raises (entering, or from the pages):
            PermissionDenied, NotFound, StorageError, LimitExceeded (limits.tree_entries).
        """
        fields = {"recursive": True, **_asked(digests)}
        async with recorded(self.shared.access, caller, "list", path, **fields) as record:
            key = caller.grant.check(path, "list")
            entries = self.storage.walk(key, self.limits.tree_entries, digests)
            pages = self._pages(caller, key, entries, max(1, page), record)
            try:
                yield pages
            finally:
                await pages.aclose()
                close = getattr(entries, "close", None)
                if close is not None:  # a generator: let go of what it holds open
                    await blocking(self.pool, close)

    async def _pages(
        self, caller: Caller, key: str, entries: Iterator[Entry], size: int, record: Record
    ) -> AsyncGenerator[TreePage, None]:
        record.fields["count"] = 0
        ahead: list[Entry] = []  # read one entry ahead, so the last page says it is the last
        while True:
            try:
                more = await busy(self.pool, caller.presence, _take, entries, size + 1 - len(ahead))
            except NotFound:
                if not _is_own_root(caller, key):
                    raise
                more = []  # a confined subject's root before its first upload: empty
            batch, ahead = (ahead + more)[:size], (ahead + more)[size:]
            record.fields["count"] += len(batch)
            yield batch, not ahead
            if not ahead:
                return

    @asynccontextmanager
    async def mkdir(
        self,
        caller: Caller,
        path: str,
        mode: int | None = None,
        mtime_ns: int | None = None,
        parents: bool = True,
    ) -> AsyncIterator[Entry]:
        """Make the folder at `path`, or set its mode and mtime (scope `write`); see
        `Storage.mkdir`.

        Raises:
            PermissionDenied, Conflict (a file in the way), NotFound (no parent and not
            `parents`), StorageError.
        """
        async with recorded(self.shared.access, caller, "mkdir", path):
            key = caller.grant.check(path, "write")
            args = (key, mode, mtime_ns, parents)
            entry = await blocking(self.pool, self.storage.mkdir, *args)
            yield _as_named(entry, path)

    @asynccontextmanager
    async def symlink(
        self, caller: Caller, path: str, target: str, mtime_ns: int | None = None
    ) -> AsyncIterator[Entry]:
        """Make or replace the symlink at `path` (scope `write`), with its own mtime
        `mtime_ns` (None: now). A confined subject's target may not lead out of its own root
        either; see `Storage.symlink`.

        Raises:
            PermissionDenied (the target or path), Conflict (a file or folder there),
            StorageError.
        """
        async with recorded(self.shared.access, caller, "symlink", path):
            key = caller.grant.check(path, "write")
            args = (key, target, caller.grant.root, mtime_ns)
            yield await blocking(self.pool, self.storage.symlink, *args)

    @asynccontextmanager
    async def delete(
        self, caller: Caller, path: str, recursive: bool = False
    ) -> AsyncIterator[int]:
        """Delete the file or link at `path`, or with `recursive` a folder and all it holds
        (scope `delete` on it); the body confirms it with the count of entries removed.
        Recorded with `recursive` and `count` when recursive.

        Raises:
            PermissionDenied (also: the root, or a confined subject's own root, recursively),
            NotFound, Conflict (a folder without `recursive`), LimitExceeded, StorageError.
        """
        fields = {"recursive": True} if recursive else {}
        async with recorded(self.shared.access, caller, "delete", path, **fields) as record:
            key = caller.grant.check(path, "delete")
            if recursive and (not key or _is_own_root(caller, key)):
                raise PermissionDenied(f"refusing to delete {'/' if not key else 'your root /'}")
            if recursive:
                args = (key, True, self.limits.tree_entries)
                count = await busy(self.pool, caller.presence, self.storage.delete, *args)
                record.fields["count"] = count
            else:
                count = await blocking(self.pool, self.storage.delete, key)
            what = {"path": f"/{key}", "count": count, "recursive": recursive}
            await self.shared.events.emit("deleted", **what, **_who(caller))
            yield count


def _take(entries: Iterator[Entry], n: int) -> list[Entry]:
    return list(itertools.islice(entries, n))


def _asked(digests: bool) -> dict[str, bool]:
    """The access record's `digests` field: there only for a listing that asked for them."""
    return {"digests": True} if digests else {}


def _as_named(entry: Entry, path: str) -> Entry:
    """`entry` as the client names it: a confined subject's root is "/", not its folder."""
    return entry if normalize(path) else dataclasses.replace(entry, name="/")


def _is_own_root(caller: Caller, key: str) -> bool:
    """True for a confined subject's own root, which exists only once it stores something
    (until then it lists as an empty folder)."""
    return bool(key) and key == caller.grant.root


def _who(caller: Caller) -> dict[str, str | None]:
    """The event fields that say who made the request."""
    grant = caller.grant
    return {"subject": grant.subject, "peer": caller.peer, "transport": caller.transport}


def _supersede(gone: Presence, caller: Caller) -> None:
    """A new connection of the same subject wants a path `gone` holds, and `gone` has been
    silent for as long as a dead connection would be: end it."""
    log.event("superseded", peer=gone.peer, subject=caller.account)
    gone.end(Unavailable("superseded by a newer connection of the same client"))
