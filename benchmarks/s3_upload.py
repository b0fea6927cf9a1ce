"""`python -m benchmarks.s3_upload FILE`: one file into an S3 bucket by boto3's managed upload
(`upload_file`, s3transfer's TransferManager, multipart in parallel threads), the reference that
scenario `cluster` times fluxd against. Credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY; prints one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from .engines import s3_client
from .files import parse_size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_upload", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--endpoint", required=True, help="http://HOST:PORT of the engine")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--part-size", type=parse_size, default="8M", help="[%(default)s]")
    parser.add_argument("--concurrency", type=int, help="threads [boto3's default]")
    parser.add_argument(
        "--checksums-when-required",
        action="store_true",
        help="no flexible checksums (engines that predate them: Ceph RGW 16)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Upload FILE to BUCKET/KEY; print {ok, bytes, part_size, concurrency}."""
    args = _parser().parse_args(argv)
    client = s3_client(
        args.endpoint, args.region, flexible_checksums=not args.checksums_when_required
    )
    options = {"max_concurrency": args.concurrency} if args.concurrency else {}
    config = TransferConfig(
        multipart_threshold=args.part_size, multipart_chunksize=args.part_size, **options
    )
    client.upload_file(str(args.file), args.bucket, args.key, Config=config)
    report = {
        "ok": True,
        "bytes": args.file.stat().st_size,
        "part_size": args.part_size,
        "concurrency": config.max_concurrency,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
