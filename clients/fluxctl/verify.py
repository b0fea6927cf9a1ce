# `fluxctl verify`: a local file against the server's copy, by digests alone.
"""Compare a local file with a file on the server without moving its data.

The server's side costs one request: a download opened with nothing wanted (`want = []`),
which the server answers with META (size, chunk size, whole-file digest and every chunk's
digest) and `count` 0, which ends the request (PROTOCOL.md 9). No chunk is sent and none is
acknowledged. The local file is hashed at the server's chunk size with the project's digest
(xxh3-128), so differing chunks can be named.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxproto import ConfigError, Conflict, Meta, chunk_count, format_digest, to_ranges
from fluxproto.digest import FileHasher, chunk_digest, digest_at

from .connect import ClientOptions
from .download import ask_meta
from .session import ClientSession

#: Ranges of differing chunks the one-line message names before it says "and N more".
SHOWN_RANGES = 4


@dataclass(frozen=True)
class FileDigests:
    """A file's size, whole-file digest and chunk digests (concatenated) at `chunk_size`."""

    size: int
    chunk_size: int
    digest: bytes
    chunks: bytes


def check_local(local: Path) -> None:
    """Refuse a local path verify cannot read as one file, before anything connects.

    Raises:
        ConfigError: it does not exist, is a folder, or is not a regular file.
    """
    try:
        if local.is_dir():
            raise ConfigError(f"{local} is a folder: verify compares one file")
        if not local.is_file():
            what = "not a regular file" if local.exists() else "no such local file"
            raise ConfigError(f"{what}: {local}")
    except OSError as exc:
        raise ConfigError(f"cannot use local path {local}: {exc.strerror}") from None


def hash_local(local: Path, chunk_size: int) -> FileDigests:
    """Hash `local` chunk by chunk at `chunk_size` (reads it once).

    Raises:
        ConfigError: it cannot be read.
    """
    whole, chunks = FileHasher(), bytearray()
    try:
        with local.open("rb") as f:
            while block := f.read(chunk_size):
                whole.update(block)
                chunks += chunk_digest(block)
    except OSError as exc:
        raise ConfigError(f"cannot read {local}: {exc.strerror}") from None
    return FileDigests(whole.offset, chunk_size, whole.digest(), bytes(chunks))


async def remote_digests(session: ClientSession, path: str, opts: ClientOptions) -> FileDigests:
    """The digests of the file at `path` on the server, from one download opened for no chunk
    (`opts.chunk_size`: the preferred chunk size, should the server have to index the file).

    Raises:
        Conflict: `path` is a folder (said in a sentence about verify).
        NotFound: no such file.
    """
    try:
        _, meta = await ask_meta(session, path, (), None, opts)
    except Conflict as exc:
        if not exc.message.endswith("is a directory"):
            raise
        raise Conflict(f"{path} is a folder on the server: verify compares one file") from None
    return _digests_of(meta)


def _digests_of(meta: Meta) -> FileDigests:
    return FileDigests(meta.size, meta.chunk_size, meta.digest, bytes(meta.digests))


def differing_chunks(local: FileDigests, remote: FileDigests) -> list[int]:
    """Indices (at the remote chunk size) whose chunk differs or exists on one side only."""
    n_local = chunk_count(local.size, local.chunk_size)
    n_remote = chunk_count(remote.size, remote.chunk_size)
    return [
        i
        for i in range(max(n_local, n_remote))
        if i >= n_local
        or i >= n_remote
        or digest_at(local.chunks, i) != digest_at(remote.chunks, i)
    ]


def describe_chunks(indices: list[int]) -> str:
    """`chunk 3 differs`, `chunks 0-2, 7 differ`; past SHOWN_RANGES runs, `..., and 12 more`."""
    runs = to_ranges(indices)
    shown = [str(s) if c == 1 else f"{s}-{s + c - 1}" for s, c in runs[:SHOWN_RANGES]]
    rest = sum(c for _, c in runs[SHOWN_RANGES:])
    text = ", ".join(shown) + (f", and {rest} more" if rest else "")
    return f"chunk {text} differs" if len(indices) == 1 else f"chunks {text} differ"


@dataclass(frozen=True)
class Verdict:
    """What verify found: `same`, else the one line saying what differs and the details."""

    local: Path
    path: str
    mine: FileDigests
    theirs: FileDigests

    @property
    def same(self) -> bool:
        return (self.mine.size, self.mine.digest) == (self.theirs.size, self.theirs.digest)

    @functools.cached_property
    def chunks(self) -> list[int]:
        return differing_chunks(self.mine, self.theirs)  # message() and to_json() both ask

    def message(self) -> str:
        """One line: identical, or the size or the digest that differs, and which chunks."""
        mine, theirs = self.mine, self.theirs
        if self.same:
            return (
                f"identical: {self.local} and {self.path}, {mine.size} bytes, "
                f"{chunk_count(mine.size, mine.chunk_size)} chunks, {format_digest(mine.digest)}"
            )
        if mine.size != theirs.size:
            what = f"size differs: {mine.size} bytes here, {theirs.size} on the server"
        else:
            what = (
                f"digest differs: {format_digest(mine.digest)} here, "
                f"{format_digest(theirs.digest)} on the server"
            )
        chunks = self.chunks
        where = f" ({describe_chunks(chunks)}, at {theirs.chunk_size} bytes each)" if chunks else ""
        return f"{self.local} and {self.path} differ: {what}{where}"

    def to_json(self) -> dict[str, Any]:
        """The fields a `--json` result adds (besides ok, op, path and, on a mismatch, error)."""
        return {
            "local": str(self.local),
            "identical": self.same,
            "bytes": self.theirs.size,
            "local_bytes": self.mine.size,
            "digest": format_digest(self.theirs.digest),
            "local_digest": format_digest(self.mine.digest),
            "chunk_size": self.theirs.chunk_size,
            "differing_chunks": self.chunks,
        }
