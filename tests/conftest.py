"""Fixtures for every test: the process guard (tests/procguard.py) fails a test that leaves a
process running; the S3 engine fixtures (tests/s3engine.py) start one on first use."""

from __future__ import annotations

from .procguard import guard_session, guard_test
from .s3engine import s3_bucket, s3_client, s3_engine, s3_prefix, s3_private_engine

__all__ = [
    "guard_session",
    "guard_test",
    "s3_bucket",
    "s3_client",
    "s3_engine",
    "s3_prefix",
    "s3_private_engine",
]
