"""Fixtures for the storage tests: an empty served root and a LocalStorage on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxd.storage import LocalStorage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def storage(root: Path) -> LocalStorage:
    return LocalStorage(root)
