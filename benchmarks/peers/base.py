"""What every peer gives a scenario: one measured transfer, where the copy lands, peak RSS."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from ..measure import MB, Run


@dataclass(frozen=True)
class Placement:
    """Where a peer's server and client run: loopback (the default), or the two network
    namespaces of an emulated link, whose server address is `host`."""

    host: str = "127.0.0.1"
    server_prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NAME)
    client_prefix: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return not self.server_prefix


LOOPBACK = Placement()


@dataclass
class Transfer:
    """One file sent by one tool, timed by the harness around the client process."""

    tool: str
    size: int
    seconds: float
    client_rss_kib: int
    server_rss_kib: int | None
    client_cpu_seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(
        cls, tool: str, size: int, run: Run, server_rss_kib: int | None, details: dict[str, Any]
    ) -> Transfer:
        """The transfer a measured client run made (time, client RSS and CPU from `run`)."""
        return cls(
            tool, size, run.seconds, run.maxrss_kib, server_rss_kib, run.cpu_seconds, details
        )

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / MB

    def to_json(self) -> dict[str, Any]:
        rounded = {"client_cpu_seconds": round(self.client_cpu_seconds, 3)}
        return asdict(self) | rounded | {"mb_per_s": round(self.mb_per_s, 3)}


class Peer(Protocol):
    """A running server and the client that sends into it."""

    tool: str

    def send(self, src: Path, name: str, timeout: float | None = None) -> Transfer:
        """Send `src` as `name` (within `timeout` seconds, else a size-based default); raises
        BenchError unless the tool reports success."""
        ...

    def dest(self, name: str) -> Path | None:
        """Where the copy of `name` lands (None: the tool writes no copy)."""
        ...


class StoredPeer(Peer, Protocol):
    """A peer whose copy lands out of reach of the filesystem (an object store): the peer
    checks and removes it itself."""

    def check_copy(self, name: str, size: int, digest: str | None, scratch: Path) -> None:
        """Raise BenchError unless the copy of `name` has `size` bytes and (unless None) the
        source's `digest`; `scratch` is a folder for a copy read back."""
        ...

    def remove_copy(self, name: str) -> None:
        """Delete the copy of `name` (and free its space where the store defers it)."""
        ...


class Service:
    """A peer started by `with`: a start that fails half-way still cleans up what it began."""

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


def remove_copy(path: Path) -> None:
    """Delete a received copy and flush the disk, so the next repetition starts from quiet."""
    path.unlink(missing_ok=True)
    os.sync()
