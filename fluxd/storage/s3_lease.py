"""The writer's lease on a path, arbitrated by the object store: one writer per upload across
every node sharing the store.

The lease is the object uploads/<key>/lease. Taking it is a conditional PUT that succeeds only
if there is none (If-None-Match: *); renewing it, or taking over one that expired, is a PUT
that succeeds only if the object is still the one read (If-Match: its ETag). The store answers
412 to the loser, so two nodes never both hold it. A lease is live for the seconds its body
names (its TTL, so nodes need not agree on one) after it was last written, by the store's
clock (`ObjectStore.get_aged`): a node that died frees its leases by itself. The holder checks it
before every request it makes for the upload and renews it once less than two thirds of its
TTL are left by its own clock, counted from before its renewal was sent: with the default TTL
(20 s) no request starts with less than 13 s left, as long as one may take at most (3 s to
connect, 10 s per read, no retry of boto3's own), so its writes end before another node may
take over. A shorter `lease_ttl`, or a store slower than that, loses this margin; the
publication of a file stays safe even then, since it is conditional on the record the writer
read (`s3_upload.publish`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass

import msgpack

from fluxproto.errors import Conflict, FluxError, NotFound, Unavailable

from .s3_store import ObjectStore

__all__ = ["Lease"]

#: Seconds a lease lasts after it was last written (unless the storage is given another).
TTL = 20.0
#: The holder renews once less than this share of the TTL is left.
RENEW_AT = 2 / 3
#: Whole-second clocks (HTTP dates): a lease counts as expired only this much after its TTL.
SLACK = 2.0


@dataclass(frozen=True)
class Holder:
    """What a lease's body says: the node holding it, for whom, and for how long."""

    node: str
    writer: str
    ttl: float

    def pack(self) -> bytes:
        return msgpack.packb({"node": self.node, "writer": self.writer, "ttl": self.ttl})

    @classmethod
    def unpack(cls, raw: bytes) -> Holder:
        """The holder named in `raw`; an unreadable body counts as a stranger's, for TTL."""
        try:
            v = msgpack.unpackb(raw, max_str_len=4096)
            return cls(str(v["node"]), str(v["writer"]), float(v["ttl"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return cls("", "", TTL)


def live(found: tuple[bytes, str, float]) -> bool:
    """Whether a lease read with `ObjectStore.get_aged` is still live."""
    body, _, age = found
    return age < Holder.unpack(body).ttl + SLACK


class Lease:
    """A held lease. Use `Lease.take`."""

    def __init__(
        self, store: ObjectStore, key: str, label: str, etag: str, since: float, holder: Holder
    ) -> None:
        self._store, self._key, self._label = store, key, label
        self._etag: str | None = etag
        self._since = since  # time.monotonic() before the PUT that wrote it
        self._holder = holder
        self._lock = threading.Lock()  # writes in parallel keep it at once

    @classmethod
    def take(
        cls, store: ObjectStore, key: str, label: str, node: str, writer: str, ttl: float = TTL
    ) -> Lease:
        """Take the lease at `key` for `writer` through `node`, live for `ttl` seconds after
        each renewal; or take over one that expired, or that `node` itself left behind (a
        release the store missed: the daemon lets one writer per path through at a time).

        Raises:
            Conflict: another writer holds it. Unavailable: `writer` holds it through another
            node (a connection that node has not seen end): retry once it lapses. Or the store
            failed (StorageError too).
        """
        holder = Holder(node, writer, ttl)
        body = holder.pack()
        for _ in range(3):
            since = time.monotonic()
            try:
                etag = store.put(key, body, f"taking the lease on {label}", if_none_match=True)
                return cls(store, key, label, etag, since, holder)
            except Conflict:
                pass
            found = store.get_aged(key, f"reading the lease on {label}")
            if found is None:
                continue  # released meanwhile: try again
            held = Holder.unpack(found[0])
            if live(found) and held.node != node:
                if writer and held.writer == writer:
                    left = held.ttl + SLACK - found[2]
                    raise Unavailable(
                        f"{label} is held by an earlier connection of yours through another "
                        f"node; it lapses within {left:.0f} s"
                    )
                raise Conflict(f"{label} is being written by another session")
            since = time.monotonic()
            try:
                etag = store.put(key, body, f"taking over the lease on {label}", if_match=found[1])
                return cls(store, key, label, etag, since, holder)
            except (Conflict, NotFound):
                continue  # another node took it over or released it first: look again
        raise Conflict(f"{label} is being written by another session")

    @property
    def held(self) -> bool:
        return self._etag is not None

    def keep(self) -> None:
        """Make sure the lease has at least RENEW_AT of its TTL left, renewing it if needed.

        Raises:
            Conflict: the lease was lost (it expired and another node took it over, or
            removed it since): stop writing.
        """
        with self._lock:
            self._keep()

    def _keep(self) -> None:
        if self._etag is None:
            raise Conflict(f"the lease on {self._label} was given up")
        ttl = self._holder.ttl
        if time.monotonic() - self._since < ttl * (1 - RENEW_AT):
            return
        # Renewed only if it is still the one we wrote: one that expired meanwhile (a client
        # silent for longer than the TTL) is still ours if no node took it over since.
        since = time.monotonic()
        try:
            self._etag = self._store.put(
                self._key,
                self._holder.pack(),
                f"renewing the lease on {self._label}",
                if_match=self._etag,
            )
        except (Conflict, NotFound):  # If-Match on a key that is gone: 404 or 412
            self._etag = None
            raise Conflict(f"another node took over the lease on {self._label}") from None
        self._since = since

    def release(self) -> None:
        """Give the lease up: rewrite it, if it is still ours (If-Match; a DELETE's condition
        is not honoured by every store), as one that has lapsed already, which any writer may
        take over. Idempotent; errors are left to expiry: a lease not rewritten frees itself
        after its TTL."""
        with self._lock:
            etag, self._etag = self._etag, None
        if etag is None:
            return
        lapsed = dataclasses.replace(self._holder, ttl=-SLACK).pack()
        with contextlib.suppress(FluxError):  # expiry frees it
            self._store.put(
                self._key, lapsed, f"releasing the lease on {self._label}", if_match=etag
            )

    def drop(self) -> None:
        """Give the lease up by deleting it: for an upload that is over (committed or thrown
        away), which leaves nothing under the path to resume. Idempotent."""
        with self._lock:
            etag, self._etag = self._etag, None
        if etag is not None:
            with contextlib.suppress(FluxError):
                self._store.delete([self._key], f"releasing the lease on {self._label}")
