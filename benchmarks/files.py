"""Test files: sizes, random content, free-space checks, hashing, and their filesystem."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Protocol

import xxhash

from . import BenchError

BLOCK = 8 * 1024 * 1024
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`256M`, `1G`, `64MiB`, `4GiB`, `1048576` (binary units) to bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 256M, 1G, 4GiB)")
    return int(match[1]) * _UNITS[match[2].upper()]


def format_size(size: int) -> str:
    """Bytes as the largest exact binary unit: 1073741824 -> '1 GiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit[0]]
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def stream_digest(readable: Readable) -> str:
    """xxh3-128 of what `readable` gives up to its end, read BLOCK at a time, as
    `xxh3-128:HEX`."""
    hasher = xxhash.xxh3_128()
    while block := readable.read(BLOCK):
        hasher.update(block)
    return f"xxh3-128:{hasher.hexdigest()}"


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's content, as `xxh3-128:HEX`."""
    with path.open("rb", buffering=0) as f:
        return stream_digest(f)


def make_random_file(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random (incompressible) bytes, fsync them; returns the digest."""
    rng, hasher = random.Random(seed), xxhash.xxh3_128()
    with path.open("wb", buffering=0) as f:
        left = size
        while left:
            block = rng.randbytes(min(BLOCK, left))
            hasher.update(block)
            f.write(block)
            left -= len(block)
        os.fsync(f.fileno())  # so writeback of the source does not overlap the timed transfers
    return f"xxh3-128:{hasher.hexdigest()}"


def check_space(directory: Path, needed: int) -> None:
    """Raise BenchError if `directory`'s filesystem has fewer than `needed` free bytes."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BenchError(
            f"not enough space in {directory}: need {needed / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free (choose another place with --dir)"
        )


def filesystem(path: Path) -> tuple[str, str]:
    """(filesystem type, mount point) of the mount holding `path`, from /proc/self/mountinfo."""
    target, best = str(path.resolve()), ("unknown", "/")
    best_len = -1
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        mount = fields.split()[4].encode().decode("unicode_escape")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best_len:  # later mounts shadow earlier ones
            best, best_len = (tail.split()[0], mount), len(mount)
    return best
