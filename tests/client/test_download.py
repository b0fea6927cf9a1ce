"""fluxctl.download: what `recv` does with staged chunks that rot before the file is published."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fluxctl.connect import ClientOptions
from fluxctl.download import MAX_REFETCHES, Download, partial_paths
from fluxctl.url import FluxURL
from fluxio.staging import StagedFile
from fluxproto import FileHasher, IntegrityError, Meta, chunk_digest
from fluxproto.frames import MIN_CHUNK

CHUNK = MIN_CHUNK


def staged_out_of_order(dest: Path, chunks: list[bytes]) -> StagedFile:
    """A staged download whose chunk 0 arrived last: the rest is hashed from disk at the end."""
    data, journal = partial_paths(dest)
    staged = StagedFile.open(data, journal, len(chunks) * CHUNK, CHUNK)
    order = [*range(1, len(chunks)), 0]
    staged.write_chunks([(i, chunk_digest(chunks[i]), chunks[i]) for i in order[:-1]])
    return staged


def meta_of(chunks: list[bytes]) -> Meta:
    whole = FileHasher()
    for c in chunks:
        whole.update(c)
    digests = b"".join(chunk_digest(c) for c in chunks)
    return Meta(1, bytes(16), len(chunks) * CHUNK, CHUNK, whole.digest(), 0, digests=digests)


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_chunk_damaged_after_it_was_verified_is_fetched_again_not_the_whole_file(
    tmp_path: Path,
) -> None:
    chunks = [os.urandom(CHUNK) for _ in range(4)]
    dest = tmp_path / "out.bin"
    download = Download(FluxURL.parse("flux://h/f"), dest, ClientOptions())
    staged = staged_out_of_order(dest, chunks)
    flip(partial_paths(dest)[0], 2 * CHUNK + 7)  # chunk 2 rots on disk after its check
    staged.write_chunks([(0, chunk_digest(chunks[0]), chunks[0])])

    async def publish() -> bool:
        return await download._publish(staged, meta_of(chunks))

    try:
        assert asyncio.run(publish()) is False  # not published: chunk 2 must come again
        assert sorted(staged.held) == [0, 1, 3], "only the damaged chunk was dropped"
        assert not dest.exists()
        staged.write_chunks([(2, chunk_digest(chunks[2]), chunks[2])])
        assert asyncio.run(publish()) is True
    finally:
        staged.close()
    assert dest.read_bytes() == b"".join(chunks)


def test_damage_that_keeps_coming_back_ends_the_run_with_exit_3(tmp_path: Path) -> None:
    chunks = [os.urandom(CHUNK) for _ in range(3)]
    dest = tmp_path / "out.bin"
    download = Download(FluxURL.parse("flux://h/f"), dest, ClientOptions())
    download.refetches = MAX_REFETCHES
    staged = staged_out_of_order(dest, chunks)
    flip(partial_paths(dest)[0], CHUNK + 1)
    staged.write_chunks([(0, chunk_digest(chunks[0]), chunks[0])])
    try:
        with pytest.raises(IntegrityError) as caught:
            asyncio.run(download._publish(staged, meta_of(chunks)))
        assert caught.value.exit_code == 3
    finally:
        staged.close()
    assert not dest.exists()


@pytest.mark.parametrize(
    "name",
    ["n" * 251 + ".txt", "日" * 85, "é" * 127 + "x", "n" * 236, os.fsdecode(b"\xff" * 255)],
)
def test_the_staged_names_of_a_file_fit_whatever_the_length_of_its_name(
    tmp_path: Path, name: str
) -> None:
    """A name of up to 255 bytes (NAME_MAX) gets staged names the filesystem takes, the same
    every time (a later run resumes from them), told apart by the name's hash."""
    data, journal = partial_paths(tmp_path / name)
    assert (data, journal) == partial_paths(tmp_path / name)
    assert len(os.fsencode(journal.name)) <= 255 and journal.name == data.name + ".journal"
    assert data.name.startswith(".") and data.name.endswith(".fluxpart")
    assert os.fsencode(data.name)[1:60] == os.fsencode(name)[:59]
    other = partial_paths(tmp_path / (name[:-1] + "z"))[0]
    assert other != data
    data.write_bytes(b"")  # the filesystem takes them
    journal.write_bytes(b"")
    assert partial_paths(tmp_path / "short.bin")[0].name == ".short.bin.fluxpart"
