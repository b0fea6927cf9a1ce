"""The `fluxd` command: `serve` and `certs`. Parses options and maps errors to exit codes."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import uvloop

from fluxproto import ConfigError, FluxError
from fluxproto.errors import EXIT_OTHER, EXIT_USAGE

from . import __version__, log
from .certs import ensure_certs, init_certs
from .config import data_dir, is_loopback, load_config
from .server import serve as run_server
from .storage import LocalStorage
from .tls import CertPaths, cert_fingerprint, server_ssl_context

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fluxd: the flux file-transfer daemon.",
)
certs_app = typer.Typer(no_args_is_help=True, help="Create and inspect TLS certificates.")
app.add_typer(certs_app, name="certs")


@app.command()
def serve(
    root: Annotated[
        Path | None, typer.Option(help="Directory to serve (default DATA/files).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:7070).")
    ] = None,
    certs: Annotated[
        Path | None, typer.Option(help="Certificate directory (default DATA/certs).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML config file mirroring these flags.")
    ] = None,
    insecure_plaintext: Annotated[
        bool | None, typer.Option("--insecure-plaintext", help="No TLS (loopback only).")
    ] = None,
    tcp: Annotated[bool | None, typer.Option("--tcp/--no-tcp", help="Serve TCP+TLS.")] = None,
    quic: Annotated[
        bool | None, typer.Option("--quic/--no-quic", help="Serve QUIC on the same UDP port.")
    ] = None,
    quic_datagram_size: Annotated[
        int | None, typer.Option(help="Largest QUIC datagram (default 1452).")
    ] = None,
    window: Annotated[str | None, typer.Option(help="Receive window, e.g. 32M.")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Seconds before idle close.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Serve files under ROOT over TCP with TLS 1.3 until SIGTERM or SIGINT."""

    cfg = load_config(
        config,
        {
            "root": root,
            "listen": listen,
            "certs": certs,
            "insecure_plaintext": insecure_plaintext,
            "tcp": tcp,
            "quic": quic,
            "quic_datagram_size": quic_datagram_size,
            "window": window,
            "idle_timeout": idle_timeout,
            "log_level": log_level,
        },
    )
    log.setup(cfg.log_level)
    host, _ = cfg.address
    ssl_context, fingerprint, paths = None, None, None
    if cfg.insecure_plaintext:
        if not is_loopback(host):
            raise ConfigError(f"--insecure-plaintext is refused for non-loopback address {host}")
        log.event("plaintext", logging.WARNING, detail="TLS is off: for loopback testing only")
    else:
        paths = ensure_certs(cfg.certs)
        ssl_context = server_ssl_context(paths)
        fingerprint = cert_fingerprint(paths.server_cert)
    cfg.root.mkdir(parents=True, exist_ok=True)
    storage = LocalStorage(cfg.root)
    _run_loop(run_server(cfg, storage, ssl_context, paths, fingerprint))


@certs_app.command("init")
def certs_init(
    dir: Annotated[
        Path | None, typer.Option("--dir", help="Where to write (default DATA/certs).")
    ] = None,
    host: Annotated[
        list[str] | None, typer.Option(help="Extra DNS name or IP for the certificate.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing certificates.")] = False,
) -> None:
    """Write a CA (ca.pem) and a server certificate and key signed by it."""

    paths = init_certs(dir or data_dir() / "certs", host or (), force=force)
    typer.echo(f"wrote {paths.ca_cert} and {paths.server_cert}")
    typer.echo(f"server certificate fingerprint: {cert_fingerprint(paths.server_cert)}")


@certs_app.command("fingerprint")
def certs_fingerprint(
    dir: Annotated[
        Path | None, typer.Option("--dir", help="Certificate directory (default DATA/certs).")
    ] = None,
) -> None:
    """Print the server certificate's fingerprint, for clients to --pin."""

    typer.echo(cert_fingerprint(CertPaths.in_dir(dir or data_dir() / "certs").server_cert))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"fluxd {__version__}")


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    uvloop.run(coro)


def main() -> NoReturn:
    """Console-script entry point: one line on stderr and a distinct exit code per failure."""
    # Everything imported so far lives for the whole process: keep the collector off it, so
    # collections during a transfer only look at the few objects a chunk creates.
    gc.freeze()
    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of exiting.
        code = app(standalone_mode=False)
    except FluxError as exc:
        _fail(exc.message, exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # bad arguments or options
        _fail(f"{exc.format_message()} (see fluxd --help)", EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except Exception as exc:  # the one place every failure becomes an exit code
        if os.environ.get("FLUX_DEBUG"):
            raise
        _fail(f"internal error: {exc!r} (set FLUX_DEBUG=1 for a traceback)", EXIT_OTHER)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    print(f"fluxd: {message}", file=sys.stderr)
    sys.exit(code)
