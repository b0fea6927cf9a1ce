"""boto3's managed multipart upload of a file into an S3 engine, run as its own process (as
fluxctl is) and timed the same way: the reference of scenario `cluster`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import BenchError
from ..engines import Engine
from ..files import stream_digest
from ..measure import run_measured
from .base import Transfer
from .process import harness_env, json_report

MODULE = "benchmarks.s3_upload"


def object_digest(client: Any, bucket: str, key: str) -> str:
    """xxh3-128 of an object's content, streamed, as `xxh3-128:HEX` (files.file_digest's form)."""
    return stream_digest(client.get_object(Bucket=bucket, Key=key)["Body"])


class Boto3Peer:
    """`upload_file` into `engine`'s bucket under `boto3/`, with `part_size` parts and
    `concurrency` threads (None: boto3's default, which the report names)."""

    tool = "boto3"

    def __init__(self, engine: Engine, part_size: int, concurrency: int | None = None) -> None:
        self.engine, self.part_size, self.concurrency = engine, part_size, concurrency
        self._client = engine.client()

    def key(self, name: str) -> str:
        return f"boto3/{name}"

    def argv(self, src: Path, name: str) -> list[str]:
        e = self.engine
        argv = [sys.executable, "-m", MODULE, str(src), "--endpoint", e.endpoint, "--bucket",
                e.bucket, "--key", self.key(name), "--region", e.region, "--part-size",
                str(self.part_size)]  # fmt: skip
        if self.concurrency:
            argv += ["--concurrency", str(self.concurrency)]
        return argv + ([] if e.flexible_checksums else ["--checksums-when-required"])

    def send(self, src: Path, name: str, timeout: float | None = None) -> Transfer:
        """Upload `src` as `name`, timed from spawn to reap like fluxctl.

        Raises:
            BenchError: the upload failed or reported another size.
        """
        size = src.stat().st_size
        env = harness_env() | {
            "AWS_ACCESS_KEY_ID": self.engine.access_key,
            "AWS_SECRET_ACCESS_KEY": self.engine.secret_key,
        }
        run = run_measured(self.argv(src, name), env=env, timeout=timeout or max(600, size / 5e6))
        report = json_report(self.tool, run)
        if report.get("bytes") != size:
            raise BenchError(f"boto3 did not upload the whole file: {report}")
        details = {"report": report, "engine": self.engine.name}
        return Transfer.from_run(self.tool, size, run, None, details)

    def check_copy(self, name: str, size: int, digest: str | None, scratch: Path) -> None:
        """Raise BenchError unless the object has `size` bytes (and, if given, `digest`)."""
        key = self.key(name)
        got = self._client.head_object(Bucket=self.engine.bucket, Key=key)["ContentLength"]
        if got != size:
            raise BenchError(f"boto3: {key} has {got} bytes, expected {size}")
        if digest and (copy := object_digest(self._client, self.engine.bucket, key)) != digest:
            raise BenchError(f"boto3: {key} differs from the source ({copy} != {digest})")

    def remove_copy(self, name: str) -> None:
        self._client.delete_object(Bucket=self.engine.bucket, Key=self.key(name))
        self.engine.collect_garbage()
