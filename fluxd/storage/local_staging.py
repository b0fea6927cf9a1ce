"""The staging area of a local root: one folder of uploads in progress per path.

ROOT/.flux/staging/<reserved_key of path>/{data,journal}   (see fluxio.staging)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from fluxio.oserrors import storage_errors
from fluxio.staging import StagedFile
from fluxproto.errors import NotFound

from .paths import reserved_key

__all__ = ["StagingArea"]


class StagingArea:
    """The staged uploads of one root, in `folder` (created, mode 0700, if missing)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder

    def open(self, rel: str, size: int, chunk_size: int) -> StagedFile:
        """Stage an upload of `rel`, resuming the one there if it has this size and chunk size.

        Raises:
            Conflict: another session holds it. NoSpace, StorageError: as `StagedFile.open`.
        """
        try:
            return self._open(rel, size, chunk_size)
        except NotFound:  # a commit of the same path removed the folder under us: once more
            return self._open(rel, size, chunk_size)

    def _open(self, rel: str, size: int, chunk_size: int) -> StagedFile:
        folder = self.folder / reserved_key(rel)
        with storage_errors(f"preparing the upload of {rel}"):
            if not folder.is_dir():
                folder.mkdir(mode=0o700, exist_ok=True)
        # The folder's entry is synced with the upload's first durable record, not now: an
        # upload committed in a group never makes one (see fluxio.staging).
        return StagedFile.open(
            folder / "data", folder / "journal", size, chunk_size, label=rel, dirs=(self.folder,)
        )

    def exists(self, rel: str) -> bool:
        """Whether an upload of `rel` is staged (it may be resumed)."""
        return (self.folder / reserved_key(rel)).is_dir()

    def remove(self, rel: str) -> None:
        """Remove the (emptied) folder of `rel`'s upload once it is published or discarded."""
        with contextlib.suppress(OSError):  # not empty: another session has just reopened it
            os.rmdir(self.folder / reserved_key(rel))

    def uploads(self) -> Iterator[tuple[Path, Path, Path]]:
        """(folder, data, journal) of every staged upload, for recovery and collection."""
        with contextlib.suppress(FileNotFoundError):
            for folder in sorted(self.folder.iterdir()):
                if folder.is_dir() and not folder.is_symlink():
                    yield folder, folder / "data", folder / "journal"
