"""Fixtures for tests against a real S3 engine: one SeaweedFS (`weed mini`) per test worker,
a fresh prefix or bucket per test, and an engine of a test's own to stop, kill and restart."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.engines import SeaweedFS

__all__ = ["s3_bucket", "s3_client", "s3_engine", "s3_prefix", "s3_private_engine"]


@pytest.fixture(scope="session")
def s3_engine(guard_session: str) -> Iterator[SeaweedFS]:
    """The worker's SeaweedFS, shared by its tests: use a prefix or bucket of your own, and do
    not stop it (take `s3_private_engine` for that)."""
    with SeaweedFS() as engine:
        yield engine


@pytest.fixture(scope="session")
def s3_client(s3_engine: SeaweedFS) -> Iterator[Any]:
    """A boto3 S3 client for `s3_engine` (closed before the engine stops)."""
    with contextlib.closing(s3_engine.client()) as client:
        yield client


def _unique(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3_prefix(s3_engine: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """A key prefix (ending in "/") in `s3_engine.bucket` that no other test uses."""
    return f"{_unique(request)}/"


@pytest.fixture
def s3_bucket(s3_engine: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket in `s3_engine`, for a test that lists or counts a whole bucket."""
    return s3_engine.make_bucket(_unique(request).strip("-"))


@pytest.fixture
def s3_private_engine() -> Iterator[SeaweedFS]:
    """A SeaweedFS for this test alone (~1 s to start), to stop, kill or restart."""
    with SeaweedFS() as engine:
        yield engine
