"""Fixtures for the daemon tests: an empty served root, a LocalStorage on it, and the service
on that (`make`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_support import Daemon, daemons

from fluxd.storage import LocalStorage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def storage(root: Path) -> LocalStorage:
    return LocalStorage(root)


@pytest.fixture
def make(tmp_path: Path, root: Path, storage: LocalStorage) -> Iterator[Callable[..., Daemon]]:
    """Build service Daemons (`service_support.Daemon`) with `limits`, `auth` and claims that
    presume silence stale after `stale_after` seconds; their pools are shut down afterwards."""
    yield from daemons(tmp_path, root, storage)
