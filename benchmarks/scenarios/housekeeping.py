"""Scenario `housekeeping`: what scrub, recovery at start and garbage collection cost.

Scrub reads every stored file and checks its chunk digests: its rate is set against `dd` of
the same files into /dev/null in the same 4 MiB blocks (the read ceiling), both from a cold
page cache, alternated.
Recovery and collection are timed over a staging area of many abandoned uploads. All through
the storage library in this process (no daemon, no network): these are disk-bound jobs.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fluxd.storage import LocalStorage, Maintenance
from fluxproto import chunk_digest
from fluxproto.digest import FileHasher

from ..files import format_size, parse_size
from ..machine import describe, load_average
from ..measure import Stats
from ..report import markdown_table, publish
from .common_report import machine_paragraph
from .workspace import Workspace

HELP = "fluxd scrub against dd of the same files; recovery and GC of many staged uploads"
CS = 4 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=parse_size, help="bytes stored in all [1G; quick: 256M]")
    parser.add_argument("--staged", type=int, help="abandoned uploads [500; quick: 100]")
    parser.add_argument("--reps", type=int, default=3, help="scrub/dd repetitions [3]")
    parser.add_argument("--quick", action="store_true", help="256 MiB, 100 uploads, 1 rep")
    parser.add_argument("--dir", type=Path, help="where files live [/var/tmp]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")


def _drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _store(storage: LocalStorage, name: str, size: int, rng: random.Random) -> None:
    data = rng.randbytes(size)
    up = storage.open_upload(name, size, CS, 0o644)
    pieces = [(i, data[o : o + CS]) for i, o in enumerate(range(0, size, CS))]
    up.write_chunks([(i, chunk_digest(p), p) for i, p in pieces])
    hasher = FileHasher()
    hasher.update(data)
    up.commit(hasher.digest())
    up.close()


def _dd(paths: list[str]) -> None:
    """Read the files as scrub does, in 4 MiB blocks, and do nothing with the bytes."""
    for path in paths:
        cmd = ["dd", f"if={path}", "of=/dev/null", "bs=4M", "status=none"]
        subprocess.run(cmd, check=True)


def _timed(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    size = args.size or parse_size("256M" if args.quick else "1G")
    staged = args.staged or (100 if args.quick else 500)
    reps = 1 if args.quick else args.reps
    rng = random.Random(5)
    data: dict[str, Any] = {"scenario": "housekeeping", "size": size, "staged": staged}
    with Workspace(args.dir) as ws:
        data["machine"] = describe(ws.base)
        root = ws.path / "root"
        root.mkdir()
        storage = LocalStorage(root)
        maintenance: Maintenance = storage  # what the daemon's jobs and `fluxd scrub` call
        files = 16
        for i in range(files):
            _store(storage, f"f{i:02d}.bin", size // files, rng)
        paths = sorted(str(p) for p in root.glob("f*.bin"))
        cold = True
        scrub_s: list[float] = []
        dd_s: list[float] = []
        for rep in range(reps):
            print(f"scrub and dd, repetition {rep + 1}/{reps}", file=sys.stderr)
            cold &= _drop_caches()
            scrub_s.append(_timed(maintenance.scrub))
            cold &= _drop_caches()
            dd_s.append(_timed(lambda: _dd(paths)))
        data["cold_cache"] = cold
        data["scrub_mb_s"] = [size / s / 1e6 for s in scrub_s]
        data["dd_mb_s"] = [size / s / 1e6 for s in dd_s]
        print(f"{staged} abandoned uploads", file=sys.stderr)
        for i in range(staged):
            up = storage.open_upload(f"staged/{i}.bin", 8 * CS, CS, 0o644)
            piece = rng.randbytes(CS)
            up.write_chunks([(0, chunk_digest(piece), piece)])
            up.close()
        data["recover_s"] = _timed(maintenance.recover)
        started = time.monotonic()
        data["collected"] = maintenance.collect(0.0, time.time() + 1).uploads
        data["collect_s"] = time.monotonic() - started
        data["machine"]["load_at_end"] = load_average()
    publish("housekeeping", render(data), data, not args.no_results)
    return 0


def render(data: dict[str, Any]) -> str:
    scrub, dd = Stats.of(data["scrub_mb_s"]), Stats.of(data["dd_mb_s"])
    rows = [
        ["fluxd scrub (read + xxh3-128 per chunk + whole file)", *_cells(scrub)],
        ["dd bs=4M of=/dev/null (the read ceiling)", *_cells(dd)],
    ]
    cache = "cold page cache (dropped before each run)" if data["cold_cache"] else "WARM cache"
    return (
        f"## Housekeeping\n\n{machine_paragraph(data['machine'], 'fluxd storage library')}\n\n"
        f"Scrub of {format_size(data['size'])} in 16 files against `dd` of the same files, "
        f"{len(data['scrub_mb_s'])} repetitions alternated, {cache}:\n\n"
        + markdown_table(["reader", "median MB/s", "min MB/s", "max MB/s"], rows)
        + f"\n\nscrub / dd: **{scrub.median / dd.median:.2f}x**.\n\n"
        f"Recovery at start over {data['staged']} abandoned staged uploads (journal tails "
        f"checked and cut, nothing read from the data files): {data['recover_s']:.3f} s. "
        f"Garbage collection removing {data['collected']} of them: {data['collect_s']:.3f} s."
    )


def _cells(s: Stats) -> list[str]:
    return [f"{s.median:.0f}", f"{s.min:.0f}", f"{s.max:.0f}"]
