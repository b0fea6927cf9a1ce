"""Small files through fluxd's storage layer alone (no daemon, no network): files/s committed one
by one (each upload durable on its own, as protocol v1 does) against group commit
(`LocalStorage.commit_many`, one barrier per group) with each barrier.

    .venv/bin/python -m benchmarks.group_commit [--files 10000] [--size 4096] [--group 500]

Modes alternate within each repetition; medians are reported with their ratio to one by one.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from fluxd.storage import LocalStorage
from fluxproto import chunk_digest
from fluxproto.digest import FileHasher

MODES = ("one-by-one", "group-fsync", "group-syncfs")


def _digest(data: bytes) -> bytes:
    hasher = FileHasher()
    hasher.update(data)
    return hasher.digest()


def _run(mode: str, where: Path, files: list[bytes], group: int) -> float:
    """Seconds to store `files` under a fresh root in `where` in `mode`."""
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        barrier = "syncfs" if mode == "group-syncfs" else "fsync"
        storage = LocalStorage(Path(tmp), barrier=barrier)
        size = len(files[0])
        names = [f"d{i % 100:02}/f{i:06}" for i in range(len(files))]
        started = time.monotonic()
        for first in range(0, len(files), group if mode != "one-by-one" else 1):
            batch = range(first, min(first + (group if mode != "one-by-one" else 1), len(files)))
            ups = []
            for i in batch:
                grouped = mode != "one-by-one"
                up = storage.open_upload(names[i], size, max(4096, size), 0o644, grouped=grouped)
                chunk = [(0, chunk_digest(files[i]), files[i])]
                if mode == "one-by-one":
                    up.write_chunks(chunk)
                    up.commit(_digest(files[i]))
                    up.close()
                    continue
                up.write_chunks(chunk, durable=False)
                ups.append((up, _digest(files[i])))
            if ups:
                results = storage.commit_many(ups)
                assert results == [None] * len(ups), results
                for up, _ in ups:
                    up.close()
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group_commit")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--group", type=int, default=500, help="uploads per commit_many")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    rng = random.Random(1)
    files = [rng.randbytes(args.size) for _ in range(args.files)]
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        for mode in order:
            rate = args.files / _run(mode, args.dir, files, args.group)
            rates[mode].append(rate)
            print(f"rep {rep + 1} {mode:13} {rate:8.0f} files/s", flush=True)
    base = statistics.median(rates["one-by-one"])
    for mode in MODES:
        median = statistics.median(rates[mode])
        print(f"{mode:13} median {median:8.0f} files/s  ({median / base:.1f}x one by one)")


if __name__ == "__main__":
    main()
