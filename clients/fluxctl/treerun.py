# What `send -r` and `recv -r` share around their executors: options, output, and the report.
"""The plumbing both tree commands share: `TreeOptions` (the CLI's tree flags), `TreeView`
(where a run's lines and progress go: dry-run and -v lines, one line per failed entry,
warnings, the TTY progress display) and `TreeReport` (a run's `TreeResult` and its view, fed
together by an executor).

The executors (treesend.send_tree, treerecv.recv_tree) take the same arguments:

    result = await send_tree(sources, dest_url, client_options, tree_options, view)
    result = await recv_tree(source_urls, dest, client_options, tree_options, view)

and return a TreeResult; the CLI prints `result.to_json()` or `result.summary()` and exits
with `result.exit_code`. What leaves the run unfinished (no connection for --retry-for, a usage
error, Ctrl-C) is raised as a FluxError, as for single files.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TextIO

from .tree import LINK_OUTSIDE, display_name
from .treeactions import Action, Copy, Fail, Ignore, dry_run_lines
from .treeplan import DigestFn, PlanOptions
from .treeresult import TreeError, TreeProgress, TreeResult

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from fluxproto import FluxError

__all__ = ["TreeOptions", "TreeReport", "TreeView"]


@dataclass(frozen=True)
class TreeOptions:
    """The tree flags of `send -r` and `recv -r` (README, "Folders")."""

    #: -L: send what links point to instead of the links (send only; a link to a folder it is
    #: inside of is skipped as a loop).
    follow_links: bool = False
    #: --delete: remove destination entries missing from the source, after every transfer.
    delete: bool = False
    #: -n: plan and print, change nothing.
    dry_run: bool = False
    #: --exclude patterns (gitignore syntax), in command-line order.
    excludes: tuple[str, ...] = ()
    #: --checksum: compare digests of equal-sized files instead of their mtimes.
    checksum: bool = False
    #: -v: name skipped and ignored entries too.
    verbose: bool = False

    def plan_options(
        self,
        remote: Literal["source", "dest"],
        local_digest: DigestFn | None = None,
    ) -> PlanOptions:
        """The planner's options; `local_digest` hashes the local side for --checksum (the
        remote side's digests come with its listing, which asks for them only then)."""
        if remote == "dest" and local_digest is not None:
            return PlanOptions(self.delete, self.checksum, remote, source_digest=local_digest)
        if remote == "source" and local_digest is not None:
            return PlanOptions(self.delete, self.checksum, remote, dest_digest=local_digest)
        return PlanOptions(self.delete, self.checksum, remote)


