"""Two network namespaces, `server` and `client`, and the devices that join them.

With a relay: each namespace gets a TUN device whose other end is a file descriptor held by the
relay process, which forwards (and mistreats) every packet between them. Without one (`lan`): a
veth pair with a tbf rate limit on both ends. Addresses live in 10.77.0.0/16: the server is
10.77.0.1, the client 10.77.0.2; the relay's NAT rebinding moves the client to 10.77.E.2. Nothing
is routed anywhere else, so nothing leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_IP = "10.77.0.1"
CLIENT_IP = "10.77.0.2"
PREFIX = 16
MTU = 1500
TUN_QUEUE = 10000  # packets

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class TopologyError(Exception):
    """A namespace or device could not be set up (not root, no /dev/net/tun, no iproute2)."""


def sh(argv: Sequence[str]) -> None:
    """Run a setup command; raise TopologyError with its message when it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise TopologyError(f"{argv[0]} not found (benchmarks/setup installs it)") from exc
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit {done.returncode}"
        raise TopologyError(f"`{' '.join(argv)}`: {why}")


ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


def wait_listening(
    prefix: Sequence[str], port: int, proc: subprocess.Popen[Any], timeout: float
) -> bool:
    """Whether `proc` came to listen on TCP `port` within `timeout` seconds, asked through `ss`
    in the namespace `prefix` runs commands in (empty: this one); False once it has exited."""
    argv = [*prefix, "ss", "-ltnH", f"sport = :{port}"]
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip():
            return True
        time.sleep(0.05)
    return False


@dataclass
class Namespaces:
    """The pair of namespaces; `exec_prefix(side)` runs a command inside one."""

    server: str
    client: str
    #: The host's list of congestion controls a namespace may choose, to put back at the end.
    _allowed_before: str | None = None

    @classmethod
    def create(cls, tag: str, tcp_cc: str | None = None) -> Namespaces:
        """Both namespaces with loopback up; `tcp_cc` sets their default TCP congestion
        control (what scp and rsync get; fluxd picks its own per socket)."""
        ns = cls(server=f"fluxbench-{tag}-srv", client=f"fluxbench-{tag}-cli")
        ns.destroy()  # leftovers of a run that was killed
        try:
            if tcp_cc:
                ns._allow(tcp_cc)
            for name in (ns.server, ns.client):
                sh(["ip", "netns", "add", name])
                sh(["ip", "-n", name, "link", "set", "lo", "up"])
                if tcp_cc:
                    setting = f"net.ipv4.tcp_congestion_control={tcp_cc}"
                    sh(["ip", "netns", "exec", name, "sysctl", "-qw", setting])
        except BaseException:
            ns.destroy()
            raise
        return ns

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.server if side == "server" else self.client]

    def _allow(self, tcp_cc: str) -> None:
        # A namespace other than the host's may only default to a congestion control the host
        # allows (the kernel says EPERM otherwise); extended for the run, restored by destroy().
        try:
            allowed = ALLOWED_CC.read_text().split()
            if tcp_cc not in allowed:
                self._allowed_before = " ".join(allowed)
                ALLOWED_CC.write_text(" ".join([*allowed, tcp_cc]))
        except OSError as exc:
            raise TopologyError(f"{ALLOWED_CC}: {exc.strerror}") from None

    def destroy(self) -> None:
        for name in (self.server, self.client):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if self._allowed_before is not None:
            with contextlib.suppress(OSError):
                ALLOWED_CC.write_text(self._allowed_before)
            self._allowed_before = None


def open_tun(name: str) -> int:
    """A TUN device (IP packets, no extra header) in this namespace, as a non-blocking fd."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        raise TopologyError(f"/dev/net/tun: {exc.strerror} (root needed)") from exc
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise TopologyError(f"TUNSETIFF {name}: {exc.strerror}") from exc
    return fd


def _address(ns: str, dev: str, ip: str) -> None:
    sh(["ip", "-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", dev])
    sh(["ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "up"])


def tun_pair(ns: Namespaces, tag: str) -> tuple[int, int]:
    """TUN devices in both namespaces; returns (server_fd, client_fd) for the relay."""
    fds: list[int] = []
    try:
        for side, ip in (("server", SERVER_IP), ("client", CLIENT_IP)):
            dev = f"fx{side[0]}{tag}"[:15]
            fd = open_tun(dev)
            fds.append(fd)
            target = ns.server if side == "server" else ns.client
            sh(["ip", "link", "set", dev, "netns", target])  # the fd keeps working after the move
            _address(target, dev, ip)
            # Room for the bursts the kernel hands a relay that is briefly off the CPU: at the
            # default 500 packets a busy machine dropped packets no link setting asked for.
            sh(["ip", "-n", target, "link", "set", dev, "txqueuelen", str(TUN_QUEUE)])
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


def veth_pair(ns: Namespaces, tag: str, rate_bits: float) -> None:
    """A veth pair between the namespaces, each end limited to `rate_bits` by tbf."""
    srv, cli = f"fv{tag}s"[:15], f"fv{tag}c"[:15]
    sh(
        [
            "ip",
            "link",
            "add",
            srv,
            "netns",
            ns.server,
            "type",
            "veth",
            "peer",
            cli,
            "netns",
            ns.client,
        ]
    )
    rate = f"{int(rate_bits)}bit"
    # A burst of at least one timer tick's worth at this rate, and a ~1 ms queue beside it.
    burst = max(MTU * 10, int(rate_bits / 8 / 1000) * 2)
    for name, dev, ip in ((ns.server, srv, SERVER_IP), (ns.client, cli, CLIENT_IP)):
        _address(name, dev, ip)
        sh(
            [
                "ip",
                "netns",
                "exec",
                name,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                str(burst),
                "latency",
                "5ms",
            ]
        )
