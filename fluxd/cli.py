"""The `fluxd` command: serve, scrub, certs, token. Parses options, maps errors to exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import resource
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fluxio.cliutil import CONTEXT, run_app
from fluxio.parsing import is_loopback, parse_duration
from fluxio.runner import run
from fluxio.tls import CertPaths, cert_fingerprint, server_ssl_context
from fluxproto import ConfigError
from fluxproto.errors import EXIT_INTEGRITY

from . import __version__, log
from .auth.registry import TokenRegistry
from .auth.scopes import parse_scopes, subject_root
from .auth.tokens import SigningKey
from .certs import ensure_certs, init_certs
from .config import ServerConfig, data_dir, load_config
from .server import serve as run_server
from .storage import Backend, LocalStorage, Maintenance

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings=CONTEXT,
    pretty_exceptions_enable=False,
    help="fluxd: the flux file-transfer daemon.",
)
certs_app = typer.Typer(no_args_is_help=True, help="Create and inspect TLS certificates.")
app.add_typer(certs_app, name="certs")
token_app = typer.Typer(no_args_is_help=True, help="Issue, list and revoke access tokens.")
app.add_typer(token_app, name="token")

ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML config file mirroring the flags.")
]
CertsDir = Annotated[
    Path | None, typer.Option("--certs", help="Certificate and token-key directory.")
]


@app.command()
def serve(
    root: Annotated[
        Path | None, typer.Option(help="Directory to serve (default DATA/files).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:7070).")
    ] = None,
    certs: CertsDir = None,
    config: ConfigFile = None,
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
    anonymous: Annotated[
        bool | None,
        typer.Option(
            "--anonymous/--no-anonymous",
            help="Serve clients without a token (default: only on loopback).",
        ),
    ] = None,
    access_log: Annotated[
        str | None, typer.Option(help="Access log file (JSON lines); - for stderr.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    admin_listen: Annotated[
        str | None,
        typer.Option(
            help='HOST:PORT of metrics, health and status (default 127.0.0.1:7071; "" off).'
        ),
    ] = None,
) -> None:
    """Serve files under ROOT over TCP+TLS 1.3 and QUIC (UDP, the same port number) until
    SIGTERM or SIGINT."""

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
            "log_level": log_level,
            "access_log": access_log,
            "auth": {"anonymous": anonymous},
            "limits": {"idle_timeout": idle_timeout},
            "admin": {"listen": admin_listen},
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
    storage = open_storage(cfg, create=True)
    _raise_fd_limit(cfg.limits.connections)
    _run_loop(run_server(cfg, storage, ssl_context, paths, fingerprint))


@app.command()
def scrub(
    root: Annotated[
        Path | None, typer.Option(help="Directory to check (default DATA/files).")
    ] = None,
    config: ConfigFile = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Verify every committed file against its chunk digests; exit 3 if any is corrupt."""
    cfg = load_config(config, {"root": root})
    maintenance: Maintenance = open_storage(cfg, create=False, wait=False)
    report = maintenance.scrub()
    if json_:
        typer.echo(json.dumps(dataclasses.asdict(report)))
    else:
        for problem in report.corrupt:
            typer.echo(f"corrupt: {problem}")
        mib = report.bytes / (1 << 20)
        typer.echo(
            f"checked {report.checked} files ({mib:.1f} MiB): {len(report.corrupt)} corrupt, "
            f"{report.stale} manifests of files changed outside fluxd dropped"
        )
    if report.corrupt:
        raise typer.Exit(EXIT_INTEGRITY)


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


def parse_ttl(text: str) -> int:
    """A token lifetime: `30d`, `12h`, `90m`, `3600` (seconds), at least one second.

    Raises:
        ConfigError: not a duration, or zero.
    """
    seconds = int(parse_duration(text))
    if seconds < 1:
        raise ConfigError(f"not a duration: {text!r} (examples: 30d, 12h, 90m, 3600)")
    return seconds


def _token_config(config: Path | None, certs: Path | None) -> ServerConfig:
    return load_config(config, {"certs": certs})


@token_app.command("issue")
def token_issue(
    sub: Annotated[str, typer.Option("--sub", help="Subject: who the token is for.")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="VERB:/PATH, repeatable (read, write, list, delete, admin)."),
    ],
    ttl: Annotated[str, typer.Option(help="Lifetime: 30d, 12h, 90m or seconds.")] = "30d",
    config: ConfigFile = None,
    certs: CertsDir = None,
) -> None:
    """Print a new token for SUB with the given scopes (the key is created on first use)."""
    cfg = _token_config(config, certs)
    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not sub or len(sub) > 256 or not sub.isprintable():
        raise ConfigError("--sub must be 1 to 256 printable characters")
    if cfg.auth.root:
        subject_root(cfg.auth.root, sub)  # refuse now a subject the daemon would refuse later
    key = SigningKey.load_or_create(cfg.certs)
    token, claims = key.issue(
        sub, scopes, parse_ttl(ttl), cfg.auth.audience or key.audience, time.time()
    )
    TokenRegistry(cfg.certs).record(claims)
    typer.echo(token)


