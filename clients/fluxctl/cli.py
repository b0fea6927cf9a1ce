"""The `fluxctl` command: parse options, call the client library, render progress and results.

No transfer logic lives here (see upload.py, download.py, ops.py). Every failure becomes one line
on stderr and a distinct exit code; with `--json`, exactly one JSON object goes to stdout.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvloop

from fluxd.config import parse_size
from fluxd.transports.quic import DEFAULT_DATAGRAM_SIZE
from fluxproto import MAX_CHUNK, MIN_CHUNK, ConfigError, FluxError
from fluxproto.errors import EXIT_OTHER, EXIT_USAGE

from . import __version__
from .connect import ClientOptions
from .download import Download
from .ops import entry_json, list_entries, remove, stat_entry
from .progress import ProgressBar, human_bytes
from .results import TransferResult
from .retry import Retrier
from .tokens import resolve_token
from .trust import TrustPolicy
from .upload import Upload
from .url import FluxURL

T = TypeVar("T")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
        help="auto (QUIC, TCP if UDP is blocked), quic or tcp.",
    ),
]
ChunkSize = Annotated[
    str | None, typer.Option("--chunk-size", help="Chunk size for new transfers, e.g. 4M.")
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object with the result.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary.")]
RetryFor = Annotated[
    float, typer.Option("--retry-for", help="Keep reconnecting for this many seconds.")
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


@dataclass
class Run:
    """One command invocation: options, output mode, and the error → exit code boundary."""

    op: str
    path: str
    json: bool
    quiet: bool
    show_progress: bool | None
    extra: dict[str, Any] = field(default_factory=dict)

    def options(
        self,
        url: FluxURL,
        ca: Path | None,
        pin: str | None,
        transport: str,
        chunk_size: str | None,
        retry_for: float,
        plaintext: bool,
        token: str | None,
    ) -> ClientOptions:
        size = parse_size(chunk_size) if chunk_size is not None else None
        if size is not None and not MIN_CHUNK <= size <= MAX_CHUNK:
            raise ConfigError(f"--chunk-size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        return ClientOptions(
            trust=None if plaintext else TrustPolicy.from_options(ca, pin),
            transport=transport,
            chunk_size=size,
            retry_for=retry_for,
            insecure_plaintext=plaintext,
            quic_datagram_size=_datagram_size_from_env(),
            on_new_host=self.notice,
            token=resolve_token(token, url.host, url.port),
        )

    def notice(self, message: str) -> None:
        """Security notices (a newly trusted server) always go to stderr."""
        print(f"fluxctl: {message}", file=sys.stderr)

    def on_retry(self, exc: FluxError, pause: float) -> None:
        if not (self.quiet or self.json):
            print(f"fluxctl: {exc.message}; retrying in {pause:.1f} s", file=sys.stderr)

    def progress_bar(self, label: str) -> ProgressBar:
        wanted = self.show_progress
        if wanted is None:
            wanted = sys.stderr.isatty() and not (self.quiet or self.json)
        return ProgressBar(label, enabled=wanted)

    def execute(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `work` on uvloop; report a failure and exit with its code."""
        try:
            return uvloop.run(work())
        except FluxError as exc:
            self.fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            self.fail("interrupted; run the same command again to resume", 130)

    def fail(self, message: str, code: int) -> NoReturn:
        if self.json:
            out = {"ok": False, "op": self.op, "path": self.path, "error": message}
            print(json.dumps({**out, "exit_code": code}))
        print(f"fluxctl: {message}", file=sys.stderr)
        raise typer.Exit(code)

    def done(self, result: dict[str, Any], human: str | None) -> None:
        if self.json:
            print(json.dumps(result))
        elif human and not self.quiet:
            print(human)


def _datagram_size_from_env() -> int:
    """FLUX_QUIC_DATAGRAM_SIZE: larger QUIC datagrams for paths known to carry them."""
    text = os.environ.get("FLUX_QUIC_DATAGRAM_SIZE", "")
    if not text:
        return DEFAULT_DATAGRAM_SIZE
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"FLUX_QUIC_DATAGRAM_SIZE is not a number: {text!r}") from None


def _transfer_summary(r: TransferResult) -> str:
    verb = "sent" if r.op == "send" else "received"
    rate = r.moved / r.seconds / 1e6 if r.seconds > 0 else 0.0
    return (
        f"{verb} {r.path}: {human_bytes(r.size)} in {r.seconds:.2f} s ({rate:.1f} MB/s on the "
        f"wire), {human_bytes(r.skipped)} already there, {r.retries} retries, "
        f"xxh128:{r.digest.hex()}"
    )


@app.command()
def send(
    local: Annotated[Path, typer.Argument(help="Local file to send.")],
    url: Annotated[str, typer.Argument(help="flux://HOST:PORT/PATH")],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
) -> None:
    """Send LOCAL to the server; run it again after any failure to resume."""
    run = Run("send", url, json_, quiet, progress)

    async def work() -> TransferResult:
        target = FluxURL.parse(url)
        run.path = target.path
        opts = run.options(
            target, ca, pin, transport, chunk_size, retry_for, insecure_plaintext, token
        )
        with run.progress_bar(f"send {local.name}") as bar:
            upload = Upload(local, target, opts, bar.update)
            return await upload.run(Retrier(target, opts, run.on_retry))

    result = run.execute(work)
    run.done(result.to_json(), _transfer_summary(result))


