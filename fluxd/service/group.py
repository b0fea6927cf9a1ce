"""Group commit in the service: commits of grouped uploads that arrive while another group is
being committed wait and go together, behind one durability barrier (`Storage.commit_many`).

No timer delays anything: a commit arriving when none runs starts a group of its own at once,
and groups grow by themselves under load (the classic group commit of databases). Each upload
keeps its own request, claim and access record; only the storage call is shared.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from ..storage.base import Storage, Upload
from . import work
from .caller import Presence

#: Uploads committed by one `commit_many` call at most.
GROUP_MOST = 1000

__all__ = ["GROUP_MOST", "CommitGroup"]


class CommitGroup:
    """The groups of one daemon's storage.

    Args:
        storage: where uploads are committed. pool: the daemon's thread pool.
        most: uploads per group at most.
    """

    def __init__(self, storage: Storage, pool: Executor, most: int = GROUP_MOST) -> None:
        self._storage, self._pool, self._most = storage, pool, most
        self._waiting: list[tuple[Upload, bytes, asyncio.Future[None]]] = []
        self._runner: asyncio.Task[None] | None = None
        #: Groups committed so far, and the uploads in them (for tests and logs).
        self.groups = self.uploads = 0

    async def commit(self, upload: Upload, digest: bytes, presence: Presence) -> None:
        """Commit `upload` with the next group; return once it is published.

        The connection hears a keepalive every KEEPALIVE seconds meanwhile, as for any long
        storage call (see `work.busy`). Cancelling this does not take the upload out of a group
        already running (the caller learns whether it committed by awaiting it again).

        Raises:
            The error `Upload.commit` would have raised for this upload.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((upload, digest, done))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())
        async with work.pinging(presence):
            await asyncio.shield(done)  # cancelled, the upload stays in its group

    async def _run(self) -> None:
        """Commit what waits, a group at a time, until nothing does."""
        while self._waiting:
            group, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
            items = [(upload, digest) for upload, digest, _ in group]
            results: list[Exception | None]
            try:
                results = list(await work.blocking(self._pool, self._storage.commit_many, items))
            except asyncio.CancelledError:  # the daemon is stopping: nobody waits any longer
                for _, _, done in group + self._waiting:
                    done.cancel()
                self._waiting = []
                raise
            except Exception as exc:  # noqa: BLE001 - a storage bug: each waiter gets it
                results = [exc] * len(group)
            self.groups += 1
            self.uploads += len(group)
            for (_, _, done), result in zip(group, results, strict=True):
                if done.done():
                    continue
                if result is None:
                    done.set_result(None)
                else:
                    done.set_exception(result)
