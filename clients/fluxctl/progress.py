"""Progress bar on stderr (rich): bytes done, rate and time left. A no-op when disabled."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """`with ProgressBar(label, enabled) as bar: bar.update(done, total)`."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._label = label
        self._lanes: list[str] = []
        if enabled:
            # Imported here: rich costs ~20 ms of start-up that --quiet, --json and pipes skip.
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._described(), total=total)
        self._progress.update(self._task, completed=done, total=total)

    def lanes(self, names: list[str]) -> None:
        """Show which lanes are up (a transfer over several: `[tcp+quic]`)."""
        self._lanes = names
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=self._described())

    def _described(self) -> str:
        if not self._lanes:
            return self._label
        return f"{self._label} [{'+'.join(self._lanes)}]"
