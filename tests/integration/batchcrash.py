"""A process that commits one group of small files through LocalStorage, for the kill-9 harness
(test_crash.py): `python batchcrash.py ROOT COUNT SEED`. It recovers the root first, as fluxd
does at start, and prints "committed" once every file of the group is at its path."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import xxhash

from fluxd.storage import LocalStorage
from fluxproto import chunk_digest

CS = 4096


def payload(index: int, seed: int) -> bytes:
    """File `index` of generation `seed`: 1 to 3 chunks."""
    return random.Random(index * 1000 + seed).randbytes(1000 + index * 500)


def path(index: int) -> str:
    return f"d{index % 3}/f{index}"


def main(root: Path, count: int, seed: int) -> None:
    storage = LocalStorage(root)
    storage.recover()
    group = []
    for i in range(count):
        data = payload(i, seed)
        up = storage.open_upload(path(i), len(data), CS, 0o644, grouped=True)
        pieces = [data[o : o + CS] for o in range(0, len(data), CS)]
        up.write_chunks([(n, chunk_digest(p), p) for n, p in enumerate(pieces)], durable=False)
        group.append((up, bytes(xxhash.xxh3_128_digest(data))))
    results = storage.commit_many(group)
    assert results == [None] * count, results
    print("committed")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
