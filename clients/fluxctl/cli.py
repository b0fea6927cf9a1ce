"""The `fluxctl` command: parse options, call the client library, render progress and results.

No transfer logic lives here (see upload.py, download.py, ops.py). Every failure becomes one line
on stderr and a distinct exit code; with `--json`, exactly one JSON object goes to stdout.

Scripts call fluxctl in loops, so start-up is kept small: this module imports only typer at the
top, and each command imports what it needs when it runs (`fluxctl version` loads no protocol,
no asyncio and no QUIC; a TCP transfer loads no QUIC).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from fluxio import cliutil
from fluxio.cliutil import CONTEXT, EXIT_INTERRUPTED, EXIT_USAGE, decided, run_app

from . import __version__, clishell, clitree
from .clitree import (
    Checksum,
    DeleteExtra,
    Dereference,
    DryRun,
    Exclude,
    Recursive,
    TreeFlags,
    Verbose,
)

if TYPE_CHECKING:
    from fluxio.ratelimit import Pace
    from fluxproto import Entry, FluxError

    from .connect import ClientOptions
    from .progress import ProgressBar
    from .results import TransferResult
    from .url import FluxURL

T = TypeVar("T")

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
    help="fluxctl: send and receive files with a fluxd server, resuming after any interruption.",
)

Ca = Annotated[
    Path | None, typer.Option("--ca", envvar="FLUX_CA", help="Trust servers signed by this CA.")
]
Pin = Annotated[
    str | None,
    typer.Option("--pin", envvar="FLUX_PIN", help="Trust only this certificate: sha256:HEX."),
]
Transport = Annotated[
    str,
    typer.Option(
        "--transport",
        envvar="FLUX_TRANSPORT",
        help="auto (TCP and QUIC lanes at once; a transfer uses every lane up), quic or tcp.",
    ),
]
Lanes = Annotated[
    int,
    typer.Option(
        "--lanes", help="TCP lanes to transfer over (more for long fat paths); auto adds QUIC's."
    ),
]
ChunkSize = Annotated[
    str | None, typer.Option("--chunk-size", help="Chunk size for new transfers, e.g. 4M.")
]
BwLimit = Annotated[
    str | None,
    typer.Option(
        "--bwlimit",
        metavar="RATE",
        help="Limit the payload to RATE bytes per second over all lanes and files, e.g. 500K "
        "or 10M (K = 1024, M = 1024 K, as --chunk-size; 0: no limit).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object with the result.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary.")]
RetryFor = Annotated[
    float, typer.Option("--retry-for", help="Keep reconnecting for this many seconds.")
]
IoTimeout = Annotated[
    float,
    typer.Option(
        "--io-timeout", help="Seconds without a sign of life from the server before a retry."
    ),
]
Plaintext = Annotated[
    bool, typer.Option("--insecure-plaintext", help="No TLS; loopback servers only.")
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FLUX_TOKEN",
        help="Access token (else the server's entry in the config file).",
        show_envvar=True,
    ),
]
ShowProgress = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Force the progress bar on or off."),
]
RemoteURL = Annotated[str, typer.Argument(help="flux://HOST:PORT/PATH")]


@dataclass(frozen=True)
class Connect:
    """The options every command that talks to a server takes."""

    ca: Path | None
    pin: str | None
    transport: str
    retry_for: float
    plaintext: bool
    token: str | None
    io_timeout: float
    chunk_size: str | None = None
    lanes: int = 1
    bwlimit: str | None = None


@dataclass
class Run:
    """One command invocation: options, output mode, and the error → exit code boundary."""

    op: str
    path: str
    json: bool
    quiet: bool
    show_progress: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: What an interrupted run says (how to resume it).
    interrupted: str = "interrupted; run the same command again to resume"
    #: What the command holds open around its run (a copy of standard input).
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def options(self, url: FluxURL, c: Connect) -> ClientOptions:
        from fluxio.parsing import parse_size  # noqa: PLC0415
        from fluxproto import MAX_CHUNK, MIN_CHUNK, ConfigError  # noqa: PLC0415

        from .connect import ClientOptions  # noqa: PLC0415
        from .nodes import configured_nodes  # noqa: PLC0415
        from .tokens import resolve_token  # noqa: PLC0415
        from .trust import TrustPolicy  # noqa: PLC0415

        size = parse_size(c.chunk_size) if c.chunk_size is not None else None
        if size is not None and not MIN_CHUNK <= size <= MAX_CHUNK:
            raise ConfigError(f"--chunk-size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        return ClientOptions(
            trust=None if c.plaintext else TrustPolicy.from_options(c.ca, c.pin),
            transport=c.transport,
            chunk_size=size,
            retry_for=c.retry_for,
            io_timeout=c.io_timeout,
            insecure_plaintext=c.plaintext,
            quic_datagram_size=ClientOptions.datagram_size_from_env(),
            on_new_host=self.notice,
            token=resolve_token(c.token, url.host, url.port),
            lanes=c.lanes,
            nodes=configured_nodes(url.host, url.port),
            pace=self.pace(c.bwlimit),
        )

    def pace(self, bwlimit: str | None) -> Pace | None:
        """--bwlimit's bucket, which every lane and file of the run charges (None: no limit);
        the rate goes into the result as `bwlimit`."""
        from fluxio.parsing import parse_size  # noqa: PLC0415
        from fluxio.ratelimit import TokenBucket  # noqa: PLC0415
        from fluxproto import ConfigError  # noqa: PLC0415

        if bwlimit is None:
            return None
        try:
            rate = parse_size(bwlimit)
        except ConfigError:
            raise ConfigError(f"--bwlimit: not a rate: {bwlimit!r} (examples: 500K, 10M)") from None
        if not rate:
            return None
        self.extra["bwlimit"] = rate
        return TokenBucket(rate).charge

    def parse_url(self, text: str) -> FluxURL:
        """Parse a flux URL; the run's `path` becomes its path."""
        from .url import FluxURL  # noqa: PLC0415

        url = FluxURL.parse(text)
        self.path = url.path
        return url

    def notice(self, message: str) -> None:
        """Security notices (a newly trusted server) always go to stderr."""
        print(f"fluxctl: {message}", file=sys.stderr)

    def on_retry(self, exc: FluxError, pause: float) -> None:
        if not (self.quiet or self.json):
            print(f"fluxctl: {exc.message}; retrying in {pause:.1f} s", file=sys.stderr)

    def wants_progress(self) -> bool:
        wanted = self.show_progress
        if wanted is None:
            wanted = sys.stderr.isatty() and not (self.quiet or self.json)
        return wanted

    def progress_bar(self, label: str) -> ProgressBar:
        from .progress import ProgressBar  # noqa: PLC0415

        return ProgressBar(label, enabled=self.wants_progress())

    def execute(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `work` on uvloop; report a failure and exit with its code."""
        from fluxio.runner import run  # noqa: PLC0415
        from fluxproto import FluxError  # noqa: PLC0415

        # What the command imported lives for the whole process: keep the collector off it,
        # so collections during a transfer only look at the few objects a chunk creates.
        gc.freeze()
        coro = work()
        try:
            return run(coro)
        except FluxError as exc:
            self.fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            coro.close()  # interrupted before the loop ran it: no "never awaited" warning
            self.fail(self.interrupted, EXIT_INTERRUPTED)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Work done before the event loop: failures and Ctrl-C end the command as in it."""
        from fluxproto import FluxError  # noqa: PLC0415

        try:
            yield
        except FluxError as exc:
            self.stack.close()
            self.fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            self.stack.close()
            self.fail(self.interrupted, EXIT_INTERRUPTED)

    def fail(self, message: str, code: int, details: dict[str, Any] | None = None) -> NoReturn:
        """End the command: `message` on stderr (and `details` in the JSON object), `code`."""
        decided()
        if self.json:
            out = {"ok": False, "op": self.op, "path": self.path, "error": message}
            print(json.dumps({**out, **(details or {}), "exit_code": code}))
        print(f"fluxctl: {message}", file=sys.stderr)
        # SystemExit, not typer.Exit: typer would hand 130 back as if it had caught a Ctrl-C.
        sys.exit(code)

    def done(self, result: dict[str, Any], human: str | None) -> None:
        decided()
        if self.json:
            print(json.dumps({**result, **self.extra}))
        elif human and not self.quiet:
            print(human + self.limited())

    def limited(self) -> str:
        """What a transfer's summary adds when --bwlimit held it back."""
        if "bwlimit" not in self.extra:
            return ""
        from .progress import human_bytes  # noqa: PLC0415

        return f" (--bwlimit {human_bytes(self.extra['bwlimit'])}/s)"


def _transfer_summary(r: TransferResult) -> str:
    from .progress import human_bytes  # noqa: PLC0415

    verb = "sent" if r.op == "send" else "received"
    rate = r.moved / r.seconds / 1e6 if r.seconds > 0 else 0.0
    lanes = ""
    if len(r.lanes) > 1:  # which lane carried how much
        lanes = " (" + ", ".join(f"{k} {human_bytes(v)}" for k, v in r.lanes.items()) + ")"
    return (
        f"{verb} {r.path}: {human_bytes(r.size)} in {r.seconds:.2f} s ({rate:.1f} MB/s on the "
        f"wire{lanes}), {human_bytes(r.skipped)} already there, {r.retries} retries, "
        f"xxh128:{r.digest.hex()}"
    )


@app.command()
def send(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="LOCAL... URL",
            help="Local file (- reads standard input), or with -r folders; then flux://HOST/PATH.",
            show_default=False,
        ),
    ],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    io_timeout: IoTimeout = 60.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
    recursive: Recursive = False,
    dereference: Dereference = False,
    delete: DeleteExtra = False,
    dry_run: DryRun = False,
    exclude: Exclude = None,
    checksum: Checksum = False,
    verbose: Verbose = False,
    lanes: Lanes = 1,
    bw: BwLimit = None,
) -> None:
    """Send LOCAL to the server; run it again after any failure to resume (for `-`, with
    the same data on standard input). With -r, make PATH a copy of each LOCAL folder."""
    from .retry import Retrier  # noqa: PLC0415
    from .upload import STDIN, Upload, open_source  # noqa: PLC0415

    *sources, url = args
    run = Run("send", url, json_, quiet, progress)
    connect = Connect(
        ca, pin, transport, retry_for, insecure_plaintext, token, io_timeout, chunk_size, lanes, bw
    )
    flags = TreeFlags(recursive, dereference, delete, dry_run, exclude, checksum, verbose)
    clitree.check_arguments(run, flags, sources, "LOCAL")
    if recursive:
        clitree.send_tree(run, sources, url, connect, flags)
        return
    (local,) = sources
    if local == STDIN:
        run.interrupted = "interrupted; pipe the same data to the same command to resume"
    with run.guard():  # outside the event loop: reading standard input may block, Ctrl-C not
        target = run.parse_url(url)
        source = run.stack.enter_context(open_source(local, target))

    async def work() -> TransferResult:
        opts = run.options(target, connect)
        upload = Upload(source.path, target, opts, name=source.name, mode=source.mode)
        with run.progress_bar(f"send {source.label}") as bar:
            upload.progress = bar.update
            return await upload.run(Retrier(target, opts, run.on_retry, bar.lanes))

    with run.stack:
        result = run.execute(work)
    run.path = result.path
    run.done(result.to_json(), _transfer_summary(result))


