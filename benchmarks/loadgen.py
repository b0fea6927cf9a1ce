"""Many concurrent uploads through the fluxctl client library: the load of scenario `concurrency`.

    python -m benchmarks.loadgen URL_DIR FILE --pin FP --clients N [--procs P] [--transport T]

P worker processes (default: one per core) each run their share of N uploads at once on one
uvloop event loop; every upload is a full `fluxctl send` session (its own connection, TLS
handshake, retries as configured) of FILE to URL_DIR/c<i>.bin. Workers start together at a
shared instant. Prints one JSON object: completed, failed (with the first errors), each upload's
seconds, and the wall time from the start to the last completion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from fluxctl.connect import ClientOptions
from fluxctl.trust import TrustPolicy
from fluxctl.upload import Upload
from fluxctl.url import FluxURL
from fluxproto import FluxError

START_DELAY = 1.0  # seconds for every worker to import and be ready before the common start


async def _uploads(args: argparse.Namespace, indices: list[int], start_at: float) -> list[Any]:
    opts = ClientOptions(
        trust=TrustPolicy(pin=args.pin),
        transport=args.transport,
        retry_for=args.retry_for,
    )
    base = FluxURL.parse(args.url_dir.rstrip("/") + "/")
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def one(i: int) -> dict[str, Any]:
        url = FluxURL(base.host, base.port, f"{base.path}c{i}.bin")
        began = time.time()
        try:
            result = await Upload(Path(args.file), url, opts).run()
        except (FluxError, OSError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "end": time.time()}
        end = time.time()
        return {"ok": True, "seconds": end - began, "retries": result.retries, "end": end}

    return list(await asyncio.gather(*(one(i) for i in indices)))


def _worker(args: argparse.Namespace, indices: list[int], start_at: float) -> list[Any]:
    return uvloop.run(_uploads(args, indices, start_at))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("url_dir", help="flux://HOST:PORT/DIR/")
    parser.add_argument("file", help="the file every client sends")
    parser.add_argument("--pin", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--transport", default="tcp", choices=("tcp", "quic", "auto"))
    parser.add_argument("--retry-for", type=float, default=60.0)
    args = parser.parse_args(argv)
    procs = max(1, min(args.procs, args.clients))
    shares = [list(range(p, args.clients, procs)) for p in range(procs)]
    start_at = time.time() + START_DELAY
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = [
            r for part in pool.starmap(_worker, [(args, s, start_at) for s in shares]) for r in part
        ]
    ok = [r for r in results if r["ok"]]
    errors = Counter(r["error"] for r in results if not r["ok"])
    wall = max(r["end"] for r in results) - start_at
    report = {
        "clients": args.clients,
        "procs": procs,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": dict(errors.most_common(5)),
        "wall_seconds": wall,
        "upload_seconds": sorted(r["seconds"] for r in ok),
        "retries": sum(r["retries"] for r in ok),
    }
    print(json.dumps(report))
    return 0 if not report["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
