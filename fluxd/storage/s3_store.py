"""The object store as S3Storage sees it: one bucket and a key prefix, reached by boto3, with
every failure turned into a flux error.

boto3 is blocking and thread-safe: the storage interface is blocking too (sessions call it from
the daemon's thread pool), so each call simply runs in the caller's thread. The connection pool
is sized for that pool plus the parts an upload sends in parallel.

Credentials come from boto3's usual chain (the AWS_* environment variables, the shared
credentials and config files); they are never logged nor put into an error message.
"""

from __future__ import annotations

import email.utils
import io
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from fluxproto.errors import (
    ConfigError,
    Conflict,
    FluxError,
    IntegrityError,
    LimitExceeded,
    NoSpace,
    NotFound,
    StorageError,
    Unavailable,
)

__all__ = ["Listing", "ObjectStore", "S3Settings", "StoreObject", "View"]

#: Connections boto3 keeps to the store: sessions' threads plus parts sent in parallel.
POOL_CONNECTIONS = 64
#: Keys one DeleteObjects request may name (the S3 API's limit).
DELETE_BATCH = 1000

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchUpload", "404", "NotFound"})
_REFUSED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled"}
)
#: Error codes of the store, by the flux error they become and how the message puts them.
_BY_CODE: tuple[tuple[frozenset[str], type[FluxError], str], ...] = (
    (_NOT_FOUND, NotFound, "not found while {what}"),
    (
        frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"}),
        Conflict,
        "changed by another writer while {what}",
    ),
    (
        frozenset({"QuotaExceeded", "InsufficientCapacity"}),
        NoSpace,
        "the object store is full while {what} ({code})",
    ),
    (
        frozenset({"EntityTooLarge", "EntityTooSmall"}),
        LimitExceeded,
        "the object store refused the size while {what} ({code})",
    ),
    (
        frozenset({"KeyTooLongError"}),
        LimitExceeded,
        "the path is too long for the object store while {what}",
    ),
    (
        frozenset({"InvalidPart", "InvalidPartOrder"}),
        IntegrityError,
        "the object store no longer holds parts as sent while {what} ({code}); resend",
    ),
    (
        frozenset(
            {
                "SlowDown",
                "ServiceUnavailable",
                "InternalError",
                "BadGateway",
                "GatewayTimeout",
                "Throttling",
                "ThrottlingException",
                "TooManyRequests",
                "RequestLimitExceeded",
                "429",
                "500",
                "502",
                "503",
                "504",
            }
        ),
        Unavailable,
        "the object store is busy while {what} ({code}); retry",
    ),
    (frozenset({"RequestTimeout"}), Unavailable, "the object store timed out while {what}"),
    (_REFUSED, StorageError, "the object store refused access while {what} ({code})"),
)


@dataclass(frozen=True)
class S3Settings:
    """`[storage]` for the S3 backend (README "Running several nodes")."""

    bucket: str
    endpoint: str | None = None
    prefix: str = ""
    region: str | None = None
    path_style: bool = True
    #: Seconds a request may take to connect, and to answer, before it counts as failed.
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    #: Seconds a writer's lease lasts unrenewed (s3_lease.py): a dead node's uploads wait this
    #: long before another node may resume them. A writer starts no request with less than
    #: two thirds of it left, which must be more than any request may take.
    lease_ttl: float = 20.0