@app.command()
def recv(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="URL... LOCAL",
            help="flux://HOST/PATH (with -r, several), then the local file or directory to "
            "write; - writes standard output.",
            show_default=False,
        ),
    ],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    io_timeout: IoTimeout = 60.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
    recursive: Recursive = False,
    dereference: Dereference = False,
    delete: DeleteExtra = False,
    dry_run: DryRun = False,
    exclude: Exclude = None,
    checksum: Checksum = False,
    verbose: Verbose = False,
    lanes: Lanes = 1,
    bw: BwLimit = None,
) -> None:
    """Receive PATH from the server into LOCAL; run it again after any failure to resume.
    With -r, make LOCAL a copy of each folder PATH."""
    *urls, local = args
    url = urls[0] if urls else local
    run = Run("recv", url, json_, quiet, progress)
    connect = Connect(
        ca, pin, transport, retry_for, insecure_plaintext, token, io_timeout, chunk_size, lanes, bw
    )
    flags = TreeFlags(recursive, dereference, delete, dry_run, exclude, checksum, verbose)
    clitree.check_arguments(run, flags, urls, "URL")
    if recursive:
        clitree.recv_tree(run, urls, local, connect, flags)
        return
    to_stdout = local == "-"
    if to_stdout and json_:
        run.fail("--json and - (standard output) both write to stdout; choose one", EXIT_USAGE)
    if to_stdout and 1 in cliutil.CLOSED_AT_START:
        run.fail("standard output is closed: nowhere to write", EXIT_USAGE)
    from .download import Download, StreamDownload  # noqa: PLC0415
    from .retry import Retrier  # noqa: PLC0415

    async def work() -> TransferResult:
        source = run.parse_url(url)
        opts = run.options(source, connect)
        with run.progress_bar(f"recv {source.name}") as bar:
            retrier = Retrier(source, opts, run.on_retry, bar.lanes)
            if to_stdout:
                return await StreamDownload(source, sys.stdout.buffer, opts, bar.update).run(
                    retrier
                )
            return await Download(source, local, opts, bar.update).run(retrier)

    result = run.execute(work)
    # With `-` the file went to stdout: the summary goes to stderr, if anywhere.
    if to_stdout:
        if not quiet:
            print(_transfer_summary(result) + run.limited(), file=sys.stderr)
        return
    run.done(result.to_json(), _transfer_summary(result))