@app.command()
def recv(
    url: Annotated[str, typer.Argument(help="flux://HOST:PORT/PATH")],
    local: Annotated[str, typer.Argument(help="Local file or directory to write.")],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
) -> None:
    """Receive PATH from the server into LOCAL; run it again after any failure to resume."""
    run = Run("recv", url, json_, quiet, progress)

    async def work() -> TransferResult:
        source = FluxURL.parse(url)
        run.path = source.path
        opts = run.options(
            source, ca, pin, transport, chunk_size, retry_for, insecure_plaintext, token
        )
        with run.progress_bar(f"recv {source.name}") as bar:
            download = Download(source, local, opts, bar.update)
            return await download.run(Retrier(source, opts, run.on_retry))

    result = run.execute(work)
    run.done(result.to_json(), _transfer_summary(result))


def _simple(
    run: Run,
    url: str,
    opts_args: tuple[Any, ...],
    request: Callable[[Any, str, float], Awaitable[T]],
) -> T:
    async def work() -> T:
        target = FluxURL.parse(url)
        run.path = target.path
        opts = run.options(target, *opts_args)
        return await Retrier(target, opts, run.on_retry).run(
            lambda ch, n: request(ch, target.path, opts.io_timeout)
        )

    return run.execute(work)


@app.command("ls")
def ls(
    url: Annotated[str, typer.Argument(help="flux://HOST:PORT/PATH")],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
) -> None:
    """List a directory (or show one file) on the server."""
    run = Run("ls", url, json_, quiet, progress)
    args = (ca, pin, transport, chunk_size, retry_for, insecure_plaintext, token)
    entries = _simple(run, url, args, list_entries)
    lines = [
        f"{'d' if e.kind == 'dir' else '-'}{e.mode:04o} {e.size:>14} "
        f"{_mtime(e.mtime_ns)} {e.name}{'/' if e.kind == 'dir' else ''}"
        for e in entries
    ]
    run.done(
        {"ok": True, "op": "ls", "path": run.path, "entries": [entry_json(e) for e in entries]},
        "\n".join(lines) if lines else None,
    )


@app.command("stat")
def stat_(
    url: Annotated[str, typer.Argument(help="flux://HOST:PORT/PATH")],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
) -> None:
    """Show size, time, mode and digest of a path on the server."""
    run = Run("stat", url, json_, quiet, progress)
    args = (ca, pin, transport, chunk_size, retry_for, insecure_plaintext, token)
    entry = _simple(run, url, args, stat_entry)
    info = entry_json(entry)
    shown = {**info, "size": f"{entry.size} ({human_bytes(entry.size)})"}
    shown["mtime"] = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(entry.mtime_ns / 1e9))
    human = "\n".join(f"{k}: {v}" for k, v in {"path": run.path, **shown}.items() if v is not None)
    run.done({"ok": True, "op": "stat", "path": run.path, **info}, human)


@app.command("rm")
def rm(
    url: Annotated[str, typer.Argument(help="flux://HOST:PORT/PATH")],
    ca: Ca = None,
    pin: Pin = None,
    transport: Transport = "auto",
    chunk_size: ChunkSize = None,
    json_: Json = False,
    quiet: Quiet = False,
    retry_for: RetryFor = 300.0,
    insecure_plaintext: Plaintext = False,
    progress: ShowProgress = None,
    token: Token = None,
) -> None:
    """Delete a file on the server."""
    run = Run("rm", url, json_, quiet, progress)
    args = (ca, pin, transport, chunk_size, retry_for, insecure_plaintext, token)
    _simple(run, url, args, remove)
    run.done({"ok": True, "op": "rm", "path": run.path}, None)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"fluxctl {__version__}")


def _mtime(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


def main() -> NoReturn:
    """Console-script entry point; a traceback only with FLUX_DEBUG=1."""
    # Everything imported so far lives for the whole process: keep the collector off it, so
    # collections during a transfer only look at the few objects a chunk creates.
    gc.freeze()
    # Libraries' own log lines (aioquic's "quic" logger) would break the one-line error rule.
    logging.getLogger("quic").addHandler(logging.NullHandler())
    logging.getLogger("quic").propagate = False
    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of exiting.
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # bad arguments or options
        message = f"{exc.format_message()} (see fluxctl --help)"
        if "--json" in sys.argv:
            print(json.dumps({"ok": False, "error": message, "exit_code": EXIT_USAGE}))
        print(f"fluxctl: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        print("fluxctl: interrupted", file=sys.stderr)
        sys.exit(130)
    except FluxError as exc:
        print(f"fluxctl: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("FLUX_DEBUG"):
            raise
        print(f"fluxctl: internal error: {exc!r} (FLUX_DEBUG=1 shows a traceback)", file=sys.stderr)
        sys.exit(EXIT_OTHER)
    sys.exit(code if isinstance(code, int) else 0)