class View(io.RawIOBase):
    """A read-only file over a buffer, so a pooled chunk is sent as an UploadPart body without
    a copy (boto3 takes bytes or a file; a bytes() of the chunk would copy it)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._view) - self._at)
        b[:n] = self._view[self._at : self._at + n]
        self._at += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def __len__(self) -> int:
        return len(self._view)


@dataclass(frozen=True)
class StoreObject:
    """One key of a listing."""

    key: str
    size: int
    modified: float  # seconds since the epoch, the store's clock


@dataclass
class Listing:
    """One directory level of a listing: the objects in it and the names of the levels below
    (without the delimiter), both sorted; `last`: when more follow, the last key returned
    (relative to the level, a level's with its delimiter)."""

    objects: list[StoreObject]
    prefixes: list[str]
    last: str | None = None


def bare(etag: str) -> str:
    """An ETag without its quotes."""
    return str(etag).strip('"')


def _code(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def store_error(exc: BaseException, what: str) -> FluxError:
    """The flux error for a failure of the store while doing `what` (one line, no secrets)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _code(exc)
        for codes, cls, message in _BY_CODE:
            if code in codes:
                return cls(message.format(what=what, code=code))
        return StorageError(f"the object store failed while {what} ({code})")
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.ParamValidationError
    ):
        return StorageError(f"the object store cannot be asked while {what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return Unavailable(f"the object store is unreachable while {what}; retry")
    raise exc


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Raise any failure of boto3 in the body as the matching flux error."""
    try:
        yield
    except FluxError:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        raise store_error(exc, what) from None


class ObjectStore:
    """The bucket, under the prefix: every key given to or returned by a method is relative to
    the prefix."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        #: Whether If-Match takes the ETag in quotes (learnt by `check`).
        self.quoted = True
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        #: What the store checks each body it takes against (learnt by `check`): "sha256"
        #: (plain http: the signature's), "crc32" (https, where the store takes CRCs), or
        #: "none" (https without them: TLS alone guards the bytes on their way).
        self.checksums = "none"
        self._s3 = self._client(checksums=False)

    def _client(self, *, checksums: bool) -> Any:
        config = Config(
            s3={"addressing_style": "path" if self.settings.path_style else "virtual"},
            max_pool_connections=POOL_CONNECTIONS,
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            # No retry of boto3's own: a failed request fails its chunk, which the client
            # sends again, and a request never outlasts the writer's lease (s3_lease.py).
            retries={"total_max_attempts": 1, "mode": "standard"},
            # A CRC with every body, checked by the store, where it takes them (Ceph RGW 16
            # does not: `check` finds out).
            request_checksum_calculation="when_supported" if checksums else "when_required",
            response_checksum_validation="when_required",
        )
        with store_errors("connecting to the object store"):
            return boto3.session.Session().client(
                "s3",
                endpoint_url=self.settings.endpoint,
                region_name=self.settings.region,
                config=config,
            )

    # --- whole objects -------------------------------------------------------------------------

    def check(self) -> None:
        """Check that the bucket exists and the credentials are good.

        Raises:
            ConfigError: no such bucket, or access refused (bad credentials).
            Unavailable: the store does not answer.
        """
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND or code == "NoSuchBucket":
                raise ConfigError(f"the object store has no bucket {self.bucket!r}") from None
            if code in _REFUSED:
                raise ConfigError(
                    f"the object store refused the credentials for bucket {self.bucket!r} ({code})"
                ) from None
            raise store_error(exc, f"checking bucket {self.bucket!r}") from None
        except botocore.exceptions.NoCredentialsError:
            raise ConfigError(
                "no credentials for the object store: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or a shared credentials file"
            ) from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise store_error(exc, f"checking bucket {self.bucket!r}") from None
        try:
            self._probe_conditions()
            self._probe_checksums()
        except (ConfigError, Unavailable):
            raise
        except FluxError as exc:
            raise ConfigError(f"the object store refused a test write: {exc.message}") from None

    def _probe_checksums(self) -> None:
        """Over https, use a client that sends a CRC with every body if the store takes it and
        keeps the bytes as sent (an engine without flexible checksums could keep the
        encoding). Over plain http it is not needed: every request carries the SHA-256 of its
        body in its signature (SigV4 signs payloads there), which the store checks."""
        self.checksums = "sha256"
        if (self.settings.endpoint or "https:").startswith("http:"):
            return
        key, what, body = f"probe/{secrets.token_hex(8)}", "checking checksums", b"flux-crc"
        checked = self._client(checksums=True)
        try:
            with store_errors(what):
                checked.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body)
            found = self.get(key, what)
            self.checksums = "crc32" if found is not None and found[0] == body else "none"
        except FluxError:
            self.checksums = "none"
        finally:
            self.delete([key], what)
        if self.checksums == "crc32":
            self._s3 = checked

    def _probe_conditions(self) -> None:
        """Learn how the store takes If-Match (quoted ETags, as SeaweedFS; bare ones, as Ceph
        RGW 16), and whether it honours conditional writes at all, on a key of our own.

        Raises:
            ConfigError: it ignores them (leases could not keep two nodes from one upload).
        """
        key, what = f"probe/{secrets.token_hex(8)}", "checking conditional writes"
        etag = self.put(key, b"1", what, if_none_match=True)
        try:
            honoured = False
            try:
                self.put(key, b"2", what, if_none_match=True)
            except Conflict:
                honoured = True
            for quoted in (True, False):
                self.quoted = quoted
                try:
                    etag = self.put(key, b"3", what, if_match=etag)
                    break
                except Conflict:
                    continue
            else:
                honoured = False
            try:  # and a wrong ETag must be refused, not ignored
                self.put(key, b"4", what, if_match="0" * 32)
                honoured = False
            except (Conflict, NotFound):
                pass
            if not honoured:
                raise ConfigError(
                    "the object store does not honour conditional writes (If-None-Match, "
                    "If-Match on PUT), which keep nodes from writing one upload together"
                )
        finally:
            self.delete([key], what)

    def get(self, key: str, what: str) -> tuple[bytes, str] | None:
        """The body and ETag of `key`, or None if there is none."""
        got = self._get(key, what)
        if got is None:
            return None
        with store_errors(what):
            return got["Body"].read(), bare(got["ETag"])

    def _get(self, key: str, what: str) -> dict[str, Any] | None:
        """GetObject's answer for `key` (its body not yet read), or None if there is none."""
        try:
            with store_errors(what):
                got: dict[str, Any] = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
                return got
        except NotFound:
            return None

    def get_range(self, key: str, start: int, length: int, what: str) -> bytes:
        """`length` bytes of `key` from `start` (fewer only at its end)."""
        end = start + length - 1
        with store_errors(what):
            got = self._s3.get_object(
                Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={start}-{end}"
            )
            return bytes(got["Body"].read())

    def put(
        self,
        key: str,
        body: bytes,
        what: str,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write `key` whole; returns its ETag (unquoted, as every ETag here). `if_none_match`:
        only if it does not exist; `if_match`: only if its ETag is that. Raises Conflict when
        the condition fails."""
        extra: dict[str, Any] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = f'"{if_match}"' if self.quoted else if_match
        with store_errors(what):
            got = self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, **extra)
            return bare(got["ETag"])

    def put_data(self, key: str, data: bytes | bytearray | memoryview, what: str) -> None:
        """Write `key` whole from a buffer, without copying it."""
        with store_errors(what):
            self._s3.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=View(data), ContentLength=len(data)
            )

    def head(self, key: str, what: str) -> StoreObject | None:
        """Size and time of `key`, or None if there is none."""
        try:
            with store_errors(what):
                got = self._s3.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except NotFound:
            return None
        return StoreObject(key, int(got["ContentLength"]), got["LastModified"].timestamp())

    def get_aged(self, key: str, what: str) -> tuple[bytes, str, float] | None:
        """The body and ETag of `key` and how long ago it was written, by the store's own
        clock (its Date header against the object's Last-Modified, both whole seconds), or
        None if there is none. Nodes compare no clocks of their own."""
        got = self._get(key, what)
        if got is None:
            return None
        with store_errors(what):
            body = got["Body"].read()
        headers = got.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            now = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            now = time.time()
        return body, bare(got["ETag"]), now - got["LastModified"].timestamp()

    def delete(self, keys: Sequence[str], what: str) -> None:
        """Delete keys (absent ones are no error), a thousand per request."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self.prefix + k} for k in keys[start : start + DELETE_BATCH]]
            with store_errors(what):
                got = self._s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            failed = [e for e in got.get("Errors", []) if e.get("Code") not in _NOT_FOUND]
            if failed:
                raise StorageError(f"the object store failed while {what} ({failed[0]['Code']})")

    # --- listings ------------------------------------------------------------------------------

    def level(self, prefix: str, after: str | None, limit: int, what: str) -> Listing:
        """One level under `prefix` (which ends with "/" or is ""): up to `limit` objects and
        sub-levels whose names sort after `after` (a name, relative to `prefix`)."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "Delimiter": "/",
            "MaxKeys": max(1, min(limit, 1000)),
        }
        if after is not None:
            args["StartAfter"] = self.prefix + prefix + after
        with store_errors(what):
            got = self._s3.list_objects_v2(**args)
        cut = len(self.prefix) + len(prefix)
        objects = [
            StoreObject(o["Key"][len(self.prefix) :], int(o["Size"]), o["LastModified"].timestamp())
            for o in got.get("Contents", [])
            if len(o["Key"]) > cut
        ]
        prefixes = [p["Prefix"][cut:-1] for p in got.get("CommonPrefixes", [])]
        keys = [o["Key"][cut:] for o in got.get("Contents", [])]
        keys += [p["Prefix"][cut:] for p in got.get("CommonPrefixes", [])]
        last = max(keys) if got.get("IsTruncated") and keys else None
        return Listing(objects, prefixes, last)

    def walk(self, prefix: str, what: str) -> Iterator[StoreObject]:
        """Every key under `prefix`, in key order, a page at a time."""
        paginator = self._s3.get_paginator("list_objects_v2")
        with store_errors(what):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for o in page.get("Contents", []):
                    key = o["Key"][len(self.prefix) :]
                    yield StoreObject(key, int(o["Size"]), o["LastModified"].timestamp())

    def any_under(self, prefix: str, what: str) -> bool:
        """True if some key starts with `prefix`."""
        with store_errors(what):
            got = self._s3.list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix + prefix, MaxKeys=1
            )
        return bool(got.get("KeyCount") or got.get("Contents"))

    # --- multipart uploads ---------------------------------------------------------------------

    def create_upload(self, key: str, what: str) -> str:
        """Start a multipart upload of `key`; returns its upload id."""
        with store_errors(what):
            return str(
                self._s3.create_multipart_upload(Bucket=self.bucket, Key=self.prefix + key)[
                    "UploadId"
                ]
            )

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview, what: str
    ) -> str:
        """Store part `number` (from 1) of an upload; durable in the store once this returns.
        Returns the part's ETag, unquoted: what names this very copy of the part (SeaweedFS
        keeps every copy of a part sent twice, and assembles whichever ETag it is given)."""
        with store_errors(what):
            got = self._s3.upload_part(
                Bucket=self.bucket,
                Key=self.prefix + key,
                UploadId=upload_id,
                PartNumber=number,
                Body=View(data),
                ContentLength=len(data),
            )
        return bare(got["ETag"])

    def parts(self, key: str, upload_id: str, what: str) -> dict[tuple[int, str], int]:
        """(part number, unquoted ETag) -> size of every part of an upload, every copy of a part
        sent twice included (NotFound: no such upload)."""
        held: dict[tuple[int, str], int] = {}
        paginator = self._s3.get_paginator("list_parts")
        with store_errors(what):
            pages = paginator.paginate(
                Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id
            )
            for page in pages:
                for p in page.get("Parts", []):
                    held[int(p["PartNumber"]), bare(p["ETag"])] = int(p["Size"])
        return held

    def complete_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], what: str
    ) -> None:
        """Assemble an upload from (number, unquoted ETag) parts; the object then exists at
        `key`."""
        with store_errors(what):
            self._s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.prefix + key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in parts]},
            )

    def abort_upload(self, key: str, upload_id: str, what: str) -> None:
        """Throw an upload's parts away (an upload already gone is no error)."""
        try:
            with store_errors(what):
                self._s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id
                )
        except NotFound:
            pass

    def uploads(self, prefix: str, what: str) -> Iterator[tuple[str, str, float]]:
        """(key, upload id, started) of every multipart upload in progress under `prefix`."""
        paginator = self._s3.get_paginator("list_multipart_uploads")
        with store_errors(what):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for u in page.get("Uploads", []):
                    key = u["Key"][len(self.prefix) :]
                    yield key, str(u["UploadId"]), u["Initiated"].timestamp()