def _simple(run: Run, url: str, connect: Connect, request: Callable[..., Awaitable[T]]) -> T:
    from .retry import Retrier  # noqa: PLC0415

    async def work() -> T:
        target = run.parse_url(url)
        opts = run.options(target, connect)
        return await Retrier(target, opts, run.on_retry).run(
            lambda ch, n: request(ch, target.path, opts.io_timeout)
        )

    return run.execute(work)


@app.command("ls")
def ls(
    url: RemoteURL,
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    io_timeout: IoTimeout = 60.0,
    insecure_plaintext: Plaintext = False,
    token: Token = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Everything under PATH, named from it.")
    ] = False,
) -> None:
    """List a directory (or show one file) on the server; with -r, the whole tree under it."""
    from .ops import entry_json, list_entries  # noqa: PLC0415

    run = Run("ls", url, json_, quiet)
    connect = Connect(ca, pin, transport, retry_for, insecure_plaintext, token, io_timeout)
    # Only the JSON output shows digests: the plain one costs the server no manifest reads.
    listing = functools.partial(list_entries, recursive=recursive, digests=json_)
    entries: list[Entry] = _simple(run, url, connect, listing)
    lines = [
        f"{'d' if e.kind == 'dir' else 'l' if e.kind == 'link' else '-'}{e.mode:04o} "
        f"{e.size:>14} {_mtime(e.mtime_ns)} {e.name}{'/' if e.kind == 'dir' else ''}"
        + (f" -> {e.target}" if e.target is not None else "")
        for e in entries
    ]
    run.done(
        {"ok": True, "op": "ls", "path": run.path, "entries": [entry_json(e) for e in entries]},
        "\n".join(lines) if lines else None,
    )