class TreeView:
    """Where a tree run's output goes; the executor calls it as the run goes.

    Per-entry failures and warnings are lines on `err` (`fluxctl: ...`); dry-run lines and,
    with `verbose`, a line per action go to `out` (to `err` with `json`, whose stdout holds
    the one object). The progress display (files and bytes, rate, time left) is drawn on
    `err` when `progress` is true.
    """

    def __init__(
        self,
        *,
        verb: str = "send",
        verbose: bool = False,
        dry_run: bool = False,
        quiet: bool = False,
        json: bool = False,
        progress: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verb, self.verbose, self.dry_run, self.quiet = verb, verbose, dry_run, quiet
        self._err = err or sys.stderr
        self._out = self._err if json else (out or sys.stdout)
        self._json = json
        self._clock = clock
        self.progress = TreeProgress(clock())
        self._display: _ProgressDisplay | None = _ProgressDisplay() if progress else None
        #: Lines already printed (a retried run plans again): not printed twice.
        self._said: set[str] = set()

    def __enter__(self) -> TreeView:
        if self._display is not None:
            self._display.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._display is not None:
            self._display.stop()

    def restart(self) -> None:
        """A new attempt (after a reconnect) plans the whole tree again: progress restarts."""
        self.progress = TreeProgress(self._clock())
        self._draw()

    def planned(self, action: Action) -> None:
        """An action as the plan yields it: progress totals, and its line if one is due."""
        self.progress.planned(action)
        if isinstance(action, Fail):
            self.failed(TreeError(action.name, action.message, action.exit_code))
        elif isinstance(action, Ignore) and action.reason == LINK_OUTSIDE:
            shown = f"{display_name(action.name)} -> {display_name(action.detail)}"
            self._say(self._err, f"fluxctl: warning: {shown} leads out of the tree: not created")
        if self.dry_run or self.verbose:
            for line in dry_run_lines([action], verbose=self.verbose, verb=self.verb):
                self._say(self._out, line, once=False)
        if isinstance(action, Copy):
            self._draw()

    def plan_complete(self) -> None:
        self.progress.plan_complete()
        self._draw()

    def failed(self, error: TreeError) -> None:
        """One entry failed alone: one line on stderr (even with --quiet, like any error)."""
        self._say(self._err, f"fluxctl: {error.line()}", quiet_too=True)

    def moved(self, nbytes: int) -> None:
        """`nbytes` more file data is durable on the receiving side."""
        self.progress.moved(nbytes, self._clock())
        self._draw()

    def file_done(self) -> None:
        """A transfer finished (or failed: it is no longer to do)."""
        self.progress.file_done(self._clock())
        self._draw()

    def retrying(self, exc: FluxError, pause: float) -> None:
        """A reconnect (Retrier's on_retry): a line, except with --json (as for one file,
        whose `retries` counts them)."""
        if not self._json:
            line = f"fluxctl: {exc.message}; retrying in {pause:.1f} s"
            self._say(self._err, line, once=False)

    def _say(
        self, stream: TextIO, line: str, *, once: bool = True, quiet_too: bool = False
    ) -> None:
        if self.quiet and not quiet_too:
            return
        if once:
            if line in self._said:
                return
            if len(self._said) < _MAX_REMEMBERED:
                self._said.add(line)
        if self._display is not None:
            self._display.print(stream, line)
        else:
            print(line, file=stream, flush=stream is self._err)

    def _draw(self) -> None:
        if self._display is not None:
            self._display.draw(self.progress, self._clock())


#: Lines remembered so that a retried attempt does not print them again (bounded: memory).
_MAX_REMEMBERED = 1000


class _ProgressDisplay:
    """The TTY progress line of a tree run (rich, on stderr): files and bytes done of the
    totals known so far, the rate, and the time left once the plan is complete."""

    def __init__(self) -> None:
        # Imported here: rich costs start-up that --quiet, --json and pipes skip.
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

        self._progress: Progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: TaskID = self._progress.add_task("", total=None, detail="")

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def print(self, stream: TextIO, line: str) -> None:
        if stream is sys.stderr:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=stream)

    def draw(self, progress: TreeProgress, now: float) -> None:
        from .progress import human_bytes  # noqa: PLC0415

        v = progress.view(now)
        more = "" if v.complete else "+"
        detail = (
            f"{human_bytes(v.bytes_done)}/{human_bytes(v.bytes_total)}{more} "
            f"{human_bytes(v.rate)}/s"
        )
        if v.eta is not None:
            detail += f" {v.eta:.0f} s left"
        self._progress.update(
            self._task,
            description=f"{v.files_done}/{v.files_total}{more} files",
            completed=v.bytes_done,
            total=max(v.bytes_total, 1),
            detail=detail,
        )


class TreeReport:
    """One run's result and its view, fed together by an executor.

    Attributes:
        result: the totals and errors (the `--json` object).
        view: the output.
    """

    def __init__(self, result: TreeResult, view: TreeView) -> None:
        self.result, self.view = result, view
        #: Files transferred (Copy actions done): a retried run's next attempt finds them
        #: unchanged, and counts them as sent rather than skipped.
        self.transferred = 0

    def planned(self, action: Action) -> None:
        """Count an action as the plan yields it, and show it."""
        self.result.planned(action)
        self.view.planned(action)

    def failed(self, path: str, message: str, exit_code: int) -> None:
        """An entry failed alone while it ran."""
        self.result.fail(path, message, exit_code)
        self.view.failed(TreeError(path, message, exit_code))

    def done(self, action: Action, *, moved: int = 0, removed: int | None = None) -> None:
        """An action finished (see TreeResult.done)."""
        self.result.done(action, moved=moved, removed=removed)
        if isinstance(action, Copy):
            self.transferred += 1
