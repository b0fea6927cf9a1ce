"""Shared downloads over loopback (PROTOCOL.md 9.1): one file fetched with the client library's
`Download.attempt_over` over one TCP session, two TCP sessions, and TCP + QUIC, alternated.

    python -m benchmarks.shared_download --size 512M --reps 3

fluxctl's CLI does not open several connections yet, so the client runs in this process (the
sessions are connected before the clock starts; the time is the attempt: META, chunks, the
whole-file digest and the rename). fluxd runs as a subprocess with its defaults. Prints one
line per repetition and the medians; the notes in RESULTS.md are written by hand from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from fluxctl.connect import ClientOptions, connect
from fluxctl.download import Download
from fluxctl.session import ClientSession
from fluxctl.trust import TrustPolicy
from fluxctl.url import FluxURL
from fluxio.parsing import parse_size

from .peers.flux import flux_binary

MODES = {"tcp": ("tcp",), "tcp+tcp": ("tcp", "tcp"), "tcp+quic": ("tcp", "quic")}


def start_fluxd(home: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    argv = [flux_binary("fluxd"), "serve", "--root", str(home / "root"), "--certs"]
    argv += [str(home / "certs"), "--listen", "127.0.0.1:0"]
    env = dict(os.environ, FLUXD_HOME=str(home / "fluxd-home"))
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = json.loads(raw)
        if line.get("event") == "listening":
            port = int(line["address"].rsplit(":", 1)[1])
            return proc, port, str(line["fingerprint"])
    raise RuntimeError("fluxd exited before listening")


async def one(port: int, fingerprint: str, mode: str, out: Path) -> tuple[float, list[int]]:
    trust = TrustPolicy.from_options(None, fingerprint)
    url = FluxURL("127.0.0.1", port, "/big.bin")
    sessions: list[ClientSession] = []
    try:
        for transport in MODES[mode]:
            opts = ClientOptions(trust=trust, transport=transport)
            sessions.append(ClientSession(await connect(url, opts)))
        dl = Download(url, out, ClientOptions(trust=trust))
        started = time.perf_counter()
        await dl.attempt_over(sessions)
        seconds = time.perf_counter() - started
        return seconds, [s.router.counts.get("received CHUNK", 0) for s in sessions]
    finally:
        for s in sessions:
            await s.close()
            s.ch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    size = parse_size(args.size)
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        home = Path(tmp)
        (home / "root").mkdir()
        (home / "root" / "big.bin").write_bytes(os.urandom(size))
        proc, port, fingerprint = start_fluxd(home)
        try:
            for rep in range(args.reps):
                for mode in MODES:
                    out = home / f"out-{mode}.bin"
                    out.unlink(missing_ok=True)
                    os.sync()
                    seconds, chunks = uvloop.run(one(port, fingerprint, mode, out))
                    assert out.stat().st_size == size
                    results[mode].append(seconds)
                    rate = size / seconds / 1e6
                    print(f"rep {rep} {mode:9} {seconds:7.3f} s {rate:7.1f} MB/s chunks {chunks}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"load average at end: {os.getloadavg()}")
    report(results, size)


def report(results: dict[str, list[float]], size: int) -> None:
    base = statistics.median(results["tcp"])
    for mode, times in results.items():
        med = statistics.median(times)
        line: dict[str, Any] = {
            "mode": mode,
            "median_s": round(med, 3),
            "min_s": round(min(times), 3),
            "max_s": round(max(times), 3),
            "median_MBps": round(size / med / 1e6, 1),
            "vs_one_tcp": round(base / med, 2),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