@token_app.command("list")
def token_list(
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigFile = None,
    certs: CertsDir = None,
) -> None:
    """List the tokens issued here, with their state (active, expired, revoked)."""
    registry = TokenRegistry(_token_config(config, certs).certs)
    revoked, now = registry.revoked(), time.time()
    for rec in registry.issued():
        state = "revoked" if rec["jti"] in revoked else "active"
        if state == "active" and float(rec.get("exp", 0)) < now:
            state = "expired"
        if json_:
            typer.echo(json.dumps({**rec, "state": state}))
            continue
        exp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(rec.get("exp", 0))))
        typer.echo(f"{rec['jti']}  {state:<8} {exp}Z  {rec.get('sub')}  {rec.get('scope')}")


@token_app.command("revoke")
def token_revoke(
    jti: Annotated[
        str,
        typer.Argument(
            help="The token id (jti) to revoke; put -- before an id that starts with -."
        ),
    ],
    external: Annotated[
        bool,
        typer.Option(
            "--external", help="The token comes from an external issuer (not in `token list`)."
        ),
    ] = False,
    config: ConfigFile = None,
    certs: CertsDir = None,
) -> None:
    """Revoke a token; a running daemon refuses it (and drops its connections) within 5 s."""
    registry = TokenRegistry(_token_config(config, certs).certs)
    if jti in registry.revoked():
        typer.echo(f"{jti} was already revoked")
        return
    if not external and not any(rec["jti"] == jti for rec in registry.issued()):
        raise ConfigError(
            f"no token {jti!r} was issued here (see `fluxd token list`); "
            "for a token of an external issuer, add --external"
        )
    registry.revoke(jti)
    typer.echo(f"revoked {jti}")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"fluxd {__version__}")


#: Longest wait between two attempts to reach an object store that does not answer at start.
STORE_RETRY_MAX = 30.0


def open_storage(cfg: ServerConfig, *, create: bool, wait: bool = True) -> Backend:
    """The storage `[storage]` names: the local root (created if `create`), or the S3 bucket,
    checked. A store that does not answer is waited for (with `wait`), with a log line per
    attempt.

    Raises:
        ConfigError: a root that cannot be one; no such bucket, credentials refused, a store
        without conditional writes. Unavailable: the store does not answer (without `wait`).
    """
    if cfg.storage.backend == "local":
        return LocalStorage(_root_dir(cfg.root, create=create))
    from fluxproto.errors import Unavailable  # noqa: PLC0415

    # Imported here: boto3 costs a third of a second at start, which a local root need not pay.
    from .storage.s3 import S3Storage  # noqa: PLC0415
    from .storage.s3_store import S3Settings  # noqa: PLC0415

    c = cfg.storage
    assert c.bucket is not None
    settings = S3Settings(
        c.bucket, c.endpoint, c.prefix, c.region, c.path_style, lease_ttl=c.lease_ttl
    )
    storage = S3Storage(settings)
    delay = 1.0
    while True:
        try:
            storage.check()
            log.event("store-checked", store=f"s3://{c.bucket}", checksums=storage.checksums)
            return storage
        except Unavailable as exc:
            if not wait:
                raise
            log.event("store-unreachable", logging.WARNING, detail=exc.message, retry_in=delay)
            time.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX)


def _root_dir(root: Path, *, create: bool) -> Path:
    """The storage root, created first if asked; a path that cannot be one is a usage error.

    Raises:
        ConfigError: `root` (or one of its parents) is a file, missing, or not accessible.
    """
    try:
        if create:
            root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            raise ConfigError(f"root {root} {what}")
    except FileExistsError:
        raise ConfigError(f"root {root} is not a directory") from None
    except NotADirectoryError:
        raise ConfigError(f"root {root}: a parent of it is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"root {root}: {exc.strerror or exc}") from None
    return root


def _raise_fd_limit(connections: int) -> None:
    """Let the process hold `connections` sockets (plus files): raise the soft fd limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections * 2 + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    run(coro)


def main() -> NoReturn:
    """Console-script entry point: one line on stderr and a distinct exit code per failure."""
    # Everything imported so far lives for the whole process: keep the collector off it, so
    # collections during a transfer only look at the few objects a chunk creates.
    gc.freeze()
    run_app(app, "fluxd")