@app.command("stat")
def stat_(
    url: RemoteURL,
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    io_timeout: IoTimeout = 60.0,
    insecure_plaintext: Plaintext = False,
    token: Token = None,
) -> None:
    """Show size, time, mode and digest of a path on the server."""
    from .ops import entry_json, stat_entry  # noqa: PLC0415
    from .progress import human_bytes  # noqa: PLC0415

    run = Run("stat", url, json_, quiet)
    connect = Connect(ca, pin, transport, retry_for, insecure_plaintext, token, io_timeout)
    entry: Entry = _simple(run, url, connect, stat_entry)
    info = entry_json(entry)
    shown = {**info, "size": f"{entry.size} ({human_bytes(entry.size)})"}
    shown["mtime"] = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(entry.mtime_ns / 1e9))
    human = "\n".join(f"{k}: {v}" for k, v in {"path": run.path, **shown}.items() if v is not None)
    run.done({"ok": True, "op": "stat", "path": run.path, **info}, human)


@app.command("rm")
def rm(
    url: RemoteURL,
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    io_timeout: IoTimeout = 60.0,
    insecure_plaintext: Plaintext = False,
    token: Token = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Delete a folder and all it holds.")
    ] = False,
) -> None:
    """Delete a file or link on the server; with -r, a folder and everything in it."""
    from .ops import remove  # noqa: PLC0415

    run = Run("rm", url, json_, quiet)
    connect = Connect(ca, pin, transport, retry_for, insecure_plaintext, token, io_timeout)
    if recursive:
        with run.guard():
            _refuse_root(run.parse_url(url).path)
    count: int = _simple(run, url, connect, functools.partial(remove, recursive=recursive))
    human = f"deleted {run.path}: {count} entries" if recursive else None
    run.done({"ok": True, "op": "rm", "path": run.path, "deleted": count}, human)


