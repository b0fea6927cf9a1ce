"""A scratch directory holding the source files and every destination, removed at the end."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from ..files import check_space, format_size, make_random_file

DEFAULT_BASE = Path("/var/tmp")  # on disk on Debian, where /tmp may be tmpfs
SPACE_MARGIN = 512 * 1024 * 1024


class Workspace:
    """`src/` (generated once per size), `flux-root/` and `scp-dest/` in one temp dir on one fs."""

    def __init__(self, base: Path | None) -> None:
        self.base = base or DEFAULT_BASE
        self.path = Path()
        self._sources: dict[int, tuple[Path, str]] = {}

    def __enter__(self) -> Workspace:
        self.base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="fluxd-bench-", dir=self.base))
        for sub in ("src", "flux-root", "scp-dest"):
            (self.path / sub).mkdir()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @property
    def flux_root(self) -> Path:
        return self.path / "flux-root"

    @property
    def scp_dest(self) -> Path:
        return self.path / "scp-dest"

    def source(self, size: int) -> tuple[Path, str]:
        """The random file of `size` bytes and its digest, generated on first use.

        Raises:
            BenchError: not enough free space for the file and one copy of it.
        """
        if size not in self._sources:
            check_space(self.path, 2 * size + SPACE_MARGIN)
            path = self.path / "src" / f"core-{size}.bin"
            print(f"generating {format_size(size)} of random data in {path}", file=sys.stderr)
            self._sources[size] = (path, make_random_file(path, size, seed=size))
        return self._sources[size]

    def discard(self, size: int) -> None:
        """Delete the source file of `size` bytes to free space for the next size."""
        if size in self._sources:
            self._sources.pop(size)[0].unlink(missing_ok=True)
