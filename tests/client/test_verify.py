"""verify's pure parts: hashing at a chunk size, which chunks differ, the one line naming them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from fluxctl.verify import FileDigests, Verdict, describe_chunks, differing_chunks, hash_local


def digests(data: bytes, chunk: int) -> FileDigests:
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    chunks = b"".join(xxhash.xxh3_128_digest(p) for p in parts)
    return FileDigests(len(data), chunk, xxhash.xxh3_128_digest(data), chunks)


def test_hash_local_matches_chunk_and_file_digests(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    f = tmp_path / "f"
    f.write_bytes(data)
    assert hash_local(f, 4096) == digests(data, 4096)
    (tmp_path / "empty").write_bytes(b"")
    assert hash_local(tmp_path / "empty", 4096) == digests(b"", 4096)


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        (b"aaaabbbbcc", b"aaaabbbbcc", []),
        (b"aaaaXbbbcc", b"aaaabbbbcc", [1]),
        (b"aaaabbbbccdd", b"aaaabbbbcc", [2]),  # the short last chunk grew
        (b"aaaabbbbccddeeee", b"aaaabbbb", [2, 3]),  # chunks only here
        (b"aaaa", b"Xaaabbbb", [0, 1]),  # chunks only there
        (b"", b"aaaa", [0]),
    ],
)
def test_differing_chunks(mine: bytes, theirs: bytes, expected: list[int]) -> None:
    assert differing_chunks(digests(mine, 4), digests(theirs, 4)) == expected


@pytest.mark.parametrize(
    ("indices", "text"),
    [
        ([3], "chunk 3 differs"),
        ([0, 1, 2, 7], "chunks 0-2, 7 differ"),
        ([0, 2, 4, 6, 8, 9, 10], "chunks 0, 2, 4, 6, and 3 more differ"),
    ],
)
def test_describe_chunks(indices: list[int], text: str) -> None:
    assert describe_chunks(indices) == text


def test_the_verdict_line_says_size_before_digest() -> None:
    here, there = digests(b"aaaabbbbcc", 4), digests(b"aaaabbbbc", 4)
    line = Verdict(Path("f"), "/f", here, there).message()
    assert line == "f and /f differ: size differs: 10 bytes here, 9 on the server (chunk 2 " + (
        "differs, at 4 bytes each)"
    )
    assert Verdict(Path("f"), "/f", here, here).same