@app.command("verify")
def verify(
    local: Annotated[
        Path, typer.Argument(metavar="LOCAL", help="The local file.", show_default=False)
    ],
    url: RemoteURL,
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    io_timeout: IoTimeout = 60.0,
    insecure_plaintext: Plaintext = False,
    token: Token = None,
) -> None:
    """Compare LOCAL with PATH on the server by their digests, moving no file data: exit 0
    when identical, 3 when they differ (the line says how, and which chunks)."""
    import asyncio  # noqa: PLC0415

    from fluxproto import IntegrityError  # noqa: PLC0415

    from .retry import Retrier  # noqa: PLC0415
    from .verify import Verdict, check_local, hash_local, remote_digests  # noqa: PLC0415

    run = Run("verify", url, json_, quiet)
    connect = Connect(ca, pin, transport, retry_for, insecure_plaintext, token, io_timeout)
    with run.guard():
        target = run.parse_url(url)
        check_local(local)

    async def work() -> Verdict:
        opts = run.options(target, connect)
        theirs = await Retrier(target, opts, run.on_retry).run(
            lambda ch, n: remote_digests(ch, target.path, opts)
        )
        mine = await asyncio.to_thread(hash_local, local, theirs.chunk_size)
        return Verdict(local, target.path, mine, theirs)

    verdict = run.execute(work)
    if not verdict.same:
        run.fail(verdict.message(), IntegrityError.exit_code, verdict.to_json())
    run.done({"ok": True, "op": "verify", "path": run.path, **verdict.to_json()}, verdict.message())


def _refuse_root(path: str) -> None:
    from fluxio.pathrules import normalize  # noqa: PLC0415
    from fluxproto import ConfigError  # noqa: PLC0415

    if not normalize(path):
        raise ConfigError("rm -r refuses to delete the root of the server")


app.command("completion")(clishell.completion)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"fluxctl {__version__}")


def _mtime(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


def main() -> NoReturn:
    """Console-script entry point; a traceback only with FLUX_DEBUG=1."""
    # Libraries' own log lines (aioquic's "quic" logger; asyncio's, where uvloop says a loop
    # a Ctrl-C interrupted while it was being made was never closed) would break the one-line
    # error rule.
    for name in ("quic", "asyncio"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    run_app(app, "fluxctl", json_errors=True)
