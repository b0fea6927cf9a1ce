"""Folder trees of test files: a deterministic layout and content, and one digest of a tree on
disk, so that a copy is checked whole (names, sizes, bytes) before its time counts."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .files import format_size

KIB = 1024
MIB = 1024 * 1024
FILES_PER_FOLDER = 100  # the tree: 10,000 small files in 100 folders
SMALL_PER_BIG = 1000  # ... plus 10 big files


@dataclass(frozen=True)
class TreeSpec:
    """`small_files` of `small_size` spread evenly over `folders`, plus `big_files` of
    `big_size` at the root; content is pseudo-random (incompressible) from `seed`."""

    small_files: int
    folders: int
    small_size: int = 4 * KIB
    big_files: int = 0
    big_size: int = 16 * MIB
    seed: int = 12

    @classmethod
    def scaled(cls, small_files: int, big_files: bool = True) -> TreeSpec:
        """The issue's shape at another size: 100 small files per folder, and (if `big_files`)
        one 16 MiB file per 1,000 small ones, at least one."""
        folders = max(1, -(-small_files // FILES_PER_FOLDER))
        big = max(1, small_files // SMALL_PER_BIG) if big_files else 0
        return cls(small_files, folders, big_files=big)

    @property
    def files(self) -> int:
        return self.small_files + self.big_files

    @property
    def bytes(self) -> int:
        return self.small_files * self.small_size + self.big_files * self.big_size

    def describe(self) -> str:
        """`10,000 x 4 KiB in 100 folders + 10 x 16 MiB (200 MiB)`."""
        text = f"{self.small_files:,} x {format_size(self.small_size)} in {self.folders:,} folders"
        if self.big_files:
            text += f" + {self.big_files:,} x {format_size(self.big_size)}"
        return f"{text} ({_total(self.bytes)})"

    def layout(self) -> Iterator[tuple[str, int]]:
        """Every file as (relative path, size), in the order content is drawn."""
        width = len(str(max(self.small_files, 1) - 1))
        fwidth = len(str(max(self.folders, 1) - 1))
        for i in range(self.small_files):
            yield f"d{i % self.folders:0{fwidth}d}/f{i:0{width}d}.bin", self.small_size
        for j in range(self.big_files):
            yield f"big-{j:02d}.bin", self.big_size


def _total(size: int) -> str:
    return f"{size / MIB:,.0f} MiB" if size >= MIB else format_size(size)


@dataclass(frozen=True)
class TreeInfo:
    """What a tree holds: regular files, their bytes, and the digest of names, sizes and bytes;
    `other` counts entries that are neither files nor folders (links, fifos: none expected)."""

    files: int
    bytes: int
    digest: str
    other: int = 0


class _Digest:
    """xxh3-128 over (path, size, xxh3-128 of content) per file, in sorted path order."""

    def __init__(self) -> None:
        self.hasher, self.files, self.bytes = xxhash.xxh3_128(), 0, 0

    def add(self, rel: str, data: bytes) -> None:
        self.hasher.update(f"{rel}\0{len(data)}\0".encode())
        self.hasher.update(xxhash.xxh3_128_digest(data))
        self.files += 1
        self.bytes += len(data)

    def info(self, other: int = 0) -> TreeInfo:
        return TreeInfo(self.files, self.bytes, f"xxh3-128:{self.hasher.hexdigest()}", other)


def content(spec: TreeSpec) -> Iterator[tuple[str, bytes]]:
    """Each file's relative path and bytes, in layout order (deterministic in `spec`)."""
    rng = random.Random(spec.seed)
    for rel, size in spec.layout():
        yield rel, rng.randbytes(size)


def generate(spec: TreeSpec, root: Path) -> TreeInfo:
    """Write the tree under `root` (made, must not exist), sync it; returns its TreeInfo."""
    root.mkdir(parents=True)
    for folder in sorted({rel.rpartition("/")[0] for rel, _ in spec.layout()} - {""}):
        (root / folder).mkdir()
    files: dict[str, bytes] = {}
    for rel, data in content(spec):
        (root / rel).write_bytes(data)
        files[rel] = xxhash.xxh3_128_digest(data)
    os.sync()  # so writeback of the source does not overlap the timed transfers
    return _info_of(spec, files)


def _info_of(spec: TreeSpec, digests: dict[str, bytes]) -> TreeInfo:
    sizes = dict(spec.layout())
    hasher = xxhash.xxh3_128()
    for rel in sorted(digests):
        hasher.update(f"{rel}\0{sizes[rel]}\0".encode())
        hasher.update(digests[rel])
    return TreeInfo(len(digests), spec.bytes, f"xxh3-128:{hasher.hexdigest()}")


def expected(spec: TreeSpec) -> TreeInfo:
    """The TreeInfo `generate(spec, ...)` gives, computed in memory without writing files."""
    return _info_of(spec, {rel: xxhash.xxh3_128_digest(data) for rel, data in content(spec)})


def tree_info(root: Path) -> TreeInfo:
    """Walk `root` (following no link) and digest every regular file beneath it."""
    found: list[str] = []
    other = 0
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = os.path.join(top, name)
            if os.path.islink(path) or not os.path.isfile(path):
                other += 1
            else:
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
        other += sum(1 for d in dirs if os.path.islink(os.path.join(top, d)))
    digest = _Digest()
    for rel in sorted(found):
        digest.add(rel, (root / rel).read_bytes())
    return digest.info(other)
