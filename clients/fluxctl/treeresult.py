# What a recursive transfer reports: totals, per-entry errors, the exit code, and its progress.
"""The outcome of `send -r` / `recv -r` (`TreeResult`, the `--json` object) and a progress model
(`TreeProgress`) for one display of the whole tree, both fed from plan actions (treeactions.py)
and what the executor reports as it goes. Pure: time is an argument.

Exit code of a run with failures: the worst one, in `EXIT_ORDER` (README, "Exit codes"): first
what left the run unfinished (130 interrupted, 1 internal or protocol error, 5 network), then
per-entry failures by what they say about the data: 3 (integrity), 4 (permission), 6 (remote or
storage), 2 (a local file missing, vanished or unreadable).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fluxproto.errors import EXIT_OK

from .tree import LINK_OUTSIDE, display_name
from .treeactions import EXCLUDED, Action, Copy, Delete, Fail, Ignore, MakeLink, Mkdir, Skip

__all__ = [
    "EXIT_ORDER",
    "MAX_ERRORS_LISTED",
    "ProgressView",
    "TreeError",
    "TreeProgress",
    "TreeResult",
    "worst_exit",
]

#: Exit codes from worst to least bad; an unknown code ranks with 1.
EXIT_ORDER = (130, 1, 5, 3, 4, 6, 2)
#: Errors kept for `errors` (the count and the exit code cover them all): memory stays flat
#: even when every file of a huge tree fails.
MAX_ERRORS_LISTED = 1000


def worst_exit(codes: Iterable[int]) -> int:
    """The exit code of a run whose failures had `codes` (0 when there are none)."""
    worst = EXIT_OK
    for code in codes:
        if code == EXIT_OK:
            continue
        if worst == EXIT_OK or _rank(code) < _rank(worst):
            worst = code
    return worst


def _rank(code: int) -> int:
    return EXIT_ORDER.index(code) if code in EXIT_ORDER else EXIT_ORDER.index(1)


@dataclass(frozen=True, slots=True)
class TreeError:
    """One failed entry: its tree-relative name, one line, and its exit code."""

    path: str
    message: str
    exit_code: int

    def line(self) -> str:
        """The stderr line (without the `fluxctl: ` prefix)."""
        return f"{display_name(self.path)}: {self.message}"


@dataclass
class TreeResult:
    """Totals and errors of one recursive run (all its roots), built as the plan streams.

    `files`, `dirs`, `links` and `bytes` describe the source tree (what the destination holds
    afterwards if nothing failed); `sent` is payload moved on the wire in this run (`received`
    for recv); `skipped_files` are files the quick check found unchanged; `deleted` counts
    entries removed; `ignored` entries not transferred by design (`links_outside` of them
    links leading out of the tree); `excluded` entries left out by --exclude.
    """

    op: str  # "send" or "recv"
    path: str
    transport: str = "tcp"
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    moved: int = 0
    skipped_files: int = 0
    deleted: int = 0
    ignored: int = 0
    links_outside: int = 0
    excluded: int = 0
    retries: int = 0
    #: The node that completed the run, where the server's name leads to several (nodes.py).
    node: str | None = None
    seconds: float = 0.0
    #: Bytes the receiving side acknowledged through each lane (send over lanes only).
    lanes: dict[str, int] = field(default_factory=dict)
    errors: list[TreeError] = field(default_factory=list)
    error_count: int = 0  # errors listed or not
    _worst: int = field(default=EXIT_OK, init=False, repr=False)

    def planned(self, action: Action) -> None:
        """Count an action as the plan yields it (before it runs)."""
        match action:
            case Skip(entry=entry):
                self._count_entry(entry.kind, entry.size)
                if entry.kind == "file":
                    self.skipped_files += 1
            case Copy(source=source):
                self._count_entry("file", source.size)
            case MakeLink():
                self.links += 1
            case Mkdir():
                self.dirs += 1
            case Ignore(reason=reason):
                self._count_ignored(reason)
            case Fail(name=name, message=message, exit_code=code):
                self.fail(name, message, code)

    def _count_entry(self, kind: str, size: int) -> None:
        if kind == "dir":
            self.dirs += 1
        elif kind == "link":
            self.links += 1
        else:
            self.files += 1
            self.bytes += size

    def _count_ignored(self, reason: str) -> None:
        if reason == EXCLUDED:
            self.excluded += 1
            return
        self.ignored += 1
        if reason == LINK_OUTSIDE:
            self.links_outside += 1

    def done(self, action: Action, *, moved: int = 0, removed: int | None = None) -> None:
        """An action finished: `moved` payload bytes crossed the wire for it; a Delete removed
        `removed` entries (default: as many as planned)."""
        self.moved += moved
        if isinstance(action, Delete):
            self.deleted += action.count if removed is None else removed

    def fail(self, path: str, message: str, exit_code: int) -> None:
        """An entry failed alone (while planning or running)."""
        self.error_count += 1
        self._worst = worst_exit((self._worst, exit_code))
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(TreeError(path, message, exit_code))

    @property
    def exit_code(self) -> int:
        """0, or the worst failure's code by EXIT_ORDER."""
        return self._worst

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        out: dict[str, Any] = {
            "ok": self.error_count == 0,
            "op": self.op,
            "path": self.path,
            "files": self.files,
            "dirs": self.dirs,
            "links": self.links,
            "bytes": self.bytes,
            "sent" if self.op == "send" else "received": self.moved,
            "skipped_files": self.skipped_files,
            "deleted": self.deleted,
            "ignored": self.ignored,
            "links_outside": self.links_outside,
            "excluded": self.excluded,
            "retries": self.retries,
            "seconds": round(self.seconds, 6),
            "transport": self.transport,
            "errors": [
                {"path": display_name(e.path), "message": e.message, "exit_code": e.exit_code}
                for e in self.errors
            ],
        }
        if self.lanes:
            out["lanes"] = self.lanes
        if self.node is not None:
            out["node"] = self.node
        if self.error_count > len(self.errors):
            out["errors_not_listed"] = self.error_count - len(self.errors)
        if self.error_count:
            out["exit_code"] = self.exit_code
        return out

    def summary(self) -> str:
        """The human summary line."""
        verb = "sent" if self.op == "send" else "received"
        parts = [
            f"{verb} {self.path}: {self.files} files ({self.skipped_files} unchanged)",
            f"{self.dirs} folders",
            f"{self.links} links",
            f"{self.moved} bytes on the wire in {self.seconds:.2f} s",
        ]
        if self.deleted:
            parts.append(f"{self.deleted} deleted")
        if self.ignored:
            parts.append(f"{self.ignored} not transferred (-v names them)")
        if self.error_count:
            parts.append(f"{self.error_count} failed")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class ProgressView:
    """What one progress display shows. Totals grow while the plan streams (`complete` False);
    `eta` is known only once they are final and a rate has been measured."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate: float  # bytes/s over the last RATE_WINDOW seconds
    eta: float | None  # seconds
    complete: bool


class TreeProgress:
    """Files and bytes to move for the whole tree; the CLI renders `view(now)` (e.g. with rich).

    Only transfers count: files the quick check skips are neither to do nor done.
    """

    #: Seconds of history the rate is measured over: recent enough to follow a changing link,
    #: long enough not to jump with each small file.
    RATE_WINDOW = 5.0

    def __init__(self, now: float) -> None:
        self.files_done = 0
        self.files_total = 0
        self.bytes_done = 0
        self.bytes_total = 0
        self.complete = False
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])

    def planned(self, action: Action) -> None:
        """Add a planned action to the totals (a Copy: one file and its size)."""
        if isinstance(action, Copy):
            self.files_total += 1
            self.bytes_total += action.source.size

    def plan_complete(self) -> None:
        """The plan has been read to its end: totals are final."""
        self.complete = True

    def moved(self, nbytes: int, now: float) -> None:
        """`nbytes` more of the files' data arrived (durable on the receiving side)."""
        self.bytes_done += nbytes
        self._sample(now)

    def file_done(self, now: float) -> None:
        """One more file finished (or failed: it is no longer to do)."""
        self.files_done += 1
        self._sample(now)

    def _sample(self, now: float) -> None:
        samples = self._samples
        if now - samples[-1][0] >= 0.1:  # bounded history: at most ~50 samples in the window
            samples.append((now, self.bytes_done))
        while len(samples) > 2 and now - samples[1][0] > self.RATE_WINDOW:
            samples.popleft()

    def view(self, now: float) -> ProgressView:
        """The display's numbers at time `now`."""
        start, at_start = self._samples[0]
        elapsed = now - start
        rate = (self.bytes_done - at_start) / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.complete and rate > 0:
            eta = max(self.bytes_total - self.bytes_done, 0) / rate
        return ProgressView(
            self.files_done,
            self.files_total,
            self.bytes_done,
            self.bytes_total,
            rate,
            eta,
            self.complete,
        )
