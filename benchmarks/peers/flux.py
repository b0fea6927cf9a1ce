"""A fluxd daemon in throwaway directories, and `fluxctl send` into it over TCP, QUIC, or both
(`auto`: lanes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import BenchError
from ..files import file_digest
from ..measure import Run, run_measured
from .base import LOOPBACK, Placement, Service, Transfer
from .process import Event, ServerProcess, json_report

REPO = Path(__file__).resolve().parents[2]
TRANSPORTS = ("tcp", "quic", "auto")
QUIC_FLAG = "--quic-datagram-size"  # fluxd serve; the client reads FLUX_QUIC_DATAGRAM_SIZE
QUIC_ENV = "FLUX_QUIC_DATAGRAM_SIZE"
# fluxd logs one `listening` event per listener; a QUIC one follows the TCP one at once.
QUIC_LISTENING_WAIT = 2.0


def flux_binary(name: str) -> str:
    """`.venv/bin/NAME` of this checkout, else next to the running Python, else on PATH."""
    for candidate in (REPO / ".venv" / "bin" / name, Path(sys.prefix) / "bin" / name):
        if candidate.exists():
            return str(candidate)
    if found := shutil.which(name):
        return found
    raise BenchError(f"{name} is not installed (run `make test` or `pip install -e .` first)")


def fluxd_has_quic() -> bool:
    """Whether this fluxd takes `--quic-datagram-size`, i.e. has the QUIC transport."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")  # help unwrapped, plain
    argv = [flux_binary("fluxd"), "serve", "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    return QUIC_FLAG in done.stdout + done.stderr


def _isolated_env(tmp: Path) -> dict[str, str]:
    """Environment whose config, data, state and cache directories are all inside `tmp`, and
    in which Python may cache bytecode: an installed copy has its .pyc files, and compiling
    every module at each start would be timed as fluxctl's (~0.1-0.2 s a run here)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[var] = str(tmp / var.removeprefix("XDG_").removesuffix("_HOME").lower())
    env["FLUXD_HOME"] = str(tmp / "fluxd-home")
    return env


def _port(event: Event) -> int:
    return int(str(event["address"]).rpartition(":")[2])


class FluxPeer(Service):
    """`fluxd serve` for the life of the context; `fluxctl send` into ROOT/bench/.

    `transport` is passed to `fluxctl send --transport` ("auto": fluxctl's default, lanes of TCP
    and QUIC, which it reports as such). With "quic", `quic_datagram_size` (if
    given) goes to the daemon as --quic-datagram-size and to the client as
    FLUX_QUIC_DATAGRAM_SIZE, so both ends use the same datagram size. `placement` puts the
    daemon and the client on loopback or into an emulated link's namespaces; `tool` names the
    peer in reports. The daemon serves anonymous clients even on an emulated link's non-loopback
    address (the namespaces are the harness's own), unless `token`: then fluxctl sends a token
    the daemon issued, as a user would (an anonymous client is known by its address, so a lane
    that comes back from a new address is someone else to the daemon). `lanes` goes to
    `fluxctl send --lanes`; `limits` become the daemon's `[limits]` table and `storage` its
    `[storage]` table (none: files under `root`). `daemon_env` is added to the daemon's
    environment only (store credentials, FLUX_CRASH_AT). `certs`: another node's certificate
    and token-key directory to share (one CA, one token key), else one of its own.
    `send_options` go to every `fluxctl send` (e.g. --chunk-size) and `serve_options` to
    `fluxd serve` (e.g. --window). `ca`: the client trusts the CA (`--ca`, the same command for
    every node sharing it) instead of pinning this daemon. `http`: the daemon also serves HTTPS
    downloads (`[http] listen`) on `http_port`.
    """

    def __init__(
        self,
        root: Path,
        transport: str = "tcp",
        quic_datagram_size: int | None = None,
        placement: Placement = LOOPBACK,
        tool: str = "fluxctl",
        strict: bool = True,
        limits: dict[str, int | str] | None = None,
        lanes: int = 1,
        token: bool = False,
        storage: dict[str, str | int | bool] | None = None,
        daemon_env: dict[str, str] | None = None,
        certs: Path | None = None,
        send_options: Sequence[str] = (),
        ca: bool = False,
        serve_options: Sequence[str] = (),
        http: bool = False,
    ) -> None:
        if transport not in TRANSPORTS:
            raise BenchError(f"unknown fluxctl transport {transport!r}: choose {TRANSPORTS}")
        if quic_datagram_size is not None and transport != "quic":
            raise BenchError("a QUIC datagram size needs transport quic")
        self.root, self.transport, self.quic_datagram_size = root, transport, quic_datagram_size
        self.placement, self.tool = placement, tool
        #: Strict: the file must go over exactly once (no retry resent a chunk). Emulated links
        #: with address changes make TCP reconnect; there, resent bytes are reported instead.
        self.strict = strict
        self.limits = limits or {}
        self.lanes, self.token = lanes, token
        self.storage, self.daemon_env = storage or {}, daemon_env or {}
        self.send_options, self.ca = list(send_options), ca
        self.serve_options, self.http = list(serve_options), http
        self._certs = certs
        self.port, self.http_port, self.fingerprint = 0, 0, ""
        self._tmp: Path | None = None
        self._env: dict[str, str] = {}
        self._server: ServerProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment fluxctl runs with against this daemon (its isolated directories)."""
        return dict(self._env)

    @property
    def certs(self) -> Path:
        """The certificate and token-key directory this daemon serves with."""
        assert self._tmp is not None or self._certs is not None, "fluxd is not running"
        return self._certs or Path(self._tmp or "") / "certs"

    @property
    def pid(self) -> int:
        assert self._server is not None, "fluxd is not running"
        return self._server.pid

    @property
    def peak_resettable(self) -> bool:
        return self._server.peak_resettable if self._server else False

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-fluxd-"))
        self._env = _isolated_env(self._tmp)
        argv = [
            *self.placement.server_prefix, flux_binary("fluxd"), "serve", "--root",
            str(self.root), "--listen", f"{self.placement.host}:0",
            "--certs", str(self.certs), *self.serve_options,
        ]  # fmt: skip
        if self.token:
            self._env["FLUX_TOKEN"] = self._issue_token()
        else:
            argv.append("--anonymous")
        http: dict[str, str | int | bool] = (
            {"listen": f"{self.placement.host}:0"} if self.http else {}
        )
        tables = {"limits": self.limits, "storage": self.storage, "http": http}
        if any(tables.values()):
            config = self._tmp / "fluxd.toml"
            config.write_text(toml_tables(tables))
            argv += ["--config", str(config)]
        if self.quic_datagram_size is not None:
            argv += [QUIC_FLAG, str(self.quic_datagram_size)]
            self._env[QUIC_ENV] = str(self.quic_datagram_size)
        self._server = ServerProcess("fluxd", argv, self._env | self.daemon_env)
        event = self._server.start()
        self.port = _port(event)
        self.fingerprint = str(event.get("fingerprint") or "")
        if self.http:  # logged before `listening`, so already read
            https = self._server.wait_listening(_is_http, 0)
            if https is None:
                raise BenchError(f"fluxd did not report `listening-http`:\n{self.log_tail()}")
            self.http_port = _port(https)
        if self.transport == "quic":  # its own event if fluxd logs one, else the TCP port
            quic = self._server.wait_listening(_is_quic, QUIC_LISTENING_WAIT)
            self.port = _port(quic) if quic else self.port

    def _issue_token(self) -> str:
        assert self._tmp is not None
        argv = [flux_binary("fluxd"), "token", "issue", "--sub", "bench", "--scope", "read:/",
                "--scope", "write:/", "--scope", "list:/", "--scope", "delete:/",
                "--certs", str(self.certs)]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, env=self._env, timeout=60, check=False
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise BenchError(f"fluxd token issue failed: {done.stderr.strip()}")
        return done.stdout.strip().splitlines()[-1]

    def _stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self) -> str:
        return self._server.log_tail() if self._server else ""

    def dest(self, name: str) -> Path:
        return self.root / "bench" / name

    def url(self, name: str, server: str | None = None) -> str:
        """flux://HOST:PORT/bench/NAME on this daemon; `server`: another HOST:PORT that leads
        to it (a name whose nodes include it)."""
        return f"flux://{server or f'{self.placement.host}:{self.port}'}/bench/{name}"

    def trust(self) -> list[str]:
        """How fluxctl trusts this daemon: its pin, or (`ca`) the CA of its certs directory."""
        return ["--ca", str(self.certs / "ca.pem")] if self.ca else ["--pin", self.fingerprint]

    def send_argv(
        self, src: Path, name: str, recursive: bool = False, server: str | None = None
    ) -> list[str]:
        """`fluxctl send [-r] SRC flux://HOST:PORT/bench/NAME` trusting this daemon (`server`:
        as `url`'s)."""
        send = ["send", "-r"] if recursive else ["send"]
        argv = [*self.placement.client_prefix, flux_binary("fluxctl"), *send, str(src),
                self.url(name, server), *self.trust(), "--transport", self.transport, "--json",
                "--quiet", *self.send_options]  # fmt: skip
        return argv + (["--lanes", str(self.lanes)] if self.lanes != 1 else [])

    def client(self, *args: str, timeout: float = 600.0) -> dict[str, Any]:
        """Run `fluxctl ARGS --json` trusting this daemon (e.g. recv, rm); its JSON report.

        Raises:
            BenchError: fluxctl failed or printed no JSON object.
        """
        argv = [*self.placement.client_prefix, flux_binary("fluxctl"), *args, *self.trust()]
        run = run_measured([*argv, "--json"], env=self._env, timeout=timeout)
        return json_report(f"fluxctl {args[0]}", run)

    def measure(self, argv: list[str], timeout: float) -> tuple[Run, int, bool]:
        """Run any client command against this daemon (see ServerProcess.measure_client)."""
        assert self._server is not None, "fluxd is not running"
        return self._server.measure_client(argv, self._env, timeout)

    def check_copy(self, name: str, size: int, digest: str | None, scratch: Path) -> None:
        """Check the copy through the daemon (`fluxctl stat`; with `digest`, `fluxctl recv`
        into `scratch` and hash that): whatever its storage, the copy is what it serves.

        Raises:
            BenchError: another size or digest, or fluxctl failed.
        """
        if digest is None:
            got = self.client("stat", self.url(name)).get("size")
        else:
            back = scratch / f"{name}.back"
            try:
                got = self.client("recv", self.url(name), str(back)).get("bytes")
                copy = file_digest(back)
            finally:
                back.unlink(missing_ok=True)
            if copy != digest:
                raise BenchError(f"{self.tool}: {name} differs from the source ({copy})")
        if got != size:
            raise BenchError(f"{self.tool}: {name} has {got} bytes, expected {size}")

    def remove_copy(self, name: str) -> None:
        self.client("rm", self.url(name))

    def died_at(self, wait: float = 0.0) -> float | None:
        """time.monotonic() when the daemon exited, if it has, waiting up to `wait` seconds."""
        return self._server.died_at(wait) if self._server else None

    def send(self, src: Path, name: str, timeout: float | None = None) -> Transfer:
        """fluxctl send `src`; the daemon's peak RSS is VmHWM, reset before the transfer."""
        assert self._server is not None, "fluxd is not running"
        size = src.stat().st_size
        argv, limit = self.send_argv(src, name), timeout or max(600.0, size / 5e6)
        cpu = self._server.cpu_seconds()
        run, server_kib, reset = self.measure(argv, limit)
        cpu = self._server.cpu_seconds() - cpu
        report = json_report(self.tool, run)
        if not report.get("ok") or report.get("bytes") != size:
            raise BenchError(f"fluxctl did not send the whole file: {report}")
        if self.strict and report.get("sent") != size:
            raise BenchError(f"fluxctl did not send the whole file once (sent != bytes): {report}")
        if report.get("transport", self.transport) != self.transport:
            raise BenchError(f"fluxctl used {report['transport']}, not {self.transport}: {report}")
        used = report.get("quic_datagram_size", self.quic_datagram_size)  # if fluxctl says
        if self.transport == "quic" and used != self.quic_datagram_size:
            raise BenchError(f"fluxctl used {used}-byte datagrams, not {self.quic_datagram_size}")
        details = {
            "report": report,
            "transport": self.transport,
            "quic_datagram_size": self.quic_datagram_size,
            "server_peak_since": "transfer" if reset else "daemon start",
            "server_cpu_seconds": round(cpu, 3),
        }
        return Transfer.from_run(self.tool, size, run, server_kib, details)


def toml_tables(tables: dict[str, dict[str, str | int | bool]]) -> str:
    """TOML for flat tables of strings, integers and booleans (JSON spells them as TOML
    does); empty tables are left out."""
    out = []
    for name, values in tables.items():
        if values:
            out += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()), ""]
    return "\n".join(out)


def _is_http(event: Event) -> bool:
    return event.get("event") == "listening-http"


def _is_quic(event: Event) -> bool:
    return "quic" in str(event.get("transport", "")).lower()
