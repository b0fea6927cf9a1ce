"""The emulator checks itself: measured delay, rate and loss against what the link was given.

- delay: `ping` round trips from the client namespace (median of 20) against the configured RTT;
- rate: an iperf3 UDP stream offered at 1.25x the rate; what arrives, against rate x (1 - loss);
- loss: an iperf3 UDP stream at half the rate (no queue drops); lost datagrams against the
  configured loss.

Each must be within 10 %. A loss count is binomial, so where 10 % of the expected count is less
than three standard deviations of it (few losses expected: 0.1 % of 20 000 datagrams is 20 +- 4.5),
the check allows three standard deviations instead and says so. Windows of blackholes and address
changes are not checked here (their times are exact by construction: see the unit tests).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from dataclasses import dataclass

from .emulator import Emulator
from .model import LinkSpec
from .topology import wait_listening

TOLERANCE = 0.10
PINGS = 20
RATE_SECONDS = 3
LOSS_SECONDS = 4
DATAGRAM = 1200  # iperf3 UDP payload: below the 1500-byte MTU with headers
IPERF_PORT = 5201  # iperf3's default
LISTEN_TIMEOUT = 5.0
LAN_RTT_CEILING = 0.002  # a link with no delay must not add more than this


@dataclass
class Check:
    name: str
    expected: float
    measured: float
    tolerance: float  # absolute
    unit: str
    note: str = ""

    @property
    def ok(self) -> bool:
        return abs(self.measured - self.expected) <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{self.name}: expected {self.expected:.4g} {self.unit}, measured "
            f"{self.measured:.4g} (allowed +-{self.tolerance:.3g}){self.note}: {verdict}"
        )


def _run(argv: list[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv[4:])}` failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def check_delay(emu: Emulator, spec: LinkSpec) -> Check:
    ping = ["ping", "-n", "-c", str(PINGS), "-i", "0.05", "-W", "2", emu.server_ip]
    out = _run([*emu.exec_prefix("client"), *ping], timeout=PINGS * 0.05 + 10)
    rtts = [float(m) / 1000 for m in re.findall(r"time=([0-9.]+) ms", out)]
    if not rtts:
        raise RuntimeError("no ping came back")
    measured = statistics.median(rtts)
    if spec.rtt == 0:
        return Check("rtt", 0.0, measured, LAN_RTT_CEILING, "s", " (no delay configured)")
    return Check("rtt", spec.rtt, measured, TOLERANCE * spec.rtt, "s")


def _iperf(emu: Emulator, bits: float, seconds: int) -> dict[str, float]:
    server_argv = ["iperf3", "-s", "-1", "-B", emu.server_ip]
    client_argv = ["iperf3", "-c", emu.server_ip, "-u", "-b", str(int(bits)),
                   "-l", str(DATAGRAM), "-t", str(seconds), "--json"]  # fmt: skip
    quiet = subprocess.DEVNULL
    server = subprocess.Popen(
        [*emu.exec_prefix("server"), *server_argv], stdout=quiet, stderr=quiet
    )
    try:
        if not wait_listening(emu.exec_prefix("server"), IPERF_PORT, server, LISTEN_TIMEOUT):
            raise RuntimeError("iperf3 -s did not start listening in the server namespace")
        out = _run([*emu.exec_prefix("client"), *client_argv], timeout=seconds + 30)
    finally:
        server.wait(timeout=30)
    end = json.loads(out)["end"]["sum"]
    return {
        "bits": float(end["bits_per_second"]) * (1 - float(end["lost_percent"]) / 100),
        "packets": float(end["packets"]),
        "lost": float(end["lost_packets"]),
    }


def check_rate(emu: Emulator, spec: LinkSpec) -> Check:
    assert spec.rate is not None
    got = _iperf(emu, spec.rate * 1.25, RATE_SECONDS)
    expected = spec.rate * (1 - spec.expected_loss)
    return Check("rate", expected / 1e6, got["bits"] / 1e6, TOLERANCE * expected / 1e6, "Mbit/s")


def check_loss(emu: Emulator, spec: LinkSpec) -> Check:
    bits = (spec.rate or 200e6) / 2
    got = _iperf(emu, bits, LOSS_SECONDS)
    expected = got["packets"] * spec.expected_loss
    sigma = math.sqrt(got["packets"] * spec.expected_loss * (1 - spec.expected_loss))
    tolerance, note = TOLERANCE * expected, ""
    if 3 * sigma > tolerance:
        tolerance, note = 3 * sigma, f" (3 sigma of a binomial count over {got['packets']:.0f})"
    return Check("lost datagrams", expected, got["lost"], tolerance, "", note)


def run_selftest(emu: Emulator) -> list[Check]:
    """Every check that applies to the link (rate only where one is set)."""
    spec = emu.emulated.spec
    checks = [check_delay(emu, spec)]
    if spec.rate is not None:
        checks.append(check_rate(emu, spec))
    if emu.emulated.relay:
        checks.append(check_loss(emu, spec))
    return checks
