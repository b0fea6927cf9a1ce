# The tree options of `send` and `recv` on the command line, and how a tree command runs.
"""What the `-r` forms of `fluxctl send` and `fluxctl recv` add to the command line: their
options, the usage rules of their arguments, and the run of a tree command (its view, the
JSON object or summary line, the worst exit code). Light at import, like cli.py: each run
imports the library it needs."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from fluxio.cliutil import EXIT_USAGE

if TYPE_CHECKING:
    from .cli import Connect, Run
    from .connect import ClientOptions
    from .treeresult import TreeResult
    from .treerun import TreeOptions, TreeView
    from .url import FluxURL

Recursive = Annotated[
    bool, typer.Option("--recursive", "-r", help="Copy a folder and all it holds.")
]
Dereference = Annotated[
    bool, typer.Option("--dereference", "-L", help="With -r: send what links point to.")
]
DeleteExtra = Annotated[
    bool,
    typer.Option("--delete", help="With -r: remove destination entries missing from the source."),
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", "-n", help="With -r: print what would be done; change nothing.")
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="PATTERN",
        help="With -r: leave out paths matching PATTERN (gitignore syntax; repeatable).",
    ),
]
Checksum = Annotated[
    bool, typer.Option("--checksum", help="With -r: compare digests, not size and mtime.")
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="With -r: name skipped and ignored entries.")
]


@dataclass(frozen=True)
class TreeFlags:
    """The options of the tree commands (`send -r`, `recv -r`) as given."""

    recursive: bool
    dereference: bool
    delete: bool
    dry_run: bool
    exclude: list[str] | None
    checksum: bool
    verbose: bool

    def usage(self) -> str | None:
        """Why these flags make no sense without -r (None: they do, or -r is given)."""
        if self.recursive:
            return None
        given = {
            "-L": self.dereference,
            "--delete": self.delete,
            "-n": self.dry_run,
            "--exclude": bool(self.exclude),
            "--checksum": self.checksum,
            "-v": self.verbose,
        }
        named = [flag for flag, on in given.items() if on]
        if not named:
            return None
        verb = "applies" if len(named) == 1 else "apply"
        return f"{', '.join(named)} {verb} to folders only: add -r"

    def options(self) -> TreeOptions:
        from .treerun import TreeOptions  # noqa: PLC0415

        return TreeOptions(
            follow_links=self.dereference,
            delete=self.delete,
            dry_run=self.dry_run,
            excludes=tuple(self.exclude or ()),
            checksum=self.checksum,
            verbose=self.verbose,
        )


def check_arguments(run: Run, flags: TreeFlags, sources: list[str], what: str) -> None:
    """Usage errors of the argument list: a source and a destination, several sources only
    with -r, tree flags only with -r."""
    if not sources:
        run.fail(f"missing {what}: give a source and a destination", EXIT_USAGE)
    usage = flags.usage()
    if usage is not None:
        run.fail(usage, EXIT_USAGE)
    if len(sources) > 1 and not flags.recursive:
        run.fail(f"several sources ({len(sources)}) are copied with -r only", EXIT_USAGE)


def send_tree(run: Run, sources: list[str], url: str, connect: Connect, flags: TreeFlags) -> None:
    """`fluxctl send -r SOURCES... URL` (exits with the run's worst code)."""
    from .treesend import send_tree  # noqa: PLC0415

    with run.guard():
        target = run.parse_url(url)

    async def execute(opts: ClientOptions, tree: TreeOptions, view: TreeView) -> TreeResult:
        return await send_tree(sources, target, opts, tree, view)

    run_tree(run, target, connect, flags, execute)


def recv_tree(run: Run, urls: list[str], local: str, connect: Connect, flags: TreeFlags) -> None:
    """`fluxctl recv -r URLS... LOCAL`, from one server (exits with the run's worst code)."""
    from .treerecv import recv_tree  # noqa: PLC0415

    with run.guard():
        sources = [run.parse_url(u) for u in urls]
        first = sources[0]
        for other in sources[1:]:
            if (other.host, other.port) != (first.host, first.port):
                run.fail(f"recv -r takes sources from one server: {first.address}", EXIT_USAGE)
        run.path = sources[0].path if len(sources) == 1 else local

    async def execute(opts: ClientOptions, tree: TreeOptions, view: TreeView) -> TreeResult:
        return await recv_tree(sources, local, opts, tree, view)

    run_tree(run, first, connect, flags, execute)


def run_tree(
    run: Run,
    url: FluxURL,
    connect: Connect,
    flags: TreeFlags,
    execute: Callable[[ClientOptions, TreeOptions, TreeView], Awaitable[TreeResult]],
) -> None:
    """Run a tree command: its view, the run's JSON or summary, and the worst exit code."""
    from .treerun import TreeView  # noqa: PLC0415

    tree = flags.options()
    view = TreeView(
        verb=run.op,
        verbose=tree.verbose,
        dry_run=tree.dry_run,
        quiet=run.quiet,
        json=run.json,
        progress=run.wants_progress() and not tree.dry_run,
    )

    async def work() -> TreeResult:
        opts = run.options(url, connect)
        with view:
            return await execute(opts, tree, view)

    result = run.execute(work)
    summary = result.summary() + (" (dry run: nothing changed)" if tree.dry_run else "")
    run.done(result.to_json(), summary)
    sys.exit(result.exit_code)
