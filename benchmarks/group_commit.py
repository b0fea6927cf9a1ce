"""Small files through fluxd's storage layer alone (no daemon, no network): files/s committed one
by one (each upload durable on its own, as protocol v1 does) against group commit
(`LocalStorage.commit_many`, one barrier per group) with each barrier, and the reference of
PLATFORM.md: plain write + fdatasync + rename per file, no fluxd at all.

    .venv/bin/python -m benchmarks.group_commit [--files 10000] [--size 4096] [--group 500]

Modes alternate within each repetition; medians are reported with their ratio to one by one.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from fluxd.storage import LocalStorage
from fluxproto import chunk_digest
from fluxproto.digest import FileHasher

MODES = ("one-by-one", "group-fsync", "group-syncfs", "raw-fdatasync")


def _digest(data: bytes) -> bytes:
    hasher = FileHasher()
    hasher.update(data)
    return hasher.digest()


def _raw(root: Path, files: list[bytes]) -> float:
    """The reference: each file written to a temporary, fdatasynced, renamed into place."""
    for d in range(100):
        (root / f"d{d:02}").mkdir()
    started = time.monotonic()
    for i, data in enumerate(files):
        tmp, final = root / f"d{i % 100:02}" / f".t{i}", root / f"d{i % 100:02}" / f"f{i:06}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    return time.monotonic() - started


def _run(mode: str, where: Path, files: list[bytes], group: int) -> float:
    """Seconds to store `files` under a fresh root in `where` in `mode`."""
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        if mode == "raw-fdatasync":
            return _raw(Path(tmp), files)
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
